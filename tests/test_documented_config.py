"""Every faregate.yaml snippet the documents show loads as shown.

A newcomer pastes them: a snippet naming a provider nobody declared, or an alert rule that needs a
setting the snippet leaves out, stops the gateway at start-up. Each ```yaml block of the README and
docs/*.md is loaded on its own, merged over the built-in defaults as a faregate.yaml would be
(indented blocks, as inside a list item, included). A block that is not a gateway config says so
on its first line (`# prometheus.yml`, `# sim.yaml`) and is left out.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

from faregate.catalog import build_catalog
from faregate.config import check_alert_subjects, check_route_ttls, load_settings

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]
NOT_GATEWAY_CONFIG = ("# prometheus.yml", "# sim.yaml")


def snippets() -> list[tuple[str, str]]:
    """(document:line, the block's text) for every ```yaml block that is a gateway config."""
    found: list[tuple[str, str]] = []
    for doc in DOCS:
        text = (ROOT / doc).read_text(encoding="utf-8")
        for match in re.finditer(r"^( *)```yaml\n(.*?)^\1```", text, re.S | re.M):
            block = textwrap.dedent(match.group(2))
            if block.startswith(NOT_GATEWAY_CONFIG):
                continue
            found.append((f"{doc}:{text.count(chr(10), 0, match.start()) + 1}", block))
    return found


def test_the_documents_show_config_snippets() -> None:
    assert len(snippets()) >= 20


@pytest.mark.parametrize(("where", "block"), snippets(), ids=[w for w, _ in snippets()])
def test_documented_config_loads(where: str, block: str, tmp_path: Path) -> None:
    path = tmp_path / "faregate.yaml"
    path.write_text(block, encoding="utf-8")
    settings = load_settings(path)
    if settings.alerts.rules or settings.cache.route_ttl_s:
        # The routes and models these name are checked once the catalog is built (server.app).
        catalog = build_catalog(settings)
        check_alert_subjects(settings.alerts, settings.routes, catalog.canonical_name, catalog.suggest)
        check_route_ttls(settings.cache, settings.routes, catalog.canonical_name, catalog.suggest)
