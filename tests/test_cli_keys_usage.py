from __future__ import annotations

import asyncio
import re
import sqlite3
import time
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from faregate.accounts.keys import KeyStore
from faregate.cli import keys as keys_cli
from faregate.cli import usage as usage_cli
from faregate.cli.usage import parse_time
from faregate.store.sqlite import store as sqlite_store
from faregate.store.sqlite.store import DB_FILENAME, SQLiteStore
from faregate.types import RequestRecord


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()
    keys_cli.register(app)
    usage_cli.register(app)
    return app


@pytest.fixture
def store_dir(tmp_path: Path) -> Path:
    return tmp_path / "does" / "not" / "exist" / "yet"


@pytest.fixture
def config(tmp_path: Path, store_dir: Path) -> str:
    path = tmp_path / "faregate.yaml"
    path.write_text(f"store:\n  path: {store_dir}\n", encoding="utf-8")
    return str(path)


def run(app: typer.Typer, *args: str) -> Result:
    # A wide terminal, so rich tables are not wrapped.
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "200"})


def seed(store_dir: Path, records: list[RequestRecord]) -> None:
    async def go() -> None:
        store = await SQLiteStore.open(store_dir)
        try:
            await store.insert_records(records)
        finally:
            await store.close()

    asyncio.run(go())


def verify(store_dir: Path, raw: str) -> bool:
    async def go() -> bool:
        store = await SQLiteStore.open(store_dir)
        try:
            return await KeyStore(store).verify(raw) is not None
        finally:
            await store.close()

    return asyncio.run(go())


def test_keys_create_list_revoke(app: typer.Typer, config: str, store_dir: Path) -> None:
    created = run(app, "keys", "create", "--name", "backend", "--config", config)
    assert created.exit_code == 0, created.output
    assert (store_dir / DB_FILENAME).exists()
    raw = re.findall(r"^fg-\S+$", created.output, re.M)
    assert len(raw) == 1  # printed once
    key_id = re.findall(r"key_[0-9a-f]+", created.output)[0]
    assert verify(store_dir, raw[0])

    premium = run(app, "keys", "create", "--name", "vip", "--premium", "--config", config)
    assert premium.exit_code == 0 and re.search(r"^fg_pro_\S+$", premium.output, re.M)

    listed = run(app, "keys", "list", "--config", config)
    assert listed.exit_code == 0, listed.output
    assert key_id in listed.output and "backend" in listed.output and "vip" in listed.output
    assert raw[0][:9] + "…" in listed.output
    assert raw[0] not in listed.output

    revoked = run(app, "keys", "revoke", key_id, "--config", config)
    assert revoked.exit_code == 0, revoked.output
    assert not verify(store_dir, raw[0])
    # Again (a retry after a revocation that failed half-way, or that did not seem to finish):
    # done, and said so; it said "no active key" and exited 1, as if the revocation had failed.
    again = run(app, "keys", "revoke", key_id, "--config", config)
    assert again.exit_code == 0, again.output
    assert f"{key_id} was already revoked at " in again.output and "no active key" not in again.output
    assert not verify(store_dir, raw[0])
    absent = run(app, "keys", "revoke", "key_000000000000", "--config", config)
    assert absent.exit_code == 1 and "no active key with id or name 'key_000000000000'" in absent.output

    by_name = run(app, "keys", "revoke", "vip", "--config", config)
    assert by_name.exit_code == 0
    by_name_again = run(app, "keys", "revoke", "vip", "--config", config)
    assert by_name_again.exit_code == 0 and "vip was already revoked at " in by_name_again.output
    today = datetime.now(UTC).strftime("%Y-%m-%d")
    listed = run(app, "keys", "list", "--config", config)
    row = next(line for line in listed.output.splitlines() if key_id in line)
    assert row.count(today) == 2  # created and revoked
    assert "No keys" in run(app, "keys", "list", "--active", "--config", config).output


