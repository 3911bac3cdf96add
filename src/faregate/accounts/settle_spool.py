"""Kept settlements on disk, so that a killed process (OOM, kill -9, a host restart) does not lose
them: accounts/settle_retry.py keeps a settlement the store could not take in memory, and this
spool holds the same entries in a local file until they land.

Each serving process appends to a file of its own in the spool directory
(`accounts.settle_spool_path`, default `<store.path>/settle-spool`), one JSON line per kept
settlement (money as decimal text), fsync'd before the request's settlement returns. A line
`{"landed": hold}` marks one that landed or was given up; once none is left the file is emptied.
The process holds an exclusive flock on its file as long as it lives; the kernel drops it when the
process dies, however it dies. At start, and every 30 s while it serves (accounts/settle_retry.py,
ORPHAN_SCAN_S: a worker that is not restarted in time leaves its file to those still serving), a
process claims every file nobody holds (left by a process that stopped with settlements still
kept): it copies their open entries into its own file, deletes them, and retries the entries.
The lock is what keeps `serve --workers N` from replaying a file twice: a file is claimed by
exactly one process, and only once its writer is gone.

A replayed entry is settled like any kept one, within `accounts.settle_retry_s` of when it was
first kept, the time the gateway was down included; past that it is given up (logged with its
key, hold and amount). The bound is what makes the replay safe: Redis remembers a settled hold
for `settle_retry_s` plus a minute from when the settlement first ran, and an entry's time is
taken before its first attempt, so a settlement that in fact landed before the process died
(its answer lost) is still recognised when replayed; replayed later, it would find the hold gone
and be charged a second time as a late settlement (unless its settlement had reached PostgreSQL's
ledger, where the Redis store looks before a late charge: store/redis/ledger.py). The minute
covers this host's clock being stepped between the kill and the replay (the entry's time is
wall-clock time). SQLite's ledger remembers settlements for good, but one rule for both stores
is easier to reason about.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from pathlib import Path

import orjson

from faregate.accounts.backend import HoldRef
from faregate.accounts.money import charge_nano, usd_text
from faregate.accounts.policy import Limits

log = logging.getLogger("faregate.accounts")

SUFFIX = ".jsonl"
# A file being made is named so until it is locked: claims only look at *.jsonl.
MAKING_PREFIX = ".making-"


@dataclass(slots=True, frozen=True)
class SpooledClose:
    """One kept settlement (cost_nano set) or release (None), as the spool stores it."""

    key_id: str
    ref: HoldRef
    cost_nano: int | None
    tokens: int
    # Wall-clock time of its first attempt, before it failed (survives the process, unlike
    # monotonic time); the replay bound counts from it.
    kept_unix: float


def entry_line(item: SpooledClose) -> bytes:
    ref = item.ref
    entry = {
        "key": item.key_id,
        "hold": ref.hold_id,
        "request": ref.request_id,
        "hour": ref.hour,
        "reserved_tokens": ref.tokens,
        "rpm": ref.limits.requests_per_minute,
        "tpm": ref.limits.tokens_per_minute,
        # Decimal text, not a float: exact, and readable by whoever opens the file.
        "cost_usd": None if item.cost_nano is None else usd_text(item.cost_nano),
        "tokens": item.tokens,
        "kept_unix": item.kept_unix,
    }
    return orjson.dumps(entry) + b"\n"


def parse_entry(entry: dict[str, object]) -> SpooledClose:
    """KeyError, TypeError, ValueError or InvalidOperation for an entry that is not one."""
    cost = entry["cost_usd"]
    rpm, tpm = entry["rpm"], entry["tpm"]
    limits = Limits(None if rpm is None else int(str(rpm)), None if tpm is None else int(str(tpm)))
    request = entry["request"]
    ref = HoldRef(
        str(entry["hold"]),
        None if request is None else str(request),
        int(str(entry["hour"])),
        int(str(entry["reserved_tokens"])),
        limits,
    )
    return SpooledClose(
        str(entry["key"]),
        ref,
        None if cost is None else charge_nano(Decimal(str(cost))),
        int(str(entry["tokens"])),
        float(str(entry["kept_unix"])),
    )


def read_open_entries(data: bytes, where: Path) -> list[SpooledClose]:
    """The entries of a spool file not marked landed, in order. A line that cannot be read (the
    last one, torn by the kill) is skipped with a warning."""
    kept: dict[str, SpooledClose] = {}
    for number, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = orjson.loads(line)
            if not isinstance(entry, dict):
                raise TypeError("not an object")
            if "landed" in entry:
                kept.pop(str(entry["landed"]), None)
                continue
            item = parse_entry(entry)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, InvalidOperation) as exc:
            log.warning(
                "settlement spool %s: line %d skipped, not a kept settlement (%s)", where, number, exc
            )
            continue
        kept[item.ref.hold_id] = item
    return list(kept.values())


class SettlementSpool:
    """This process's spool file, locked as long as it lives. Open with `open`."""

    def __init__(self, directory: Path, path: Path, fd: int) -> None:
        self.directory = directory
        self.path = path
        self._fd = fd
        # Holds with an entry in the file not marked landed yet.
        self._open: set[str] = set()
        # One write at a time, in the order asked: a truncation never overtakes an entry.
        self._lock = asyncio.Lock()

    @property
    def pending(self) -> int:
        return len(self._open)

    @classmethod
    async def open(cls, directory: Path) -> SettlementSpool:
        """OSError when the directory cannot be made or written."""
        return await asyncio.to_thread(cls._open_sync, directory)

    @classmethod
    def _open_sync(cls, directory: Path) -> SettlementSpool:
        directory.mkdir(parents=True, exist_ok=True)
        name = f"settlements-{os.getpid()}-{secrets.token_hex(4)}"
        making = directory / f"{MAKING_PREFIX}{name}"
        fd = os.open(making, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            # Renamed only once locked (the lock follows the file): another process starting now
            # never takes a file that is still being made for an orphan.
            path = directory / f"{name}{SUFFIX}"
            os.rename(making, path)
            _sync_directory(directory)
        except BaseException:
            os.close(fd)
            raise
        return cls(directory, path, fd)

    async def keep(self, item: SpooledClose) -> None:
        await self.keep_all([item])

    async def keep_all(self, items: list[SpooledClose]) -> None:
        """The entries are on disk (fsync'd) when this returns."""
        if not items:
            return
        data = b"".join(entry_line(item) for item in items)
        async with self._lock:
            await asyncio.to_thread(self._append, data)
            self._open.update(item.ref.hold_id for item in items)

    async def done(self, hold_ids: Iterable[str]) -> None:
        """These entries landed or were given up: marked so, or the file emptied when none is left."""
        ids = [hold_id for hold_id in hold_ids if hold_id in self._open]
        if not ids:
            return
        async with self._lock:
            self._open.difference_update(ids)
            if self._open:
                await asyncio.to_thread(
                    self._append, b"".join(orjson.dumps({"landed": i}) + b"\n" for i in ids)
                )
            else:
                await asyncio.to_thread(self._empty)

    def _append(self, data: bytes) -> None:
        size = os.fstat(self._fd).st_size
        view = memoryview(data)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
            os.fsync(self._fd)
        except OSError:
            # A partial line (a full disk) would run into the next entry and spoil it too.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, size)
            raise

    def _empty(self) -> None:
        os.ftruncate(self._fd, 0)
        os.fsync(self._fd)

    async def claim_orphans(self) -> list[SpooledClose]:
        """The open entries of every spool file whose process is gone, now in this process's file
        (theirs are deleted)."""
        claimed: list[SpooledClose] = []
        for path in sorted(self.directory.glob(f"*{SUFFIX}")):
            if path == self.path:
                continue
            taken = await asyncio.to_thread(_take_file, path)
            if taken is None:
                continue
            fd, entries = taken
            try:
                fresh = [e for e in entries if e.ref.hold_id not in self._open]
                # Copied into this file before the orphan goes: a kill in between leaves the
                # entries in both (replayed twice, which the stores' idempotent settle makes
                # harmless), never in neither.
                await self.keep_all(fresh)
                # Deleted while still locked: a process that opened it meanwhile gets the lock only
                # once it is gone, and then sees it is gone (_take_file's inode check).
                await asyncio.to_thread(_delete, path, self.directory)
            finally:
                os.close(fd)
            claimed.extend(fresh)
            if entries:
                log.warning(
                    "settlement spool: took over %d kept settlement(s) from %s, left by a gateway "
                    "process that stopped before they landed",
                    len(entries),
                    path.name,
                )
        # Files left half made by a process killed as it started (empty): one makes and renames its
        # file in microseconds, so one older than a minute is nobody's.
        for making in self.directory.glob(f"{MAKING_PREFIX}*"):
            await asyncio.to_thread(_delete_if_stale, making)
        return claimed

    async def close(self) -> None:
        """A clean stop: the file goes if nothing is left in it; else it stays, unlocked, for the
        next process to claim."""
        async with self._lock:
            if not self._open:
                await asyncio.to_thread(_delete, self.path, self.directory)
            os.close(self._fd)


def _take_file(path: Path) -> tuple[int, list[SpooledClose]] | None:
    """`path` locked (its fd: the caller closes it, which unlocks it) and its open entries, if no
    live process holds it; None when one does, or when it is gone."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        # Another process may have claimed and deleted it between our open and our lock.
        if os.stat(path).st_ino != os.fstat(fd).st_ino:
            os.close(fd)
            return None
        with open(fd, "rb", closefd=False) as file:
            data = file.read()
    except (BlockingIOError, FileNotFoundError):
        os.close(fd)
        return None  # its process is alive, or another process claimed it
    except BaseException:
        os.close(fd)
        raise
    return fd, read_open_entries(data, path)


def _delete(path: Path, directory: Path) -> None:
    path.unlink(missing_ok=True)
    _sync_directory(directory)


def _delete_if_stale(path: Path) -> None:
    try:
        if time.time() - path.stat().st_mtime > 60:
            path.unlink(missing_ok=True)
    except FileNotFoundError:
        pass


def _sync_directory(directory: Path) -> None:
    """A file made, renamed or deleted survives a power loss only once its directory is synced."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
