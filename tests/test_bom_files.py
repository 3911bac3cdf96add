"""Files saved with a UTF-8 byte-order mark (Excel's "CSV UTF-8", Notepad) read like any other."""

from __future__ import annotations

from pathlib import Path

import pytest

from faregate.evals.cache_eval.stream import LabelledPair, load_labelled_pairs
from faregate.evals.prompt_eval.run import load_items
from faregate.evals.replay.outcomes import load_outcomes

BOM = "\ufeff"


def test_outcomes_csv_with_a_bom(tmp_path: Path) -> None:
    data = tmp_path / "tiny.csv"
    data.write_text(f"{BOM}prompt,big,small\r\nwhat is 2+2?,True,False\r\n", encoding="utf-8")
    outcomes = load_outcomes(data, drop_contaminated=False)
    assert outcomes.models == ("big", "small")
    assert [r.prompt for r in outcomes.records] == ["what is 2+2?"]


def test_contaminated_list_with_a_bom(tmp_path: Path) -> None:
    data = tmp_path / "tiny.csv"
    data.write_text("prompt,big,small\nq1,True,False\nq2,False,False\n", encoding="utf-8")
    listed = tmp_path / "listed.jsonl"
    listed.write_text(f'{BOM}{{"eval_prompt": "q1"}}\n', encoding="utf-8")
    outcomes = load_outcomes(data, drop_contaminated=True, contaminated=listed)
    assert [r.prompt for r in outcomes.records] == ["q2"]


def test_prompt_set_csv_and_jsonl_with_a_bom(tmp_path: Path) -> None:
    csv_file = tmp_path / "prompts.csv"
    csv_file.write_text(f"{BOM}prompt,expected\r\nCapital of France?,Paris\r\n", encoding="utf-8")
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text(f'{BOM}{{"prompt": "Capital of France?", "expected": "Paris"}}\n', encoding="utf-8")
    for path in (csv_file, jsonl):
        (item,) = load_items(path)
        assert item.prompt == "Capital of France?" and item.expected == "Paris"


def test_labelled_pairs_with_a_bom(tmp_path: Path) -> None:
    csv_file = tmp_path / "pairs.csv"
    csv_file.write_text(f"{BOM}text1,text2,label\r\nhow old are you,what is your age,1\r\n", encoding="utf-8")
    jsonl = tmp_path / "pairs.jsonl"
    jsonl.write_text(f'{BOM}{{"text1": "a", "text2": "b", "label": 0}}\n', encoding="utf-8")
    assert load_labelled_pairs(csv_file) == [LabelledPair("how old are you", "what is your age", True)]
    assert load_labelled_pairs(jsonl) == [LabelledPair("a", "b", False)]


def test_a_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    # Excel's plain "CSV" on Windows is cp1252: in a directory of 57 subject files, say which one.
    data = tmp_path / "mmlu"
    data.mkdir()
    (data / "a.csv").write_text("prompt,big,small\nq1,True,False\n", encoding="utf-8")
    (data / "b.csv").write_bytes("prompt,big,small\ncafé?,True,False\n".encode("cp1252"))
    with pytest.raises(ValueError, match=r"b\.csv: not UTF-8 text"):
        load_outcomes(data, drop_contaminated=False)
    pairs = tmp_path / "pairs.csv"
    pairs.write_bytes("text1,text2,label\ncafé?,un café?,1\n".encode("cp1252"))
    with pytest.raises(ValueError, match=r"pairs\.csv: not UTF-8 text"):
        load_labelled_pairs(pairs)
