"""This process as a holder of reservations: an instance id, and a lease that says it is alive.

Every hold a serving process makes carries its instance id. The process renews its lease every
third of `accounts.instance_lease_s` (15 s by default); when it dies (kill -9, a crash, a lost
machine) the lease lapses within that time, and any instance then releases its holds: the
sweeper every `sweep_interval_s`, and at once a reservation of the same key that its holds would
otherwise refuse. So a dead instance's money comes back in seconds, not after the hold's TTL
(request timeout + 60 s). A clean stop ends the lease at once. A process whose lease lapsed
while it lived (stalled longer than the lease) still settles its requests: they are charged
as late settlements, as after a TTL expiry. CLI processes never take a lease.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable

from faregate.lifecycle import Periodic
from faregate.store.holds import new_instance_id

log = logging.getLogger("faregate.accounts")

Renew = Callable[[str, float, float, str, int], Awaitable[None]]


class InstanceLease:
    def __init__(self, renew: Renew, end: Callable[[str], Awaitable[None]], lease_s: float) -> None:
        self.instance_id = new_instance_id()
        self.lease_s = lease_s
        self.started_at = time.time()
        self._renew_lease = renew
        self._end_lease = end
        self._renewer = Periodic("instance-lease", lease_s / 3, self.renew)
        self._started = False

    async def renew(self) -> None:
        await self._renew_lease(
            self.instance_id, self.lease_s, self.started_at, socket.gethostname(), os.getpid()
        )

    async def start(self) -> None:
        await self.renew()
        self._started = True
        self._renewer.start()

    async def close(self) -> None:
        await self._renewer.stop()
        if self._started:
            # Ended at once: whatever this process still held is released by the next sweep.
            with contextlib.suppress(Exception):
                await self._end_lease(self.instance_id)
