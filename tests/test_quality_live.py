"""The gateway side of the quality loop, in process: decisions, verified outcomes, the daily cap,
router-health fallback, and the state kept in the store with compare-and-set (quality/)."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from faregate.config import ConfigError, load_settings
from faregate.learning.online.domain_router import Vector
from faregate.learning.online.settings import QualitySettings, VerificationSettings
from faregate.learning.thresholds import CalibrationPoint
from faregate.quality.live import LiveState, RouteCalibration, today
from faregate.quality.metrics import QualityCollector
from faregate.quality.service import QualityService
from faregate.quality.state import Prior
from faregate.store.sqlite.store import SQLiteStore
from faregate.store.verifications import HoldAsk, Verdict, VerificationRow


def calibration(
    kind: str = "router", target: float = 0.9, share: float = 1.0, cap: str = "5", confidence: float = 0.8
) -> RouteCalibration:
    """share 1 with rest_ratio 1: every decision labelled (uniform sampling)."""
    rest = 1.0 if share >= 1.0 else 0.1
    settings = QualitySettings(
        target=target,
        confidence=confidence,
        verification=VerificationSettings(share=share, rest_ratio=rest, daily_usd_cap=Decimal(cap)),
    )
    route = RouteCalibration("r", kind, settings)  # type: ignore[arg-type]
    route.cheap, route.strong = "weak", "strong"
    return route


def run(route: RouteCalibration, n: int, wrong: bool, start: int = 0) -> None:
    """n decisions, each verified: the cheap answer always right (or always wrong)."""
    for i in range(start, start + n):
        decision = route.decide(f"req{i}", score=(i * 0.37) % 1.0, length=float(i % 50))
        if decision.labelled:
            route.observe(decision, loss=wrong)


def test_with_no_evidence_every_request_takes_the_strong_path() -> None:
    route = calibration()
    decision = route.decide("req", 0.0, 10.0)
    assert not decision.cheap and decision.cut == 0.0
    assert decision.label_kind == "cheap"  # a strong decision is labelled by a weak shadow call
    # The pace aims a little under the budget (verification_plan.pace).
    assert decision.probability == pytest.approx(0.98)


def test_good_cheap_answers_move_the_strong_share_down_and_bad_ones_do_not() -> None:
    good, bad = calibration(), calibration()
    run(good, 120, wrong=False)
    run(bad, 120, wrong=True)
    assert good.state.calibration.strong_share <= 0.8
    assert bad.state.calibration.strong_share == 1.0
    later = good.decide("later", 0.0, 1.0)
    assert later.cheap and later.label_kind == "paid"


def test_the_decision_is_fixed_before_the_outcome_and_unlabelled_ones_count_at_once() -> None:
    route = calibration(share=0.05)
    before = route.state.calibration.tests.count.copy()
    decisions = [route.decide(f"q{i}", 0.5, 3.0) for i in range(200)]
    labelled = [d for d in decisions if d.labelled]
    assert 0 < len(labelled) < 200
    assert all(0 < d.probability <= 1 for d in decisions)
    # Unlabelled decisions are zeros in every started test; labelled ones wait for their outcome.
    started = route.state.calibration.tests.started
    assert (route.state.calibration.tests.count - before)[started].max() == 200 - len(labelled)


def test_a_cascade_escalation_is_a_free_label() -> None:
    route = calibration(kind="cascade")
    decision = route.decide("req", 0.9, 10.0)
    assert not decision.cheap and decision.label_kind == "free" and decision.probability == 1.0
    forced = route.decide("req2", 0.0, 10.0, force_strong=True)
    assert not forced.cheap and forced.label_kind == "free"


def test_the_daily_cap_refuses_and_pauses_the_day() -> None:
    route = calibration(cap="0.01")
    day = today()
    assert route.admit(day, Decimal("0.004"))
    decision = route.decide("a", 0.1, 1.0, day=day)
    route.charge(decision, Decimal("0.008"), day)
    assert not route.admit(day, Decimal("0.004"))
    paused = route.decide("b", 0.1, 1.0, day=day)
    assert paused.paused and not paused.labelled
    figures = route.figures()
    assert figures["cap_reached"] and figures["skipped_for_cap"] == 1
    # A new day starts with an empty budget.
    assert route.admit("2099-01-01", Decimal("0.004"))


def test_a_paused_day_shows_what_was_spent_not_the_cap() -> None:
    """A refusal (a worst case the day's rest cannot hold) pauses the day; `spent_today_usd` stays
    what the verifications cost (it read the cap), and a cap raised since resumes the day."""
    route = calibration(cap="1")
    day = today()
    route.charge(route.decide("a", 0.1, 1.0, day=day), Decimal("0.3"), day)
    route.refuse(day)
    figures = route.figures()
    assert figures["spent_today_usd"] == "0.3" and figures["cap_reached"]
    assert route.exhausted(day) and route.left_today(day) == 0 and route.decide("b", 0.1, 1.0).paused
    route.charge(route.decide("c", 0.1, 1.0, day=day), Decimal("0.1"), day)  # one in flight
    assert route.figures()["spent_today_usd"] == "0.4" and route.exhausted(day)
    stored = route.state.to_json()
    again = calibration(cap="1")
    again.state = LiveState.from_json(orjson.loads(orjson.dumps(stored)))
    assert again.exhausted(day) and again.figures()["spent_today_usd"] == "0.4"
    raised = calibration(cap="2")
    raised.state = LiveState.from_json(orjson.loads(orjson.dumps(stored)))
    assert not raised.exhausted(day) and raised.left_today(day) == Decimal("1.6")
    # A row paused before the pause was kept apart: its spend marked full still pauses the day.
    del stored["paused"]
    stored["budget"]["spent"] = "1"
    old = calibration(cap="1")
    old.state = LiveState.from_json(stored)
    assert old.exhausted(day)


def test_a_router_worse_than_length_is_flagged_and_falls_back_to_length() -> None:
    route = calibration(share=1.0)
    for i in range(3000):
        length = float(i % 100)
        # The router's score says the opposite of the truth: long prompts need the strong model.
        decision = route.decide(f"q{i}", score=1.0 - length / 100, length=length)
        if decision.labelled:
            route.observe(decision, loss=length >= 50)
        if route.state.flagged:
            break
    assert route.state.flagged and "worse than" in route.state.flag_reason
    assert route.state.epoch == 1 and route.state.calibration.strong_share == 1.0
    after = route.decide("after", score=0.0, length=99.0)
    assert after.rank == after.length_rank and route.figures()["ranking"] == "length"


def test_a_flag_restarts_the_calibration_without_the_prior() -> None:
    """The prior's pseudo-outcomes describe the router's ranking: after a fall back to length they
    must not certify cuts of the length ranking (the domain-learning switch drops them too)."""
    settings = QualitySettings(
        target=0.9,
        confidence=0.8,
        prior_outcomes=200,
        verification=VerificationSettings(share=1.0, rest_ratio=1.0, daily_usd_cap=Decimal(5)),
    )
    # A curve that keeps all of the strong model's accuracy at any share: the prior alone certifies.
    curve = (CalibrationPoint(0.0, 1.0, 1.0), CalibrationPoint(1.0, 1.0, 1.0))
    route = RouteCalibration("r", "router", settings, prior=Prior(curve, 0.8))  # type: ignore[arg-type]
    route.cheap, route.strong = "weak", "strong"
    assert route.state.calibration.strong_share < 1.0  # the prior's word
    for i in range(3000):
        length = float(i % 100)
        decision = route.decide(f"q{i}", score=1.0 - length / 100, length=length)
        if decision.labelled:
            route.observe(decision, loss=length >= 50)
        if route.state.flagged:
            break
    assert route.state.flagged and route.state.epoch == 1
    calibration = route.state.calibration
    assert calibration.labelled == 0 and calibration.strong_share == 1.0


def test_the_quality_interval_holds_the_estimate_when_the_cheap_path_does_better() -> None:
    """A prior whose curve keeps more than the strong model's accuracy (the weak model better on
    its training data) puts the estimated quality over 100%: the interval shown around it was
    [estimate - margin, 100%], its lower end above its upper one and the estimate outside it."""
    settings = QualitySettings(
        target=0.9,
        confidence=0.8,
        prior_outcomes=200,
        verification=VerificationSettings(share=1.0, rest_ratio=1.0, daily_usd_cap=Decimal(5)),
    )
    curve = (CalibrationPoint(0.0, 1.2, 1.0), CalibrationPoint(1.0, 1.2, 1.0))
    route = RouteCalibration("r", "router", settings, prior=Prior(curve, 0.8))  # type: ignore[arg-type]
    route.cheap, route.strong = "weak", "strong"
    run(route, 20, wrong=False)
    figures = route.figures()
    assert figures["verifications"] > 0 and figures["estimated_quality"] > 1.0
    low, high = figures["quality_interval"]
    assert 0.0 <= low < figures["estimated_quality"] < high


def test_state_round_trips_through_json() -> None:
    route = calibration()
    run(route, 80, wrong=False)
    copy = LiveState.from_json(route.state.to_json())
    assert copy.to_json() == route.state.to_json()


class FakeStore:
    def __init__(self) -> None:
        self.rows: list[VerificationRow] = []
        self.states: dict[str, tuple[int, str]] = {}
        self.holds: dict[str, dict[str, tuple[str, Decimal, float]]] = {}
        self.spent: dict[tuple[str, str], Decimal] = {}
        # The cap a refusal paused a scope's day at.
        self.paused: dict[tuple[str, str], Decimal] = {}

    async def insert(self, row: VerificationRow) -> None:
        if all(r.verification_id != row.verification_id for r in self.rows):  # idempotent, as the stores
            self.rows.append(row)

    async def recent(self, scope: str | None = None, limit: int = 50) -> list[VerificationRow]:
        return self.rows[::-1][:limit]

    async def cost_nano(self, scope: str, cache: bool = False) -> int:
        return sum(r.cost_nano for r in self.rows if r.scope == scope and (r.kind == "cache") == cache)

    async def load_state(self, scope: str, newer_than: int = 0) -> tuple[int, str] | None:
        stored = self.states.get(scope)
        return stored if stored is not None and stored[0] > newer_than else None

    async def save_state(self, scope: str, expected: int, state: str, now: float) -> bool:
        current = self.states.get(scope, (0, ""))[0]
        if current != expected:
            return False
        self.states[scope] = (expected + 1, state)
        return True

    # The verification caps' ledger, in memory (one process: each call is one transaction).

    async def admit_hold(self, ask: HoldAsk) -> tuple[Verdict, Decimal]:
        holds = self.holds.setdefault(ask.scope, {})
        for hold_id in [k for k, (who, _, at) in holds.items() if ask.lapsed(who, at)]:
            del holds[hold_id]
        spent = self.spent.get((ask.scope, ask.day), Decimal(0))
        held = sum((amount for _, amount, _ in holds.values()), Decimal(0))
        verdict = ask.verdict(spent, held, self.paused.get((ask.scope, ask.day)))
        if verdict == "refused":
            self.paused[ask.scope, ask.day] = max(ask.cap, self.paused.get((ask.scope, ask.day), ask.cap))
        elif verdict == "admitted":
            holds[ask.hold_id] = (ask.instance, ask.amount, ask.now)
            held += ask.amount
        return verdict, held

    async def settle_hold(self, scope: str, hold_id: str, day: str, cost: Decimal) -> Decimal:
        holds = self.holds.setdefault(scope, {})
        if holds.pop(hold_id, None) is not None:
            self.spent[scope, day] = self.spent.get((scope, day), Decimal(0)) + cost
        return sum((amount for _, amount, _ in holds.values()), Decimal(0))

    async def cap_ledger(self, scope: str, day: str) -> tuple[Decimal, dict[str, tuple[str, Decimal]]]:
        holds = self.holds.get(scope, {})
        spent = self.spent.get((scope, day), Decimal(0))
        return spent, {k: (who, amount) for k, (who, amount, _) in holds.items()}


async def test_two_instances_share_one_route_by_compare_and_set() -> None:
    store = FakeStore()
    a, b = calibration(), calibration()
    one, two = QualityService([a], store), QualityService([b], store)
    run(a, 30, wrong=False)
    await one.save("route:r")
    run(b, 30, wrong=False, start=1000)
    # b's save finds a's version: it adopts a's state, replays its own 30 decisions, then writes.
    await two.save("route:r")
    assert b.state.decisions == 60 and not b.journal
    await one.refresh()
    shared = {k: v for k, v in b.state.to_json().items() if k not in ("ranks", "length_ranks")}
    # Score ranks stay each instance's own; everything else is the one shared state.
    assert a.state.decisions == 60 and {k: v for k, v in a.state.to_json().items() if k in shared} == shared
    assert a.state.totals.verifications > 50


class AnswerLost(FakeStore):
    """A store whose next state writes commit and then fail to answer (a connection dropped after
    the commit), as `lose` says."""

    lose = 0

    async def save_state(self, scope: str, expected: int, state: str, now: float) -> bool:
        written = await super().save_state(scope, expected, state, now)
        if written and self.lose:
            self.lose -= 1
            from faregate.store.protocols import StoreUnavailable

            raise StoreUnavailable("connection reset")
        return written


async def test_a_state_write_whose_answer_was_lost_is_counted_once() -> None:
    """The store took the state but its answer was lost: the next load finds it written. The
    changes it held were replayed on it as if they were another instance's to add: every decision,
    outcome and cost of that write counted twice (unlabelled decisions are zeros in every test:
    counted twice, the estimated loss rate fell)."""
    store = AnswerLost()
    route = calibration()
    quality = QualityService([route], store)
    run(route, 10, wrong=True)
    losses = route.state.totals.losses
    assert losses > 0
    store.lose = 1
    with pytest.raises(Exception, match="connection reset"):
        await quality.save("route:r")
    await quality.refresh()  # the periodic refresh: the row is at a version this instance did not see
    assert route.state.decisions == 10 and route.state.totals.losses == losses
    assert not route.journal
    stored = orjson.loads(store.states["route:r"][1])["state"]
    assert stored["decisions"] == 10 and stored["totals"]["losses"] == losses
    # Another instance's write on top of the lost one (it adopted it) is told apart too.
    other = calibration()
    two = QualityService([other], store)
    run(route, 5, wrong=True, start=100)
    losses = route.state.totals.losses
    store.lose = 1
    with pytest.raises(Exception, match="connection reset"):
        await quality.save("route:r")
    await two.load()
    run(other, 3, wrong=False, start=200)
    await two.save("route:r")
    await quality.refresh()
    assert route.state.decisions == 18 and route.state.totals.losses == losses
    assert route.state.to_json()["totals"] == other.state.to_json()["totals"]


async def test_while_the_store_is_down_the_unsaved_changes_stop_growing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Every decision's change waits in the journal until the store takes the state: while the store
    was down the journal grew by ~1.5 KB a decision (a semantic lookup ~350 B) without bound. Past
    MAX_UNSAVED, decisions take the cut in force but are neither labelled nor counted and lookups
    are not counted (a stretch skipped for the store's sake, as while the cap pauses the day);
    once saved, both are again."""
    from faregate.learning.online.settings import SemanticAcceptanceSettings
    from faregate.quality import state as quality_state
    from faregate.quality.cache_live import CacheCalibration
    from faregate.store.protocols import StoreUnavailable

    monkeypatch.setattr(quality_state, "MAX_UNSAVED", 40)

    class Flaky(FakeStore):
        down = True

        async def save_state(self, scope: str, expected: int, state: str, now: float) -> bool:
            if self.down:
                raise StoreUnavailable("connection refused")
            return await super().save_state(scope, expected, state, now)

    store = Flaky()
    route = calibration()
    cache = CacheCalibration(SemanticAcceptanceSettings(), "exact")
    service = QualityService([route], store, cache)
    decisions = [route.decide(f"req{i}", (i * 0.37) % 1.0, 10.0) for i in range(100)]
    counted = [cache.looked_up(0.9, False) for _ in range(100)]
    with pytest.raises(StoreUnavailable):
        await service.refresh()
    assert len(route.journal) == 40 and route.state.decisions == 40
    assert not any(d.paused for d in decisions[:40]) and any(d.labelled for d in decisions[:40])
    assert all(d.paused and not d.labelled for d in decisions[40:])
    assert len(cache.journal) == 40 and cache.state.lookups == 40 and counted == [True] * 40 + [False] * 60
    store.down = False
    await service.refresh()
    assert not route.journal and not cache.journal
    again = route.decide("after", 0.5, 10.0)
    assert not again.paused and route.state.decisions == 41
    assert cache.looked_up(0.9, False) and cache.state.lookups == 41


