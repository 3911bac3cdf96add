"""`faregate cache-eval`: false-hit rate, paraphrase precision/recall, latency and memory of the
semantic cache, and the threshold those numbers support."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.table import Table

from faregate.cache.semantic import DEFAULT_THRESHOLD
from faregate.cli.common import CHECKOUT_DATA, a_confidence, require_data
from faregate.embedding.embedder import MODEL_PACKAGE, Embedder
from faregate.evals.cache_eval.measure import (
    CHOICE_MARGIN,
    FALSE_HIT_BAR,
    MIN_PRECISION,
    THRESHOLDS,
    FalseHits,
    PairPoint,
    caught_by_kind,
    choose_threshold,
    embed_cached,
    false_hits,
    index_bytes_per_10k,
    load_pairs,
    load_questions,
    pair_curve,
    pair_similarities,
    run_latency,
)


def _default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "faregate" / "cache-eval"


def a_measured_threshold(value: float) -> float:
    """Callback for --threshold: one the curves are measured at (click names the option when
    this refuses a value)."""
    if value not in THRESHOLDS:
        raise typer.BadParameter(f"must be one of {THRESHOLDS[0]}..{THRESHOLDS[-1]} in steps of 0.01")
    return value


def register(app: typer.Typer) -> None:
    @app.command("cache-eval")
    def cache_eval(
        data: Annotated[
            Path,
            typer.Option(
                help="RouteLLM data directory (gsm8k_responses.csv and mmlu/*.csv); the default is the "
                "repository's copy, found when run from a checkout's root."
            ),
        ] = CHECKOUT_DATA,
        limit: Annotated[
            int | None,
            typer.Option(min=1, help="At most this many distinct questions per set (quick run)."),
        ] = None,
        threshold: Annotated[
            float, typer.Option(callback=a_measured_threshold, help="Similarity threshold to report at.")
        ] = DEFAULT_THRESHOLD,
        out: Annotated[
            Path, typer.Option(help="Directory for the curve (CSV, PNG) and summary (JSON).")
        ] = Path("cache-eval"),
        cache_dir: Annotated[
            Path | None, typer.Option(help="Embedding cache (default: ~/.cache/faregate/cache-eval).")
        ] = None,
        latency_samples: Annotated[int, typer.Option(min=1, help="Requests timed per latency group.")] = 300,
        pad_to: Annotated[
            int,
            typer.Option(
                min=0, help="Also time lookups with the cache padded to this many entries (0: skip)."
            ),
        ] = 50_000,
        pairs_file: Annotated[
            list[Path] | None,
            typer.Option(
                "--pairs",
                help="Labelled pairs (CSV/TSV/JSONL: text1,text2,label; or the .txt block format): replay "
                "them as a stream with online acceptance instead (the data folder holding routellm/ and "
                "paraphrase/ fills the index). Repeatable: the files form one stream.",
            ),
        ] = None,
        sizes: Annotated[
            str, typer.Option(help="--pairs: index sizes, comma-separated.")
        ] = "0,2500,20000,50000",
        max_wrong_hit_rate: Annotated[
            float, typer.Option(help="--pairs: the bound on wrong hits / lookups.")
        ] = 0.005,
        confidence: Annotated[
            float,
            typer.Option(callback=a_confidence, help="--pairs: confidence of the bound (0.5 to below 1)."),
        ] = 0.95,
        sequential: Annotated[
            bool, typer.Option(help="--pairs: anytime-valid bounds (Beta mixture) instead of fixed-sample.")
        ] = False,
        warm: Annotated[
            list[Path] | None,
            typer.Option(
                help="--pairs: pairs of other questions streamed first (a deployment already running)."
            ),
        ] = None,
        distinct: Annotated[
            int, typer.Option(help="--pairs: distinct questions (no pair's) looked up between the pairs.")
        ] = 500,
        warm_passes: Annotated[
            int,
            typer.Option(
                min=0, help="--pairs: earlier passes of the stream (other orders) whose evidence is kept."
            ),
        ] = 0,
        seed: Annotated[int, typer.Option(help="--pairs: stream order seed.")] = 0,
        method: Annotated[
            str,
            typer.Option(
                help="--pairs: the bound on wrong hits / lookups: 'product' (P(s >= tau) x pooled wrong "
                "rate) or 'direct' (labelled wrong hits counted over all lookups, the pooled rate only "
                "for unverified hits)."
            ),
        ] = "product",
        prior_lookups: Annotated[
            int,
            typer.Option(
                min=0,
                help="--pairs: start the acceptance from the offline calibration (--prior) worth this many "
                "pseudo-lookups; 0: no prior.",
            ),
        ] = 0,
        prior: Annotated[
            Path | None,
            typer.Option(help="--pairs: the prior file (default: the one shipped with Faregate)."),
        ] = None,
        write_prior: Annotated[
            Path | None,
            typer.Option(
                help="With --pairs: build a prior from these pairs (replayed without serving, every "
                "candidate labelled; at the largest --sizes) and write it here instead of replaying."
            ),
        ] = None,
        prior_orders: Annotated[
            int, typer.Option(min=1, help="--write-prior: stream orders per pairs file.")
        ] = 3,
    ) -> None:
        """Measure the semantic cache on distinct questions and labelled paraphrases."""
        if pairs_file:
            from faregate.cli.cache_stream import build_prior, run_pairs
            from faregate.learning.online.cache_acceptance import METHODS, CacheAcceptance
            from faregate.learning.online.cache_prior import load_prior

            if method not in METHODS:
                raise typer.BadParameter(f"--method must be one of {', '.join(METHODS)}")
            problem = _pairs_problem(sizes, distinct, max_wrong_hit_rate)
            if problem:
                typer.echo(f"faregate: {problem}", err=True)
                raise typer.Exit(2)
            index_sizes = [int(size) for size in sizes.split(",")]
            console = Console(width=max(Console().width, 150))
            folder = data if data != CHECKOUT_DATA else Path("data")
            try:
                if write_prior is not None:
                    build_prior(
                        pairs_file,
                        folder,
                        max(index_sizes),
                        seeds=prior_orders,
                        cache_dir=cache_dir,
                        out_file=write_prior,
                        console=console,
                        command=_command_line(),
                    )
                    return
                run_pairs(
                    pairs_file,
                    folder,
                    index_sizes,
                    CacheAcceptance(max_wrong_hit_rate, confidence, sequential=sequential, method=method),
                    seed=seed,
                    warm_passes=warm_passes,
                    warm_files=warm,
                    distinct_count=distinct,
                    cache_dir=cache_dir,
                    out=out,
                    console=console,
                    prior=load_prior(prior) if prior_lookups else None,
                    prior_lookups=prior_lookups,
                )
            except ValueError as exc:  # a pairs file the loader cannot read; the message names it
                typer.echo(f"faregate: {exc}", err=True)
                raise typer.Exit(2) from None
            return
        require_data(data, "--data")
        console = Console(width=max(Console().width, 132))
        cache_dir = cache_dir or _default_cache_dir()
        summary: dict[str, Any] = {"threshold": threshold, "command": _command_line()}

        rss_before = _rss_bytes()
        started = time.perf_counter()
        embedder = Embedder.load()
        embedder.embed(["warm up"])
        summary["model"] = {
            "package": MODEL_PACKAGE,
            "load_s": round(time.perf_counter() - started, 2),
            "rss_mb": round((_rss_bytes() - rss_before) / 1e6, 1),
        }
        model = summary["model"]
        console.print(f"model {MODEL_PACKAGE}: loaded in {model['load_s']} s, +{model['rss_mb']} MB RSS")

        def progress(label: str) -> Any:
            return lambda done, total: console.print(f"  {label}: {done}/{total}", highlight=False)

        sets = load_questions(data, limit)
        vectors = {
            name: embed_cached(embedder, texts, cache_dir, progress(f"embedding {name}"))
            for name, texts in sets.items()
        }
        pairs = load_pairs()
        pair_texts = sorted({p.anchor for p in pairs} | {p.other for p in pairs})
        pair_matrix = embed_cached(embedder, pair_texts, cache_dir)
        pair_vectors = dict(zip(pair_texts, pair_matrix, strict=True))

        curves = false_hits(sets, vectors, progress=progress("leave-one-out lookups"), report_at=threshold)
        sims = pair_similarities(pairs, pair_vectors)
        points = pair_curve(pairs, sims)
        chosen = choose_threshold(curves, points)
        at = next(p for p in points if p.threshold == threshold)

        _print_false_hits(console, curves, threshold, summary)
        _print_pairs(console, at, caught_by_kind(pairs, sims, threshold), summary)
        _print_curve(console, curves, points)

        fill = [
            (t, v)
            for name in sets
            for t, v in zip(sets[name], vectors[name], strict=True)
            if not np.isnan(v[0])
        ]
        rng = np.random.default_rng(0)
        long_queries = [
            fill[i][0] for i in rng.choice(len(fill), min(latency_samples, len(fill)), replace=False)
        ]
        short_queries = [p.other for p in pairs][:latency_samples]
        queries: dict[str, Sequence[str]] = {
            "chat-length (paraphrase set)": short_queries,
            "benchmark questions": long_queries,
        }
        latency = run_latency(embedder, fill, queries, threshold)
        if pad_to > len(fill):
            latency += run_latency(embedder, fill, queries, threshold, pad_to=pad_to)
        per_10k = index_bytes_per_10k(fill)
        _print_latency(console, latency, per_10k, summary)

        summary["chosen_threshold"] = chosen
        console.print(
            f"\nthreshold with the best paraphrase recall while every set's false-hit rate < "
            f"{FALSE_HIT_BAR * CHOICE_MARGIN:.2%} and precision >= {MIN_PRECISION:.0%}: "
            f"[bold]{chosen}[/bold] (default {DEFAULT_THRESHOLD})"
        )
        out.mkdir(parents=True, exist_ok=True)
        _write_curve(out, curves, points)
        (out / "cache-eval.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
        console.print(
            f"wrote {out}/cache-eval.csv, cache-eval.json"
            + (", cache-eval.png" if _plot(out, curves, points, threshold) else "")
        )


def _pairs_problem(sizes: str, distinct: int, max_wrong_hit_rate: float) -> str | None:
    """What is wrong with --pairs' numeric options, if anything. A negative size or count sliced the
    question pool from its end (silently fewer), and a bound outside (0, 1) certifies any threshold
    or none."""
    try:
        smallest = min(int(size) for size in sizes.split(","))
    except ValueError:
        smallest = -1
    if smallest < 0:
        return f"--sizes takes whole numbers 0 or more, comma-separated, not {sizes!r}"
    if distinct < 0:
        return "--distinct is a number of questions, 0 or more"
    if not 0 < max_wrong_hit_rate < 1:
        return "--max-wrong-hit-rate is a share of lookups, strictly between 0 and 1"
    return None


def _rss_bytes() -> int:
    """Resident memory of this process now (Linux), else its peak."""
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _command_line() -> str:
    import sys

    return " ".join(["faregate", *sys.argv[1:]])


def _print_false_hits(
    console: Console, curves: dict[str, FalseHits], threshold: float, summary: dict[str, Any]
) -> None:
    table = Table(
        title=f"False hits on distinct questions at {threshold} (leave-one-out, one cache of all sets)"
    )
    for column in (
        "set",
        "questions",
        "too long",
        "false hits",
        "of which retyped",
        "rate",
        "without guards",
        "lookups where a guard refused a candidate",
    ):
        table.add_column(column)
    summary["false_hits"] = {}
    for curve in curves.values():
        refused = ", ".join(f"{k} {v}" for k, v in sorted(curve.refused.items(), key=lambda kv: -kv[1]))
        table.add_row(
            curve.name,
            str(curve.questions),
            str(curve.too_long),
            str(curve.guarded[threshold]),
            str(curve.retyped[threshold]),
            f"{curve.rate(threshold):.2%}",
            f"{curve.rate(threshold, guards=False):.2%}",
            refused,
        )
        summary["false_hits"][curve.name] = {
            "questions": curve.questions,
            "too_long": curve.too_long,
            "false_hits": curve.guarded[threshold],
            "retyped_duplicates": curve.retyped[threshold],
            "rate": curve.rate(threshold),
            "rate_without_guards": curve.rate(threshold, guards=False),
            "examples": [
                {"query": q[:200], "cached": c[:200], "similarity": round(s, 4)}
                for q, c, s in curve.examples[:20]
            ],
        }
    console.print(table)


def _print_pairs(
    console: Console, at: PairPoint, kinds: dict[str, tuple[int, int]], summary: dict[str, Any]
) -> None:
    console.print(
        f"\nParaphrase set at {at.threshold}: precision {at.precision:.1%}, recall {at.recall:.1%} "
        f"(tp {at.tp}, fp {at.fp}, fn {at.fn}, tn {at.tn}); without guards: precision "
        f"{at.precision_unguarded:.1%}, recall {at.recall_unguarded:.1%}"
    )
    console.print(
        "non-paraphrases served, by pitfall: "
        + ", ".join(f"{k} {w}/{n}" for k, (w, n) in sorted(kinds.items()))
    )
    summary["paraphrases"] = {
        "precision": at.precision,
        "recall": at.recall,
        "precision_without_guards": at.precision_unguarded,
        "recall_without_guards": at.recall_unguarded,
        "confusion": {"tp": at.tp, "fp": at.fp, "fn": at.fn, "tn": at.tn},
        "served_by_kind": {k: {"served": w, "of": n} for k, (w, n) in kinds.items()},
    }


def _print_curve(console: Console, curves: dict[str, FalseHits], points: list[PairPoint]) -> None:
    table = Table(title="Over thresholds (guarded; unguarded in brackets)")
    table.add_column("threshold")
    for name in curves:
        table.add_column(f"false hits {name}")
    table.add_column("precision")
    table.add_column("recall")
    for point in points:
        t = point.threshold
        table.add_row(
            f"{t:.2f}",
            *[f"{c.rate(t):.2%} ({c.rate(t, guards=False):.2%})" for c in curves.values()],
            f"{point.precision:.1%} ({point.precision_unguarded:.1%})",
            f"{point.recall:.1%} ({point.recall_unguarded:.1%})",
        )
    console.print(table)


def _print_latency(console: Console, latency: list[Any], per_10k: int, summary: dict[str, Any]) -> None:
    table = Table(title="Embedding + lookup per request (one at a time, single worker thread)")
    for column in ("queries", "cache entries", "requests", "p50 ms", "p99 ms", "lookup-only p50 ms"):
        table.add_column(column)
    for row in latency:
        table.add_row(
            row.name,
            f"{row.entries:,}",
            str(row.requests),
            f"{row.p50_ms:.1f}",
            f"{row.p99_ms:.1f}",
            f"{row.lookup_p50_ms:.2f}",
        )
    console.print(table)
    console.print(
        f"index memory per 10,000 entries (vectors, entries, texts; answers excluded): {per_10k / 1e6:.1f} MB"
    )
    summary["latency"] = [
        {
            "queries": r.name,
            "entries": r.entries,
            "requests": r.requests,
            "p50_ms": r.p50_ms,
            "p99_ms": r.p99_ms,
            "lookup_p50_ms": r.lookup_p50_ms,
        }
        for r in latency
    ]
    summary["index_mb_per_10k"] = round(per_10k / 1e6, 2)


def _write_curve(out: Path, curves: dict[str, FalseHits], points: list[PairPoint]) -> None:
    header = ["threshold"]
    for name in curves:
        header += [f"false_hit_rate_{name}", f"false_hit_rate_{name}_unguarded"]
    header += ["precision", "recall", "precision_unguarded", "recall_unguarded"]
    lines = [",".join(header)]
    for p in points:
        row = [f"{p.threshold:.2f}"]
        for c in curves.values():
            row += [f"{c.rate(p.threshold):.5f}", f"{c.rate(p.threshold, guards=False):.5f}"]
        row += [f"{v:.4f}" for v in (p.precision, p.recall, p.precision_unguarded, p.recall_unguarded)]
        lines.append(",".join(row))
    (out / "cache-eval.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def _plot(out: Path, curves: dict[str, FalseHits], points: list[PairPoint], threshold: float) -> bool:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    ts: list[float] = [p.threshold for p in points]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(ts, [p.precision for p in points], "C0-", label="precision")
    left.plot(ts, [p.recall for p in points], "C1-", label="recall")
    left.plot(ts, [p.precision_unguarded for p in points], "C0--", label="precision, no guards")
    left.plot(ts, [p.recall_unguarded for p in points], "C1--", label="recall, no guards")
    left.set(title="Labelled paraphrase pairs", xlabel="similarity threshold", ylim=(0, 1.02))
    left.legend(loc="lower left")
    for i, curve in enumerate(curves.values()):
        right.plot(ts, [100 * curve.rate(t) for t in ts], f"C{i + 2}-", label=curve.name)
        right.plot(
            ts,
            [100 * curve.rate(t, guards=False) for t in ts],
            f"C{i + 2}--",
            label=f"{curve.name}, no guards",
        )
    right.axhline(100 * FALSE_HIT_BAR, color="grey", linewidth=0.8, label="0.5% bar")
    for axis in (left, right):
        axis.axvline(threshold, color="black", linestyle=":", linewidth=0.8)
    right.set(
        title="False hits on distinct questions",
        xlabel="similarity threshold",
        ylabel="% of lookups",
        yscale="symlog",
    )
    right.set_yscale("symlog", linthresh=1.0)
    right.set_ylim(0, 100)
    right.legend(loc="upper right")
    figure.tight_layout()
    figure.savefig(out / "cache-eval.png", dpi=110)
    plt.close(figure)
    return True
