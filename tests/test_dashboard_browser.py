"""The dashboard in headless Chromium (Debian's, driven by Playwright): known traffic goes through a
real gateway, and the page must show the figures the request records hold."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import openai
import pytest
from playwright import sync_api

from faregate import tokens
from harness import (
    MASTER_KEY,
    GatewayProcess,
    SimProcess,
    cache_written,
    create_key,
    free_port,
    run_gateway,
    wait_until,
)

pytestmark = pytest.mark.e2e

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
# Traffic: (model, prompt tokens, answer tokens, how many).
TRAFFIC = [("deepseek-v4-flash", 1000, 500, 3), ("qwen3-8b", 400, 200, 2), ("glm-4-plus", 300, 100, 1)]


def usd(value: Decimal) -> str:
    """The page's money format (dashboard.js usd())."""
    digits = 2 if abs(value) >= 100 else 4 if abs(value) >= 1 else 6
    sign = "-" if value < 0 else ""
    return f"{sign}${abs(value):,.{digits}f}"


def prompt_of(n_tokens: int) -> list[dict[str, str]]:
    content = " hello" * (n_tokens - tokens.TOKENS_PER_MESSAGE - tokens.TOKENS_PER_REPLY)
    return [{"role": "user", "content": content}]


def make_key(store_path: Path, name: str) -> str:
    # Playwright's sync API keeps an event loop running in this thread; create_key starts its own.
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(create_key, store_path, name).result()


class Webhook:
    """A local HTTP endpoint that records the alerts posted to it."""

    def __init__(self) -> None:
        received: list[dict[str, Any]] = []

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                received.append(json.loads(self.rfile.read(length)))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.received = received
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/alerts"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.close()