async def test_a_restart_keeps_the_state_and_changed_settings_start_afresh(tmp_path: Path) -> None:
    from faregate.store.sqlite.analytics import SQLiteAnalytics
    from faregate.store.sqlite.verifications import SQLiteVerifications

    store = await SQLiteStore.open(tmp_path)
    reads = await SQLiteAnalytics.open(store.path)
    try:
        table = SQLiteVerifications(reads.connection)
        route = calibration()
        run(route, 120, wrong=False)
        service = QualityService([route], table)
        await service.save("route:r")
        await table.insert(
            VerificationRow(
                "req1", "r", "router", "paid", "cheap", 0.2, 0.5, "exact", "loss", "strong", 7, time.time()
            )
        )
        again = calibration()
        await QualityService([again], table).load()
        assert again.state.to_json() == route.state.to_json()
        other = calibration(target=0.8)
        await QualityService([other], table).load()
        assert other.state.decisions == 0
        rows = await table.recent("r")
        assert rows[0].cost_nano == 7 and rows[0].outcome == "loss"
        assert await table.cost_nano("r") == 7 and await table.cost_nano("cache", cache=True) == 0
        # A route may be named "cache": its rows and the semantic cache's are told apart by kind.
        for kind, cost in (("router", 5), ("cache", 3)):
            await table.insert(
                VerificationRow("q", "cache", kind, "paid", "x", 0.9, 1.0, "exact", "loss", None, cost, 1.0)
            )
        assert await table.cost_nano("cache") == 5 and await table.cost_nano("cache", cache=True) == 3
    finally:
        await reads.close()
        await store.close()