def test_keys_revoke_again_by_a_name_an_older_revoked_key_had(
    app: typer.Typer, config: str, store_dir: Path
) -> None:
    # A rotation: the old key revoked, a new one made under its name and revoked by that name. The
    # retry said "no active key" and exited 1 (two revoked keys have the name): it finishes the
    # latest revocation, as with one.
    for _ in range(2):
        created = run(app, "keys", "create", "--name", "rotated", "--config", config)
        assert created.exit_code == 0, created.output
        assert run(app, "keys", "revoke", "rotated", "--config", config).exit_code == 0
    again = run(app, "keys", "revoke", "rotated", "--config", config)
    assert again.exit_code == 0, again.output
    assert "rotated was already revoked at " in again.output


def test_keys_revoke_ambiguous_name(app: typer.Typer, config: str) -> None:
    run(app, "keys", "create", "--name", "twin", "--config", config)
    run(app, "keys", "create", "--name", "twin", "--config", config)
    result = run(app, "keys", "revoke", "twin", "--config", config)
    assert result.exit_code == 1 and "revoke one by id" in result.output


def test_bad_config_exits_2(app: typer.Typer, tmp_path: Path) -> None:
    result = run(app, "keys", "list", "--config", str(tmp_path / "missing.yaml"))
    assert result.exit_code == 2


def test_usage_table_with_exact_money_and_total(app: typer.Typer, config: str, store_dir: Path) -> None:
    now = time.time()

    def rec(request_id: str, model: str, cost: str, key_id: str | None, status: int = 200) -> RequestRecord:
        record = RequestRecord(
            request_id=request_id,
            created_at=now - 60,
            key_id=key_id,
            model_requested=model,
            model_used=model,
            provider="sim",
            status=status,
            stream=False,
            prompt_tokens=1000,
            completion_tokens=500,
            cost_usd=Decimal(cost),
        )
        record.route = "smart" if model == "premium" else model
        record.wire = "messages" if model == "premium" else "chat"
        return record

    async def make_key() -> str:
        store = await SQLiteStore.open(store_dir)
        try:
            key, _ = await KeyStore(store).create("mobile-app")
        finally:
            await store.close()
        return key.id

    key_id = asyncio.run(make_key())
    seed(
        store_dir,
        [
            rec("1", "cheap", "0.00082", key_id),
            rec("2", "cheap", "0.00041", key_id, status=502),
            rec("3", "premium", "0.1", None),
            rec("4", "premium", "0.2", None),
        ],
    )
    result = run(app, "usage", "--config", config)
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    cheap = next(line for line in lines if "cheap" in line)
    assert "$0.00123" in cheap and " 2 " in cheap
    total = next(line for line in lines if "total" in line)
    # Rounded for reading (four significant digits below a dollar): $0.30123 shows as $0.3012.
    assert "$0.3012 " in total and "4,000" in total and "2,000" in total
    exact = run(app, "usage", "--exact", "--config", config)
    assert "$0.30123 " in next(line for line in exact.output.splitlines() if "total" in line)

    by_route = run(app, "usage", "--by", "route", "--config", config)
    assert by_route.exit_code == 0, by_route.output
    assert "Usage by route" in by_route.output
    assert "$0.30" in next(line for line in by_route.output.splitlines() if "smart" in line)

    by_wire = run(app, "usage", "--by", "wire", "--config", config)
    assert by_wire.exit_code == 0, by_wire.output
    assert "Usage by wire" in by_wire.output
    assert "$0.30" in next(line for line in by_wire.output.splitlines() if "messages" in line)
    assert "$0.00123" in next(line for line in by_wire.output.splitlines() if "chat" in line)

    by_key = run(app, "usage", "--by", "key", "--since", "7d", "--config", config)
    assert by_key.exit_code == 0, by_key.output
    assert f"mobile-app ({key_id})" in by_key.output and "(no key)" in by_key.output

    past = run(app, "usage", "--since", "2001-01-01", "--until", "2001-02-01", "--config", config)
    assert past.exit_code == 0 and "No requests recorded" in past.output


