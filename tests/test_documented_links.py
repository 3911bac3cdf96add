"""Every relative link of the README, docs/*.md and bench/README.md leads somewhere: to a file of
this checkout and, with a #fragment, to a heading of that Markdown file (as GitHub names its
anchors). A renamed heading or a moved file breaks no reader's link unnoticed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def prose(path: Path) -> str:
    """The text outside code blocks (a link in a code block is code, not a link)."""
    return re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: link text kept, markup and punctuation dropped, lower case,
    spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[^\w\- ]", "", text.replace("`", "").replace("*", "").strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    found: set[str] = set()
    for heading in re.findall(r"^#{1,6} (.+)$", prose(path), re.M):
        name = slug(heading)
        count = seen.get(name, 0)
        seen[name] = count + 1
        found.add(name if count == 0 else f"{name}-{count}")
    return found


def links() -> list[tuple[str, str]]:
    """(document, target) for every relative link of the documents."""
    return [
        (str(doc.relative_to(ROOT)), target)
        for doc in DOCS
        for target in LINK.findall(prose(doc))
        if not target.startswith(("http://", "https://", "mailto:"))
    ]


def test_anchors_are_githubs() -> None:
    assert slug("Every core: `faregate serve --workers N`") == "every-core-faregate-serve---workers-n"
    assert slug("The Responses API in (`/v1/responses`)") == "the-responses-api-in-v1responses"
    assert "guarantees-and-their-limits" in anchors(ROOT / "docs" / "accounts.md")


def test_the_documents_link_to_each_other() -> None:
    assert len(links()) >= 20


@pytest.mark.parametrize(("doc", "target"), links())
def test_a_link_leads_somewhere(doc: str, target: str) -> None:
    path, _, fragment = target.partition("#")
    where = (ROOT / doc).parent / path if path else ROOT / doc
    assert where.exists(), f"{doc}: {target}: no such file"
    if fragment and where.suffix == ".md":
        assert fragment in anchors(where), f"{doc}: {target}: no such heading in {where.name}"
