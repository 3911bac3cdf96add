"""The process as users run it: `faregate serve --new-key`, and a clean SIGTERM."""

from __future__ import annotations

import hashlib
import re
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path

import httpx
import openai
import pytest

from harness import SimProcess, clean_env, create_key, free_port, run_gateway, wait_healthy, wait_until

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
