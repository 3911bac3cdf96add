"""Cascade and complexity-router routes end to end: the openai SDK, the gateway, and the simulator
replaying the real recorded GSM8K answers of GPT-4 and Mixtral.

Every decision the gateway makes is recomputed offline from the same trained files and the same
recorded answers, so the test knows, question by question, which model must answer, what it must
say, and what the request must cost.
"""

from __future__ import annotations

import csv
import sqlite3
import sys
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import httpx
import openai
import pytest

from faregate.evals.replay.outcomes import load_outcomes
from faregate.evals.replay.router_eval import held_out
from faregate.learning.cascade_judges import MATH_CHECKS, LearnedJudge, RuleJudge
from faregate.learning.complexity_router import ComplexityRouter
from faregate.types import Price, Usage
from harness import MASTER_KEY, GatewayProcess, create_key, run_gateway, run_sim

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
ROUTERS = ROOT / "routers"
GSM8K = ROOT / "data" / "routellm" / "gsm8k_responses.csv"
STRONG, WEAK = "gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"
PRICES = {STRONG: Price(Decimal(10), Decimal(30)), WEAK: Price(Decimal("0.6"), Decimal("0.6"))}
JUDGE_THRESHOLD = 0.4
ROUTER_THRESHOLD = 0.3
# Questions from the held-out half of the seed-0 split (the files were not trained on them).
QUESTIONS = 16

SIM_SCRIPT = """
seed: 1
defaults: {{ttft_ms: 5, tokens_per_s: 0, faults: {{}}}}
models:
  {strong}:
    answer: {{replay: {{csv: {csv}, column: {strong}_response, prompt_column: prompt}}}}
  {weak}:
    answer:
      replay: {{csv: {csv}, column: "mistralai/Mixtral-8x7B-Instruct-v0.1_response", prompt_column: prompt}}
  judge-pleased: {{answer: {{fixed: "The working is right. Score: 9/10"}}}}
  judge-doubtful: {{answer: {{fixed: "The arithmetic is off. Score: 3/10"}}}}
"""

CONFIG = """
baseline_model: {strong}
models:
  {strong}: {{input: 10, output: 30, context_window: 128000}}
  {weak}:
    {{input: 0.6, output: 0.6, context_window: 32768, aliases: ["mistralai/Mixtral-8x7B-Instruct-v0.1"]}}
  judge-pleased: {{input: 1, output: 2}}
  judge-doubtful: {{input: 1, output: 2}}
routes:
  math-cascade:
    cascade:
      steps: [{weak}, {strong}]
      judge:
        checks: [empty, truncated, refusal, json, final_number]
        learned: {{file: {routers}/judge-gsm8k.json, threshold: {judge}}}
  math-cascade-skip-streams:
    cascade:
      steps: [{weak}, {strong}]
      streams: strongest
  math-llm-pleased:
    cascade: {{steps: [{weak}, {strong}], judge: {{checks: [empty], llm: {{model: judge-pleased}}}}}}
  math-llm-doubtful:
    cascade: {{steps: [{weak}, {strong}], judge: {{checks: [empty], llm: {{model: judge-doubtful}}}}}}
  math-router:
    router: {{file: {routers}/router-gsm8k.json, threshold: {router}}}
"""


def recorded() -> dict[str, dict[str, str]]:
    csv.field_size_limit(sys.maxsize)
    with GSM8K.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {
        row["prompt"].strip(): {
            STRONG: row[f"{STRONG}_response"],
            WEAK: row["mistralai/Mixtral-8x7B-Instruct-v0.1_response"],
        }
        for row in rows
    }


@pytest.fixture(scope="module")
def answers() -> dict[str, dict[str, str]]:
    return recorded()


@pytest.fixture(scope="module")
def questions() -> list[str]:
    outcomes = load_outcomes(GSM8K, drop_contaminated=True)
    split = held_out(outcomes, LearnedJudge.read(ROUTERS / "judge-gsm8k.json"))
    return [record.prompt.strip() for record in split.test.records[:QUESTIONS]]


@pytest.fixture(scope="module")
def cascade_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, str]]:
    work = tmp_path_factory.mktemp("cascade")
    script = SIM_SCRIPT.format(csv=GSM8K, strong=STRONG, weak=WEAK)
    config = CONFIG.format(
        strong=STRONG, weak=WEAK, routers=ROUTERS, judge=JUDGE_THRESHOLD, router=ROUTER_THRESHOLD
    )
    with run_sim(work, script) as sim, run_gateway(work / "gateway", sim, config, 20.0) as gateway:
        yield gateway, create_key(gateway.store_path)


def client(gateway: GatewayProcess, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url, api_key=key, max_retries=0, timeout=60)


