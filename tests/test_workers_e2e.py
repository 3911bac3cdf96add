"""`faregate serve --workers 2` as users run it: two worker processes on one port and one SQLite
store, a supervisor that restarts a killed worker and stops both cleanly. Credits stay exact
across the workers (the no-overspend test of test_ledger_e2e.py, with two workers), rate limits
too, and a SIGTERM leaves one record per request."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

from faregate.config import Settings
from faregate.server.workers import migrate_store
from faregate.store.sqlite.migrations import LATEST_VERSION
from harness import MASTER_KEY, GatewayProcess, SimProcess, clean_env, free_port, wait_until
from servers import (  # noqa: F401
    PostgresServer,
    SharedUrls,
    launch_gateway,
    postgres_server,
    redis_server,
    shared_urls,
)
from test_ledger_e2e import (
    ACCOUNTS,
    FLAT_MODEL,
    LORE,
    admin,
    audit,
    balance_nano,
    fire,
    key_state,
    ledger_sum,
    new_key,
    worst_is_a_tenth_of_a_cent,
)

pytestmark = pytest.mark.e2e

TWO = "workers: 2"
COUNT_RECORDS = "SELECT COUNT(*), COUNT(DISTINCT request_id) FROM request_records"


def health(gateway: GatewayProcess) -> dict[str, Any]:
    """GET /health on a new connection (SO_REUSEPORT spreads connections, not requests)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{gateway.port}/health", headers={"Authorization": f"Bearer {MASTER_KEY}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.load(response))


def by_worker(gateway: GatewayProcess, want: int = 2, tries: int = 400) -> dict[int, dict[str, Any]]:
    """The latest /health of each worker, by pid, once `want` different ones have answered."""
    seen: dict[int, dict[str, Any]] = {}
    for _ in range(tries):
        try:
            answer = health(gateway)
        except OSError:  # a connection queued at a worker as it was killed is reset
            continue
        seen[answer["pid"]] = answer
        if len(seen) >= want:
            break
    return seen


