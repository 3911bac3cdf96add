"""`faregate cost --from-records` on a PostgreSQL store (a real throwaway server, tests/servers.py)
gives exactly what it gives on SQLite for the same records."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from faregate.catalog import build_catalog
from faregate.cli.main import app
from faregate.config import Settings, load_settings
from faregate.evals.costs.projection import exact_usd
from faregate.store.analytics_rows import Slice, Traffic
from faregate.store.backends import open_records_reader
from faregate.store.postgres.store import PostgresStore
from faregate.store.sqlite.store import SQLiteStore
from faregate.types import RequestRecord
from servers import PostgresServer, postgres_server  # noqa: F401

pytestmark = pytest.mark.e2e

# A fixed window (ISO dates, not "7d ago"), so both runs print the same title to the minute.
SINCE, UNTIL = "2030-01-01T00:00:00", "2030-01-08T00:00:00"
T0 = 1893456000.0  # 2030-01-01T00:00:00Z
# The config wants store.redis_url beside store.postgres_url; --from-records never connects to it.
UNUSED_REDIS = "redis://127.0.0.1:1/0"


def _record(
    i: int, at: float, model: str | None, prompt: int, completion: int, cost: str, cache: str = "miss"
) -> RequestRecord:
    return RequestRecord(
        request_id=f"r{i}",
        created_at=at,
        key_id=None,
        model_requested="asked-model",
        model_used=model,
        provider=None if model is None else "sim",
        status=200 if model is not None else 502,
        stream=False,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cost_usd=Decimal(cost),
        cache_status=cache,
    )


RECORDS = [
    _record(1, T0 + 60, "deepseek-v4-flash", 1000, 500, "0.00123"),
    _record(2, T0 + 120, "deepseek-v4-flash", 2000, 100, "0.000456", "bypass"),
    _record(3, T0 + 180, "deepseek-v4-flash", 1000, 500, "0", "hit"),  # free, and free on any model
    # Finer than a nano-dollar: the exact text is summed, not the rounded nano-dollar column.
    _record(4, T0 + 240, "gpt-4o", 3, 7, "0.0000000775"),
    _record(5, T0 + 300, "gpt-4o", 3, 7, "0.0000000775"),
    _record(6, T0 + 360, None, 0, 0, "0", "bypass"),  # failed outright: served by none, counted apart
    _record(7, T0 - 1, "gpt-4o", 9999, 9999, "9.99"),  # before --since
    _record(8, T0 + 7 * 86400, "gpt-4o", 9999, 9999, "9.99"),  # at --until: excluded
]
EXPECTED = [
    Traffic("deepseek-v4-flash", 3, 1, 3000, 600, Decimal("0.001686")),
    Traffic("gpt-4o", 2, 0, 6, 14, Decimal("0.000000155")),
    Traffic("", 1, 0, 0, 0, Decimal("0")),
]


def _fill_sqlite(store_dir: Path) -> None:
    async def fill() -> None:
        store = await SQLiteStore.open(store_dir)
        try:
            await store.insert_records(RECORDS)
        finally:
            await store.close()

    asyncio.run(fill())


def _fill_postgres(url: str) -> None:
    async def fill() -> None:
        store = await PostgresStore.open(url)  # migrates: the tables a gateway would have made
        try:
            await store.insert_records(RECORDS)
        finally:
            await store.close()

    asyncio.run(fill())


def _cost(config: Path) -> str:
    args = ["cost", "--from-records", "--since", SINCE, "--until", UNTIL, "-m", "gpt-4o", "-m", "gpt-4o-mini"]
    args.append("--exact")  # every digit, to compare with the hand-worked figures
    result = CliRunner().invoke(app, [*args, "-c", str(config)], env={"COLUMNS": "250"})
    assert result.exit_code == 0, result.output
    return result.output


async def _traffic(settings: Settings, since: float, until: float) -> list[Traffic]:
    reader = await open_records_reader(settings)
    try:
        return await reader.traffic(Slice(since, until))
    finally:
        await reader.close()


def _sorted(traffic: list[Traffic]) -> list[Traffic]:
    return sorted(traffic, key=lambda r: (-r.cost, -r.requests, r.group))


def test_cost_from_records_on_postgres_matches_sqlite(
    postgres_server: PostgresServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    url = postgres_server.new_database()
    sqlite_config, pg_config = tmp_path / "sqlite.yaml", tmp_path / "pg.yaml"
    sqlite_config.write_text(f"store: {{path: {str(tmp_path / 'sqlite')!r}}}\n")
    pg_config.write_text(
        f"store: {{path: {str(tmp_path / 'unused')!r}, postgres_url: {url!r}, redis_url: {UNUSED_REDIS!r}}}\n"
    )
    _fill_sqlite(tmp_path / "sqlite")
    _fill_postgres(url)

    # The per-store totals (read-only readers): identical, and exactly the hand-worked figures.
    since, until = T0, T0 + 7 * 86400
    on_sqlite = asyncio.run(_traffic(load_settings(sqlite_config), since, until))
    on_postgres = asyncio.run(_traffic(load_settings(pg_config), since, until))
    assert _sorted(on_postgres) == _sorted(on_sqlite) == EXPECTED
    assert [type(r.cost) for r in on_postgres] == [Decimal] * 3

    # The command: the same table, character for character, from either store.
    output = _cost(pg_config)
    assert output == _cost(sqlite_config)
    assert not (tmp_path / "unused").exists()  # it read PostgreSQL, not an empty SQLite store

    settings = load_settings(pg_config)
    prices = {name: build_catalog(settings).get(name) for name in ("gpt-4o", "gpt-4o-mini")}
    total = next(line for line in output.splitlines() if "│ total" in line)
    cells = [cell.strip() for cell in total.strip("│ ").split("│")]
    # requests, cache hits, billed tokens in and out, and what was paid: $0.001686 + $0.000000155.
    assert cells[:6] == ["total", "6", "1", "3,006", "614", "$0.001686155"]
    for cell, model in zip(cells[6:], prices.values(), strict=True):
        assert model is not None
        # 3,006 in + 614 out billed tokens at the model's list price, exactly.
        on_model = (3006 * model.list_price.input + 614 * model.list_price.output) / 1_000_000
        assert cell.startswith(exact_usd(on_model) + " (")
    assert "9.99" not in output


def test_cost_from_records_on_an_empty_postgres_database_says_so(
    postgres_server: PostgresServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    url = postgres_server.new_database()  # no gateway has run against it: no tables
    config = tmp_path / "pg.yaml"
    config.write_text(f"store: {{postgres_url: {url!r}, redis_url: {UNUSED_REDIS!r}}}\n")
    result = CliRunner().invoke(app, ["cost", "--from-records", "-c", str(config)])
    assert result.exit_code == 1  # a runtime failure, as in `faregate usage`
    assert "no request records in PostgreSQL" in result.output
    # Nothing was created: a reader never migrates the schema.
    database = url.rsplit("/", 1)[1]
    tables = postgres_server.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", database)
    assert tables.strip() == "0"
