"""Semantic cache: embedding + lookup latency of short chat questions, old code against new, one run.

Fills a semantic cache (one scope, as one tenant's traffic) with the vectors of up to 50,000 real
texts from the vendored data (PAWS-Wiki sentences, MMLU and GSM8K questions, MMLU answer options
and question stems, sentences of the recorded GSM8K answers; long texts are cut at the model's
256 tokens as the vector cache does), after the anchors of the hand-labelled paraphrase set, then
times `SemanticCache.explain` (tokenize, embed, search, guards: the real async path through the
worker thread) for each paraphrase and near-miss question of that set, at each size.

Two worker processes run side by side: the baseline code (`--baseline`, default the last commit
with the exact search, exported with `git archive` to a temporary folder) and this checkout's
code, each with its own cache filled with the same vectors. They are timed in alternating blocks
of queries, one at a time, so both see the same machine load; after each lookup the worker also
times the model alone (a direct call), which shows what the machine gave the model at that moment.
The same run measures the index's memory per 10,000 entries in each, and, in this process, the new
index's recall against an exact search on the same vectors.

The vectors are computed once and kept in the on-disk vector cache (~/.cache/faregate/bench):
the first run embeds ~56,000 texts (about 20 minutes on one core here), a re-run starts at once.

Usage: python bench/semantic_lookup.py [--data data] [--sizes 2500,20000,50000] [--rounds 3]
       [--baseline main] [--wait-load 1.5] [--out bench/results/semantic_lookup.json]
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
# The last commit whose semantic index was one exact matrix per scope, searched in a second hand-off.
BASELINE = "b9811fc"
BLOCK = 25
WARMUP = 20
PROBE_CHOICES = (4, 8, 16, 32)
RESPONSE_COLUMNS = ("mistralai/Mixtral-8x7B-Instruct-v0.1_response", "gpt-4-1106-preview_response")


# --- the texts ----------------------------------------------------------------------------------


def fill_texts(data: Path) -> list[str]:
    """Distinct real texts of three words or more, in a fixed order."""
    csv.field_size_limit(1 << 30)
    texts: dict[str, None] = {}

    def add(text: str) -> None:
        text = " ".join(text.split())
        if len(text.split()) >= 3:
            texts.setdefault(text, None)

    for name in ("paws_wiki_dev.tsv", "paws_wiki_test.tsv"):
        with (data / "paraphrase" / name).open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle, delimiter="\t", quoting=csv.QUOTE_NONE):
                add(row["sentence1"])
                add(row["sentence2"])
    prompts: list[str] = []
    for path in sorted((data / "routellm" / "mmlu").glob("*.csv")):
        with path.open(newline="", encoding="utf-8") as handle:
            prompts += [row["prompt"] for row in csv.DictReader(handle)]
    with (data / "routellm" / "gsm8k_responses.csv").open(newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for prompt in prompts:
        add(prompt)
    for row in rows:
        add(row["prompt"])
    for prompt in prompts:
        add(prompt.partition("\nA.")[0])
        for line in prompt.splitlines():
            option = re.match(r"^[A-D]\.\s+(.*)", line.strip())
            if option:
                add(option.group(1))
    for row in rows:
        for column in RESPONSE_COLUMNS:
            for line in row[column].splitlines():
                for sentence in re.split(r"(?<=[.?!])\s+", line.strip()):
                    add(sentence)
    return list(texts)


def paraphrase_set() -> tuple[list[str], list[str]]:
    """(anchors, queries) of the hand-labelled set: short chat questions and their variants."""
    from faregate.evals.cache_eval.measure import load_pairs

    pairs = load_pairs()
    anchors = list(dict.fromkeys(p.anchor for p in pairs))
    queries = [t for t in dict.fromkeys(p.other for p in pairs) if t not in set(anchors)]
    return anchors, queries


# --- one worker: one version of the code, its own cache -----------------------------------------


def worker(texts_path: Path, vectors_path: Path) -> None:
    """Answers JSON commands on stdin with JSON lines on stdout; uses only API both versions have."""
    import faregate
    from faregate.cache.semantic import SemanticCache
    from faregate.cache.semantic_index import Scope, SemanticIndex
    from faregate.embedding.embedder import DIMENSIONS, AsyncEmbedder, Embedder

    texts: list[str] = json.loads(texts_path.read_text(encoding="utf-8"))
    vectors = np.load(vectors_path)
    scope = Scope("bench-tenant", "bench-model")
    out = sys.stdout

    async def serve() -> None:
        model = Embedder.load()
        cache: SemanticCache[str] = SemanticCache(AsyncEmbedder(model), max_entries=10**7, ttl_s=1e9)
        await cache.embedder.start()
        reply(out, {"ready": str(Path(faregate.__file__).parent)})
        filled = 0
        for line in sys.stdin:
            command = json.loads(line)
            if "fill" in command:
                target = int(command["fill"])

                def load(start: int = filled, stop: int = target) -> None:
                    for i in range(start, stop):
                        cache.index.add(scope, vectors[i], texts[i], "")
                    settle = getattr(cache.index, "settle", None)  # the new index clusters aside
                    if settle is not None:
                        settle()

                started = time.perf_counter()
                await cache.embedder.call(load)
                filled = target
                reply(out, {"entries": len(cache.index), "fill_s": time.perf_counter() - started})
            elif "measure" in command:
                times, model_times, outcomes = [], [], []
                for query in command["measure"]:
                    started = time.perf_counter()
                    result = await cache.explain(scope, query)
                    times.append((time.perf_counter() - started) * 1e3)
                    outcomes.append([result.status, result.entry.text if result.entry else ""])
                    # The model alone, called directly, right after: what the machine gives it now.
                    started = time.perf_counter()
                    model.embed_fitting([query])
                    model_times.append((time.perf_counter() - started) * 1e3)
                reply(out, {"ms": times, "model_ms": model_times, "outcomes": outcomes})
            elif "memory" in command:
                count = int(command["memory"])
                tracemalloc.start()
                before = tracemalloc.get_traced_memory()[0]
                index: SemanticIndex[None] = SemanticIndex(DIMENSIONS, max_entries=10**7)
                for i in range(count):
                    # A fresh copy of each text, so it is traced like a request's would be.
                    index.add(scope, vectors[i], f"{texts[i]} #", None)
                used = tracemalloc.get_traced_memory()[0] - before
                tracemalloc.stop()
                del index
                reply(out, {"bytes": used})
            else:
                break
        await cache.embedder.close()

    asyncio.run(serve())


def reply(out: IO[str], value: dict[str, Any]) -> None:
    out.write(json.dumps(value) + "\n")
    out.flush()


class Worker:
    def __init__(self, name: str, src: Path, texts_path: Path, vectors_path: Path) -> None:
        self.name = name
        env = {**os.environ, "PYTHONPATH": str(src)}
        script = [
            sys.executable,
            str(Path(__file__).resolve()),
            "--worker",
            str(texts_path),
            str(vectors_path),
        ]
        self.process = subprocess.Popen(
            script,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tempfile.gettempdir(),
        )
        self.code = str(self.ask(None)["ready"])

    def ask(self, command: dict[str, Any] | None) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        if command is not None:
            self.process.stdin.write(json.dumps(command) + "\n")
            self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the {self.name} worker stopped")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write('{"quit": true}\n')
        self.process.stdin.flush()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()


# --- recall of the new index against exact search -----------------------------------------------


def recall(vectors: np.ndarray, size: int, queries: np.ndarray, floor: float) -> list[dict[str, Any]]:
    """For each probe count: the share of the exact search's top-4 neighbours at or above `floor`
    (the cache's candidate floor) that the index returns, the share of queries whose best
    neighbour (no floor) it returns, and the search time alone. Compared by score, so that two
    entries with the same vector (texts cut at 256 tokens) count as the same neighbour."""
    from faregate.cache.semantic_index import Scope, SemanticIndex
    from faregate.embedding.embedder import DIMENSIONS

    scope = Scope("recall", "recall")
    index: SemanticIndex[int] = SemanticIndex(DIMENSIONS, max_entries=10**7, ttl_s=1e9)
    for i in range(size):
        index.add(scope, vectors[i], "", i)
    exact = queries @ vectors[:size].T
    truth = -np.sort(-exact, axis=1)[:, :4]
    partition = index._partitions[scope]
    rows = []
    for probes in PROBE_CHOICES:
        partition.probes = probes
        wanted = found = top1 = 0
        times = []
        for q, vector in enumerate(queries):
            started = time.perf_counter()
            hits = index.search(scope, vector, k=4, min_score=floor)
            times.append(time.perf_counter() - started)
            relevant = [float(s) for s in truth[q] if s >= floor]
            wanted += len(relevant)
            returned = [score for _, score in hits]
            for want in relevant:
                match = next((i for i, got in enumerate(returned) if abs(got - want) < 1e-5), None)
                if match is not None:
                    found += 1
                    returned.pop(match)
            best = index.search(scope, vector, k=1)
            top1 += bool(best) and abs(best[0][1] - float(truth[q][0])) < 1e-5
        rows.append(
            {
                "probes": probes,
                "cells": len(partition.cells),
                "neighbours_above_floor": wanted,
                "found_above_floor": found,
                "recall_above_floor": found / wanted if wanted else 1.0,
                "top1_agreement": top1 / len(queries),
                "search_p50_ms": float(np.percentile(times, 50) * 1e3),
            }
        )
    return rows


# --- the run ------------------------------------------------------------------------------------


def percentiles(values: Sequence[float]) -> dict[str, float]:
    return {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99))}


def wait_for_load(limit: float, timeout_s: float = 600.0) -> None:
    """On a shared machine: wait until the 1-minute load average is under `limit` (0: don't)."""
    deadline = time.monotonic() + timeout_s
    while limit and os.getloadavg()[0] >= limit and time.monotonic() < deadline:
        time.sleep(5)


def export_baseline(revision: str, into: Path) -> Path:
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", revision, "src"], check=True, capture_output=True
    )
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "src"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=ROOT / "data")
    parser.add_argument("--sizes", default="2500,20000,50000")
    parser.add_argument("--rounds", type=int, default=3, help="passes over the queries per size")
    parser.add_argument(
        "--baseline",
        default=BASELINE,
        help="git revision of the old code ('' to skip; default: the exact search)",
    )
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "semantic_lookup.json")
    parser.add_argument(
        "--wait-load", type=float, default=0.0, help="before each size, wait (up to 10 min) for this load"
    )
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    from faregate.cache.semantic import DEFAULT_THRESHOLD, NEAR_MARGIN
    from faregate.embedding.vector_cache import default_cache_dir, embed_texts

    anchors, queries = paraphrase_set()
    corpus = [t for t in fill_texts(args.data) if t not in set(anchors) | set(queries)]
    order = np.random.default_rng(0).permutation(len(corpus))
    held_out = [corpus[i] for i in order[max(sizes) :]][:3000]
    fill = anchors + [corpus[i] for i in order[: max(sizes) - len(anchors)]]
    if len(fill) < max(sizes):
        raise SystemExit(f"only {len(fill)} texts for {max(sizes)} entries")
    print(f"{len(fill)} fill texts, {len(queries)} queries, {len(held_out)} held-out texts", flush=True)
    started = time.time()
    vectors = embed_texts(
        [*fill, *queries, *held_out],
        default_cache_dir().parent / "bench",
        progress=lambda done, total: print(
            f"  embedded {done}/{total} ({time.time() - started:.0f} s)", flush=True
        ),
    )
    fill_vectors = vectors[: len(fill)]
    query_vectors = vectors[len(fill) : len(fill) + len(queries)]
    held_vectors = vectors[len(fill) + len(queries) :]
    report: dict[str, Any] = {"command": " ".join(sys.argv), "sizes": {}, "load_start": os.getloadavg()}

    with tempfile.TemporaryDirectory(prefix="semantic-lookup-") as tmp:
        texts_path, vectors_path = Path(tmp) / "texts.json", Path(tmp) / "vectors.npy"
        texts_path.write_text(json.dumps(fill), encoding="utf-8")
        np.save(vectors_path, fill_vectors)
        workers = []
        if args.baseline:
            (Path(tmp) / "old").mkdir()
            workers.append(
                Worker("old", export_baseline(args.baseline, Path(tmp) / "old"), texts_path, vectors_path)
            )
        workers.append(Worker("new", ROOT / "src", texts_path, vectors_path))
        report["code"] = {w.name: w.code for w in workers}
        fills: dict[tuple[int, str], float] = {}
        try:
            count = min(10_000, len(fill))
            report["bytes_per_10k"] = {
                w.name: w.ask({"memory": count})["bytes"] * 10_000 // count for w in workers
            }
            for size in sizes:
                for w in workers:
                    row_fill = w.ask({"fill": size})["fill_s"]
                    w.ask({"measure": queries[:WARMUP]})
                    fills[(size, w.name)] = row_fill
                wait_for_load(args.wait_load)
                row: dict[str, Any] = {"load_before": os.getloadavg()}
                row.update({f"fill_s_{w.name}": fills[(size, w.name)] for w in workers})
                times: dict[str, list[float]] = {w.name: [] for w in workers}
                model_times: dict[str, list[float]] = {w.name: [] for w in workers}
                outcomes: dict[str, list[list[str]]] = {w.name: [] for w in workers}
                for round_ in range(args.rounds):
                    for b, start in enumerate(range(0, len(queries), BLOCK)):
                        block = queries[start : start + BLOCK]
                        for w in workers if (b + round_) % 2 == 0 else workers[::-1]:
                            answer = w.ask({"measure": block})
                            times[w.name] += answer["ms"]
                            model_times[w.name] += answer["model_ms"]
                            if round_ == 0:
                                outcomes[w.name] += answer["outcomes"]
                row.update({w.name: percentiles(times[w.name]) for w in workers})
                row.update({f"model_{w.name}": percentiles(model_times[w.name]) for w in workers})
                row["lookups"] = len(times["new"])
                row["hits"] = sum(o[0] == "hit" for o in outcomes["new"])
                row["decisions"] = len(outcomes["new"])
                if "old" in outcomes:
                    pairs = zip(outcomes["old"], outcomes["new"], strict=True)
                    row["same_decision"] = sum(a == b for a, b in pairs)
                row["load_after"] = os.getloadavg()
                report["sizes"][size] = row
                print(json.dumps({size: row}), flush=True)
        finally:
            for w in workers:
                w.close()

    floor = DEFAULT_THRESHOLD - NEAR_MARGIN
    report["recall"] = {
        "chat_questions": recall(fill_vectors, max(sizes), query_vectors, floor),
        "held_out_texts": recall(fill_vectors, max(sizes), held_vectors, floor),
    }
    report["load_end"] = os.getloadavg()
    print(json.dumps(report["recall"], indent=1))
    print_table(report)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2), encoding="utf-8")


def print_table(report: dict[str, Any]) -> None:
    print("\n| entries | old p50 | new p50 | old p99 | new p99 | model alone p50 (old / new) | same | load |")
    print("|---|---|---|---|---|---|---|---|")
    nan = {"p50": float("nan"), "p99": float("nan")}
    for size, row in report["sizes"].items():
        old, model_old = row.get("old", nan), row.get("model_old", nan)
        same = f"{row.get('same_decision', '-')}/{row['decisions']}"
        load = f"{row['load_before'][0]:.2f} / {row['load_after'][0]:.2f}"
        print(
            f"| {int(size):,} | {old['p50']:.2f} ms | {row['new']['p50']:.2f} ms | {old['p99']:.2f} ms "
            f"| {row['new']['p99']:.2f} ms | {model_old['p50']:.2f} / {row['model_new']['p50']:.2f} ms "
            f"| {same} | {load} |"
        )
    for name, size in report["bytes_per_10k"].items():
        print(f"index memory per 10,000 entries, {name}: {size / 2**20:.1f} MB")


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        worker(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        main()
