"""What admitting a verification against its daily cap costs, with `learn_domains` state at its
largest (1,000 examples and a frozen snapshot as large: a ~2 MB `calibration_state` row).

Same run, same SQLite file, two ways:
- *state row* (before the cap's ledger, the same run's baseline): the admission was a
  compare-and-set of the route's whole state (`QualityService.write_now`: encode the row, write it);
- *ledger* (now, quality/spend.py): `Holds.admit`, one transaction on `verification_holds` and
  `verification_spend`, the state row untouched.
Per admission: its wall time and the event loop's own CPU time (what other requests wait for).
Each admission is settled before the next (the ledger: `Holds.settle`, not timed; the state row's
settlement rode on the verification's own save, as it still does).

    python bench/quality_admission.py [--examples 1000] [--admissions 200]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import numpy as np

from domain_learning import route
from faregate.quality.service import QualityService
from faregate.quality.spend import Holds
from faregate.quality.state import today
from faregate.store.sqlite.analytics import SQLiteAnalytics
from faregate.store.sqlite.store import SQLiteStore
from faregate.store.sqlite.verifications import SQLiteVerifications


def spread(values: list[float]) -> str:
    """p50 / p95 / mean, in milliseconds."""
    p95 = statistics.quantiles(values, n=20)[18]
    return f"{statistics.median(values):.2f} / {p95:.2f} / {statistics.fmean(values):.2f} ms"


async def run(examples: int, admissions: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        store = await SQLiteStore.open(Path(tmp))
        reads = await SQLiteAnalytics.open(store.path)
        try:
            calibration = route(True, examples, np.random.default_rng(0), cap=Decimal(1000))
            quality = QualityService([calibration], SQLiteVerifications(reads.connection))
            await quality.save("route:bench")
            stored = await quality.store.load_state("route:bench")
            assert stored is not None
            print(f"state row: {len(stored[1]) / 1024:,.0f} KiB, {examples:,} examples + a frozen snapshot")
            holds, day, worst = Holds(quality), today(), Decimal("0.01")
            results: dict[str, tuple[list[float], list[float]]] = {}
            for way in ("state row", "ledger"):
                wall, cpu = [], []
                for _ in range(admissions):
                    start, started = time.perf_counter(), time.thread_time()
                    if way == "state row":
                        await quality.write_now("route:bench", lambda: True)
                    else:
                        hold = await holds.admit(calibration, day, worst)
                    cpu.append((time.thread_time() - started) * 1e3)
                    wall.append((time.perf_counter() - start) * 1e3)
                    if way == "ledger":
                        assert hold is not None
                        await holds.settle(calibration, hold, day, Decimal(0))
                results[way] = (wall, cpu)
            print(f"per admission, {admissions} each: p50 / p95 / mean")
            print("| admission | wall | event-loop CPU |")
            print("|---|---|---|")
            for way, (wall, cpu) in results.items():
                print(f"| {way} | {spread(wall)} | {spread(cpu)} |")
        finally:
            await reads.close()
            await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=1000)
    parser.add_argument("--admissions", type=int, default=200)
    args = parser.parse_args()
    asyncio.run(run(args.examples, args.admissions))


if __name__ == "__main__":
    main()
