"""/metrics across the workers of `serve --workers N`: one scrape, every worker's figures.

A scrape reaches one worker (the port is shared). Each worker writes its own exposition to a
file in a directory the supervisor made, every PUBLISH_INTERVAL_S; the worker that is scraped
renders its own live figures, publishes them, and adds the other workers' last files: counters
and histograms (buckets, sums, counts) are summed sample by sample, so rates and quantiles over
the sum are the gateway's (save the few counters every worker reads from the store, STORE_COUNTERS:
the largest); gauges (breaker states, records pending, alerts firing) are one series per worker,
with a `worker` label, as a sum of states would mean nothing. The others' figures are at most
PUBLISH_INTERVAL_S old.

A worker that exits has its gauges dropped by the supervisor (SharedMetrics.retire): until its
successor publishes, a scrape shows none of its series but its counters and histograms.

A restarted worker takes its predecessor's seat (the same index): it reads the file its
predecessor left and adds those counters and histograms to its own, so the sum never goes back.
Starting again from zero would read as a counter reset of the sum, and Prometheus would then count
every other worker's total once more as new (what the predecessor served in its last second,
after its last publication, is not counted).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Sample

log = logging.getLogger("faregate.workers")

PUBLISH_INTERVAL_S = 1.0
SUMMED = frozenset({"counter", "histogram", "summary"})
# Counters every worker reads from the store rather than counts itself: the calibrated routes' and
# the semantic cache's verification totals, kept in the one shared calibration state
# (quality/metrics.py, quality/service.py). Each worker shows the same total, some a refresh
# behind: the workers' figure is the largest of theirs, not their sum, and a restarted worker
# reads it afresh from the store instead of carrying its predecessor's.
STORE_COUNTERS = frozenset(
    {
        "faregate_verifications",
        "faregate_verification_cost_usd",
        "faregate_cache_verifications",
        "faregate_cache_verification_cost_usd",
    }
)


@dataclass(slots=True)
class SharedMetrics:
    """This worker's place among the workers that share their metrics through `directory`."""

    directory: Path
    index: int
    count: int
    # The counters and histograms a predecessor in this seat published last (see `join`).
    carried: str = ""
    # Why this worker's last write to `directory` failed (a full /tmp, a folder made read-only);
    # None once one succeeds. Its answers then carry its own live figures and the others' last
    # published ones, and say so: the write is never what fails a scrape or a /health.
    failing: str | None = field(default=None, compare=False)

    @classmethod
    def join(cls, directory: Path, index: int, count: int) -> SharedMetrics:
        """This worker's place, carrying on the counters of a predecessor that had the same index
        (a restarted worker; its last file is final, as it has exited)."""
        try:
            text = (directory / f"worker-{index}.prom").read_text(encoding="utf-8")
        except FileNotFoundError:
            return cls(directory, index, count)
        return cls(directory, index, count, _counters_only(text))

    @staticmethod
    def retire(directory: Path, index: int) -> None:
        """Worker `index` exited (the supervisor says it): its gauges said what a live process saw
        (a breaker open, records pending, an alert firing) and are dropped; its counters and
        histograms stay, in the sums and for its successor to carry on. Its live views go too."""
        for view in directory.glob(f"worker-{index}.live.*"):
            view.unlink(missing_ok=True)
        path = directory / f"worker-{index}.prom"
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        temporary = path.with_suffix(".tmp")
        temporary.write_text(_counters_only(text), encoding="utf-8")
        os.replace(temporary, path)

    def _path(self, index: int) -> Path:
        return self.directory / f"worker-{index}.prom"

    def _own(self, exposition: bytes) -> bytes:
        """This worker's figures with its predecessor's counters added."""
        if not self.carried:
            return exposition
        return merge_expositions([("", exposition.decode("utf-8")), ("", self.carried)], by_worker=False)

    def publish(self, exposition: bytes) -> None:
        """Leave this worker's exposition for the others (written whole, then renamed)."""
        self._write(self._own(exposition))

    def _write(self, exposition: bytes) -> None:
        path = self._path(self.index)
        self._put(path, path.with_suffix(".tmp"), exposition)

    def _put(self, path: Path, temporary: Path, body: bytes) -> None:
        """Write `body` whole to `path` (then renamed over it). A failure is logged once, when
        writes start failing, and kept in `failing` until one succeeds again."""
        try:
            _write_whole(path, temporary, body)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temporary.unlink(missing_ok=True)  # a partial write holds space /tmp may need
            if self.failing is None:
                log.warning(
                    "worker %d cannot publish its figures to %s (%s): /health and /metrics go on with "
                    "its own and the other workers' last published ones, which the others cannot see "
                    "of it until the write succeeds again",
                    *(self.index, self.directory, exc),
                )
            self.failing = f"{type(exc).__name__}: {exc}"
            return
        if self.failing is not None:
            log.info("worker %d publishes its figures to %s again", self.index, self.directory)
            self.failing = None

    def publish_view(self, name: str, body: bytes, *, live: bool = False) -> None:
        """Leave an admin answer of this worker's for the others to give (written whole, then
        renamed): one about state only this worker has, as the alerts worker 0 posts. `live`: it
        says what a live process holds (its breakers, records pending), and goes when it exits."""
        path = _view_path(self.directory, self.index, name, live)
        self._put(path, path.with_name(path.name + ".tmp"), body)

    def view(self, index: int, name: str, *, live: bool = False) -> bytes | None:
        """What worker `index` published as `name` last (None: nothing yet, or it exited since)."""
        try:
            return _view_path(self.directory, index, name, live).read_bytes()
        except OSError:  # FileNotFoundError mostly; a folder made unreadable answers as one not there
            return None

    def merged(self, own: bytes) -> bytes:
        """This worker's live exposition with the others' last published ones. The live one is
        published first: a scrape that reaches another worker next must not read an older figure
        of this one than the sum just served (the sum would go back, and Prometheus read a
        counter reset)."""
        own = self._own(own)
        self._write(own)
        # In worker order whichever worker is scraped: float addition is not associative, and a
        # sum that came out one unit in the last place lower than the scrape before would read
        # as a counter reset.
        texts = []
        for index in range(self.count):
            if index == self.index:
                texts.append((str(index), own.decode("utf-8")))
                continue
            with contextlib.suppress(OSError):  # a worker that has not published yet (or unreadable)
                texts.append((str(index), self._path(index).read_text(encoding="utf-8")))
        merged = merge_expositions(texts)
        if self.failing is None:
            return merged
        # A comment (Prometheus reads past it): who reads the page sees why the sum may lag.
        note = f"# faregate: worker {self.index} cannot publish its figures to the others ({self.failing})\n"
        return note.encode("utf-8") + merged


