"""A route's verification after the response (quality/route_verification.py), with the shadow call
and the comparison faked: what its hold in the cap ledger is settled with when something fails;
the fresh call of a served semantic hit on a policy route; and, with the attempt runner and a
provider at the transport seam on a real store, what a verification that fails or is cancelled at
shutdown records (`unfinished_verifications_are_recorded`, also run on PostgreSQL)."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import pytest

from faregate.quality import route_verification
from faregate.quality.live import today
from faregate.quality.route_verification import Job, RouteVerification
from faregate.quality.service import QualityService
from faregate.quality.spend import Holds, ShadowCall, shadow_request
from faregate.store.protocols import StoreUnavailable
from faregate.types import ChatRequest
from test_quality_live import FakeStore, calibration


def request(request_id: str = "req1") -> ChatRequest:
    body = {"model": "r", "messages": [{"role": "user", "content": "What is 6 x 7?"}]}
    return ChatRequest(request_id, body, "r", False, False, None, frozenset())


class Calls:
    """The shadow call answers "42" for `cost`; the comparator says it agrees."""

    def __init__(self, cost: Decimal) -> None:
        self.cost = cost
        self.planner = cast(Any, None)

    async def call(self, shadow: ShadowCall) -> tuple[str | None, Decimal]:
        return "42", self.cost

    async def compare(self, *args: object) -> tuple[bool, Decimal]:
        return True, Decimal(0)

    async def unready(self, comparator: str) -> str | None:
        return None


@pytest.fixture
def worst(monkeypatch: pytest.MonkeyPatch) -> Decimal:
    amount = Decimal("0.5")

    async def plan_shadow(planner: object, asked: ChatRequest, reference: str) -> ShadowCall:
        return ShadowCall(shadow_request(asked, reference), cast(Any, object()), amount, 100)

    monkeypatch.setattr(route_verification, "plan_shadow", plan_shadow)
    return amount


async def test_a_paid_shadow_call_is_in_the_ledger_even_when_the_state_cannot_be_saved(
    worst: Decimal,
) -> None:
    class StateDown(FakeStore):
        async def save_state(self, scope: str, expected: int, state: str, now: float) -> bool:
            raise StoreUnavailable("database is locked")

    store = StateDown()
    route = calibration(cap="1")
    service = QualityService([route], store)
    holds = Holds(service)
    verification = RouteVerification(service, cast(Any, Calls(Decimal("0.3"))), holds)
    decision = route.decide("req1", 0.5, 10.0)
    assert decision.labelled
    job = Job(decision, request(), "42", "strong", route)
    with pytest.raises(StoreUnavailable):
        await verification.verify(job)
    # The shadow call was made and billed: its real cost is in the day's spend, the hold gone.
    assert route.state.budget.spent == Decimal("0.3")
    assert await store.cap_ledger("route:r", today()) == (Decimal("0.3"), {})


async def test_a_verification_cancelled_at_shutdown_after_its_shadow_call_settles_what_it_cost(
    worst: Decimal,
) -> None:
    import asyncio

    class SlowJudge(Calls):
        async def compare(self, *args: object) -> tuple[bool, Decimal]:
            await asyncio.Event().wait()  # the judge is still thinking when the gateway stops
            raise AssertionError

    store = FakeStore()
    route = calibration(cap="1")
    service = QualityService([route], store)
    verification = RouteVerification(service, cast(Any, SlowJudge(Decimal("0.3"))), Holds(service))
    decision = route.decide("req1", 0.5, 10.0)
    task = asyncio.create_task(verification.verify(Job(decision, request(), "42", "strong", route)))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await store.cap_ledger("route:r", today()) == (Decimal("0.3"), {})


async def test_a_served_hits_verification_settles_the_fresh_call_and_judge_when_the_save_fails(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The semantic cache's verifications keep what they were billed the same way (the fresh call
    and, with `llm_judge`, the judge), so a refused save does not leave it out of the ledger."""
    from faregate.learning.online.settings import SemanticAcceptanceSettings
    from faregate.quality import cache_verification
    from faregate.quality.cache_live import CacheCalibration
    from faregate.quality.cache_verification import CacheJob, CacheVerification

    async def plan_shadow(planner: object, asked: ChatRequest, reference: str) -> ShadowCall:
        return ShadowCall(shadow_request(asked, reference), cast(Any, object()), Decimal("0.5"), 100)

    monkeypatch.setattr(cache_verification, "plan_shadow", plan_shadow)
    monkeypatch.setattr(cache_verification, "judge_worst", lambda *args: Decimal("0.2"))

    class StateDown(FakeStore):
        async def save_state(self, scope: str, expected: int, state: str, now: float) -> bool:
            raise StoreUnavailable("database is locked")

    class Judged(Calls):
        async def compare(self, *args: object) -> tuple[bool, Decimal]:
            return True, Decimal("0.05")

    store = StateDown()
    settings = SemanticAcceptanceSettings(max_wrong_hit_rate=0.05, daily_usd_cap=Decimal("1"))
    cache = CacheCalibration(settings, "llm_judge", judge_model="judge-m")
    service = QualityService([], store, cache)
    verification = CacheVerification(service, cast(Any, Judged(Decimal("0.3"))), Holds(service))
    with pytest.raises(StoreUnavailable):
        await verification.verify(CacheJob(request(), "42", 0.95, "m", "key"))
    assert cache.budget.spent == Decimal("0.35") and cache.totals.by_label["paid"] == 1
    assert await store.cap_ledger("cache", today()) == (Decimal("0.35"), {})


