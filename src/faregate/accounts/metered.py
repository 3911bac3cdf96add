"""The metered gate: reserve each request's worst case before it goes upstream, settle after.

`admit` turns a key's policy into one atomic reservation in the backend (the one synchronous
write on the hot path) and turns a refusal into the error the client sees: 402 when credits
or a budget cannot cover the worst case, 429 with Retry-After when a rate limit is reached.
"""

from __future__ import annotations

import math
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

from faregate.accounts.admission import Hold
from faregate.accounts.backend import AccountBackend, HoldRef, Refused, ReserveAsk
from faregate.accounts.keys import ApiKey
from faregate.accounts.money import charge_nano, hold_nano, usd, usd_text
from faregate.accounts.policy import Policy, budgets_from_text, hour_of, limits_for
from faregate.accounts.ratelimit import RateRefusal, rate_headers
from faregate.accounts.settle_retry import SettlementRetry
from faregate.config import AccountsSettings
from faregate.errors import (
    UNKNOWN_API_KEY,
    AuthenticationFailed,
    FaregateError,
    InsufficientCredits,
    RateLimited,
)
from faregate.store.protocols import AccountTable, OutcomeUnknown, StoreUnavailable
from faregate.types import RequestMeta


class AccountsUnavailable(FaregateError):
    """The store that guards credits cannot be reached: refuse rather than let spend through."""

    status = 503
    type = "service_unavailable"
    code = "accounts_unavailable"


