"""The process as users run it: `faregate serve --new-key`, and a clean SIGTERM."""

from __future__ import annotations

import hashlib
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest

from harness import (
    MASTER_KEY,
    SimProcess,
    clean_env,
    create_key,
    free_port,
    run_gateway,
    wait_healthy,
    wait_until,
)
from servers import launch_gateway

pytestmark = pytest.mark.e2e


def test_serve_starts_the_simulator_and_prints_a_working_key(tmp_path: Path) -> None:
    """`make run`: an API key, a master key (kept only as its hash), the dashboard's URL, and a
    simulator on a port of its own choosing."""
    port = free_port()
    config = tmp_path / "faregate.yaml"
    config.write_text(f"server: {{port: {port}}}\nstore: {{path: {str(tmp_path / 'store')!r}}}\n")
    env = clean_env()
    del env["FAREGATE_MASTER_KEY"]
    log = tmp_path / "out.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "faregate.cli.main", "serve", "--new-key", "-c", str(config)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_healthy(f"http://127.0.0.1:{port}/health", process)
            wait_until(lambda: "print(reply" in log.read_text(), "the quickstart text is printed")
            text = log.read_text()
            assert f"http://127.0.0.1:{port}/v1" in text and "simulated providers" in text
            assert f"Dashboard: http://127.0.0.1:{port}/dashboard" in text
            assert "Metering is off" in text and "accounts: {enabled: true}" in text
            assert "from openai import OpenAI" in text
            key = re.search(r"API key \(shown once[^)]*\): (fg-\S+)", text)
            master = re.search(r"Master key \(shown once[^)]*\): (fg-master-\S+)", text)
            sim = re.search(r"simulated providers at http://127\.0\.0\.1:(\d+)/v1", text)
            assert key and master and sim, text
            client = openai.OpenAI(
                base_url=f"http://127.0.0.1:{port}/v1", api_key=key.group(1), max_retries=0
            )
            reply = client.chat.completions.create(
                model="deepseek-v4-flash", messages=[{"role": "user", "content": "hi"}]
            )
            assert reply.choices[0].message.content and reply.usage.model_extra["cost"] > 0  # type: ignore[union-attr]
            summary = f"http://127.0.0.1:{port}/admin/dashboard/summary"
            admin = httpx.get(summary, headers={"Authorization": f"Bearer {master.group(1)}"})
            assert admin.status_code == 200 and admin.json()["requests"] >= 0
            wrong = httpx.get(summary, headers={"Authorization": f"Bearer {key.group(1)}"})
            assert wrong.status_code == 403
            # Stored like API keys: its SHA-256, never the key itself.
            stored = (tmp_path / "store" / "master-key.sha256").read_text().strip()
            assert stored == hashlib.sha256(master.group(1).encode()).hexdigest()
            assert master.group(1) not in (tmp_path / "store" / "faregate.db").read_bytes().decode(
                errors="replace"
            )
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(15) == 0
    # The simulator it started is gone with it.
    with pytest.raises(OSError):
        import urllib.request

        urllib.request.urlopen(f"http://127.0.0.1:{sim.group(1)}/health", timeout=1)


def test_a_busy_port_is_one_clear_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "faregate.yaml"
        config.write_text(f"store: {{path: {str(tmp_path / 'store')!r}}}\n")
        for command in (["serve", "-c", str(config), "--port", str(port)], ["sim", "--port", str(port)]):
            result = subprocess.run(
                [sys.executable, "-m", "faregate.cli.main", *command],
                env=clean_env(),
                capture_output=True,
                text=True,
                timeout=60,
            )
            assert result.returncode == 2, result.stderr
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
            assert lines[0].startswith("faregate: ") and f"127.0.0.1:{port}" in lines[0]
            assert "the port is in use" in lines[0]


def test_sigterm_flushes_every_pending_record(sim: SimProcess, tmp_path: Path) -> None:
    # A flush interval far longer than the test: only the shutdown flush can write these rows.
    with run_gateway(tmp_path, sim, "records: {flush_interval_s: 600, batch_size: 100000}\n") as gateway:
        key = create_key(gateway.store_path)
        client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0)
        ids = []
        for i in range(30):
            raw = client.chat.completions.with_raw_response.create(
                model="qwen3-8b", messages=[{"role": "user", "content": f"q{i}"}]
            )
            ids.append(raw.headers["x-faregate-request-id"])
        db_path = gateway.store_path / "faregate.db"
        with sqlite3.connect(db_path) as db:
            assert db.execute("SELECT COUNT(*) FROM request_records").fetchone()[0] == 0
        gateway.process.send_signal(signal.SIGTERM)
        assert gateway.process.wait(15) == 0
    with sqlite3.connect(db_path) as db:
        found = {r[0] for r in db.execute("SELECT request_id FROM request_records")}
    assert set(ids) <= found


