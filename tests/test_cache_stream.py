"""`faregate cache-eval --pairs`: a labelled stream replayed with online acceptance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from faregate.evals.cache_eval.stream import LabelledPair, load_labelled_pairs, replay_stream
from faregate.learning.online.cache_acceptance import AcceptanceState, CacheAcceptance


def _vectors(pairs: list[LabelledPair], distinct: list[str]) -> dict[str, np.ndarray]:
    """Same-labelled texts close together (0.97), different ones at 0.9 (a near miss), others far."""
    rng = np.random.default_rng(0)
    vectors: dict[str, np.ndarray] = {}
    for p in pairs:
        base = rng.standard_normal(32)
        base /= np.linalg.norm(base)
        noise = rng.standard_normal(32)
        noise -= noise @ base * base
        noise /= np.linalg.norm(noise)
        lean = 0.25 if p.same else 0.48
        vectors.setdefault(p.first, base.astype(np.float32))
        other = np.sqrt(1 - lean**2) * vectors[p.first] + lean * noise
        vectors[p.second] = (other / np.linalg.norm(other)).astype(np.float32)
    for text in distinct:
        v = rng.standard_normal(32)
        vectors[text] = (v / np.linalg.norm(v)).astype(np.float32)
    return vectors


def test_loads_csv_jsonl_and_blocks(tmp_path: Path) -> None:
    csv_file = tmp_path / "p.csv"
    csv_file.write_text("question1,question2,is_duplicate\nhow old is x,what is the age of x,1\na,b,0\n")
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_text(json.dumps({"text1": "a", "text2": "b", "label": True}) + "\n")
    blocks = tmp_path / "p.txt"
    blocks.write_text("What is up?\n= What's up?\n!topic What is down?\n")
    assert load_labelled_pairs(csv_file)[0] == LabelledPair("how old is x", "what is the age of x", True)
    assert load_labelled_pairs(jsonl) == [LabelledPair("a", "b", True)]
    assert [p.same for p in load_labelled_pairs(blocks)] == [True, False]


def test_stream_keeps_the_bound_and_serves_with_evidence() -> None:
    pairs = [LabelledPair(f"question {i}", f"question {i} reworded", i % 3 != 0) for i in range(1500)]
    distinct = [f"other {i}" for i in range(300)]
    vectors = _vectors(pairs, distinct)
    acceptance = CacheAcceptance(max_wrong_hit_rate=0.005, min_evidence=30)
    cold = replay_stream(pairs, vectors, [], distinct, acceptance, seed=0)
    assert cold.total.lookups == 3300 and cold.total.wrong_hit_rate <= 0.005
    state = AcceptanceState()
    for warm in range(3):
        replay_stream(pairs, vectors, [], distinct, acceptance, seed=1 + warm, state=state)
    warm_run = replay_stream(pairs, vectors, [], distinct, acceptance, seed=0, state=state)
    assert warm_run.total.wrong_hit_rate <= 0.005
    # Evidence from earlier traffic lets it serve true paraphrases, never a near miss at 0.88.
    assert warm_run.total.paraphrase_share > cold.total.paraphrase_share
    assert warm_run.total.paraphrase_share > 0.3
    assert warm_run.total.distinct_wrong == 0
