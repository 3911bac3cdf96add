"""Key and account administration: one implementation behind the admin HTTP API and the CLI.

Every change that other instances must see (a revocation, new limits or budgets) goes
through the backend's `key_changed`, and this process's caches are cleared at once.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from enum import Enum

from faregate.accounts.backend import AccountBackend, AuditReport
from faregate.accounts.keys import ApiKey, KeyStore
from faregate.accounts.metered import PolicyCache
from faregate.accounts.money import MAX_NANO, usd_text
from faregate.accounts.policy import (
    Budget,
    Limits,
    Policy,
    Window,
    budgets_from_text,
    budgets_to_text,
    calendar_period,
    hour_of,
    limits_for,
)
from faregate.config import AccountsSettings
from faregate.errors import Conflict, InvalidRequest, NotFound
from faregate.store.holds import HoldRow, InstanceRow, new_entry_id
from faregate.store.outage import is_outage
from faregate.store.protocols import (
    AccountRow,
    BalanceCapExceeded,
    KeyRow,
    LedgerRow,
    PolicyValues,
    UnknownLedgerEntry,
)

log = logging.getLogger("faregate.accounts")


class Keep(Enum):
    """A field left out of an update: keep what is stored."""

    KEEP = 0


KEEP = Keep.KEEP


@dataclass(slots=True)
class PolicyChange:
    requests_per_minute: int | Keep | None = KEEP
    tokens_per_minute: int | Keep | None = KEEP
    max_request_nano: int | Keep | None = KEEP
    budgets: tuple[Budget, ...] | Keep = KEEP

    def columns(self) -> PolicyValues:
        """The stored columns this change sets (AccountTable.set_policy)."""
        values: dict[str, int | str | None] = {}
        for name in ("requests_per_minute", "tokens_per_minute", "max_request_nano"):
            value = getattr(self, name)
            if value is not KEEP:
                values[name] = value
        if not isinstance(self.budgets, Keep):
            values["budgets"] = budgets_to_text(self.budgets)
        return values

    @property
    def empty(self) -> bool:
        return all(
            value is KEEP
            for value in (
                self.requests_per_minute,
                self.tokens_per_minute,
                self.max_request_nano,
                self.budgets,
            )
        )


@dataclass(slots=True, frozen=True)
class Spend:
    window: Window
    spent_nano: int


@dataclass(slots=True)
class KeyView:
    key: ApiKey
    balance_nano: int
    held_nano: int
    policy: Policy
    limits: Limits
    budgets: list[Spend] = field(default_factory=list)
    # Spend this UTC day and this UTC month (settled plus held).
    today_nano: int = 0
    month_nano: int = 0


def policy_of(account: AccountRow) -> Policy:
    return Policy(
        account.requests_per_minute,
        account.tokens_per_minute,
        account.max_request_nano,
        budgets_from_text(account.budgets),
    )


class AccountsService:
    def __init__(
        self, keys: KeyStore, backend: AccountBackend, policies: PolicyCache, settings: AccountsSettings
    ) -> None:
        self.keys = keys
        self.backend = backend
        self.table = backend.table
        self.policies = policies
        self.settings = settings

    async def resolve(self, id_or_name: str) -> str:
        """A key id from an id or a unique name (revoked keys included)."""
        if await self.table.get_key(id_or_name) is not None:
            return id_or_name
        named = [k for k in await self.keys.list(include_revoked=True) if k.name == id_or_name]
        active = [k for k in named if not k.revoked] or named
        if len(active) > 1:
            ids = ", ".join(k.id for k in active)
            raise InvalidRequest(
                f"{len(active)} keys are named {id_or_name!r} ({ids}); use an id", param="id"
            )
        if not active:
            raise NotFound(f"No key with id or name {id_or_name!r}.", code="key_not_found")
        return active[0].id

    async def create_key(
        self,
        name: str,
        premium: bool = False,
        credits_nano: int | None = None,
        change: PolicyChange | None = None,
    ) -> tuple[KeyView, str]:
        """A new key, answered with its raw value (shown this once: it is stored nowhere). The key,
        its account, its policy and its credits are written in one transaction, and the answer is
        made from what was written, not read back: once the key exists, nothing can fail before
        its raw value is answered. Nothing is broadcast: no instance can have cached a key that
        did not exist, nor its policy."""
        change = change or PolicyChange()
        grant = self.keys.grant_nano if credits_nano is None else credits_nano
        key, raw = await self.keys.create(name, premium, credits_nano, change.columns())
        policy = Policy(
            None if isinstance(change.requests_per_minute, Keep) else change.requests_per_minute,
            None if isinstance(change.tokens_per_minute, Keep) else change.tokens_per_minute,
            None if isinstance(change.max_request_nano, Keep) else change.max_request_nano,
            () if isinstance(change.budgets, Keep) else change.budgets,
        )
        now = time.time()
        # Nothing can have been spent yet: only this answer knows the raw key.
        view = KeyView(
            key,
            grant,
            0,
            policy,
            limits_for(policy, key.premium, self.settings),
            [Spend(window, 0) for window in policy.windows(now)],
        )
        return view, raw

    async def list_keys(self, include_revoked: bool = True) -> list[KeyView]:
        return [await self.view(k.id) for k in await self.keys.list(include_revoked=include_revoked)]

    async def key_page(
        self, include_revoked: bool = True, limit: int | None = None, after: str | None = None
    ) -> tuple[list[KeyView], bool]:
        """Up to `limit` keys (None: all) in the order they were made, those after the key `after`
        (the last of a page), and whether more follow. Only the page's keys are read in full
        (balance, spend: a few queries each). The cursor is placed among every key, revoked ones
        included: a key revoked between two pages does not lose the place."""
        keys = await self.keys.list(include_revoked=True)
        if after is not None:
            position = next((i for i, key in enumerate(keys) if key.id == after), None)
            if position is None:
                raise InvalidRequest(
                    f"'after' must be a key id (the last of a page), not {after!r}.", param="after"
                )
            keys = keys[position + 1 :]
        if not include_revoked:
            keys = [key for key in keys if not key.revoked]
        page = keys if limit is None else keys[:limit]
        return [await self.view(key.id) for key in page], len(page) < len(keys)

    async def view(self, key_id: str) -> KeyView:
        row = await self.table.get_key(key_id)
        account = await self.table.get_account(key_id)
        balance = await self.backend.balance(key_id)
        if row is None or account is None or balance is None:
            raise NotFound(f"No key with id {key_id!r}.", code="key_not_found")
        key = ApiKey.from_row(row)
        policy = policy_of(account)
        now = time.time()
        windows = policy.windows(now)
        day, _ = calendar_period("day", now)
        month, _ = calendar_period("month", now)
        hours = [hour_of(day.timestamp()), hour_of(month.timestamp()), *(w.since_hour for w in windows)]
        spent = await self.backend.spent(key_id, hours)
        return KeyView(
            key,
            balance.balance_nano,
            balance.held_nano,
            policy,
            limits_for(policy, key.premium, self.settings),
            [Spend(w, s) for w, s in zip(windows, spent[2:], strict=True)],
            spent[0],
            spent[1],
        )

    async def update(self, key_id: str, change: PolicyChange, name: str | None = None) -> KeyView:
        account = await self.table.get_account(key_id)
        row = await self.table.get_key(key_id)
        if account is None or row is None:
            raise NotFound(f"No key with id {key_id!r}.", code="key_not_found")
        if not change.empty and row.revoked_at is not None:
            # Limits and budgets of a key that can make no request: a mistake (the wrong key of
            # two with one name), said so rather than done. A rename alone changes nothing it can do.
            raise _revoked(row, "its limits and budgets are not changed")
        if name is not None:
            name = name.strip()
            if not name or len(name) > 100:
                raise InvalidRequest("a key name is 1 to 100 characters", param="name")
        if not change.empty:
            # The name with the policy, in one transaction: a failure (503) changes neither.
            await self._store_policy(key_id, change, name)
        elif name is not None:
            await self.table.set_key_name(key_id, name)
            self.keys.clear_cache()
            await self.backend.key_changed(key_id)
        return await self.view(key_id)

    async def revoke(self, id_or_name: str) -> KeyView | None:
        """Revoke a key and tell every instance; None if no active key matches. A key already
        revoked is told again (idempotent): the revocation is stored first, then marked in the
        live store and broadcast, and a failure after the first step (503) is finished by the
        retry, which would otherwise find the key revoked and stop there."""
        key_id = await self.keys.revoke_id(id_or_name)
        if key_id is None:
            revoked = await self.revoked_id(id_or_name)
            if revoked is not None:
                self.policies.forget(revoked)
                await self.backend.key_changed(revoked, revoked=True)
            return None
        self.policies.forget(key_id)
        await self.backend.key_changed(key_id, revoked=True)
        return await self.view(key_id)

    async def revoked_id(self, id_or_name: str) -> str | None:
        """The revoked key with this id, or else the key with this name revoked last (no key of
        that name being active), or None. The last: a retry by name finishes the revocation just
        made, also when an older key had the name (rotated: revoked, then made again)."""
        row = await self.table.get_key(id_or_name)
        if row is not None:
            return row.id if row.revoked_at is not None else None
        named = [k for k in await self.keys.list(include_revoked=True) if k.name == id_or_name]
        if not named or not all(k.revoked for k in named):
            return None
        return max(named, key=lambda k: k.revoked_at or 0.0).id

    async def add_credits(self, key_id: str, amount_nano: int, note: str | None = None) -> KeyView:
        row = await self.table.get_key(key_id)
        if row is None:
            raise NotFound(f"No key with id {key_id!r}.", code="key_not_found")
        if row.revoked_at is not None:
            # A revocation is final: credits added now could never be spent.
            raise _revoked(row, "it takes no credits (they could never be spent)")
        if note is not None and len(note) > 500:
            raise InvalidRequest("a note is at most 500 characters", param="note")
        try:
            await self.backend.credit(
                LedgerRow(new_entry_id("topup"), key_id, "topup", amount_nano, time.time(), note=note)
            )
        except BalanceCapExceeded as exc:
            # parse_usd caps one amount, not the sum of top-ups: a balance past MAX_NANO could no
            # longer be compared exactly by Redis scripts (doubles), on either store.
            held = (
                f", plus ${usd_text(exc.held_nano)} reserved by requests in flight," if exc.held_nano else ""
            )
            room = MAX_NANO - exc.balance_nano - exc.held_nano
            can = f"at most ${usd_text(room)} can be added" if room > 0 else "nothing more can be added"
            raise InvalidRequest(
                f"Adding ${usd_text(amount_nano)} would take the key's balance of "
                f"${usd_text(exc.balance_nano)}{held} past the most a balance can hold, "
                f"${usd_text(MAX_NANO)}: {can}.",
                param="amount_usd",
            ) from None
        try:
            await self.backend.flush()
        except Exception as exc:
            if not is_outage(exc):
                raise
            # The credit is applied (the live balance moved; its ledger row waits in the outbox and
            # is shipped when PostgreSQL takes it): an error now would read as "not done", and a
            # retry would credit the key twice.
            log.warning("credit to %s applied; its ledger row is not in PostgreSQL yet: %s", key_id, exc)
        return await self.view(key_id)

    async def reservations(self, key_id: str) -> list[HoldRow]:
        await self.view(key_id)
        return await self.backend.holds(key_id)

    async def ledger(self, key_id: str, limit: int = 100, after: str | None = None) -> list[LedgerRow]:
        """The key's newest `limit` rows, newest first; with `after`, those older than that entry
        (the last of a page: the next page)."""
        await self.view(key_id)
        await self.backend.flush()
        try:
            return await self.table.ledger_rows(key_id, limit, after)
        except UnknownLedgerEntry:
            raise InvalidRequest(
                f"'after' must be an entry id of this key's ledger (the last id of a page), not {after!r}.",
                param="after",
            ) from None

    async def instances(self) -> list[InstanceRow]:
        return await self.backend.instances()

    async def release_instance(self, instance_id: str, force: bool = False) -> int:
        """Release a dead instance's holds now (the sweeper would within its lease). A live
        instance's are refused unless forced: its requests may still be running, and its money
        would then be spendable twice until they settle (late)."""
        found = next((i for i in await self.backend.instances() if i.instance_id == instance_id), None)
        if found is None:
            raise NotFound(f"No instance {instance_id!r} holds reservations.", code="instance_not_found")
        if found.alive(time.time()) and not force:
            raise InvalidRequest(
                f"Instance {instance_id} is alive (its lease is renewed); its holds belong to requests in "
                "flight. Stop it first, or force the release.",
                param="force",
                code="instance_alive",
            )
        return await self.backend.release_instance(
            instance_id, f"released by an operator: instance {instance_id}{' (forced)' if force else ''}"
        )

    async def audit(self) -> AuditReport:
        await self.backend.flush()
        return await self.backend.audit()

    async def _store_policy(self, key_id: str, change: PolicyChange, name: str | None = None) -> None:
        # Only the fields the change names: written over a policy read earlier, the others would
        # undo a change made in between (two PATCHes of one key at once).
        await self.table.set_policy(key_id, change.columns(), name)
        self.policies.forget(key_id)
        if name is not None:
            self.keys.clear_cache()
        await self.backend.key_changed(key_id)


def _revoked(row: KeyRow, refused: str) -> Conflict:
    """The refusal of a change to a revoked key (409): a revocation is final."""
    assert row.revoked_at is not None
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row.revoked_at))
    return Conflict(
        f"The key {row.id} ({row.name}) is revoked (since {when} UTC): {refused}. A revocation is "
        "final; create a new key instead.",
        code="key_revoked",
    )
