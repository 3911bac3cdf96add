"""The vectors of one scope partition of the semantic index, searched exactly or through an IVF.

A partition keeps its unit vectors in float32 rows grouped in cells; each cell is one contiguous
matrix with its entries beside it, so removal is O(1) (the last row moves into the hole).

- Small partitions (up to `exact_max_rows` entries) have one cell and are searched exactly: one
  matrix-vector product, a few hundred microseconds at most.
- Past that, the partition is split into about sqrt(n) cells by spherical k-means (an inverted
  file, IVF), and a lookup scores only the `probes` cells whose centroids are nearest the query:
  at 50,000 entries that reads ~1/10 of the vectors instead of all 77 MB, which is what made the
  exact search cost 4-5 ms. Every score returned is still the exact float32 cosine of the stored
  vector (no compressed vectors, nothing to re-rank); what can differ from an exact search is only
  that a neighbour in a cell that was not probed is not seen. `bench/semantic_lookup.py` measures
  how often that happens on real vectors (recall of neighbours above the cache's candidate floor).
- The cells are re-clustered when the partition has taken in as many new entries as it held at
  the last clustering (so at 4k, 8k, 16k, 32k... entries while it grows, and after a full turnover
  under LRU/TTL churn); it drops back to one exact cell below half of `exact_max_rows`. With
  `background`, the k-means runs on a thread of its own over a copy of the vectors (~0.3 s at
  32,000 entries, briefly two more copies of them in memory); the partition keeps serving from its
  old cells and, once it is done, moves to the new ones and re-places what was added or removed
  meanwhile. Without it, the `add` that triggers it waits, and results depend only on the calls.

Invariants: an entry's (cell, row) always points at its vector; `row == -1` exactly when it is not
in the partition. A vector sits in the cell of its nearest centroid, which is the first cell a
lookup of the same vector probes (up to rounding between two equally near centroids), so a stored
vector is found whatever the probes. Clustering is seeded, so the same calls give the same cells.
"""

from __future__ import annotations

import itertools
import logging
import math
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

Vector = npt.NDArray[np.float32]
logger = logging.getLogger(__name__)

# A partition's matrix starts with one row: many scopes hold one question (a system prompt naming
# the user or the date is a scope per user or day), and room for 16 made such an index 16 times its
# vectors. It doubles up to this many rows, then grows by a quarter, at least this many, so the
# slack stays near 12% without a copy on every insert; it halves when a quarter full. (Doubling
# all the way would leave the ~200 cells of a big partition a quarter empty on average.)
FIRST_ROWS = 16
# Searched exactly up to this many entries (6 MB of vectors: ~0.2 ms); clustered past it.
EXACT_MAX_ROWS = 4096
# Cells per square root of the entries when clustering (about sqrt(n) rows per cell).
CELLS_PER_ROOT = 1.0
# Cells scored per lookup once clustered. Chosen in bench/semantic_lookup.py on real vectors.
PROBES = 16
# k-means: rows sampled per centroid for training, iterations, the seed.
SAMPLE_PER_CELL = 32
ITERATIONS = 8
SEED = 15
# Rows assigned per matrix product when re-clustering, to bound the temporary scores.
ASSIGN_CHUNK = 8192


class Placed(Protocol):
    """What the partition needs of an entry: where its vector is."""

    cell: int
    row: int


E = TypeVar("E", bound=Placed)


