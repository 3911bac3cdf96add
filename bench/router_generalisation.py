"""How well does an MMLU router setting carry to subjects it never saw? Many random subject splits.

One pre-registered split (docs/routing-evidence.md) says little about a router's behaviour on other
subjects: on a hidden set of subjects the shipped router did worse than random while its own split
said 0.557. This replays, for each candidate feature set and penalty, many random splits of the 40
vendored MMLU subjects (whole subjects held out; contaminated prompts left out, as training does):
fit on the training subjects, score the held-out ones, and report the APGR of the held-out half and
of small groups of held-out subjects (a deployment with a few domains of its own). The figures that
decide are the spread and the bad tail: the worst decile and the share of groups below random
(0.5), not the best mean.

APGR is computed as the replay engine computes it (RouteLLM's 10-bin quantile sweep; checked
against `faregate.evals.replay.engine.sweep` on the first split). Ranks for the rank average come
from the training subjects' scores (an empirical CDF fixed at training time), so every candidate
is deployable: nothing here looks at a held-out subject's labels or names.

    python bench/router_generalisation.py [--repeats 40] [--hold-out 20] [--group 5] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from faregate.embedding.embedder import DIMENSIONS
from faregate.embedding.vector_cache import embed_texts
from faregate.evals.replay.engine import DEFAULT_BINS, DEFAULT_PRICES, RETAIN, Pair, call_cost
from faregate.evals.replay.outcomes import STRONG_MODEL, WEAK_MODEL, load_outcomes
from faregate.learning.complexity_router import prompt_matrix
from faregate.learning.linear import Array, LinearModel
from faregate.learning.text_features import PROMPT_NAMES
from faregate.learning.training.fit import RouterModel, train_router
from faregate.learning.training.logistic import fit_logistic
from faregate.learning.training.selection import SplitSpec, replay_apgr, split_outcomes

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "routellm" / "mmlu"
TEXT = np.arange(DIMENSIONS, DIMENSIONS + len(PROMPT_NAMES))
EMBEDDING = np.arange(DIMENSIONS)
LENGTH = np.array([DIMENSIONS + PROMPT_NAMES.index(n) for n in ("log_chars", "log_words")])


@dataclass(slots=True)
class Data:
    x: Array
    y: Array  # 1 where only the strong model is right: the router's target
    strong: Array
    weak: Array
    chars: Array
    subject: np.ndarray
    # What each model's call costs on each prompt (list prices; the question as the input).
    cost_strong: Array
    cost_weak: Array


# (data, training rows, held-out rows) -> held-out scores (higher: send to the strong model first)
Fitter = Callable[[Data, np.ndarray, np.ndarray], Array]


_FITS: dict[tuple[Any, ...], LinearModel] = {}


def logistic(columns: np.ndarray | None, l2: float, embedding_penalty: float = 1.0) -> Fitter:
    def fit(d: Data, train: np.ndarray, test: np.ndarray) -> Array:
        view = d.x if columns is None else d.x[:, columns]
        scale = None
        if columns is None and embedding_penalty != 1.0:
            scale = np.concatenate([np.full(DIMENSIONS, embedding_penalty), np.ones(len(PROMPT_NAMES))])
        # The rank averages reuse their parts' fits on the same split: fit each once.
        key = (None if columns is None else columns.tobytes(), l2, embedding_penalty, train.tobytes())
        if key not in _FITS:
            _FITS[key] = fit_logistic(view[train], d.y[train], l2, penalty_scale=scale)
        return _FITS[key].predict(view[test])

    return fit


def subject_directions(d: Data, train: np.ndarray) -> Array:
    """Orthonormal basis of the training subjects' embedding centroids (centred): 'which subject'."""
    e = d.x[train][:, EMBEDDING]
    names = np.unique(d.subject[train])
    centroids = np.stack([e[d.subject[train] == s].mean(axis=0) for s in names]) - e.mean(axis=0)
    _, sv, vt = np.linalg.svd(centroids, full_matrices=False)
    basis: Array = vt[sv > 1e-9 * sv[0]]
    return basis


def within_subject(l2: float, with_length: bool) -> Fitter:
    """Embedding with the training subjects' centroid directions projected out (a fixed linear map,
    so deployable as plain weights), optionally plus log_chars/log_words: the model can only use
    what separates questions *within* a subject, not which subject a question is from."""

    def fit(d: Data, train: np.ndarray, test: np.ndarray) -> Array:
        basis = subject_directions(d, train)
        e = d.x[:, EMBEDDING]
        projected = e - (e @ basis.T) @ basis
        view = np.hstack([projected, d.x[:, LENGTH]]) if with_length else projected
        return fit_logistic(view[train], d.y[train], l2).predict(view[test])

    return fit