def test_metrics_families() -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    route = calibration()
    run(route, 120, wrong=False)
    registry = CollectorRegistry()
    registry.register(QualityCollector(lambda: [route.figures()]))
    text = generate_latest(registry).decode()
    for family in (
        'faregate_quality_target{route="r"} 0.9',
        'faregate_strong_share{route="r"}',
        'faregate_quality_evidence{route="r"}',
        'faregate_verifications_total{kind="cheap",route="r"}',
        'faregate_verification_cost_usd_total{route="r"} 0.0',
        'faregate_router_flagged{route="r"} 0.0',
    ):
        assert family in text


def test_the_caches_verification_kinds_are_the_documented_ones() -> None:
    """The semantic cache labels free (unserved candidates) or paid (verified hits): its counter
    had a third series, kind="cheap", always 0 and in no documentation, in /metrics and
    /admin/quality, from the route totals' label kinds it shares."""
    from prometheus_client import CollectorRegistry, generate_latest

    from faregate.learning.online.settings import SemanticAcceptanceSettings
    from faregate.quality.cache_live import CacheCalibration

    cache = CacheCalibration(SemanticAcceptanceSettings(max_wrong_hit_rate=0.01), "exact")
    cache.count_label("paid")
    assert cache.figures()["by_label"] == {"free": 0, "paid": 1}
    registry = CollectorRegistry()
    registry.register(QualityCollector(lambda: [], cache.figures))
    text = generate_latest(registry).decode()
    kinds = re.findall(r'faregate_cache_verifications_total\{kind="(\w+)"\}', text)
    assert sorted(kinds) == ["free", "paid"]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "faregate.yaml"
    path.write_text(text)
    return path


ROUTER = Path(__file__).resolve().parents[1] / "routers" / "router-gsm8k.json"


def test_config_takes_quality_on_router_routes_and_refuses_bad_ones(tmp_path: Path) -> None:
    ok = f"""
models:
  strong: {{input: 10, output: 30}}
  weak: {{input: 1, output: 1}}
routes:
  r:
    router: {{file: {ROUTER}, strong: strong, weak: weak}}
    quality: {{target: 0.9, verification: {{share: 0.1, daily_usd_cap: "2.5", comparator: exact}}}}
"""
    settings = load_settings(write(tmp_path, ok))
    quality = settings.routes["r"].quality
    assert quality is not None and quality.verification.daily_usd_cap == Decimal("2.5")
    bad = {
        "unknown key": ok.replace("target: 0.9", "target: 0.9, tagret: 1"),
        "threshold with quality": ok.replace("weak: weak}", "weak: weak, threshold: 0.3}"),
        "comparator": ok.replace("comparator: exact", "comparator: vibes"),
        "judge without a model": ok.replace("comparator: exact", "comparator: llm_judge"),
        "a model without the judge": ok.replace(
            "comparator: exact", "comparator: exact, judge_model: strong"
        ),
        "target": ok.replace("target: 0.9", "target: 1.5"),
        "plain route": ok.replace(
            f"router: {{file: {ROUTER}, strong: strong, weak: weak}}", "chain: [strong]"
        ),
    }
    for what, text in bad.items():
        with pytest.raises(ConfigError):
            load_settings(write(tmp_path, text))
        assert what


