"""The semantic cache's alert rule (cache_verification_cap_reached): measured from the cache's
calibration, not per anything, refused where it cannot mean anything."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any, cast

import pytest

from faregate.config import AlertRule, AlertSettings, ConfigError, load_settings
from faregate.learning.online.settings import SemanticAcceptanceSettings
from faregate.quality import cache_live
from faregate.quality.cache_live import CacheCalibration
from faregate.quality.live import today
from faregate.telemetry.alerts import AlertManager


async def test_the_caches_spent_cap_fires_and_resolves_the_next_day(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = CacheCalibration(
        SemanticAcceptanceSettings(max_wrong_hit_rate=0.05, daily_usd_cap=Decimal("0.001")), "exact"
    )
    rule = AlertRule(name="cache-cap", metric="cache_verification_cap_reached", above=0.5)
    manager = AlertManager(AlertSettings(rules=[rule]), cast(Any, None))
    manager.quality_cache = cache.figures
    assert await manager.evaluate() == []
    assert not cache.admit(today(), Decimal("0.002"))
    (fired,) = await manager.evaluate()
    assert fired["status"] == "firing" and fired["labels"] == {} and fired["value"] == 1.0
    assert "semantic cache's verification cap reached" in fired["message"]
    # A new UTC day: the day paused is over.
    monkeypatch.setattr(cache_live, "today", lambda: "2099-01-01")
    (resolved,) = await manager.evaluate()
    assert resolved["status"] == "resolved"
    # Not calibrated: nothing to measure, nothing fires.
    manager.quality_cache = lambda: None
    assert await manager.evaluate() == []


def test_the_rule_takes_no_subject_and_needs_a_calibrated_cache(tmp_path: Path) -> None:
    path = tmp_path / "faregate.yaml"
    ok = """
models:
  m: {input: 1, output: 1}
cache: {semantic: {enabled: true, max_wrong_hit_rate: 0.01}}
alerts:
  rules:
    - {name: c, metric: cache_verification_cap_reached, above: 0.5}
"""
    path.write_text(ok)
    assert load_settings(path).alerts.rules[0].per is None
    for bad in (
        ok.replace("above: 0.5}", "above: 0.5, per: route}"),
        ok.replace("above: 0.5}", "above: 0.5, route: r}"),
        ok.replace(", max_wrong_hit_rate: 0.01", ""),
    ):
        path.write_text(bad)
        with pytest.raises(ConfigError):
            load_settings(path)