def test_bad_config_fails_at_start_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "faregate.yaml"
    config.write_text("server: {port: 4000, colour: blue}\n")
    result = subprocess.run(
        [sys.executable, "-m", "faregate.cli.main", "serve", "-c", str(config)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "colour" in result.stderr and "server" in result.stderr


def stream_begun(
    client: openai.OpenAI, tokens: int, tokens_per_s: int
) -> tuple[threading.Thread, list[str], list[Exception]]:
    """A chat stream from the simulator of `tokens` words at `tokens_per_s`, read in a thread and
    begun (two chunks in, or the thread done) on return: the thread, the chunks so far and the
    exception the stream ended with, if any (the caller's assertions say what it was)."""
    chunks: list[str] = []
    failure: list[Exception] = []

    def read() -> None:
        try:
            stream = client.chat.completions.create(
                model="deepseek-v4-flash",
                messages=[{"role": "user", "content": "hi"}],
                stream=True,
                extra_body={"sim": {"answer": {"lorem": tokens}, "tokens_per_s": tokens_per_s}},
            )
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    chunks.append(chunk.choices[0].delta.content)
        except Exception as exc:
            failure.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    wait_until(lambda: len(chunks) >= 2 or not reader.is_alive(), "the stream began", timeout_s=30)
    return reader, chunks, failure


@pytest.mark.parametrize("workers", [1, 2])
def test_ctrl_c_lets_a_stream_in_flight_finish_on_the_simulator(tmp_path: Path, workers: int) -> None:
    """Ctrl-C in the terminal of `make run` sends SIGINT to its whole process group. The simulator
    the gateway started must not stop with it: the gateway lets the stream in flight finish, and
    then stops the simulator itself."""
    port = free_port()
    config = tmp_path / "faregate.yaml"
    config.write_text(
        f"server: {{port: {port}, workers: {workers}}}\nstore: {{path: {str(tmp_path / 'store')!r}}}\n"
    )
    log = tmp_path / "out.log"
    with open(log, "wb") as out:
        # Its own session: the SIGINT below reaches this gateway's process group, and only it.
        process = subprocess.Popen(
            [sys.executable, "-m", "faregate.cli.main", "serve", "--new-key", "-c", str(config)],
            env=clean_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_until(
                lambda: "print(reply" in log.read_text() or process.poll() is not None,
                "the gateway is ready",
                timeout_s=60,
            )
            key = re.search(r"API key \(shown once[^)]*\): (fg-\S+)", log.read_text())
            assert key, log.read_text()
            client = openai.OpenAI(
                base_url=f"http://127.0.0.1:{port}/v1", api_key=key.group(1), max_retries=0, timeout=60
            )
            # 20 tokens, 5 a second: still streaming when the signal comes.
            reader, chunks, failure = stream_begun(client, tokens=20, tokens_per_s=5)
            os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C does
            reader.join(60)
            assert process.wait(90) == 0
        finally:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    assert failure == [] and len("".join(chunks).split()) == 20, (failure, chunks)
    with sqlite3.connect(tmp_path / "store" / "faregate.db") as db:
        assert db.execute("SELECT status, usage_estimated FROM request_records").fetchall() == [(200, 0)]


@pytest.mark.parametrize("lean_http", [True, False])
def test_a_stream_longer_than_the_drain_is_cut_settled_and_recorded(
    sim: SimProcess, tmp_path: Path, lean_http: bool
) -> None:
    """SIGTERM while a stream runs past `server.drain_timeout_s`: the gateway cuts it at the
    deadline and exits, and the stream is still recorded once, billed for what it relayed, and its
    reservation released. On either server (aiohttp alone lost the record of a cut stream)."""
    server = f"lean_http: {str(lean_http).lower()}\nrequest_timeout_s: 600\ndrain_timeout_s: 1"
    with launch_gateway(tmp_path / "gw", sim, server=server, extra="accounts: {enabled: true}\n") as gateway:
        headers = {"Authorization": f"Bearer {MASTER_KEY}"}
        base = f"http://127.0.0.1:{gateway.port}"
        made = httpx.post(f"{base}/admin/keys", headers=headers, json={"name": "drain", "credits_usd": "1"})
        assert made.status_code == 201, made.text
        key_id, key = made.json()["id"], made.json()["api_key"]
        client = openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=120)
        # 2,000 tokens, 10 a second: far longer than the drain.
        reader, chunks, failure = stream_begun(client, tokens=2000, tokens_per_s=10)
        gateway.process.send_signal(signal.SIGTERM)
        # Far less than the stream's 200 s: the drain's deadline ended it.
        assert gateway.process.wait(90) == 0
        reader.join(30)
        with sqlite3.connect(gateway.store_path / "faregate.db") as db:
            records = db.execute("SELECT status, cost_usd, usage_estimated FROM request_records").fetchall()
            holds = db.execute("SELECT COUNT(*) FROM holds").fetchone()[0]
            settled = db.execute(
                "SELECT cost_nano FROM ledger WHERE key_id = ? AND kind = 'settlement'", (key_id,)
            ).fetchall()
    # The client saw the stream end without its [DONE]: an error, never a clean answer.
    assert len(failure) == 1 and len(chunks) >= 2, (failure, chunks)
    assert len(records) == 1, records
    status, cost, estimated = records[0]
    assert status >= 400 and Decimal(cost) > 0 and estimated == 1, records
    # Billed once, for what it relayed, and nothing left reserved.
    assert settled == [(int(Decimal(cost) * 10**9),)]
    assert holds == 0


def test_on_an_ipv6_address_the_printed_urls_work(tmp_path: Path) -> None:
    """`serve --new-key --host ::1`: the base URL, the dashboard's and the snippet's are URLs
    (the address in brackets), and the snippet's answers."""
    port = free_port()
    config = tmp_path / "faregate.yaml"
    config.write_text(f"store: {{path: {str(tmp_path / 'store')!r}}}\n")
    log = tmp_path / "out.log"
    command = ["serve", "--new-key", "--host", "::1", "--port", str(port), "-c", str(config)]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "faregate.cli.main", *command],
            env=clean_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            wait_until(
                lambda: "print(reply" in log.read_text() or process.poll() is not None,
                "the quickstart text is printed",
                timeout_s=60,
            )
            text = log.read_text()
            assert f"Faregate is running at http://[::1]:{port}/v1 " in text, text
            assert f"Dashboard: http://[::1]:{port}/dashboard " in text, text
            snippet = re.search(r'OpenAI\(base_url="([^"]+)", api_key="([^"]+)"\)', text)
            assert snippet, text
            client = openai.OpenAI(base_url=snippet.group(1), api_key=snippet.group(2), max_retries=0)
            reply = client.chat.completions.create(
                model="deepseek-v4-flash", messages=[{"role": "user", "content": "hi"}]
            )
            assert reply.choices[0].message.content
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0


def test_a_simulator_that_cannot_start_stops_the_gateway_with_one_line(tmp_path: Path) -> None:
    """A bad `sim.script`: the simulator exits at once, and so does the gateway, with one line
    (it had opened its stores already, and never closed them: the process never ended)."""
    (tmp_path / "sim.yaml").write_text("defaults: {colour: blue}\n")
    config = tmp_path / "faregate.yaml"
    config.write_text(
        f"server: {{port: {free_port()}, workers: 1}}\nstore: {{path: {str(tmp_path / 'store')!r}}}\n"
        "sim: {script: sim.yaml}\n"
    )
    result = subprocess.run(
        [sys.executable, "-m", "faregate.cli.main", "serve", "-c", str(config)],
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    assert "faregate: the provider simulator did not start" in result.stderr, result.stderr


def test_with_metering_on_the_printed_top_up_makes_the_snippet_work(tmp_path: Path) -> None:
    """`make run` says to put `accounts: {enabled: true}` in faregate.yaml and restart. Done, the
    new key has no credits (`new_key_credits_usd` is 0 by default), so the snippet printed below
    it is refused with 402: the line says so and prints the command that tops this key up, by id
    (after a few `make run`s, several keys are named quickstart). Run as printed, the snippet works."""
    port = free_port()
    config = tmp_path / "faregate.yaml"
    store = f"store: {{path: {str(tmp_path / 'store')!r}}}"
    config.write_text(f"server: {{port: {port}}}\n{store}\naccounts: {{enabled: true}}\n")
    log = tmp_path / "out.log"
    env = clean_env()
    del env["FAREGATE_MASTER_KEY"]
    serve = [sys.executable, "-m", "faregate.cli.main", "serve", "--new-key", "-c", str(config)]
    with open(log, "wb") as out:
        process = subprocess.Popen(serve, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_until(
                lambda: "print(reply" in log.read_text() or process.poll() is not None,
                "the quickstart text is printed",
                timeout_s=60,
            )
            text = log.read_text()
            key = re.search(r"API key \(shown once, id (key_\w+)\): (fg-\S+)", text)
            top_up = re.search(r"`(faregate credits add [^`]+)`", text)
            assert key and top_up, text
            assert "402" in text and key.group(1) in top_up.group(1), text
            client = openai.OpenAI(
                base_url=f"http://127.0.0.1:{port}/v1", api_key=key.group(2), max_retries=0
            )
            hello = {"model": "deepseek-v4-flash", "messages": [{"role": "user", "content": "Say hello"}]}
            with pytest.raises(openai.APIStatusError) as refused:
                client.chat.completions.create(**hello)  # type: ignore[call-overload]
            assert refused.value.status_code == 402
            cli = [sys.executable, "-m", "faregate.cli.main", *top_up.group(1).split()[1:], "-c", str(config)]
            added = subprocess.run(cli, env=env, capture_output=True, text=True, timeout=60)
            assert added.returncode == 0, added.stderr
            reply = client.chat.completions.create(**hello)  # type: ignore[call-overload]
            assert reply.choices[0].message.content == "Say hello"
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(30) == 0
