"""The semantic index past its exact size: IVF cells against exact search, eviction, TTL, scopes."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import numpy as np
import pytest

from faregate.cache import vector_cells
from faregate.cache.semantic import SemanticCache
from faregate.cache.semantic_index import IndexEntry, Scope, SemanticIndex, make_scope
from faregate.cache.vector_cells import Partition
from faregate.embedding.embedder import DIMENSIONS, AsyncEmbedder, Vector

SCOPE = make_scope("tenant-a", "gpt-4o-mini")
OTHER = make_scope("tenant-b", "gpt-4o-mini")
# Small enough that a few thousand entries are clustered, as 50,000 are with the defaults.
EXACT_MAX_ROWS = 256
PROBES = 8


def clustered(count: int, seed: int, topics: int = 80) -> Vector:
    """Unit vectors around `topics` random directions, like sentence embeddings of many subjects."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((topics, DIMENSIONS))
    points = centres[rng.integers(0, topics, count)] + 0.9 * rng.standard_normal((count, DIMENSIONS))
    return (points / np.linalg.norm(points, axis=1, keepdims=True)).astype(np.float32)


def near(vectors: Vector, seed: int, noise: float = 0.02) -> Vector:
    """A query near each vector (cosine about 0.85-0.95): a paraphrase of a cached question."""
    rng = np.random.default_rng(seed)
    moved = vectors + noise * rng.standard_normal(vectors.shape)
    return (moved / np.linalg.norm(moved, axis=1, keepdims=True)).astype(np.float32)


def filled(vectors: Vector, scope: Scope = SCOPE) -> SemanticIndex[int]:
    index: SemanticIndex[int] = SemanticIndex(
        DIMENSIONS,
        max_entries=10**6,
        exact_max_rows=EXACT_MAX_ROWS,
        probes=PROBES,
    )
    for i, vector in enumerate(vectors):
        index.add(scope, vector, f"text {i}", i)
    return index


def partition(index: SemanticIndex[int], scope: Scope = SCOPE) -> Partition[IndexEntry[int]]:
    return index._partitions[scope]


def assert_consistent(index: SemanticIndex[int], vectors: Vector, scope: Scope = SCOPE) -> None:
    """Every live entry's (cell, row) holds its own vector, and the sizes add up."""
    part = partition(index, scope)
    total = 0
    for c, cell in enumerate(part.cells):
        for row, entry in enumerate(cell.entries):
            assert (entry.cell, entry.row) == (c, row)
            assert np.array_equal(cell.matrix[row], vectors[entry.payload])
        total += len(cell.entries)
    assert total == len(part)


def exact_top(vectors: Vector, live: Sequence[int], query: Vector, k: int) -> list[int]:
    scores = vectors[list(live)] @ query
    return [live[i] for i in np.argsort(-scores, kind="stable")[:k]]


def test_clustered_search_finds_what_exact_search_finds() -> None:
    vectors = clustered(3000, seed=1)
    index = filled(vectors)
    exact: SemanticIndex[int] = SemanticIndex(DIMENSIONS, max_entries=10**6, exact_max_rows=10**9)
    for i, vector in enumerate(vectors):
        exact.add(SCOPE, vector, f"text {i}", i)
    assert len(partition(index).cells) > PROBES  # really searched through the cells
    assert len(partition(exact).cells) == 1
    queries = near(vectors[:400], seed=2)
    for query in queries:
        ivf = index.search(SCOPE, query, k=4, min_score=0.5)
        reference = exact.search(SCOPE, query, k=4, min_score=0.5)
        assert reference, "each query has a near neighbour"
        assert ivf[0][0].payload == reference[0][0].payload
        assert ivf[0][1] == pytest.approx(reference[0][1], abs=1e-5)
        for entry, score in ivf:  # every score is the exact cosine, best first
            assert score == pytest.approx(float(vectors[entry.payload] @ query), abs=1e-5)
        assert [s for _, s in ivf] == sorted((s for _, s in ivf), reverse=True)


def test_a_stored_vector_is_always_found_even_with_one_probe() -> None:
    vectors = clustered(1500, seed=3)
    index = filled(vectors)
    partition(index).probes = 1
    for i, vector in enumerate(vectors):
        [(entry, score)] = index.search(SCOPE, vector, k=1)
        assert entry.payload == i and score == pytest.approx(1.0, abs=1e-5)