async def test_the_cache_takes_an_llm_judge_with_its_model_only(tmp_path: Path) -> None:
    from faregate.route_config import check_cache_judge

    ok = """
models:
  judge-m: {input: 1, output: 2}
cache:
  semantic: {enabled: true, max_wrong_hit_rate: 0.01, comparator: llm_judge, judge_model: judge-m}
"""
    semantic = load_settings(write(tmp_path, ok)).cache.semantic
    assert semantic.comparator == "llm_judge" and semantic.judge_model == "judge-m"
    check_cache_judge(semantic, lambda name: name == "judge-m")
    with pytest.raises(ConfigError, match="unknown model or route 'judge-m'"):
        check_cache_judge(semantic, lambda name: False)
    # The gateway refuses to start with a judge it cannot call.
    from faregate.server.app import build_gateway

    unknown = load_settings(
        write(tmp_path, ok.replace("judge_model: judge-m", "judge_model: nosuch")),
        overrides={"store": {"path": str(tmp_path / "store")}},
    )
    with pytest.raises(ConfigError, match=r"cache\.semantic\.judge_model: unknown model or route 'nosuch'"):
        await build_gateway(unknown)
    # A misspelt judge: the model meant, as an unknown model elsewhere in the config is told.
    typo = load_settings(
        write(tmp_path, ok.replace("judge_model: judge-m", "judge_model: judge-n")),
        overrides={"store": {"path": str(tmp_path / "store")}},
    )
    with pytest.raises(ConfigError, match=r"unknown model or route 'judge-n'; did you mean judge-m\b"):
        await build_gateway(typo)
    bad = {
        "judge without a model": ok.replace(", judge_model: judge-m", ""),
        "a model without the judge": ok.replace("comparator: llm_judge", "comparator: exact"),
    }
    for what, text in bad.items():
        with pytest.raises(ConfigError, match="the llm_judge comparator takes a judge_model"):
            load_settings(write(tmp_path, text))
        assert what


async def test_quality_alert_rules_fire_per_route() -> None:
    from typing import Any, cast

    from faregate.config import AlertRule, AlertSettings
    from faregate.telemetry.alerts import AlertManager

    flagged = calibration()
    flagged.state.flagged = True
    capped = calibration(cap="0")
    capped.route = "c"
    assert not capped.admit(today(), Decimal("0.001"))
    rules = [
        AlertRule(name="flagged", metric="router_flagged", above=0.5, per="route"),
        AlertRule(name="cap", metric="verification_cap_reached", above=0.5, per="route"),
        AlertRule(name="margin", metric="quality_margin", below=0.0, min_count=1),
    ]
    manager = AlertManager(AlertSettings(rules=rules), cast(Any, None))
    manager.quality = lambda: [flagged.figures(), capped.figures()]
    events = await manager.evaluate()
    fired = {(e["rule"], e["labels"]["route"]) for e in events}
    assert ("flagged", "r") in fired and ("cap", "c") in fired
    assert not any(name == "margin" for name, _ in fired)  # no verification yet: nothing to say
    with pytest.raises(ConfigError):
        from faregate.config import Settings, check_alerts

        check_alerts(
            AlertSettings(rules=[AlertRule(name="x", metric="router_flagged", above=0, per="key")]), "t", ()
        )
        assert Settings


def test_the_cache_acceptance_serves_nothing_until_labels_certify_a_threshold() -> None:
    from faregate.learning.online.settings import SemanticAcceptanceSettings
    from faregate.quality.cache_live import NOTHING, CacheCalibration

    cache = CacheCalibration(SemanticAcceptanceSettings(max_wrong_hit_rate=0.05, confidence=0.8), "exact")
    assert cache.threshold() == NOTHING and cache.figures()["threshold"] is None
    for _ in range(60):
        cache.looked_up(0.93, served=False)
        cache.observe(0.93, wrong=False)
        cache.looked_up(None, served=False)
    assert 0.8 <= cache.threshold() <= 0.93
    figures = cache.figures()
    assert figures["wrong_hit_bound"] <= 0.05 and figures["labelled"] == 60
    # A wrong answer at that similarity costs the threshold.
    for _ in range(5):
        cache.observe(0.93, wrong=True)
    assert cache.threshold() == NOTHING or cache.threshold() > 0.93
    again = CacheCalibration(SemanticAcceptanceSettings(max_wrong_hit_rate=0.05, confidence=0.8), "exact")
    again.adopt_json(cache.state_json())
    assert again.figures() == cache.figures()
    assert cache.verify_hit("req") in (True, False)


def test_score_ranks_kept_sorted_in_place_match_a_full_sort() -> None:
    from faregate.learning.online.calibrator import ScoreRanks

    kept = ScoreRanks(reference=[0.1, 0.5, 0.9])
    kept.min_live = 50
    kept.recent = type(kept.recent)(maxlen=200)
    for i in range(1000):
        score = ((i * 7919) % 1000) / 1000.0
        probe = ((i * 104729) % 997) / 997.0
        fresh = ScoreRanks(type(kept.recent)(kept.recent, maxlen=200), list(kept.reference), min_live=50)
        assert kept.rank(probe) == fresh.rank(probe)
        kept.record(score)


def test_a_wrong_label_makes_its_entries_stricter() -> None:
    from faregate.learning.online.settings import SemanticAcceptanceSettings
    from faregate.quality.cache_live import CacheCalibration

    cache = CacheCalibration(SemanticAcceptanceSettings(max_wrong_hit_rate=0.05), "exact")
    cache.observe(0.95, wrong=False, entries=("a", "b"))
    assert not cache.conflicted("a", 0.95)
    cache.observe(0.93, wrong=True, entries=("a", "new"))
    assert cache.conflicted("a", 0.94) and cache.conflicted("new", 0.95)
    assert not cache.conflicted("a", 0.96) and not cache.conflicted("b", 0.90)
    again = CacheCalibration(SemanticAcceptanceSettings(max_wrong_hit_rate=0.05), "exact")
    again.adopt_json(cache.state_json())
    assert again.conflicted("a", 0.94) and again.figures()["conflicts"] == 2


def _domains(seed: int = 0) -> tuple[np.random.Generator, Callable[[int], tuple[int, Vector]]]:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((2, 16))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)

    def prompt(i: int) -> tuple[int, Vector]:
        domain = i % 2
        vector = centres[domain] + 0.1 * rng.standard_normal(16)
        return domain, (vector / np.linalg.norm(vector)).astype(np.float32)

    return rng, prompt


def learning(learn: bool) -> RouteCalibration:
    settings = QualitySettings(
        target=0.9,
        confidence=0.8,
        verification=VerificationSettings(share=1.0, rest_ratio=1.0),
        learn_domains=learn,
        domain_examples=300,
    )
    route = RouteCalibration("r", "router", settings)
    route.cheap, route.strong = "weak", "strong"
    return route


