"""Request ids from one os.urandom read sliced per id: unique, and never shared with a forked child."""

from __future__ import annotations

import os
import threading

from faregate.server import random_ids
from faregate.server.exchange import new_request_id
from faregate.server.random_ids import BLOCK_BYTES, random_hex


def test_ids_across_refills_are_all_different() -> None:
    ids = [random_hex(12) for _ in range(3 * BLOCK_BYTES // 12)]  # three refills
    assert len(set(ids)) == len(ids)
    assert all(len(i) == 24 and int(i, 16) >= 0 for i in ids)
    assert len(random_hex(BLOCK_BYTES + 1)) == 2 * (BLOCK_BYTES + 1)  # more than a block at once


def test_a_forked_child_draws_other_ids_than_its_parent() -> None:
    """What the workers of `serve --workers N` rely on: the parent's unused bytes are not reused."""
    new_request_id()  # the parent has a block with unused bytes now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        try:
            os.close(read)
            os.write(write, " ".join(new_request_id() for _ in range(100)).encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        child = set(pipe.read().split())
    os.waitpid(pid, 0)
    parent = {new_request_id() for _ in range(100)}
    assert len(child) == 100
    assert not child & parent


def test_threads_never_hand_out_the_same_bytes() -> None:
    drawn: list[list[str]] = [[] for _ in range(4)]

    def draw(out: list[str]) -> None:
        out.extend(random_hex(12) for _ in range(2000))

    threads = [threading.Thread(target=draw, args=(out,)) for out in drawn]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for out in drawn for i in out]
    assert len(set(every)) == len(every)


def test_without_the_fork_hook_a_child_would_repeat_the_parent() -> None:
    """The hazard the hook removes, shown on the pool itself: a copy of the parent's pool gives
    out the parent's next bytes."""
    random_hex(12)
    pool = random_ids._pool
    copy = random_ids._Pool()
    copy.buffer, copy.used = pool.buffer, pool.used
    random_ids._pool = copy
    try:
        from_copy = random_hex(12)
    finally:
        random_ids._pool = pool
    assert random_hex(12) == from_copy
