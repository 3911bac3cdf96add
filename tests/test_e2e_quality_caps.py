"""The quality loop's daily caps and its cost of verification, end to end (the openai SDK, the
gateway, the simulator).

Shown: a verification is admitted against its route's cap at the worst case of *every* call it may
make, the LLM judge's included, before any is made: a cap that would admit the shadow call alone
but not the judge's makes neither call (the simulator sees none) and pauses the route; under a cap
that admits a few verifications the real spend stays within it. The semantic cache's cap, once
spent, fires the `cache_verification_cap_reached` alert. Every verification's cost - shadow calls,
judge calls, cache fresh calls - is in "cost of verification" as /admin/quality and /metrics give
it, and the savings are reported net of it.
"""

from __future__ import annotations

import json
import re
import sqlite3
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai
import pytest

from harness import (
    MASTER_KEY,
    GatewayProcess,
    SimProcess,
    cache_written,
    create_key,
    run_gateway,
    run_sim,
    wait_until,
)

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
NANO = Decimal(10**9)

SIM = """
seed: 1
defaults: {ttft_ms: 2, tokens_per_s: 0, faults: {}}
models:
  strong-m: {answer: {fixed: "Six sevens: the answer is 42."}}
  weak-m: {answer: {fixed: "So the answer is 7."}}
  weak-tight: {answer: {fixed: "So the answer is 7."}}
  judge-tight: {answer: {fixed: "Both reach the same result. Score: 9/10"}}
  judge-roomy: {answer: {fixed: "Both reach the same result. Score: 9/10"}}
  judge-blank: {answer: {fixed: "Score: 9/10"}, faults: {blank: 1.0}}
  atlas: {answer: {fixed: "It is the largest city and seat of government."}}
"""

ROUTER = ROOT / "routers" / "router-gsm8k.json"
JUDGED = "{{target: 0.9, verification: {{share: 1.0, frontier: 0, rest_ratio: 1, comparator: llm_judge, judge_model: {judge}, daily_usd_cap: '{cap}'}}}}"  # noqa: E501
# The judge's worst case is about $0.07 (the question, both answers and its rubric, ~500 tokens, and
# its 200-token allowance at $100/M); the shadow call to weak-m about $0.0001; a real verification
# about $0.01.
CAP_TIGHT = "0.01"
CAP_ROOMY = "0.1"

CONFIG = f"""
baseline_model: strong-m
models:
  strong-m: {{input: 10, output: 30}}
  weak-m: {{input: 0.6, output: 0.6}}
  weak-tight: {{input: 0.6, output: 0.6}}
  judge-tight: {{input: 100, output: 100}}
  judge-roomy: {{input: 100, output: 100}}
  judge-blank: {{input: 100, output: 100}}
routes:
  tight:
    router: {{file: {ROUTER}, strong: strong-m, weak: weak-tight}}
    quality: {JUDGED.format(judge="judge-tight", cap=CAP_TIGHT)}
  roomy:
    router: {{file: {ROUTER}, strong: strong-m, weak: weak-m}}
    quality: {JUDGED.format(judge="judge-roomy", cap=CAP_ROOMY)}
  blank:
    router: {{file: {ROUTER}, strong: strong-m, weak: weak-m}}
    quality: {JUDGED.format(judge="judge-blank", cap="5")}
  cascade:
    cascade:
      steps: [weak-m, strong-m]
      judge: {{checks: [empty], learned: {{file: {ROOT}/routers/judge-gsm8k.json}}}}
    quality: {JUDGED.format(judge="judge-roomy", cap="5")}
"""


def admin(gateway: GatewayProcess, path: str) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{gateway.port}{path}", headers={"Authorization": f"Bearer {MASTER_KEY}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
    return json.loads(body) if path.startswith("/admin") else body.decode()


def sim_models(sim: SimProcess) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{sim.port}/sim/stats", timeout=10) as response:
        return dict(json.loads(response.read())["models"])


def verification_costs(gateway: GatewayProcess) -> dict[str, Decimal]:
    """What the verifications table says each scope's verifications cost."""
    with sqlite3.connect(gateway.store_path / "faregate.db") as db:
        rows = db.execute("SELECT scope, SUM(cost_nanousd) FROM verifications GROUP BY scope").fetchall()
    return {scope: Decimal(total) / NANO for scope, total in rows}


