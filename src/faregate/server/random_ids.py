"""Random hex for ids made on every request, from one `os.urandom` read sliced many times.

`secrets.token_hex` is a getrandom system call per id (about 1% of a request's CPU); here one
call of 4,096 bytes serves ~340 request ids. The bytes are the kernel's CSPRNG output all the
same, each slice used once, so an id says nothing about the next. Per thread (two threads never
hand out the same slice), and forgotten in a forked child: the workers of `serve --workers N`
are forked from one supervisor, and a child that kept the parent's unused bytes would give out
the ids the parent (or a sibling) gives out next.
"""

from __future__ import annotations

import os
import threading

BLOCK_BYTES = 4096


class _Pool(threading.local):
    buffer: bytes = b""
    used: int = 0


_pool = _Pool()


def random_hex(n_bytes: int) -> str:
    """`n_bytes` fresh random bytes as hex (2 * n_bytes digits), as `secrets.token_hex` gives."""
    pool = _pool
    start = pool.used
    end = start + n_bytes
    buffer = pool.buffer
    if end > len(buffer):
        buffer = pool.buffer = os.urandom(max(BLOCK_BYTES, n_bytes))
        start, end = 0, n_bytes
    pool.used = end
    return buffer[start:end].hex()


def _forget_in_child() -> None:
    global _pool
    _pool = _Pool()


os.register_at_fork(after_in_child=_forget_in_child)
