"""`faregate serve` with probes, for bench/soak.py, bench/profile_request.py and bench/ttft.py (not
a product entry point).

Runs the gateway exactly as `faregate serve -c CONFIG` does, plus two signal handlers.

SIGUSR1 is the memory probe: it writes `SOAK_DUMP_DIR/probe-N.json` with the RSS before and after
a full `gc.collect()`, RSS by mapping (/proc/self/smaps), each malloc arena's size and free bytes,
the live gc-tracked objects counted by type, and, when tracemalloc is on, a snapshot
(`probe-N.tracemalloc`). With SOAK_TRIM=1 it also calls glibc's `malloc_trim(0)` and reports
what that gave back to the system (free memory the allocator was holding: fragmentation).

SIGUSR2, with PROFILE_OUT set, switches cProfile on (timed by the event loop thread's CPU time),
and at the next SIGUSR2 off, writing the stats to PROFILE_OUT (pstats format). With TTFT_OUT set,
every stream's way to its first token is timed (see `install_ttft_probe`), and SIGUSR2 writes the
timings gathered since the last one to TTFT_OUT (JSON lines) and starts afresh.

Environment: SOAK_DUMP_DIR, SOAK_TRACEMALLOC (frames per traceback, 0 = off), SOAK_TRIM (0/1),
GC_STATS (0/1: collections by generation and their time, in the
SIGUSR1 probe), PROFILE_OUT, TTFT_OUT. Usage: python bench/gateway_probe.py serve -c CONFIG
"""

from __future__ import annotations

import collections
import cProfile
import ctypes
import gc
import json
import os
import signal
import sys
import time
import tracemalloc
from pathlib import Path
from types import FrameType

DUMP_DIR = Path(os.environ.get("SOAK_DUMP_DIR") or ".")
PROFILE_OUT = os.environ.get("PROFILE_OUT")
TTFT_OUT = os.environ.get("TTFT_OUT")
FRAMES = int(os.environ.get("SOAK_TRACEMALLOC", "0") or 0)
TRIM = os.environ.get("SOAK_TRIM", "0") == "1"
_probes = 0


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def mallinfo() -> dict[str, int]:
    """glibc's mallinfo2: arena = bytes from sbrk, hblkhd = mmapped, uordblks = in use,
    fordblks = free inside the heap (kept, not returned), keepcost = trimmable top."""

    class MallInfo2(ctypes.Structure):
        _fields_ = [
            (name, ctypes.c_size_t)
            for name in (
                "arena",
                "ordblks",
                "smblks",
                "hblks",
                "hblkhd",
                "usmblks",
                "fsmblks",
                "uordblks",
                "fordblks",
                "keepcost",
            )
        ]

    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
        info = libc.mallinfo2()
    except (OSError, AttributeError):
        return {}
    return {name: int(getattr(info, name)) for name, _ in MallInfo2._fields_}


def malloc_arenas() -> list[dict[str, int]]:
    """Per glibc malloc arena (from malloc_info's XML): bytes taken from the system and bytes
    free inside it (kept by the allocator: what malloc_trim could give back, fragmentation)."""
    import re

    path = DUMP_DIR / ".malloc_info.xml"
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.fopen.restype = ctypes.c_void_p
        libc.fopen.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
        libc.fclose.argtypes = [ctypes.c_void_p]
        fp = libc.fopen(str(path).encode(), b"w")
        libc.malloc_info(0, fp)
        libc.fclose(fp)
        xml = path.read_text()
    except (OSError, AttributeError):
        return []
    arenas = []
    for block in re.findall(r'<heap nr="\d+">(.*?)</heap>', xml, re.S):
        total = re.search(r'<total type="rest" count="\d+" size="(\d+)"/>', block)
        system = re.search(r'<system type="current" size="(\d+)"/>', block)
        arenas.append({
            "free": int(total.group(1)) if total else 0,
            "system": int(system.group(1)) if system else 0,
        })  # fmt: skip
    return arenas


def rss_by_mapping() -> dict[str, int]:
    """RSS (bytes) by mapping from /proc/self/smaps: [heap] (the main malloc arena), anonymous
    memory (other malloc arenas, pymalloc arenas, large mmapped blocks), thread stacks, and
    file-backed pages (shared libraries' code and data) by file name."""
    out: collections.Counter[str] = collections.Counter()
    name = ""
    with open("/proc/self/smaps") as smaps:
        for line in smaps:
            head = line.split(None, 1)[0]
            if head.endswith(":"):
                if head == "Rss:":
                    out[name] += int(line.split()[1]) * 1024
                continue
            fields = line.split(None, 5)
            path = fields[5].strip() if len(fields) > 5 else ""
            name = os.path.basename(path) if path.startswith("/") else (path or "[anon]")
    return dict(out.most_common(25))


def probe(signum: int, frame: FrameType | None) -> None:
    global _probes
    _probes += 1
    started = time.perf_counter()
    out: dict[str, object] = {"probe": _probes, "rss_before_gc": rss_bytes()}
    gc.collect()
    out["rss_after_gc"] = rss_bytes()
    objects = gc.get_objects()
    out["gc_objects"] = len(objects)
    counts = collections.Counter(f"{type(o).__module__}.{type(o).__qualname__}" for o in objects)
    del objects
    out["types"] = counts.most_common(60)
    out["gc_collections"] = [list(e) for e in _gc_stats]
    out["gc_frozen"] = gc.get_freeze_count()
    out["mallinfo"] = mallinfo()
    out["rss_by_mapping"] = rss_by_mapping()
    out["malloc_arenas"] = malloc_arenas()
    out["threads"] = len(os.listdir("/proc/self/task"))
    if tracemalloc.is_tracing():
        snapshot = tracemalloc.take_snapshot()
        snapshot.dump(str(DUMP_DIR / f"probe-{_probes}.tracemalloc"))
        out["traced_bytes"] = tracemalloc.get_traced_memory()[0]
    if TRIM:
        libc = ctypes.CDLL("libc.so.6")
        before = rss_bytes()
        libc.malloc_trim(0)
        out["trim_released"] = before - rss_bytes()
    out["rss_after"] = rss_bytes()
    out["probe_s"] = time.perf_counter() - started
    tmp = DUMP_DIR / f".probe-{_probes}.json"
    tmp.write_text(json.dumps(out))
    tmp.rename(DUMP_DIR / f"probe-{_probes}.json")


