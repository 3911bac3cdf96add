"""The in-process vector index behind the semantic cache.

Entries are partitioned by scope, so a lookup only ever compares against entries of the same
tenant, model or route, system prompt and tools: an answer cannot leak across any of them, even
at similarity 1.0. Each partition (`vector_cells.Partition`) keeps its vectors as float32 rows and
searches them exactly up to 4,096 entries; past that it scores only the cells of an inverted file
nearest the query, with exact scores, so a lookup at 50,000 entries reads a tenth of the vectors.

Eviction is by size (least recently used, across all scopes) and by age (each entry's own TTL),
and works the same in a clustered partition (an entry is removed from its cell).
Not thread-safe: the semantic cache only touches it from its embedding worker thread (the
background clustering reads a copy of the vectors, never the index).
"""

from __future__ import annotations

import hashlib
import heapq
import itertools
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import numpy as np
import orjson

from faregate.cache.vector_cells import EXACT_MAX_ROWS, PROBES, Partition, Vector

P = TypeVar("P")


@dataclass(slots=True, frozen=True)
class Scope:
    """Who may share an entry. Two requests can only ever hit each other's entries in one scope."""

    tenant: str
    route: str
    system_hash: str = ""
    tools_hash: str = ""


def fingerprint(value: Any) -> str:
    """A stable hash of any JSON value (key order ignored); "" for None or empty."""
    if value is None or value == "" or value == [] or value == {}:
        return ""
    raw = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(raw).hexdigest()[:32]


def make_scope(tenant: str, route: str, system: Any = None, tools: Any = None) -> Scope:
    """Scope for a tenant (or shared namespace) and resolved model/route, by system prompt and tools."""
    return Scope(tenant, route, fingerprint(system), fingerprint(tools))


@dataclass(slots=True, eq=False)
class IndexEntry(Generic[P]):
    """One cached text; `payload` is whatever the cache stores for it (the answer)."""

    scope: Scope
    text: str
    payload: P
    created_at: float
    expires_at: float
    hits: int = 0
    # Cell and row of its vector in its partition; row -1 once removed.
    cell: int = field(default=0, repr=False)
    row: int = field(default=-1, repr=False)


class SemanticIndex(Generic[P]):
    """Cosine search over unit vectors, per scope, with LRU size eviction and per-entry TTL.

    `cluster_in_background` re-clusters a big partition on a thread of its own instead of in the
    `add` that triggers it (up to ~0.3 s at 50,000 entries): what the live cache wants. Off, the
    results depend only on the order of calls, which replays and evaluations need.
    """

    def __init__(
        self,
        dimensions: int,
        *,
        max_entries: int = 50_000,
        ttl_s: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
        exact_max_rows: int = EXACT_MAX_ROWS,
        probes: int = PROBES,
        cluster_in_background: bool = False,
    ) -> None:
        if max_entries <= 0:
            raise ValueError("max_entries must be positive")
        self.dimensions = dimensions
        self.max_entries = max_entries
        self.ttl_s = ttl_s
        self._clock = clock
        self.exact_max_rows = exact_max_rows
        self.probes = probes
        self.cluster_in_background = cluster_in_background
        self._partitions: dict[Scope, Partition[IndexEntry[P]]] = {}
        # Least recently used first; a hit moves an entry to the end.
        self._lru: OrderedDict[IndexEntry[P], None] = OrderedDict()
        # The entry last added for each text of a scope: storing a text again replaces it, found
        # here rather than by a search over the scope's vectors for every store (a new instance
        # warming up from the shared stream stores tens of thousands in a row).
        self._texts: dict[tuple[Scope, str], IndexEntry[P]] = {}
        # (expires_at, tie-breaker, entry); stale items (removed entries) are skipped when popped.
        self._expiry: list[tuple[float, int, IndexEntry[P]]] = []
        self._sequence = itertools.count()
        self.evicted_size = 0
        self.evicted_age = 0

    def __len__(self) -> int:
        return len(self._lru)

    @property
    def scopes(self) -> int:
        return len(self._partitions)

    @property
    def matrix_bytes(self) -> int:
        return sum(p.nbytes for p in self._partitions.values())

    def add(
        self, scope: Scope, vector: Vector, text: str, payload: P, *, ttl_s: float | None = None
    ) -> IndexEntry[P]:
        now = self._clock()
        self.purge_expired(now)
        entry = IndexEntry(scope, text, payload, now, now + (self.ttl_s if ttl_s is None else ttl_s))
        partition = self._partitions.get(scope)
        if partition is None:
            partition = self._partitions[scope] = Partition(
                self.dimensions,
                exact_max_rows=self.exact_max_rows,
                probes=self.probes,
                background=self.cluster_in_background,
            )
        partition.add(np.asarray(vector, dtype=np.float32), entry)
        self._lru[entry] = None
        self._texts[(scope, text)] = entry
        heapq.heappush(self._expiry, (entry.expires_at, next(self._sequence), entry))
        while len(self._lru) > self.max_entries:
            oldest = next(iter(self._lru))
            self.remove(oldest)
            self.evicted_size += 1
        return entry

    def search(
        self, scope: Scope, vector: Vector, *, k: int = 4, min_score: float = -1.0
    ) -> list[tuple[IndexEntry[P], float]]:
        """Up to k live entries of this scope scoring at least min_score, best first, exact scores.

        Exact up to `exact_max_rows` entries in the scope; past that, a neighbour in a cell that
        was not probed can be missed (measured in bench/semantic_lookup.py)."""
        self.purge_expired()
        partition = self._partitions.get(scope)
        if partition is None or not len(partition):
            return []
        return partition.search(np.asarray(vector, dtype=np.float32), k, min_score)

    def settle(self) -> None:
        """Wait for re-clusterings in progress and put them in use (tests and benchmarks)."""
        for partition in self._partitions.values():
            partition.wait()

    def entry_of(self, scope: Scope, text: str) -> IndexEntry[P] | None:
        """The live entry last added for `text` in `scope`, if any."""
        return self._texts.get((scope, text))

    def touch(self, entry: IndexEntry[P]) -> None:
        """Record a hit: the entry becomes the most recently used."""
        if entry.row >= 0:
            entry.hits += 1
            self._lru.move_to_end(entry)

    def remove(self, entry: IndexEntry[P]) -> None:
        if entry.row < 0:
            return
        partition = self._partitions[entry.scope]
        partition.remove(entry)
        del self._lru[entry]
        if self._texts.get((entry.scope, entry.text)) is entry:
            del self._texts[(entry.scope, entry.text)]
        if not len(partition):
            del self._partitions[entry.scope]

    def purge_expired(self, now: float | None = None) -> int:
        """Drop every entry whose TTL has passed; cheap when nothing has."""
        now = self._clock() if now is None else now
        dropped = 0
        while self._expiry and self._expiry[0][0] <= now:
            _, _, entry = heapq.heappop(self._expiry)
            if entry.row >= 0:
                self.remove(entry)
                dropped += 1
        self.evicted_age += dropped
        # Size eviction leaves dead items in the heap; rebuild it once they dominate.
        if len(self._expiry) > 2 * len(self._lru) + 1024:
            self._expiry = [item for item in self._expiry if item[2].row >= 0]
            heapq.heapify(self._expiry)
        return dropped