def metric(text: str, name: str, labels: str = "") -> float:
    found = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    assert found is not None, f"{name}{labels} is not in /metrics"
    return float(found.group(1))


def test_the_judge_is_admitted_with_the_shadow_call_and_every_cost_is_verification_cost(
    tmp_path: Path,
) -> None:
    with run_sim(tmp_path, SIM) as sim, run_gateway(tmp_path / "gateway", sim, CONFIG) as gateway:
        client = openai.OpenAI(
            base_url=gateway.base_url, api_key=create_key(gateway.store_path), max_retries=0, timeout=60
        )

        def ask(route: str, n: int) -> None:
            for i in range(n):
                client.chat.completions.create(
                    model=route,
                    messages=[{"role": "user", "content": f"Question {i}: what is 6 times 7?"}],
                    max_tokens=30,
                )

        ask("tight", 8)
        ask("roomy", 16)
        ask("cascade", 6)

        # Pacing draws about 98% of decisions at share 1.0 (verification_plan.pace): ask the blank
        # route until three of its verifications were drawn and have failed.
        def pending() -> int:
            return int(admin(gateway, "/admin/quality")["pending"])

        def blank_failed() -> int:
            rows = admin(gateway, "/admin/quality")["routes"]
            return int(next((r["failed"] for r in rows if r["route"] == "blank"), 0))

        for _ in range(12):
            if blank_failed() >= 3:
                break
            ask("blank", 1)
            wait_until(lambda: pending() == 0, "verifications finish", 60)
        quality = admin(gateway, "/admin/quality")
        routes = {row["route"]: row for row in quality["routes"]}
        costs = verification_costs(gateway)
        calls = sim_models(sim)

        # A cap that admits the shadow call ($0.0001) but not it and the judge's worst case: no
        # judge call, no shadow call either (a shadow answer no judge may read buys no label), and
        # the route is paused for the day.
        assert "judge-tight" not in calls
        assert "weak-tight" not in calls
        tight = routes["tight"]
        assert tight["cap_reached"] and tight["skipped_for_cap"] >= 1 and tight["verifications"] == 0
        assert costs.get("tight", Decimal(0)) == 0

        # A cap that admits a few verifications: the judge ran, and the real spend stayed within the
        # cap (before, the judge was charged after the fact and the last one overran it).
        roomy = routes["roomy"]
        assert roomy["verifications"] >= 1
        assert calls["judge-roomy"] == roomy["verifications"] + 6  # and the cascade's 6
        assert roomy["cap_reached"] and roomy["skipped_for_cap"] >= 1
        assert 0 < costs["roomy"] <= Decimal(CAP_ROOMY)

        # A cascade's escalations are free labels, but their judge is not free.
        cascade = routes["cascade"]
        assert cascade["by_label"]["free"] == 6 and costs["cascade"] > 0

        # A judge that answers blank 200s fails the verification, but its prompts were billed: they
        # are verification cost too.
        blank = routes["blank"]
        assert blank["failed"] == 3 and blank["verifications"] == 0 and calls["judge-blank"] >= 3
        judge_prompt = Decimal(50) * 100 / Decimal(10**6)  # 50 tokens at least, at $100/M
        assert costs["blank"] >= 3 * judge_prompt

        # Every verification's cost, the judge's included, is the route's cost of verification in
        # /admin/quality and /metrics, and its savings are net of it.
        metrics = admin(gateway, "/metrics")
        for name, row in routes.items():
            cost = costs.get(name, Decimal(0))
            assert Decimal(row["verification_cost_usd"]) == cost, name
            assert metric(
                metrics, "faregate_verification_cost_usd_total", f'{{route="{name}"}}'
            ) == pytest.approx(float(cost))
            assert Decimal(row["savings_net_usd"]) == Decimal(row["savings_usd"]) - cost, name
        recent = admin(gateway, "/admin/quality?limit=500")["recent"]
        assert sum(Decimal(r["cost_usd"]) for r in recent) == sum(costs.values())

    # A changed setting restarts the route's calibration, not what it spent: its cost of
    # verification and its savings net of it are every verification's in the store (the savings
    # are all its requests'), not since the restart.
    roomy_quality = JUDGED.format(judge="judge-roomy", cap=CAP_ROOMY)
    changed = CONFIG.replace(roomy_quality, roomy_quality.replace("target: 0.9", "target: 0.85"))
    with run_sim(tmp_path, SIM) as sim, run_gateway(tmp_path / "gateway", sim, changed) as again:
        roomy = {row["route"]: row for row in admin(again, "/admin/quality")["routes"]}["roomy"]
        assert roomy["verifications"] == 0  # the calibration started afresh
        assert Decimal(roomy["verification_cost_usd"]) == costs["roomy"] > 0
        assert Decimal(roomy["savings_net_usd"]) == Decimal(roomy["savings_usd"]) - costs["roomy"]


