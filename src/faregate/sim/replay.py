"""Recorded answers from a CSV (e.g. the repository's data/routellm/gsm8k_responses.csv), keyed by prompt."""

from __future__ import annotations

import csv
import functools
import sys
from pathlib import Path


class ReplayError(Exception):
    pass


def table(path: str, prompt_column: str, column: str) -> dict[str, str]:
    """Prompt (stripped) -> recorded answer. Loaded once per file and column pair, then shared."""
    return _load(str(Path(path).resolve()), prompt_column, column)


@functools.cache
def _load(path: str, prompt_column: str, column: str) -> dict[str, str]:
    # Recorded answers can be long; the csv module's default field limit (128 KiB) is not a real bound.
    csv.field_size_limit(sys.maxsize)
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            return _read(csv.DictReader(handle), path, prompt_column, column)
    except OSError as exc:
        raise ReplayError(f"cannot read {path}: {exc.strerror}") from exc


def _read(reader: csv.DictReader[str], path: str, prompt_column: str, column: str) -> dict[str, str]:
    header = list(reader.fieldnames or [])
    for wanted in (prompt_column, column):
        if wanted not in header:
            raise ReplayError(f"{path} has no column {wanted!r}; expected one of {header}")
    answers: dict[str, str] = {}
    for row in reader:
        # The first recording of a prompt wins when a file repeats it.
        answers.setdefault((row[prompt_column] or "").strip(), row[column] or "")
    return answers