def length(d: Data, train: np.ndarray, test: np.ndarray) -> Array:
    return d.chars[test]


def rank_average(first: Fitter, second: Fitter, weight: float = 0.5) -> Fitter:
    """Average of two scores' ranks, each rank read off the training rows' own score distribution."""

    def fit(d: Data, train: np.ndarray, test: np.ndarray) -> Array:
        both = np.concatenate([train, test])
        out = np.zeros(len(test))
        for w, scorer in ((weight, first), (1.0 - weight, second)):
            # Scores of the training rows come from the fit on the training rows (as deployed).
            scores = scorer(d, train, both)
            reference = np.sort(scores[: len(train)])
            out += w * np.searchsorted(reference, scores[len(train) :], side="right") / len(reference)
        return out

    return fit


def z_blend(first: Fitter, column: str, weight: float = 0.5) -> Fitter:
    """A linear stand-in for the rank average: weight * z(score's logit) + (1 - weight) * z(feature),
    both standardised on the training rows. Linear in the features, so one plain model file."""
    index = DIMENSIONS + PROMPT_NAMES.index(column)

    def fit(d: Data, train: np.ndarray, test: np.ndarray) -> Array:
        both = np.concatenate([train, test])
        p = np.clip(first(d, train, both), 1e-12, 1 - 1e-12)
        logit = np.log(p / (1 - p))
        feature = d.x[both, index]
        out = np.zeros(len(both))
        for w, v in ((weight, logit), (1.0 - weight, feature)):
            out += w * (v - v[: len(train)].mean()) / v[: len(train)].std()
        return out[len(train) :]

    return fit


def candidates() -> dict[str, Fitter]:
    out: dict[str, Fitter] = {
        "length (characters; the heuristic)": length,
        "shipped before: 19 text + embedding x100, l2=100": logistic(None, 100.0, 100.0),
        "19 text + embedding x100, l2=30": logistic(None, 30.0, 100.0),
        "19 text + embedding x10, l2=100": logistic(None, 100.0, 10.0),
        "19 text only, l2=100": logistic(TEXT, 100.0),
        "19 text only, l2=1000": logistic(TEXT, 1000.0),
        "log_chars + log_words, l2=10": logistic(LENGTH, 10.0),
        "rank average: shipped before, length": rank_average(logistic(None, 100.0, 100.0), length),
    }
    for l2 in (100.0, 300.0, 1000.0, 3000.0):
        out[f"embedding only, l2={l2:g}"] = logistic(EMBEDDING, l2)
    both = np.concatenate([EMBEDDING, LENGTH])
    for l2 in (300.0, 1000.0):
        out[f"embedding + log_chars/log_words, l2={l2:g}"] = logistic(both, l2)
    for l2 in (300.0, 1000.0):
        out[f"rank average: embedding only l2={l2:g}, length"] = rank_average(logistic(EMBEDDING, l2), length)
        out[f"z-blend: embedding only l2={l2:g}, log_chars"] = z_blend(logistic(EMBEDDING, l2), "log_chars")
    out["z-blend 2:1: embedding only l2=300, log_chars"] = z_blend(
        logistic(EMBEDDING, 300.0), "log_chars", 2 / 3
    )
    for l2 in (300.0, 1000.0):
        out[f"embedding minus subject directions, l2={l2:g}"] = within_subject(l2, False)
    out["embedding minus subject directions + length, l2=1000"] = within_subject(1000.0, True)
    return out


# A group whose two models are this close in accuracy has no gap to recover: APGR divides by it.
MIN_GAP = 0.02


def apgr(scores: Array, strong: Array, weak: Array, bins: int = DEFAULT_BINS) -> float:
    """The replay engine's APGR (quantile-bin sweep, trapezoids) in NumPy, without the cost column."""
    n = len(scores)
    order = np.argsort(-scores, kind="stable")
    correct_at = weak.sum() + np.concatenate(([0.0], np.cumsum((strong - weak)[order])))
    ascending = scores[order][::-1]
    edges = np.quantile(scores, np.linspace(0.0, 1.0, bins + 1))
    ks = []
    for i, edge in enumerate(edges):
        below = np.searchsorted(ascending, edge, side="left" if i < bins else "right")
        ks.append(n - int(below))
    ks.sort()
    share = np.array(ks) / n
    accuracy = correct_at[ks] / n
    s, w = strong.mean(), weak.mean()
    pgr = (accuracy - w) / (s - w)
    area = float(np.sum(np.diff(share) * (pgr[1:] + pgr[:-1]))) / 2
    return area / float(share[-1] - share[0])