COUNTRIES = (
    "France Germany Spain Italy Portugal Norway Sweden Finland Denmark Poland Austria Hungary Greece "
    "Turkey Egypt Kenya Nigeria Ghana Morocco Algeria Tunisia Ethiopia Brazil Argentina Chile Peru "
    "Colombia Venezuela Mexico Canada Cuba Jamaica Japan China India Pakistan Nepal Thailand Vietnam "
    "Indonesia Malaysia Philippines Australia Iceland Ireland Belgium Netherlands Switzerland Romania"
).split()
# One fresh call to verify a hit costs about $0.0001 (its worst case, with max_tokens 20, about
# $0.0002): a few fit.
CACHE_CAP = "0.0005"

CACHE_CONFIG = f"""
models:
  atlas: {{input: 2, output: 8}}
cache:
  semantic:
    enabled: true
    max_wrong_hit_rate: 0.05
    confidence: 0.8
    verify_hits: 1.0
    daily_usd_cap: "{CACHE_CAP}"
alerts:
  interval_s: 0.5
  rules:
    - {{name: cache-verification-cap, metric: cache_verification_cap_reached, above: 0.5}}
"""


def test_the_semantic_caches_spent_cap_fires_its_alert(tmp_path: Path) -> None:
    with run_sim(tmp_path, SIM) as sim, run_gateway(tmp_path / "gateway", sim, CACHE_CONFIG) as gateway:
        client = openai.OpenAI(
            base_url=gateway.base_url, api_key=create_key(gateway.store_path), max_retries=0
        )

        def ask(text: str) -> str:
            raw = client.chat.completions.with_raw_response.create(
                model="atlas", messages=[{"role": "user", "content": text}], temperature=0, max_tokens=20
            )
            return str(raw.headers["x-faregate-cache"])

        for country in COUNTRIES:
            with cache_written(gateway, "semantic_cache_writes"):
                assert ask(f"What is the capital of {country}?") == "miss"
        assert not admin(gateway, "/admin/dashboard/alerts")["firing"]
        outcomes = [ask(f"What's the capital city of {country}?") for country in COUNTRIES]
        wait_until(lambda: admin(gateway, "/admin/quality")["pending"] == 0, "verifications finish")
        cache = admin(gateway, "/admin/quality")["cache"]

        # Some served hits were verified, until the cap could not admit another.
        assert outcomes.count("semantic-hit") > cache["by_label"]["paid"] >= 1
        assert cache["cap_reached"] and cache["skipped_for_cap"] >= 1
        spent = verification_costs(gateway)["cache"]
        assert 0 < spent <= Decimal(CACHE_CAP)
        wait_until(
            lambda: any(
                a["rule"] == "cache-verification-cap"
                for a in admin(gateway, "/admin/dashboard/alerts")["firing"]
            ),
            "the cache-verification-cap alert fires",
        )
        metrics = admin(gateway, "/metrics")
        assert metric(metrics, "faregate_cache_verification_cap_reached") == 1.0
        # Its cost of verification, as for the routes, and the cache's savings net of it.
        assert Decimal(cache["verification_cost_usd"]) == spent
        assert metric(metrics, "faregate_cache_verification_cost_usd_total") == pytest.approx(float(spent))
        assert Decimal(cache["savings_usd"]) > 0
        assert Decimal(cache["savings_net_usd"]) == Decimal(cache["savings_usd"]) - spent
