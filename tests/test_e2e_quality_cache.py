"""The semantic cache with a calibrated acceptance, end to end (cache.semantic.max_wrong_hit_rate):
no semantic hit until verified lookups certify a threshold; unserved candidates are labelled for
free by the fresh answer; served hits are verified by a fresh call after the response."""

from __future__ import annotations

import json
import sqlite3
import urllib.request
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

from harness import MASTER_KEY, GatewayProcess, cache_written, create_key, run_gateway, run_sim, wait_until

pytestmark = pytest.mark.e2e

COUNTRIES = (
    "France Germany Spain Italy Portugal Norway Sweden Finland Denmark Poland Austria Hungary Greece "
    "Turkey Egypt Kenya Nigeria Ghana Morocco Algeria Tunisia Ethiopia Brazil Argentina Chile Peru "
    "Colombia Venezuela Mexico Canada Cuba Jamaica Japan China India Pakistan Nepal Thailand Vietnam "
    "Indonesia Malaysia Philippines Australia Iceland Ireland Belgium Netherlands Switzerland Romania "
    "Bulgaria Serbia Croatia Ukraine Estonia Latvia Lithuania Mongolia Iran Iraq Jordan"
).split()

SIM = """
seed: 1
defaults: {ttft_ms: 2, tokens_per_s: 0, faults: {}}
models:
  atlas: {answer: {fixed: "It is the largest city and seat of government."}}
"""

CONFIG = """
models:
  atlas: {input: 2, output: 8}
cache:
  semantic:
    enabled: true
    max_wrong_hit_rate: 0.05
    confidence: 0.8
    verify_hits: 1.0
"""


def quality(gateway: GatewayProcess) -> dict[str, Any]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{gateway.port}/admin/quality", headers={"Authorization": f"Bearer {MASTER_KEY}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return dict(json.loads(response.read()))


def asker(gateway: GatewayProcess, **extra: Any) -> Callable[[str], str]:
    """Ask the gateway one question through the openai SDK; the answer's cache outcome."""
    client = openai.OpenAI(base_url=gateway.base_url, api_key=create_key(gateway.store_path), max_retries=0)

    def ask(text: str) -> str:
        raw = client.chat.completions.with_raw_response.create(
            model="atlas", messages=[{"role": "user", "content": text}], temperature=0, **extra
        )
        return str(raw.headers["x-faregate-cache"])

    return ask


def test_the_acceptance_threshold_is_earned_on_verified_lookups(tmp_path: Path) -> None:
    with run_sim(tmp_path, SIM) as sim, run_gateway(tmp_path / "gateway", sim, CONFIG) as gateway:
        ask = asker(gateway)

        assert quality(gateway)["cache"]["threshold"] is None
        for country in COUNTRIES:
            with cache_written(gateway, "semantic_cache_writes"):
                assert ask(f"What is the capital of {country}?") == "miss"
        outcomes = [ask(f"What's the capital city of {country}?") for country in COUNTRIES]
        wait_until(lambda: quality(gateway)["pending"] == 0, "verifications finish")
        cache = quality(gateway)["cache"]

        # Nothing served before the evidence; served once a threshold was certified.
        first_hit = outcomes.index("semantic-hit")
        assert first_hit >= 10 and set(outcomes[:first_hit]) == {"miss"}
        assert outcomes.count("semantic-hit") >= 10
        assert cache["threshold"] is not None and cache["wrong"] == 0
        assert cache["wrong_hit_bound"] <= 0.05
        assert cache["by_label"]["free"] >= first_hit and cache["by_label"]["paid"] == outcomes.count(
            "semantic-hit"
        )
        with sqlite3.connect(gateway.store_path / "faregate.db") as db:
            rows = db.execute(
                "SELECT label_kind, decision, outcome, cost_nanousd, rank FROM verifications"
                " WHERE scope = 'cache'"
            ).fetchall()
        paid = [r for r in rows if r[0] == "paid"]
        assert paid and all(r[1] == "served" and r[2] == "acceptable" and r[3] > 0 for r in paid)
        assert all(r[4] >= cache["threshold"] for r in paid)
        assert all(r[3] == 0 for r in rows if r[0] == "free")
    # The threshold survives a restart.
    with run_sim(tmp_path, SIM) as sim, run_gateway(tmp_path / "gateway", sim, CONFIG) as again:
        assert quality(again)["cache"]["threshold"] == cache["threshold"]


JUDGED_CONFIG = """
models:
  atlas: {input: 2, output: 8}
  judge-m: {input: 100, output: 100}
cache:
  semantic:
    enabled: true
    max_wrong_hit_rate: 0.05
    confidence: 0.8
    verify_hits: 1.0
    comparator: llm_judge
    judge_model: judge-m
"""


@pytest.mark.parametrize(
    ("verdict", "approves"),
    [("Both say the same. Score: 9/10", True), ("They answer different questions. Score: 1/10", False)],
)
def test_an_llm_judge_labels_the_cache_and_is_paid_for(tmp_path: Path, verdict: str, approves: bool) -> None:
    """With `comparator: llm_judge` the judge's verdict, not the answers' text, labels each lookup:
    the same fixed answer is certified by a judge that approves, and under one that does not every
    label is wrong and hits stay within the bound. Every label costs the judge's call, charged to the
    cache's verification cost."""
    sim = SIM + f'  judge-m: {{answer: {{fixed: "{verdict}"}}}}\n'
    with (
        run_sim(tmp_path, sim) as simulator,
        run_gateway(tmp_path / "gateway", simulator, JUDGED_CONFIG) as gateway,
    ):
        # A short allowance: the cap admits the fresh call and the judge at their worst case.
        ask = asker(gateway, max_tokens=32)

        for country in COUNTRIES:
            with cache_written(gateway, "semantic_cache_writes"):
                assert ask(f"What is the capital of {country}?") == "miss"
        outcomes = [ask(f"What's the capital city of {country}?") for country in COUNTRIES]

        def labels() -> int:
            cache = quality(gateway)["cache"]
            return int(sum(cache["by_label"].values()) + cache["failed"])

        # Every paraphrase had its own question as a candidate: labelled by the judge (unserved) or
        # verified by a fresh call and the judge (served).
        wait_until(lambda: labels() == len(COUNTRIES) and quality(gateway)["pending"] == 0, "labels in")
        cache = quality(gateway)["cache"]
        with sqlite3.connect(gateway.store_path / "faregate.db") as db:
            rows = db.execute(
                "SELECT label_kind, outcome, cost_nanousd, comparator FROM verifications"
                " WHERE scope = 'cache'"
            ).fetchall()
    assert len(rows) == len(COUNTRIES) and cache["failed"] == 0 and not cache["cap_reached"]
    assert all(r[3] == "llm_judge" and r[2] > 0 for r in rows)
    assert sum(r[2] for r in rows) == int(Decimal(cache["verification_cost_usd"]) * 10**9)
    if approves:
        assert outcomes.count("semantic-hit") >= 10 and cache["wrong"] == 0
        assert {r[1] for r in rows} == {"acceptable"}
        # A served hit's verification pays the fresh call and the judge; a label the judge alone.
        assert min(r[2] for r in rows if r[0] == "paid") > max(r[2] for r in rows if r[0] == "free")
    else:
        # Every label wrong: the only hits are above every similarity labelled so far (no evidence
        # there but how rare such lookups are), each verified wrong, within the bound's share.
        served = outcomes.count("semantic-hit")
        assert served <= 0.05 * cache["lookups"], (served, cache)
        assert cache["wrong"] == len(COUNTRIES) and {r[1] for r in rows} == {"wrong"}