def drive_domains(route: RouteCalibration, n: int) -> None:
    """Domain 1's cheap answers are wrong, domain 0's right; the prior says the opposite (with
    enough noise that the length check does not flag it first)."""
    rng, prompt = _domains()
    for i in range(n):
        domain, vector = prompt(i)
        score = (0.6 if domain == 0 else 0.4) + 0.5 * float(rng.random())
        decision = route.decide(f"q{i}", score=score, length=50.0, vector=vector)
        if decision.labelled:
            route.observe(decision, loss=domain == 1)


def test_learn_domains_switches_a_wrong_prior_to_the_frozen_learned_ranking() -> None:
    route = learning(True)
    drive_domains(route, 1200)
    figures = route.figures()
    assert figures["ranking"] == "learned" and figures["switches"] >= 1, figures
    assert figures["epoch"] >= 1 and figures["learn_domains"]
    assert figures["domain_examples"] == 300  # bounded by the setting
    # The learned ranking puts the domain whose cheap answers fail above the other.
    _, prompt = _domains(1)
    ranks = {d: route.decide(f"p{d}", 0.5, 50.0, vector=prompt(d)[1]).rank for d in (0, 1)}
    assert ranks[1] > ranks[0]
    # The state (the frozen evidence included) round-trips, compactly.
    data = route.state.to_json()
    assert LiveState.from_json(data).to_json() == data
    assert len(orjson.dumps(data)) < 2 * 300 * 1100 + 200_000
    assert "learn=300" in route.fingerprint()
    rows = list(QualityCollector(lambda: [figures]).collect())
    ranking = next(m for m in rows if m.name == "faregate_router_ranking")
    assert {s.labels["ranking"]: s.value for s in ranking.samples} == {"prior": 0, "learned": 1, "length": 0}


def test_without_learn_domains_the_prior_stays_in_force() -> None:
    route = learning(False)
    drive_domains(route, 1200)
    figures = route.figures()
    assert figures["ranking"] in ("prior", "length") and figures["switches"] == 0
    assert figures["challenger_evidence"] is None and figures["domain_examples"] == 0


