"""What a key may spend: budgets per period, a per-request cap, and its rate limits.

Spend is counted in hourly buckets (hour = unix seconds // 3600), attributed to the hour its
request was admitted. A calendar budget (UTC day, ISO week from Monday, month) starts on an
hour boundary, so it is counted exactly. A rolling budget (the last 24 hours, 7 days or 30
days) counts the whole bucket its window starts in: up to an hour of extra spend is seen,
never less, so a rolling budget can refuse a little early but cannot be overspent.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, get_args

import orjson

from faregate.accounts.money import parse_usd, usd_text
from faregate.config import AccountsSettings, TierLimits
from faregate.errors import InvalidRequest

Period = Literal["day", "week", "month"]
WindowKind = Literal["calendar", "rolling"]
PERIODS: tuple[str, ...] = get_args(Period)
WINDOWS: tuple[str, ...] = get_args(WindowKind)
ROLLING_HOURS: dict[str, int] = {"day": 24, "week": 7 * 24, "month": 30 * 24}
# Spend buckets older than the longest window (a 31-day calendar month) are never read again.
KEEP_HOURS = 31 * 24 + 1
HOUR_S = 3600
# A per-minute limit is stored as a 64-bit integer and compared exactly by Redis scripts (doubles).
MAX_LIMIT = 2**53 - 1


def hour_of(unix_s: float) -> int:
    return int(unix_s // HOUR_S)


@dataclass(slots=True, frozen=True)
class Budget:
    period: Period
    window: WindowKind
    limit_nano: int

    @property
    def label(self) -> str:
        return f"{self.window} {self.period}"

    def to_json(self) -> dict[str, Any]:
        return {"period": self.period, "window": self.window, "limit_usd": usd_text(self.limit_nano)}


@dataclass(slots=True, frozen=True)
class Window:
    """One budget as the store checks it now: spend in buckets >= since_hour, plus the request,
    must stay within limit_nano."""

    budget: Budget
    since_hour: int
    # When the calendar period ends (unix seconds); None for rolling windows.
    resets_at: float | None


def window_of(budget: Budget, now: float) -> Window:
    if budget.window == "rolling":
        return Window(budget, hour_of(now - ROLLING_HOURS[budget.period] * HOUR_S), None)
    start, end = calendar_period(budget.period, now)
    return Window(budget, hour_of(start.timestamp()), end.timestamp())


def calendar_period(period: Period, now: float) -> tuple[datetime, datetime]:
    moment = datetime.fromtimestamp(now, UTC)
    day = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if period == "day":
        return day, day + timedelta(days=1)
    if period == "week":
        start = day - timedelta(days=day.weekday())
        return start, start + timedelta(days=7)
    start = day.replace(day=1)
    end = (
        start.replace(year=start.year + 1, month=1)
        if start.month == 12
        else start.replace(month=start.month + 1)
    )
    return start, end


@dataclass(slots=True, frozen=True)
class Policy:
    """A key's own settings; None means "the tier's default" (limits) or "no cap" (max_request)."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_request_nano: int | None = None
    budgets: tuple[Budget, ...] = field(default_factory=tuple)

    def windows(self, now: float) -> tuple[Window, ...]:
        return tuple(window_of(b, now) for b in self.budgets)


@dataclass(slots=True, frozen=True)
class Limits:
    """Rate limits in force for one key (None: unlimited)."""

    requests_per_minute: int | None
    tokens_per_minute: int | None


def limits_for(policy: Policy, premium: bool, settings: AccountsSettings) -> Limits:
    tier: TierLimits = settings.premium if premium else settings.standard
    rpm = policy.requests_per_minute if policy.requests_per_minute is not None else tier.requests_per_minute
    tpm = policy.tokens_per_minute if policy.tokens_per_minute is not None else tier.tokens_per_minute
    return Limits(rpm, tpm)


# -- storage encoding (one JSON text column) ---------------------------------------------------


def budgets_to_text(budgets: tuple[Budget, ...]) -> str:
    return orjson.dumps([[b.period, b.window, b.limit_nano] for b in budgets]).decode()


