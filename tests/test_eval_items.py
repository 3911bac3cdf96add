"""`faregate eval`'s prompt set: a file it cannot use is named with its line, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from faregate.cli import eval as eval_cli
from faregate.errors import StartupError
from faregate.evals.prompt_eval.run import load_items


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("list.jsonl", '{"prompt": "a"}\n[1, 2]\n', "list.jsonl:2: expected a JSON object"),
        ("torn.jsonl", '{"prompt": "a"}\n{"prompt": "b"\n', "torn.jsonl:2: not JSON"),
        ("cells.csv", "prompt,messages\nhi,\nho,not json\n", "cells.csv:3: `messages` is not JSON"),
        # Several acceptable answers as a list: compared as the list's JSON text, every answer failed.
        (
            "aliases.jsonl",
            '{"prompt": "Capital of France?", "expected": ["Paris", "paris"]}\n',
            "aliases.jsonl:1: `expected` is a list",
        ),
        # A boolean became the text "true": `exact` failed an answer "True", `regex` too.
        (
            "yes-no.jsonl",
            '{"prompt": "Is 7 prime?", "expected": "true"}\n{"prompt": "Is 8 prime?", "expected": false}\n',
            "yes-no.jsonl:2: `expected` is a JSON boolean",
        ),
    ],
)
def test_a_line_that_cannot_be_an_item_is_named(tmp_path: Path, name: str, text: str, message: str) -> None:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ValueError, match=message):
        load_items(path)


def test_the_command_raises_a_start_up_error(tmp_path: Path) -> None:
    # cli/main.py prints a StartupError as one line, `faregate: ...`, and exits 2.
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """A fresh app, as cli/main.py builds it."""

    eval_cli.register(app)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('"just a string"\n', encoding="utf-8")
    result = CliRunner().invoke(app, ["eval", str(prompts), "-m", "m", "--api-key", "k"])
    assert isinstance(result.exception, StartupError), result.exception
    assert "prompts.jsonl:1: expected a JSON object" in str(result.exception)


def test_a_prompt_set_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """A fresh app, as cli/main.py builds it."""

    eval_cli.register(app)
    prompts = tmp_path / "latin1.csv"
    prompts.write_bytes("prompt\ncaf\u00e9?\n".encode("latin-1"))
    result = CliRunner().invoke(app, ["eval", str(prompts), "-m", "m", "--api-key", "k"])
    assert isinstance(result.exception, StartupError), result.exception
    assert str(result.exception).startswith(f"{prompts}: not UTF-8 text (invalid")


def test_a_missing_rubric_is_a_start_up_error(tmp_path: Path) -> None:
    # It was read with a bare read_text: FileNotFoundError, which cli/main.py prints in one line but
    # with exit code 1 (the environment), not 2 like the other mistyped arguments.
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """A fresh app, as cli/main.py builds it."""

    eval_cli.register(app)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('{"prompt": "hi", "expected": "hello"}\n', encoding="utf-8")
    rubric = tmp_path / "rubric.txt"
    args = ["eval", str(prompts), "-m", "m", "--api-key", "k", "--base-url", "http://127.0.0.1:1/v1"]
    args += ["--scorer", "llm-judge", "--judge-model", "j", "--rubric", str(rubric), "--out", str(tmp_path)]
    result = CliRunner().invoke(app, args)
    assert isinstance(result.exception, StartupError), result.exception
    assert str(result.exception) == f"{rubric}: No such file or directory"
