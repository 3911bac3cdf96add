"""Recorded per-model outcomes of a prompt set, in the RouteLLM format.

A data set is one CSV file, or a directory of them (MMLU: one file per subject).
Each file has a `prompt` column, one True/False correctness column per model
named after the model, and optionally that model's answer text in
`<model>_response`. Contaminated prompts (found in a router's training data) are
listed as JSONL records whose `eval_prompt` is the exact prompt text; the other
fields (`train_prompt`, `train_idx`, `eval_idx`) only say where it was found.

Token counts are what the prompt would cost as a chat request: the prompt as one
user message, counted with faregate.tokens. The recorded prompts are the
questions alone; the few-shot examples RouteLLM prepended when it recorded the
answers are not in the files, so input costs are for the question only. Output
tokens are counted from the recorded answer when there is one. MMLU has no
answers: RouteLLM asked for a single token (the answer letter, max_new_tokens=1),
so files without answers assume DEFAULT_OUTPUT_TOKENS per call unless told
otherwise.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faregate import tokens

STRONG_MODEL = "gpt-4-1106-preview"
WEAK_MODEL = "mistralai/Mixtral-8x7B-Instruct-v0.1"
RESPONSE_SUFFIX = "_response"
PROMPT_COLUMN = "prompt"
CONTAMINATED_SUFFIX = "_contaminated_prompts.jsonl"
# Output tokens per call when the file records correctness but no answer text.
DEFAULT_OUTPUT_TOKENS = 1

# DictReader's value for the cells a short row lacks (None would pass for a value).
_MISSING: Any = object()
_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


@dataclass(slots=True, frozen=True)
class PromptRecord:
    """One prompt and how each model did on it."""

    prompt: str
    # File it came from, without the extension ("gsm8k_responses", "mmlu_anatomy").
    source: str
    correct: Mapping[str, bool]
    input_tokens: int
    output_tokens: Mapping[str, int]
    responses: Mapping[str, str] = field(default_factory=dict)


@dataclass(slots=True)
class Outcomes:
    name: str
    models: tuple[str, ...]
    records: list[PromptRecord]
    contaminated_skipped: int = 0

    def __len__(self) -> int:
        return len(self.records)

    def accuracy(self, model: str) -> float:
        if not self.records:
            raise ValueError(f"{self.name}: no prompts")
        return sum(r.correct[model] for r in self.records) / len(self.records)

    def require(self, *models: str) -> None:
        missing = [m for m in models if m not in self.models]
        if missing:
            raise ValueError(
                f"{self.name}: no outcomes for {', '.join(missing)}; the data has {', '.join(self.models)}"
            )


def load_outcomes(
    path: str | Path,
    *,
    drop_contaminated: bool,
    contaminated: str | Path | None = None,
    output_tokens: int = DEFAULT_OUTPUT_TOKENS,
) -> Outcomes:
    """Load a CSV file or a directory of CSV files.

    `drop_contaminated` has no default on purpose: RouteLLM scores without the
    contaminated prompts, while the headline accuracies (GPT-4 85.7%, Mixtral
    63.8% on GSM8K) are over every question; the caller says which it means.
    The contaminated list is `contaminated`, else found next to the data.
    """
    data = Path(path)
    if data.is_dir():
        files = sorted(data.glob("*.csv"))
        if not files:
            raise ValueError(f"{data}: no CSV files")
    elif data.is_file():
        files = [data]
    else:
        raise ValueError(f"{data} does not exist")
    skip: frozenset[str] = frozenset()
    if drop_contaminated:
        skip = read_contaminated(Path(contaminated) if contaminated else find_contaminated(data))
    models: tuple[str, ...] | None = None
    records: list[PromptRecord] = []
    skipped = 0
    for file in files:
        try:
            file_models, rows = _read_file(file, output_tokens, skip)
        except UnicodeDecodeError as exc:  # its own message names no file
            raise ValueError(f"{file}: not UTF-8 text ({exc.reason}); save it as UTF-8") from None
        if models is not None and set(file_models) != set(models):
            raise ValueError(f"{file}: models {file_models} differ from the other files' {models}")
        models = models or file_models
        skipped += rows.skipped
        records.extend(rows.records)
    assert models is not None
    return Outcomes(name=data.name, models=models, records=records, contaminated_skipped=skipped)


def find_contaminated(data: Path) -> Path:
    """gsm8k_responses.csv -> gsm8k_contaminated_prompts.jsonl; mmlu/ -> mmlu_contaminated_prompts.jsonl."""
    stem = data.name if data.is_dir() else data.stem.removesuffix("_responses")
    candidates = [data.parent / f"{stem}{CONTAMINATED_SUFFIX}"]
    if data.is_dir():
        # RouteLLM's own layout keeps the list inside the benchmark's directory.
        candidates.append(data / "contaminated_prompts.jsonl")
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise ValueError(
        f"{data}: no contaminated-prompt list found (looked for {', '.join(str(c) for c in candidates)}); "
        "pass one explicitly or keep the contaminated prompts"
    )


def read_contaminated(path: Path) -> frozenset[str]:
    if not path.is_file():
        # A mistyped --contaminated is a usage error (ValueError: exit 2), as a missing --data is.
        raise ValueError(f"{path} does not exist" if not path.exists() else f"{path} is not a file")
    prompts: set[str] = set()
    with path.open(encoding="utf-8-sig") as lines:
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
                prompts.add(entry["eval_prompt"])
            except (ValueError, KeyError, TypeError):
                raise ValueError(
                    f"{path}:{number}: expected a JSON object with an eval_prompt string"
                ) from None
    return frozenset(prompts)


@dataclass(slots=True)
class _Rows:
    records: list[PromptRecord]
    skipped: int


def _read_file(path: Path, output_tokens: int, skip: frozenset[str]) -> tuple[tuple[str, ...], _Rows]:
    # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8") is not part of the prompt column's name.
    with path.open(encoding="utf-8-sig", newline="") as handle:
        reader = csv.DictReader(handle, restval=_MISSING)
        columns = reader.fieldnames or []
        if PROMPT_COLUMN not in columns:
            raise ValueError(f"{path}: no {PROMPT_COLUMN!r} column (columns: {columns})")
        models = tuple(c for c in columns if c != PROMPT_COLUMN and not c.endswith(RESPONSE_SUFFIX))
        if not models:
            raise ValueError(f"{path}: no model correctness columns")
        with_text = {m for m in models if f"{m}{RESPONSE_SUFFIX}" in columns}
        rows = _Rows([], 0)
        for row in reader:
            # A short row would give a None prompt (a TypeError later); a long one drops a cell
            # unseen (an unquoted comma in a prompt). reader.line_num: the file's line (the record's
            # last), where a row number would be off by every multi-line answer before it.
            if None in row or _MISSING in row.values():
                more = "more" if None in row else "fewer"
                raise ValueError(
                    f"{path}:{reader.line_num}: {more} cells than the header's {len(columns)} "
                    "(is a comma in a prompt unquoted?)"
                )
            prompt = row[PROMPT_COLUMN]
            if prompt in skip:
                rows.skipped += 1
                continue
            responses = {m: row[f"{m}{RESPONSE_SUFFIX}"] or "" for m in with_text}
            rows.records.append(
                PromptRecord(
                    prompt=prompt,
                    source=path.stem,
                    correct={m: _parse_bool(row[m], path, reader.line_num, m) for m in models},
                    input_tokens=prompt_tokens(prompt),
                    output_tokens={
                        m: tokens.count_text(responses[m]) if m in with_text else output_tokens
                        for m in models
                    },
                    responses=responses,
                )
            )
    return models, rows


def prompt_tokens(prompt: str) -> int:
    """Input tokens of the prompt sent as one user message."""
    return tokens.count_messages([{"role": "user", "content": prompt}])


def _parse_bool(value: str | None, path: Path, line: int, column: str) -> bool:
    text = (value or "").strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ValueError(f"{path}:{line}: column {column!r}: expected True or False, got {value!r}")


def subjects(outcomes: Outcomes) -> list[str]:
    """The source files in load order (the MMLU subjects, for per-subject splits)."""
    return list(dict.fromkeys(r.source for r in outcomes.records))


def select(outcomes: Outcomes, sources: Iterable[str]) -> Outcomes:
    """The prompts from some source files only (e.g. held-out MMLU subjects)."""
    wanted = set(sources)
    return Outcomes(
        name=outcomes.name,
        models=outcomes.models,
        records=[r for r in outcomes.records if r.source in wanted],
        contaminated_skipped=outcomes.contaminated_skipped,
    )
