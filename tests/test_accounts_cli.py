"""`faregate keys` and `faregate credits` on the embedded store."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner, Result

from faregate.cli import credits as credits_cli
from faregate.cli import keys as keys_cli
from faregate.store.sqlite.store import DB_FILENAME


@pytest.fixture
def app() -> typer.Typer:
    app = typer.Typer()
    keys_cli.register(app)
    credits_cli.register(app)
    return app


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "faregate.yaml"
    path.write_text(f"store:\n  path: {tmp_path / 'store'}\naccounts:\n  new_key_credits_usd: '2.5'\n")
    return str(path)


def run(app: typer.Typer, *args: str) -> Result:
    return CliRunner().invoke(app, list(args), catch_exceptions=False, env={"COLUMNS": "200"})


def test_keys_get_the_configured_grant_and_their_own_limits(app: typer.Typer, config: str) -> None:
    options = ["--rpm", "50", "--budget", "day=1", "--budget", "month:rolling=20", "--max-request", "0.5"]
    created = run(app, "keys", "create", "--name", "team", *options, "--config", config)
    assert created.exit_code == 0, created.output
    assert "with $2.5 of credits, not used while metering is off" in created.output
    key_id = re.findall(r"key_[0-9a-f]+", created.output)[0]
    shown = run(app, "keys", "show", "team", "--config", config)
    assert shown.exit_code == 0, shown.output
    assert "balance   $2.5 " in shown.output and "50 requests/min" in shown.output
    assert "per request $0.5" in shown.output
    assert "budget    calendar day: $0 of $1" in shown.output and "rolling month: $0 of $20" in shown.output
    updated = run(
        app, "keys", "update", key_id, "--rpm", "0", "--clear-budgets", "--name", "team-2", "--config", config
    )
    assert updated.exit_code == 0, updated.output
    assert (
        "team-2" in updated.output and "600 requests/min" in updated.output and "budget" not in updated.output
    )
    granted = run(app, "keys", "create", "--name", "free", "--credits", "0", "--config", config)
    assert "unmetered: metering is off, so it spends without limit" in granted.output
    metered = Path(config).with_name("metered.yaml")
    metered.write_text(Path(config).read_text() + "  enabled: true\n")
    paid = run(app, "keys", "create", "--name", "paid", "--config", str(metered))
    assert "with $2.5 of credits. Store it now" in paid.output
    listed = run(app, "keys", "list", "--config", config)
    assert "2.5" in listed.output and "balance (USD)" in listed.output


def test_credits_add_ledger_and_audit(app: typer.Typer, config: str, tmp_path: Path) -> None:
    run(app, "keys", "create", "--name", "alice", "--config", config)
    added = run(app, "credits", "add", "alice", "10.25", "--note", "invoice 7", "--config", config)
    assert added.exit_code == 0 and "Added $10.25" in added.output and "balance $12.75" in added.output
    ledger = run(app, "credits", "ledger", "alice", "--config", config)
    assert ledger.exit_code == 0 and "topup" in ledger.output and "invoice 7" in ledger.output
    assert "grant" in ledger.output
    audit = run(app, "credits", "audit", "--config", config)
    assert audit.exit_code == 0 and "Every balance equals the sum of its ledger rows" in audit.output
    assert audit.output.startswith("Audited 1 account, 2 ledger rows.\n"), audit.output  # not "1 accounts"
    for bad in ("-1", "0", "abc", "0.0000000001"):
        refused = run(app, "credits", "add", "alice", bad, "--config", config)
        assert refused.exit_code in (1, 2), bad  # 2: click reads "-1" as an option
    missing = run(app, "credits", "add", "nobody", "1", "--config", config)
    assert missing.exit_code == 1 and "No key" in missing.output
    # Someone edits a balance behind the ledger's back: the audit says so, and fails.
    with sqlite3.connect(tmp_path / "store" / DB_FILENAME) as db:
        db.execute("UPDATE accounts SET balance_nano = balance_nano + 1000")
    audit = run(app, "credits", "audit", "--config", config)
    assert audit.exit_code == 1 and "but the ledger sums to $12.75" in audit.output


def test_a_limit_past_a_64_bit_integer_is_a_clear_error(app: typer.Typer, config: str) -> None:
    created = run(app, "keys", "create", "--name", "big", "--config", config)
    assert created.exit_code == 0, created.output
    updated = CliRunner().invoke(app, ["keys", "update", "big", "--tpm", str(2**63), "--config", config])
    assert updated.exit_code == 1 and not isinstance(updated.exception, OverflowError), updated.output
    assert "too large" in updated.output


@pytest.mark.parametrize(
    "command",
    [
        ["credits", "audit"],
        ["credits", "ledger", "alice"],
        ["credits", "add", "alice", "1"],
        ["credits", "instances"],
        ["credits", "release-instance", "inst_77aa01e9b3c2"],
    ],
)
def test_credits_on_a_store_that_does_not_exist_say_so(
    app: typer.Typer, config: str, tmp_path: Path, command: list[str]
) -> None:
    # The audit of a store made on the spot said "Audited 0 accounts ... Every balance equals the
    # sum of its ledger rows": an all-clear for the wrong directory.
    result = run(app, *command, "--config", config)
    assert result.exit_code == 1, result.output
    assert f"no store at {tmp_path / 'store' / DB_FILENAME}" in result.output
    assert "Audited" not in result.output
    assert not (tmp_path / "store").exists()


def test_ids_and_amounts_are_never_cut_on_an_80_column_terminal(
    app: typer.Typer, config: str, tmp_path: Path
) -> None:
    # At 80 columns (a terminal's default, and what a pipe gets) the tables cut the key id to
    # "key_bda641…" and every request id to "req_01a250d…": the values one copies to act on.
    created = run(app, "keys", "create", "--name", "a-service-with-a-rather-long-name", "--config", config)
    key_id = re.findall(r"key_[0-9a-f]+", created.output)[0]
    run(app, "credits", "add", key_id, "1234567.123456789", "--note", "a long note " * 6, "--config", config)
    request_id = "req_01a250dc1488815565b3aacddad9c924"
    with sqlite3.connect(tmp_path / "store" / DB_FILENAME) as db:
        # A request's hold, as the gateway writes it (append-only: rows are only ever added).
        db.execute(
            "INSERT INTO ledger (entry_id, key_id, kind, amount_nano, hold_id, request_id, created_at) "
            "VALUES ('hold_1:res', ?, 'reservation', -1234567890123, 'hold_1', ?, 1796652929.4)",
            (key_id, request_id),
        )

    def at_80(*args: str) -> str:
        result = CliRunner().invoke(app, [*args, "--config", config], env={"COLUMNS": "80"})
        assert result.exit_code == 0, result.output
        assert "…" not in result.output.replace(created.output.splitlines()[-1][:9] + "…", ""), result.output
        return result.output

    listed = at_80("keys", "list")
    assert key_id in listed and "1234569.623456789" in listed
    ledger = at_80("credits", "ledger", key_id)
    assert request_id in ledger and "1234567.123456789" in ledger and "-1234.567890123" in ledger
    # Amounts line up on the right, as in the other tables.
    row = next(line for line in ledger.splitlines() if "grant" in line)
    assert re.search(r" 2\.5 │", row), row


def test_two_budgets_for_the_same_period_and_window_are_refused_as_by_the_api(
    app: typer.Typer, config: str
) -> None:
    # The admin API refuses a second calendar day budget; `--budget day=2 --budget day=3` made a
    # key with both, which no API call could have written.
    for command in (["keys", "create", "--name", "dup"], ["keys", "update", "dup"]):
        if command[1] == "update":
            assert run(app, "keys", "create", "--name", "dup", "--config", config).exit_code == 0
        result = run(app, *command, "--budget", "day=2", "--budget", "day=3", "--config", config)
        assert result.exit_code == 1, result.output
        assert "budget 'day=3': a calendar day budget is already given" in result.output
    shown = run(app, "keys", "show", "dup", "--config", config)
    assert "budget" not in shown.output
    # A calendar and a rolling day are two budgets, as in the API.
    both = run(
        app, "keys", "update", "dup", "--budget", "day=2", "--budget", "day:rolling=3", "--config", config
    )
    assert both.exit_code == 0, both.output
    assert "calendar day: $0 of $2" in both.output and "rolling day: $0 of $3" in both.output


def test_show_says_when_a_key_was_revoked_in_utc(app: typer.Typer, config: str) -> None:
    # Every other time the CLI prints says UTC; this one said "REVOKED 2026-12-07 14:25:06" alone.
    run(app, "keys", "create", "--name", "gone", "--config", config)
    run(app, "keys", "revoke", "gone", "--config", config)
    shown = run(app, "keys", "show", "gone", "--config", config)
    assert re.search(r"  REVOKED \d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC$", shown.output.splitlines()[0]), (
        shown.output
    )


def test_a_revoked_key_takes_no_credits_nor_policy_change(app: typer.Typer, config: str) -> None:
    """A revocation is final: credits added to a revoked key could never be spent, and a budget or
    limit set on it never applies, so either is an operator's mistake (the wrong key of two with
    one name, say). Both were accepted and printed as done; now each is refused, exit 1, and
    nothing changes. Renaming it changes no money and stays allowed."""
    run(app, "keys", "create", "--name", "gone", "--credits", "5", "--config", config)
    run(app, "keys", "revoke", "gone", "--config", config)
    added = run(app, "credits", "add", "gone", "10", "--config", config)
    assert added.exit_code == 1, added.output
    assert "is revoked" in added.output and "no credits" in added.output, added.output
    updated = run(app, "keys", "update", "gone", "--budget", "day=2", "--config", config)
    assert updated.exit_code == 1, updated.output
    assert "is revoked" in updated.output, updated.output
    shown = run(app, "keys", "show", "gone", "--config", config)
    assert "balance   $5 " in shown.output and "budget" not in shown.output, shown.output
    renamed = run(app, "keys", "update", "gone", "--name", "gone-old", "--config", config)
    assert renamed.exit_code == 0, renamed.output


@pytest.mark.parametrize(
    ("spec", "said"),
    [
        ("year=5", "budget 'year=5': PERIOD is one of day, week, month"),
        ("day:sliding=5", "budget 'day:sliding=5': WINDOW is one of calendar, rolling"),
        ("day=-1", "'budget day=-1' must be more than 0."),
        ("day=lots", "'budget day=lots' is not a decimal amount"),
    ],
)
def test_a_bad_budget_is_said_in_the_options_own_terms(
    app: typer.Typer, config: str, spec: str, said: str
) -> None:
    # The API's field paths leaked: "'budgets[0].period' must be one of [...]" for --budget year=5.
    result = run(app, "keys", "create", "--name", "b", "--budget", spec, "--config", config)
    assert result.exit_code == 1, result.output
    assert said in result.output and "budgets[0]" not in result.output


def test_an_empty_ledger_or_instance_list_is_a_sentence_not_an_empty_table(
    app: typer.Typer, config: str
) -> None:
    # Both printed a table of headings and no row, as `keys list` no longer does.
    run(app, "keys", "create", "--name", "zero", "--credits", "0", "--config", config)
    ledger = run(app, "credits", "ledger", "zero", "--config", config)
    assert ledger.exit_code == 0 and ledger.output.startswith("No ledger rows for zero (key_"), ledger.output
    instances = run(app, "credits", "instances", "--config", config)
    assert instances.exit_code == 0 and instances.output.startswith("No serving instance"), instances.output
    assert "┏" not in ledger.output + instances.output
