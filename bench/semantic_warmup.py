"""Semantic cache sharing: how long a new instance takes to warm up from the Redis stream.

Starts a redis-server of its own on a free loopback port (no persistence), fills the shared
stream (cache/semantic_sync.py) with N entries as other instances publish them (random unit
vectors, short texts, a few scopes), then starts one SemanticSync with an empty semantic cache and
times how long until every entry is in its index. No model is loaded: a shared entry carries its
vector. Run it from the checkout: the code timed is this checkout's.

Usage: python bench/semantic_warmup.py [--entries 50000] [--scopes 4] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import orjson

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from faregate.cache.semantic import SemanticCache  # noqa: E402
from faregate.cache.semantic_sync import STREAM, SemanticSync  # noqa: E402
from faregate.embedding.embedder import DIMENSIONS, AsyncEmbedder  # noqa: E402

# Bounds the wait for one warm-up: the bench never runs on.
WARMUP_LIMIT_S = 300.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def start_redis(directory: str) -> tuple[subprocess.Popen[bytes], str]:
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("redis-server is not installed")
    port = free_port()
    options = ["--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", directory]
    process = subprocess.Popen(
        [binary, "--port", str(port), *options],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process, f"redis://127.0.0.1:{port}/0"
        except OSError:
            time.sleep(0.05)
    process.terminate()
    raise SystemExit("redis-server did not start")


async def fill(url: str, entries: int, scopes: int) -> None:
    import redis.asyncio as redis

    client = redis.Redis.from_url(url)
    rng = np.random.default_rng(7)
    expires = str(time.time() + 86_400)
    pipe = client.pipeline(transaction=False)
    for i in range(entries):
        vector = rng.standard_normal(DIMENSIONS).astype(np.float32)
        vector /= np.linalg.norm(vector)
        scope = orjson.dumps([f"tenant{i % scopes}", "gpt-4o-mini", None, None])
        text = f"How do I do thing number {i} in Python without a loop?"
        fields = {
            "origin": "other",
            "scope": scope,
            "text": text,
            "key": f"k{i}",
            "expires_at": expires,
            "vector": vector.tobytes(),
        }
        pipe.xadd(STREAM, fields, maxlen=entries, approximate=True)  # type: ignore[arg-type]
        if len(pipe) >= 1000:
            await pipe.execute()
    await pipe.execute()
    await client.aclose()


async def warm_up(url: str, entries: int) -> float:
    embedder = AsyncEmbedder()  # no model is loaded: the entries carry their vectors
    semantic: SemanticCache[str] = SemanticCache(embedder, max_entries=max(entries, 50_000), ttl_s=86_400)
    sync = SemanticSync(url, semantic)
    started = time.perf_counter()
    sync.start()
    deadline = time.monotonic() + WARMUP_LIMIT_S
    # Polls the tail's counter: nothing signals it (a 20 ms poll is within the figures' noise).
    while sync.received < entries and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.02)
    took = time.perf_counter() - started
    await sync.close()
    await embedder.close()
    if sync.received < entries:
        raise SystemExit(f"only {sync.received} of {entries} entries within {WARMUP_LIMIT_S:.0f}s")
    return took


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=50_000)
    parser.add_argument("--scopes", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        process, url = start_redis(directory)
        try:
            await fill(url, args.entries, args.scopes)
            times = [await warm_up(url, args.entries) for _ in range(args.rounds)]
        finally:
            process.terminate()
            process.wait(10)
    print(
        f"{args.entries:,} entries in {args.scopes} scope(s): warm-up "
        f"{statistics.median(times):.2f} s (median of {args.rounds}; {', '.join(f'{t:.2f}' for t in times)})"
    )


if __name__ == "__main__":
    asyncio.run(main())