def test_partition_reclusters_as_it_grows_and_keeps_every_entry() -> None:
    vectors = clustered(2200, seed=4)
    index = filled(vectors[:257])
    assert partition(index).clusterings == 1 and partition(index).centroids is not None
    for i in range(257, 2200):
        index.add(SCOPE, vectors[i], f"text {i}", i)
    # Re-clustered each time it took in as many entries as it held: at 257, 514, 1028, 2056.
    assert partition(index).clusterings == 4
    assert len(partition(index).cells) == round(2056**0.5)
    assert_consistent(index, vectors)


def test_least_recently_used_are_evicted_from_clustered_partitions() -> None:
    vectors = clustered(2000, seed=5)
    index: SemanticIndex[int] = SemanticIndex(
        DIMENSIONS,
        max_entries=1000,
        exact_max_rows=EXACT_MAX_ROWS,
        probes=PROBES,
    )
    entries = [index.add(SCOPE, vectors[i], f"text {i}", i) for i in range(1000)]
    for entry in entries[:100]:
        index.touch(entry)  # a hit: these stay
    for i in range(1000, 1500):
        index.add(SCOPE, vectors[i], f"text {i}", i)
    assert len(index) == 1000 and index.evicted_size == 500
    live = {*range(100), *range(600, 1500)}
    assert {e.payload for c in partition(index).cells for e in c.entries} == live
    assert_consistent(index, vectors)
    for i in (*range(100, 600, 7), *range(0, 100, 7), *range(600, 1500, 7)):
        [(entry, _)] = index.search(SCOPE, vectors[i], k=1)
        assert (entry.payload == i) == (i in live)


def test_expired_entries_leave_clustered_partitions() -> None:
    now = [0.0]
    vectors = clustered(1200, seed=6)
    index: SemanticIndex[int] = SemanticIndex(
        DIMENSIONS,
        ttl_s=100,
        clock=lambda: now[0],
        exact_max_rows=EXACT_MAX_ROWS,
        probes=PROBES,
    )
    for i, vector in enumerate(vectors):
        index.add(SCOPE, vector, f"text {i}", i, ttl_s=10 if i % 2 else None)
    now[0] = 11
    for i in range(0, 1200, 5):
        found = index.search(SCOPE, vectors[i], k=1, min_score=0.99)
        assert [e.payload for e, _ in found] == ([] if i % 2 else [i])
    assert len(index) == 600 and index.evicted_age == 600
    assert_consistent(index, vectors)


def test_a_shrunken_partition_is_searched_exactly_again() -> None:
    vectors = clustered(600, seed=7)
    index = filled(vectors)
    entries = [e for cell in partition(index).cells for e in cell.entries]
    assert partition(index).centroids is not None
    for entry in sorted(entries, key=lambda e: e.payload)[:480]:
        index.remove(entry)
    assert partition(index).centroids is None and len(partition(index).cells) == 1
    assert_consistent(index, vectors)
    for i in range(480, 600):
        assert index.search(SCOPE, vectors[i], k=1)[0][0].payload == i


def test_scopes_stay_apart_when_both_are_clustered() -> None:
    vectors = clustered(800, seed=8)
    index = filled(vectors)
    for i, vector in enumerate(vectors[:700]):
        index.add(OTHER, vector, f"other {i}", 10_000 + i)
    assert partition(index, OTHER).centroids is not None
    for i in range(0, 800, 9):
        mine = index.search(SCOPE, vectors[i], k=4, min_score=-1)
        theirs = index.search(OTHER, vectors[i], k=4, min_score=-1)
        assert all(e.scope == SCOPE and e.payload < 10_000 for e, _ in mine)
        assert all(e.scope == OTHER and e.payload >= 10_000 for e, _ in theirs)
        assert mine[0][0].payload == i
    assert index.search(make_scope("tenant-c", "gpt-4o-mini"), vectors[0]) == []


def test_top_k_without_a_floor_is_the_exact_top_k_on_near_queries() -> None:
    vectors = clustered(2000, seed=9, topics=40)
    index = filled(vectors)
    live = list(range(2000))
    agree = 0
    for query in near(vectors[:200], seed=10):
        got = [e.payload for e, _ in index.search(SCOPE, query, k=4)]
        agree += got[0] == exact_top(vectors, live, query, 1)[0]
        assert len(got) == 4
    assert agree == 200


