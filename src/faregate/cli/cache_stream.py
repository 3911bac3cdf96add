"""`faregate cache-eval --pairs FILE`: a labelled stream replayed with online acceptance, shown."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from faregate.evals.cache_eval.stream import StreamReport, StreamWindow, load_labelled_pairs, replay_stream
from faregate.learning.online.cache_acceptance import AcceptanceState, CacheAcceptance

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
    pairs_file: Path,
    data: Path,
    sizes: list[int],
    acceptance: CacheAcceptance,
    *,
    seed: int,
    warm_passes: int,
    cache_dir: Path | None,
    out: Path,
    console: Console,
) -> list[StreamReport]:
    from faregate.embedding.vector_cache import embed_texts

    pairs = load_labelled_pairs(pairs_file)
    texts = sorted({p.first for p in pairs} | {p.second for p in pairs})
    pool = filler_texts(data, set(texts))
    distinct, filler = pool[:DISTINCT], pool[DISTINCT:]
    needed = max(sizes)
    real = filler[:needed]
    progress = lambda done, total: console.print(f"  embedding: {done}/{total}", highlight=False)  # noqa: E731
    vectors = dict(
        zip(texts + distinct, embed_texts(texts + distinct, cache_dir, progress=progress), strict=True)
    )
    fill = list(embed_texts(real, cache_dir, progress=progress)) if real else []
    rng = np.random.default_rng(seed)
    while len(fill) < needed:  # past the vendored texts: random unit vectors (scale only, never near)
        v = rng.standard_normal(len(next(iter(vectors.values())))).astype(np.float32)
        fill.append(v / np.linalg.norm(v))
    console.print(
        f"{len(pairs):,} labelled pairs ({sum(p.same for p in pairs):,} same), {len(distinct)} distinct "
        f"questions between them; index filled with up to {min(needed, len(real)):,} vendored texts"
        + (f" and {needed - len(real):,} random vectors" if needed > len(real) else "")
    )
    reports = []
    for size in sizes:
        state = AcceptanceState(floor=0.80)
        for warm in range(warm_passes):
            replay_stream(
                pairs, vectors, fill[:size], distinct, acceptance, seed=seed + 1000 + warm, state=state
            )
        reports.append(
            replay_stream(pairs, vectors, fill[:size], distinct, acceptance, seed=seed, state=state)
        )
    console.print(_table(reports, acceptance, warm_passes))
    out.mkdir(parents=True, exist_ok=True)
    summary = {
        "pairs": str(pairs_file),
        "seed": seed,
        "warm_passes": warm_passes,
        "runs": [_json(r) for r in reports],
    }
    (out / "cache-stream.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    console.print(f"wrote {out}/cache-stream.json")
    return reports


def _row(w: StreamWindow) -> list[str]:
    return [
        f"{w.lookups:,}",
        f"{w.served:,}",
        f"{w.wrong:,}",
        f"{w.wrong_hit_rate:.2%}",
        f"{w.paraphrases_served}/{w.paraphrase_lookups} = {w.paraphrase_share:.1%}",
        f"{w.distinct_wrong}/{w.distinct_lookups}",
        str(w.verified),
    ]


def _table(reports: list[StreamReport], acceptance: CacheAcceptance, warm: int) -> Table:
    table = Table(
        title=f"Online acceptance, wrong-hit bound {acceptance.max_wrong_hit_rate:.1%} at "
        f"{acceptance.confidence:.0%} confidence" + (f", after {warm} warm-up passes" if warm else "")
    )
    for column in ("index entries", "window", "lookups", "served", "wrong", "wrong-hit rate",
                   "true paraphrases served", "distinct questions served", "hits verified"):  # fmt: skip
        table.add_column(column, justify="right")
    for r in reports:
        for w in r.windows:
            table.add_row(f"{r.fill:,}", f"{w.start + 1:,}-{w.start + w.lookups:,}", *_row(w))
        table.add_row(f"{r.fill:,}", "all", *_row(r.total), style="bold")
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
            "verified": w.verified,
        }

    return {
        "fill": report.fill,
        "index_entries": report.index_entries,
        "total": window(report.total),
        "windows": [window(w) for w in report.windows],
        "labelled_by_band": report.state.labelled,
        "wrong_by_band": report.state.wrong,
    }