def test_learn_domains_is_for_router_routes_only(tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    config.write_text(
        "models: {a: {input: 1, output: 1}, b: {input: 2, output: 2}}\n"
        "routes:\n  c:\n    cascade: {steps: [a, b]}\n    quality: {learn_domains: true}\n",
        encoding="utf-8",
    )
    # Refused when the file is loaded, with every other quality rule (route_config.py).
    with pytest.raises(ConfigError, match="learn_domains"):
        load_settings(config)


def test_a_switch_made_by_one_instance_is_taken_by_another() -> None:
    one, other = learning(True), learning(True)
    _, prompt = _domains(2)
    for i in range(50):  # the other instance has its own recent scores of the prior's ranking
        other.decide(f"o{i}", 0.1 * (i % 10), 50.0, vector=prompt(i)[1])
    drive_domains(one, 1200)
    assert one.figures()["ranking"] == "learned"
    other.journal.clear()
    other.adopt_json(one.state_json())
    figures = other.figures()
    assert figures["ranking"] == "learned" and figures["epoch"] == one.state.epoch
    # The new ranking's rank window comes with it (not the prior's scores this instance kept).
    assert other.state.ranks.to_json() == one.state.ranks.to_json()
    vector = prompt(1)[1]
    assert other.decide("x", 0.5, 50.0, vector=vector).rank == one.decide("x", 0.5, 50.0, vector=vector).rank


def test_domain_examples_must_leave_room_for_the_test() -> None:
    with pytest.raises(ValueError, match="domain_examples"):
        QualitySettings(learn_domains=True, domain_examples=50)


async def test_a_promised_verification_is_pending_until_it_is_submitted_or_let_go() -> None:
    # The pipeline promises a verification before the client can have its answer, so "nothing
    # pending" read by a client holding every answer means every verification is done.
    from typing import Any, cast

    from faregate.quality.verifier import Verifier

    verifier = Verifier(QualityService([], FakeStore()), cast(Any, None), cast(Any, None))
    assert verifier.pending == 0
    verifier.promise()
    verifier.promise()
    assert verifier.pending == 2
    verifier.let_go()  # a client gone before its answer was written: dropped
    assert verifier.pending == 1
    verifier.let_go()
    assert verifier.pending == 0


async def test_decisions_with_the_searches_off_the_loop_are_the_same_as_on_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from faregate.quality import route_decisions

    monkeypatch.setattr(route_decisions, "OFF_LOOP_EXAMPLES", 0)  # every decision's searches on the worker
    on, off = learning(True), learning(True)
    rng, prompt = _domains()
    for i in range(1200):
        domain, vector = prompt(i)
        score = (0.6 if domain == 0 else 0.4) + 0.5 * float(rng.random())
        inline = on.decide(f"q{i}", score=score, length=50.0, vector=vector)
        moved = await off.decide_off_loop(f"q{i}", score, 50.0, vector)
        assert (moved.rank, moved.challenger_rank, moved.cheap, moved.labelled) == (
            inline.rank,
            inline.challenger_rank,
            inline.cheap,
            inline.labelled,
        )
        if inline.labelled:
            on.observe(inline, loss=domain == 1)
            off.observe(moved, loss=domain == 1)
    assert off.figures()["switches"] >= 1  # the frozen ranking's search ran off the loop too
    assert off.state.to_json() == on.state.to_json()


async def test_a_switch_made_while_the_searches_run_scores_again_on_the_new_ranking(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from concurrent.futures import Future, ThreadPoolExecutor

    from faregate.quality import route_decisions

    route, twin = learning(True), learning(True)
    _, prompt = _domains(3)
    for i in range(40):
        for r in (route, twin):
            r.state.switch.evidence.add(prompt(i)[1], 1 if i % 2 else -1, 1.0)

    class SwitchingMeanwhile(ThreadPoolExecutor):
        """The challenger wins while the searches run (another verification came back)."""

        def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
            route.switch.switch(route.state.switch)
            return super().submit(fn, *args, **kwargs)

    with SwitchingMeanwhile(1) as worker:
        monkeypatch.setattr(route_decisions, "OFF_LOOP_EXAMPLES", 0)
        monkeypatch.setattr(route_decisions, "_neighbours", lambda: worker)
        vector = prompt(1)[1]
        moved = await route.decide_off_loop("x", 0.9, 50.0, vector)
    twin.switch.switch(twin.state.switch)
    inline = twin.decide("x", 0.9, 50.0, vector=vector)
    # Ranked by the frozen evidence now in force, not by the prior the copies were taken under.
    assert moved.router_rank == inline.router_rank and moved.challenger_rank == inline.challenger_rank
    assert route.state.ranks.to_json() == twin.state.ranks.to_json()


def test_a_view_built_from_copies_is_kept_only_if_nothing_was_added_meanwhile() -> None:
    route = learning(True)
    _, prompt = _domains(4)
    switch = route.state.switch
    for i in range(10):
        switch.evidence.add(prompt(i)[1], 1 if i % 3 else -1, 1.0 + i)
    stale = route.switch.scoring(switch, 0.5, prompt(11)[1])
    stale.run()
    switch.evidence.add(prompt(12)[1], 1, 1.0)  # a verification came back meanwhile
    stale.keep(switch)
    assert switch.evidence.built() is None
    vector = prompt(13)[1]
    job = route.switch.scoring(switch, 0.5, vector)
    scores = job.run()
    job.keep(switch)
    assert job.built is not None and switch.evidence.built() is job.built[1]
    assert scores == (0.5, route.switch.challenger_score(switch, 0.5, vector))


def test_spent_today_is_todays_spend_not_the_last_day_that_had_one() -> None:
    route = calibration(cap="1")
    yesterday = today(time.time() - 86_400)
    route.charge(route.decide("a", 0.1, 1.0, day=yesterday), Decimal("0.4"), yesterday)
    route.refuse(yesterday)  # yesterday's cap was reached
    figures = route.figures()
    assert not figures["cap_reached"]
    assert figures["spent_today_usd"] == "0"
    today_ = today()
    route.charge(route.decide("b", 0.1, 1.0, day=today_), Decimal("0.25"), today_)
    assert route.figures()["spent_today_usd"] == "0.25"


def test_a_verification_of_yesterday_charged_after_midnight_leaves_todays_spend_and_pause() -> None:
    """A verification admitted at 23:59 UTC and charged after one admitted at 00:00 (shadow calls take
    seconds): its cost is yesterday's, in the totals, and neither wipes today's spend nor lifts
    today's pause; a refusal of yesterday does not pause today."""
    from faregate.learning.online.settings import SemanticAcceptanceSettings
    from faregate.quality.cache_live import CacheCalibration

    route = calibration(cap="1")
    now = time.time()
    yesterday, today_ = today(now - 86_400), today(now)
    route.charge(route.decide("a", 0.1, 1.0, day=today_), Decimal("0.25"), today_)
    route.charge(route.decide("b", 0.1, 1.0, day=yesterday), Decimal("0.5"), yesterday)
    assert route.figures()["spent_today_usd"] == "0.25"
    assert route.state.totals.cost_nano == 750_000_000
    route.refuse(today_)
    route.charge(route.decide("c", 0.1, 1.0, day=yesterday), Decimal("0.5"), yesterday)
    assert route.exhausted(today_) and route.figures()["cap_reached"]
    fresh = calibration(cap="1")
    fresh.charge(fresh.decide("d", 0.1, 1.0, day=today_), Decimal("0.25"), today_)
    fresh.refuse(yesterday)
    assert not fresh.exhausted(today_) and fresh.left_today(today_) == Decimal("0.75")

    cache = CacheCalibration(SemanticAcceptanceSettings(daily_usd_cap=Decimal(1)), "exact")
    cache.charge(Decimal("0.25"), today_)
    cache.charge(Decimal("0.5"), yesterday)
    assert cache.left_today(today_) == Decimal("0.75")
    cache.refuse(today_)
    cache.charge(Decimal("0.5"), yesterday)
    assert cache.exhausted(today_)


def test_verification_cost_in_nano_usd_is_rounded_as_the_request_records_round_it() -> None:
    from faregate.store.rows import to_nanousd

    # A price finer than 3 decimals per 1M tokens leaves a sub-nano remainder: $0.0075/1M x 5 tokens.
    cost = Decimal("0.0075") * 5 / 1_000_000
    route = calibration()
    day = today()
    route.charge(route.decide("a", 0.1, 1.0, day=day), cost, day)
    assert route.state.totals.cost_nano == to_nanousd(cost) == 38  # 37.5 nano, half-even, not 37


def test_a_daily_cap_that_is_not_a_finite_amount_is_a_config_error(tmp_path: Path) -> None:
    ok = f"""
models:
  strong: {{input: 10, output: 30}}
  weak: {{input: 1, output: 1}}
routes:
  r:
    router: {{file: {ROUTER}, strong: strong, weak: weak}}
    quality: {{verification: {{daily_usd_cap: "2.5"}}}}
cache:
  semantic: {{max_wrong_hit_rate: 0.01, daily_usd_cap: "1"}}
"""
    load_settings(write(tmp_path, ok))
    for cap in ("NaN", "sNaN", "Infinity", "-Infinity"):
        for bad in (
            ok.replace('daily_usd_cap: "2.5"', f'daily_usd_cap: "{cap}"'),
            ok.replace('daily_usd_cap: "1"', f'daily_usd_cap: "{cap}"'),
        ):
            with pytest.raises(ConfigError, match="daily_usd_cap"):
                load_settings(write(tmp_path, bad))


async def test_a_save_cancelled_after_the_store_wrote_is_not_counted_twice() -> None:
    """At shutdown the state refresh is cancelled, possibly while the store is writing (aiosqlite's
    thread, or PostgreSQL, goes on with it): the write lands, its caller never hears. The last
    save must not replay on top of that write the changes it already holds."""
    import asyncio

    class SlowReply(FakeStore):
        def __init__(self) -> None:
            super().__init__()
            self.reply = asyncio.Event()

        async def save_state(self, scope: str, expected: int, state: str, now: float) -> bool:
            written = await super().save_state(scope, expected, state, now)
            await self.reply.wait()  # written; the answer is still on its way
            return written

    store = SlowReply()
    route = calibration()
    service = QualityService([route], store)
    run(route, 30, wrong=False)
    saving = asyncio.create_task(service.save("route:r"))
    await asyncio.sleep(0.01)
    saving.cancel()  # the shutdown
    with pytest.raises(asyncio.CancelledError):
        await saving
    store.reply.set()
    await service.save("route:r")  # QualityService.close's
    assert route.state.decisions == 30
    again = calibration()
    await QualityService([again], store).load()
    assert (
        again.state.decisions == 30 and again.state.totals.verifications == route.state.totals.verifications
    )


async def test_a_stored_calibration_of_other_models_starts_afresh(tmp_path: Path) -> None:
    """The cut certified that *this* cheap model keeps the target against *this* strong one: a route
    whose models were changed in the config does not inherit it (a row written before the models
    were kept with it is adopted as before)."""
    from faregate.store.sqlite.analytics import SQLiteAnalytics
    from faregate.store.sqlite.verifications import SQLiteVerifications

    store = await SQLiteStore.open(tmp_path)
    reads = await SQLiteAnalytics.open(store.path)
    try:
        table = SQLiteVerifications(reads.connection)
        route = calibration()
        run(route, 120, wrong=False)
        assert route.cut > 0
        await QualityService([route], table).save("route:r")
        same = calibration()
        await QualityService([same], table).load()
        assert same.state.decisions == 120 and same.cut == route.cut
        for cheap, strong in (("other-weak", "strong"), ("weak", "other-strong")):
            swapped = calibration()
            swapped.cheap, swapped.strong = cheap, strong
            await QualityService([swapped], table).load()
            assert swapped.state.decisions == 0 and swapped.cut == 0.0, (cheap, strong)
        # A retrained or replaced router (or cascade judge) ranks otherwise: its cuts, its health
        # flag (the fallback to length), are the old scorer's.
        retrained = calibration()
        retrained.scorer = "another-scorer"
        await QualityService([retrained], table).load()
        assert retrained.state.decisions == 0
        # A row written before the models were kept in it: taken as it is.
        version, text = await table.load_state("route:r") or (0, "")
        data = orjson.loads(text)
        data.pop("models", None)
        assert await table.save_state("route:r", version, orjson.dumps(data).decode(), time.time())
        legacy = calibration()
        await QualityService([legacy], table).load()
        assert legacy.state.decisions == 120
    finally:
        await reads.close()
        await store.close()


def test_a_scorers_digest_is_its_weights_not_its_path(tmp_path: Path) -> None:
    from faregate.learning.model_file import load_model_file

    source = Path(__file__).resolve().parents[1] / "routers" / "router-gsm8k.json"
    data = orjson.loads(source.read_bytes())
    kind, text = data["kind"], tuple(data["features"]["text"])
    moved = tmp_path / "moved.json"
    moved.write_bytes(source.read_bytes())
    assert load_model_file(source, kind, text).digest() == load_model_file(moved, kind, text).digest()
    data["model"]["bias"] = float(data["model"]["bias"]) + 0.5
    data["training"] = {}
    retrained = tmp_path / "retrained.json"
    retrained.write_bytes(orjson.dumps(data))
    assert load_model_file(retrained, kind, text).digest() != load_model_file(source, kind, text).digest()


async def test_quality_figures_write_money_as_positional_decimal_text() -> None:
    """/admin/quality's money is exact positional text, as the dashboard API's is: a verification
    of 22 cents per million was "2.2E-7" (Decimal's str), which a script reading the JSON as decimal
    text, or comparing it, does not take for 0.00000022."""
    from types import SimpleNamespace

    from faregate.learning.online.settings import SemanticAcceptanceSettings
    from faregate.quality.cache_live import CacheCalibration
    from faregate.server.quality_api import quality_figures

    store = FakeStore()
    route = calibration()
    day = today()
    route.charge(route.decide("a", 0.1, 1.0, day=day), Decimal("0.00000022"), day)
    cache = CacheCalibration(SemanticAcceptanceSettings(max_wrong_hit_rate=0.05), "exact")
    service = QualityService([route], store, cache)
    await store.insert(
        VerificationRow("a", "r", "router", "cheap", "cheap", 0.1, 1.0, "exact", "acceptable", None, 220, 0.0)
    )
    await store.insert(
        VerificationRow(
            "b", "cache", "cache", "cheap", "served", 0.9, 1.0, "exact", "acceptable", None, 5, 0.0
        )
    )
    verifier = SimpleNamespace(service=service, pending=0)
    gateway = SimpleNamespace(pipeline=SimpleNamespace(verifier=verifier), shared_metrics=None)
    gateway.observability = None
    body = await quality_figures(gateway)  # type: ignore[arg-type]
    figures = body["routes"][0]
    assert figures["verification_cost_usd"] == "0.00000022"
    assert figures["spent_today_usd"] == "0.00000022"
    assert body["cache"]["verification_cost_usd"] == "0.000000005"
    assert [r["cost_usd"] for r in body["recent"]] == ["0.000000005", "0.00000022"]
    assert route.figures()["verification_cost_usd"] == "0.00000022"


async def test_a_stored_calibration_labelled_by_another_judge_starts_afresh() -> None:
    """With the llm_judge comparator the judge model is the standard every label was read by: a
    route whose judge_model was changed does not inherit the cuts the old judge's verdicts
    certified (the comparator's name alone was in the settings the row was made under)."""

    def judged(judge: str) -> RouteCalibration:
        settings = QualitySettings(
            target=0.9,
            confidence=0.8,
            verification=VerificationSettings(
                share=1.0, rest_ratio=1.0, comparator="llm_judge", judge_model=judge
            ),
        )
        route = RouteCalibration("r", "router", settings)
        route.cheap, route.strong = "weak", "strong"
        return route

    store = FakeStore()
    lenient = judged("small-judge")
    run(lenient, 120, wrong=False)
    assert lenient.cut > 0
    await QualityService([lenient], store).save("route:r")
    same = judged("small-judge")
    await QualityService([same], store).load()
    assert same.state.decisions == 120 and same.cut == lenient.cut
    strict = judged("large-judge")
    await QualityService([strict], store).load()
    assert strict.state.decisions == 0 and strict.cut == 0.0


async def test_a_verification_row_the_store_refused_is_written_once_it_is_back(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A verification's row is its outcome and its real cost (the verification cost shown is the
    rows' sum): one the store could not take (an outage) was logged and lost, the money already in
    the cap's ledger. Now it waits and is written, in order, by the next refresh; past the bound the
    oldest are given up and counted, as those still waiting at a clean stop."""
    from faregate.quality import service as quality_service
    from faregate.store.protocols import StoreUnavailable

    class Down(FakeStore):
        down = True

        async def insert(self, row: VerificationRow) -> None:
            if self.down:
                raise StoreUnavailable("connection refused")
            await super().insert(row)

    def row(request_id: str, cost: int) -> VerificationRow:
        return VerificationRow(
            request_id, "r", "router", "paid", "cheap", 0.2, 0.5, "exact", "loss", "strong", cost, 1.0
        )

    store = Down()
    service = QualityService([calibration()], store)
    await service.record(row("a", 7))
    await service.record(row("b", 5))
    assert store.rows == [] and service.rows_pending == 2 and service.rows_lost == 0
    store.down = False
    await service.refresh()
    assert [r.request_id for r in store.rows] == ["a", "b"] and service.rows_pending == 0
    assert await store.cost_nano("r") == 12

    monkeypatch.setattr(quality_service, "MAX_UNRECORDED", 2)
    store.down = True
    for request_id in ("c", "d", "e"):
        await service.record(row(request_id, 1))
    assert service.rows_pending == 2 and service.rows_lost == 1
    await service.close()
    assert service.rows_pending == 0 and service.rows_lost == 3


async def test_a_route_named_cache_keeps_its_state_apart_from_the_semantic_caches() -> None:
    """A route may be named "cache" (its rows are told from the cache's by kind): its calibration
    and the semantic cache's were one entry of the service, so the route's state was never saved
    nor refreshed (its journal grew until decisions stopped being labelled) and a save of "cache"
    wrote the cache's. Each is now its own row: "route:cache" and "cache"."""
    from faregate.learning.online.settings import SemanticAcceptanceSettings
    from faregate.quality.cache_live import CacheCalibration

    store = FakeStore()
    route = RouteCalibration("cache", "router", calibration().settings)
    route.cheap, route.strong = "weak", "strong"
    cache = CacheCalibration(SemanticAcceptanceSettings(), "exact")
    service = QualityService([route], store, cache)
    run(route, 50, wrong=False)
    assert cache.looked_up(0.9, False)
    await service.refresh()
    assert not route.journal and not cache.journal
    assert sorted(store.states) == ["cache", "route:cache"]
    again = RouteCalibration("cache", "router", calibration().settings)
    again.cheap, again.strong = "weak", "strong"
    cache_again = CacheCalibration(SemanticAcceptanceSettings(), "exact")
    await QualityService([again], store, cache_again).load()
    assert again.state.decisions == 50 and cache_again.state.lookups == 1


async def test_a_stored_cascade_calibration_made_under_other_rule_checks_starts_afresh() -> None:
    """A cascade's rule checks (and required_pattern) decide which cheap answers are forced to the
    strong model whatever their rank: the cut certified under one rule set was measured on another
    decision rule than a changed one makes. The order the checks are listed in decides nothing, and
    a row made under the default checks before they were kept in the settings is adopted."""
    from faregate.route_config import CascadeSettings, JudgeSettings, RouteSettings
    from faregate.routing.policies import RoutePolicies

    def cascade(judge: JudgeSettings) -> RouteCalibration:
        settings = QualitySettings(
            target=0.9, confidence=0.8, verification=VerificationSettings(share=1.0, rest_ratio=1.0)
        )
        route = RouteSettings(
            cascade=CascadeSettings(steps=["weak", "strong"], judge=judge), quality=settings
        )
        return RoutePolicies({"r": route}).calibrations["r"]

    store = FakeStore()
    default = cascade(JudgeSettings())
    run(default, 120, wrong=False)
    assert default.cut > 0
    await QualityService([default], store).save("route:r")
    # The defaults, listed in another order: the same decision rule.
    reordered = cascade(JudgeSettings(checks=["json", "refusal", "truncated", "empty"]))
    await QualityService([reordered], store).load()
    assert reordered.state.decisions == 120 and reordered.cut == default.cut
    for changed in (
        JudgeSettings(checks=["empty", "truncated", "refusal", "json", "final_number"]),
        JudgeSettings(checks=["empty"]),
        JudgeSettings(required_pattern=r"Answer: \d+"),
    ):
        other = cascade(changed)
        await QualityService([other], store).load()
        assert other.state.decisions == 0 and other.cut == 0.0, changed


def test_a_paused_cache_keeps_its_spend_and_a_raised_cap_leaves_the_rest() -> None:
    """As a route's: the semantic cache's refusal pauses the day apart from what was spent, so a cap
    raised since leaves the raised cap less the real spend (it marked the spend as the whole cap,
    so raising $1 to $2 left $1, not $1.70); a row paused the old way still reads as paused."""
    from faregate.learning.online.settings import SemanticAcceptanceSettings
    from faregate.quality.cache_live import CacheCalibration

    def cache(cap: str) -> CacheCalibration:
        return CacheCalibration(
            SemanticAcceptanceSettings(max_wrong_hit_rate=0.01, daily_usd_cap=Decimal(cap)), "exact"
        )

    paused, day = cache("1"), today()
    paused.charge(Decimal("0.3"), day)
    paused.refuse(day)
    assert paused.exhausted(day) and paused.left_today(day) == 0 and paused.figures()["cap_reached"]
    assert paused.budget.spent == Decimal("0.3")
    stored = orjson.loads(orjson.dumps(paused.state_json()))
    again = cache("1")
    again.adopt_json(stored)
    assert again.exhausted(day) and again.left_today(day) == 0
    raised = cache("2")
    raised.adopt_json(stored)
    assert not raised.exhausted(day) and raised.left_today(day) == Decimal("1.7")
    # A row paused before the pause was kept apart: its spend marked full still pauses the day.
    del stored["paused"]
    stored["budget"]["spent"] = "1"
    old = cache("1")
    old.adopt_json(stored)
    assert old.exhausted(day)


async def test_a_verification_row_whose_insert_answer_was_lost_is_written_once(tmp_path: Path) -> None:
    from faregate.store.sqlite.analytics import SQLiteAnalytics
    from faregate.store.sqlite.verifications import SQLiteVerifications

    store = await SQLiteStore.open(tmp_path)
    reads = await SQLiteAnalytics.open(store.path)
    try:
        await row_written_once_when_retried(SQLiteVerifications(reads.connection))
    finally:
        await reads.close()
        await store.close()


async def row_written_once_when_retried(table: Any) -> None:
    """A row whose insert committed but whose answer was lost (the connection dropped) waits and
    is written again on the next refresh: it is one row, its cost counted once in the verification
    cost shown (rows had no id of their own, so it was written twice)."""
    from faregate.store.protocols import StoreUnavailable

    class AnswerLost:
        """The store's insert commits, then the caller hears of a dropped connection, once."""

        def __init__(self) -> None:
            self.dropped = False

        async def insert(self, row: VerificationRow) -> None:
            await table.insert(row)
            if not self.dropped:
                self.dropped = True
                raise StoreUnavailable("connection reset by peer")

        def __getattr__(self, name: str) -> Any:
            return getattr(table, name)

    service = QualityService([calibration()], AnswerLost())  # type: ignore[arg-type]
    row = VerificationRow(
        "req-1", "r", "router", "paid", "cheap", 0.2, 0.5, "exact", "loss", "strong", 220, time.time()
    )
    await service.record(row)
    assert service.rows_pending == 1
    await service.refresh()
    assert service.rows_pending == 0
    assert [r.request_id for r in await table.recent("r")] == ["req-1"]
    assert await table.cost_nano("r") == 220


async def test_the_refresh_reads_the_state_only_once_another_instance_moved_it(tmp_path: Path) -> None:
    from faregate.store.sqlite.analytics import SQLiteAnalytics
    from faregate.store.sqlite.verifications import SQLiteVerifications

    store = await SQLiteStore.open(tmp_path)
    one, two = await SQLiteAnalytics.open(store.path), await SQLiteAnalytics.open(store.path)
    try:
        await state_read_only_once_moved(
            SQLiteVerifications(one.connection), SQLiteVerifications(two.connection)
        )
    finally:
        await one.close()
        await two.close()
        await store.close()


async def state_read_only_once_moved(table: Any, other_table: Any) -> None:
    """The refresh (every 2 s) read the whole calibration row each time, changed or not: with
    domain learning megabytes per instance every 2 s. The store now sends it only when its version
    moved past the one this instance holds, and a write of another instance is still adopted."""

    class CountingReads:
        """The store, counting the rows it sent whole."""

        def __init__(self) -> None:
            self.rows_read = 0

        async def load_state(self, scope: str, newer_than: int = 0) -> tuple[int, str] | None:
            stored: tuple[int, str] | None = await table.load_state(scope, newer_than)
            self.rows_read += stored is not None
            return stored

        def __getattr__(self, name: str) -> Any:
            return getattr(table, name)

    reading = CountingReads()
    mine, theirs = calibration(), calibration()
    service = QualityService([mine], reading)  # type: ignore[arg-type]
    other = QualityService([theirs], other_table)
    run(mine, 20, wrong=False)
    await service.save("route:r")
    before = reading.rows_read
    for _ in range(3):
        await service.refresh()
    assert reading.rows_read == before  # unchanged since this instance wrote it: not read
    await other.load()
    run(theirs, 5, wrong=False, start=500)
    await other.save("route:r")
    await service.refresh()
    assert reading.rows_read == before + 1 and mine.state.decisions == 25
    await service.refresh()
    assert reading.rows_read == before + 1