def _write_whole(path: Path, temporary: Path, body: bytes) -> None:
    """Written to `temporary`, then renamed over `path`: a reader never sees half of it."""
    temporary.write_bytes(body)
    os.replace(temporary, path)


def _view_path(directory: Path, index: int, name: str, live: bool) -> Path:
    return directory / (f"worker-{index}.live.{name}" if live else f"worker-{index}.{name}")


class _Merged(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterable[Metric]:
        return self._families


def _counters_only(text: str) -> str:
    """An exposition's counters and histograms (what adds up across a restart), without its gauges."""
    kept = [
        family
        for family in text_string_to_metric_families(text)
        if family.type in SUMMED and family.name not in STORE_COUNTERS
    ]
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(kept))
    return generate_latest(registry).decode("utf-8")


def merge_expositions(texts: list[tuple[str, str]], by_worker: bool = True) -> bytes:
    """Prometheus text expositions, one per worker (its name, its text), as one: counters and
    histograms summed by name and labels (STORE_COUNTERS: the largest), gauges (and anything
    else) labelled by worker (kept as they are when not `by_worker`: one worker's figures and its
    predecessor's counters)."""
    families: dict[str, Metric] = {}
    sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
    for worker, text in texts:
        for family in text_string_to_metric_families(text):
            merged = families.get(family.name)
            if merged is None:
                merged = families[family.name] = Metric(family.name, family.documentation, family.type)
                sums[family.name] = {}
            for sample in family.samples:
                if family.type in SUMMED:
                    key = (sample.name, tuple(sorted(sample.labels.items())))
                    found = sums[family.name].get(key)
                    if found is None:
                        sums[family.name][key] = sample.value
                    elif family.name in STORE_COUNTERS:
                        sums[family.name][key] = max(found, sample.value)
                    else:
                        sums[family.name][key] = found + sample.value
                else:
                    labels = {**sample.labels, "worker": worker} if by_worker else sample.labels
                    merged.samples.append(Sample(sample.name, labels, sample.value, sample.timestamp))
    for name, totals in sums.items():
        families[name].samples.extend(
            Sample(sample, dict(labels), value) for (sample, labels), value in totals.items()
        )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(list(families.values())))
    return generate_latest(registry)