class Cell(Generic[E]):
    """Contiguous rows and their entries; row i of `matrix` is the vector of `entries[i]`."""

    def __init__(self, dimensions: int, rows: int = FIRST_ROWS) -> None:
        self.matrix: Vector = np.zeros((rows, dimensions), dtype=np.float32)
        self.entries: list[E] = []

    def add(self, vector: Vector, entry: E, cell: int) -> None:
        size = len(self.entries)
        if size == len(self.matrix):
            capacity = len(self.matrix)
            self._resize(capacity + max(min(FIRST_ROWS, capacity), capacity // 4, 1))
        self.matrix[size] = vector
        entry.cell, entry.row = cell, size
        self.entries.append(entry)

    def remove(self, entry: E) -> None:
        row, last = entry.row, len(self.entries) - 1
        moved = self.entries[last]
        self.matrix[row] = self.matrix[last]
        self.entries[row] = moved
        moved.row = row
        self.entries.pop()
        entry.row = -1
        if len(self.matrix) > 4 * FIRST_ROWS and len(self.entries) < len(self.matrix) // 4:
            self._resize(len(self.matrix) // 2)

    @property
    def rows(self) -> Vector:
        live: Vector = self.matrix[: len(self.entries)]
        return live

    def reserve(self, rows: int) -> None:
        """Room for `rows` entries in all, so that adding many costs one copy, not one per growth."""
        if rows > len(self.matrix):
            self._resize(rows + rows // 4)

    def _resize(self, rows: int) -> None:
        # Rows past the live ones are never read (see `rows`), so they need not be zeroed.
        matrix = np.empty((rows, self.matrix.shape[1]), dtype=np.float32)
        size = len(self.entries)
        matrix[:size] = self.matrix[:size]
        self.matrix = matrix


@dataclass(slots=True)
class Layout:
    """Cells for a snapshot of a partition: per cell, the snapshot rows it holds and their matrix."""

    centroids: Vector
    members: list[npt.NDArray[np.intp]]
    matrices: list[Vector]


def cluster(vectors: Vector, seed: int) -> Layout:
    """About sqrt(n) cells for these unit vectors, each vector in its nearest centroid's cell.

    Pure (reads only its arguments): it runs on the clustering thread while the partition serves.
    """
    count = max(2, round(CELLS_PER_ROOT * math.sqrt(len(vectors))))
    centroids = spherical_kmeans(vectors, count, np.random.default_rng(seed))
    assignment = np.concatenate(
        [
            np.argmax(vectors[start : start + ASSIGN_CHUNK] @ centroids.T, axis=1)
            for start in range(0, len(vectors), ASSIGN_CHUNK)
        ]
    )
    order = np.argsort(assignment, kind="stable")
    bounds = np.searchsorted(assignment[order], np.arange(count + 1)).tolist()
    members = [order[a:b] for a, b in itertools.pairwise(bounds)]
    matrices = []
    for rows in members:
        matrix = np.zeros((len(rows) + len(rows) // 16 + 4, vectors.shape[1]), dtype=np.float32)
        matrix[: len(rows)] = vectors[rows]
        matrices.append(matrix)
    return Layout(centroids, members, matrices)


# One thread clusters for every partition, so a re-clustering never stalls lookups (which keep
# using the old cells until the new ones are ready); threads start only on first use.
_CLUSTERER = ThreadPoolExecutor(max_workers=1, thread_name_prefix="faregate-ivf")


class Partition(Generic[E]):
    """The vectors of one scope: one exact cell, or IVF cells around k-means centroids.

    Not thread-safe, like the index that owns it; only `cluster` runs elsewhere, on a copy.
    """

    def __init__(
        self,
        dimensions: int,
        *,
        exact_max_rows: int = EXACT_MAX_ROWS,
        probes: int = PROBES,
        background: bool = True,
    ) -> None:
        self.dimensions = dimensions
        self.exact_max_rows = exact_max_rows
        self.probes = probes
        self.background = background
        self.cells: list[Cell[E]] = [Cell(dimensions, 1)]
        # Unit centroids, one row per cell; None while the partition is one exact cell.
        self.centroids: Vector | None = None
        self.size = 0
        self.clusterings = 0
        self._added_since_clustering = 0
        self._clustered_size = 0
        # A clustering in progress: its future, the entries of its snapshot (in its row order),
        # and the entries added since the snapshot was taken.
        self._job: Future[Layout] | None = None
        self._snapshot: list[E] = []
        self._since: list[E] = []

    def __len__(self) -> int:
        return self.size

    @property
    def nbytes(self) -> int:
        extra = 0 if self.centroids is None else self.centroids.nbytes
        return sum(int(c.matrix.nbytes) for c in self.cells) + int(extra)

    def add(self, vector: Vector, entry: E) -> None:
        self._adopt_if_done()
        self._place(vector, entry)
        self.size += 1
        self._added_since_clustering += 1
        if self._job is not None:
            self._since.append(entry)
        elif self.size > self.exact_max_rows and (
            self.centroids is None or self._added_since_clustering >= self._clustered_size
        ):
            self._start_clustering()

    def remove(self, entry: E) -> None:
        self.cells[entry.cell].remove(entry)
        self.size -= 1
        if self.centroids is not None and self.size < self.exact_max_rows // 2:
            self._flatten()

    def search(self, vector: Vector, k: int, min_score: float) -> list[tuple[E, float]]:
        """Up to k entries scoring at least min_score, best first, with their exact scores."""
        self._adopt_if_done()
        if self.centroids is None or len(self.cells) <= self.probes:
            probed: list[int] = list(range(len(self.cells)))
        else:
            probed = np.argpartition(self.centroids @ vector, -self.probes)[-self.probes :].tolist()
        found: list[tuple[float, E]] = []
        for c in probed:
            cell = self.cells[c]
            if not cell.entries:
                continue
            scores = cell.rows @ vector
            rows = np.flatnonzero(scores >= min_score)
            if len(rows) > k:
                rows = rows[np.argpartition(scores[rows], -k)[-k:]]
            found.extend((float(scores[r]), cell.entries[r]) for r in rows.tolist())
        found.sort(key=lambda item: -item[0])
        return [(entry, score) for score, entry in found[:k]]

    def wait(self) -> None:
        """Block until a clustering in progress is done and in use (for tests and benchmarks)."""
        if self._job is not None:
            futures_wait([self._job])
            self._adopt_if_done()

    def _place(self, vector: Vector, entry: E) -> None:
        cell = 0 if self.centroids is None else int(np.argmax(self.centroids @ vector))
        self.cells[cell].add(vector, entry, cell)

    def _gather(self) -> tuple[Vector, list[E]]:
        entries = [e for cell in self.cells for e in cell.entries]
        if not entries:
            return np.zeros((0, self.dimensions), np.float32), entries
        return np.concatenate([cell.rows for cell in self.cells]), entries

    def _start_clustering(self) -> None:
        vectors, entries = self._gather()  # a copy: the clustering thread reads only that
        self._added_since_clustering = 0
        self._clustered_size = len(entries)
        seed = SEED + len(entries)
        if not self.background:
            self._adopt(entries, cluster(vectors, seed))
            return
        self._snapshot, self._since = entries, []
        self._job = _CLUSTERER.submit(cluster, vectors, seed)

    def _adopt_if_done(self) -> None:
        job = self._job
        if job is None or not job.done():
            return
        entries, self._snapshot, self._job = self._snapshot, [], None
        try:
            layout = job.result()
        except Exception:
            # Keep the current cells (still correct, only slower); retry after as many inserts.
            logger.exception("re-clustering a semantic index partition failed")
            return
        self._adopt(entries, layout)

    def _adopt(self, entries: list[E], layout: Layout) -> None:
        """Move to the new cells: the snapshot's entries by the layout, then what changed since."""
        removed = [e for e in entries if e.row < 0]
        newer = [(e, self.cells[e.cell].matrix[e.row].copy()) for e in self._since if e.row >= 0]
        self._since = []
        cells: list[Cell[E]] = []
        for c, (rows, matrix) in enumerate(zip(layout.members, layout.matrices, strict=True)):
            cell: Cell[E] = Cell(self.dimensions, 0)
            cell.matrix = matrix
            cell.entries = [entries[i] for i in rows.tolist()]
            for row, entry in enumerate(cell.entries):
                entry.cell, entry.row = c, row
            cells.append(cell)
        self.cells, self.centroids = cells, layout.centroids
        for entry in removed:
            self.cells[entry.cell].remove(entry)
        if newer:  # placed with one matrix product: a busy cache may have added thousands
            vectors = np.stack([vector for _, vector in newer])
            nearest = np.argmax(vectors @ layout.centroids.T, axis=1)
            for c, count in enumerate(np.bincount(nearest, minlength=len(self.cells)).tolist()):
                if count:
                    self.cells[c].reserve(len(self.cells[c].entries) + count)
            for (entry, vector), c in zip(newer, nearest.tolist(), strict=True):
                self.cells[c].add(vector, entry, c)
        self.clusterings += 1

    def _flatten(self) -> None:
        # Back to one exact cell; a clustering in progress is dropped (its snapshot is too big).
        self._job, self._snapshot, self._since = None, [], []
        vectors, entries = self._gather()
        cell: Cell[E] = Cell(self.dimensions, max(FIRST_ROWS, len(entries)))
        cell.matrix[: len(entries)] = vectors
        cell.entries = entries
        for row, entry in enumerate(entries):
            entry.cell, entry.row = 0, row
        self.cells, self.centroids = [cell], None


def spherical_kmeans(vectors: Vector, count: int, rng: np.random.Generator) -> Vector:
    """`count` unit centroids of unit vectors (cosine k-means on a sample; empty clusters reseeded)."""
    sample_size = min(len(vectors), count * SAMPLE_PER_CELL)
    sample = vectors[rng.choice(len(vectors), size=sample_size, replace=False)]
    centroids: Vector = sample[rng.choice(sample_size, size=count, replace=False)].copy()
    for _ in range(ITERATIONS):
        assignment = np.argmax(sample @ centroids.T, axis=1)
        order = np.argsort(assignment, kind="stable")
        counts = np.bincount(assignment, minlength=count)
        starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
        filled = np.flatnonzero(counts)
        sums: Vector = np.empty_like(centroids)
        sums[filled] = np.add.reduceat(sample[order], starts[filled], axis=0)
        empty = np.flatnonzero(counts == 0)
        sums[empty] = sample[rng.choice(sample_size, size=len(empty), replace=False)]
        norms = np.linalg.norm(sums, axis=1, keepdims=True)
        centroids = (sums / np.maximum(norms, 1e-12)).astype(np.float32)
    return centroids
