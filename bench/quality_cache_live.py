"""The semantic cache's calibrated acceptance live, through the gateway, on the hand-labelled chat pairs.

The simulator answers every question of the pair files with the answer of its class (a question
and its paraphrases share one answer; a near miss has its own), so a served answer is right
exactly when the pair files say the cached question was a paraphrase. A gateway with
`cache.semantic.max_wrong_hit_rate: 0.005` then gets, with the openai SDK at temperature 0, the
warm-up files' questions and then the test file's, each file as the offline replay streams it (its
pairs in a seeded order, the first text of each pair then the second, a text once, with 500
distinct RouteLLM questions spread between them), each file in a scope of its own. Every
decision is the gateway's own: the threshold in force, the free labels of unserved candidates,
the verified hits, the conflicts.

Reported for the test file (after the warm-up): lookups, semantic hits served, wrong hits / lookups,
and the share of true paraphrases served (lookups of a question whose paraphrase was already
cached, answered right), beside the threshold in force and its bound at the end.

    python bench/quality_cache_live.py [--confidence 0.8] [--warm FILE ...] [--pairs FILE]
        [--method direct] [--prior-lookups 2000]
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np
import openai

from faregate.cli.cache_stream import filler_texts
from faregate.evals.cache_eval.stream import LabelledPair, load_labelled_pairs
from routes_gsm8k import MASTER, ROOT, env, free_port, wait_healthy

PAIRS = ROOT / "src" / "faregate" / "evals" / "cache_eval" / "data"
MODEL = "chat-m"


def classes(pairs: list[LabelledPair]) -> dict[str, int]:
    """A class per question: a question and its paraphrases (transitively) share one."""
    parent: dict[str, str] = {}

    def find(text: str) -> str:
        parent.setdefault(text, text)
        while parent[text] != text:
            parent[text] = parent[parent[text]]
            text = parent[text]
        return text

    for pair in pairs:
        find(pair.first), find(pair.second)
        if pair.same:
            parent[find(pair.first)] = find(pair.second)
    roots: dict[str, int] = {}
    return {text: roots.setdefault(find(text), len(roots)) for text in parent}


def stream(pairs: list[LabelledPair], distinct: list[str], seed: int) -> list[str]:
    """The offline replay's order (evals/cache_eval/stream.py): pairs in a seeded permutation, the
    first text of each then the second, the distinct questions spread between them; a text once."""
    rng = np.random.default_rng(seed)
    order = [pairs[int(i)] for i in rng.permutation(len(pairs))]
    pending = list(distinct)
    rng.shuffle(pending)
    per_pair = len(pending) / max(1, len(order))
    queries: list[str] = []
    owed = 0.0
    for pair in order:
        queries += [pair.first, pair.second]
        owed += per_pair
        while owed >= 1 and pending:
            queries.append(pending.pop())
            owed -= 1
    return list(dict.fromkeys(queries))


def admin(port: int, path: str) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {MASTER}"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=Path, default=PAIRS / "chat_pairs_test.txt")
    parser.add_argument(
        "--warm",
        type=Path,
        action="append",
        help="warm-up pair files, in order (default: the dev pairs twice)",
    )
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--bound", type=float, default=0.005)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--method", choices=("product", "direct"), default="product", help="cache.semantic.bound"
    )
    parser.add_argument(
        "--prior-lookups", type=int, default=0, help="cache.semantic.prior_lookups (the shipped prior)"
    )
    parser.add_argument("--distinct", type=int, default=500, help="distinct questions between the pairs")
    args = parser.parse_args()
    warm = args.warm if args.warm is not None else [PAIRS / "chat_pairs_dev.txt"] * 2

    files = [*warm, args.pairs]
    loaded = [load_labelled_pairs(path) for path in files]
    texts = {t for pairs in loaded for p in pairs for t in (p.first, p.second)}
    distinct = filler_texts(ROOT / "data", texts)[: args.distinct]
    # Classes per file, numbered apart: the same text in two files keeps one answer per file's
    # labels (the dev and test halves share no question).
    answers: dict[str, str] = {}
    per_file: list[dict[str, int]] = []
    for n, pairs in enumerate(loaded):
        found = classes(pairs)
        per_file.append(found)
        for text, cls in found.items():
            answers.setdefault(text.strip(), f"The answer is number {n * 100_000 + cls}.")
    for i, text in enumerate(distinct):
        answers.setdefault(text.strip(), f"The distinct answer number {i}.")

    work = Path(tempfile.mkdtemp(prefix="faregate-cache-live-"))
    with (work / "answers.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "answer"])
        writer.writerows(sorted(answers.items()))
    (work / "sim.yaml").write_text(
        "seed: 1\ndefaults: {ttft_ms: 1, tokens_per_s: 0, faults: {}}\nmodels:\n"
        f"  {MODEL}: {{answer: {{replay: {{csv: {work / 'answers.csv'}, column: answer,"
        " prompt_column: prompt, fallback: 'no recording'}}}\n"
    )
    sim_port, port = free_port(), free_port()
    (work / "faregate.yaml").write_text(
        f"server: {{port: {port}, request_timeout_s: 60}}\nstore: {{path: {work / 'store'}}}\n"
        f"sim: {{mode: 'on', launch: false, port: {sim_port}}}\n"
        f"models:\n  {MODEL}: {{input: 1, output: 2}}\n"
        "cache:\n  semantic:\n    enabled: true\n"
        f"    max_wrong_hit_rate: {args.bound}\n    confidence: {args.confidence}\n    verify_hits: 0.05\n"
        f"    bound: {args.method}\n    prior_lookups: {args.prior_lookups}\n"
    )
    cli = [sys.executable, "-m", "faregate.cli.main"]
    sim = subprocess.Popen(
        [*cli, "sim", "--port", str(sim_port), "--script", str(work / "sim.yaml")], env=env()
    )
    gateway = subprocess.Popen([*cli, "serve", "-c", str(work / "faregate.yaml")], env=env())
    try:
        wait_healthy(f"http://127.0.0.1:{sim_port}/health")
        wait_healthy(f"http://127.0.0.1:{port}/health")
        key = subprocess.run(
            [*cli, "keys", "create", "--name", "bench", "-c", str(work / "faregate.yaml")],
            env=env(),
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()[-1]
        client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=key, max_retries=0, timeout=60)
        report: dict[str, Any] = {}
        for n, (path, pairs) in enumerate(zip(files, loaded, strict=True)):
            found = per_file[n]
            cached: set[int] = set()
            counts = {"lookups": 0, "served": 0, "wrong": 0, "paraphrase_lookups": 0, "paraphrases_served": 0}
            # Each stream is a scope of its own (the system prompt is part of the scope), so its
            # questions never meet another stream's: only the acceptance's evidence carries over.
            system = {"role": "system", "content": f"Stream {n + 1}."}
            seed = args.seed if n == len(files) - 1 else args.seed + 100 + n
            for text in stream(pairs, distinct, seed):
                raw = client.chat.completions.with_raw_response.create(
                    model=MODEL, messages=[system, {"role": "user", "content": text}], temperature=0
                )
                status = raw.headers["x-faregate-cache"]
                answer = raw.parse().choices[0].message.content or ""
                paraphrase = text in found and found[text] in cached
                served = status == "semantic-hit"
                wrong = served and answer != answers[text.strip()]
                counts["lookups"] += 1
                counts["served"] += served
                counts["wrong"] += wrong
                counts["paraphrase_lookups"] += paraphrase
                counts["paraphrases_served"] += paraphrase and served and not wrong
                if status == "miss" and text in found:
                    cached.add(found[text])
                    time.sleep(0.02)  # the answer is stored just after the response
            report[f"{n + 1}. {path.name}"] = counts
        deadline = time.monotonic() + 60
        while admin(port, "/admin/quality")["pending"] and time.monotonic() < deadline:
            time.sleep(0.2)
        cache = admin(port, "/admin/quality")["cache"]
    finally:
        for process in (gateway, sim):
            process.terminate()
            process.wait(timeout=30)
    print(f"bound {args.bound:.1%} of lookups, confidence {args.confidence}, through the gateway\n")
    print("| file | lookups | served | wrong / lookups | true paraphrases served |")
    print("|---|---|---|---|---|")
    for name, c in report.items():
        para = c["paraphrase_lookups"]
        share = f"{c['paraphrases_served']}/{para} = {c['paraphrases_served'] / para:.1%}" if para else "-"
        wrong = f"{c['wrong']} = {c['wrong'] / c['lookups']:.2%}"
        print(f"| {name} | {c['lookups']} | {c['served']} | {wrong} | {share} |")
    threshold = cache["threshold"]
    print(
        f"\nat the end: threshold {'none' if threshold is None else f'{threshold:.2f}'}, wrong-hit bound "
        f"{cache['wrong_hit_bound']:.2%}, {cache['labelled']} labelled lookups ({cache['wrong']} wrong), "
        f"{cache['by_label'].get('paid', 0)} hits verified (${float(cache['verification_cost_usd']):.6f}), "
        f"{cache['conflicts']} entries with a conflict"
    )


if __name__ == "__main__":
    main()
