"""The cyclic collector's settings once the gateway is built (server.runner.tune_gc)."""

from __future__ import annotations

import gc

from faregate.server.runner import GC_YOUNG_THRESHOLD, tune_gc


def test_tune_gc_freezes_what_exists_and_raises_the_young_threshold() -> None:
    before_threshold = gc.get_threshold()
    try:
        kept = [{"long": "lived"} for _ in range(100)]
        tune_gc()
        assert gc.get_freeze_count() >= len(kept)
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, *before_threshold[1:])
        # A reference cycle made afterwards is still collected.
        cycle: list[object] = []
        cycle.append(cycle)
        del cycle
        assert gc.collect() >= 1
    finally:
        gc.unfreeze()
        gc.set_threshold(*before_threshold)
