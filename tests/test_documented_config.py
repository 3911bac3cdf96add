"""Every faregate.yaml snippet the documents show loads as shown, and the documents and the
settings name the same keys.

A newcomer pastes them: a snippet naming a provider nobody declared, or an alert rule that needs a
setting the snippet leaves out, stops the gateway at start-up. Each ```yaml block of the README and
docs/*.md is loaded on its own, merged over the built-in defaults as a faregate.yaml would be
(indented blocks, as inside a list item, included). A block that is not a gateway config says so
on its first line (`# prometheus.yml`, `# sim.yaml`, `# Kubernetes`) and is left out.

A key added to the settings and never named in the documents is one nobody finds; a dotted key the
prose names (`cache.semantic.threshold`) that the settings do not have fails at start-up when
someone sets it. Both are read from the settings' types, so neither list is kept by hand.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from faregate.catalog import build_catalog
from faregate.config import Settings, check_alert_subjects, check_route_ttls, load_settings

ROOT = Path(__file__).resolve().parents[1]
DOCS = ["README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]
NOT_GATEWAY_CONFIG = ("# prometheus.yml", "# sim.yaml", "# Kubernetes")


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


def test_the_readme_table_of_providers_is_the_built_in_defaults() -> None:
    """Every built-in provider is in the README's table, with the env var that enables it and
    its base_url."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text[text.index("| provider | enabled by | base_url |") :]
    rows = table[: table.index("\n\n")].splitlines()[2:]
    shown: dict[str, tuple[list[str], list[str]]] = {}
    for row in rows:
        names, enabled_by, urls = (cell.strip() for cell in row.strip("|").split("|"))
        for name in re.findall(r"`(\w+)`", names):
            shown[name] = (re.findall(r"`([A-Z_]+)`", enabled_by), re.findall(r"`(https?://[^`]+)`", urls))
    providers = load_settings(None).providers
    assert sorted(shown) == sorted(providers)
    for name, provider in providers.items():
        env_vars, urls = shown[name]
        if provider.api_key_env is not None:
            assert env_vars == [provider.api_key_env], name
        if name != "sim":
            assert provider.base_url in urls, name


def settings_keys(info: msgspec.inspect.Type, prefix: str = "") -> Iterator[tuple[str, str]]:
    """(dotted path, key) for every key a faregate.yaml may set; a map's entry is `NAME` in the
    path (`providers.NAME.base_url`)."""
    for struct, path in _structs(info, prefix):
        for field in struct.fields:
            key = f"{path}{field.encode_name}"
            yield key, field.encode_name
            yield from settings_keys(field.type, key)


def _structs(info: msgspec.inspect.Type, path: str) -> Iterator[tuple[msgspec.inspect.StructType, str]]:
    """The structs `info` holds (in a union, a list or as a map's values), each with the path
    its keys start with."""
    if isinstance(info, msgspec.inspect.StructType):
        yield info, f"{path}." if path else ""
    elif isinstance(info, msgspec.inspect.Metadata):
        yield from _structs(info.type, path)
    elif isinstance(info, msgspec.inspect.UnionType):
        for member in info.types:
            yield from _structs(member, path)
    elif isinstance(info, msgspec.inspect.ListType):
        yield from _structs(info.item_type, path)
    elif isinstance(info, msgspec.inspect.DictType):
        yield from _structs(info.value_type, f"{path}.NAME")


SETTINGS = msgspec.inspect.type_info(Settings)
KEYS = dict(settings_keys(SETTINGS))


def documents() -> str:
    return "\n".join((ROOT / doc).read_text(encoding="utf-8") for doc in DOCS)


def test_every_settings_key_is_named_in_the_documents() -> None:
    """Each key is named where a reader looks for it: in inline code or in a YAML block."""
    text = documents()
    named = set()
    for code in re.findall(r"`([^`\n]+)`", text):
        named.update(re.findall(r"\w+", code))
    for block in re.findall(r"^ *```yaml\n(.*?)^ *```", text, re.S | re.M):
        named.update(re.findall(r"\w+", block))
    assert len(KEYS) > 150
    assert [path for path, key in KEYS.items() if key not in named] == []


def test_every_dotted_key_the_documents_name_is_a_setting() -> None:
    """`section.key` opening inline code, for a section of faregate.yaml, is a key the settings have,
    or a section or map entry on the way to one (`providers.sim`, `routes.NAME.quality`)."""
    sections = {field.encode_name for field in SETTINGS.fields}
    paths = {tuple(key.split(".")[:n]) for key in KEYS for n in range(1, key.count(".") + 2)}

    def is_setting(named: list[str]) -> bool:
        return any(
            len(path) == len(named) and all(p in (n, "NAME") for p, n in zip(path, named, strict=True))
            for path in paths
        )

    # A code span's first word: `cache.semantic.threshold`, `routes.NAME.quality: QualitySettings`.
    found = re.findall(r"`([a-z_]+(?:\.[\w-]+)+)", documents())
    named = {m for m in found if m.split(".")[0] in sections}
    assert len(named) > 40
    assert sorted(m for m in named if not is_setting(m.split("."))) == []
