"""Every calibrated route, kept in the store: load at start, save after each verification, share.

Each route's `LiveState` is one `calibration_state` row (store/verifications.py). Saving is a
compare-and-set on the row's version: the writer that read version v writes v + 1 only if the row
is still at v. Of two instances verifying decisions of one route at once, one wins; the other
loads the winner's state, replays its own unsaved changes on it (quality/route_state.py's journal) and
tries again, so no verified outcome is lost or counted twice and there is one writer per update.
Each write carries an id, and the row keeps the last WRITES_KEPT: a write whose answer was lost
(the connection dropped after the store took it) is found in the row next read, and the changes it
held leave the journal instead of being replayed on it.
A periodic refresh adopts what other instances wrote (their cut in force) and flushes this
instance's counts of unlabelled decisions; the store sends the row only once its version moved.

Each verification is also a `verifications` row (its outcome and real cost: the verification cost
shown is the rows' sum). A row the store cannot take (it is down) waits in memory and is written
again, in order, on every refresh and at a clean stop; beyond MAX_UNRECORDED waiting, the oldest
are given up, and those still waiting when the process stops are too: both counted in `rows_lost`.

The semantic cache's calibration (quality/cache_live.py), when on, is kept the same way as the
scope "cache". A stored state made under other settings (another target, confidence, verification
plan, comparator or judge model, or a cascade's rule checks), or for other models (the route's
cheap or strong model, or its trained router or judge, changed), is not reused: its tests were
about another question; the route starts afresh (logged).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Protocol

import orjson

from faregate.lifecycle import Periodic
from faregate.quality.cache_live import CacheCalibration
from faregate.quality.leases import Leases, SoleInstance
from faregate.quality.live import RouteCalibration
from faregate.store.verifications import VerificationRow, VerificationStore

log = logging.getLogger("faregate.quality")

REFRESH_S = 2.0
SAVE_TRIES = 8
# Verification rows kept while the store does not take them (a few hundred bytes each).
MAX_UNRECORDED = 10_000
# Ids of a scope's last writes kept in its row (20 bytes each), by which a writer whose answer was
# lost finds whether the store took it: many more than every instance writes between two refreshes.
WRITES_KEPT = 256


class StateContention(RuntimeError):
    """Other instances kept writing a scope's state: this write was not made."""


class Calibrated(Protocol):
    """A route's calibration (quality/live.py) or the semantic cache's (quality/cache_live.py)."""

    route: str
    journal: list[Callable[[], None]]

    @property
    def scope(self) -> str:
        """Its row's key in the store ("route:NAME", the cache's "cache"): a route may be named
        "cache" too."""
        ...

    def fingerprint(self) -> str: ...

    def models(self) -> dict[str, str]: ...

    def state_json(self) -> dict[str, Any]: ...

    def adopt_json(self, data: dict[str, Any]) -> None: ...