def test_two_workers_share_the_port_and_never_overspend(sim: SimProcess, tmp_path: Path) -> None:
    with launch_gateway(tmp_path / "gw", sim, server=TWO, extra=ACCOUNTS + FLAT_MODEL) as gateway:
        workers = by_worker(gateway)
        assert len(workers) == 2 and all(w["workers"] == 2 for w in workers.values())
        assert gateway.process.pid not in workers  # the supervisor serves nothing itself

        key_id, key = new_key(gateway, "0.01")
        statuses = asyncio.run(fire(gateway.base_url, key, 200, **worst_is_a_tenth_of_a_cent()))
        admitted = statuses.count(200)
        assert 1 <= admitted <= 10, statuses
        assert statuses.count(402) == 200 - admitted, sorted(set(statuses))
        state = key_state(gateway, key_id)
        assert Decimal(state["balance_usd"]) == Decimal("0.01") - admitted * Decimal("0.001") >= 0
        assert state["reserved_usd"] == "0"
        assert balance_nano(gateway, key_id) == ledger_sum(gateway, key_id) >= 0
        assert audit(gateway)["clean"] is True

        # Both workers served chat requests, and each request has one record. Whichever worker
        # answers /health, its counters are both workers' (each one's in `by_worker`).
        answers: list[dict[str, Any]] = []

        def whole() -> bool:
            answers[:] = [health(gateway) for _ in range(8)]
            each = [sum(w["counters"]["records_written"] for w in a["by_worker"]) for a in answers]
            both = len({a["pid"] for a in answers}) == 2  # 8 new connections: both answer, likely
            summed = {a["counters"]["records_written"] for a in answers}
            return both and summed == {200} and set(each) == {200}

        wait_until(whole, "every /health answer, of either worker: the 200 records the two wrote")
        for answer in answers:
            each = {w["worker"]: w for w in answer["by_worker"]}
            assert sorted(each) == [0, 1] and answer["worker"] in each
            assert all(w["counters"]["records_written"] > 0 for w in each.values()), answer
            assert {w["pid"] for w in each.values()} == set(workers)
        with sqlite3.connect(gateway.store_path / "faregate.db") as db:
            rows = db.execute("SELECT COUNT(*), COUNT(DISTINCT request_id) FROM request_records").fetchone()
            instances = db.execute(
                "SELECT COUNT(DISTINCT pid) FROM instances WHERE lease_until > 0"
            ).fetchone()
        assert rows == (200, 200)
        assert instances == (2,)

        # One scrape answers for both workers: counters summed, gauges one series per worker.
        def scraped() -> str:
            request = urllib.request.Request(
                f"http://127.0.0.1:{gateway.port}/metrics", headers={"Authorization": f"Bearer {MASTER_KEY}"}
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                return str(response.read().decode())

        def requests_counted(text: str) -> float:
            return sum(
                float(line.rsplit(" ", 1)[1])
                for line in text.splitlines()
                if line.startswith("faregate_requests_total{")
            )

        wait_until(lambda: requests_counted(scraped()) == 200, "200 requests in one scrape of two workers")
        text = scraped()
        assert (
            'faregate_records_pending{worker="0"}' in text and 'faregate_records_pending{worker="1"}' in text
        )


def test_rate_limits_are_one_across_workers(sim: SimProcess, tmp_path: Path) -> None:
    with launch_gateway(tmp_path / "gw", sim, server=TWO, extra=ACCOUNTS) as gateway:
        assert len(by_worker(gateway)) == 2
        _, key = new_key(gateway, "1", requests_per_minute=4)
        create = {"model": "deepseek-v4-flash", "messages": LORE, "max_tokens": 5}
        statuses = asyncio.run(fire(gateway.base_url, key, 30, **create))
        # Each worker's own bucket would let 4 through, 8 in all; a refill during the run adds one at most.
        assert statuses.count(200) in (4, 5), statuses
        assert statuses.count(429) == 30 - statuses.count(200)


def test_a_key_revoked_through_one_worker_is_refused_by_both(sim: SimProcess, tmp_path: Path) -> None:
    # Metering off (nothing reads the key at reservation) and an hour of key cache: only the
    # key event can tell the other worker.
    extra = "auth: {key_cache_ttl_s: 3600}\n"
    with launch_gateway(tmp_path / "gw", sim, server=TWO, extra=extra) as gateway:
        key_id, key = new_key(gateway, "1")
        create = {"model": "deepseek-v4-flash", "messages": LORE, "max_tokens": 5}
        # 40 requests on new connections: both workers have verified (and cached) the key.
        assert asyncio.run(fire(gateway.base_url, key, 40, **create)) == [200] * 40
        with admin(gateway) as client:
            assert client.delete(f"/admin/keys/{key_id}").status_code == 200
        wait_until(
            lambda: asyncio.run(fire(gateway.base_url, key, 40, **create)) == [401] * 40,
            "the revocation is heard by both workers",
        )


def test_a_killed_worker_is_restarted(sim: SimProcess, tmp_path: Path) -> None:
    with launch_gateway(tmp_path / "gw", sim, server=TWO) as gateway:
        before = set(by_worker(gateway))
        victim = min(before)
        os.kill(victim, signal.SIGKILL)

        def replaced() -> bool:
            now = set(by_worker(gateway, tries=40))
            return len(now - before) == 1 and victim not in now

        wait_until(replaced, "a new worker in place of the killed one", timeout_s=60)
        assert "restarting it in" in gateway.read_log()
        assert gateway.process.poll() is None
        key = new_key(gateway, "1")[1]
        client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
        for _ in range(6):
            client.chat.completions.create(model="deepseek-v4-flash", messages=LORE, max_tokens=5)  # type: ignore[arg-type]


def admin_json(gateway: GatewayProcess, path: str) -> dict[str, Any]:
    """GET an admin path on a new connection (SO_REUSEPORT spreads connections, not requests)."""
    request = urllib.request.Request(
        f"http://127.0.0.1:{gateway.port}{path}", headers={"Authorization": f"Bearer {MASTER_KEY}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.load(response))


def test_an_alert_both_workers_show_is_logged_once_and_answered_alike_by_both(
    sim: SimProcess, tmp_path: Path
) -> None:
    """Every worker evaluates the rules for its own /metrics; worker 0 alone posts an alert and
    logs it, so an alert is one line in the log, not one per worker. The dashboard's alerts are
    worker 0's whichever worker answers: the others said `webhook: false` and no failed posts."""
    rule = "{name: any-traffic, metric: error_rate, above: -1, min_count: 1, window_minutes: 60}"
    # A webhook nobody listens on: each event it is posted is a failure.
    webhook = f"webhook: {{url: 'http://127.0.0.1:{free_port()}/hook', timeout_s: 1}}"
    extra = f"alerts: {{interval_s: 0.2, {webhook}, rules: [{rule}]}}\n"
    with launch_gateway(tmp_path / "gw", sim, server=TWO, extra=extra) as gateway:
        _, key = new_key(gateway, "1")
        create = {"model": "deepseek-v4-flash", "messages": LORE, "max_tokens": 5}
        assert asyncio.run(fire(gateway.base_url, key, 10, **create)) == [200] * 10

        def firing_workers() -> set[str]:
            request = urllib.request.Request(
                f"http://127.0.0.1:{gateway.port}/metrics", headers={"Authorization": f"Bearer {MASTER_KEY}"}
            )
            with urllib.request.urlopen(request, timeout=10) as response:
                text = response.read().decode()
            return set(re.findall(r'faregate_alert_firing\{alert="any-traffic",.*worker="(\d)"\} 1', text))

        # Both workers have fired it (each logs, if it logs, as it fires).
        wait_until(lambda: firing_workers() == {"0", "1"}, "the alert firing on both workers")
        assert gateway.read_log().count("alert firing: any-traffic") == 1, gateway.read_log()
        wait_until(lambda: "alert webhook" in gateway.read_log(), "worker 0's post failing")
        answers: list[dict[str, Any]] = []

        def alike() -> bool:
            # 24 new connections: both workers answer some (all one's: a chance of 2 in 2^24).
            answers[:] = [admin_json(gateway, "/admin/dashboard/alerts") for _ in range(24)]
            return {(a["webhook"], a["webhook_failures"]) for a in answers} == {(True, 1)}

        # Within a second of the failure (worker 0 publishes its alerts every second).
        wait_until(alike, "every answer: the webhook, and its one failed post", timeout_s=10)
        assert len({a["firing"][0]["fired_at"] for a in answers}) == 1


async def fire_or_fail(base_url: str, key: str, n: int) -> list[int]:
    """n concurrent completions that take 3 s each; the HTTP status of each (0: no answer)."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=60)

    async def one() -> int:
        try:
            await client.chat.completions.create(
                model="deepseek-v4-flash",
                messages=LORE,  # type: ignore[arg-type]
                max_tokens=5,
                extra_body={"sim": {"ttft_ms": 3000}},
            )
        except openai.APIStatusError as error:
            return error.status_code
        except openai.APIConnectionError:
            return 0
        return 200

    try:
        return list(await asyncio.gather(*(one() for _ in range(n))))
    finally:
        await client.close()


def holds(gateway: GatewayProcess) -> int:
    with sqlite3.connect(gateway.store_path / "faregate.db") as db:
        return int(db.execute("SELECT COUNT(*) FROM holds").fetchone()[0])


def test_sigterm_stops_both_workers_with_one_record_per_request(sim: SimProcess, tmp_path: Path) -> None:
    # Records are flushed every 30 s: those of the requests below are still pending when they end.
    extra = ACCOUNTS + "records: {flush_interval_s: 30}\n"
    with launch_gateway(tmp_path / "gw", sim, server=TWO, extra=extra, sim_first_byte_s=20) as gateway:
        pids = set(by_worker(gateway))
        _, key = new_key(gateway, "1")
        done: list[int] = []

        def send() -> None:
            done.extend(asyncio.run(fire_or_fail(gateway.base_url, key, 40)))

        sender = threading.Thread(target=send)
        sender.start()
        # All 40 are in the workers' hands (each holds its reservation while it waits 3 s upstream).
        wait_until(lambda: holds(gateway) == 40, "40 requests in flight", timeout_s=30)
        gateway.process.send_signal(signal.SIGTERM)
        sender.join(60)
        assert gateway.process.wait(90) == 0
        assert len(done) == 40
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
        with sqlite3.connect(gateway.store_path / "faregate.db") as db:
            recorded = db.execute(
                "SELECT COUNT(*), COUNT(DISTINCT request_id) FROM request_records"
            ).fetchone()
        # Every request that reached a worker was answered and recorded once; none left a hold.
        assert done == [200] * 40
        assert recorded == (40, 40)
        assert holds(gateway) == 0


def test_a_store_that_cannot_be_opened_stops_the_supervisor_with_one_line(tmp_path: Path) -> None:
    """The supervisor opens (and migrates) the store before it forks: it says why in one line."""
    config = tmp_path / "faregate.yaml"
    store = "store: {path: '/proc/no-such-store'}"
    config.write_text(f"server: {{port: {free_port()}, workers: 2}}\n{store}\n")
    ran = subprocess.run(
        [sys.executable, "-m", "faregate.cli.main", "serve", "-c", str(config)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 1
    assert ran.stderr == "faregate: No such file or directory: /proc/no-such-store\n"
    assert "Traceback" not in ran.stderr


def test_a_config_error_found_as_the_workers_build_is_said_once_with_its_line(tmp_path: Path) -> None:
    """A route naming an unknown model is found once the gateway is built, in each worker: each
    wrote its traceback, without the file's line one process names. The supervisor says the first
    worker's error once, as one process does: file and line, exit 2."""
    config = tmp_path / "faregate.yaml"
    config.write_text(
        f"server: {{port: {free_port()}, workers: 2}}\nstore: {{path: {str(tmp_path / 'store')!r}}}\n"
        "sim: {mode: 'off'}\ncatalog: {broad: false}\nroutes:\n  smart:\n    chain: [gpt-4o, gpt-nonexist]\n"
    )
    ran = subprocess.run(
        [sys.executable, "-m", "faregate.cli.main", "serve", "-c", str(config)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 2, ran.stderr
    lines = ran.stderr.splitlines()
    assert len(lines) == 1, ran.stderr
    assert lines[0].startswith(
        f"faregate: {config}, line 6: routes.smart: unknown model or route 'gpt-nonexist'"
    )


def test_a_redis_that_does_not_answer_stops_the_supervisor_with_one_line(
    postgres_server: PostgresServer,  # noqa: F811
    tmp_path: Path,
) -> None:
    """The shared store's Redis is only used by the workers' accounts: down (not started yet), each
    of the N workers said so in a line of its own, and the supervisor a line more. The supervisor
    asks it before it forks, as one process does: one line, exit 1."""
    config = tmp_path / "faregate.yaml"
    store = f"store: {{postgres_url: {postgres_server.new_database()!r}, redis_url: 'redis://127.0.0.1:{free_port()}/0'}}"
    config.write_text(f"server: {{port: {free_port()}, workers: 3}}\n{store}\n")
    ran = subprocess.run(
        [sys.executable, "-m", "faregate.cli.main", "serve", "-c", str(config)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 1
    lines = ran.stderr.splitlines()
    assert len(lines) == 1, ran.stderr
    unavailable = "faregate: store unavailable: cannot use Redis at the configured store.redis_url"
    assert lines[0].startswith(unavailable)


def test_workers_whose_pools_postgresql_has_no_room_for_are_warned_of_at_start(
    shared_urls: SharedUrls,  # noqa: F811
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Each worker opens pools of its own (store.postgres_pool_size, and 4 for the dashboard): N
    of them may open more connections than PostgreSQL's max_connections, and under load their
    requests then fail on "too many clients". The supervisor says so before forking, with what
    would fit. (The test server's max_connections is 300.)"""
    settings = Settings()
    settings.store.postgres_url, settings.store.redis_url = shared_urls.postgres, shared_urls.redis
    settings.store.postgres_pool_size = 100
    with caplog.at_level(logging.WARNING, logger="faregate.workers"):
        migrate_store(settings, workers=1)
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
    with caplog.at_level(logging.WARNING, logger="faregate.workers"):
        migrate_store(settings, workers=3)
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert "3 workers may open up to 312 connections to PostgreSQL" in warning
    assert "max_connections 300" in warning
    room = re.search(r"the (\d+) it has room for", warning)
    fits = re.search(r"set store\.postgres_pool_size: (\d+)", warning)
    assert room is not None and fits is not None, warning
    assert 3 * (int(fits.group(1)) + 4) <= int(room.group(1)) < 3 * (int(fits.group(1)) + 5)


# The supervisor of `serve --workers 2` on a new store, in a process of its own: each time it would
# fork a worker, it prints the schema versions the store file has at that moment, then stops
# instead of forking.
SUPERVISE_UNTIL_THE_FIRST_FORK = """
import sqlite3, sys
from pathlib import Path
from faregate.config import Settings
from faregate.server import workers

def start(self, worker, announce=False):
    with sqlite3.connect(Path(sys.argv[1]) / "faregate.db") as conn:
        rows = conn.execute("SELECT version FROM schema_migrations ORDER BY version").fetchall()
    print("before forking worker", worker.index, [row[0] for row in rows], flush=True)
    self._stopping = True

workers.Supervisor._start = start
settings = Settings()
settings.sim.mode = "off"
settings.store.path = sys.argv[1]
settings.server.host, settings.server.port, settings.server.workers = "127.0.0.1", int(sys.argv[2]), 2
sys.exit(workers.run_workers(settings, 2))
"""


def test_the_supervisor_migrates_the_store_once_before_it_forks_the_workers(tmp_path: Path) -> None:
    """A long migration (a large records table rewritten) runs in the supervisor, before the
    workers and their start timeout: in the workers it was cut short by that timeout, rolled back,
    and failed every start."""
    store = tmp_path / "store"
    ran = subprocess.run(
        [sys.executable, "-c", SUPERVISE_UNTIL_THE_FIRST_FORK, str(store), str(free_port())],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ran.returncode == 0, ran.stderr
    every_version = list(range(1, LATEST_VERSION + 1))
    assert f"before forking worker 0 {every_version}" in ran.stdout.splitlines(), ran.stdout + ran.stderr


def test_a_postgresql_that_will_not_say_its_room_does_not_stop_the_start(
    shared_urls: SharedUrls,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The check is advice: behind a proxy (PgBouncer) or for a role that may not read the
    settings, its question fails, and the gateway starts all the same."""
    import asyncpg

    from faregate.store.postgres.store import PostgresStore

    async def refused(self: PostgresStore) -> None:
        raise asyncpg.InsufficientPrivilegeError("permission denied for view pg_stat_activity")

    monkeypatch.setattr(PostgresStore, "connection_room", refused)
    settings = Settings()
    settings.store.postgres_url, settings.store.redis_url = shared_urls.postgres, shared_urls.redis
    with caplog.at_level(logging.INFO, logger="faregate.workers"):
        migrate_store(settings, workers=3)
    assert "could not ask PostgreSQL how many connections it takes" in caplog.text


# A supervisor of 2 stub workers (ready at once, then idle until a signal ends them), in a process
# of its own. Each worker prints its pid when ready. Once the file argv[3] exists, the start of
# worker 1, in the forked process before it is a worker, fails (MemoryError, as under the memory
# pressure that killed its predecessor) or is sent SIGTERM (the supervisor's stop, as it lands
# there), as argv[4] says.
SUPERVISE_STUBS = """
import os, signal, sys, time
from pathlib import Path
from faregate.config import Settings
from faregate.server import workers

def stub_worker(seat, settings, announce):
    for sig in (signal.SIGTERM, signal.SIGINT):  # as worker_main
        signal.signal(sig, signal.SIG_DFL)
    os.write(seat.ready_fd, b"1")
    print("worker", seat.index, "ready", os.getpid(), flush=True)
    while True:
        time.sleep(1)

join = workers.SharedMetrics.join

def troubled_join(directory, index, count):
    if index == 1 and Path(sys.argv[3]).exists():
        if sys.argv[4] == "fail":
            raise MemoryError
        os.kill(os.getpid(), signal.SIGTERM)
    return join(directory, index, count)

workers.worker_main = stub_worker
workers.SharedMetrics.join = troubled_join
settings = Settings()
settings.sim.mode = "off"
settings.store.path = sys.argv[1]
settings.server.host, settings.server.port, settings.server.workers = "127.0.0.1", int(sys.argv[2]), 2
sys.exit(workers.run_workers(settings, 2))
"""


def ready_pids(out: Path) -> dict[int, list[int]]:
    pids: dict[int, list[int]] = {0: [], 1: []}
    # Only whole "worker N ready PID" lines: the file is read while the workers write to it.
    for index, pid in re.findall(r"^worker ([01]) ready (\d+)\n", out.read_text(), re.MULTILINE):
        pids[int(index)].append(int(pid))
    return pids


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def worker_1_killed(tmp_path: Path, trouble: str) -> Iterator[tuple[Path, Path, dict[int, list[int]]]]:
    """The stub supervisor serving, then its worker 1 killed with `trouble` waiting for its restart:
    the supervisor's stdout and stderr files, and the workers' pids before the kill. Its process
    group is killed after, whatever it left running."""
    out, err, marker = tmp_path / "out", tmp_path / "err", tmp_path / "trouble"
    args = [str(tmp_path / "store"), str(free_port()), str(marker), trouble]
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        supervisor = subprocess.Popen(
            [sys.executable, "-c", SUPERVISE_STUBS, *args],
            env=clean_env(),
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )
    try:
        wait_until(lambda: all(ready_pids(out).values()), "both stub workers ready", timeout_s=60)
        first = ready_pids(out)
        marker.touch()
        os.kill(first[1][0], signal.SIGKILL)
        yield out, err, first
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(supervisor.pid, signal.SIGKILL)
        supervisor.wait(30)


def test_a_worker_whose_start_fails_before_it_serves_leaves_the_other_workers_serving(tmp_path: Path) -> None:
    """The forked process failed (an exception, as MemoryError under memory pressure) before it was
    a worker: it went on as a copy of the supervisor, whose stop sent SIGTERM to every other worker."""
    with worker_1_killed(tmp_path, "fail") as (out, err, first):

        def told() -> bool:
            return "worker 1 could not start" in err.read_text() or len(ready_pids(out)[0]) > 1

        wait_until(told, "the failed restart of worker 1, or worker 0 restarted", 60)
        assert ready_pids(out)[0] == first[0], err.read_text()  # worker 0 was never stopped
        assert alive(first[0][0])
        assert "MemoryError" in err.read_text()  # the forked process said why


def test_a_stop_that_reaches_a_worker_as_it_starts_stops_it(tmp_path: Path) -> None:
    """The supervisor's SIGTERM, sent to a worker it had just forked (a stop right after a restart,
    or Ctrl-C to the process group), found the supervisor's own handler in the new process, which
    only noted it: the worker started and served on, until it was killed 130 s into the stop."""
    with worker_1_killed(tmp_path, "term") as (out, err, first):

        def told() -> bool:
            return "worker 1 exited with code -15" in err.read_text() or len(ready_pids(out)[1]) > 1

        wait_until(told, "the restarted worker 1 stopped, or serving", 60)
        assert ready_pids(out)[1] == first[1], err.read_text()  # it never served


def test_new_key_again_on_a_busy_port_leaves_the_running_master_key(tmp_path: Path) -> None:
    """`serve --new-key --workers 2` run again by mistake while the first serves: it stops at the
    busy port, and the master key the first printed stays the one in the store (which a
    restarted worker and the next start load); the second had replaced it before it found the
    port taken, with a key it never printed."""
    config = tmp_path / "faregate.yaml"
    config.write_text(f"server: {{port: {free_port()}}}\nstore: {{path: {str(tmp_path / 'store')!r}}}\n")
    command = [
        sys.executable,
        "-m",
        "faregate.cli.main",
        "serve",
        "--new-key",
        "--workers",
        "2",
        "-c",
        str(config),
    ]
    env = clean_env()
    del env["FAREGATE_MASTER_KEY"]
    log = tmp_path / "first.log"
    with open(log, "wb") as out:
        first = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until(
                lambda: "print(reply" in log.read_text() or first.poll() is not None, "the first serves", 60
            )
            master = re.search(r"Master key \(shown once[^)]*\): (fg-master-\S+)", log.read_text())
            assert master, log.read_text()
            second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
            assert second.returncode == 2 and "the port is in use" in second.stderr, second.stderr
            stored = (tmp_path / "store" / "master-key.sha256").read_text().strip()
            assert stored == hashlib.sha256(master.group(1).encode()).hexdigest()
        finally:
            first.send_signal(signal.SIGTERM)
            assert first.wait(90) == 0