def test_usage_rejects_bad_options(app: typer.Typer, config: str) -> None:
    assert run(app, "usage", "--since", "yesterday-ish", "--config", config).exit_code == 2
    assert run(app, "usage", "--by", "day", "--config", config).exit_code == 2
    assert run(app, "usage", "--since", "1h", "--until", "2h", "--config", config).exit_code == 2


@pytest.mark.parametrize("since", ["1000000w", "9" * 400 + "w"])
def test_usage_since_beyond_the_calendar_is_a_one_line_error(
    app: typer.Typer, config: str, store_dir: Path, since: str
) -> None:
    # A start before year 1 (or an infinite one) overflowed datetime when the table's title was
    # printed: a traceback, not a usage error.
    seed(
        store_dir,
        [RequestRecord("r1", time.time() - 60, None, "gpt-4o", "gpt-4o", "sim", 200, False)],
    )
    result = run(app, "usage", "--since", since, "--config", config)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert "too far back" in result.output and "Traceback" not in result.output


def test_parse_time() -> None:
    now = 1_700_000_000.0
    assert parse_time("24h", now) == now - 86400
    assert parse_time("7d", now) == now - 7 * 86400
    assert parse_time("30m", now) == now - 1800
    assert parse_time("now", now) == now
    assert parse_time("2024-05-01", now) == datetime(2024, 5, 1, tzinfo=UTC).timestamp()
    assert parse_time("2024-05-01T02:00+02:00", now) == datetime(2024, 5, 1, tzinfo=UTC).timestamp()


def test_by_choices_match_the_store() -> None:
    from faregate.store.analytics_rows import DIMENSIONS

    assert tuple(choice.group_by for choice in usage_cli.GroupChoice) == DIMENSIONS


@pytest.mark.parametrize(
    "command",
    [
        ["usage"],
        ["usage", "--by", "key"],
        ["keys", "list"],
        ["keys", "show", "backend"],
        ["keys", "update", "backend", "--rpm", "5"],
        ["keys", "revoke", "backend"],
    ],
)
def test_a_command_on_a_store_that_does_not_exist_says_so(
    app: typer.Typer, config: str, store_dir: Path, command: list[str]
) -> None:
    # Run from the wrong directory (or with the wrong --config), these made an empty store there
    # and reported it: "No requests recorded", "No keys", exit 0, and a stray .faregate/ behind.
    result = run(app, *command, "--config", config)
    assert result.exit_code == 1, result.output
    assert f"no store at {store_dir / DB_FILENAME}" in result.output
    assert "No requests" not in result.output and "No keys" not in result.output
    assert not store_dir.exists()
    # Creating a key is what makes a store (before the gateway's first start, too).
    assert run(app, "keys", "create", "--name", "backend", "--config", config).exit_code == 0
    assert run(app, *command, "--config", config).exit_code == 0


def test_a_locked_store_is_one_line_that_names_the_file(
    app: typer.Typer, config: str, store_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Said "faregate: store unavailable: database is locked", naming no file: which store, of
    # which config, was left to guess.
    assert run(app, "keys", "create", "--name", "backend", "--config", config).exit_code == 0
    # The lock is held past any wait: a short one (not 5 s per command) gives the same error.
    monkeypatch.setattr(sqlite_store, "BUSY_TIMEOUT_MS", 100)
    holder = sqlite3.connect(store_dir / DB_FILENAME, isolation_level=None)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        for command in (["keys", "list"], ["usage"]):
            result = run(app, *command, "--config", config)
            assert result.exit_code == 1, result.output
            assert result.output == (
                f"faregate: store unavailable: {store_dir / DB_FILENAME}: database is locked\n"
            ), result.output
    finally:
        holder.execute("ROLLBACK")
        holder.close()
