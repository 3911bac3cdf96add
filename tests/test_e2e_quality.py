"""Quality targets live, end to end: the openai SDK, the gateway, the simulator scripting a cheap
model that agrees with the strong one (good) or not (bad).

Shown: a calibrated router route sends everything to the strong model until verified evidence
certifies a cheap share; verification runs after the response (its row starts after the
request's record ends) and is written with its real cost; good cheap answers move the strong
share down, bad ones do not; the daily cap stops verification; a cascade's escalations are free
labels; the calibration survives a restart.
"""

from __future__ import annotations

import csv
import json
import sqlite3
import sys
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

from harness import MASTER_KEY, GatewayProcess, create_key, run_gateway, run_sim, wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
GSM8K = ROOT / "data" / "routellm" / "gsm8k_responses.csv"
REQUESTS = 90

SIM_SCRIPT = """
seed: 1
defaults: {ttft_ms: 2, tokens_per_s: 0, faults: {}}
models:
  strong-m: {answer: {fixed: "Adding it up, the answer is 42."}}
  weak-good: {answer: {fixed: "So the answer is 42."}}
  weak-bad: {answer: {fixed: "So the answer is 7."}}
  judge-m: {answer: {fixed: "Both reach the same result. Score: 9/10"}}
"""

QUALITY = (
    "{target: 0.9, confidence: 0.8, verification: "
    "{share: 1.0, frontier: 0, rest_ratio: 1, comparator: final_answer, daily_usd_cap: '%s'}}"
)

CONFIG = f"""
baseline_model: strong-m
models:
  strong-m: {{input: 10, output: 30}}
  weak-good: {{input: 0.6, output: 0.6}}
  weak-bad: {{input: 0.6, output: 0.6}}
  judge-m: {{input: 100, output: 100}}
routes:
  good:
    router: {{file: {ROOT}/routers/router-gsm8k.json, strong: strong-m, weak: weak-good}}
    quality: {QUALITY % "5"}
  bad:
    router: {{file: {ROOT}/routers/router-gsm8k.json, strong: strong-m, weak: weak-bad}}
    quality: {QUALITY % "5"}
  capped:
    router: {{file: {ROOT}/routers/router-gsm8k.json, strong: strong-m, weak: weak-good}}
    quality: {QUALITY % "0.00005"}
  judged:
    router: {{file: {ROOT}/routers/router-gsm8k.json, strong: strong-m, weak: weak-bad}}
    quality: {{target: 0.9, verification: {{share: 1.0, frontier: 0, rest_ratio: 1, comparator: llm_judge,
      judge_model: judge-m}}}}
  embedded:
    router: {{file: {ROOT}/routers/router-gsm8k.json, strong: strong-m, weak: weak-good}}
    quality: {{target: 0.9, verification: {{share: 1.0, frontier: 0, rest_ratio: 1, comparator: embedding}}}}
  checked:
    cascade:
      steps: [weak-good, strong-m]
      judge: {{checks: [empty], learned: {{file: {ROOT}/routers/judge-gsm8k.json}}}}
    quality: {QUALITY % "5"}
"""


def questions(n: int) -> list[str]:
    csv.field_size_limit(sys.maxsize)
    with GSM8K.open(encoding="utf-8", newline="") as handle:
        return [row["prompt"].strip() for _, row in zip(range(n), csv.DictReader(handle), strict=False)]


def admin(gateway: GatewayProcess, path: str) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{gateway.port}{path}", headers={"Authorization": f"Bearer {MASTER_KEY}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
    return json.loads(body) if path.startswith("/admin") else body.decode()


def figures(gateway: GatewayProcess) -> dict[str, dict[str, Any]]:
    return {row["route"]: row for row in admin(gateway, "/admin/quality")["routes"]}


def settled(gateway: GatewayProcess) -> None:
    wait_until(lambda: admin(gateway, "/admin/quality")["pending"] == 0, "verifications finish", 60)


def ask(client: openai.OpenAI, route: str, prompts: list[str]) -> list[str]:
    ids = []
    for prompt in prompts:
        raw = client.chat.completions.with_raw_response.create(
            model=route, messages=[{"role": "user", "content": prompt}], max_tokens=30
        )
        ids.append(raw.headers["x-faregate-request-id"])
    return ids


def rows(gateway: GatewayProcess, sql: str, *params: object) -> list[sqlite3.Row]:
    with sqlite3.connect(gateway.store_path / "faregate.db") as db:
        db.row_factory = sqlite3.Row
        return list(db.execute(sql, params))


