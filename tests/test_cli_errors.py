"""Every start-up error of the console script is one line, `faregate: ...`, with no traceback."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from harness import clean_env

pytestmark = pytest.mark.e2e  # runs the console script

CASES = {
    "missing config": (
        ["usage", "-c", "missing.yaml"],
        "bad configuration: config file missing.yaml does not exist",
    ),
    "config not YAML": (["models", "-c", "broken.yaml"], "not valid YAML: "),
    "unknown key": (["models", "-c", "unknown.yaml"], "unknown field `colour`"),
    "missing data": (["cache-eval"], "data/routellm not found: pass --data PATH"),
    "missing outcomes": (["replay", "--data", "nope.csv"], "nope.csv does not exist"),
    "missing prompts": (["eval", "nope.jsonl", "-m", "gpt-4o", "--api-key", "fg-x"], "nope.jsonl: "),
    "pairs without the columns": (
        ["cache-eval", "--pairs", "pairs.csv", "--sizes", "0"],
        "pairs.csv: needs two text columns",
    ),
    "pairs not JSON": (["cache-eval", "--pairs", "pairs.jsonl", "--sizes", "0"], "pairs.jsonl:1: "),
    "pairs row without a text": (["cache-eval", "--pairs", "short.jsonl", "--sizes", "0"], "short.jsonl:2: "),
    "not a prior file": (
        ["cache-eval", "--pairs", "short.jsonl", "--prior-lookups", "10", "--prior", "pairs.csv"],
        "pairs.csv: not a cache prior file",
    ),
    "sizes not numbers": (["cache-eval", "--pairs", "pairs.csv", "--sizes", "0,lots"], "--sizes"),
    "bad sim script": (["sim", "--script", "unknown.yaml"], "unknown field"),
    # -c, as for every other command that takes a config.
    "bad sim config": (["sim", "-c", "unknown.yaml"], "unknown field `colour`"),
    "unreachable store": (
        ["serve", "-c", "unreachable.yaml"],
        "store unavailable: cannot connect to PostgreSQL",
    ),
    "store path is a file": (["keys", "list", "-c", "blocked.yaml"], "faregate: "),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_start_up_error_is_one_line(case: str, tmp_path: Path) -> None:
    (tmp_path / "broken.yaml").write_text("server: [port\n")
    (tmp_path / "unknown.yaml").write_text("server: {colour: blue}\n")
    # Port 1 on loopback: nothing listens there, so the connection is refused at once.
    (tmp_path / "unreachable.yaml").write_text(
        "store: {postgres_url: 'postgresql://x@127.0.0.1:1/x', redis_url: 'redis://127.0.0.1:1/0'}\n"
    )
    (tmp_path / "a-file").write_text("")
    (tmp_path / "pairs.csv").write_text("a,b,c\nx,y,1\n")
    (tmp_path / "pairs.jsonl").write_text("text1,text2,label\n")
    short = '{"text1": "a", "text2": "b", "label": 1}\n{"text1": "c", "label": 0}\n'
    (tmp_path / "short.jsonl").write_text(short)
    (tmp_path / "blocked.yaml").write_text(f"store: {{path: {str(tmp_path / 'a-file' / 'store')!r}}}\n")
    args, message = CASES[case]
    result = subprocess.run(
        [sys.executable, "-m", "faregate.cli.main", *args],
        cwd=tmp_path,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode in (1, 2), result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("faregate: ") and message in line, line


def test_a_master_key_too_short_is_refused_at_start_in_one_line(tmp_path: Path) -> None:
    """`faregate serve` with a FAREGATE_MASTER_KEY too short to resist guessing (a placeholder left
    in a deployment) does not start: it says why, in one line, without the key."""
    result = subprocess.run(
        [sys.executable, "-m", "faregate.cli.main", "serve", "--port", "1"],
        cwd=tmp_path,
        env=clean_env(FAREGATE_MASTER_KEY="fg-master-change-me"),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("faregate: $FAREGATE_MASTER_KEY is 19 characters long; a master key needs")
    assert "change-me" not in line
