"""The process as users run it: `faregate serve --new-key`, and a clean SIGTERM."""

from __future__ import annotations

import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import openai
import pytest

from harness import SimProcess, clean_env, create_key, free_port, run_gateway, wait_healthy

pytestmark = pytest.mark.e2e


def test_serve_starts_the_simulator_and_prints_a_working_key(tmp_path: Path) -> None:
    port, sim_port = free_port(), free_port()
    config = tmp_path / "faregate.yaml"
    config.write_text(
        f"server: {{port: {port}}}\nstore: {{path: {str(tmp_path / 'store')!r}}}\nsim: {{port: {sim_port}}}\n"
    )
    log = tmp_path / "out.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "faregate.cli.main", "serve", "--new-key", "-c", str(config)],
            env=clean_env(),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        try:
            started = time.monotonic()
            wait_healthy(f"http://127.0.0.1:{port}/health", process)
            deadline = time.monotonic() + 10
            while "fg-" not in log.read_text() and time.monotonic() < deadline:
                time.sleep(0.05)
            text = log.read_text()
            assert f"http://127.0.0.1:{port}/v1" in text and "simulated providers" in text
            assert "from openai import OpenAI" in text
            key = re.search(r"API key \(shown once[^)]*\): (fg-\S+)", text)
            assert key, text
            client = openai.OpenAI(
                base_url=f"http://127.0.0.1:{port}/v1", api_key=key.group(1), max_retries=0
            )
            reply = client.chat.completions.create(
                model="deepseek-v4-flash", messages=[{"role": "user", "content": "hi"}]
            )
            assert reply.choices[0].message.content and reply.usage.model_extra["cost"] > 0  # type: ignore[union-attr]
            assert time.monotonic() - started < 30
        finally:
            process.send_signal(signal.SIGTERM)
            assert process.wait(15) == 0
    # The simulator it started is gone with it.
    with pytest.raises(OSError):
        import urllib.request

        urllib.request.urlopen(f"http://127.0.0.1:{sim_port}/health", timeout=1)


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