async def test_a_fresh_call_to_a_cascade_route_is_its_strongest_step_not_the_unjudged_cheap_one() -> None:
    """A semantic hit on a cascade route is verified by a fresh call to the route (CacheJob's
    reference is the model asked). Its plan has a stage per step, but the shadow call makes one
    call: it was the cheap step's unjudged answer, which the route may never serve, priced at
    every step and judge. The reference is the route's strongest step (agreement with the strong
    path, as a calibrated route's labels), and its worst case is that step's."""
    from faregate.quality.spend import plan_shadow
    from faregate.routing.worst_case import worst_case
    from test_route_policies import gateway
    from test_route_policies import request as route_request

    planner, _ = gateway({})
    asked = route_request({"model": "graded", "max_tokens": 100})
    shadow = await plan_shadow(planner, asked, "graded")
    assert shadow.plan is not None and not shadow.plan.stages
    assert [c.model.name for c in shadow.plan.candidates] == ["strong"]
    direct = await planner.plan(route_request({"model": "strong", "max_tokens": 100}))
    assert (shadow.worst, shadow.tokens) == await worst_case(direct, shadow.request)
    # A plain model is planned as it is.
    plain = await plan_shadow(planner, asked, "cheap")
    assert plain.plan is not None and [c.model.name for c in plain.plan.candidates] == ["cheap"]


async def test_a_fresh_call_to_a_calibrated_router_route_is_its_strong_path_and_no_decision() -> None:
    """A semantic hit on a calibrated router route is verified by a fresh call to the route. It
    went through the router, which made one more decision for it: counted in the calibration (a
    zero in every test when its coin said "unlabelled", a label that never comes when it said
    "labelled") although no routed answer ever came of it, and the fresh answer of the weak model
    when the cut sent it there. The reference is the route's strong path, as for a cascade's
    strongest step (the standard labels take), and the calibration does not see the call."""
    from faregate.catalog import build_catalog
    from faregate.learning.complexity_router import ComplexityRouter
    from faregate.learning.thresholds import Threshold
    from faregate.quality.spend import plan_shadow
    from faregate.routing.plan import Planner
    from faregate.routing.policies import RouterPolicy
    from test_complexity_router import HashEmbedder
    from test_quality_live import run
    from test_route_policies import ROUTERS, OnePolicy, routes
    from test_route_policies import request as route_request
    from test_route_policies import settings as route_settings

    s = route_settings(routes(smart={"chain": ["cheap"]}))
    scorer = ComplexityRouter.load(ROUTERS / "router-gsm8k.json", embedder=HashEmbedder())
    policy = RouterPolicy(scorer, Threshold.fixed(1.0), strong="strong", weak="cheap")
    policy.quality = route = calibration()
    run(route, 120, wrong=False)  # good cheap answers: a cut is in force, most prompts go cheap
    assert route.cut > 0.5
    planner = Planner(build_catalog(s), s.routes, s.routing, policies=OnePolicy("smart", policy))
    asked = route_request({"model": "smart", "max_tokens": 100})
    user = await planner.plan(asked)
    assert user.trace.quality is not None and user.trace.quality.cheap  # a user's request is decided
    decisions, tests = route.state.decisions, route.state.calibration.tests.count.copy()
    shadow = await plan_shadow(planner, asked, "smart")
    assert shadow.plan is not None and shadow.plan.trace.quality is None
    assert [c.model.name for c in shadow.plan.candidates] == ["strong", "cheap"]
    assert route.state.decisions == decisions
    assert (route.state.calibration.tests.count == tests).all()


