"""/metrics across workers: expositions merged (telemetry/metrics_share.py)."""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from faregate.quality.metrics import QualityCollector
from faregate.telemetry.metrics_share import STORE_COUNTERS, SharedMetrics, merge_expositions


def exposition(requests: int, pending: int) -> bytes:
    registry = CollectorRegistry()
    Counter("faregate_requests", "Requests.", ["route"], registry=registry).labels("chat").inc(requests)
    histogram = Histogram("faregate_latency_seconds", "Latency.", registry=registry, buckets=(0.1,))
    for _ in range(requests):
        histogram.observe(0.05)
    Gauge("faregate_records_pending", "Pending.", registry=registry).set(pending)
    return generate_latest(registry)


def test_counters_and_histograms_are_summed_and_gauges_kept_per_worker() -> None:
    text = merge_expositions([("0", exposition(2, 4).decode()), ("1", exposition(3, 1).decode())]).decode()
    assert 'faregate_requests_total{route="chat"} 5.0' in text
    assert 'faregate_latency_seconds_bucket{le="0.1"} 5.0' in text
    assert "faregate_latency_seconds_count 5.0" in text
    assert 'faregate_records_pending{worker="0"} 4.0' in text
    assert 'faregate_records_pending{worker="1"} 1.0' in text
    assert "# TYPE faregate_requests_total counter" in text


def test_a_worker_adds_what_the_others_published(tmp_path: Path) -> None:
    first, second = SharedMetrics(tmp_path, 0, 3), SharedMetrics(tmp_path, 1, 3)
    second.publish(exposition(7, 0))
    # Worker 2 has not published yet: left out, not an error.
    text = first.merged(exposition(1, 0)).decode()
    assert 'faregate_requests_total{route="chat"} 8.0' in text


def test_successive_scrapes_on_different_workers_never_see_a_counter_go_back(tmp_path: Path) -> None:
    first, second = SharedMetrics(tmp_path, 0, 2), SharedMetrics(tmp_path, 1, 2)
    first.publish(exposition(5, 0))
    second.publish(exposition(5, 0))
    # Worker 0 has served three more requests since it last published; a scrape reaches it...
    one = first.merged(exposition(8, 0)).decode()
    assert 'faregate_requests_total{route="chat"} 13.0' in one
    # ...and the next scrape, before worker 0's next publication, reaches worker 1: the sum must
    # not fall back to 10 (Prometheus would read a counter reset and count all 10 again).
    two = second.merged(exposition(5, 0)).decode()
    assert 'faregate_requests_total{route="chat"} 13.0' in two


def test_a_restarted_worker_carries_on_from_its_predecessors_counters(tmp_path: Path) -> None:
    first = SharedMetrics(tmp_path, 0, 2)
    SharedMetrics(tmp_path, 1, 2).publish(exposition(7, 3))
    before = first.merged(exposition(1, 0)).decode()
    assert 'faregate_requests_total{route="chat"} 8.0' in before
    # Worker 1 dies and is restarted: its successor starts from zero and serves 2 requests. The sum
    # must not fall from 8 to 3 (Prometheus would read a reset and count the other workers' 1
    # again as new requests): the successor adds on to what its predecessor had published.
    successor = SharedMetrics.join(tmp_path, 1, 2)
    successor.publish(exposition(2, 0))
    after = first.merged(exposition(1, 0)).decode()
    assert 'faregate_requests_total{route="chat"} 10.0' in after
    assert "faregate_latency_seconds_count 10.0" in after
    # Gauges are the live worker's own, not its predecessor's.
    assert 'faregate_records_pending{worker="1"} 0.0' in after
    assert 'faregate_records_pending{worker="1"} 3.0' not in after
    # The scraped worker itself shows the same figures.
    assert 'faregate_requests_total{route="chat"} 10.0' in successor.merged(exposition(2, 0)).decode()


def test_a_first_start_carries_nothing(tmp_path: Path) -> None:
    text = SharedMetrics.join(tmp_path, 0, 1).merged(exposition(2, 1)).decode()
    assert 'faregate_requests_total{route="chat"} 2.0' in text
    assert 'faregate_records_pending{worker="0"} 1.0' in text


def cost_exposition(usd: float) -> bytes:
    registry = CollectorRegistry()
    Counter("faregate_cost_usd", "Cost.", registry=registry).inc(usd)
    return generate_latest(registry)


def test_the_sum_is_the_same_whichever_worker_is_scraped(tmp_path: Path) -> None:
    # Float addition is not associative: adding in an order that starts with the scraped worker
    # gave a sum one unit in the last place apart from one scrape to the next, and a counter a
    # hair lower than the scrape before reads to Prometheus as a reset (all of it counted again).
    costs = (0.6516, 0.7887, 0.0939)
    workers = [SharedMetrics(tmp_path, index, 3) for index in range(3)]
    for worker, usd in zip(workers, costs, strict=True):
        worker.publish(cost_exposition(usd))
    sums = {
        line
        for worker, usd in zip(workers, costs, strict=True)
        for line in worker.merged(cost_exposition(usd)).decode().splitlines()
        if line.startswith("faregate_cost_usd_total")
    }
    assert len(sums) == 1, sums


