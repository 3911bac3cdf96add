"""What domain learning (`quality.learn_domains`) adds to a calibrated router route, in process.

The request path's share: `RouteCalibration.decide` with learning off (the same run's baseline)
and on, with the challenger's evidence full (`--examples`, 384-dim vectors like MiniLM's) and a
frozen snapshot of as many in force (the worst case: two nearest-neighbour searches per request).
The store's share: the state row's size and the time to encode it (after every verification) and
to decode and adopt it (every instance, every 2 s).

Then where the two searches run (`RouteCalibration.decide_off_loop`): on the event loop, or on the
worker thread, each at `--sizes` examples (as many live and frozen), with one decision in 20
verified (an example added, so the evidence's arrays are rebuilt, as on a route at share 5%). Per
decision, the event loop's own CPU time (the thread's, which is what other requests wait for) and
the decision's wall time (what this request waits for).

    python bench/domain_learning.py [--examples 1000] [--calls 3000] [--sizes 300,1000,5000]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from decimal import Decimal

import numpy as np
import orjson

from faregate.learning.online.ranking_switch import RankingSwitch
from faregate.learning.online.settings import QualitySettings, VerificationSettings
from faregate.quality import route_decisions
from faregate.quality.live import RouteCalibration

DIM = 384


def route(
    learn: bool, examples: int, rng: np.random.Generator, cap: Decimal | None = None
) -> RouteCalibration:
    """A router route's calibration; with `learn`, `examples` random examples and a frozen
    snapshot as large in force. `cap`: the daily verification cap (the default's otherwise)."""
    verification = (
        VerificationSettings(share=0.05)
        if cap is None
        else VerificationSettings(share=0.05, daily_usd_cap=cap)
    )
    settings = QualitySettings(verification=verification, learn_domains=learn, domain_examples=examples)
    calibration = RouteCalibration("bench", "router", settings)
    if learn:
        state = calibration.state.switch
        for _ in range(examples):
            vector = rng.standard_normal(DIM).astype(np.float32)
            state.evidence.add(vector / np.linalg.norm(vector), int(rng.integers(-1, 2)), 20.0)
        RankingSwitch().switch(state)  # a frozen snapshot as large, in force
    return calibration


def per_call_us(calibration: RouteCalibration, calls: int, rng: np.random.Generator) -> list[float]:
    vectors = rng.standard_normal((calls, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    times = []
    for i in range(calls):
        start = time.perf_counter()
        calibration.decide(f"r{i}", float(rng.random()), 100.0, vector=vectors[i])
        times.append((time.perf_counter() - start) * 1e6)
        calibration.journal.clear()
    return times


async def where_searches_run(
    calibration: RouteCalibration, calls: int, worker: bool, rng: np.random.Generator
) -> tuple[list[float], list[float]]:
    """Per decision: the loop thread's CPU time and the wall time, in microseconds."""
    route_decisions.OFF_LOOP_EXAMPLES = 0 if worker else 10**9
    vectors = rng.standard_normal((calls, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    evidence = calibration.state.switch.evidence
    await calibration.decide_off_loop("warm", 0.5, 100.0, vectors[0])  # the worker thread started
    cpu, wall = [], []
    for i in range(calls):
        if i % 20 == 0:  # a verification came back: an example added, the arrays to rebuild
            evidence.add(vectors[(i + 1) % calls], int(rng.integers(-1, 2)), 20.0)
        start, started = time.perf_counter(), time.thread_time()
        await calibration.decide_off_loop(f"r{i}", float(rng.random()), 100.0, vectors[i])
        cpu.append((time.thread_time() - started) * 1e6)
        wall.append((time.perf_counter() - start) * 1e6)
        calibration.journal.clear()
    return cpu, wall


def spread(values: list[float]) -> str:
    """mean / p50 / p99, in microseconds."""
    p99 = statistics.quantiles(values, n=100)[98]
    return f"{statistics.fmean(values):.0f} / {statistics.median(values):.0f} / {p99:.0f} us"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--sizes", default="300,1000,5000", help="examples, live and frozen each")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    off, on = route(False, args.examples, rng), route(True, args.examples, rng)
    print(f"decide() per request, {args.calls:,} calls, {args.examples:,} examples + a frozen snapshot")
    print("| learn_domains | p50 | p95 |")
    print("|---|---|---|")
    for name, calibration in (("off", off), ("on", on)):
        times = per_call_us(calibration, args.calls, rng)
        p95 = statistics.quantiles(times, n=20)[18]
        print(f"| {name} | {statistics.median(times):.0f} us | {p95:.0f} us |")
    for name, calibration in (("off", off), ("on", on)):
        start = time.perf_counter()
        body = orjson.dumps(calibration.state_json())
        encode = time.perf_counter() - start
        start = time.perf_counter()
        calibration.adopt_json(orjson.loads(body))
        decode = time.perf_counter() - start
        print(
            f"state row, learn_domains {name}: {len(body) / 1024:,.0f} KiB, "
            f"encode {encode * 1e3:.1f} ms, decode + adopt {decode * 1e3:.1f} ms"
        )

    print()
    print(f"where the two searches run, {args.calls:,} decisions, 1 in 20 adds an example")
    print("| examples (+ frozen) | searches on | loop CPU mean / p50 / p99 | wall mean / p50 / p99 |")
    print("|---|---|---|---|")
    for size in (int(n) for n in args.sizes.split(",")):
        for worker in (False, True):
            calibration = route(True, size, np.random.default_rng(size))
            cpu, wall = asyncio.run(where_searches_run(calibration, args.calls, worker, rng))
            where = "worker thread" if worker else "event loop"
            print(f"| {size:,} | {where} | {spread(cpu)} | {spread(wall)} |")


if __name__ == "__main__":
    main()
