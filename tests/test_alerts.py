"""Alert rules over a real store, posting to a local aiohttp webhook."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import pytest
from aiohttp import web

from faregate.config import AlertRule, AlertSettings, Settings, WebhookSettings, load_settings, parse_settings
from faregate.errors import ConfigError
from faregate.server.app import build_gateway
from faregate.store.backends import open_backends
from faregate.store.feedback import Feedback
from faregate.store.protocols import StoreUnavailable
from faregate.store.sqlite.alert_memory import SQLiteAlertMemory
from faregate.store.sqlite.analytics import SQLiteAnalytics
from faregate.store.sqlite.feedback import SQLiteFeedbackTable
from faregate.store.sqlite.store import SQLiteStore
from faregate.telemetry.alerts import AlertManager
from faregate.telemetry.log_limit import RepeatFilter
from faregate.telemetry.observability import Insights
from faregate.types import Attempt, RequestRecord

NOW = 1_700_000_000 // 86400 * 86400 + 12 * 3600  # noon UTC


def rec(n: int, at: float, **fields: object) -> RequestRecord:
    values: dict[str, object] = {
        "created_at": at,
        "key_id": "k1",
        "model_requested": "m1",
        "model_used": "m1",
        "provider": "p1",
        "status": 200,
        "stream": False,
        "route": "chat",
        "latency_ms": 100.0,
        "cost_usd": Decimal("0.001"),
        "attempts": [Attempt("m1", "p1", "ok", 90.0)],
    }
    values.update(fields)
    return RequestRecord(request_id=f"r{n}", **values)  # type: ignore[arg-type]


@dataclass
class Hook:
    url: str
    received: list[dict[str, Any]] = field(default_factory=list)
    status: int = 200
    authorizations: list[str | None] = field(default_factory=list)


@pytest.fixture()
async def hook() -> AsyncIterator[Hook]:
    app = web.Application()
    state = Hook("")

    async def receive(request: web.Request) -> web.Response:
        state.received.append(await request.json())
        state.authorizations.append(request.headers.get("Authorization"))
        return web.Response(status=state.status)

    app.router.add_post("/hook", receive)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    state.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield state
    finally:
        await runner.cleanup()


@pytest.fixture()
async def analytics(tmp_path: Path) -> AsyncIterator[SQLiteAnalytics]:
    store = await SQLiteStore.open(tmp_path)
    records = [rec(i, NOW - 60 + i, latency_ms=100.0 + i) for i in range(20)]
    # chat's slowest 2 of 22 are over a second: its p99 is above 1000 ms.
    records += [rec(20, NOW - 30, latency_ms=1500.0), rec(21, NOW - 20, latency_ms=1600.0)]
    # Provider p2 fails half its requests, and every one of them fell back from p1.
    fallback = [Attempt("m1", "p1", "timeout", 900.0), Attempt("m2", "p2", "ok", 100.0)]
    records += [
        rec(30 + i, NOW - 40, key_id="k2", model_used="m2", provider="p2", route="code", attempts=fallback,
            status=502 if i % 2 else 200, cost_usd=Decimal("0.004"))
        for i in range(10)
    ]  # fmt: skip
    records.append(rec(50, NOW - 86400, key_id="k2", cost_usd=Decimal("9")))  # yesterday's spend
    await store.insert_records(records)
    a = await SQLiteAnalytics.open(store.path)
    feedback = SQLiteFeedbackTable(a.connection)
    for i in range(6):  # m1: 2 of 6 liked (33%); m2: all liked
        await feedback.upsert(Feedback(f"r{i}", "k1", NOW - 10, thumb="up" if i < 2 else "down"))
        await feedback.upsert(Feedback(f"r{30 + i}", "k2", NOW - 10, rating=5))
    try:
        yield a
    finally:
        await a.close()
        await store.close()


Make = Callable[..., AlertManager]


@pytest.fixture()
async def manager(analytics: SQLiteAnalytics, hook: Hook) -> AsyncIterator[Make]:
    made: list[AlertManager] = []

    def make(*rules: AlertRule) -> AlertManager:
        webhook = WebhookSettings(url=hook.url, timeout_s=2)
        made.append(
            AlertManager(AlertSettings(interval_s=0.05, webhook=webhook, rules=list(rules)), analytics)
        )
        return made[-1]

    yield make
    for alerts in made:
        await alerts.close()


async def test_p99_latency_of_a_route_fires_posts_and_resolves(manager: Make, hook: Hook) -> None:
    rule = AlertRule(name="chat-slow", metric="p99_latency_ms", route="chat", above=1000, window_minutes=5)
    alerts = manager(rule)
    events = await alerts.evaluate(NOW)
    assert [e["status"] for e in events] == ["firing"]
    event = hook.received[0]
    assert event["rule"] == "chat-slow" and event["status"] == "firing"
    assert event["value"] == 1650.0 and event["threshold"] == 1000 and event["unit"] == "ms"
    assert event["message"].startswith("chat-slow: p99 latency of route chat is 1,650 ms (above 1,000 ms)")
    assert [s.rule.name for s in alerts.firing()] == ["chat-slow"]
    # Still past the threshold: no second post.
    assert await alerts.evaluate(NOW + 1) == []
    # Ten minutes on, the window holds no traffic: resolved.
    assert [e["status"] for e in await alerts.evaluate(NOW + 600)] == ["resolved"]
    assert [e["status"] for e in hook.received] == ["firing", "resolved"]
    assert alerts.firing() == [] and len(alerts.history) == 2


async def test_too_few_requests_to_judge_neither_resolve_nor_fire(manager: Make, hook: Hook) -> None:
    """min_count is the evidence a rule needs to judge: a window with fewer requests (still past
    the threshold) leaves a firing alert firing; resolving it, to fire again once traffic picks up,
    would flap (a webhook post each way). An empty window resolves it."""
    rule = AlertRule(name="chat-slow", metric="p99_latency_ms", route="chat", above=1000, window_minutes=5)
    alerts = manager(rule)
    assert [e["status"] for e in await alerts.evaluate(NOW)] == ["firing"]
    # 265 s on, the window holds chat's two slowest requests only: too few to judge either way.
    assert await alerts.evaluate(NOW + 265) == []
    assert [s.rule.name for s in alerts.firing()] == ["chat-slow"]
    assert [e["status"] for e in await alerts.evaluate(NOW + 600)] == ["resolved"]
    assert [e["status"] for e in hook.received] == ["firing", "resolved"]
    # And too few never raises one.
    assert await manager(rule).evaluate(NOW + 265) == []


async def test_for_minutes_waits_before_firing(manager: Make, hook: Hook) -> None:
    rule = AlertRule(
        name="slow", metric="p99_latency_ms", per="route", above=1000, window_minutes=60, for_minutes=2
    )
    alerts = manager(rule)
    assert await alerts.evaluate(NOW) == []
    assert [s.labels for s in alerts.pending()] == [{"route": "chat"}]
    assert await alerts.evaluate(NOW + 60) == []
    fired = await alerts.evaluate(NOW + 121)
    assert [(e["status"], e["labels"]) for e in fired] == [("firing", {"route": "chat"})]


async def test_error_and_fallback_rates_per_provider(manager: Make, hook: Hook) -> None:
    errors = AlertRule(name="errors", metric="error_rate", per="provider", above=20, min_count=5)
    fallbacks = AlertRule(name="fallbacks", metric="fallback_rate", above=25)
    quiet = AlertRule(name="few", metric="error_rate", per="provider", above=20, min_count=11)
    alerts = manager(errors, fallbacks, quiet)
    events = {(e["rule"], tuple(e["labels"].items())): e for e in await alerts.evaluate(NOW)}
    assert set(events) == {("errors", (("provider", "p2"),)), ("fallbacks", ())}
    assert events[("errors", (("provider", "p2"),))]["value"] == 50.0
    assert events[("fallbacks", ())]["value"] == pytest.approx(100 * 10 / 32)


async def test_satisfaction_of_a_model(manager: Make, hook: Hook) -> None:
    rule = AlertRule(
        name="unloved", metric="satisfaction", per="model", below=50, min_count=5, window_minutes=60
    )
    events = await manager(rule).evaluate(NOW)
    assert [(e["labels"], round(e["value"], 2)) for e in events] == [({"model": "m1"}, 33.33)]


async def test_daily_spend_of_a_key(manager: Make, hook: Hook) -> None:
    # k2 spent 0.04 today (yesterday's 9 USD does not count); k1 0.022.
    rule = AlertRule(name="spend", metric="daily_spend_usd", above=0.03)
    events = await manager(rule).evaluate(NOW)
    assert [(e["labels"], e["value"]) for e in events] == [({"key": "k2"}, 0.04)]
    by_name = AlertRule(name="k1-spend", metric="daily_spend_usd", key="k1", above=0.02)
    events = await manager(by_name).evaluate(NOW)
    assert [e["labels"] for e in events] == [{"key": "k1"}]


async def test_a_webhook_header_may_take_its_value_from_the_environment(
    analytics: SQLiteAnalytics, hook: Hook, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`${NAME}` in a webhook header is the variable's value (config/env_refs.py), as in a
    provider's headers; a variable that is not set is refused at start, not posted as text."""
    rule = AlertRule(name="spend", metric="daily_spend_usd", above=0.001)
    headers = {"Authorization": "Bearer ${FAREGATE_TEST_HOOK_TOKEN}"}
    webhook = WebhookSettings(url=hook.url, timeout_s=2, headers=headers)
    settings = AlertSettings(webhook=webhook, rules=[rule])
    monkeypatch.delenv("FAREGATE_TEST_HOOK_TOKEN", raising=False)
    with pytest.raises(
        ConfigError, match=r"alerts\.webhook: header Authorization: \$\{FAREGATE_TEST_HOOK_TOKEN\}"
    ):
        AlertManager(settings, analytics)
    monkeypatch.setenv("FAREGATE_TEST_HOOK_TOKEN", "hook-secret")
    alerts = AlertManager(settings, analytics)
    try:
        await alerts.evaluate(NOW)
    finally:
        await alerts.close()
    assert hook.authorizations and set(hook.authorizations) == {"Bearer hook-secret"}


