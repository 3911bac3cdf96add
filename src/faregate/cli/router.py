"""`faregate router ...`: train and measure the complexity router and the cascade judge.

faregate router train        --data DIR_OR_CSV --out router.json      (prompt -> need for the strong model)
faregate router train-judge  --data CSV_WITH_ANSWERS --out judge.json (question + cheap answer -> wrong?)
faregate router eval         --data ... --router router.json [--judge judge.json] --out DIR
faregate router evidence     --data-dir data/routellm --out docs   (all of it, one command)
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from faregate.cli.common import CHECKOUT_DATA, require_data, strictly_between_0_and_1
from faregate.cli.groups import command_group
from faregate.cli.router_plots import plot_costs, plot_shares
from faregate.cli.router_tables import print_evaluation, print_robustness
from faregate.evals.replay.engine import Pair
from faregate.evals.replay.outcomes import STRONG_MODEL, WEAK_MODEL, Outcomes, load_outcomes
from faregate.evals.replay.router_eval import Evaluation, evaluate, time_router
from faregate.evals.replay.router_summary import evaluation_json
from faregate.learning.cascade_judges import LearnedJudge
from faregate.learning.complexity_router import KIND as ROUTER_KIND
from faregate.learning.model_file import ModelFile, load_model_file
from faregate.learning.text_features import PROMPT_NAMES
from faregate.learning.training.fit import ROUTER_MODELS, Trained, train_judge, train_router
from faregate.learning.training.selection import (
    DEFAULT_SEED,
    DEFAULT_TEST_FRACTION,
    SplitBy,
    SplitSpec,
    default_split_by,
    split_outcomes,
)

router_app = command_group(
    name="router", help="Train and measure the learned complexity router and the cascade's answer judge."
)

DataOption = Annotated[Path, typer.Option(help="Outcomes: a RouteLLM-format CSV, or a directory of them.")]
SeedOption = Annotated[int, typer.Option(help="Seed of the train/test split and the CV folds.")]
FractionOption = Annotated[
    float,
    typer.Option(callback=strictly_between_0_and_1, help="Share held out for testing (subjects or rows)."),
]
SplitOption = Annotated[
    str,
    typer.Option(help="Hold out whole source files (MMLU subjects), rows, or auto (subjects if several)."),
]
RepeatsOption = Annotated[
    int | None, typer.Option(help="Cross-validation repeats (default: 8 by subject, 4 by row).")
]
CacheOption = Annotated[
    Path | None, typer.Option(help="Embedding cache directory (default ~/.cache/faregate/router).")
]
# As in `faregate replay`: your own outcomes have no contaminated-prompt list beside them.
DropOption = Annotated[
    bool,
    typer.Option(
        "--drop-contaminated/--keep-contaminated",
        help="Leave out prompts found in routers' training data (as RouteLLM scores).",
    ),
]
ContaminatedOption = Annotated[
    Path | None, typer.Option(help="Contaminated-prompt JSONL (default: found next to the data).")
]


@dataclass(slots=True, frozen=True)
class Contamination:
    """Which prompts to leave out: the same choice at training and at eval, or eval refuses the data."""

    drop: bool = True
    path: Path | None = None


def _console() -> Console:
    return Console(width=max(Console().width, 132))


def _load(data: Path, contamination: Contamination) -> Outcomes:
    # Contaminated prompts (found in routers' training data) are left out by default, as RouteLLM does.
    return load_outcomes(data, drop_contaminated=contamination.drop, contaminated=contamination.path)


def _spec(outcomes: Outcomes, split: str, test_fraction: float, seed: int) -> SplitSpec:
    if split not in ("auto", "source", "row"):
        raise typer.BadParameter("--split must be auto, source or row")
    by: SplitBy = (
        default_split_by(outcomes) if split == "auto" else ("source" if split == "source" else "row")
    )
    return SplitSpec(by, test_fraction, seed)


def _train(
    kind: str,
    data: Path,
    out: Path,
    spec_args: tuple[str, float, int],
    contamination: Contamination = Contamination(),
    **kw: Any,
) -> Trained:
    console = _console()
    try:
        repeats = kw.get("repeats")
        if repeats is not None and repeats < 1:
            # Fitting reads `repeats or the default`: 0 silently meant the default, and a negative
            # count made no folds and then blamed the data ("no fold had both models differ").
            raise ValueError("--repeats is a number of cross-validation repeats, 1 or more")
        outcomes = _load(data, contamination)
        pair = Pair(kw.pop("strong"), kw.pop("weak"))
        outcomes.require(pair.strong, pair.weak)
        split = split_outcomes(outcomes, _spec(outcomes, *spec_args))
        trainer = train_router if kind == "router" else train_judge
        started = time.perf_counter()
        trained = trainer(split, pair, seed=spec_args[2], progress=console.log, **kw)
    except ValueError as exc:
        typer.echo(f"faregate: {exc}", err=True)
        raise typer.Exit(2) from None
    trained.file.save(out)
    described = split.describe()
    console.print(
        f"trained on {described['train_prompts']:,} prompts, {described['test_prompts']:,} held out "
        f"({split.spec.by} split, seed {split.spec.seed}) in {time.perf_counter() - started:.0f} s; "
        f"chose {trained.selection.best.name}; written to {out}"
    )
    return trained


@router_app.command("train")
def train(
    data: DataOption,
    out: Annotated[Path, typer.Option(help="Write the trained router (JSON) here.")],
    split: SplitOption = "auto",
    test_fraction: FractionOption = DEFAULT_TEST_FRACTION,
    seed: SeedOption = DEFAULT_SEED,
    repeats: RepeatsOption = None,
    strong: Annotated[str, typer.Option(help="The strong (expensive) model.")] = STRONG_MODEL,
    weak: Annotated[str, typer.Option(help="The weak (cheap) model.")] = WEAK_MODEL,
    cache_dir: CacheOption = None,
    drop_contaminated: DropOption = True,
    contaminated: ContaminatedOption = None,
    model: Annotated[
        str,
        typer.Option(
            help="linear: embedding + 19 text features in one logistic model; within-subject: the "
            "embedding with the training subjects' directions projected out (routers/router-mmlu.json); "
            "blend: the embedding's model averaged with prompt length."
        ),
    ] = "linear",
) -> None:
    """Train the complexity router on the training part of a split (the rest is kept for eval)."""
    if model not in ROUTER_MODELS:
        raise typer.BadParameter(f"--model must be one of {', '.join(ROUTER_MODELS)}")
    _train(
        "router",
        data,
        out,
        (split, test_fraction, seed),
        Contamination(drop_contaminated, contaminated),
        strong=strong,
        weak=weak,
        repeats=repeats,
        cache_dir=cache_dir,
        model_kind=model,
    )


@router_app.command("train-judge")
def train_judge_command(
    data: Annotated[
        Path, typer.Option(help="Outcomes CSV with the cheap model's answers (<model>_response).")
    ],
    out: Annotated[Path, typer.Option(help="Write the trained judge (JSON) here.")],
    split: SplitOption = "auto",
    test_fraction: FractionOption = DEFAULT_TEST_FRACTION,
    seed: SeedOption = DEFAULT_SEED,
    repeats: RepeatsOption = None,
    strong: Annotated[str, typer.Option(help="The model escalated to.")] = STRONG_MODEL,
    weak: Annotated[str, typer.Option(help="The cheap model whose answers are judged.")] = WEAK_MODEL,
    cache_dir: CacheOption = None,
    drop_contaminated: DropOption = True,
    contaminated: ContaminatedOption = None,
) -> None:
    """Train the cascade's learned judge (FrugalGPT-style) on recorded (question, answer, correct) data."""
    _train(
        "judge",
        data,
        out,
        (split, test_fraction, seed),
        Contamination(drop_contaminated, contaminated),
        strong=strong,
        weak=weak,
        repeats=repeats,
        cache_dir=cache_dir,
    )