async def test_verifications_waiting_for_a_slot_are_bounded_and_decisions_pause_meanwhile() -> None:
    """Four verifications run at once; at a sustained rate above what four slots get through (a
    busy route, shadow calls of seconds), the tasks waiting for a slot grew without bound, each
    holding its request and answer. Once `max_waiting` wait, decisions are neither labelled nor
    counted, as while the daily cap pauses the day, and served semantic hits are not drawn; both
    resume as the verifications catch up."""
    import asyncio

    from faregate.learning.online.settings import SemanticAcceptanceSettings
    from faregate.quality.cache_live import CacheCalibration
    from faregate.quality.verifier import Verifier

    route = calibration(cap="1")
    cache = CacheCalibration(SemanticAcceptanceSettings(verify_hits=1.0), "exact")
    service = QualityService([route], FakeStore(), cache)
    verifier = Verifier(service, cast(Any, None), cast(Any, None), max_concurrency=1, max_waiting=2)
    release = asyncio.Event()

    async def slow(job: Job) -> None:
        await release.wait()

    verifier.route_verification.verify = slow  # type: ignore[method-assign]
    jobs = []
    for i in range(20):
        decision = route.decide(f"req{i}", 0.5, 10.0)
        assert not decision.paused
        if decision.labelled and len(jobs) < 4:
            jobs.append(Job(decision, request(f"req{i}"), "42", "strong", route))
    assert len(jobs) == 4
    for job in jobs[:3]:  # one running, two waiting
        verifier.submit(job)
    await asyncio.sleep(0)
    decisions = route.state.decisions
    held = route.decide("req99", 0.5, 10.0)
    assert held.paused and not held.labelled and route.state.decisions == decisions
    hit = cast(
        Any,
        type(
            "Hit",
            (),
            {
                "kind": "semantic-hit",
                "body": {},
                "similarity": 0.9,
                "model": "m",
                "key": "k",
                "counted": True,
            },
        ),
    )
    assert verifier.cache_job_for(request("req99"), hit) is None
    verifier.submit(jobs[3])  # decided before the backlog filled: still verified
    assert verifier.pending == 4
    release.set()
    await verifier.drain()
    again = route.decide("req10", 0.5, 10.0)
    assert again.labelled and not again.paused and route.state.decisions == decisions + 1
    assert verifier.cache_job_for(request("req10"), hit) is not None


async def test_a_cascade_escalation_answered_by_the_routes_fallback_is_not_a_free_label() -> None:
    """A cascade escalation is labelled for free (p = 1) by comparing the cheap answer with the
    strong step's. When the strong step failed and the route's own chain answered (it backs up the
    last step), that answer is not the strong path's: every escalation during a strong model's
    outage was labelled against the fallback model. As for a router, a fallback's answer verifies
    nothing."""
    from faregate.quality.verifier import Verifier
    from faregate.routing.attempts import Served
    from test_route_policies import gateway
    from test_route_policies import request as route_request
    from test_routing import ok

    planner, _ = gateway({}, {"backed": {"cascade": {"steps": ["cheap", "strong"]}, "chain": ["grader"]}})
    asked = route_request({"model": "backed"})
    plan = await planner.plan(asked)
    assert [c.model.name for c in plan.stages[-1]] == ["strong", "grader"]
    route = calibration(kind="cascade")
    route.route = "backed"
    route.cheap, route.strong = "cheap", "strong"
    verifier = Verifier(QualityService([route], FakeStore()), cast(Any, None), cast(Any, None))
    decision = route.decide("req", 2.0, 10.0, force_strong=True)
    decision.cheap_text = "So the answer is 7."
    assert decision.labelled and decision.label_kind == "free"
    plan.trace.quality = decision
    strong, fallback = plan.stages[-1]
    job = verifier.job_for(plan, asked, Served(ok("42"), strong, []), 200)
    assert job is not None and job.served_model == "strong"
    assert verifier.job_for(plan, asked, Served(ok("42"), fallback, []), 200) is None