_profiler: cProfile.Profile | None = None
_ttft: list[dict[str, float]] = []
# Collections by generation, and the seconds they took (GC_STATS=1): [count, seconds] each.
_gc_stats = [[0, 0.0], [0, 0.0], [0, 0.0]]
_gc_started = 0.0


def _gc_timer(phase: str, info: dict[str, int]) -> None:
    global _gc_started
    if phase == "start":
        _gc_started = time.perf_counter()
    else:
        entry = _gc_stats[info["generation"]]
        entry[0] += 1
        entry[1] += time.perf_counter() - _gc_started


def install_ttft_probe() -> None:
    """Time each stream from the handler's start to its first byte of content on the client's
    socket, by wrapping (in this process only) the upstream pool's request, the responder's
    relay and aiohttp's StreamResponse.write. All stages of one request run in its handler's
    task, so the marks are kept per task. perf_counter seconds, relative to the handler's start:

      upstream_sent   the pool was asked for the upstream call (auth, parsing, plan done)
      upstream_head   the upstream's response head is in
      first_content   the attempt loop has the first content chunk (the role chunk before it read)
      first_write     the first content frame was handed to the client's socket (aiohttp's
                      StreamResponse or the lean server's LeanStream, whichever wrote it)
    """
    import asyncio

    from aiohttp import web

    from faregate.providers.http import ConnectionPool
    from faregate.server.responses import Responder

    marks: dict[object, dict[str, float]] = {}
    pool_request = ConnectionPool.request
    relay = Responder._relay
    write = web.StreamResponse.write

    async def timed_request(self: ConnectionPool, *args: object, **kwargs: object) -> object:
        mark = marks.setdefault(asyncio.current_task(), {})
        mark.setdefault("upstream_sent", time.perf_counter())
        response = await pool_request(self, *args, **kwargs)  # type: ignore[arg-type]
        mark.setdefault("upstream_head", time.perf_counter())
        return response

    async def timed_relay(self: Responder, exchange: object, opened: object) -> object:
        task = asyncio.current_task()
        mark = marks.setdefault(task, {})
        mark["first_content"] = opened.first_content_at  # type: ignore[attr-defined]
        try:
            return await relay(self, exchange, opened)  # type: ignore[arg-type]
        finally:
            marks.pop(task, None)
            started = exchange.started  # type: ignore[attr-defined]
            if "first_write" in mark and "upstream_sent" in mark:
                _ttft.append({name: (value - started) * 1000 for name, value in mark.items()})

    async def timed_write(self: web.StreamResponse, data: bytes) -> None:
        await write(self, data)
        mark = marks.get(asyncio.current_task())
        if mark is not None and "first_write" not in mark and b'"content":"' in data:
            mark["first_write"] = time.perf_counter()

    ConnectionPool.request = timed_request  # type: ignore[method-assign]
    Responder._relay = timed_relay  # type: ignore[method-assign]
    web.StreamResponse.write = timed_write  # type: ignore[method-assign]
    try:
        from faregate.server.lean_request import LeanStream
    except ImportError:  # a checkout without the lean server (an A/B with --pythonpath)
        return
    lean_write = LeanStream.write

    async def timed_lean_write(self: LeanStream, data: bytes) -> None:
        await lean_write(self, data)
        mark = marks.get(asyncio.current_task())
        if mark is not None and "first_write" not in mark and b'"content":"' in data:
            mark["first_write"] = time.perf_counter()

    LeanStream.write = timed_lean_write  # type: ignore[method-assign]


def dump_ttft() -> None:
    assert TTFT_OUT
    with open(TTFT_OUT + ".tmp", "w") as out:
        for mark in _ttft:
            out.write(json.dumps(mark) + "\n")
    os.replace(TTFT_OUT + ".tmp", TTFT_OUT)
    _ttft.clear()


def toggle_profile(signum: int, frame: FrameType | None) -> None:
    global _profiler
    if TTFT_OUT:
        dump_ttft()
    if not PROFILE_OUT:
        return
    if _profiler is None:
        # The main thread's CPU time, not wall time: time spent waiting for the GIL (held by the
        # SQLite threads) or for a core (a shared machine) is not charged to whatever ran last.
        _profiler = cProfile.Profile(time.thread_time)
        _profiler.enable()
        return
    _profiler.disable()
    assert PROFILE_OUT
    _profiler.dump_stats(PROFILE_OUT + ".tmp")
    os.replace(PROFILE_OUT + ".tmp", PROFILE_OUT)
    _profiler = None


def main() -> None:
    if FRAMES:
        tracemalloc.start(FRAMES)
    signal.signal(signal.SIGUSR1, probe)
    if PROFILE_OUT or TTFT_OUT:
        signal.signal(signal.SIGUSR2, toggle_profile)
    if TTFT_OUT:
        install_ttft_probe()
    if os.environ.get("GC_STATS") == "1":
        gc.callbacks.append(_gc_timer)
    from faregate.cli.main import main as faregate_main

    sys.argv = ["faregate", *sys.argv[1:]]
    faregate_main()


if __name__ == "__main__":
    main()