async def test_a_failing_webhook_is_retried_then_counted(manager: Make, hook: Hook) -> None:
    hook.status = 500
    rule = AlertRule(name="spend", metric="daily_spend_usd", above=0.001)
    alerts = manager(rule)
    events = await alerts.evaluate(NOW)
    assert len(events) == 2  # k1 and k2
    assert len(hook.received) == 6 and alerts.webhook_failures == 2
    assert sorted(str(s.subject) for s in alerts.firing()) == ["k1", "k2"]  # still shown and logged


async def test_a_failing_webhook_is_logged_without_the_secret_in_its_url(
    manager: Make, hook: Hook, caplog: pytest.LogCaptureFixture
) -> None:
    # A Slack or Discord webhook URL is its own credential (https://hooks.slack.com/services/T/B/
    # <secret>): whoever reads the gateway's log must not be able to post to the channel.
    secret = "XyZ9secretWebhookToken"
    hook.url = hook.url.replace("/hook", f"/services/T000/B000/{secret}") + f"?token={secret}"
    alerts = manager(AlertRule(name="k1-spend", metric="daily_spend_usd", key="k1", above=0.001))
    with caplog.at_level("ERROR", logger="faregate.alerts"):
        await alerts.evaluate(NOW)
    assert alerts.webhook_failures == 1
    logged = [r.getMessage() for r in caplog.records if "webhook" in r.getMessage()]
    assert logged and all(secret not in line for line in logged)
    # Where it went is still said: the scheme, host and port.
    assert hook.url.split("/services/")[0] in logged[0]