async def test_an_embedding_comparator_without_its_model_fails_a_verification_before_any_call(
    worst: Decimal, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Its embedding model failed to load: a verification still admitted and made its paid
    shadow call (or a served hit's fresh call), then failed at the comparison with a traceback.
    It now fails before any call is admitted or made, counted as failed, with no log of its own
    (the load logs once per try)."""
    from types import SimpleNamespace

    from faregate.cache.semantic import SemanticCache
    from faregate.cache.service import ResponseCache
    from faregate.cache.stores import MemoryStore
    from faregate.config import CacheSettings
    from faregate.embedding.embedder import AsyncEmbedder
    from faregate.learning.online.settings import (
        QualitySettings,
        SemanticAcceptanceSettings,
        VerificationSettings,
    )
    from faregate.quality import cache_verification
    from faregate.quality.cache_live import CacheCalibration
    from faregate.quality.cache_verification import CacheJob, CacheVerification
    from faregate.quality.live import RouteCalibration
    from faregate.quality.setup import embedder_for
    from faregate.quality.verification_calls import VerificationCalls

    async def plan_shadow(planner: object, asked: ChatRequest, reference: str) -> ShadowCall:
        return ShadowCall(shadow_request(asked, reference), cast(Any, object()), worst, 100)

    monkeypatch.setattr(cache_verification, "plan_shadow", plan_shadow)
    loads: list[int] = []

    def corrupt() -> Any:
        loads.append(1)
        raise RuntimeError("the packaged embedding model does not match its pinned SHA-256")

    class Shadow(VerificationCalls):
        made = 0

        async def call(self, shadow: ShadowCall) -> tuple[str | None, Decimal]:
            Shadow.made += 1
            return "42", Decimal("0.3")

    semantic: SemanticCache[str] = SemanticCache(AsyncEmbedder(loader=corrupt))
    cache = ResponseCache(CacheSettings(), MemoryStore(), semantic)
    planner = cast(Any, SimpleNamespace(routes=SimpleNamespace(policies=None)))
    calls = Shadow(cast(Any, None), planner)
    calls.embedder = embedder_for(planner, cache)
    store = FakeStore()
    verification = VerificationSettings(
        share=1.0, rest_ratio=1.0, daily_usd_cap=Decimal("5"), comparator="embedding"
    )
    route = RouteCalibration("r", "router", QualitySettings(target=0.9, verification=verification))
    route.cheap, route.strong = "weak", "strong"
    acceptance = CacheCalibration(
        SemanticAcceptanceSettings(max_wrong_hit_rate=0.05, daily_usd_cap=Decimal("1")), "embedding"
    )
    service = QualityService([route], store, acceptance)
    routes = RouteVerification(service, calls, Holds(service))
    hits = CacheVerification(service, calls, Holds(service))
    try:
        with caplog.at_level("INFO"):
            labelled = [route.decide(f"req{i}", 0.5, 10.0) for i in range(5)]
            labelled = [d for d in labelled if d.labelled]
            assert len(labelled) >= 2 and all(d.label_kind != "free" for d in labelled)
            for decision in labelled:
                await routes.verify(Job(decision, request(decision.request_id), "42", "strong", route))
            for i in range(3):
                await hits.verify(CacheJob(request(f"hit{i}"), "42", 0.95, "m", "key"))
        assert Shadow.made == 0 and loads == [1]
        assert route.state.totals.failed == len(labelled) and acceptance.totals.failed == 3
        assert await store.cap_ledger("route:r", today()) == (Decimal(0), {})
        assert await store.cap_ledger("cache", today()) == (Decimal(0), {})
        assert [r.outcome for r in store.rows] == ["failed"] * (len(labelled) + 3)
        assert sum(bool(r.exc_info) for r in caplog.records) == 1  # the load's, once
    finally:
        await cache.close()


# -- verifications that do not finish: recorded with what they cost, their holds released ------


class Upstream:
    """A provider at the transport seam for `unfinished_verifications_are_recorded`: a question
    with "fails" gets a blank 200 it is billed for (1,000 prompt tokens); "shadow-hang" hangs at
    the shadow call (model `cheap`), any other "-hang" at the judge (`grader`), until the gateway
    stops; anything else is answered, 1,000 + 200 tokens."""

    def __init__(self) -> None:
        self.hanging = 0

    async def complete(self, call: Any) -> Any:
        from faregate.types import Completion, Usage

        question, model = str(call.body["messages"]), call.body["model"]
        if "fails" in question:
            return Completion({"choices": []}, Usage(1000, 0))
        shadow = "shadow-hang" in question
        if (shadow and model == "cheap") or (not shadow and "-hang" in question and model == "grader"):
            self.hanging += 1
            await asyncio.Event().wait()
        body = {"choices": [{"index": 0, "message": {"role": "assistant", "content": "42"}}]}
        body["choices"][0]["finish_reason"] = "stop"
        return Completion(body, Usage(1000, 200))

    async def close(self) -> None:
        pass


async def unfinished_verifications_are_recorded(table: Any) -> None:
    """A verification whose shadow call fails, or that the shutdown cancels in its shadow call or
    in its judge's, is a `verifications` row (outcome failed) with what it was billed, charged in
    the calibration's day as in the cap's ledger, and its hold is gone. One cancelled after its paid
    shadow call had settled its hold with the cost but written no row: the ledger had money that
    the verification cost (`/admin/quality`, the sum of the rows) never showed."""
    from faregate.catalog import build_catalog
    from faregate.learning.online.settings import (
        QualitySettings,
        SemanticAcceptanceSettings,
        VerificationSettings,
    )
    from faregate.providers.registry import ProviderRegistry
    from faregate.quality.cache_live import CacheCalibration
    from faregate.quality.cache_verification import CacheJob, CandidateJob
    from faregate.quality.live import RouteCalibration
    from faregate.quality.verifier import Verifier
    from faregate.routing.attempts import AttemptRunner
    from faregate.routing.plan import Planner
    from faregate.store.rows import to_nanousd
    from test_route_policies import settings as route_settings

    s = route_settings({})
    upstream = Upstream()
    planner = Planner(build_catalog(s), s.routes, s.routing)
    runner = AttemptRunner(ProviderRegistry.of({"a": upstream, "b": upstream}), 30.0, s.routing)
    judged = VerificationSettings(
        share=1.0, rest_ratio=1.0, daily_usd_cap=Decimal(1), comparator="llm_judge", judge_model="grader"
    )
    route = RouteCalibration("r", "router", QualitySettings(target=0.9, confidence=0.8, verification=judged))
    route.cheap, route.strong = "cheap", "strong"  # no evidence yet: strong decisions, cheap shadow calls
    acceptance = SemanticAcceptanceSettings(max_wrong_hit_rate=0.05, daily_usd_cap=Decimal(1))
    cache = CacheCalibration(acceptance, "llm_judge", judge_model="grader")
    service = QualityService([route], table, cache)
    verifier = Verifier(service, runner, planner)

    def asking(request_id: str, question: str, model: str = "r") -> ChatRequest:
        body = {"model": model, "messages": [{"role": "user", "content": question}], "temperature": 0}
        return ChatRequest(request_id, body, model, False, False, None, frozenset())

    def job(question: str) -> Job:
        for n in range(100):
            decision = route.decide(f"{question}-{n}", 0.5, 10.0)
            if decision.labelled:
                return Job(decision, asking(decision.request_id, question), "42", "strong", route)
        raise AssertionError("no labelled decision")

    verifier.submit(job("fails"))
    await verifier.drain()  # the shadow call failed: its billed blank answer is its cost
    for question in ("shadow-hang", "judge-hang"):
        verifier.submit(job(question))
    verifier.submit(CacheJob(asking("hit-1", "cache-hang", "cheap"), "42", 0.95, "cheap", "key"))
    # An unserved candidate a judge labels (free, but for the judge's call).
    verifier.submit(CandidateJob(asking("miss-1", "label-hang", "cheap"), "41", "42", 0.9, ("k1", "k2")))
    for _ in range(2000):
        if upstream.hanging == 4:
            break
        await asyncio.sleep(0.005)
    assert upstream.hanging == 4, "the verifications never reached the calls they hang at"
    await verifier.close()  # the shutdown: cancelled after the grace

    billed, answered = Decimal("0.0005"), Decimal("0.0006")  # 1,000 (+ 200) tokens at $0.5 / 1M
    rows = {r.request_id.rsplit("-", 1)[0]: r for r in await table.recent("r")}
    assert {q: (r.outcome, r.cost_nano) for q, r in rows.items()} == {
        "fails": ("failed", to_nanousd(billed)),
        "shadow-hang": ("failed", 0),  # cancelled in the call: nothing known to be billed
        "judge-hang": ("failed", to_nanousd(answered)),  # the shadow call's answer was paid for
    }
    spent = billed + answered
    assert await table.cap_ledger("route:r", today()) == (spent, {})
    assert await table.cost_nano("r") == to_nanousd(spent)
    assert route.state.budget.spent == spent and route.state.totals.failed == 3
    cached = {r.request_id: (r.label_kind, r.outcome, r.cost_nano) for r in await table.recent("cache")}
    assert cached == {"hit-1": ("paid", "failed", to_nanousd(answered)), "miss-1": ("free", "failed", 0)}
    assert await table.cap_ledger("cache", today()) == (answered, {})
    assert await table.cost_nano("cache", cache=True) == to_nanousd(answered)
    assert cache.budget.spent == answered and cache.totals.failed == 2


async def test_unfinished_verifications_are_recorded_with_their_cost_on_sqlite(tmp_path: Path) -> None:
    from faregate.store.sqlite.analytics import SQLiteAnalytics
    from faregate.store.sqlite.store import SQLiteStore
    from faregate.store.sqlite.verifications import SQLiteVerifications

    store = await SQLiteStore.open(tmp_path)
    reads = await SQLiteAnalytics.open(store.path)
    try:
        await unfinished_verifications_are_recorded(SQLiteVerifications(reads.connection))
    finally:
        await reads.close()
        await store.close()


async def test_verifications_started_and_dropped_at_shutdown_are_counted_in_metrics_and_logged(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The verifier counted the verifications it started and those it dropped at shutdown, but
    exposed neither, and said nothing of the drops: an operator could not tell how many decisions
    a restart left unobserved. Both are /metrics counters now, and the shutdown says how many."""
    import asyncio
    import logging

    from prometheus_client import CollectorRegistry, generate_latest

    from faregate.quality import verifier as verifier_module
    from faregate.quality.metrics import QualityCollector
    from faregate.quality.verifier import Verifier

    monkeypatch.setattr(verifier_module, "CLOSE_GRACE_S", 0.05)
    route = calibration(cap="1")
    service = QualityService([route], FakeStore())
    verifier = Verifier(service, cast(Any, None), cast(Any, None), max_concurrency=1)
    hang = asyncio.Event()

    async def hanging(job: Job) -> None:
        await hang.wait()

    verifier.route_verification.verify = hanging  # type: ignore[method-assign]
    jobs = []
    for i in range(50):
        decision = route.decide(f"req{i}", 0.5, 10.0)
        if decision.labelled and len(jobs) < 4:
            jobs.append(Job(decision, request(f"req{i}"), "42", "strong", route))
    for job in jobs[:3]:  # one runs (and hangs), two wait for its slot
        verifier.submit(job)
    await asyncio.sleep(0)
    registry = CollectorRegistry()
    registry.register(QualityCollector(service.figures, service.cache_figures, verifier))
    with caplog.at_level(logging.WARNING, logger="faregate.quality"):
        await verifier.close()
    verifier.submit(jobs[3])  # a request finished while the gateway stops: dropped too
    text = generate_latest(registry).decode()
    assert "faregate_verifications_started_total 1.0" in text
    assert "faregate_verifications_dropped_total 3.0" in text
    assert verifier.cancelled == 1
    said = [r.getMessage() for r in caplog.records if "shutdown" in r.getMessage()]
    assert len(said) == 1 and "2 verifications dropped before they began" in said[0]
    assert "1 cancelled while they ran" in said[0]
