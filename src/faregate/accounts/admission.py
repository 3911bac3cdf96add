"""The money and rate gate in front of the upstream: reserve before the call, settle after.

`Admission` is what the request pipeline talks to. `admit` is the one synchronous write
on the hot path: it reserves the request's worst-case cost (and its tokens against the
rate limits) atomically, or refuses with 402 / 429. Every hold is then either settled to
the actual cost or released; the pipeline guarantees one or the other in a `finally`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from faregate.accounts.keys import ApiKey
from faregate.types import RequestMeta


@dataclass(slots=True)
class Hold:
    """A reservation made by `admit`; `handle` is whatever the backend needs to settle it."""

    key_id: str
    reserved_usd: Decimal
    reserved_tokens: int
    # OpenAI-style x-ratelimit-* headers to send with the response.
    headers: dict[str, str] = field(default_factory=dict)
    handle: Any = None


class Admission(Protocol):
    async def admit(self, key: ApiKey, request: RequestMeta, worst_usd: Decimal, tokens: int) -> Hold:
        """Reserve or raise InsufficientCredits (402) / RateLimited (429)."""
        ...

    async def settle(self, hold: Hold, cost_usd: Decimal, tokens: int) -> None:
        """Charge the actual cost and release the rest of the hold."""
        ...

    async def release(self, hold: Hold) -> None:
        """Give the whole hold back (nothing was spent)."""
        ...

    async def count_hit(self, key: ApiKey, request: RequestMeta) -> dict[str, str]:
        """A request answered from the cache: it costs nothing and reserves nothing, but it is still
        a request, so it counts against the key's requests-per-minute limit (429 past it), and a
        key the store refuses (revoked elsewhere, still cached here) gets 401 as on a miss.
        Returns the x-ratelimit-* headers."""
        ...


class OpenAdmission:
    """No credits, budgets or rate limits: every request is admitted and nothing is held."""

    async def admit(self, key: ApiKey, request: RequestMeta, worst_usd: Decimal, tokens: int) -> Hold:
        return Hold(key.id, Decimal(0), 0)

    async def settle(self, hold: Hold, cost_usd: Decimal, tokens: int) -> None:
        return None

    async def release(self, hold: Hold) -> None:
        return None

    async def count_hit(self, key: ApiKey, request: RequestMeta) -> dict[str, str]:
        return {}
