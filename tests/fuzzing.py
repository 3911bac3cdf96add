"""Fuzz a running gateway from its own OpenAPI description (GET /openapi.json) with Schemathesis.

Every operation gets requests generated from its schema, valid ones (to reach deep code) and
invalid ones (to hit every refusal), sent with an API key, the master key, a wrong key or none.
Chat requests mostly name real models, and path ids mostly name a real (sacrificial) key, so
the generated requests get past the first lookup. Used by tests/test_fuzz_api_e2e.py (a few
hundred requests in `make test`) and bench/fuzz_api.py (tens of thousands, by hand).

What a run checks afterwards (`check_invariants`): no response was a 5xx; exactly one request
record per chat or embeddings request; no reservation left held; the ledger audit is clean; the gateway is
still healthy and answers a plain request.
"""

from __future__ import annotations

import random
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

CHAT = "POST /v1/chat/completions"
EMBEDDINGS = "POST /v1/embeddings"
# Every operation that writes one request record (what `check_invariants` counts): the pipeline's
# wires and embeddings.
RECORDED = (CHAT, "POST /v1/messages", "POST /v1/responses", EMBEDDINGS)
# Operations whose body names a model, steered at real ones.
NAMES_A_MODEL = (*RECORDED, "POST /v1/messages/count_tokens")
MODELS = ("deepseek-v4-flash", "qwen3-8b", "gpt-4o-mini", "glm-4-plus", "deepseek-ai/DeepSeek-V4-Flash")
EMBEDDING_MODELS = ("text-embedding-3-small", "text-embedding-3-large")
# How many more examples the chat endpoint (and the other recorded endpoints) get than any other.
CHAT_WEIGHT = 8
WIRE_WEIGHT = 3
# A simulator script that never answers blank: any 5xx is then the gateway's own doing.
SIM_SCRIPT = "defaults:\n  answer: {fixed: 'fuzzed and fine'}\n"


@dataclass
class Target:
    root: str  # http://127.0.0.1:PORT
    api_key: str
    master_key: str
    victim_id: str  # a key the admin endpoints may revoke, rename and top up at will


@dataclass
class FuzzReport:
    sent: int = 0
    # Requests to the recorded operations (chat, Messages, Responses, embeddings): one record each.
    chat: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    by_operation: Counter[str] = field(default_factory=Counter)
    chat_statuses: Counter[int] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)
    transport_errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def count(self, label: str, status: int, case: Any) -> None:
        self.sent += 1
        self.chat += label in RECORDED
        self.statuses[status] += 1
        self.by_operation[label] += 1
        if label == CHAT:
            self.chat_statuses[status] += 1
        if status >= 500 and len(self.server_errors) < 20:
            self.server_errors.append(f"{status} {label}: {case.as_curl_command()}")


def _auth(target: Target, label: str) -> st.SearchStrategy[dict[str, str]]:
    right = target.master_key if " /admin/" in label or label.endswith("/metrics") else target.api_key
    other = target.api_key if right == target.master_key else target.master_key
    return st.sampled_from(
        [
            *[{"Authorization": f"Bearer {right}"}] * 6,
            {"Authorization": f"Bearer {other}"},
            {"Authorization": "Bearer fg-not-a-real-key-000000000000000000"},
            {"Authorization": "Basic Zm9vOmJhcg=="},
            {},
        ]
    )


def _steer(case: Any, label: str, target: Target, rng: random.Random) -> None:
    """Aim generated values at real things often enough to get past the first lookup."""
    body = case.body
    if label in NAMES_A_MODEL and isinstance(body, dict) and rng.random() < 0.8:
        body["model"] = rng.choice(MODELS)
        if rng.random() < 0.7:
            body.pop("models", None)
    if label == EMBEDDINGS and isinstance(body, dict) and rng.random() < 0.8:
        body["model"] = rng.choice(EMBEDDING_MODELS)
    params = case.path_parameters or {}
    if "key_id" in params and rng.random() < 0.6:
        params["key_id"] = target.victim_id
    if "name" in params and rng.random() < 0.5:
        params["name"] = rng.choice(MODELS)