async def test_background_task_evaluates_periodically(manager: Make, hook: Hook) -> None:
    # Records are stamped around NOW, in the past: a rule over all time fires on the first run.
    rule = AlertRule(name="spend", metric="daily_spend_usd", key="k2", above=0)
    alerts = manager(rule)
    await alerts.start()
    try:
        for _ in range(100):
            if alerts.history or hook.received:
                break
            await asyncio.sleep(0.02)
    finally:
        await alerts.close()
    # Evaluated at the real "now", k2 has spent nothing today; the loop ran without error.
    assert alerts._loop is None


def test_rules_are_checked_at_load() -> None:
    good = {"alerts": {"rules": [{"name": "x", "metric": "error_rate", "above": 5}]}}
    assert parse_settings(good).alerts.rules[0].min_count == 10
    bad: list[dict[str, Any]] = [
        {"name": "x", "metric": "error_rate"},
        {"name": "x", "metric": "error_rate", "above": 1, "below": 2},
        {"name": "x", "metric": "daily_spend_usd", "above": 1, "per": "route"},
        {"name": "x", "metric": "latency", "above": 1},
        {"name": "x", "metric": "error_rate", "above": 1, "window_minutes": 0},
    ]
    for rule in bad:
        with pytest.raises(ConfigError):
            parse_settings({"alerts": {"rules": [rule]}})
    with pytest.raises(ConfigError, match="already used"):
        parse_settings({"alerts": {"rules": [good["alerts"]["rules"][0]] * 2}})
    with pytest.raises(ConfigError, match="webhook"):
        parse_settings({"alerts": {"webhook": {"url": "ftp://x"}}})