class QualityService:
    def __init__(
        self,
        routes: Iterable[RouteCalibration],
        store: VerificationStore,
        cache: CacheCalibration | None = None,
        leases: Leases | None = None,
    ) -> None:
        self.routes: dict[str, RouteCalibration] = {r.route: r for r in routes}
        self.cache = cache
        # Everything kept in the store, by its scope there ("route:NAME", the cache's "cache").
        self.calibrated: dict[str, Calibrated] = {r.scope: r for r in self.routes.values()}
        if cache is not None:
            self.calibrated[cache.scope] = cache
        self.store = store
        # Whose verification holds are alive (quality/spend.py).
        self.leases: Leases = leases or SoleInstance()
        self._versions: dict[str, int] = {scope: 0 for scope in self.calibrated}
        self._locks: dict[str, asyncio.Lock] = {scope: asyncio.Lock() for scope in self.calibrated}
        # The last write of each scope (`_write`): its caller may be cancelled while the store writes.
        self._writes: dict[str, asyncio.Future[bool]] = {}
        # The ids of the last writes in each scope's row as last read or written, and the writes
        # whose answer was lost (its id, the journal changes it held, the version it was made on).
        self._write_ids: dict[str, list[str]] = {scope: [] for scope in self.calibrated}
        self._unanswered: dict[str, list[tuple[str, int, int]]] = {}
        # Verification rows the store has not taken yet, oldest first (`record`), and those given up.
        self._unrecorded: deque[VerificationRow] = deque()
        self._recording = asyncio.Lock()
        self._rows_failing = False
        self.rows_lost = 0
        # Ledger writes the store refused, made again on every refresh (quality/spend.py's
        # settlements: an instance that admits nothing more would otherwise never make them, and
        # its hold would hold back every other instance's admissions for as long as it runs).
        self.retries: list[Callable[[], Awaitable[None]]] = []
        self._refresh = Periodic("calibration state refresh", REFRESH_S, self.refresh)

    async def load(self) -> None:
        for scope, calibration in self.calibrated.items():
            await self._load(scope, calibration, at_start=True)

    def start(self) -> None:
        self._refresh.start()

    async def close(self) -> None:
        await self._refresh.stop()
        for scope in self.calibrated:
            try:
                await self.save(scope)
            except Exception:
                log.exception("could not save the calibration state %s at shutdown", scope)
        if not await self.write_rows() and self._unrecorded:
            log.error("%d verification rows could not be written at shutdown", len(self._unrecorded))
            self.rows_lost += len(self._unrecorded)
            self._unrecorded.clear()

    async def _load(self, scope: str, calibration: Calibrated, *, at_start: bool = False) -> bool:
        """Adopt the stored state if it is newer than ours; True if it was. The store sends the row
        only when its version moved past ours: the refresh asks every REFRESH_S, and a row with
        domain learning weighs megabytes."""
        await self._written(scope)
        stored = await self.store.load_state(scope, newer_than=0 if at_start else self._versions[scope])
        if stored is None:
            return False
        version, text = stored
        data: dict[str, Any] = orjson.loads(text)
        self._taken(scope, calibration, version, data)
        self._versions[scope] = version
        changed = unlike(calibration, data)
        if changed:
            if at_start:
                log.warning("%s: its %s changed; the calibration starts afresh", scope, changed)
            return False
        calibration.adopt_json(data["state"])
        return True

    async def save(self, scope: str) -> None:
        """Write the state of `scope` (a calibration's `scope`: compare-and-set, retried after
        adopting another writer's)."""
        calibration = self.calibrated[scope]
        async with self._locks[scope]:
            for _ in range(SAVE_TRIES):
                if await self._write(scope, calibration):
                    return
                # Another instance wrote first: take its state, replay ours on it, try again.
                stored = await self.store.load_state(scope)
                if stored is not None:
                    data = orjson.loads(stored[1])
                    self._taken(scope, calibration, stored[0], data)
                    self._versions[scope] = stored[0]
                    if not unlike(calibration, data):
                        calibration.adopt_json(data["state"])
            log.warning("%s: the calibration state kept changing under us; saved later", scope)

    async def _write(
        self, scope: str, calibration: Calibrated, unjournaled: Callable[[], None] | None = None
    ) -> bool:
        """One compare-and-set of the state over the version last read; True: written (the journal
        of what it holds is cleared), False: another instance wrote in between. `unjournaled`: a
        change the state holds that is not in the journal (`write_now`'s); kept in it, in its place
        among what this write holds, if the store does not answer."""
        await self._written(scope)
        saved = len(calibration.journal)
        write_id = secrets.token_hex(8)
        ids = [*self._write_ids[scope], write_id][-WRITES_KEPT:]
        data = {
            "settings": calibration.fingerprint(),
            "models": calibration.models(),
            "state": calibration.state_json(),
            "writes": ids,
        }
        text = orjson.dumps(data).decode()
        expected = self._versions[scope]

        async def write() -> bool:
            try:
                written = await self.store.save_state(scope, expected, text, time.time())
            except Exception:
                # The store may have taken it all the same: the next row read tells (`_taken`).
                held = saved
                if unjournaled is not None:
                    # Else lost with the next state adopted (or a restart), though the store may
                    # never have taken it, as when the store is down.
                    calibration.journal.insert(saved, unjournaled)
                    held += 1
                self._unanswered.setdefault(scope, []).append((write_id, held, expected))
                raise
            if written:
                # Made over `expected`: none of the writes in doubt (made over it too) was taken.
                self._unanswered.pop(scope, None)
                self._versions[scope] = expected + 1
                self._write_ids[scope] = ids
                del calibration.journal[:saved]
            return written

        # Shielded: a caller cancelled while the store writes (a shutdown) does not lose whether it
        # wrote (the store goes on with it); otherwise the next save, finding another version,
        # would adopt that write and replay on it the changes it already holds, counting them twice.
        self._writes[scope] = written = asyncio.ensure_future(write())
        return await asyncio.shield(written)

    def _taken(self, scope: str, calibration: Calibrated, version: int, data: dict[str, Any]) -> None:
        """The row read (`data`, at `version`) is the latest word on the writes whose answer was
        lost, made over an older version: one it holds was taken, so the changes it held are in the
        row and leave the journal (replayed on it, they would count twice); the others never will be."""
        ids = [str(i) for i in data.get("writes", [])]
        self._write_ids[scope] = ids
        doubts = self._unanswered.get(scope, [])
        if not any(expected < version for _, _, expected in doubts):
            return
        self._unanswered.pop(scope)
        for write_id, saved, _ in doubts:
            if write_id in ids:
                del calibration.journal[:saved]

    async def _written(self, scope: str) -> None:
        """The last write of the scope finished and taken in (a cancelled caller's included)."""
        written = self._writes.pop(scope, None)
        if written is not None:
            with contextlib.suppress(Exception):  # its caller was told, or the state is saved again
                await written

    async def write_now(self, scope: str, change: Callable[[], bool]) -> None:
        """Make `change` on the freshest stored state and write it at once, by compare-and-set.
        When another instance wrote in between, its state is adopted and the change made again on
        it (so a decision the change takes, such as pausing the day, is always taken on the state
        it is written over). `change` is not journaled; it says whether it changed anything
        (nothing: nothing is written). One the store did not take (it raised, or the row kept
        changing under us: StateContention) joins the journal, to be written with the next save:
        kept in memory only, the next state adopted (or a restart) dropped it, and a pause of the
        day was made again by the next verification refused, counting one skip too many."""
        calibration = self.calibrated[scope]

        def journaled() -> None:
            change()

        async with self._locks[scope]:
            await self._load(scope, calibration)
            made = False
            for _ in range(SAVE_TRIES):
                if not made:
                    if not change():
                        return
                    made = True
                if await self._write(scope, calibration, unjournaled=journaled):
                    return
                # Adopted: the state the change was made on is gone, make it again on the new one.
                # (Not adopted: a state under other settings, overwritten with ours as it is.)
                made = not await self._load(scope, calibration)
            if made or change():
                calibration.journal.append(journaled)
            raise StateContention(f"{scope}: the calibration state kept changing under us")

    async def refresh(self) -> None:
        await self.write_rows()
        for retry in self.retries:
            await retry()
        for scope, calibration in self.calibrated.items():
            async with self._locks[scope]:
                await self._load(scope, calibration)
            if calibration.journal:
                await self.save(scope)

    async def record(self, row: VerificationRow) -> None:
        """Write a verification's row, after any still waiting; one the store cannot take now is
        written again on the next refresh (module docstring)."""
        self._unrecorded.append(row)
        if len(self._unrecorded) > MAX_UNRECORDED:
            self._unrecorded.popleft()
            if not self.rows_lost:
                log.error("over %d verification rows wait for the store: the oldest are lost", MAX_UNRECORDED)
            self.rows_lost += 1
        # Shielded: a caller cancelled while the store writes (a shutdown) does not leave a row
        # written and still waiting, to be written twice.
        await asyncio.shield(self.write_rows())

    async def write_rows(self) -> bool:
        """Write the rows waiting, oldest first; False: the store refused one (kept, with the rest)."""
        async with self._recording:
            while self._unrecorded:
                row = self._unrecorded[0]
                try:
                    await self.store.insert(row)
                except Exception as error:
                    if not self._rows_failing:
                        log.warning("verification rows wait for the store (%s), written once back", error)
                    self._rows_failing = True
                    return False
                if self._unrecorded and self._unrecorded[0] is row:  # not given up meanwhile
                    self._unrecorded.popleft()
            if self._rows_failing:
                log.warning("the verification rows that waited for the store are written")
            self._rows_failing = False
            return True

    @property
    def rows_pending(self) -> int:
        """Verification rows waiting for the store."""
        return len(self._unrecorded)

    def figures(self) -> list[dict[str, Any]]:
        return [calibration.figures() for calibration in self.routes.values()]

    def cache_figures(self) -> dict[str, Any] | None:
        return None if self.cache is None else self.cache.figures()


def unlike(calibration: Calibrated, data: dict[str, Any]) -> str:
    """What the stored state was made under that `calibration` is not ("": nothing, adopt it). A row
    written before the models were kept in it is taken as made for the same ones."""
    if data.get("settings") != calibration.fingerprint():
        return "quality settings"
    if data.get("models", calibration.models()) != calibration.models():
        return "models"
    return ""