def test_background_clustering_keeps_serving_and_takes_in_what_changed_meanwhile() -> None:
    vectors = clustered(1200, seed=11)
    index: SemanticIndex[int] = SemanticIndex(
        DIMENSIONS,
        max_entries=10**6,
        exact_max_rows=EXACT_MAX_ROWS,
        probes=PROBES,
        cluster_in_background=True,
    )
    gate = threading.Event()
    blocker = vector_cells._CLUSTERER.submit(gate.wait, 10)  # holds the clustering thread
    try:
        entries = [index.add(SCOPE, vectors[i], f"text {i}", i) for i in range(600)]
        assert partition(index)._job is not None and partition(index).centroids is None
        for entry in entries[:100]:  # removed while the snapshot is being clustered
            index.remove(entry)
        for i in range(600, 1200):  # added meanwhile: one exact cell still serves them
            index.add(SCOPE, vectors[i], f"text {i}", i)
        assert index.search(SCOPE, vectors[700], k=1)[0][0].payload == 700
    finally:
        gate.set()
        blocker.result()
    index.settle()
    assert partition(index).centroids is not None and partition(index).clusterings == 1
    assert len(partition(index).cells) == round(257**0.5)
    assert_consistent(index, vectors)
    assert {e.payload for c in partition(index).cells for e in c.entries} == set(range(100, 1200))
    for i in range(0, 1200, 7):
        found = index.search(SCOPE, vectors[i], k=1, min_score=0.99)
        assert [e.payload for e, _ in found] == ([] if i < 100 else [i])


async def test_embed_then_runs_on_the_worker_and_fails_only_its_own_call() -> None:
    class Table:
        dimensions = DIMENSIONS

        def __init__(self) -> None:
            self.threads: set[int] = set()

        def embed_fitting(self, texts: Sequence[str]) -> list[Vector | None]:
            self.threads.add(threading.get_ident())
            return [None if t == "long" else np.full(DIMENSIONS, len(t), np.float32) for t in texts]

    fake = Table()
    embedder = AsyncEmbedder(fake)
    seen: list[int] = []

    def record(vector: Vector) -> float:
        seen.append(threading.get_ident())
        if vector[0] == 4:
            raise ValueError("four")
        return float(vector[0])

    results = await asyncio.gather(
        embedder.embed_then("abc", record),
        embedder.embed_then("abcd", record),
        embedder.embed_then("long", record),
        embedder.embed("ab"),
        return_exceptions=True,
    )
    await embedder.close()
    assert results[0] == 3.0 and isinstance(results[1], ValueError) and results[2] is None
    assert isinstance(results[3], np.ndarray) and results[3][0] == 2
    assert set(seen) == fake.threads and threading.get_ident() not in fake.threads


async def test_a_store_made_while_a_question_is_embedded_is_seen_by_its_lookup() -> None:
    """Another instance's entry (or this one's) arriving mid-embedding is searched, as before the
    search shared the embedding's hand-off."""
    embedding = threading.Event()
    vector = clustered(1, seed=12)[0]

    class Slow:
        dimensions = DIMENSIONS

        def embed_fitting(self, texts: Sequence[str]) -> list[Vector | None]:
            embedding.set()
            threading.Event().wait(0.1)
            return [vector for _ in texts]

    cache: SemanticCache[str] = SemanticCache(AsyncEmbedder(Slow()))
    lookup = asyncio.create_task(cache.explain(SCOPE, "How can I reverse a Python list?"))
    assert await asyncio.to_thread(embedding.wait, 5)
    await cache.store(SCOPE, "How do I reverse a list in Python?", "answer", vector=vector)
    result = await lookup
    await cache.embedder.close()
    assert result.status == "hit" and result.entry is not None and result.entry.payload == "answer"


def test_a_scope_holding_one_question_holds_one_row() -> None:
    """Every key, model, system prompt and tool set is a scope of its own, and many hold one
    question (a system prompt that names the user or the date is a scope per user or day). Each
    began with room for 16 vectors: 10,000 single-question scopes took 246 MB, not 15."""
    vectors = clustered(1000, seed=11)
    index: SemanticIndex[int] = SemanticIndex(DIMENSIONS)
    for i, vector in enumerate(vectors):
        index.add(make_scope("tenant-a", "gpt-4o-mini", system=f"You are helping user {i}."), vector, "q", i)
    assert index.scopes == 1000
    assert index.matrix_bytes == vectors.nbytes
    # A scope that grows still finds every row, and has room for a few more at most.
    for i, vector in enumerate(vectors):
        index.add(SCOPE, vector, f"text {i}", i)
        if i in (1, 2, 5, 16, 17, 100):
            assert partition(index).nbytes <= max(2 * (i + 1), i + 1 + 16) * DIMENSIONS * 4
    assert_consistent(index, vectors)
