"""`faregate cost --from-records` on a SQLite store: requests no model served (refused by the
gateway, or failed on every provider) are a line of their own, not "served by" what they asked for."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from faregate.cli.main import app
from faregate.store.sqlite.store import DB_FILENAME, SQLiteStore
from faregate.types import RequestRecord

SINCE, UNTIL = "2030-01-01T00:00:00", "2030-01-08T00:00:00"
T0 = 1893456000.0  # 2030-01-01T00:00:00Z


def _record(i: int, status: int, served: bool, prompt: int, completion: int, cost: str) -> RequestRecord:
    return RequestRecord(
        request_id=f"r{i}",
        created_at=T0 + 60 * i,
        key_id=None,
        model_requested="gpt-4o",
        model_used="gpt-4o" if served else None,
        provider="sim" if served else None,
        status=status,
        stream=False,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost_usd=Decimal(cost),
        cache_status="miss",
    )


RECORDS = [
    _record(1, 200, True, 1000, 500, "0.0075"),
    _record(2, 401, False, 0, 0, "0"),  # refused: bad key
    _record(3, 402, False, 0, 0, "0"),  # refused: no credit
    _record(4, 429, False, 0, 0, "0"),  # refused: rate limit
    _record(5, 502, False, 0, 0, "0.000025"),  # every provider failed; one billed a blank 200
]


def _rows(output: str) -> dict[str, list[str]]:
    rows = {}
    for line in output.splitlines():
        if line.startswith("│"):
            cells = [cell.strip() for cell in line.strip("│ ").split("│")]
            if cells[0]:
                rows[cells[0]] = cells[1:]
    return rows


def test_requests_no_model_served_are_counted_apart_and_their_money_kept(tmp_path: Path) -> None:
    store_dir = tmp_path / "store"

    async def fill() -> None:
        store = await SQLiteStore.open(store_dir)
        try:
            await store.insert_records(RECORDS)
        finally:
            await store.close()

    asyncio.run(fill())
    config = tmp_path / "faregate.yaml"
    config.write_text(f"store: {{path: {str(store_dir)!r}}}\n")
    args = ["cost", "--from-records", "--since", SINCE, "--until", UNTIL, "--exact", "-c", str(config)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    rows = _rows(result.output)
    # gpt-4o served one request: the four refused or failed ones were listed as served by it.
    assert rows["gpt-4o"][:5] == ["1", "0", "1,000", "500", "$0.0075"]
    assert rows["not served (refused or failed)"][:5] == ["4", "0", "0", "0", "$0.000025"]
    assert rows["total"][:5] == ["5", "0", "1,000", "500", "$0.007525"]


def _not_a_database(store_dir: Path) -> None:
    store_dir.mkdir()
    (store_dir / "faregate.db").write_bytes(b"not a database, just text " * 10)


def _a_directory(store_dir: Path) -> None:
    (store_dir / "faregate.db").mkdir(parents=True)


@pytest.mark.parametrize(
    ("make", "said"),
    [(_not_a_database, "file is not a database"), (_a_directory, "faregate.db")],
    ids=["not a database", "a directory"],
)
def test_a_store_file_that_cannot_be_read_is_one_line_not_a_traceback(
    tmp_path: Path, make: Callable[[Path], None], said: str
) -> None:
    store_dir = tmp_path / "store"
    make(store_dir)
    config = tmp_path / "faregate.yaml"
    config.write_text(f"store: {{path: {str(store_dir)!r}}}\n")
    args = ["cost", "--from-records", "--since", SINCE, "--until", UNTIL, "-c", str(config)]
    result = CliRunner().invoke(app, args)
    # A runtime failure, not a usage error: exit 1, as `faregate usage` and `keys` give.
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit)  # no other exception escaped: no traceback
    assert result.output.startswith("faregate: ")
    assert said in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_no_store_is_said_as_usage_and_keys_say_it(tmp_path: Path) -> None:
    # Run from the wrong directory: "no request records at ...", exit 2 (a usage error), where
    # `faregate usage` and `keys list` say "no store at ... (store.path)", exit 1.
    config = tmp_path / "faregate.yaml"
    config.write_text(f"store: {{path: {str(tmp_path / 'store')!r}}}\n")
    for args in (["cost", "--from-records"], ["usage"], ["keys", "list"]):
        result = CliRunner().invoke(app, [*args, "-c", str(config)])
        assert result.exit_code == 1, (args, result.output)
        assert f"no store at {tmp_path / 'store' / DB_FILENAME} (store.path)" in result.output, args
    assert not (tmp_path / "store").exists()


def test_a_since_not_before_until_is_refused_as_in_usage(tmp_path: Path) -> None:
    # `--since 1h --until 2h` printed "no requests recorded from 13:16 UTC to 12:16 UTC", exit 0:
    # a typo read as an empty week. `faregate usage` refuses it; so does this now.
    config = tmp_path / "faregate.yaml"
    config.write_text(f"store: {{path: {str(tmp_path / 'store')!r}}}\n")
    for since, until in ((UNTIL, SINCE), (SINCE, SINCE), ("1h", "2h")):
        args = ["cost", "--from-records", "--since", since, "--until", until, "-c", str(config)]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 2, result.output
        assert "--since must be before --until" in result.output
        assert "no requests recorded" not in result.output


def test_model_names_and_amounts_are_printed_whole_with_many_models(tmp_path: Path) -> None:
    # Five --model columns at the default width cut the headers to "claude-opu…", "Qwen/Qwen3…"
    # and the served-by name to "deepseek-a…": which model a column prices was left to guess.
    store_dir = tmp_path / "store"
    served = "deepseek-ai/DeepSeek-V4-Flash"
    record = _record(1, 200, True, 123_456, 654_321, "0.123456789")
    record.model_used = served

    async def fill() -> None:
        store = await SQLiteStore.open(store_dir)
        try:
            await store.insert_records([record])
        finally:
            await store.close()

    asyncio.run(fill())
    config = tmp_path / "faregate.yaml"
    config.write_text(f"store: {{path: {str(store_dir)!r}}}\n")
    targets = ["gpt-4o", "gpt-4o-mini", "claude-opus-4-5", "Qwen/Qwen3-Omni-30B-A3B-Instruct", "qwen3-vl-32b"]
    args = ["cost", "--from-records", "--since", SINCE, "--until", UNTIL, "--exact", "-c", str(config)]
    for target in targets:
        args += ["-m", target]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert "…" not in result.output, result.output
    for name in [served, *targets[:-1], "Qwen/Qwen3-VL-32B-Instruct"]:
        assert name in result.output, (name, result.output)
    assert "$0.123456789" in result.output


def test_embedding_traffic_keeps_its_own_cost_on_every_chat_model(tmp_path: Path) -> None:
    # An embeddings request cannot be served by a chat model: re-pricing its input tokens at
    # gpt-4o's price overstated every "on MODEL" column (and its total) by traffic no chat model
    # would take.
    store_dir = tmp_path / "store"
    embedding = RequestRecord(
        request_id="e1",
        created_at=T0 + 30,
        key_id=None,
        model_requested="text-embedding-3-small",
        model_used="text-embedding-3-small",
        provider="sim",
        status=200,
        stream=False,
        prompt_tokens=1_000_000,
        completion_tokens=0,
        cost_usd=Decimal("0.02"),
        cache_status="miss",
    )

    async def fill() -> None:
        store = await SQLiteStore.open(store_dir)
        try:
            await store.insert_records([RECORDS[0], embedding])
        finally:
            await store.close()

    asyncio.run(fill())
    config = tmp_path / "faregate.yaml"
    config.write_text(f"store: {{path: {str(store_dir)!r}}}\n")
    args = ["cost", "--from-records", "--since", SINCE, "--until", UNTIL, "--exact", "-m", "gpt-4o"]
    result = CliRunner().invoke(app, [*args, "-c", str(config)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    rows = _rows(result.output)
    assert rows["text-embedding-3-small"][4:6] == ["$0.02", "$0.02 (embeddings)"]
    # gpt-4o's own request at its own price ($0.0075), the embeddings at theirs.
    assert rows["total"][5].startswith("$0.0275 ")