def test_the_quality_loop_end_to_end(tmp_path: Path) -> None:
    prompts = questions(REQUESTS)
    with run_sim(tmp_path, SIM_SCRIPT) as sim:
        with run_gateway(tmp_path / "gateway", sim, CONFIG) as gateway:
            client = openai.OpenAI(
                base_url=gateway.base_url, api_key=create_key(gateway.store_path), max_retries=0, timeout=60
            )
            # Before any evidence: every request takes the strong path.
            first = client.chat.completions.with_raw_response.create(
                model="good", messages=[{"role": "user", "content": prompts[0]}], max_tokens=30
            )
            assert first.headers["x-faregate-model"] == "strong-m"
            good_ids = ask(client, "good", prompts[1:])
            ask(client, "bad", prompts)
            ask(client, "capped", prompts[:20])
            ask(client, "checked", prompts[:10])
            ask(client, "judged", prompts[:8])
            ask(client, "embedded", prompts[:8])
            # Streams too: verified once the stream has ended.
            streamed = []
            for prompt in prompts[8:12]:
                with client.chat.completions.with_streaming_response.create(
                    model="embedded", messages=[{"role": "user", "content": prompt}], stream=True
                ) as response:
                    streamed.append(response.headers["x-faregate-request-id"])
                    assert "42" in "".join(
                        c.choices[0].delta.content or "" for c in response.parse() if c.choices
                    )
            settled(gateway)
            seen = figures(gateway)
            wait_until(
                lambda: len(rows(gateway, "SELECT 1 FROM request_records")) >= 2 * REQUESTS + 50,
                "records flushed",
            )

            # Good cheap answers moved the strong share down; bad ones held it near 1: a cheap model
            # that is always wrong may take at most 1 - target of the traffic (0.1 here).
            assert seen["good"]["strong_share"] <= 0.8, seen["good"]
            assert seen["bad"]["strong_share"] > 0.9 and seen["bad"]["losses"] > 50
            assert seen["good"]["verifications"] >= 80 and seen["good"]["losses"] == 0
            served = rows(
                gateway,
                "SELECT model_used FROM request_records WHERE route = 'good'"
                " ORDER BY created_at DESC LIMIT 5",
            )
            assert any(r["model_used"] == "weak-good" for r in served)

            # Every verification began after its request's record ended (the response was out).
            verified = rows(
                gateway,
                "SELECT v.created_at AS began, r.created_at AS at, r.latency_ms AS ms,"
                " v.cost_nanousd AS cost, v.label_kind AS label, v.reference_model AS reference"
                " FROM verifications v"
                " JOIN request_records r ON r.request_id = v.request_id WHERE v.scope = 'good'",
            )
            assert len(verified) == seen["good"]["verifications"]
            for row in verified:
                assert row["began"] >= row["at"] + row["ms"] / 1000 - 1e-3
                assert row["cost"] > 0
            # A shadow call to the strong model is paid at its price; to the weak one, at the weak price.
            kinds = {row["label"]: row for row in verified}
            assert kinds["cheap"]["reference"] == "weak-good"
            assert "paid" in kinds and kinds["paid"]["reference"] == "strong-m"
            assert kinds["paid"]["cost"] > kinds["cheap"]["cost"]
            total = sum(row["cost"] for row in verified)
            assert Decimal(seen["good"]["verification_cost_usd"]) == Decimal(total) / Decimal(10**9)
            # A shadow call is no request of the user's: it leaves no request record.
            recorded = {r["request_id"] for r in rows(gateway, "SELECT request_id FROM request_records")}
            assert set(good_ids) <= recorded and len(recorded) == 2 * REQUESTS + 50

            # The cap stopped verification for the day.
            capped = seen["capped"]
            assert capped["cap_reached"] and capped["skipped_for_cap"] >= 1
            assert capped["verifications"] < 20
            # A cascade's escalations are free labels: both answers were there already.
            checked = rows(
                gateway, "SELECT label_kind, cost_nanousd FROM verifications WHERE scope = 'checked'"
            )
            assert checked and all(r["label_kind"] == "free" and r["cost_nanousd"] == 0 for r in checked)

            # An LLM judge asked through the gateway: its verdict counts (the bad model's "7" passes
            # this lenient judge), and its call is verification cost.
            judged = rows(gateway, "SELECT outcome, cost_nanousd FROM verifications WHERE scope = 'judged'")
            assert judged and all(r["outcome"] == "acceptable" for r in judged)
            assert min(r["cost_nanousd"] for r in judged) > max(row["cost"] for row in verified)
            # Answer embeddings: identical answers are equivalent.
            assert seen["embedded"]["verifications"] >= 10 and seen["embedded"]["losses"] == 0
            marks = ",".join("?" * len(streamed))
            after_stream = rows(
                gateway,
                "SELECT v.created_at AS began, r.created_at AS at, r.latency_ms AS ms FROM verifications v"
                f" JOIN request_records r ON r.request_id = v.request_id WHERE v.request_id IN ({marks})",
                *streamed,
            )
            assert after_stream and all(r["began"] >= r["at"] + r["ms"] / 1000 - 1e-3 for r in after_stream)

            metrics = admin(gateway, "/metrics")
            assert 'faregate_quality_target{route="good"} 0.9' in metrics
            assert 'faregate_verification_cap_reached{route="capped"} 1.0' in metrics
            assert 'faregate_verifications_total{kind="paid",route="good"}' in metrics
        # A restart keeps every route's calibration.
        with run_gateway(tmp_path / "gateway", sim, CONFIG) as again:
            after = figures(again)
            for route in ("good", "bad", "capped"):
                assert after[route]["strong_share"] == seen[route]["strong_share"]
                assert after[route]["verifications"] == seen[route]["verifications"]
