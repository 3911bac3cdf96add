"""The console script: each command loads only its own module, the listing loads none, and every
help page shows every option in full at 80 columns."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from faregate.cli.main import COMMANDS, _module_app, build_app

# What the analysis commands need and the quick ones must not load (each costs 0.1-1 s).
HEAVY = ("numpy", "scipy", "matplotlib", "openai", "aiohttp", "onnxruntime", "genai_prices")


def test_every_listed_command_is_registered_by_its_module() -> None:
    for name, command in COMMANDS.items():
        group = typer.main.get_command(_module_app(command.module))
        assert name in group.commands, name  # type: ignore[attr-defined]


def commands_and_groups() -> list[tuple[list[str], Any]]:
    """Every command and subcommand of the full app, with its path."""
    found: list[tuple[list[str], Any]] = []

    def walk(path: list[str], command: Any) -> None:
        found.append((path, command))
        for name, sub in getattr(command, "commands", {}).items():
            walk([*path, name], sub)

    walk([], typer.main.get_command(build_app()))
    return found


@pytest.mark.parametrize(
    "path", [p for p, _ in commands_and_groups()], ids=lambda p: " ".join(p) or "faregate"
)
def test_help_at_80_columns_shows_every_option_in_full(path: list[str]) -> None:
    command = dict((tuple(p), c) for p, c in commands_and_groups())[tuple(path)]
    result = CliRunner().invoke(build_app(), [*path, "--help"], terminal_width=80, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    # Nothing cut to fit: no summary ends in click's "..." and no line runs past the width.
    assert not [line for line in lines[1:] if line.endswith("...")], result.output
    assert max(len(line) for line in lines) <= 80
    for param in command.params:
        for name in param.opts:
            if name.startswith("-"):
                assert name in result.output, (path, name)


def loaded_after(args: list[str]) -> list[str]:
    """The heavy modules a real `faregate ARGS` run has imported by the time it exits."""
    code = (
        "import json, sys\n"
        "from faregate.cli.main import main\n"
        f"sys.argv = ['faregate', *{args!r}]\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)), file=sys.stderr)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    return list(json.loads(result.stderr.strip().splitlines()[-1]))


@pytest.mark.e2e
@pytest.mark.parametrize(
    "args",
    [
        ["--help"],
        ["models"],
        ["cost", "-n", "1", "-i", "10", "-o", "10", "-m", "gpt-4o"],
        ["usage"],
        ["keys", "--help"],
    ],
    ids=" ".join,
)
def test_quick_commands_load_nothing_heavy(args: list[str], tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.chdir(tmp_path)  # `usage` opens ./.faregate here
    if args == ["usage"]:
        # A store to read: on none, `usage` stops before it opens one.
        assert loaded_after(["keys", "create", "--name", "probe"]) == []
    assert loaded_after(args) == []
