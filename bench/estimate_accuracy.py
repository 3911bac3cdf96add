"""Token estimates without the tokenizer, against the exact o200k count, on real model outputs.

What the gateway bills when an upstream reports no usage (a client gone mid-stream, a cut
stream, an upstream that never reports usage) is an estimate. The exact o200k BPE costs ~58 MiB
of RSS once loaded (bench/README.md, the memory soak) and is itself only an estimate for a model
with another tokenizer, so this measures lighter estimators against it:

  (a) bytes/k      UTF-8 bytes / k (k = 4 and 3), rounded up
  (b) light        faregate.light_tokens: o200k-like pieces priced by kind (the default)
  (c) chunks       content deltas counted in the stream: one per o200k token when the provider
                   sends one token per delta (OpenAI, the simulator: exact by construction);
                   `chunks/3` when it sends ~3 tokens per delta (providers that batch)
  (d) max(c, b)    the larger of the two, for both chunkings

Texts: both models' answers in data/routellm/gsm8k_responses.csv (Mixtral-8x7B and GPT-4), the
first 20 prompts of every data/routellm/mmlu subject, and tests/fixtures/estimate_texts.json
(code, JSON, SQL, logs, tables, chat with emoji, eight other languages). Error is
(estimate - o200k) / o200k per text: below 0 counts under (the operator's loss).

Usage: python bench/estimate_accuracy.py [--mmlu-per-subject 20] [--timing]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from faregate import light_tokens, tokens

ROOT = Path(__file__).resolve().parent.parent
GSM8K = ROOT / "data/routellm/gsm8k_responses.csv"
MMLU = ROOT / "data/routellm/mmlu"
FIXTURE = ROOT / "tests/fixtures/estimate_texts.json"
BATCH = 3  # tokens per delta for the batched chunking


def corpora(mmlu_per_subject: int) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {"gsm8k Mixtral": [], "gsm8k GPT-4": []}
    with GSM8K.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            out["gsm8k Mixtral"].append(row["mistralai/Mixtral-8x7B-Instruct-v0.1_response"])
            out["gsm8k GPT-4"].append(row["gpt-4-1106-preview_response"])
    prompts: list[str] = []
    for path in sorted(MMLU.glob("*.csv")):
        with path.open(newline="", encoding="utf-8") as f:
            for i, row in enumerate(csv.DictReader(f)):
                if i >= mmlu_per_subject:
                    break
                prompts.append(row["prompt"])
    out["mmlu prompts"] = prompts
    out["fixture"] = list(json.loads(FIXTURE.read_text(encoding="utf-8")).values())
    return {name: [t for t in texts if t] for name, texts in out.items()}


def estimators() -> dict[str, Callable[[str, int], int]]:
    """Each takes the text and its exact count (for the chunk count only: one delta per token)."""
    light = light_tokens.count_text
    return {
        "(a) bytes/4": lambda t, n: math.ceil(len(t.encode()) / 4),
        "(a) bytes/3": lambda t, n: math.ceil(len(t.encode()) / 3),
        "(b) light": lambda t, n: light(t),
        "(c) chunks, 1 token/delta": lambda t, n: n,
        f"(c) chunks, {BATCH} tokens/delta": lambda t, n: math.ceil(n / BATCH),
        "(d) max(c 1/delta, b)": lambda t, n: max(n, light(t)),
        f"(d) max(c {BATCH}/delta, b)": lambda t, n: max(math.ceil(n / BATCH), light(t)),
    }


def row(name: str, texts: list[str], exact: list[int], estimate: Callable[[str, int], int]) -> str:
    counts = [estimate(t, n) for t, n in zip(texts, exact, strict=True)]
    errors = [(c - n) / n for c, n in zip(counts, exact, strict=True)]
    under = sum(1 for e in errors if e < 0)
    total = sum(counts) / sum(exact) - 1
    return (
        f"| {name} | {statistics.mean(errors):+.1%} | {statistics.mean(abs(e) for e in errors):.1%} "
        f"| {min(errors):+.1%} | {max(errors):+.1%} | {under}/{len(errors)} | {total:+.1%} |"
    )


def timing(texts: list[str]) -> None:
    """CPU per KiB of text, each text counted on its own (as the gateway counts)."""
    kib = sum(len(t.encode()) for t in texts) / 1024
    for name, count in (("o200k", tokens.count_text), ("light", light_tokens.count_text)):
        count(texts[0])
        start = time.process_time()
        for _ in range(3):
            for text in texts:
                count(text)
        per = (time.process_time() - start) / 3
        print(f"{name}: {per / kib * 1e6:.1f} µs of CPU per KiB ({kib:.0f} KiB in {len(texts):,} texts)")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mmlu-per-subject", type=int, default=20)
    parser.add_argument("--timing", action="store_true", help="also time o200k and the light estimate")
    args = parser.parse_args()
    texts = corpora(args.mmlu_per_subject)
    exact = {name: [tokens.count_text(t) for t in group] for name, group in texts.items()}
    for name, group in texts.items():
        print(f"\n{name}: {len(group)} texts, {sum(exact[name]):,} o200k tokens")
        print("| estimator | mean error | mean abs error | worst under | worst over | texts under | total |")
        print("|---|---:|---:|---:|---:|---:|---:|")
        for label, estimate in estimators().items():
            print(row(label, group, exact[name], estimate))
    print("\nfixture, per text (o200k / light / bytes/4):")
    fixture = json.loads(FIXTURE.read_text(encoding="utf-8"))
    per_text = (
        f"{k} {tokens.count_text(t)}/{light_tokens.count_text(t)}/{math.ceil(len(t.encode()) / 4)}"
        for k, t in fixture.items()
    )
    print(", ".join(per_text))
    if args.timing:
        timing([t for group in texts.values() for t in group])


if __name__ == "__main__":
    main()