async def test_a_quality_margin_under_a_point_is_told_to_a_tenth() -> None:
    """quality_margin is in points (estimated quality minus target, x100): a route 0.3 points under
    its target is "-0.3 points", not "-0 points (below 0 points)", which reads as on target."""
    rule = AlertRule(name="under", metric="quality_margin", below=0.0, per="route", min_count=1)
    alerts = AlertManager(AlertSettings(rules=[rule]), cast(Any, None))
    route = {"route": "chat", "estimated_quality": 0.897, "target": 0.9, "verifications": 50}
    alerts.quality = lambda: [route]
    (fired,) = await alerts.evaluate(NOW)
    assert fired["value"] == pytest.approx(-0.3) and fired["unit"] == "points"
    assert "is -0.3 points (below 0.0 points)" in fired["message"]


async def test_a_failing_webhook_is_logged_without_its_credentials_path_or_query(
    analytics: SQLiteAnalytics, hook: Hook, caplog: pytest.LogCaptureFixture
) -> None:
    """Slack, Discord and Teams webhooks carry their secret in the URL's path (or a query token):
    the failure's log line names the host only."""
    url = hook.url.replace("://", "://ops:pw@") + "/T01/B02/s3cr3tT0ken?token=q5ecret"
    rule = AlertRule(name="spend", metric="daily_spend_usd", key="k2", above=0.001)
    settings = AlertSettings(webhook=WebhookSettings(url=url, timeout_s=2), rules=[rule])
    alerts = AlertManager(settings, analytics)
    try:
        await alerts.evaluate(NOW)
    finally:
        await alerts.close()
    assert len(hook.received) == 0 and alerts.webhook_failures == 1  # 404 for that path: failed
    (line,) = [r.getMessage() for r in caplog.records if "webhook" in r.getMessage()]
    assert hook.url.removesuffix("/hook") in line
    assert not any(secret in caplog.text for secret in ("s3cr3tT0ken", "q5ecret", "pw@", "/T01"))


async def test_a_rule_narrowed_to_its_subject_names_it_once(manager: Make, hook: Hook) -> None:
    """A spend rule for one key is still per key: its message names the key once, not as the
    filter and again as the subject ("of key k2, key k2")."""
    rule = AlertRule(name="k2-spend", metric="daily_spend_usd", key="k2", above=0.001)
    (fired,) = await manager(rule).evaluate(NOW)
    assert fired["message"] == "k2-spend: spend today (UTC) of key k2 is $0.0400 (above $0.0010)"
    narrowed = AlertRule(name="p2-errors", metric="error_rate", per="provider", provider="p2", above=20)
    (fired,) = await manager(narrowed).evaluate(NOW)
    assert fired["message"].startswith("p2-errors: error rate of provider p2 is 50.0% (above 20.0%)")


