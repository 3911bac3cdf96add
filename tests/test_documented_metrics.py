"""docs/dashboard.md's table of Prometheus metrics is what GET /metrics exposes: every family the
gateway can expose is in it, under its name, type and labels, and it lists no family that does not
exist. The exposition is rendered in process with every source of figures present (the request
metrics, the scrape-time state with metering on, the calibrated routes and semantic cache)."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from faregate.config import BreakerSettings
from faregate.quality.metrics import QualityCollector
from faregate.routing.health import HealthBoard
from faregate.telemetry.metrics import GatewayMetrics, StateCollector
from faregate.types import Attempt
from test_metrics import record

ROOT = Path(__file__).resolve().parents[1]


class Counters:
    retries = 1
    fallbacks = 1
    verification_retries = 0
    verification_fallbacks = 0


class Writer:
    written = 1
    dropped = 0
    pending = 0


class Verifier:
    started = 1
    dropped = 0


class Cascades:
    judged = 1
    escalated = 0


class Settlements:
    pending = 0
    landed = 0
    lost = 0
    spooled = 0
    replayed = 0


ROUTE = {
    "route": "r",
    "kind": "router",
    "target": 0.95,
    "evidence": 1.0,
    "estimated_quality": 1.0,
    "strong_share": 1.0,
    "flagged": False,
    "cap_reached": False,
    "ranking": "prior",
    "challenger_evidence": 1.0,
    "by_label": {"free": 0, "cheap": 1, "paid": 1},
    "verification_cost_usd": "0.01",
}
CACHE = {
    "threshold": 0.9,
    "wrong_hit_bound": 0.001,
    "max_wrong_hit_rate": 0.005,
    "by_label": {"free": 1, "paid": 1},
    "verification_cost_usd": "0.01",
    "cap_reached": False,
}


def exposed() -> dict[str, tuple[str, set[str]]]:
    """Every family a gateway exposes: name -> (type, label names)."""
    board = HealthBoard(BreakerSettings())
    board.success("sim/m", 10.0)
    state = StateCollector(
        lambda: board,
        Counters(),
        Writer(),
        lambda: [("slow", {"route": "r"})],
        cascades=Cascades(),
        settlements=Settlements(),
    )
    metrics = GatewayMetrics(state)
    metrics.registry.register(QualityCollector(lambda: [ROUTE], lambda: CACHE, Verifier()))
    # A streamed miss and a cache hit, as test_metrics.py's record but served by "sim" on route "r".
    served = {"provider": "sim", "route": "r", "prompt_tokens": 10, "baseline_cost_usd": Decimal("0.002")}
    streamed = {"cost_usd": Decimal("0.001"), "latency_ms": 5.0, "ttft_ms": 1.0}
    metrics.observe(
        record(**served, **streamed, completion_tokens=0, attempts=[Attempt("m", "sim", "ok", 5.0)])
    )
    hit = {"stream": False, "cache_status": "hit", "cost_usd": Decimal(0), "latency_ms": 1.0, "ttft_ms": None}
    metrics.observe(record(**served, **hit, request_id="r2", completion_tokens=2, attempts=[]))
    families: dict[str, tuple[str, set[str]]] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        name = family.name + ("_total" if family.type == "counter" else "")
        labels = {label for s in family.samples for label in s.labels if label != "le"}
        families[name] = (family.type, labels)
    return families


def documented() -> dict[str, tuple[str, set[str]]]:
    """The table of docs/dashboard.md: name -> (type, label names)."""
    text = (ROOT / "docs" / "dashboard.md").read_text(encoding="utf-8")
    table: dict[str, tuple[str, set[str]]] = {}
    for line in text.splitlines():
        if not line.startswith("| `faregate_"):
            continue
        # `\|` is a | inside a cell (direction=in\|out).
        cells = [cell.strip() for cell in line.replace("\\|", "/").strip("|").split("|")]
        names = re.findall(r"`(faregate_\w+)`", cells[0])
        kinds = [kind.strip() for kind in cells[1].split("/")]
        labels = {re.sub(r"=.*", "", label.strip()) for label in cells[2].split(",") if label.strip()}
        for i, name in enumerate(names):
            table[name] = (kinds[min(i, len(kinds) - 1)], labels)
    return table


def test_the_documented_metrics_are_the_exposed_ones() -> None:
    shown, real = documented(), exposed()
    assert sorted(set(real) - set(shown)) == [], "exposed but not in docs/dashboard.md's table"
    assert sorted(set(shown) - set(real)) == [], "in docs/dashboard.md's table but never exposed"
    wrong = {name: (shown[name], real[name]) for name in real if shown[name] != real[name]}
    assert wrong == {}, "documented (type, labels) differ from the exposed ones"
