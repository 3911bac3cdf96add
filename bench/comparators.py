"""How often each verification comparator calls a wrong answer acceptable, on recorded answers.

A verification's label is the comparator's verdict on the cheap answer against the reference (a
route) or on a cached answer against the fresh one (the semantic cache). This script scores the
mechanical comparators and `embedding` on the 1,319 recorded GSM8K questions of
data/routellm/gsm8k_responses.csv: GPT-4's answer is the reference, Mixtral's the candidate, and
the recorded correctness of each says what the verdict should have been.

- "wrong passed": of the questions where Mixtral was wrong and GPT-4 right (a loss the label must
  catch), the share the comparator called acceptable. This is what lets a calibration certify a
  cut, or a cache threshold, that breaks its target.
- "right passed": of the questions where both were right, the share called acceptable (a label
  that refuses those costs savings, not quality).
- "matches both-or-neither": verdict acceptable exactly when both were right or both wrong.

`llm_judge` needs a judge model and is not scored here.

Usage: python bench/comparators.py [--limit N] [--threshold 0.9]
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np

from faregate.embedding.embedder import Embedder
from faregate.learning.online.comparators import mechanical

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "routellm" / "gsm8k_responses.csv"
WEAK = "mistralai/Mixtral-8x7B-Instruct-v0.1"
STRONG = "gpt-4-1106-preview"
MECHANICAL = ("exact", "numeric", "final_answer")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limit", type=int, default=0, help="only the first N questions (0: all)")
    parser.add_argument("--threshold", type=float, default=0.9, help="the embedding comparator's cosine")
    args = parser.parse_args()
    with DATA.open(newline="", encoding="utf-8") as file:
        rows = list(csv.DictReader(file))
    if args.limit:
        rows = rows[: args.limit]
    weak_right = np.array([r[WEAK] == "True" for r in rows])
    strong_right = np.array([r[STRONG] == "True" for r in rows])
    verdicts: dict[str, np.ndarray] = {}
    for name in MECHANICAL:
        comparator = mechanical(name)
        verdicts[name] = np.array(
            [comparator.compare(r[f"{STRONG}_response"], r[f"{WEAK}_response"]).acceptable for r in rows]
        )
    embedder = Embedder.load()
    cosines = []
    for r in rows:
        vectors = embedder.embed([r[f"{STRONG}_response"], r[f"{WEAK}_response"]])
        cosines.append(float(vectors[0] @ vectors[1]))
    verdicts[f"embedding (cosine >= {args.threshold})"] = np.array(cosines) >= args.threshold
    loss = strong_right & ~weak_right
    both = strong_right & weak_right
    same = weak_right == strong_right
    losses, boths = int(loss.sum()), int(both.sum())
    print(f"{len(rows)} GSM8K questions: {losses} Mixtral wrong and GPT-4 right, {boths} both right")
    print()
    print("| comparator | wrong passed | right passed | matches both-or-neither |")
    print("|---|---|---|---|")
    for name, accepted in verdicts.items():
        wrong_passed = int((accepted & loss).sum())
        right_passed = int((accepted & both).sum())
        matches = float(np.mean(accepted == same))
        print(
            f"| {name} | {wrong_passed}/{losses} = {wrong_passed / max(losses, 1):.1%}"
            f" | {right_passed}/{boths} = {right_passed / max(boths, 1):.1%}"
            f" | {matches:.1%} |"
        )


if __name__ == "__main__":
    main()