async def test_a_store_outage_is_one_line_per_rule_not_a_traceback(
    analytics: SQLiteAnalytics, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL down is an expected condition (README: logged once per interval, never a trace):
    a rule that cannot read the store says so in one line and keeps its alerts as they were."""

    class Unreachable:
        """The analytics of a store that is down (what the PostgreSQL pool raises then)."""

        def __getattr__(self, name: str) -> Any:
            async def unavailable(*args: object, **kwargs: object) -> Any:
                raise StoreUnavailable("PostgreSQL: connection refused")

            return unavailable

    rule = AlertRule(name="chat-slow", metric="p99_latency_ms", route="chat", above=1000)
    alerts = AlertManager(AlertSettings(rules=[rule]), analytics)
    assert [e["status"] for e in await alerts.evaluate(NOW)] == ["firing"]
    alerts.analytics = cast(Any, Unreachable())
    assert await alerts.evaluate(NOW + 600) == []  # not resolved: nothing was read
    assert [s.rule.name for s in alerts.firing()] == ["chat-slow"]
    (line,) = [r for r in caplog.records if "could not be evaluated" in r.getMessage()]
    assert line.exc_info is None and line.levelname == "WARNING"
    assert "chat-slow" in line.getMessage() and "connection refused" in line.getMessage()


async def test_a_restart_neither_posts_a_firing_alert_again_nor_loses_its_resolution(
    analytics: SQLiteAnalytics, hook: Hook
) -> None:
    """The process that posts keeps its firing alerts in the store: restarted while the condition
    holds, it does not post the alert again; restarted after it cleared, it posts the resolution
    the receiver would otherwise wait for forever."""
    rule = AlertRule(name="chat-slow", metric="p99_latency_ms", route="chat", above=1000)
    webhook = WebhookSettings(url=hook.url, timeout_s=2)

    def start(*rules: AlertRule) -> AlertManager:
        """A gateway process that posts, over the same store."""
        memory = SQLiteAlertMemory(analytics.connection)
        return AlertManager(AlertSettings(webhook=webhook, rules=list(rules)), analytics, memory=memory)

    first = start(rule)
    (fired,) = await first.evaluate(NOW)
    await first.close()
    # Restarted while chat is still slow: still firing since then, not posted again.
    second = start(rule)
    assert await second.evaluate(NOW + 60) == []
    assert [s.to_json("firing")["fired_at"] for s in second.firing()] == [fired["fired_at"]]
    await second.close()
    # Restarted after it cleared: resolved, posted once.
    third = start(rule)
    (resolved,) = await third.evaluate(NOW + 600)
    assert resolved["status"] == "resolved" and resolved["fired_at"] == fired["fired_at"]
    await third.close()
    assert [e["status"] for e in hook.received] == ["firing", "resolved"]
    assert await SQLiteAlertMemory(analytics.connection).fired() == []
    # An alert whose rule left the config is forgotten, not resolved against another rule.
    fourth = start(rule)
    assert len(await fourth.evaluate(NOW)) == 1
    await fourth.close()
    other = start(AlertRule(name="fallbacks", metric="fallback_rate", above=99))
    assert await other.evaluate(NOW + 1) == [] and other.firing() == []
    await other.close()
    assert await SQLiteAlertMemory(analytics.connection).fired() == []


async def test_only_the_process_that_posts_keeps_its_alerts(tmp_path: Path, hook: Hook) -> None:
    """The store's alert memory is the poster's (worker 0 of `serve --workers N`, or the instance
    given the webhook): a process without the webhook, which posts nothing, neither reads nor
    writes what the receiver was told."""
    rules = [{"name": "slow", "metric": "p99_latency_ms", "above": 1000}]
    posting = parse_settings(
        {"store": {"path": str(tmp_path)}, "alerts": {"webhook": {"url": hook.url}, "rules": rules}}
    )
    silent = parse_settings({"store": {"path": str(tmp_path)}, "alerts": {"rules": rules}})
    backends = await open_backends(posting, accounts=False)
    try:
        assert Insights.over(posting, backends.analytics).alerts.memory is backends.analytics.alert_memory
        assert Insights.over(silent, backends.analytics).alerts.memory is None
    finally:
        await backends.close()


async def test_a_per_key_rule_names_each_key_as_the_spend_rule_does(
    analytics: SQLiteAnalytics, hook: Hook, manager: Make
) -> None:
    """Every per-key rule (not only daily spend) says which key by its name and prefix, as the
    dashboard does: a bare key id in a page at 3 am names nobody."""
    await analytics.connection.execute(
        "INSERT INTO api_keys (id, name, prefix, key_hash, created_at) VALUES (?, ?, ?, ?, ?)",
        ("k2", "support-bot", "fg-B21v…", "h", 0),
    )
    rule = AlertRule(name="key-errors", metric="error_rate", per="key", above=20, min_count=5)
    (fired,) = await manager(rule).evaluate(NOW)
    assert fired["labels"] == {"key": "k2"} and fired["subject_label"] == "support-bot (fg-B21v…)"
    assert fired["message"].startswith("key-errors: error rate of key support-bot (fg-B21v…) is 50.0%")


def refusals() -> list[RequestRecord]:
    """A client looping on its rate limit: 90 refused requests (429s), each a record."""
    return [
        rec(100 + i, NOW - 50, status=429, provider=None, model_used=None, attempts=[], cost_usd=Decimal(0))
        for i in range(90)
    ]


async def assert_fires_on_the_requests_taken_on(
    tmp_path: Path, hook: Hook, records: list[RequestRecord], metric: str, said: str
) -> None:
    """Of `records`, 10 taken on with half of them counted by `metric`, the rest refused: a rule
    over 20% fires at 50% (saying `said`), and is quiet if it needs 11 requests taken on."""
    store = await SQLiteStore.open(tmp_path)
    await store.insert_records(records)
    analytics = await SQLiteAnalytics.open(store.path)
    name = said.split(":")[0]
    rule = AlertRule(name=name, metric=metric, above=20, min_count=10)
    settings = AlertSettings(
        interval_s=0.05, webhook=WebhookSettings(url=hook.url, timeout_s=2), rules=[rule]
    )
    alerts = AlertManager(settings, analytics)
    try:
        (fired,) = await alerts.evaluate(NOW)
        assert fired["value"] == 50.0
        assert fired["message"].startswith(said)
        # Refusals alone are no evidence either way: min_count counts the requests taken on.
        only_refused = AlertRule(name="quiet", metric=metric, above=20, min_count=11)
        quiet = AlertManager(AlertSettings(interval_s=0.05, rules=[only_refused]), analytics)
        try:
            assert await quiet.evaluate(NOW) == []
        finally:
            await quiet.close()
    finally:
        await alerts.close()
        await analytics.close()
        await store.close()


async def test_the_error_rate_is_of_the_requests_taken_on_not_of_refusals(tmp_path: Path, hook: Hook) -> None:
    """Half the requests the gateway served failed upstream (502), while a client looped on its
    rate limit (429s, each a record): the error rate was 5xx over every request, refusals
    included, so the flood of a client's own 4xx diluted the outage to 5% and the rule never
    fired. Refused requests (4xx) are left out of it, as they are of the latency rules."""
    served = [rec(i, NOW - 60, status=502 if i % 2 else 200) for i in range(10)]
    said = "failing: error rate is 50.0% (above 20.0%)"
    await assert_fires_on_the_requests_taken_on(tmp_path, hook, served + refusals(), "error_rate", said)


async def test_the_fallback_rate_is_of_the_requests_taken_on_not_of_refusals(
    tmp_path: Path, hook: Hook
) -> None:
    """Half the requests the gateway served fell back to another offer, while a client looped on
    its rate limit (429s): the fallback rate was over every request, refusals included, so the
    flood diluted it to 5% and the rule never fired, where the error rate is over the requests
    taken on. A request that fell back and still ended in a 4xx (the last upstream refused the
    input) is a refusal too, in neither count."""
    fell_back = [Attempt("m1", "p1", "timeout", 900.0), Attempt("m2", "p2", "ok", 100.0)]
    served = [rec(i, NOW - 60, attempts=fell_back if i % 2 else None) for i in range(10)]
    for r in served:
        r.attempts = r.attempts or [Attempt("m1", "p1", "ok", 90.0)]
    refused = refusals()
    rejected = [Attempt("m1", "p1", "server_error", 90.0), Attempt("m2", "p2", "rejected", 90.0, status=400)]
    refused.append(rec(300, NOW - 50, status=400, model_used=None, attempts=rejected, cost_usd=Decimal(0)))
    said = "falling-back: fallback rate is 50.0% (above 20.0%)"
    await assert_fires_on_the_requests_taken_on(tmp_path, hook, served + refused, "fallback_rate", said)


async def test_an_unreadable_memory_does_not_stop_the_alerts(analytics: SQLiteAnalytics, hook: Hook) -> None:
    """A remembered alert this version cannot read (another version's, or edited by hand) is not a
    reason to stop alerting: the rules are evaluated afresh."""
    await analytics.connection.execute(
        "INSERT INTO alert_states (alert, state) VALUES (?, ?)", ('["chat-slow", null]', '{"value": null}')
    )
    rule = AlertRule(name="chat-slow", metric="p99_latency_ms", route="chat", above=1000)
    settings = AlertSettings(webhook=WebhookSettings(url=hook.url, timeout_s=2), rules=[rule])
    alerts = AlertManager(settings, analytics, memory=SQLiteAlertMemory(analytics.connection))
    try:
        assert [e["status"] for e in await alerts.evaluate(NOW)] == ["firing"]
    finally:
        await alerts.close()


async def test_alerts_firing_together_are_each_a_line_through_the_repeat_limiter(manager: Make) -> None:
    """The gateway's log handler holds back repeats of a line within 10 s (telemetry/log_limit.py),
    meant for one failure told by every request. Alerts are events each: two providers' alerts
    firing in one round are two lines, not one and "1 more like this" ten seconds later."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RepeatFilter(10.0))
    alerts_log = logging.getLogger("faregate.alerts")
    alerts_log.addHandler(handler)
    level = alerts_log.level
    alerts_log.setLevel(logging.INFO)
    try:
        rule = AlertRule(name="errors", metric="error_rate", per="provider", above=-1, min_count=1)
        alerts = manager(rule)
        assert len(await alerts.evaluate(NOW)) == 2
        assert len(await alerts.evaluate(NOW + 3600)) == 2  # both resolve: the window is empty
    finally:
        alerts_log.removeHandler(handler)
        alerts_log.setLevel(level)
    lines = out.getvalue().splitlines()
    assert sorted(line.split(" is ")[0] for line in lines) == [
        "alert firing: errors: error rate of provider p1",
        "alert firing: errors: error rate of provider p2",
        "alert resolved: errors: error rate of provider p1",
        "alert resolved: errors: error rate of provider p2",
    ]


def subjects_settings(tmp_path: Path, *rules: dict[str, Any]) -> Settings:
    return load_settings(
        overrides={
            "store": {"path": str(tmp_path / "store")},
            "catalog": {"broad": False},
            "routes": {"chat": {"chain": ["deepseek-v4-flash", "gpt-4o-mini"]}},
            "alerts": {"rules": list(rules)},
        }
    )


def test_a_rule_for_an_unknown_provider_is_refused_at_load() -> None:
    rule = {"name": "x", "metric": "error_rate", "above": 5, "provider": "OpenAI"}
    with pytest.raises(ConfigError, match=r"alerts.rules\[0\] \(x\).provider: unknown provider 'OpenAI'"):
        parse_settings({"alerts": {"rules": [rule]}})


@pytest.mark.parametrize(
    ("rule", "problem"),
    [
        (
            {"route": "chta"},
            r"alerts.rules\[0\] \(x\).route: unknown route or model 'chta'; did you mean chat",
        ),
        ({"model": "deepseek-v4-flsh"}, r"\.model: unknown model 'deepseek-v4-flsh'; did you mean deepseek"),
        (
            {"metric": "quality_margin", "below": 0, "above": None, "route": "chat"},
            r"\.route: 'chat' is not a calibrated route",
        ),
    ],
)
async def test_a_rule_for_a_route_or_model_the_gateway_never_records_stops_start_up(
    tmp_path: Path, rule: dict[str, Any], problem: str
) -> None:
    """Such a rule never had traffic in its window, so it never fired (a silent typo)."""
    given = {
        k: v for k, v in {"name": "x", "metric": "error_rate", "above": 5, **rule}.items() if v is not None
    }
    with pytest.raises(ConfigError, match=problem):
        await build_gateway(subjects_settings(tmp_path, given))


async def test_a_rule_naming_a_model_by_alias_watches_its_records(tmp_path: Path) -> None:
    """Records hold the model's canonical name (and, for a request naming the model, the route
    too): a rule written with the alias or another case must be compared with that name."""
    rules = [
        {"name": "by-alias", "metric": "error_rate", "above": 5, "model": "DeepSeek-V4-Flash"},
        {"name": "route-by-alias", "metric": "error_rate", "above": 5, "route": "gpt-4o-MINI"},
        {"name": "route", "metric": "error_rate", "above": 5, "route": "chat"},
    ]
    settings = subjects_settings(tmp_path, *rules)
    gateway = await build_gateway(settings)
    try:
        by_alias, route_by_alias, route = settings.alerts.rules
        assert by_alias.model == "deepseek-ai/DeepSeek-V4-Flash"
        assert route_by_alias.route == "gpt-4o-mini"
        assert route.route == "chat"
    finally:
        await gateway.close()
