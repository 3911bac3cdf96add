"""`faregate replay`: what a routing policy would have cost and scored on recorded outcomes."""

from __future__ import annotations

import importlib
import json
import sys
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from faregate.cli.common import ConfigOption, a_confidence, above_0_up_to_1
from faregate.cli.replay_plot import write_plot
from faregate.cli.replay_report import curve_table, metrics_table, policy_table, report_json
from faregate.cli.replay_routes import ROUTE_PREFIX, Options, is_named, parse_pairs, replay_named
from faregate.evals.replay.engine import (
    DEFAULT_BINS,
    DEFAULT_PRICES,
    Pair,
    Router,
    Scorer,
    always,
    evaluate_router,
    evaluate_scorer,
    length_score,
    oracle_router,
    random_score,
)
from faregate.evals.replay.outcomes import (
    DEFAULT_OUTPUT_TOKENS,
    STRONG_MODEL,
    WEAK_MODEL,
    Outcomes,
    load_outcomes,
)
from faregate.types import Price

BUILT_IN = ("length", "random", "all-strong", "all-weak", "oracle")


@dataclass(slots=True, frozen=True)
class Chosen:
    """A policy is a router (picks a model) or a scorer (swept over thresholds)."""

    router: Router | None = None
    scorer: Scorer | None = None


def parse_price(text: str) -> tuple[str, Price]:
    """'gpt-4-1106-preview=10/30' -> (model, Price(10, 30)), USD per 1M input/output tokens."""
    model, sep, value = text.rpartition("=")
    inp, slash, out = value.partition("/")
    try:
        if not (sep and model and slash):
            raise InvalidOperation
        amounts = Decimal(inp.strip()), Decimal(out.strip())
        # NaN would reach the money formatting as a traceback; a negative price pays the caller.
        if not all(a.is_finite() and a >= 0 for a in amounts):
            raise InvalidOperation
        return model.strip(), Price(*amounts)
    except InvalidOperation:
        raise typer.BadParameter(
            f"expected MODEL=INPUT/OUTPUT (USD per 1M tokens, 0 or more), got {text!r}"
        ) from None


def an_order(value: str) -> str:
    """Callback for --order: the two stream orders the online replay knows."""
    if value not in ("shuffled", "by-source"):
        raise typer.BadParameter(f"{value!r} is not shuffled or by-source")
    return value


def resolve_policy(spec: str, pair: Pair, outcomes: Outcomes, seed: int) -> Chosen:
    """A built-in policy by name, or `package.module:function` taking a prompt record and returning a
    model name (a router) or a number, higher meaning "needs the strong model" (a scorer)."""
    builtin = {
        "length": Chosen(scorer=length_score),
        "random": Chosen(scorer=random_score(seed)),
        "all-strong": Chosen(router=always(pair.strong)),
        "all-weak": Chosen(router=always(pair.weak)),
        "oracle": Chosen(router=oracle_router(pair)),
    }
    if spec in builtin:
        return builtin[spec]
    module_name, sep, attr = spec.partition(":")
    if not sep:
        raise ValueError(
            f"unknown policy {spec!r}; use one of {', '.join(BUILT_IN)}, route:NAME, router:FILE "
            "or module:function"
        )
    # The installed console script's sys.path holds its own bin directory, not the working
    # directory where a user's plug-in lives (`python -m` would have it). Appended, not inserted:
    # a file here never shadows an installed package.
    here = str(Path.cwd())
    if "" not in sys.path and here not in sys.path:
        sys.path.append(here)
    try:
        policy = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot load policy {spec!r}: {exc}") from None
    if not outcomes.records:
        raise ValueError(f"{outcomes.name}: no prompts to replay")
    # The first answer says which kind it is: a model name routes, a number scores.
    sample = policy(outcomes.records[0])
    if isinstance(sample, str):
        return Chosen(router=policy)
    if isinstance(sample, int | float):
        return Chosen(scorer=policy)
    raise ValueError(f"policy {spec!r} returned {type(sample).__name__}; expected a model name or a number")


