"""Counter and histogram families for the request path: plain floats updated without a lock,
turned into Prometheus metric families only when /metrics is scraped.

prometheus_client's Counter and Histogram take a lock and check their state on every update
(they may be shared between threads): about half a microsecond an increment, and a request makes
a dozen. Here every update runs on the event loop's thread, and so does every scrape, so a float
in a slot is enough. The exposition is the client library's own (same names, label order, `le`
strings and series order as its Counter and Histogram give): only the bookkeeping differs.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Sequence

from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString


class Cell:
    """One counter series: add to `value`."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0


class Buckets:
    """One histogram series: per-bucket counts (not cumulative) and the sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.sum += value
        if value == value:  # a NaN lands in no bucket, as with prometheus_client
            self.counts[bisect_left(self.bounds, value)] += 1


class CounterFamily:
    def __init__(self, name: str, documentation: str, labels: Sequence[str] = ()) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labels)
        self.children: dict[tuple[str, ...], Cell] = {}
        if not self.labelnames:
            self.children[()] = Cell()  # an unlabelled counter is shown at 0 from the start

    def labels(self, *values: str) -> Cell:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = Cell()
        return child

    def collect(self) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, cell in self.children.items():
            family.add_metric(values, cell.value)
        return family


class HistogramFamily:
    def __init__(
        self, name: str, documentation: str, labels: Sequence[str], buckets: Sequence[float]
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labels)
        bounds = [float(b) for b in buckets]
        if bounds[-1] != math.inf:
            bounds.append(math.inf)
        self.bounds = tuple(bounds)
        self._le = [floatToGoString(b) for b in self.bounds]  # type: ignore[no-untyped-call]
        self.children: dict[tuple[str, ...], Buckets] = {}

    def labels(self, *values: str) -> Buckets:
        child = self.children.get(values)
        if child is None:
            child = self.children[values] = Buckets(self.bounds)
        return child

    def collect(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self.children.items():
            total = 0.0
            cumulative = []
            for le, count in zip(self._le, child.counts, strict=True):
                total += count
                cumulative.append((le, total))
            family.add_metric(values, cumulative, child.sum)
        return family


class Families(Collector):
    """Collects the families it holds, in the order they were added."""

    def __init__(self) -> None:
        self.families: list[CounterFamily | HistogramFamily] = []

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> CounterFamily:
        family = CounterFamily(name, documentation, labels)
        self.families.append(family)
        return family

    def histogram(
        self, name: str, documentation: str, labels: Sequence[str], buckets: Sequence[float]
    ) -> HistogramFamily:
        family = HistogramFamily(name, documentation, labels, buckets)
        self.families.append(family)
        return family

    def collect(self) -> Iterable[Metric]:
        for family in self.families:
            yield family.collect()