@pytest.fixture(scope="module")
def dashboard_gateway(
    sim: SimProcess, webhook: Webhook, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    config = (
        "routing: {retries: 1, backoff_base_s: 0.01}\n"
        # The routes the two latency rules below watch (a rule on an undeclared route is refused).
        "routes: {chat: {chain: [qwen3-8b]}, code: {chain: [glm-4-plus]}}\n"
        "alerts:\n"
        "  interval_s: 0.5\n"
        f"  webhook: {{url: '{webhook.url}'}}\n"
        "  rules:\n"
        "    - {name: big-spender, metric: daily_spend_usd, above: 0.001}\n"
        # Two rules apart only in their route (never firing): the rules table tells them apart.
        "    - {name: chat-slow, metric: p99_latency_ms, route: chat, above: 600000, window_minutes: 15}\n"
        "    - {name: code-slow, metric: p99_latency_ms, route: code, above: 600000, window_minutes: 15}\n"
    )
    with run_gateway(tmp_path_factory.mktemp("dashboard"), sim, config) as gw:
        yield gw


@pytest.fixture(scope="module")
def traffic(dashboard_gateway: GatewayProcess) -> dict[str, Any]:
    """Send the known traffic (and one request that fails) and wait until all of it is recorded."""
    gw = dashboard_gateway
    key = make_key(gw.store_path, "browser-test")
    client = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
    ids = []
    for model, prompt, answer, count in TRAFFIC:
        for _ in range(count):
            raw = client.chat.completions.with_raw_response.create(
                model=model, messages=prompt_of(prompt), extra_body={"sim": {"answer": {"lorem": answer}}}
            )
            ids.append(raw.headers["x-faregate-request-id"])
    with pytest.raises(openai.APIStatusError):
        client.chat.completions.create(
            model="qwen3-8b", messages=prompt_of(50), extra_body={"sim": {"fault": "server_error"}}
        )
    response = httpx.post(
        gw.base_url + "/feedback",
        json={"request_id": ids[0], "score": "down"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert response.status_code == 200
    expected_rows = sum(count for *_, count in TRAFFIC) + 1
    deadline = time.monotonic() + 10
    while True:
        with sqlite3.connect(gw.store_path / "faregate.db") as db:
            rows = db.execute(
                "SELECT COALESCE(model_used, model_requested), status, cost_usd, baseline_cost_usd"
                " FROM request_records"
            ).fetchall()
        if len(rows) >= expected_rows or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert len(rows) == expected_rows
    per_model: dict[str, int] = {}
    for model, *_ in rows:
        per_model[model] = per_model.get(model, 0) + 1
    spend = sum((Decimal(r[2]) for r in rows), Decimal(0))
    baseline = sum((Decimal(r[3]) for r in rows), Decimal(0))
    return {"spend": spend, "baseline": baseline, "per_model": per_model, "ids": ids, "requests": len(rows)}


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    # A missing browser fails the run: a green run must mean the dashboard was seen working.
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is not installed: apt-get install chromium (make test installs it)")
    with sync_api.sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield chromium
        chromium.close()


def open_dashboard(browser: Any, gw: GatewayProcess, key: str, width: int = 1440) -> Any:
    page = browser.new_page(viewport={"width": width, "height": 1000})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    page.errors = errors
    page.goto(f"http://127.0.0.1:{gw.port}/dashboard")
    page.fill("#master-key", key)
    page.click("#login-button")
    return page


def canvas_has_pixels(page: Any, selector: str) -> bool:
    return bool(
        page.eval_on_selector(
            selector,
            """(canvas) => {
                if (!canvas.width || !canvas.height) return false;
                const data = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
                for (let i = 3; i < data.length; i += 4) if (data[i] !== 0) return true;
                return false;
            }""",
        )
    )


def test_dashboard_shows_what_the_records_hold(
    browser: Any, dashboard_gateway: GatewayProcess, traffic: dict[str, Any], webhook: Webhook
) -> None:
    page = open_dashboard(browser, dashboard_gateway, MASTER_KEY)
    page.wait_for_selector("body[data-loaded]", timeout=15_000)

    spend, baseline = traffic["spend"], traffic["baseline"]
    assert Decimal(page.get_attribute("#kpi-spend", "data-value")) == spend
    assert page.inner_text("#kpi-spend") == usd(spend)
    assert Decimal(page.get_attribute("#kpi-baseline", "data-value")) == baseline
    assert page.inner_text("#kpi-savings") == usd(baseline - spend)
    assert Decimal(page.get_attribute("#kpi-savings", "data-value")) == baseline - spend
    assert page.text_content("#baseline-model") == "(gpt-4o)"
    assert page.inner_text("#kpi-requests") == str(traffic["requests"])
    for model, count in traffic["per_model"].items():
        cell = page.locator(f'#by-model tr[data-group="{model}"] td[data-col="requests"]')
        assert cell.inner_text() == str(count), model
    # The failed request retried (2 attempts) and shows as an error.
    assert page.get_attribute("#kpi-errors", "data-value") == "1"

    for canvas in ("#chart-spend", "#chart-requests", "#chart-models", "#chart-latency"):
        assert canvas_has_pixels(page, canvas), canvas

    # Latency per route, breakers from the live health board, feedback per model.
    assert (
        page.locator('#latency-route tr[data-group="deepseek-ai/DeepSeek-V4-Flash"] td[data-col="p99"]')
        .inner_text()
        .endswith(" ms")
    )
    assert "closed" in page.inner_text("#health")
    liked = page.locator(
        '#feedback-model tr[data-group="deepseek-ai/DeepSeek-V4-Flash"] td[data-col="satisfaction"]'
    )
    assert liked.inner_text() == "0.0%"

    # The alert fires within a couple of evaluations: on the page and at the webhook.
    page.click("#refresh-now")
    page.wait_for_selector("[data-testid=alert-firing]", timeout=10_000)
    assert "big-spender" in page.inner_text("#alerts-firing")
    assert any(event["rule"] == "big-spender" and event["status"] == "firing" for event in webhook.received)

    # Search the recent requests by id; open its attempts.
    page.fill("#search", traffic["ids"][0])
    page.click("#search-form button")
    # (A locator, not wait_for_function: the page's CSP forbids the eval that polling would need.)
    sync_api.expect(page.locator("#requests tbody tr.row")).to_have_count(1, timeout=10_000)
    page.click("#requests tbody tr.row")
    assert "ok" in page.inner_text("#requests tr.attempts")

    ARTIFACTS.mkdir(exist_ok=True)
    page.fill("#search", "")
    page.click("#search-form button")
    page.wait_for_timeout(300)
    page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
    if os.environ.get("FAREGATE_DOCS_SCREENSHOT"):
        page.screenshot(path=os.environ["FAREGATE_DOCS_SCREENSHOT"], full_page=True)
    assert page.errors == []
    page.close()


def test_a_wrong_master_key_is_refused(browser: Any, dashboard_gateway: GatewayProcess) -> None:
    page = open_dashboard(browser, dashboard_gateway, "not-the-master-key")
    page.wait_for_selector("#login-error:has-text('not the master key')", timeout=10_000)
    assert page.is_visible("#login") and not page.is_visible("#app")
    page.close()


def test_the_api_refuses_api_keys(dashboard_gateway: GatewayProcess, traffic: dict[str, Any]) -> None:
    key = make_key(dashboard_gateway.store_path, "not-admin")
    url = f"http://127.0.0.1:{dashboard_gateway.port}/admin/dashboard/summary"
    assert httpx.get(url).status_code == 401
    assert httpx.get(url, headers={"Authorization": f"Bearer {key}"}).status_code == 403
    body = httpx.get(url + "?range=1h", headers={"Authorization": f"Bearer {MASTER_KEY}"}).json()
    assert Decimal(body["spend_usd"]) == traffic["spend"] and body["requests"] == traffic["requests"]
    admin = {"Authorization": f"Bearer {MASTER_KEY}"}
    assert httpx.get(url + "?range=2y", headers=admin).status_code == 400
    base = f"http://127.0.0.1:{dashboard_gateway.port}/admin/dashboard"
    assert httpx.get(base + "/breakdown?by=colour", headers=admin).status_code == 400
    assert httpx.get(base + "/breakdown?limit=many", headers=admin).status_code == 400
    series = httpx.get(base + "/series?range=1h", headers=admin).json()
    assert series["bucket_s"] == 60 and sum(p["requests"] for p in series["points"]) == traffic["requests"]
    by_key = httpx.get(base + "/breakdown?by=key&key=browser-test", headers=admin).json()
    assert [row["label"].split(" (")[0] for row in by_key["rows"]] == ["browser-test"]


def test_recent_requests_fit_and_a_route_is_one_row_at_1280_px(
    browser: Any, sim: SimProcess, tmp_path: Path
) -> None:
    """Long key, route and model names: every column of "Recent requests" stays on screen at
    1280 px; and a route answered once upstream and once from the cache is one row."""
    with run_gateway(tmp_path, sim) as gw:
        key = make_key(gw.store_path, "checkout-service-production-eu-west-1-blue-canary")
        client = openai.OpenAI(base_url=gw.base_url, api_key=key, max_retries=0)
        question = [{"role": "user", "content": "cache me for the dashboard"}]
        with cache_written(gw):
            first = client.chat.completions.with_raw_response.create(
                model="deepseek-v4-flash", messages=question, temperature=0
            )
        second = client.chat.completions.with_raw_response.create(
            model="deepseek-v4-flash", messages=question, temperature=0
        )
        assert (first.headers["x-faregate-cache"], second.headers["x-faregate-cache"]) == ("miss", "hit")
        client.chat.completions.create(
            model="deepseek-v4-flash",
            messages=prompt_of(40),
            extra_body={"models": ["deepseek-v4-flash", "glm-4-plus", "qwen3-8b"]},
        )
        wait_until(lambda: records(gw) >= 3, "the three requests are recorded")

        page = open_dashboard(browser, gw, MASTER_KEY, width=1280)
        page.wait_for_selector("body[data-loaded]", timeout=15_000)
        sync_api.expect(page.locator("#requests tbody tr.row")).to_have_count(3, timeout=10_000)

        # The route of a model asked by an alias is its canonical name: one row.
        route = '#by-route tr[data-group="deepseek-ai/DeepSeek-V4-Flash"]'
        rows = page.locator(f'{route} td[data-col="requests"]')
        assert rows.count() == 1 and rows.inner_text() == "2"
        assert page.locator('#by-route tr[data-group="deepseek-v4-flash"]').count() == 0
        # Grouped by the wire the requests came in on: all three by chat completions.
        wires = page.locator('#by-wire tr[data-group="chat"] td[data-col="requests"]')
        assert wires.count() == 1 and wires.inner_text() == "3"

        # No table runs past its panel (each sits in a .scroll box that would scroll sideways).
        overflowing = page.eval_on_selector_all(
            ".scroll",
            "boxes => boxes.filter(b => b.scrollWidth > b.clientWidth)"
            ".map(b => (b.querySelector('table') || b).id + ': ' + b.scrollWidth + ' > ' + b.clientWidth)",
        )
        assert overflowing == []
        for column in ("cost", "latency"):
            cell = page.locator(f'#requests tbody tr.row td[data-col="{column}"]').first
            box = cell.bounding_box()
            assert box is not None and box["x"] + box["width"] <= 1280, (column, box)
        # A clipped name keeps its full text in the tooltip.
        long_key = page.locator('#requests tbody tr.row td[data-col="key"][title]').first
        assert long_key.get_attribute("title").startswith("checkout-service-production-eu-west-1-blue-canary")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "dashboard-1280.png"), full_page=True)
        assert page.errors == []
        page.close()


# The words of a cell's text that the layout broke across two lines.
WORDS_BROKEN_ACROSS_LINES = """(cell) => {
    const node = cell.firstChild;
    const broken = [];
    let at = 0;
    for (const word of node.textContent.split(" ")) {
        const range = document.createRange();
        range.setStart(node, at);
        range.setEnd(node, at + word.length);
        if (range.getClientRects().length > 1) broken.push(word);
        at += word.length + 1;
    }
    return broken;
}"""


def records(gw: GatewayProcess) -> int:
    with sqlite3.connect(gw.store_path / "faregate.db") as db:
        return int(db.execute("SELECT COUNT(*) FROM request_records").fetchone()[0])


def test_the_quality_panel_shows_each_calibrated_route(
    browser: Any, sim: SimProcess, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """A router route with a quality target: after verified traffic the panel shows the target, the
    strong share in force, the verifications and their cost, as /admin/quality gives them."""
    routers = Path(__file__).resolve().parents[1] / "routers"
    config = (
        "routes:\n"
        "  calibrated:\n"
        f"    router: {{file: {routers}/router-gsm8k.json, strong: gpt-4o, weak: qwen3-8b}}\n"
        "    quality: {target: 0.9, confidence: 0.8, verification: "
        "{share: 1.0, frontier: 0, rest_ratio: 1, comparator: exact}}\n"
        "cache: {semantic: {enabled: true, max_wrong_hit_rate: 0.01}}\n"
    )
    with run_gateway(tmp_path_factory.mktemp("quality-dashboard"), sim, config) as gw:
        client = openai.OpenAI(base_url=gw.base_url, api_key=make_key(gw.store_path, "q"), max_retries=0)
        for i in range(40):
            client.chat.completions.create(
                model="calibrated", messages=[{"role": "user", "content": f"What is {i} plus {i * 7}?"}]
            )

        def figures() -> dict[str, Any]:
            response = httpx.get(
                f"http://127.0.0.1:{gw.port}/admin/quality", headers={"Authorization": f"Bearer {MASTER_KEY}"}
            )
            return dict(response.json())

        wait_until(lambda: figures()["pending"] == 0, "verifications finish")
        route = figures()["routes"][0]
        assert route["verifications"] > 30
        page = open_dashboard(browser, gw, MASTER_KEY, width=1280)
        page.wait_for_selector("body[data-loaded]", timeout=15_000)
        assert page.is_visible("[data-testid=quality]")
        # Its figures span the calibration, not the range picked (the page says so).
        assert "Whatever the range above: money over all time" in page.inner_text("[data-testid=quality]")
        row = '#quality-routes tr[data-group="calibrated"]'
        assert page.inner_text(f'{row} td[data-col="target"]') == "90.0%"
        assert (
            float(page.get_attribute(f'{row} td[data-col="strong_share"]', "data-value"))
            == route["strong_share"]
        )
        assert page.get_attribute(f'{row} td[data-col="verifications"]', "data-value") == str(
            route["verifications"]
        )
        cost = page.get_attribute(f'{row} td[data-col="verification_cost"]', "data-value")
        assert Decimal(cost) == Decimal(route["verification_cost_usd"]) > 0
        assert page.inner_text(f'{row} td[data-col="savings_net"]').startswith(("$", "-$"))
        # The ranking in force and its epoch (no learn_domains: no challenger shown).
        assert page.inner_text(f'{row} td[data-col="ranking"]') == "prior (epoch 0)"
        # The health reason reads as words: its column is not crushed to a few letters a line by the
        # wide table (it was "labell / ed / decisi / ons,").
        health = page.locator(f'{row} td[data-col="health"]')
        assert "labelled decisions" in health.inner_text()
        assert health.evaluate(WORDS_BROKEN_ACROSS_LINES) == []
        # The semantic cache's acceptance: nothing certified, so nothing served.
        threshold = page.locator('#quality-cache td[data-col="threshold"]')
        assert threshold.inner_text() == "none yet: no semantic hit"
        assert page.inner_text('#quality-cache td[data-col="savings_net"]').startswith(("$", "-$"))
        page.screenshot(path=str(ARTIFACTS / "dashboard-quality.png"), full_page=True)
        assert page.errors == []
        page.close()


def test_a_range_chosen_while_a_load_is_in_flight_is_loaded(
    browser: Any, dashboard_gateway: GatewayProcess, traffic: dict[str, Any]
) -> None:
    """The range picker changed while the page is still loading the previous range: once that load
    ends, the chosen range is loaded (not left unloaded until the next auto-refresh)."""
    held: list[Any] = []
    asked: list[str] = []

    def hold_first_summary(route: Any) -> None:
        if not held:
            held.append(route)  # answered later, by the test
        else:
            route.continue_()

    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    page.on("request", lambda request: asked.append(request.url))
    page.route("**/admin/dashboard/summary*", hold_first_summary)
    page.goto(f"http://127.0.0.1:{dashboard_gateway.port}/dashboard")
    page.fill("#master-key", MASTER_KEY)
    page.click("#login-button")
    page.select_option("#refresh", "0")  # no auto-refresh to load the range instead
    wait_until(lambda: page.wait_for_timeout(20) or bool(held), "the first summary is asked for")
    page.select_option("#range", "1h")
    held[0].continue_()
    sync_api.expect(page.locator("#kpi-requests")).to_have_text(str(traffic["requests"]), timeout=10_000)
    wait_until(
        lambda: page.wait_for_timeout(20) or any("/summary?range=1h" in url for url in asked),
        "the range chosen during the first load is loaded",
        timeout_s=5,
    )
    page.wait_for_selector("body[data-loaded]", timeout=10_000)
    assert page.get_attribute("#kpi-requests", "data-value") == str(traffic["requests"])
    page.close()


def test_a_search_the_gateway_refuses_says_so(
    browser: Any, dashboard_gateway: GatewayProcess, traffic: dict[str, Any]
) -> None:
    """A search the API answers with an error (here a 400: a NUL character) shows that error, and no
    longer the rows of the previous search as if they were its results."""
    page = open_dashboard(browser, dashboard_gateway, MASTER_KEY)
    page.wait_for_selector("body[data-loaded]", timeout=15_000)
    sync_api.expect(page.locator("#requests tbody tr.row")).to_have_count(traffic["requests"], timeout=10_000)
    page.fill("#search", "deepseek\x00")
    with page.expect_response("**/admin/dashboard/requests?*") as answer:
        page.click("#search-form button")
    assert answer.value.status == 400
    sync_api.expect(page.locator("#requests-error")).to_contain_text("NUL character", timeout=10_000)
    assert page.locator("#requests tbody tr.row").count() == 0
    page.close()


PAGED_REQUESTS = 30  # more than a page of "Recent requests" (25)


@pytest.fixture(scope="module")
def paged_gateway(sim: SimProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    with run_gateway(tmp_path_factory.mktemp("paged-dashboard"), sim) as gw:
        client = openai.OpenAI(base_url=gw.base_url, api_key=make_key(gw.store_path, "pager"), max_retries=0)
        for _ in range(PAGED_REQUESTS):
            client.chat.completions.create(model="deepseek-v4-flash", messages=prompt_of(30))
        wait_until(lambda: records(gw) >= PAGED_REQUESTS, "the requests are recorded")
        yield gw


def test_older_requests_page_back_through_the_search_shown(
    browser: Any, paged_gateway: GatewayProcess
) -> None:
    """'Older requests' continues the list on the page: text typed in the search box but not
    searched for does not filter the older rows (mixing two searches in one list)."""
    page = open_dashboard(browser, paged_gateway, MASTER_KEY)
    page.wait_for_selector("body[data-loaded]", timeout=15_000)
    rows = page.locator("#requests tbody tr.row")
    sync_api.expect(rows).to_have_count(25, timeout=10_000)
    page.fill("#search", "typed-but-not-searched")
    page.click("#more")
    sync_api.expect(rows).to_have_count(PAGED_REQUESTS, timeout=10_000)
    assert page.errors == []
    page.close()


def test_auto_refresh_keeps_the_older_requests_and_the_open_row(
    browser: Any, paged_gateway: GatewayProcess
) -> None:
    """Paged back and a row opened: an auto-refresh updates the figures but leaves the list as the
    reader left it (it used to snap back to the first page, closed, every 30 s)."""
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    page.clock.install()  # the page's timers on a clock the test moves
    page.goto(f"http://127.0.0.1:{paged_gateway.port}/dashboard")
    page.fill("#master-key", MASTER_KEY)
    page.click("#login-button")
    page.wait_for_selector("body[data-loaded]", timeout=15_000)
    rows = page.locator("#requests tbody tr.row")
    sync_api.expect(rows).to_have_count(25, timeout=10_000)
    page.click("#more")
    sync_api.expect(rows).to_have_count(PAGED_REQUESTS, timeout=10_000)
    rows.nth(PAGED_REQUESTS - 1).click()
    sync_api.expect(page.locator("#requests tr.attempts")).to_have_count(1)
    loaded = page.get_attribute("body", "data-loaded")
    with page.expect_response("**/admin/dashboard/summary?*"):
        page.clock.run_for(31_000)  # the default auto-refresh: 30 s
    sync_api.expect(page.locator("body")).not_to_have_attribute("data-loaded", loaded or "", timeout=10_000)
    assert rows.count() == PAGED_REQUESTS
    assert page.locator("#requests tr.attempts").count() == 1
    page.close()


def test_spending_more_than_the_baseline_says_more_not_negative_less(
    browser: Any, sim: SimProcess, tmp_path: Path
) -> None:
    """Traffic dearer than the baseline model: the Saved card says how much more it cost, not a
    negative percentage 'less than' the baseline."""
    with run_gateway(tmp_path, sim, "baseline_model: Qwen/Qwen3-8B\n") as gw:
        client = openai.OpenAI(base_url=gw.base_url, api_key=make_key(gw.store_path, "dear"), max_retries=0)
        client.chat.completions.create(model="deepseek-v4-flash", messages=prompt_of(100))
        wait_until(lambda: records(gw) >= 1, "the request is recorded")
        page = open_dashboard(browser, gw, MASTER_KEY)
        page.wait_for_selector("body[data-loaded]", timeout=15_000)
        summary = httpx.get(
            f"http://127.0.0.1:{gw.port}/admin/dashboard/summary",
            headers={"Authorization": f"Bearer {MASTER_KEY}"},
        ).json()
        assert summary["savings_percent"] < 0
        assert page.inner_text("#kpi-savings-pct") == (
            f"{-summary['savings_percent']:.1f}% more than Qwen/Qwen3-8B"
        )
        # An overspend is not written in the green of a saving.
        card = page.locator(".card:has(#kpi-savings)")
        assert "good" not in (card.get_attribute("class") or "").split()
        assert page.eval_on_selector("#kpi-savings", "e => getComputedStyle(e).color") == "rgb(198, 47, 47)"
        page.close()


def test_day_buckets_are_labelled_with_their_utc_day_in_any_time_zone(
    browser: Any, dashboard_gateway: GatewayProcess, traffic: dict[str, Any]
) -> None:
    """Series buckets of a day start at 00:00 UTC: a browser west of UTC labels each with that day,
    not with the local date of its start (the day before)."""
    page = browser.new_page(viewport={"width": 1440, "height": 1000}, timezone_id="Pacific/Honolulu")
    page.goto(f"http://127.0.0.1:{dashboard_gateway.port}/dashboard")
    page.fill("#master-key", MASTER_KEY)
    page.click("#login-button")
    page.wait_for_selector("body[data-loaded]", timeout=15_000)
    loaded = page.get_attribute("body", "data-loaded") or ""
    with page.expect_response("**/admin/dashboard/series?range=90d*") as answer:
        page.select_option("#range", "90d")
    series = answer.value.json()
    assert series["bucket_s"] == 86400
    sync_api.expect(page.locator("body")).not_to_have_attribute("data-loaded", loaded, timeout=10_000)
    labels = page.evaluate("() => Chart.getChart('chart-spend').data.labels")
    days = [datetime.fromtimestamp(p["t"], UTC) for p in series["points"]]
    assert labels == [f"{day.day} {day:%b}" for day in days]
    page.close()


def test_a_gateway_without_a_master_key_says_the_dashboard_is_disabled(
    browser: Any, sim: SimProcess, tmp_path: Path
) -> None:
    """No master key set: the sign-in says the admin endpoints are disabled and how to enable
    them (the gateway's own message), not that the key typed was refused."""
    with run_gateway(tmp_path, sim, env={"FAREGATE_MASTER_KEY": ""}) as gw:
        page = open_dashboard(browser, gw, "any-key-at-all")
        page.wait_for_selector("#login-error:has-text('disabled')", timeout=10_000)
        assert "FAREGATE_MASTER_KEY" in page.inner_text("#login-error")
        page.close()


def test_alerts_the_webhook_did_not_take_are_counted_on_the_page(
    browser: Any, sim: SimProcess, tmp_path: Path
) -> None:
    """A webhook that is down: the alert fires, every post fails (three tries), and the Alerts panel
    says how many events the webhook did not take, as documented."""
    config = (
        "alerts:\n"
        "  interval_s: 0.5\n"
        f"  webhook: {{url: 'http://127.0.0.1:{free_port()}/down', timeout_s: 1}}\n"
        "  rules:\n"
        "    - {name: any-spend, metric: daily_spend_usd, above: 0.0000001}\n"
    )
    with run_gateway(tmp_path, sim, config) as gw:
        client = openai.OpenAI(
            base_url=gw.base_url, api_key=make_key(gw.store_path, "spender"), max_retries=0
        )
        client.chat.completions.create(model="deepseek-v4-flash", messages=prompt_of(30))

        def failures() -> int:
            response = httpx.get(
                f"http://127.0.0.1:{gw.port}/admin/dashboard/alerts",
                headers={"Authorization": f"Bearer {MASTER_KEY}"},
            )
            return int(response.json()["webhook_failures"])

        wait_until(lambda: failures() >= 1, "the webhook post fails three times")
        page = open_dashboard(browser, gw, MASTER_KEY)
        page.wait_for_selector("body[data-loaded]", timeout=15_000)
        assert page.is_visible("[data-testid=alert-firing]")
        sync_api.expect(page.locator("#alerts-webhook")).to_contain_text(
            f"{failures()} alert event", timeout=10_000
        )
        assert page.errors == []
        page.close()


def test_a_failing_search_does_not_take_the_other_panels_down(
    browser: Any, dashboard_gateway: GatewayProcess, traffic: dict[str, Any]
) -> None:
    """The search in force fails (a 400 here): a refresh still loads every other panel, and the
    error stays where the search is."""
    page = open_dashboard(browser, dashboard_gateway, MASTER_KEY)
    page.wait_for_selector("body[data-loaded]", timeout=15_000)
    page.fill("#search", "deepseek\x00")
    page.click("#search-form button")
    sync_api.expect(page.locator("#requests-error")).to_contain_text("NUL character", timeout=10_000)
    loaded = page.get_attribute("body", "data-loaded") or ""
    page.click("#refresh-now")
    sync_api.expect(page.locator("body")).not_to_have_attribute("data-loaded", loaded, timeout=10_000)
    assert not page.is_visible("#load-error")
    assert page.is_visible("#requests-error")
    assert page.inner_text("#kpi-requests") == str(traffic["requests"])
    page.close()


def test_alert_times_are_in_the_browsers_time_zone_as_request_times_are(
    browser: Any, dashboard_gateway: GatewayProcess, traffic: dict[str, Any]
) -> None:
    """The Alerts panel's 'Since' is written like the requests' times (the browser's time zone),
    not as a raw UTC timestamp next to them."""

    def firing() -> list[dict[str, Any]]:
        return list(
            httpx.get(
                f"http://127.0.0.1:{dashboard_gateway.port}/admin/dashboard/alerts",
                headers={"Authorization": f"Bearer {MASTER_KEY}"},
            ).json()["firing"]
        )

    wait_until(lambda: bool(firing()), "the spend alert fires")
    page = browser.new_page(viewport={"width": 1440, "height": 1000}, timezone_id="Asia/Tokyo")
    page.goto(f"http://127.0.0.1:{dashboard_gateway.port}/dashboard")
    page.fill("#master-key", MASTER_KEY)
    page.click("#login-button")
    page.wait_for_selector("body[data-loaded]", timeout=15_000)
    alerts = {"firing": firing()}
    fired = datetime.fromisoformat(alerts["firing"][0]["fired_at"]).astimezone(ZoneInfo("Asia/Tokyo"))
    since = page.locator('#alerts-table td[data-col="since"]').first
    sync_api.expect(since).to_have_text(f"{fired:%d/%m, %H:%M:%S}", timeout=10_000)
    page.close()


def test_the_alert_rules_say_what_narrows_them_and_what_they_measure_over(
    browser: Any, dashboard_gateway: GatewayProcess
) -> None:
    """Rules apart only in their route are told apart, and a spend rule (since 00:00 UTC) shows no
    window it does not use."""
    page = open_dashboard(browser, dashboard_gateway, MASTER_KEY)
    page.wait_for_selector("body[data-loaded]", timeout=15_000)
    rules = page.locator("#alert-rules tbody tr")
    rows = [rules.nth(i).locator("td").all_inner_texts() for i in range(rules.count())]
    assert rows == [
        ["big-spender", "daily_spend_usd, per key", "above 0.001", "since 00:00 UTC", "0 min"],
        ["chat-slow", "p99_latency_ms, route chat", "above 600000", "last 15 min", "0 min"],
        ["code-slow", "p99_latency_ms, route code", "above 600000", "last 15 min", "0 min"],
    ]
    assert page.errors == []
    page.close()


def test_an_error_page_from_a_proxy_is_reported_by_its_status(
    browser: Any, dashboard_gateway: GatewayProcess, traffic: dict[str, Any]
) -> None:
    """An endpoint answered with a non-JSON error (a reverse proxy's 502 page, here stood in for by
    the browser): the banner gives the HTTP status, not a JSON parser's complaint."""
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    page.route(
        "**/admin/dashboard/series*",
        lambda route: route.fulfill(status=502, content_type="text/html", body="<html>Bad Gateway</html>"),
    )
    page.goto(f"http://127.0.0.1:{dashboard_gateway.port}/dashboard")
    page.fill("#master-key", MASTER_KEY)
    page.click("#login-button")
    sync_api.expect(page.locator("#load-error")).to_have_text(
        "Could not load the dashboard: HTTP 502", timeout=10_000
    )
    page.close()


def test_older_requests_clicked_twice_while_loading_appends_the_page_once(
    browser: Any, paged_gateway: GatewayProcess
) -> None:
    """A slow 'Older requests' (a search scans every record) clicked again before it answers: the
    older page is appended once, not once per click."""
    held: list[Any] = []
    page = open_dashboard(browser, paged_gateway, MASTER_KEY)
    page.wait_for_selector("body[data-loaded]", timeout=15_000)
    rows = page.locator("#requests tbody tr.row")
    sync_api.expect(rows).to_have_count(25, timeout=10_000)
    page.route("**/admin/dashboard/requests?*before=*", lambda route: held.append(route))
    page.click("#more")
    wait_until(lambda: page.wait_for_timeout(20) or bool(held), "the older page is asked for")
    page.click("#more", force=True)  # the second click, whether or not the button takes it
    page.wait_for_timeout(200)
    asked = len(held)
    for route in held:
        route.continue_()
    assert asked == 1
    sync_api.expect(rows).to_have_count(PAGED_REQUESTS, timeout=10_000)
    ids = page.eval_on_selector_all(
        '#requests tbody tr.row td[data-col="request_id"]', "cells => cells.map(c => c.textContent)"
    )
    assert len(set(ids)) == len(ids) == PAGED_REQUESTS
    page.close()


def test_a_refresh_that_ends_after_a_search_does_not_overwrite_its_results(
    browser: Any, dashboard_gateway: GatewayProcess, traffic: dict[str, Any]
) -> None:
    """A refresh in flight when a search is run ends after it: the list keeps the search's
    results, not the rows the refresh asked for before the search."""
    held: list[Any] = []

    def hold_unsearched(route: Any) -> None:
        if "q=" not in route.request.url and not held:
            held.append(route)
        else:
            route.continue_()

    page = open_dashboard(browser, dashboard_gateway, MASTER_KEY)
    page.wait_for_selector("body[data-loaded]", timeout=15_000)
    rows = page.locator("#requests tbody tr.row")
    sync_api.expect(rows).to_have_count(traffic["requests"], timeout=10_000)
    loaded = page.get_attribute("body", "data-loaded") or ""
    page.route("**/admin/dashboard/requests?*", hold_unsearched)
    page.click("#refresh-now")
    wait_until(lambda: page.wait_for_timeout(20) or bool(held), "the refresh asks for the requests")
    page.fill("#search", traffic["ids"][0])
    page.click("#search-form button")
    sync_api.expect(rows).to_have_count(1, timeout=10_000)
    held[0].continue_()
    sync_api.expect(page.locator("body")).not_to_have_attribute("data-loaded", loaded, timeout=10_000)
    assert rows.count() == 1
    assert page.inner_text('#requests tbody tr.row td[data-col="request_id"]') == traffic["ids"][0]
    page.close()


def test_a_panel_that_fails_fast_does_not_pile_up_the_slow_ones(
    browser: Any, dashboard_gateway: GatewayProcess, traffic: dict[str, Any]
) -> None:
    """One endpoint fails at once while another is slow (a struggling store): each load waits for
    every request it made before another load starts, so Refresh (or the auto-refresh) does not add
    a new set of queries behind the slow ones at every click."""
    held: list[Any] = []
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    # Counts the page's own fetch calls (in the page, so the count is exact once a click returns).
    page.add_init_script(
        """(() => {
            const fetch = window.fetch.bind(window);
            window.latencyAsked = 0;
            window.fetch = (url, init) => {
                if (String(url).includes("/admin/dashboard/latency")) window.latencyAsked += 1;
                return fetch(url, init);
            };
        })()"""
    )
    page.route(
        "**/admin/dashboard/summary*",
        lambda route: route.fulfill(
            status=503, content_type="application/json", body='{"error": {"message": "store busy"}}'
        ),
    )
    page.route("**/admin/dashboard/latency*", lambda route: held.append(route))
    page.goto(f"http://127.0.0.1:{dashboard_gateway.port}/dashboard")
    page.fill("#master-key", MASTER_KEY)
    page.click("#login-button")
    page.select_option("#refresh", "0")
    wait_until(lambda: page.wait_for_timeout(20) or len(held) == 2, "the first load asks for latency")
    for _ in range(3):
        page.click("#refresh-now")
    assert page.evaluate("window.latencyAsked") == 2
    for route in held:
        route.continue_()
    # The clicks made during the load are loaded once it ends: one more load, not three.
    wait_until(lambda: page.wait_for_timeout(20) or len(held) == 4, "the asked refresh runs")
    for route in held[2:]:
        route.continue_()
    sync_api.expect(page.locator("#load-error")).to_have_text(
        "Could not load the dashboard: store busy", timeout=10_000
    )
    assert page.evaluate("window.latencyAsked") == 4
    page.close()


def test_a_cost_below_a_millionth_of_a_dollar_is_not_shown_as_zero(
    browser: Any, sim: SimProcess, tmp_path: Path
) -> None:
    """An embedding of a word costs $0.00000002: the page shows that, not "$0.000000" (a paid
    request shown as free), in the Spend card and the request's Cost."""
    with run_gateway(tmp_path, sim) as gw:
        client = openai.OpenAI(base_url=gw.base_url, api_key=make_key(gw.store_path, "tiny"), max_retries=0)
        raw = client.embeddings.with_raw_response.create(model="text-embedding-3-small", input="hi")
        assert raw.headers["x-faregate-cost-usd"] == "0.00000002"
        wait_until(lambda: records(gw) >= 1, "the request is recorded")
        page = open_dashboard(browser, gw, MASTER_KEY)
        page.wait_for_selector("body[data-loaded]", timeout=15_000)
        assert page.inner_text("#kpi-spend") == "$0.00000002"
        assert page.inner_text("#kpi-avg-cost") == "$0.00000002 per request"
        assert page.inner_text('#requests tbody tr.row td[data-col="cost"]') == "$0.00000002"
        assert page.inner_text('#by-model td[data-col="spend"]') == "$0.00000002"
        page.close()


def test_a_request_that_never_answers_ends_the_load_with_an_error(
    browser: Any, dashboard_gateway: GatewayProcess, traffic: dict[str, Any]
) -> None:
    """A dashboard query that never answers (a hung connection, a stalled proxy): after a minute
    the load ends, says so, and the next Refresh loads again; it waited for ever, the page frozen
    on its last figures with no word of it, every auto-refresh dropped behind it."""
    held: list[Any] = []
    asked: list[str] = []
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    page.clock.install()
    page.on("request", lambda request: asked.append(request.url))
    page.route(
        "**/admin/dashboard/summary*", lambda route: held.append(route) if not held else route.continue_()
    )
    page.goto(f"http://127.0.0.1:{dashboard_gateway.port}/dashboard")
    page.fill("#master-key", MASTER_KEY)
    page.click("#login-button")
    page.select_option("#refresh", "0")
    wait_until(lambda: page.wait_for_timeout(20) or bool(held), "the summary is asked for")
    page.clock.run_for(61_000)
    sync_api.expect(page.locator("#load-error")).to_have_text(
        "Could not load the dashboard: no answer in 60 s", timeout=10_000
    )
    summaries = sum("/admin/dashboard/summary" in url for url in asked)
    page.click("#refresh-now")
    page.wait_for_selector("body[data-loaded]", timeout=15_000)
    assert sum("/admin/dashboard/summary" in url for url in asked) == summaries + 1
    assert page.is_hidden("#load-error")
    page.close()


def test_a_resolved_alert_shows_when_it_resolved(browser: Any, sim: SimProcess, tmp_path: Path) -> None:
    """A resolved alert's row gives the time it resolved, not the time it fired: under 'resolved'
    the time it fired read as the time the problem ended."""
    config = (
        "alerts:\n"
        "  interval_s: 0.5\n"
        "  rules:\n"
        "    - {name: failing, metric: error_rate, above: 50, window_minutes: 0.05, min_count: 1}\n"
    )
    with run_gateway(tmp_path, sim, config) as gw:
        client = openai.OpenAI(base_url=gw.base_url, api_key=make_key(gw.store_path, "f"), max_retries=0)
        with pytest.raises(openai.APIStatusError):
            client.chat.completions.create(
                model="qwen3-8b", messages=prompt_of(50), extra_body={"sim": {"fault": "server_error"}}
            )

        def resolved() -> list[dict[str, Any]]:
            recent = httpx.get(
                f"http://127.0.0.1:{gw.port}/admin/dashboard/alerts",
                headers={"Authorization": f"Bearer {MASTER_KEY}"},
            ).json()["recent"]
            return [event for event in recent if event["status"] == "resolved"]

        wait_until(lambda: bool(resolved()), "the alert fires, then resolves once its window is empty")
        event = resolved()[0]
        page = browser.new_page(viewport={"width": 1440, "height": 1000}, timezone_id="Asia/Tokyo")
        page.goto(f"http://127.0.0.1:{gw.port}/dashboard")
        page.fill("#master-key", MASTER_KEY)
        page.click("#login-button")
        page.wait_for_selector("body[data-loaded]", timeout=15_000)
        at = datetime.fromtimestamp(event["at"], ZoneInfo("Asia/Tokyo"))
        fired = datetime.fromisoformat(event["fired_at"]).astimezone(ZoneInfo("Asia/Tokyo"))
        assert f"{at:%H:%M:%S}" != f"{fired:%H:%M:%S}"
        row = page.locator("#alerts-table tbody tr").first
        assert row.locator('td[data-col="status"]').inner_text() == "resolved"
        assert row.locator('td[data-col="since"]').inner_text() == f"{at:%d/%m, %H:%M:%S}"
        page.close()


# The tab's visibility under the test's control (headless Chromium's page is always "visible"):
# `window.setHidden(true)` hides it as another tab in front would, with the event a browser sends.
# It also counts the page's own summary fetches (in the page: exact once a call returns).
VISIBILITY_AND_SUMMARIES = """(() => {
    let hidden = false;
    Object.defineProperty(document, "hidden", { get: () => hidden });
    Object.defineProperty(document, "visibilityState", { get: () => (hidden ? "hidden" : "visible") });
    window.setHidden = (value) => {
        hidden = value;
        document.dispatchEvent(new Event("visibilitychange"));
    };
    const fetch = window.fetch.bind(window);
    window.summaryAsked = 0;
    window.fetch = (url, init) => {
        if (String(url).includes("/admin/dashboard/summary")) window.summaryAsked += 1;
        return fetch(url, init);
    };
})()"""


def test_a_hidden_tab_does_not_refresh_and_refreshes_at_once_when_shown(
    browser: Any, dashboard_gateway: GatewayProcess, traffic: dict[str, Any]
) -> None:
    """A dashboard left open in a background tab kept loading every panel each 30 s for nobody
    (a dozen store queries a tick, per open tab, all day). Hidden, it asks for nothing; shown
    again, it loads at once, then goes on refreshing."""
    page = browser.new_page(viewport={"width": 1440, "height": 1000})
    page.clock.install()  # the page's timers on a clock the test moves
    page.add_init_script(VISIBILITY_AND_SUMMARIES)
    page.goto(f"http://127.0.0.1:{dashboard_gateway.port}/dashboard")
    page.fill("#master-key", MASTER_KEY)
    page.click("#login-button")
    page.wait_for_selector("body[data-loaded]", timeout=15_000)
    assert page.evaluate("window.summaryAsked") == 1
    page.evaluate("window.setHidden(true)")
    page.clock.run_for(95_000)  # three ticks of the default auto-refresh (30 s)
    assert page.evaluate("window.summaryAsked") == 1
    loaded = page.get_attribute("body", "data-loaded")
    page.evaluate("window.setHidden(false)")
    assert page.evaluate("window.summaryAsked") == 2
    sync_api.expect(page.locator("body")).not_to_have_attribute("data-loaded", loaded or "", timeout=10_000)
    page.clock.run_for(31_000)  # the auto-refresh goes on
    assert page.evaluate("window.summaryAsked") == 3
    # With auto-refresh off, showing the tab again loads nothing either.
    page.select_option("#refresh", "0")
    page.evaluate("window.setHidden(true)")
    page.evaluate("window.setHidden(false)")
    assert page.evaluate("window.summaryAsked") == 3
    page.close()


def test_the_keys_table_says_it_shows_the_top_20_of_more(
    browser: Any, sim: SimProcess, tmp_path: Path
) -> None:
    """The page asks for the 20 keys that spent most: with more keys in the range, the table said
    nothing of the others, and read as every key."""
    with run_gateway(tmp_path, sim) as gw:
        for n in range(21):
            client = openai.OpenAI(
                base_url=gw.base_url, api_key=make_key(gw.store_path, f"k{n}"), max_retries=0
            )
            client.chat.completions.create(model="deepseek-v4-flash", messages=prompt_of(20 + n))
        wait_until(lambda: records(gw) >= 21, "the requests are recorded")
        page = open_dashboard(browser, gw, MASTER_KEY)
        page.wait_for_selector("body[data-loaded]", timeout=15_000)
        assert page.locator("#by-key tbody tr").count() == 20
        assert page.is_visible("#by-key-note")
        assert page.inner_text("#by-key-note") == "Top 20 of 21 keys by spend"
        # A list that is whole says nothing more.
        assert page.is_hidden("#by-model-note")
        assert page.errors == []
        page.close()
