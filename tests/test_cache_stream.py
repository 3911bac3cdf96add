"""`faregate cache-eval --pairs`: a labelled stream replayed with online acceptance."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from faregate.evals.cache_eval.stream import (
    LabelledPair,
    Traced,
    hindsight,
    load_labelled_pairs,
    replay_stream,
)
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
    acceptance = CacheAcceptance(max_wrong_hit_rate=0.005)
    cold = replay_stream(pairs, vectors, [], distinct, acceptance, seed=0)
    assert cold.total.lookups == 3300 and cold.total.wrong_hit_rate <= 0.005
    # The near misses sit at 0.877 and the paraphrases at 0.968: the threshold lands between them.
    assert cold.state.threshold is not None and 0.877 < cold.state.threshold <= 0.968
    state = AcceptanceState()
    replay_stream(pairs, vectors, [], distinct, acceptance, seed=1, state=state)
    warm_run = replay_stream(pairs, vectors, [], distinct, acceptance, seed=0, state=state)
    assert warm_run.total.wrong_hit_rate <= 0.005
    # Evidence from earlier traffic lets it serve true paraphrases, never a near miss at 0.88.
    assert warm_run.total.paraphrase_share > cold.total.paraphrase_share
    assert warm_run.total.paraphrase_share > 0.5
    assert warm_run.total.distinct_wrong == 0 and warm_run.total.served_wrong_rate == 0.0
    assert warm_run.total.novel_lookups + warm_run.total.paraphrase_lookups == warm_run.total.lookups
    # Replayed without serving, the trace shows what a fixed threshold would have done.
    unserved = replay_stream(pairs, vectors, [], distinct, acceptance, seed=0, serve=False)
    assert unserved.total.served == 0 and len(unserved.trace) == unserved.total.lookups
    ceiling = hindsight(unserved.trace, 0.005)
    assert ceiling.threshold is not None and 0.88 < ceiling.threshold <= 0.97
    assert ceiling.paraphrase_share > 0.9 and ceiling.wrong_hit_rate <= 0.005


def test_hindsight_picks_the_threshold_that_serves_most_within_the_bound() -> None:
    trace = [Traced(0.97, False, True)] * 50 + [Traced(0.93, True, False)] + [Traced(0.91, False, True)] * 50
    trace += [Traced(-1.0, False, False)] * 99
    # One wrong hit in 200 lookups is 0.5%: within a 0.5% bound, serving everything from 0.91 up...
    assert hindsight(trace, 0.005) == (pytest.approx(0.91), pytest.approx(0.005), pytest.approx(1.0))
    # ...but not within 0.4%: then only what lies above the near miss at 0.93.
    strict = hindsight(trace, 0.004)
    assert strict.threshold is not None and strict.threshold > 0.93
    assert strict.wrong_hit_rate == 0.0 and strict.paraphrase_share == pytest.approx(0.5)


def test_a_label_that_is_neither_same_nor_different_is_an_error(tmp_path: Path) -> None:
    # Read as "different", every served hit of such a pair would count as a wrong hit.
    pairs = tmp_path / "p.csv"
    pairs.write_text("text1,text2,label\nhow old are you,what is your age,duplicate\n")
    with pytest.raises(ValueError, match=r"p.csv:2: label 'duplicate'"):
        load_labelled_pairs(pairs)
    pairs.write_text("text1,text2,label\na,b,False\nc,d,no\ne,f,0.0\ng,h,different\n")
    assert [p.same for p in load_labelled_pairs(pairs)] == [False] * 4


def test_a_block_file_without_pairs_or_with_a_stray_line_is_named(tmp_path: Path) -> None:
    # An empty .txt went on to a StopIteration traceback; a stray line's error named no file.
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing yet\n")
    with pytest.raises(ValueError, match=r"empty\.txt: no pairs"):
        load_labelled_pairs(empty)
    stray = tmp_path / "stray.txt"
    stray.write_text("text1,text2,label\na,b,1\n")
    with pytest.raises(ValueError, match=r"stray\.txt: .*line must start with '=' or '!'"):
        load_labelled_pairs(stray)