def run_eval(
    data: Path,
    router: Path | None,
    judge: Path | None,
    out: Path | None,
    *,
    prefix: str,
    timing: int,
    cache_dir: Path | None,
    console: Console,
    reports: Path | None = None,
    contamination: Contamination = Contamination(),
) -> Evaluation:
    """Evaluate; PNGs go to `out`, the JSON report to `reports` (default: `out` too)."""
    outcomes = _load(data, contamination)
    router_file = load_model_file(router, ROUTER_KIND, PROMPT_NAMES) if router else None
    judge_file: ModelFile | None = LearnedJudge.read(judge) if judge else None
    evaluation = evaluate(outcomes, router=router_file, judge=judge_file, cache_dir=cache_dir)
    if router_file is not None and timing > 0:
        texts = [r.prompt for r in split_outcomes(outcomes, _recorded_spec(router_file)).test.records][
            :timing
        ]
        evaluation.timing_ms = time_router(router_file, texts)
    print_evaluation(evaluation, console)
    written: list[Path] = []
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        written.append(out / f"{prefix}-shares.png")
        plot_shares(evaluation, written[-1])
        if judge_file is not None:
            written.append(out / f"{prefix}-costs.png")
            plot_costs(evaluation, written[-1])
    if reports or out:
        report = (reports or out or Path()) / f"{prefix}.json"
        report.parent.mkdir(parents=True, exist_ok=True)
        report.write_text(json.dumps(evaluation_json(evaluation), indent=2) + "\n")
        written.append(report)
    if written:
        console.print(f"written: {', '.join(str(p) for p in written)}")
    return evaluation