def quality_exposition(verifications: int, cost: str) -> bytes:
    """A worker's calibrated route and semantic cache as it last read them from the store: every
    worker adopts the one shared calibration state, its verification totals included
    (quality/service.py), so each shows the same totals, some a refresh behind the others."""
    route = {
        "route": "r",
        "kind": "cascade",
        "target": 0.9,
        "evidence": 1.0,
        "estimated_quality": 1.0,
        "strong_share": 1.0,
        "flagged": False,
        "cap_reached": False,
        "challenger_evidence": None,
        "by_label": {"free": 0, "cheap": 0, "paid": verifications},
        "verification_cost_usd": cost,
    }
    cache = {
        "threshold": 0.9,
        "wrong_hit_bound": 0.01,
        "max_wrong_hit_rate": 0.02,
        "by_label": {"free": 0, "paid": verifications},
        "verification_cost_usd": cost,
        "cap_reached": False,
    }
    registry = CollectorRegistry()
    registry.register(QualityCollector(lambda: [route], lambda: cache))
    return generate_latest(registry)


def test_totals_every_worker_reads_from_the_store_are_not_added_up(tmp_path: Path) -> None:
    first, second = SharedMetrics(tmp_path, 0, 2), SharedMetrics(tmp_path, 1, 2)
    second.publish(quality_exposition(38, "0.11"))  # a refresh behind
    text = first.merged(quality_exposition(40, "0.12")).decode()
    assert 'faregate_verifications_total{kind="paid",route="r"} 40.0' in text
    assert 'faregate_verification_cost_usd_total{route="r"} 0.12' in text
    assert 'faregate_cache_verifications_total{kind="paid"} 40.0' in text
    assert "faregate_cache_verification_cost_usd_total 0.12" in text
    # The lagging worker scraped next: the figure does not go back (a reset to Prometheus).
    text = second.merged(quality_exposition(38, "0.11")).decode()
    assert 'faregate_verifications_total{kind="paid",route="r"} 40.0' in text
    # Worker 1 restarted reads the totals from the store: its predecessor's are not added on.
    successor = SharedMetrics.join(tmp_path, 1, 2)
    text = successor.merged(quality_exposition(41, "0.13")).decode()
    assert 'faregate_verifications_total{kind="paid",route="r"} 41.0' in text
    assert "faregate_cache_verification_cost_usd_total 0.13" in text


def test_every_counter_of_the_quality_collector_is_known_to_be_the_stores() -> None:
    counters = {
        family.name
        for family in text_string_to_metric_families(quality_exposition(1, "0.1").decode())
        if family.type == "counter"
    }
    assert counters and counters <= STORE_COUNTERS


def test_a_worker_that_exited_shows_no_gauges_until_its_successor_publishes(tmp_path: Path) -> None:
    """Its gauges said what a live process saw (a breaker open, records pending, an alert firing):
    shown on after it died, for as long as its restart waits (up to 30 s, for good if it keeps
    failing), they kept an alert on them firing. Its counters stay, in the sums and for its successor."""
    first = SharedMetrics(tmp_path, 0, 2)
    SharedMetrics(tmp_path, 1, 2).publish(exposition(7, 3))
    SharedMetrics.retire(tmp_path, 1)
    text = first.merged(exposition(1, 0)).decode()
    assert 'faregate_records_pending{worker="1"}' not in text
    assert 'faregate_records_pending{worker="0"} 0.0' in text
    assert 'faregate_requests_total{route="chat"} 8.0' in text
    successor = SharedMetrics.join(tmp_path, 1, 2)
    successor.publish(exposition(2, 1))
    text = first.merged(exposition(1, 0)).decode()
    assert 'faregate_requests_total{route="chat"} 10.0' in text
    assert 'faregate_records_pending{worker="1"} 1.0' in text
    SharedMetrics.retire(tmp_path, 0)  # nothing published yet: nothing to retire


def test_a_worker_that_exited_leaves_its_last_views_but_not_its_live_ones(tmp_path: Path) -> None:
    """A live view (a worker's health: its breakers, records pending) is no one's once the worker
    exits, and goes; another (the alerts worker 0 posted) stays the last word until its successor's."""
    gone = SharedMetrics(tmp_path, 0, 2)
    gone.publish_view("health.json", b'{"pid": 1}', live=True)
    gone.publish_view("alerts.json", b'{"firing": []}')
    other = SharedMetrics(tmp_path, 1, 2)
    assert other.view(0, "health.json", live=True) == b'{"pid": 1}'
    SharedMetrics.retire(tmp_path, 0)
    assert other.view(0, "health.json", live=True) is None
    assert other.view(0, "alerts.json") == b'{"firing": []}'