def register(app: typer.Typer) -> None:
    @app.command()
    def replay(
        data: Annotated[
            Path, typer.Option(help="Outcomes: a RouteLLM-format CSV, or a directory of them (MMLU).")
        ],
        policy: Annotated[
            str,
            typer.Option(
                help=f"{', '.join(BUILT_IN)}; route:NAME, a route from the config (plain, router or "
                "cascade); router:FILE, a trained router (`faregate router train`) as a scorer; or "
                "package.module:function (router or scorer)."
            ),
        ] = "length",
        config: ConfigOption = None,
        as_: Annotated[
            list[str] | None,
            typer.Option(
                "--as",
                help="CATALOG_MODEL=RECORDED_MODEL: which recorded model stands for a model a route "
                "chooses (repeatable; recorded names the catalog knows, aliases included, map themselves).",
            ),
        ] = None,
        hint: Annotated[
            list[str] | None,
            typer.Option(
                help="tier=..., task=... or max_cost_usd=...: hints sent with every replayed prompt."
            ),
        ] = None,
        cache_dir: Annotated[
            Path | None, typer.Option(help="Embedding cache directory (default ~/.cache/faregate/router).")
        ] = None,
        held_out: Annotated[
            bool,
            typer.Option(
                "--held-out",
                help="Only the prompts the policy's trained files never saw (the test part of their split).",
            ),
        ] = False,
        strong: Annotated[
            str,
            typer.Option(
                help="The strong (expensive) recorded model (a router or cascade route, and router:FILE, "
                "bring their own pair)."
            ),
        ] = STRONG_MODEL,
        weak: Annotated[str, typer.Option(help="The weak (cheap) recorded model.")] = WEAK_MODEL,
        price: Annotated[
            list[str] | None,
            typer.Option(help="MODEL=IN/OUT USD per 1M tokens (repeatable; default: prices when recorded)."),
        ] = None,
        drop_contaminated: Annotated[
            bool,
            typer.Option(
                "--drop-contaminated/--keep-contaminated",
                help="Leave out prompts found in routers' training data (as RouteLLM scores).",
            ),
        ] = True,
        contaminated: Annotated[
            Path | None, typer.Option(help="Contaminated-prompt JSONL (default: found next to the data).")
        ] = None,
        output_tokens: Annotated[
            int, typer.Option(min=0, help="Output tokens per call where no answer text is recorded (MMLU).")
        ] = DEFAULT_OUTPUT_TOKENS,
        bins: Annotated[
            int, typer.Option(min=1, help="Quantile bins of the threshold sweep (RouteLLM: 10).")
        ] = DEFAULT_BINS,
        seed: Annotated[int, typer.Option(help="Seed of the random policy.")] = 0,
        plot: Annotated[Path | None, typer.Option(help="Write the curve as a PNG here.")] = None,
        json_out: Annotated[
            Path | None, typer.Option("--json", help="Write the full report as JSON here.")
        ] = None,
        online: Annotated[
            bool,
            typer.Option(
                "--online",
                help="Replay online calibration: a stream in a seeded order (--seed), a sample of "
                "decisions labelled, the strong-call share kept within --target. Policy router:FILE "
                "or judge:FILE (a cascade).",
            ),
        ] = False,
        target: Annotated[
            float,
            typer.Option(
                callback=above_0_up_to_1, help="--online: share of the strong model's accuracy to keep."
            ),
        ] = 0.95,
        confidence: Annotated[
            float,
            typer.Option(
                callback=a_confidence,
                help="--online: confidence of the (anytime-valid) quality test (0.5 to below 1).",
            ),
        ] = 0.95,
        verify_share: Annotated[
            float,
            typer.Option(
                callback=above_0_up_to_1,
                help="--online: expected share of decisions given a shadow call "
                "(router: any; cascade: paid).",
            ),
        ] = 0.05,
        frontier: Annotated[
            float,
            typer.Option(
                min=0.0, max=1.0, help="--online: rank band above the cut sampled like the cheap side."
            ),
        ] = 0.1,
        rest_ratio: Annotated[
            float,
            typer.Option(
                callback=above_0_up_to_1,
                help="--online: sampling rate deep on the strong side, relative to near the cut "
                "(1 with --frontier 0: uniform).",
            ),
        ] = 0.1,
        free_labels: Annotated[
            bool, typer.Option(help="--online, cascade: an escalation's two answers are a free label.")
        ] = True,
        prior: Annotated[
            int,
            typer.Option(
                min=0, help="--online: pseudo-outcomes from the file's calibration curve (0: no prior)."
            ),
        ] = 0,
        # The stream is cut every `window` prompts: 0 would divide by zero.
        window: Annotated[int, typer.Option(min=1, help="--online: prompts per reported window.")] = 500,
        order: Annotated[
            str,
            typer.Option(
                callback=an_order, help="--online: shuffled, or by-source (whole subjects in turn: drift)."
            ),
        ] = "shuffled",
        learn: Annotated[
            bool,
            typer.Option(
                help="--online, router:FILE: learn the stream's domains: labelled neighbours correct the "
                "prior in a challenger ranking, switched in (frozen, restarting the calibration) when a "
                "betting test shows it ranks better."
            ),
        ] = False,
    ) -> None:
        """Replay a routing policy on recorded outcomes: calls per model, cost, accuracy, PGR/CPT/APGR."""
        prices = dict(DEFAULT_PRICES)
        prices.update(parse_price(p) for p in price or [])
        pair = Pair(strong=strong, weak=weak)
        try:
            outcomes = load_outcomes(
                data,
                drop_contaminated=drop_contaminated,
                contaminated=contaminated,
                output_tokens=output_tokens,
            )
            if online:
                from faregate.cli.replay_online import online_options, replay_online

                chosen_online = online_options(
                    target=target,
                    confidence=confidence,
                    verify_share=verify_share,
                    frontier=frontier,
                    rest_ratio=rest_ratio,
                    free_labels=free_labels,
                    prior=prior,
                    window=window,
                    seed=seed,
                    order=order,
                    learn=learn,
                )
                console = Console(width=max(Console().width, 150))
                replay_online(
                    outcomes, policy, chosen_online, prices, held_out=held_out, cache_dir=cache_dir,
                    json_out=json_out, console=console,
                )  # fmt: skip
                return
            notes: list[str] = []
            if (as_ or hint) and not policy.startswith(ROUTE_PREFIX):
                raise ValueError("--as and --hint apply to --policy route:NAME only")
            if is_named(policy):
                options = Options(
                    config=config,
                    pair=pair,
                    prices=prices,
                    bins=bins,
                    aliases=parse_pairs(as_, "--as"),
                    hints=parse_pairs(hint, "--hint"),
                    cache_dir=cache_dir,
                    held_out=held_out,
                )
                report, notes = replay_named(policy, outcomes, options)
                pair = report.pair
            else:
                if held_out:
                    raise ValueError(
                        "--held-out needs a policy with trained files (route:NAME or router:FILE)"
                    )
                outcomes.require(pair.strong, pair.weak)
                chosen = resolve_policy(policy, pair, outcomes, seed)
                if chosen.router is not None:
                    report = evaluate_router(outcomes, chosen.router, policy, pair, prices)
                else:
                    assert chosen.scorer is not None
                    report = evaluate_scorer(outcomes, chosen.scorer, policy, pair, prices, bins)
        except ValueError as exc:
            typer.echo(f"faregate: {exc}", err=True)
            raise typer.Exit(2) from None
        console = Console(width=max(Console().width, 120))
        kept = (
            f"{report.contaminated_skipped} contaminated left out"
            if drop_contaminated
            else "contaminated kept"
        )
        console.print(
            f"{report.data}: {report.prompts:,} prompts ({kept}); "
            f"strong {pair.strong} {report.strong_accuracy:.1%}, weak {pair.weak} {report.weak_accuracy:.1%}"
        )
        for note in notes:
            console.print(note)
        console.print(policy_table(report))
        if report.sweep is not None:
            console.print(curve_table(report))
            console.print(metrics_table(report))
        if plot is not None:
            write_plot(report, plot)
            console.print(f"curve written to {plot}")
        if json_out is not None:
            json_out.write_text(json.dumps(report_json(report), indent=2) + "\n", encoding="utf-8")
            console.print(f"report written to {json_out}")