def cost_to_retain(scores: Array, d: Data, rows: np.ndarray) -> float:
    """Cost vs all-strong of the least strong share (highest scores first) keeping 95% of the strong
    model's accuracy: long prompts are the expensive ones, so a length-heavy ranking pays more."""
    order = rows[np.argsort(-scores, kind="stable")]
    correct = d.weak[rows].sum() + np.concatenate(([0.0], np.cumsum((d.strong - d.weak)[order])))
    k = int(np.argmax(correct >= RETAIN * d.strong[rows].sum() - 1e-9))
    extra = np.concatenate(([0.0], np.cumsum((d.cost_strong - d.cost_weak)[order])))
    return float((d.cost_weak[rows].sum() + extra[k]) / d.cost_strong[rows].sum())


def summary(values: Sequence[float]) -> dict[str, float]:
    v = np.asarray(values)
    return {
        "mean": float(v.mean()),
        "sd": float(v.std(ddof=1)),
        "p10": float(np.quantile(v, 0.1)),
        "min": float(v.min()),
        "below_0.5": float((v < 0.5).mean()),
        "median": float(np.median(v)),
    }


def load() -> Data:
    outcomes = load_outcomes(DATA, drop_contaminated=True)
    pair = Pair(STRONG_MODEL, WEAK_MODEL)
    records = outcomes.records
    texts = [r.prompt for r in records]
    x = prompt_matrix(texts, embed_texts(texts))
    strong = np.array([r.correct[pair.strong] for r in records], dtype=np.float64)
    weak = np.array([r.correct[pair.weak] for r in records], dtype=np.float64)
    chars = np.array([float(len(t)) for t in texts])
    costs = [
        np.array([float(call_cost(r, model, DEFAULT_PRICES)) for r in records])
        for model in (pair.strong, pair.weak)
    ]
    subject = np.array([r.source for r in records])
    return Data(x, strong * (1 - weak), strong, weak, chars, subject, costs[0], costs[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=40, help="random subject splits")
    parser.add_argument("--hold-out", type=int, default=20, help="subjects held out per split (of 40)")
    parser.add_argument("--group", type=int, default=5, help="held-out subjects per small group")
    parser.add_argument("--only", default="", help="';'-separated substrings: run matching candidates")
    parser.add_argument("--out", type=Path, help="write every split's figures here (JSON)")
    parser.add_argument(
        "--procedures",
        action="store_true",
        help="instead: the whole training procedure (`faregate router train --model linear` and "
        "`--model within-subject`, cross-validation included) on each split",
    )
    args = parser.parse_args()
    if args.procedures:
        procedures(args.repeats, args.hold_out)
        return
    started = time.perf_counter()
    d = load()
    names = np.unique(d.subject)
    pool = candidates()
    if args.only:
        pool = {k: f for k, f in pool.items() if any(s in k for s in args.only.split(";"))}
    splits: dict[str, list[float]] = {k: [] for k in pool}
    groups: dict[str, list[float]] = {k: [] for k in pool}
    costs: dict[str, list[float]] = {k: [] for k in pool}
    for repeat in range(args.repeats):
        order = np.random.default_rng(1000 + repeat).permutation(len(names))
        held = names[order[: args.hold_out]]
        test = np.flatnonzero(np.isin(d.subject, held))
        train = np.flatnonzero(~np.isin(d.subject, held))
        parts = [names[order[i : i + args.group]] for i in range(0, args.hold_out, args.group)]
        for name, fitter in pool.items():
            scores = np.empty(len(d.y))
            scores[test] = fitter(d, train, test)
            splits[name].append(apgr(scores[test], d.strong[test], d.weak[test]))
            costs[name].append(cost_to_retain(scores[test], d, test))
            for part in parts:
                rows = np.flatnonzero(np.isin(d.subject, part))
                if d.strong[rows].mean() - d.weak[rows].mean() < MIN_GAP:
                    continue  # high-school mathematics (GPT-4 recorded at 3%) can sink a group's gap
                groups[name].append(apgr(scores[rows], d.strong[rows], d.weak[rows]))
        _FITS.clear()
        if repeat == 0:
            _check_engine(d, test, scores)
        print(f"split {repeat + 1}/{args.repeats} done ({time.perf_counter() - started:.0f} s)", flush=True)
    table = {
        k: {"split": summary(splits[k]), "groups": summary(groups[k]), "cost_95": summary(costs[k])}
        for k in pool
    }
    print(
        f"\n{args.repeats} splits: {args.hold_out} of {len(names)} subjects held out, the other "
        f"{len(names) - args.hold_out} trained on; groups of {args.group} held-out subjects "
        f"({len(next(iter(groups.values())))} groups with GPT-4 at least {MIN_GAP:.0%} ahead)\n"
    )
    header = (
        "candidate | split mean | sd | mean-sd | p10 | min | splits < 0.5 "
        "| group median | group p10 | groups < 0.5 | cost for 95%: mean | p90"
    )
    print(header)
    print("|".join("---" for _ in header.split("|")))
    for k, row in sorted(table.items(), key=lambda kv: -(kv[1]["split"]["mean"] - kv[1]["split"]["sd"])):
        s, g, c = row["split"], row["groups"], row["cost_95"]
        print(
            f"{k} | {s['mean']:.3f} | {s['sd']:.3f} | {s['mean'] - s['sd']:.3f} | {s['p10']:.3f} | "
            f"{s['min']:.3f} | {s['below_0.5']:.0%} | "
            f"{g['median']:.3f} | {g['p10']:.3f} | {g['below_0.5']:.0%} | "
            f"{c['mean']:.1%} | {np.quantile(costs[k], 0.9):.1%}"
        )
    if args.out:
        report: dict[str, Any] = {"args": {k: str(v) for k, v in vars(args).items()}, "table": table}
        report["splits"], report["groups"], report["cost_95"] = splits, groups, costs
        args.out.write_text(json.dumps(report, indent=1) + "\n")


def procedures(repeats: int, hold_out: int) -> None:
    """The training procedures themselves, penalties re-chosen by their cross-validation on every
    split (the same splits as the candidates': split seed 1000 + repeat)."""
    d = load()
    outcomes = load_outcomes(DATA, drop_contaminated=True)
    index = {r.prompt: i for i, r in enumerate(outcomes.records)}
    fraction = hold_out / len(np.unique(d.subject))
    kinds: tuple[RouterModel, ...] = ("linear", "within-subject")
    results: dict[str, list[tuple[float, float, str]]] = {k: [] for k in kinds}
    for repeat in range(repeats):
        split = split_outcomes(outcomes, SplitSpec("source", fraction, 1000 + repeat))
        test = np.array([index[r.prompt] for r in split.test.records])
        for kind in kinds:
            trained = train_router(split, Pair(STRONG_MODEL, WEAK_MODEL), seed=1000 + repeat, model_kind=kind)
            scores = np.empty(len(d.y))
            scores[test] = trained.file.model.predict(d.x[test])
            results[kind].append(
                (
                    apgr(scores[test], d.strong[test], d.weak[test]),
                    cost_to_retain(scores[test], d, test),
                    trained.selection.best.name,
                )
            )
        print(
            f"split {repeat + 1}/{repeats}: " + "; ".join(f"{k} {results[k][-1]}" for k in kinds), flush=True
        )
    print("\nprocedure | APGR mean | sd | p10 | min | splits < 0.5 | cost for 95%: mean")
    print("---|---|---|---|---|---|---")
    for kind in kinds:
        values = [a for a, _, _ in results[kind]]
        s = summary(values)
        cost = np.mean([c for _, c, _ in results[kind]])
        print(
            f"{kind} | {s['mean']:.3f} | {s['sd']:.3f} | {s['p10']:.3f} | {s['min']:.3f} | "
            f"{s['below_0.5']:.0%} | {cost:.1%}"
        )


def _check_engine(d: Data, test: np.ndarray, scores: Array) -> None:
    outcomes = load_outcomes(DATA, drop_contaminated=True)
    records = [outcomes.records[int(i)] for i in test]
    engine = replay_apgr(records, scores[test], Pair(STRONG_MODEL, WEAK_MODEL))
    mine = apgr(scores[test], d.strong[test], d.weak[test])
    if abs(engine - mine) > 1e-9:
        raise SystemExit(f"APGR differs from the replay engine's: {mine} vs {engine}")


if __name__ == "__main__":
    main()
