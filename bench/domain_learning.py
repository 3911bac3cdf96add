"""What domain learning (`quality.learn_domains`) adds to a calibrated router route, in process.

The request path's share: `RouteCalibration.decide` with learning off (the same run's baseline)
and on, with the challenger's evidence full (`--examples`, 384-dim vectors like MiniLM's) and a
frozen snapshot of as many in force (the worst case: two nearest-neighbour searches per request).
The store's share: the state row's size and the time to encode it (after every verification) and
to decode and adopt it (every instance, every 2 s).

    python bench/domain_learning.py [--examples 1000] [--calls 3000]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import orjson

from faregate.learning.online.ranking_switch import RankingSwitch
from faregate.learning.online.settings import QualitySettings, VerificationSettings
from faregate.quality.live import RouteCalibration

DIM = 384


def route(learn: bool, examples: int, rng: np.random.Generator) -> RouteCalibration:
    settings = QualitySettings(
        verification=VerificationSettings(share=0.05), learn_domains=learn, domain_examples=examples
    )
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=3000)
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


if __name__ == "__main__":
    main()
