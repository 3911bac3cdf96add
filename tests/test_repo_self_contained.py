"""The repository stands alone: nothing it tracks reads or points at a folder beside the checkout.

The recorded data the product, the tests and the benchmarks use is vendored in data/ (with its
licences and provenance); the folder of shared material beside a developer's checkout exists only
on some machines, so a path into it works there and fails in every other clone.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Written in pieces so that this file does not match itself.
SHARED = "shared"
OUTSIDE = re.compile(
    "|".join(
        (
            r"\.\./" + SHARED + r"\b",  # the folder beside the checkout, as a relative path
            r"""["']""" + SHARED + r"""["']\s*/""",  # ... or as a pathlib expression
            r"""/\s*["']""" + SHARED + r"""["']""",
            r"\b" + SHARED + r"/data\b",  # its data folder
        )
    )
)
# The provenance notes of the vendored data may say where a copy came from.
EXEMPT = re.compile(r"data/[^/]+/README\.md")


def tracked_files() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True)
    return [name for name in listed.stdout.decode().split("\0") if name]


@pytest.mark.e2e  # runs git
def test_no_tracked_file_points_beside_the_checkout() -> None:
    offenders = []
    for name in tracked_files():
        if EXEMPT.fullmatch(name) or not (ROOT / name).is_file():
            continue
        try:
            text = (ROOT / name).read_text(encoding="utf-8")
        except UnicodeDecodeError:
            continue  # images, model files
        for number, line in enumerate(text.splitlines(), 1):
            if OUTSIDE.search(line):
                offenders.append(f"{name}:{number}: {line.strip()[:120]}")
    assert offenders == [], "paths outside the repository:\n" + "\n".join(offenders)


def test_the_pattern_catches_what_it_is_for() -> None:
    up = ".."
    for line in (
        f"--data {up}/{SHARED}/data/routellm",
        f'ROOT.parent / "{SHARED}" / "data"',
        f"parents[2] / '{SHARED}'",
        f"see {SHARED}/data/routellm",
    ):
        assert OUTSIDE.search(line), line
    for line in ("a shared store", "shared_urls.redis", "SharedAccounts", "on this shared machine"):
        assert not OUTSIDE.search(line), line


def test_the_vendored_data_keeps_its_licences() -> None:
    for folder in ("routellm", "paraphrase"):
        assert (ROOT / "data" / folder / "LICENSE").is_file(), folder
        assert (ROOT / "data" / folder / "README.md").is_file(), folder
    assert (ROOT / "data" / "routellm" / "gsm8k_responses.csv").is_file()
    assert len(list((ROOT / "data" / "routellm" / "mmlu").glob("*.csv"))) == 40