def _recorded_spec(file: ModelFile) -> SplitSpec:
    return SplitSpec.from_json(file.training["split"])


@router_app.command("eval")
def eval_command(
    data: DataOption,
    router: Annotated[Path | None, typer.Option(help="A trained router (faregate router train).")] = None,
    judge: Annotated[Path | None, typer.Option(help="A trained judge (faregate router train-judge).")] = None,
    out: Annotated[
        Path | None, typer.Option(help="Directory for the PNG curves and the JSON report.")
    ] = None,
    prefix: Annotated[str, typer.Option(help="File name prefix of the outputs.")] = "routing",
    timing: Annotated[
        int, typer.Option(help="Time the router's scoring on this many prompts (0: skip).")
    ] = 0,
    cache_dir: CacheOption = None,
    drop_contaminated: DropOption = True,
    contaminated: ContaminatedOption = None,
) -> None:
    """Measure a trained router and/or judge on the held-out part of its split, beside the baselines."""
    try:
        run_eval(
            data,
            router,
            judge,
            out,
            prefix=prefix,
            timing=timing,
            cache_dir=cache_dir,
            console=_console(),
            contamination=Contamination(drop_contaminated, contaminated),
        )
    except ValueError as exc:
        typer.echo(f"faregate: {exc}", err=True)
        raise typer.Exit(2) from None


def _evidence_run(
    data_dir: Path,
    out: Path | None,
    models: Path,
    spec: tuple[str, float, int],
    *,
    timing: int,
    cache_dir: Path | None,
    console: Console,
) -> list[Evaluation]:
    mmlu, gsm8k = data_dir / "mmlu", data_dir / "gsm8k_responses.csv"
    common: dict[str, Any] = {
        "strong": STRONG_MODEL,
        "weak": WEAK_MODEL,
        "repeats": None,
        "cache_dir": cache_dir,
    }
    # MMLU: chosen on many random subject splits (bench/router_generalisation.py).
    _train("router", mmlu, models / "router-mmlu.json", spec, model_kind="within-subject", **common)
    _train("router", gsm8k, models / "router-gsm8k.json", spec, **common)
    _train("judge", gsm8k, models / "judge-gsm8k.json", spec, **common)
    kw: dict[str, Any] = {"cache_dir": cache_dir, "console": console, "reports": models}
    return [
        run_eval(mmlu, models / "router-mmlu.json", None, out, prefix="routing-mmlu", timing=timing, **kw),
        run_eval(
            gsm8k,
            models / "router-gsm8k.json",
            models / "judge-gsm8k.json",
            out,
            prefix="routing-gsm8k",
            timing=0,
            **kw,
        ),
    ]


@router_app.command("evidence")
def evidence(
    data_dir: Annotated[
        Path,
        typer.Option(
            help="The RouteLLM data directory (mmlu/ and gsm8k_responses.csv); the default is the "
            "repository's copy, found when run from a checkout's root."
        ),
    ] = CHECKOUT_DATA,
    out: Annotated[Path, typer.Option(help="Directory for the PNG curves.")] = Path("docs"),
    models: Annotated[
        Path, typer.Option(help="Directory for the trained model files and the JSON reports.")
    ] = Path("routers"),
    seed: SeedOption = DEFAULT_SEED,
    test_fraction: FractionOption = DEFAULT_TEST_FRACTION,
    timing: Annotated[int, typer.Option(help="Prompts to time the router's scoring on.")] = 200,
    extra_seeds: Annotated[
        str, typer.Option(help="Comma-separated further split seeds to repeat everything on (robustness).")
    ] = "",
    cache_dir: CacheOption = None,
) -> None:
    """Train on one split and measure on the other, for MMLU (by subject) and GSM8K (by question)."""
    require_data(data_dir, "--data-dir")
    console = _console()
    try:
        seeds = [int(s) for s in extra_seeds.split(",") if s.strip()]
    except ValueError:
        raise typer.BadParameter("--extra-seeds takes comma-separated integers") from None
    try:
        runs = {
            seed: _evidence_run(
                data_dir,
                out,
                models,
                ("auto", test_fraction, seed),
                timing=timing,
                cache_dir=cache_dir,
                console=console,
            )
        }
        for other in seeds:
            console.rule(f"split seed {other}")
            runs[other] = _evidence_run(
                data_dir,
                None,
                models / f"seed-{other}",
                ("auto", test_fraction, other),
                timing=0,
                cache_dir=cache_dir,
                console=console,
            )
    except ValueError as exc:
        typer.echo(f"faregate: {exc}", err=True)
        raise typer.Exit(2) from None
    if seeds:
        summary = print_robustness(runs, console)
        models.mkdir(parents=True, exist_ok=True)
        (models / "routing-seeds.json").write_text(json.dumps(summary, indent=2) + "\n")


def register(app: typer.Typer) -> None:
    app.add_typer(router_app, name="router")
