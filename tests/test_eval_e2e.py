"""`faregate eval` end to end through the real gateway and simulator, and `faregate cost --from-records`.

The simulator echoes the last user message, so every answer is known in advance: an item whose
`expected` is its own prompt passes exact match, the others fail.
"""

from __future__ import annotations

import asyncio
import csv
import json
import subprocess
import sys
import time
import urllib.request
import uuid
from decimal import Decimal
from pathlib import Path

import pytest
from typer.testing import CliRunner

from faregate.cli.main import app
from faregate.types import RequestRecord
from harness import GatewayProcess, SimProcess, clean_env, free_port

pytestmark = pytest.mark.e2e

MODELS = ["deepseek-v4-flash", "glm-4-plus"]


def _sim_requests(sim: SimProcess) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{sim.port}/sim/stats", timeout=5) as response:
        return int(json.loads(response.read())["requests"])


def _prompt_set(path: Path) -> None:
    run = uuid.uuid4().hex[:8]  # unique prompts: no cache hit from another test's traffic
    lines = []
    for i in range(6):
        prompt = f"eval item {i} of run {run}"
        expected = prompt if i < 4 else f"something else {i}"
        lines.append(json.dumps({"id": f"q{i}", "prompt": prompt, "expected": expected, "tags": ["t"]}))
    path.write_text("\n".join(lines) + "\n")


def _eval(prompts: Path, out: Path, gateway: GatewayProcess, api_key: str) -> str:
    args = ["eval", str(prompts), "--out", str(out), "--base-url", gateway.base_url, "--api-key", api_key]
    for model in MODELS:
        args += ["--model", model]
    # fault none: a clean answer every time, so the scores are exactly the echo's.
    args += [
        "--scorer",
        "exact",
        "--monthly-requests",
        "1000000",
        "--extra-body",
        '{"sim": {"fault": "none"}}',
    ]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    return result.output