def records(gateway: GatewayProcess, request_ids: list[str]) -> dict[str, sqlite3.Row]:
    import time

    deadline = time.monotonic() + 10
    while True:
        with sqlite3.connect(gateway.store_path / "faregate.db") as db:
            db.row_factory = sqlite3.Row
            marks = ",".join("?" * len(request_ids))
            rows = db.execute(f"SELECT * FROM request_records WHERE request_id IN ({marks})", request_ids)
            found = {row["request_id"]: row for row in rows}
        if len(found) == len(request_ids) or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def attempts_of(row: sqlite3.Row) -> list[dict[str, object]]:
    import json

    return list(json.loads(row["attempts"]))


def nano(value: Decimal) -> int:
    return int(value.scaleb(9).to_integral_value())


def test_cascade_escalates_exactly_where_the_judge_says_and_bills_both_calls(
    cascade_gateway: tuple[GatewayProcess, str], questions: list[str], answers: dict[str, dict[str, str]]
) -> None:
    gateway, key = cascade_gateway
    judge_file = ROUTERS / "judge-gsm8k.json"
    learned = LearnedJudge.load(judge_file, threshold=JUDGE_THRESHOLD)
    rules = RuleJudge(MATH_CHECKS)
    sdk = client(gateway, key)
    ids: dict[str, str] = {}
    escalated: dict[str, bool] = {}
    for question in questions:
        weak_answer = answers[question][WEAK]
        body = {"messages": [{"role": "user", "content": question}]}
        refused = not rules.verdict(body, weak_answer, "stop").accepted
        expected_escalation = refused or learned.score(question, weak_answer, "stop") >= JUDGE_THRESHOLD
        raw = sdk.chat.completions.with_raw_response.create(
            model="math-cascade", messages=[{"role": "user", "content": question}]
        )
        completion = raw.parse()
        served = STRONG if expected_escalation else WEAK
        assert raw.headers["x-faregate-model"] == served, question
        assert raw.headers["x-faregate-cascade"].startswith(
            "escalated" if expected_escalation else "accepted"
        )
        assert "x-faregate-judge" in raw.headers
        assert completion.model == served
        assert completion.choices[0].message.content == answers[question][served]
        assert Decimal(raw.headers["x-faregate-cost-usd"]) > 0
        ids[raw.headers["x-faregate-request-id"]] = question
        escalated[raw.headers["x-faregate-request-id"]] = expected_escalation
    # The split and threshold give both outcomes among these questions.
    assert any(escalated.values()) and not all(escalated.values())

    rows = records(gateway, list(ids))
    assert len(rows) == len(ids)
    for request_id, row in rows.items():
        attempts = attempts_of(row)
        assert row["status"] == 200 and row["route"] == "math-cascade"
        if escalated[request_id]:
            cheap, final = attempts
            assert (cheap["model"], cheap["outcome"]) == (WEAK, "escalated")
            assert (final["model"], final["outcome"]) == (STRONG, "ok")
            cheap_cost = PRICES[WEAK].cost(
                Usage(int(cheap["prompt_tokens"]), int(cheap["completion_tokens"]))
            )
            assert int(cheap["completion_tokens"]) > 0
            assert Decimal(str(cheap["cost_usd"])) == cheap_cost
        else:
            assert [(a["model"], a["outcome"]) for a in attempts] == [(WEAK, "ok")]
            cheap_cost = Decimal(0)
        served = PRICES[row["model_used"]].cost(Usage(row["prompt_tokens"], row["completion_tokens"]))
        # The record's cost is the served call plus the refused cheap call, to the nano-dollar.
        assert row["cost_nanousd"] == nano(served + cheap_cost)


