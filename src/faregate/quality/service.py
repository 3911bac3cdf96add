"""Every calibrated route, kept in the store: load at start, save after each verification, share.

Each route's `LiveState` is one `calibration_state` row (store/verifications.py). Saving is a
compare-and-set on the row's version: the writer that read version v writes v + 1 only if the row
is still at v. Of two instances verifying decisions of one route at once, one wins; the other
loads the winner's state, replays its own unsaved changes on it (quality/live.py's journal) and
tries again, so no verified outcome is lost or counted twice and there is one writer per update.
A periodic refresh adopts what other instances wrote (their cut in force) and flushes this
instance's counts of unlabelled decisions.

A stored state made under other settings (another target, confidence or verification plan) is
not reused: its tests were about another question; the route starts afresh (logged).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from typing import Any

import orjson

from faregate.lifecycle import Periodic
from faregate.quality.live import LiveState, RouteCalibration
from faregate.store.verifications import VerificationRow, VerificationStore

log = logging.getLogger("faregate.quality")

REFRESH_S = 2.0
SAVE_TRIES = 8


def fingerprint(calibration: RouteCalibration) -> str:
    s = calibration.settings
    v = s.verification
    return (
        f"{calibration.kind}|t={s.target}|c={s.confidence}|prior={s.prior_outcomes}|"
        f"share={v.share}|frontier={v.frontier}|rest={v.rest_ratio}|cmp={v.comparator}"
    )


class QualityService:
    def __init__(self, routes: Iterable[RouteCalibration], store: VerificationStore) -> None:
        self.routes: dict[str, RouteCalibration] = {r.route: r for r in routes}
        self.store = store
        self._versions: dict[str, int] = {name: 0 for name in self.routes}
        self._locks: dict[str, asyncio.Lock] = {name: asyncio.Lock() for name in self.routes}
        self._refresh = Periodic("calibration state refresh", REFRESH_S, self.refresh)

    def scope(self, route: str) -> str:
        return f"route:{route}"

    async def load(self) -> None:
        for name, calibration in self.routes.items():
            await self._load(name, calibration, at_start=True)

    def start(self) -> None:
        self._refresh.start()

    async def close(self) -> None:
        await self._refresh.stop()
        for name in self.routes:
            try:
                await self.save(name)
            except Exception:
                log.exception("could not save the calibration of route %s at shutdown", name)

    async def _load(self, name: str, calibration: RouteCalibration, *, at_start: bool = False) -> bool:
        """Adopt the stored state if it is newer than ours; True if it was."""
        stored = await self.store.load_state(self.scope(name))
        if stored is None:
            return False
        version, text = stored
        if version <= self._versions[name] and not at_start:
            return False
        data: dict[str, Any] = orjson.loads(text)
        self._versions[name] = version
        if data.get("settings") != fingerprint(calibration):
            if at_start:
                log.warning("route %s: its quality settings changed; the calibration starts afresh", name)
            return False
        calibration.adopt(LiveState.from_json(data["state"]))
        return True

    async def save(self, name: str) -> None:
        """Write the route's state (compare-and-set, retried after adopting another writer's)."""
        calibration = self.routes[name]
        async with self._locks[name]:
            for _ in range(SAVE_TRIES):
                saved = len(calibration.journal)
                text = orjson.dumps(
                    {"settings": fingerprint(calibration), "state": calibration.state.to_json()}
                ).decode()
                expected = self._versions[name]
                if await self.store.save_state(self.scope(name), expected, text, time.time()):
                    self._versions[name] = expected + 1
                    del calibration.journal[:saved]
                    return
                # Another instance wrote first: take its state, replay ours on it, try again.
                stored = await self.store.load_state(self.scope(name))
                if stored is not None:
                    self._versions[name] = stored[0]
                    data = orjson.loads(stored[1])
                    if data.get("settings") == fingerprint(calibration):
                        calibration.adopt(LiveState.from_json(data["state"]))
            log.warning("route %s: the calibration state kept changing under us; saved later", name)

    async def refresh(self) -> None:
        for name, calibration in self.routes.items():
            async with self._locks[name]:
                await self._load(name, calibration)
            if calibration.journal:
                await self.save(name)

    async def record(self, row: VerificationRow) -> None:
        await self.store.insert(row)

    def figures(self) -> list[dict[str, Any]]:
        return [calibration.figures() for calibration in self.routes.values()]