def test_eval_end_to_end_and_resume(
    gateway: GatewayProcess, api_key: str, sim: SimProcess, tmp_path: Path
) -> None:
    prompts, out = tmp_path / "prompts.jsonl", tmp_path / "out"
    _prompt_set(prompts)
    before = _sim_requests(sim)
    output = _eval(prompts, out, gateway, api_key)
    assert _sim_requests(sim) - before >= 12
    assert "faregate eval" in output and "66.7% [30.0%, 90.3%]" in output
    # Both models echo: they agree on every item, and the report must not call either better.
    assert "NOT significant" in output

    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 12 and all(a["error"] is None for a in answers)
    summary = json.loads((out / "summary.json").read_text())
    for row in summary["models"]:
        mine = [a for a in answers if a["model"] == row["model"]]
        total = sum((Decimal(a["cost_usd"]) for a in mine), Decimal(0))
        assert total > 0
        assert (row["answered"], row["errors"]) == (6, 0)
        assert row["quality"]["estimate"] == 4 / 6
        assert Decimal(row["total_cost_usd"]) == total
        assert Decimal(row["cost_per_1k_requests_usd"]) == total * 1000 / 6
        assert Decimal(row["monthly_cost_usd"]) == total * 1_000_000 / 6
        assert row["mean_prompt_tokens"] == sum(a["prompt_tokens"] for a in mine) / 6
    (comparison,) = summary["comparisons"]
    assert comparison["tests"][0]["p_value"] == 1.0 and not comparison["significant"]

    with (out / "results.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 12
    assert {(r["item_id"], float(r["score"])) for r in rows if r["model"] == MODELS[0]} == {
        ("q0", 1.0),
        ("q1", 1.0),
        ("q2", 1.0),
        ("q3", 1.0),
        ("q4", 0.0),
        ("q5", 0.0),
    }
    assert (out / "cost_quality.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # A re-run answers from answers.jsonl: not one request reaches the model.
    before = _sim_requests(sim)
    again = _eval(prompts, out, gateway, api_key)
    assert "resuming: 12 answers already" in again
    assert _sim_requests(sim) == before
    assert json.loads((out / "summary.json").read_text()) == summary


def test_cost_from_records(tmp_path: Path) -> None:
    from faregate.catalog import build_catalog
    from faregate.config import load_settings
    from faregate.evals.costs.projection import display_usd
    from faregate.store.sqlite.store import SQLiteStore

    store_dir = tmp_path / "store"
    config = tmp_path / "faregate.yaml"
    config.write_text(f"store: {{path: {str(store_dir)!r}}}\n")
    now = time.time()

    def record(i: int, age_s: float, prompt: int, completion: int, cost: str, cache: str) -> RequestRecord:
        return RequestRecord(
            request_id=f"r{i}",
            created_at=now - age_s,
            key_id=None,
            model_requested="deepseek-v4-flash",
            model_used="deepseek-v4-flash",
            provider="sim",
            status=200,
            stream=False,
            prompt_tokens=prompt,
            completion_tokens=completion,
            cost_usd=Decimal(cost),
            cache_status=cache,
        )

    async def fill() -> None:
        store = await SQLiteStore.open(store_dir)
        try:
            await store.insert_records(
                [
                    record(1, 3600, 1000, 500, "0.00123", "miss"),
                    record(2, 7200, 2000, 100, "0.000456", "bypass"),
                    record(3, 60, 1000, 500, "0", "hit"),  # free, and free on any model
                    record(4, 30 * 86400, 9999, 9999, "9.99", "miss"),  # older than --since
                ]
            )
        finally:
            await store.close()

    asyncio.run(fill())
    gpt4o = build_catalog(load_settings(config)).get("gpt-4o")
    assert gpt4o is not None
    # 3,000 in + 600 out billed tokens at gpt-4o's list price, exactly.
    on_gpt4o = (3000 * gpt4o.list_price.input + 600 * gpt4o.list_price.output) / 1_000_000
    result = CliRunner().invoke(
        app,
        ["cost", "--from-records", "--since", "7d", "--model", "gpt-4o", "-c", str(config)],
        env={"COLUMNS": "250"},
    )
    assert result.exit_code == 0, result.output
    assert "$0.001686" in result.output  # 0.00123 + 0.000456 + 0: what was paid
    assert display_usd(on_gpt4o) in result.output
    assert "9.99" not in result.output
    total = next(line for line in result.output.splitlines() if "total" in line)
    assert "3,000" in total and "600" in total


def test_eval_asks_the_configured_gateway_by_default(
    gateway: GatewayProcess, api_key: str, tmp_path: Path
) -> None:
    prompts, out = tmp_path / "prompts.jsonl", tmp_path / "out"
    _prompt_set(prompts)
    config = tmp_path / "faregate.yaml"
    config.write_text(f"server: {{port: {gateway.port}}}\n")
    args = ["eval", str(prompts), "-m", MODELS[0], "--out", str(out), "--api-key", api_key, "-c", str(config)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200", "FAREGATE_BASE_URL": None})
    assert result.exit_code == 0, result.output
    assert f"asking {gateway.base_url}: 6 answers" in result.output and "66.7%" in result.output


def test_eval_refuses_to_print_a_table_when_every_request_failed(tmp_path: Path) -> None:
    prompts = tmp_path / "prompts.jsonl"
    _prompt_set(prompts)
    nobody = f"http://127.0.0.1:{free_port()}/v1"
    result = subprocess.run(
        [sys.executable, "-m", "faregate.cli.main", "eval", str(prompts), "-m", MODELS[0],
         "--out", str(tmp_path / "out"), "--base-url", nobody, "--api-key", "fg-nobody"],
        capture_output=True, text=True, timeout=120, env=clean_env(),
    )  # fmt: skip
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"faregate: every request failed (6 of 6) at {nobody}"), line
    assert "%" not in result.stdout and "│" not in result.stdout  # no table of zeros
    assert "Is the gateway running there" in line


@pytest.mark.parametrize(
    ("model", "key", "said", "not_said"),
    [
        ("no-such-model", None, "NotFoundError", ("Is the gateway running", "API key")),
        (MODELS[0], "fg-not-a-key", "AuthenticationError", ("Is the gateway running",)),
    ],
    ids=["unknown model", "wrong key"],
)
def test_when_every_request_failed_the_hint_fits_the_failure(
    gateway: GatewayProcess,
    api_key: str,
    tmp_path: Path,
    model: str,
    key: str | None,
    said: str,
    not_said: tuple[str, ...],
) -> None:
    # The gateway answered (404 for the model, 401 for the key), yet the line asked whether it was
    # running there at all, and about the key when the key was fine.
    prompts = tmp_path / "prompts.jsonl"
    _prompt_set(prompts)
    result = subprocess.run(
        [sys.executable, "-m", "faregate.cli.main", "eval", str(prompts), "-m", model,
         "--out", str(tmp_path / "out"), "--base-url", gateway.base_url, "--api-key", key or api_key],
        capture_output=True, text=True, timeout=120, env=clean_env(),
    )  # fmt: skip
    assert result.returncode == 2, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("faregate: every request failed (6 of 6)") and said in line, line
    for phrase in not_said:
        assert phrase not in line, line