def test_dashboard_spend_and_savings_include_the_escalated_calls(
    cascade_gateway: tuple[GatewayProcess, str], questions: list[str]
) -> None:
    gateway, key = cascade_gateway
    sdk = client(gateway, key)
    sent = []
    for question in questions[:4]:
        raw = sdk.chat.completions.with_raw_response.create(
            model="math-cascade", messages=[{"role": "user", "content": question}]
        )
        sent.append(raw.headers["x-faregate-request-id"])
    assert len(records(gateway, sent)) == 4  # every request so far is stored
    with sqlite3.connect(gateway.store_path / "faregate.db") as db:
        spend, baseline, n = db.execute(
            "SELECT SUM(cost_nanousd), SUM(baseline_cost_nanousd), COUNT(*) FROM request_records"
            " WHERE route = 'math-cascade'"
        ).fetchone()
    summary = httpx.get(
        f"http://127.0.0.1:{gateway.port}/admin/dashboard/breakdown?by=route&range=1h",
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
        timeout=10,
    ).json()
    row = next(r for r in summary["rows"] if r["group"] == "math-cascade")
    assert row["requests"] == n
    assert Decimal(str(row["spend_usd"])) == Decimal(spend).scaleb(-9)
    assert Decimal(str(row["savings_usd"])) == Decimal(baseline - spend).scaleb(-9)
    # An escalation is not a provider failure: no fallbacks are reported.
    totals = httpx.get(
        f"http://127.0.0.1:{gateway.port}/admin/dashboard/summary?range=1h",
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
        timeout=10,
    ).json()
    assert totals["fallbacks"] == 0
    metrics = httpx.get(
        f"http://127.0.0.1:{gateway.port}/metrics",
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
        timeout=10,
    ).text
    counts = {
        line.split()[0]: float(line.split()[1])
        for line in metrics.splitlines()
        if line.startswith(("faregate_cascade_judged_total", "faregate_cascade_escalated_total"))
    }
    assert counts["faregate_cascade_judged_total"] >= 4
    # Every escalation counted is one refused, billed attempt in the records.
    with sqlite3.connect(gateway.store_path / "faregate.db") as db:
        (stored,) = db.execute(
            "SELECT COUNT(*) FROM request_records, json_each(request_records.attempts) AS a"
            " WHERE json_extract(a.value, '$.outcome') = 'escalated'"
        ).fetchone()
    assert counts["faregate_cascade_escalated_total"] == stored


def test_streaming_cascade_buffers_the_cheap_answer_until_judged(
    cascade_gateway: tuple[GatewayProcess, str], questions: list[str], answers: dict[str, dict[str, str]]
) -> None:
    gateway, key = cascade_gateway
    sdk = client(gateway, key)
    for question in questions[:6]:
        with sdk.chat.completions.with_streaming_response.create(
            model="math-cascade",
            messages=[{"role": "user", "content": question}],
            stream=True,
            stream_options={"include_usage": True},
        ) as response:
            served = response.headers["x-faregate-model"]
            request_id = response.headers["x-faregate-request-id"]
            chunks = list(response.parse())
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == answers[question][served]
        usage = chunks[-1].usage
        assert usage is not None and usage.model_extra is not None
        # The final usage chunk carries the whole cascade's cost: both calls when it escalated.
        row = records(gateway, [request_id])[request_id]
        assert Decimal(str(usage.model_extra["cost"])) == Decimal(row["cost_nanousd"]).scaleb(-9)
        outcomes = [a["outcome"] for a in attempts_of(row)]
        assert outcomes == (["escalated", "ok"] if served == STRONG else ["ok"])


def test_a_route_may_skip_the_cascade_for_streams(
    cascade_gateway: tuple[GatewayProcess, str], questions: list[str], answers: dict[str, dict[str, str]]
) -> None:
    gateway, key = cascade_gateway
    sdk = client(gateway, key)
    question = questions[0]
    with sdk.chat.completions.with_streaming_response.create(
        model="math-cascade-skip-streams", messages=[{"role": "user", "content": question}], stream=True
    ) as response:
        assert response.headers["x-faregate-model"] == STRONG
        assert "x-faregate-cascade" not in response.headers
        text = "".join(c.choices[0].delta.content or "" for c in response.parse() if c.choices)
    assert text == answers[question][STRONG]
    # Not streamed: the cascade runs.
    raw = sdk.chat.completions.with_raw_response.create(
        model="math-cascade-skip-streams", messages=[{"role": "user", "content": question}]
    )
    assert "x-faregate-cascade" in raw.headers