class PolicyCache:
    """Keys' policies, cached in process like verified keys (a policy is read on every request).
    Changes made through this process apply at once; other instances hear of them through the
    backend's key events, and a change made behind the gateway's back applies within the TTL."""

    def __init__(
        self, table: AccountTable, ttl_s: float = 5.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._table = table
        self._ttl = ttl_s
        self._clock = clock
        self._cache: dict[str, tuple[float, Policy]] = {}
        # Bumped by `forget`, so a read that started before a change does not cache the old policy
        # over it (as KeyStore's generation does for verified keys).
        self._generation = 0

    async def get(self, key_id: str) -> Policy:
        now = self._clock()
        cached = self._cache.get(key_id)
        if cached is not None and cached[0] > now:
            return cached[1]
        generation = self._generation
        account = await self._table.get_account(key_id)
        policy = Policy()
        if account is not None:
            policy = Policy(
                account.requests_per_minute,
                account.tokens_per_minute,
                account.max_request_nano,
                budgets_from_text(account.budgets),
            )
        if self._ttl > 0 and generation == self._generation:
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[key_id] = (now + self._ttl, policy)
        return policy

    def forget(self, key_id: str | None = None) -> None:
        self._generation += 1
        if key_id is None:
            self._cache.clear()
        else:
            self._cache.pop(key_id, None)


class MeteredAdmission:
    def __init__(
        self,
        backend: AccountBackend,
        policies: PolicyCache,
        settings: AccountsSettings,
        hold_ttl_s: float,
    ) -> None:
        self.backend = backend
        self.policies = policies
        self.settings = settings
        self.hold_ttl_s = hold_ttl_s
        # Settlements the store could not take right away, kept and retried (a blip loses no money).
        self.settlements = SettlementRetry(backend, settings.settle_retry_s)

    async def admit(self, key: ApiKey, request: RequestMeta, worst_usd: Decimal, tokens: int) -> Hold:
        policy = await self.policies.get(key.id)
        limits = limits_for(policy, key.premium, self.settings)
        amount = hold_nano(worst_usd)
        if policy.max_request_nano is not None and amount > policy.max_request_nano:
            # Revocation first, as the stores check it: a key revoked elsewhere, still in this
            # process's key cache, is told 401 as on any other request, not 402 (lower max_tokens).
            # One check, for over-cap requests only.
            await self._check_key(key)
            raise InsufficientCredits(
                f"This request may cost up to ${usd_text(amount)} (its worst case: the prompt plus "
                f"max_tokens at the priciest candidate's prices), more than this key's per-request cap of "
                f"${usd_text(policy.max_request_nano)}. Lower max_tokens or choose a cheaper model.",
                code="request_budget_exceeded",
            )
        now = time.time()
        ask = ReserveAsk(
            key_id=key.id,
            hold_id="hold_" + secrets.token_hex(10),
            request_id=request.request_id,
            amount_nano=amount,
            tokens=tokens,
            hour=hour_of(now),
            windows=policy.windows(now),
            limits=limits,
            ttl_s=self.hold_ttl_s,
            instance_id=self.backend.instance_id,
        )
        try:
            result = await self.backend.reserve(ask)
        except StoreUnavailable as exc:
            if isinstance(exc, OutcomeUnknown):
                # The reservation may still be made: its release is kept and lands once the store
                # answers (not tried now: it would keep the client waiting as long again).
                ref = HoldRef(ask.hold_id, request.request_id, ask.hour, tokens, limits)
                await self.settlements.release_later(key.id, ref, exc)
            raise AccountsUnavailable(
                f"The gateway cannot reach its accounts store ({exc}), so it cannot reserve this request's "
                "cost; nothing was sent upstream. Retry shortly.",
                headers={"Retry-After": "1"},
            ) from exc
        if isinstance(result, Refused):
            raise refusal_error(result, amount, tokens)
        return Hold(
            key.id,
            usd(amount),
            tokens,
            headers=rate_headers(result.rate),
            handle=HoldRef(ask.hold_id, request.request_id, ask.hour, tokens, limits),
        )

    async def _check_key(self, key: ApiKey) -> None:
        """Refuse (401) a key the store refuses whatever it asks: revoked, or without an account."""
        try:
            checked = await self.backend.take_request(key.id, None)
        except StoreUnavailable as exc:
            raise AccountsUnavailable(
                f"The gateway cannot reach its accounts store ({exc}) to check the key. Retry shortly.",
                headers={"Retry-After": "1"},
            ) from exc
        if isinstance(checked, Refused):
            raise refusal_error(checked, 0, 0)

    async def count_hit(self, key: ApiKey, request: RequestMeta) -> dict[str, str]:
        limits = limits_for(await self.policies.get(key.id), key.premium, self.settings)
        try:
            # Even without a requests limit: a key revoked elsewhere, still in this process's key
            # cache, is refused on a hit as the reservation refuses it on a miss (401).
            taken = await self.backend.take_request(
                key.id, limits.requests_per_minute, limits.tokens_per_minute
            )
        except StoreUnavailable as exc:
            raise AccountsUnavailable(
                f"The gateway cannot reach its accounts store ({exc}) to check the key and count this "
                "request against its rate limit. Retry shortly.",
                headers={"Retry-After": "1"},
            ) from exc
        if isinstance(taken, Refused):
            raise refusal_error(taken, 0, 0)
        if isinstance(taken, RateRefusal):
            raise refusal_error(Refused("rate", rate=taken), 0, 0)
        return rate_headers(taken)

    async def settle(self, hold: Hold, cost_usd: Decimal, tokens: int) -> None:
        await self.settlements.settle(hold.key_id, hold.handle, charge_nano(cost_usd), tokens)

    async def release(self, hold: Hold) -> None:
        await self.settlements.release(hold.key_id, hold.handle)


def refusal_error(refused: Refused, amount: int, tokens: int) -> FaregateError:
    if refused.reason == "credits":
        held = (
            f" (${usd_text(refused.held_nano)} more is reserved by requests in progress)"
            if refused.held_nano
            else ""
        )
        return InsufficientCredits(
            f"Insufficient credits: this request reserves up to ${usd_text(amount)} (its worst case: the "
            f"prompt plus max_tokens at the priciest candidate's prices) but the key's balance is "
            f"${usd_text(refused.balance_nano)}{held}. Add credits or lower max_tokens.",
        )
    if refused.reason == "budget" and refused.window is not None:
        window = refused.window
        resets = ""
        if window.resets_at is not None:
            moment = datetime.fromtimestamp(window.resets_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
            resets = f" The budget resets at {moment}."
        limit, spent = usd_text(window.budget.limit_nano), usd_text(refused.window_spent_nano)
        return InsufficientCredits(
            f"Budget exceeded: the key's {window.budget.label} budget is ${limit}; ${spent} of it is spent "
            f"or reserved, and this request reserves up to ${usd_text(amount)} "
            f"(balance ${usd_text(refused.balance_nano)}).{resets}",
            code="budget_exceeded",
        )
    if refused.reason == "rate" and refused.rate is not None:
        rate = refused.rate
        headers = rate_headers(rate.state)
        if math.isinf(rate.retry_after_s):
            return RateLimited(
                f"Request too large: it may use up to {tokens} tokens (prompt plus max_tokens) but the "
                f"key's limit is {rate.limit} tokens per minute. Lower max_tokens.",
                code="request_too_large",
                headers={**headers, "x-should-retry": "false"},  # the SDKs retry a 429 unless told
            )
        wait = max(1, math.ceil(rate.retry_after_s))
        return RateLimited(
            f"Rate limit reached for {rate.what} per minute: limit {rate.limit}, this request needs "
            f"{rate.needed}. Retry after {wait}s.",
            headers={**headers, "Retry-After": str(wait)},
        )
    # revoked (seen by the store before this process's key cache) or no account at all
    return AuthenticationFailed(UNKNOWN_API_KEY)