def budgets_from_text(text: str | None) -> tuple[Budget, ...]:
    if not text:
        return ()
    return tuple(Budget(period, window, int(limit)) for period, window, limit in orjson.loads(text))


# -- client input --------------------------------------------------------------------------------

BUDGET_FIELDS = ("period", "window", "limit_usd")


def meant_field(unknown: str, fields: Iterable[str]) -> str:
    """The hint " (did you mean 'x'?)" for the field closest to a misspelt one; "" if none is close."""
    close = difflib.get_close_matches(unknown, list(fields), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def parse_budgets(value: Any, param: str = "budgets") -> tuple[Budget, ...]:
    """[{"period": "day", "window": "calendar", "limit_usd": "5"}, ...] ("window" defaults to
    calendar). At most one budget per period and window."""
    if not isinstance(value, list):
        raise InvalidRequest(f"'{param}' must be an array of budgets.", param=param)
    budgets: list[Budget] = []
    seen: set[tuple[str, str]] = set()
    for i, item in enumerate(value):
        where = f"{param}[{i}]"
        if not isinstance(item, dict):
            raise InvalidRequest(f"'{where}' must be an object.", param=where)
        unknown = sorted(set(item) - set(BUDGET_FIELDS))
        if unknown:
            raise InvalidRequest(
                f"'{where}' has unknown fields: {unknown}{meant_field(unknown[0], BUDGET_FIELDS)}; "
                f"a budget has {list(BUDGET_FIELDS)}.",
                param=where,
            )
        period, window = item.get("period"), item.get("window", "calendar")
        if period not in PERIODS:
            raise InvalidRequest(f"'{where}.period' must be one of {list(PERIODS)}.", param=f"{where}.period")
        if window not in WINDOWS:
            raise InvalidRequest(f"'{where}.window' must be one of {list(WINDOWS)}.", param=f"{where}.window")
        if (period, window) in seen:
            raise InvalidRequest(f"'{where}': a {window} {period} budget is already given.", param=where)
        seen.add((period, window))
        budgets.append(Budget(period, window, parse_usd(item.get("limit_usd"), f"{where}.limit_usd")))
    return tuple(budgets)


def parse_budget_spec(spec: str) -> Budget:
    """The CLI form PERIOD[:WINDOW]=USD, e.g. "day=5", "month:rolling=100"."""
    head, sep, amount = spec.partition("=")
    period, _, window = head.partition(":")
    if not sep:
        raise InvalidRequest(
            f"budget {spec!r}: expected PERIOD[:WINDOW]=USD, e.g. day=5 or month:rolling=100"
        )
    # Said in the option's own terms: the API's field paths ("budgets[0].period") mean nothing here.
    period, window = period.strip(), window.strip() or "calendar"
    if period not in PERIODS:
        raise InvalidRequest(f"budget {spec!r}: PERIOD is one of {', '.join(PERIODS)}")
    if window not in WINDOWS:
        raise InvalidRequest(f"budget {spec!r}: WINDOW is one of {', '.join(WINDOWS)}")
    parse_usd(amount, f"budget {spec}")
    return parse_budgets([{"period": period, "window": window, "limit_usd": amount}])[0]


def parse_budget_specs(specs: list[str]) -> tuple[Budget, ...]:
    """The CLI's repeated --budget, each PERIOD[:WINDOW]=USD: at most one per period and window,
    as parse_budgets holds the API to (one spec at a time, a second one slipped through)."""
    budgets: dict[tuple[str, str], Budget] = {}
    for spec in specs:
        budget = parse_budget_spec(spec)
        if (budget.period, budget.window) in budgets:
            raise InvalidRequest(f"budget {spec!r}: a {budget.label} budget is already given")
        budgets[budget.period, budget.window] = budget
    return tuple(budgets.values())


def parse_limit(value: Any, param: str) -> int | None:
    """A per-minute limit from a client: a positive integer, or null for the tier default."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidRequest(f"'{param}' must be a positive integer or null.", param=param)
    if value > MAX_LIMIT:
        raise InvalidRequest(f"'{param}' is too large (at most {MAX_LIMIT}).", param=param)
    return value