def test_llm_judge_call_is_made_through_the_gateway_and_billed(
    cascade_gateway: tuple[GatewayProcess, str], questions: list[str], answers: dict[str, dict[str, str]]
) -> None:
    gateway, key = cascade_gateway
    sdk = client(gateway, key)
    question = questions[1]
    pleased = sdk.chat.completions.with_raw_response.create(
        model="math-llm-pleased", messages=[{"role": "user", "content": question}]
    )
    doubtful = sdk.chat.completions.with_raw_response.create(
        model="math-llm-doubtful", messages=[{"role": "user", "content": question}]
    )
    assert pleased.headers["x-faregate-model"] == WEAK
    assert "0.90 >= 0.70" in pleased.headers["x-faregate-judge"]
    assert doubtful.headers["x-faregate-model"] == STRONG
    assert "0.30 < 0.70" in doubtful.headers["x-faregate-judge"]
    assert doubtful.parse().choices[0].message.content == answers[question][STRONG]
    rows = records(
        gateway, [pleased.headers["x-faregate-request-id"], doubtful.headers["x-faregate-request-id"]]
    )
    judge_price = Price(Decimal(1), Decimal(2))
    for raw, expected in ((pleased, [(WEAK, "ok")]), (doubtful, [(WEAK, "escalated"), (STRONG, "ok")])):
        row = rows[raw.headers["x-faregate-request-id"]]
        attempts = attempts_of(row)
        judge = [a for a in attempts if a["outcome"] == "judge"]
        assert len(judge) == 1 and judge[0]["model"] in ("judge-pleased", "judge-doubtful")
        assert [(a["model"], a["outcome"]) for a in attempts if a["outcome"] != "judge"] == expected
        billed = sum(
            (
                (judge_price if a["outcome"] == "judge" else PRICES[str(a["model"])]).cost(
                    Usage(int(a["prompt_tokens"]), int(a["completion_tokens"]))
                )
                for a in attempts
                if a["outcome"] != "ok"
            ),
            Decimal(0),
        )
        served = PRICES[row["model_used"]].cost(Usage(row["prompt_tokens"], row["completion_tokens"]))
        assert row["cost_nanousd"] == nano(served + billed)
        assert Decimal(raw.headers["x-faregate-cost-usd"]) == served + billed


def test_router_route_sends_each_prompt_where_the_trained_router_says(
    cascade_gateway: tuple[GatewayProcess, str], questions: list[str], answers: dict[str, dict[str, str]]
) -> None:
    gateway, key = cascade_gateway
    router = ComplexityRouter.load(ROUTERS / "router-gsm8k.json")
    sdk = client(gateway, key)
    chosen = []
    for question in questions[:10]:
        score = router.score(question)
        expected = STRONG if score >= ROUTER_THRESHOLD else WEAK
        raw = sdk.chat.completions.with_raw_response.create(
            model="math-router", messages=[{"role": "user", "content": question}]
        )
        assert raw.headers["x-faregate-model"] == expected
        assert float(raw.headers["x-faregate-router-score"]) == pytest.approx(score, abs=1e-3)
        assert raw.parse().choices[0].message.content == answers[question][expected]
        chosen.append(expected)
    assert STRONG in chosen and WEAK in chosen


def test_when_every_step_fails_the_error_lists_every_attempt(
    cascade_gateway: tuple[GatewayProcess, str], questions: list[str]
) -> None:
    gateway, key = cascade_gateway
    sdk = client(gateway, key)
    with pytest.raises(openai.APIStatusError) as caught:
        sdk.chat.completions.create(
            model="math-cascade",
            messages=[{"role": "user", "content": questions[2]}],
            extra_body={"sim": {"fault": "server_error"}},
        )
    assert caught.value.status_code == 502
    message = str(caught.value)
    assert "cascade's last step failed" in message
    assert WEAK in message and STRONG in message


@pytest.fixture(scope="module")
def metered_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    work = tmp_path_factory.mktemp("metered-cascade")
    script = SIM_SCRIPT.format(csv=GSM8K, strong=STRONG, weak=WEAK)
    config = "accounts: {enabled: true}\n" + CONFIG.format(
        strong=STRONG, weak=WEAK, routers=ROUTERS, judge=JUDGE_THRESHOLD, router=ROUTER_THRESHOLD
    )
    with run_sim(work, script) as sim, run_gateway(work / "gateway", sim, config, 20.0) as gateway:
        yield gateway


def test_metered_keys_pay_for_every_call_of_the_cascade_and_nothing_stays_held(
    metered_gateway: GatewayProcess, questions: list[str]
) -> None:
    gateway = metered_gateway
    admin = httpx.Client(
        base_url=f"http://127.0.0.1:{gateway.port}",
        headers={"Authorization": f"Bearer {MASTER_KEY}"},
        timeout=30,
    )
    created = admin.post("/admin/keys", json={"name": "cascade", "credits_usd": "1"}).json()
    sdk = client(gateway, created["api_key"])
    ids = []
    for question in questions[:8]:
        raw = sdk.chat.completions.with_raw_response.create(
            model="math-cascade", messages=[{"role": "user", "content": question}], max_tokens=400
        )
        ids.append(raw.headers["x-faregate-request-id"])
    rows = records(gateway, ids)
    assert any(any(a["outcome"] == "escalated" for a in attempts_of(r)) for r in rows.values())
    spent = sum(r["cost_nanousd"] for r in rows.values())
    state = admin.get(f"/admin/keys/{created['id']}").json()
    # Whatever the reservation held (both steps' worst case) was settled down to the real cost.
    assert Decimal(str(state["balance_usd"])) == Decimal(1) - Decimal(spent).scaleb(-9)
    assert state["reserved_usd"] == "0"
    assert admin.get("/admin/audit").json()["clean"] is True
