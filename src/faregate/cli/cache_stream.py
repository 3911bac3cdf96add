"""`faregate cache-eval --pairs FILE`: a labelled stream replayed with online acceptance, shown."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from faregate.evals.cache_eval.stream import (
    Hindsight,
    StreamReport,
    StreamWindow,
    hindsight,
    load_labelled_pairs,
    replay_stream,
)
from faregate.learning.online.cache_acceptance import AcceptanceState, CacheAcceptance
from faregate.learning.online.cache_prior import prior_from_similarities, prior_state, write_prior

DISTINCT = 500


def filler_texts(data: Path, exclude: set[str]) -> list[str]:
    """Other traffic for the index: the RouteLLM questions, then PAWS-Wiki sentences (vendored data)."""
    from faregate.evals.replay.outcomes import load_outcomes

    texts: list[str] = []
    routellm = data / "routellm"
    if routellm.is_dir():
        for part in (routellm / "gsm8k_responses.csv", routellm / "mmlu"):
            texts += [r.prompt for r in load_outcomes(part, drop_contaminated=False).records]
    for name in ("paws_wiki_dev.tsv", "paws_wiki_test.tsv"):
        path = data / "paraphrase" / name
        if path.is_file():
            with path.open(encoding="utf-8", newline="") as handle:
                for row in csv.DictReader(handle, delimiter="\t"):
                    texts += [row["sentence1"], row["sentence2"]]
    return [t for t in dict.fromkeys(texts) if t not in exclude]


def run_pairs(
    pairs_files: list[Path],
    data: Path,
    sizes: list[int],
    acceptance: CacheAcceptance,
    *,
    seed: int,
    warm_passes: int,
    cache_dir: Path | None,
    out: Path,
    console: Console,
    warm_files: list[Path] | None = None,
    distinct_count: int = DISTINCT,
    prior: AcceptanceState | None = None,
    prior_lookups: int = 0,
) -> list[StreamReport]:
    """Replay the pairs as a stream at each index size. `warm_files`: earlier traffic of other
    questions, streamed first so the acceptance starts from its evidence (a deployment already
    running); `warm_passes`: the same pairs streamed before in other orders (a projection only);
    `prior`: an offline calibration the acceptance starts from, as `prior_lookups` pseudo-lookups."""
    from faregate.embedding.vector_cache import embed_texts

    pairs = [p for path in pairs_files for p in load_labelled_pairs(path)]
    # Each warm-up file is a stream of its own (its own index, in order), so questions of two files
    # never meet: only the acceptance's evidence carries over, as from earlier traffic.
    warm_streams = [load_labelled_pairs(path) for path in warm_files or []]
    warm_pairs = [p for stream in warm_streams for p in stream]
    texts = sorted({p.first for p in pairs + warm_pairs} | {p.second for p in pairs + warm_pairs})
    pool = filler_texts(data, set(texts))
    # Distinct questions looked up between the pairs (the warm-up streams too, in their own orders:
    # each stream has its own index), the rest fills the index.
    distinct, filler = pool[:distinct_count], pool[distinct_count:]
    needed = max(sizes)
    real = filler[:needed]
    progress = lambda done, total: console.print(f"  embedding: {done}/{total}", highlight=False)  # noqa: E731
    keys = texts + distinct
    vectors = dict(zip(keys, embed_texts(keys, cache_dir, progress=progress), strict=True))
    fill = list(embed_texts(real, cache_dir, progress=progress)) if real else []
    rng = np.random.default_rng(seed)
    while len(fill) < needed:  # past the vendored texts: random unit vectors (scale only, never near)
        v = rng.standard_normal(len(next(iter(vectors.values())))).astype(np.float32)
        fill.append(v / np.linalg.norm(v))
    console.print(
        f"{len(pairs):,} labelled pairs ({sum(p.same for p in pairs):,} same), {len(distinct)} distinct "
        f"questions between them; index filled with up to {min(needed, len(real)):,} vendored texts"
        + (f" and {needed - len(real):,} random vectors" if needed > len(real) else "")
        + (
            f"; warmed up on {len(warm_streams)} earlier streams ({len(warm_pairs):,} pairs)"
            if warm_pairs
            else ""
        )
        + (f"; prior of {prior_lookups:,} pseudo-lookups" if prior is not None and prior_lookups else "")
    )
    reports = []
    ceilings: list[Hindsight] = []
    for size in sizes:
        state = prior_state(prior, prior_lookups) if prior is not None else AcceptanceState(floor=0.80)
        acceptance.calibrate(state)
        for k, stream in enumerate(warm_streams):
            replay_stream(
                stream, vectors, fill[:size], distinct, acceptance, seed=seed + 100 + k, state=state
            )
        for warm in range(warm_passes):
            replay_stream(
                pairs, vectors, fill[:size], distinct, acceptance, seed=seed + 1000 + warm, state=state
            )
        reports.append(
            replay_stream(pairs, vectors, fill[:size], distinct, acceptance, seed=seed, state=state)
        )
        unserved = replay_stream(pairs, vectors, fill[:size], distinct, acceptance, seed=seed, serve=False)
        ceilings.append(hindsight(unserved.trace, acceptance.max_wrong_hit_rate))
    console.print(_table(reports, acceptance, warm_passes))
    for report, ceiling in zip(reports, ceilings, strict=True):
        at = "no threshold" if ceiling.threshold is None else f"threshold {ceiling.threshold:.2f}"
        console.print(
            f"{report.fill:,} entries: the best single threshold in hindsight ({at}, chosen with every "
            f"label: a ceiling, not deployable) serves {ceiling.paraphrase_share:.1%} of true paraphrases "
            f"at {ceiling.wrong_hit_rate:.2%} wrong hits / lookups",
            highlight=False,
        )
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "pairs": [str(p) for p in pairs_files],
        "seed": seed,
        "warm_passes": warm_passes,
        "warm": [str(p) for p in warm_files or []],
        "distinct": distinct_count,
        "runs": [{**_json(r), "hindsight": c._asdict()} for r, c in zip(reports, ceilings, strict=True)],
    }
    (out / "cache-stream.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    console.print(f"wrote {out}/cache-stream.json")
    return reports


def build_prior(
    pairs_files: list[Path],
    data: Path,
    size: int,
    *,
    seeds: int,
    cache_dir: Path | None,
    out_file: Path,
    console: Console,
    distinct_count: int = DISTINCT,
    command: str = "faregate cache-eval --write-prior",
) -> AcceptanceState:
    """The offline calibration shipped as the acceptance's prior (learning/online/cache_prior.py):
    each pairs file replayed as its own stream without serving (every candidate labelled), in
    `seeds` orders, over an index of `size` vendored texts. Its distinct questions are the RouteLLM
    prompts after the ones `--pairs` streams look up (never PAWS sentences: they come in
    near-identical pairs, and their test half is a test stream)."""
    from faregate.embedding.vector_cache import embed_texts

    streams = [load_labelled_pairs(path) for path in pairs_files]
    texts = sorted({p.first for s in streams for p in s} | {p.second for s in streams for p in s})
    pool = filler_texts(data, set(texts))
    distinct = pool[distinct_count : 2 * distinct_count]
    filler = pool[2 * distinct_count : 2 * distinct_count + size]
    keys = texts + distinct
    vectors = dict(zip(keys, embed_texts(keys, cache_dir), strict=True))
    fill = list(embed_texts(filler, cache_dir)) if filler else []
    acceptance = CacheAcceptance()
    lookups: list[tuple[float | None, bool]] = []
    for stream in streams:
        for seed in range(seeds):
            report = replay_stream(stream, vectors, fill, distinct, acceptance, seed=seed, serve=False)
            lookups += [(t.similarity if t.similarity >= 0 else None, t.wrong) for t in report.trace]
    prior = prior_from_similarities(lookups)
    source = {
        "pairs": [path.name for path in pairs_files],
        "index_entries": size,
        "orders": seeds,
        "distinct": distinct_count,
        "command": command,
    }
    write_prior(out_file, prior, source)
    console.print(
        f"prior: {prior.lookups:,} lookups, {sum(prior.labelled):,} with a candidate >= {prior.floor}, "
        f"{sum(prior.wrong):,} of them wrong; wrote {out_file}",
        highlight=False,
    )
    return prior


def _row(w: StreamWindow) -> list[str]:
    return [
        f"{w.lookups:,}",
        f"{w.served:,}",
        f"{w.wrong:,}",
        f"{w.wrong_hit_rate:.2%}",
        f"{w.novel_wrong}/{w.novel_lookups} = {w.novel_wrong_rate:.2%}",
        f"{w.served_wrong_rate:.1%}",
        f"{w.paraphrases_served}/{w.paraphrase_lookups} = {w.paraphrase_share:.1%}",
        f"{w.distinct_wrong}/{w.distinct_lookups}",
        str(w.verified),
    ]


def _table(reports: list[StreamReport], acceptance: CacheAcceptance, warm: int) -> Table:
    kind = "anytime-valid" if acceptance.sequential else "fixed-sample"
    table = Table(
        title=f"Online acceptance: wrong hits / lookups <= {acceptance.max_wrong_hit_rate:.1%} at "
        f"{acceptance.confidence:.0%} confidence ({kind})"
        + (f", after {warm} warm-up passes" if warm else "")
    )
    for column in ("index entries", "window", "lookups", "served", "wrong", "wrong / lookups",
                   "wrong / novel lookups", "wrong / served", "true paraphrases served",
                   "distinct questions served", "hits verified"):  # fmt: skip
        table.add_column(column, justify="right")
    for r in reports:
        for w in r.windows:
            table.add_row(f"{r.fill:,}", f"{w.start + 1:,}-{w.start + w.lookups:,}", *_row(w))
        table.add_row(f"{r.fill:,}", "all", *_row(r.total), style="bold")
        threshold = r.state.threshold
        table.add_row(
            f"{r.fill:,}", "threshold at the end", "none" if threshold is None else f"{threshold:.2f}"
        )
    return table


def _json(report: StreamReport) -> dict[str, Any]:
    def window(w: StreamWindow) -> dict[str, Any]:
        return {
            "start": w.start,
            "lookups": w.lookups,
            "served": w.served,
            "wrong": w.wrong,
            "wrong_hit_rate": w.wrong_hit_rate,
            "paraphrase_lookups": w.paraphrase_lookups,
            "paraphrases_served": w.paraphrases_served,
            "distinct_lookups": w.distinct_lookups,
            "distinct_served": w.distinct_wrong,
            "novel_lookups": w.novel_lookups,
            "novel_wrong": w.novel_wrong,
            "novel_wrong_rate": w.novel_wrong_rate,
            "served_wrong_rate": w.served_wrong_rate,
            "verified": w.verified,
        }

    return {
        "fill": report.fill,
        "index_entries": report.index_entries,
        "total": window(report.total),
        "windows": [window(w) for w in report.windows],
        "threshold_at_end": report.state.threshold,
        "lookups_by_band": report.state.seen,
        "labelled_by_band": report.state.labelled,
        "wrong_by_band": report.state.wrong,
    }
