"""Measuring commands' numeric options: a value the command cannot mean is a one-line usage error
(exit 2), said before any data is loaded or any model is embedded."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from faregate.cli import router as router_cli


def _app(register: object) -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """A fresh app, as cli/main.py builds it."""

    register(app)  # type: ignore[operator]
    return app


@pytest.mark.parametrize("command", ["train", "train-judge"])
@pytest.mark.parametrize("repeats", ["0", "-1"])
def test_router_training_refuses_repeats_below_one(tmp_path: Path, command: str, repeats: str) -> None:
    # 0 silently meant the default (`repeats or default`); -1 made no folds, then said "no fold had
    # both models differ in accuracy", which blames the data.
    result = CliRunner().invoke(
        _app(router_cli.register),
        ["router", command, "--data", str(tmp_path / "absent.csv"), "--out", str(tmp_path / "m.json"),
         "--repeats", repeats],
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert "--repeats is a number of cross-validation repeats, 1 or more" in result.output
