"""The README's map of the source (Development) names every top-level module and package of
src/faregate, and names none that is gone: a newcomer reads the layout there before the code."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "faregate"


def layout() -> str:
    """The code block that opens with `src/faregate/`."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```\nsrc/faregate/\n(.*?)```", text, re.S)
    assert block is not None
    return block.group(1)


def top_level() -> set[str]:
    """`name.py` and `name/` for each module and package, the built-in config's folder aside."""
    modules = {p.name for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    packages = {f"{p.name}/" for p in PACKAGE.iterdir() if (p / "__init__.py").exists()}
    return modules | packages


def test_the_layout_names_every_top_level_module_and_package() -> None:
    named = set(re.findall(r"\b[a-z_]+(?:\.py|/)", layout()))
    assert len(top_level()) > 20
    assert sorted(top_level() - named) == []


def test_the_layout_names_nothing_that_is_gone() -> None:
    # The first column: two spaces, then the names the line is about.
    first = [m for line in layout().splitlines() for m in re.findall(r"^  ((?:[a-z_]+(?:\.py|/) )+)", line)]
    names = {name for group in first for name in group.split()}
    assert len(names) > 20
    assert sorted(names - top_level()) == []