def fuzz(
    target: Target,
    requests_wanted: int,
    *,
    seed_value: int = 0,
    progress: Callable[[FuzzReport], None] | None = None,
) -> FuzzReport:
    """Send about `requests_wanted` generated requests (in rounds over every operation)."""
    schema = schemathesis.openapi.from_url(f"{target.root}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    weights = {
        op.label: CHAT_WEIGHT if op.label == CHAT else WIRE_WEIGHT if op.label in RECORDED else 1
        for op in operations
    }
    per_round = sum(weights.values())
    report = FuzzReport()
    session = requests.Session()
    rng = random.Random(seed_value)
    started = time.monotonic()
    round_index = 0
    while report.sent < requests_wanted:
        # The admin endpoints are fuzzed with ids learnt from earlier answers, so they may revoke
        # or cap the fuzzer's own key: a fresh one each round keeps the chat requests authorised.
        _renew_key(target)
        budget = max(1, (requests_wanted - report.sent) // per_round)
        examples = min(budget, 25)
        for op in operations:
            mode = GenerationMode.POSITIVE if round_index % 3 != 2 else GenerationMode.NEGATIVE
            run = _runner(
                op, mode, examples * weights[op.label], target, report, requests_wanted, rng, session
            )
            try:
                seed(seed_value * 100_003 + round_index * 1_009 + len(op.label))(run)()
            except Unsatisfiable:
                pass  # nothing to make invalid in it (no parameters, no body)
        round_index += 1
        if progress is not None:
            progress(report)
    report.seconds = time.monotonic() - started
    session.close()
    return report


def new_fuzz_key(root: str, master_key: str, name: str = "fuzzer") -> dict[str, Any]:
    limits = {"requests_per_minute": 10_000_000, "tokens_per_minute": 1_000_000_000_000}
    with httpx.Client(base_url=root, headers={"Authorization": f"Bearer {master_key}"}, timeout=30) as client:
        made = client.post("/admin/keys", json={"name": name, "credits_usd": "100000", **limits})
    assert made.status_code == 201, made.text
    return dict(made.json())


def _renew_key(target: Target) -> None:
    target.api_key = new_fuzz_key(target.root, target.master_key)["api_key"]


def _runner(
    op: Any,
    mode: GenerationMode,
    examples: int,
    target: Target,
    report: FuzzReport,
    wanted: int,
    rng: random.Random,
    session: requests.Session,
    timeout_s: float = 30.0,
) -> Callable[[], None]:
    label = op.label

    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=op.as_strategy(generation_mode=mode), headers=_auth(target, label))
    def one(case: Any, headers: dict[str, str]) -> None:
        if report.sent >= wanted:
            return
        _steer(case, label, target, rng)
        try:
            response = case.call(base_url=target.root, session=session, headers=headers, timeout=timeout_s)
        except requests.RequestException as exc:
            report.transport_errors.append(f"{label}: {type(exc).__name__}: {exc}"[:500])
            report.sent += 1
            return
        report.count(label, response.status_code, case)

    return one  # type: ignore[no-any-return]


@dataclass
class Invariants:
    records: int
    chat_requests: int
    held: list[str]
    audit_clean: bool
    healthy: bool
    answers: bool
    detail: str = ""

    def problems(self, report: FuzzReport) -> list[str]:
        found = []
        if report.server_errors or any(status >= 500 for status in report.statuses):
            found.append(f"{sum(n for s, n in report.statuses.items() if s >= 500)} responses were 5xx")
        if report.transport_errors:
            found.append(f"{len(report.transport_errors)} requests got no HTTP answer")
        if self.records != self.chat_requests:
            found.append(f"{self.records} request records for {self.chat_requests} recorded requests")
        if self.held:
            found.append(f"reservations left held: {self.held[:5]}")
        if not self.audit_clean:
            found.append("the ledger audit is not clean")
        if not (self.healthy and self.answers):
            found.append(f"the gateway is not healthy after the run: {self.detail}")
        return found


def check_invariants(
    target: Target, store_path: Path, report: FuzzReport, wait_s: float = 10.0
) -> Invariants:
    """After a run (embedded store): records, holds, audit, health."""
    admin = {"Authorization": f"Bearer {target.master_key}"}
    db = store_path / "faregate.db"
    deadline = time.monotonic() + wait_s
    while True:
        with sqlite3.connect(db) as conn:
            records = int(conn.execute("SELECT COUNT(*) FROM request_records").fetchone()[0])
            held = [str(r[0]) for r in conn.execute("SELECT hold_id FROM holds").fetchall()]
        if (records >= report.chat and not held) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    fresh = new_fuzz_key(target.root, target.master_key, "after-the-fuzz")["api_key"]
    with httpx.Client(base_url=target.root, timeout=30) as client:
        audit = client.get("/admin/audit", headers=admin)
        healthy = client.get("/health").status_code == 200
        answer = client.post(
            "/v1/chat/completions",
            headers={"Authorization": f"Bearer {fresh}"},
            json={"model": "deepseek-v4-flash", "messages": [{"role": "user", "content": "still there?"}]},
        )
    # The check's own request is a chat request too.
    return Invariants(
        records=records,
        chat_requests=report.chat,
        held=held,
        audit_clean=audit.status_code == 200 and audit.json().get("clean") is True,
        healthy=healthy,
        answers=answer.status_code == 200,
        detail=f"plain request: {answer.status_code} {answer.text[:300]}",
    )
