"""Monthly cost projections: requests x tokens x price, in exact Decimal.

Spreadsheets get this wrong by a factor of a thousand (9.6M tokens at $2.50 per
1M is $24, not $24,000), so every figure here is a Decimal computed from the
per-1M price with no float and no rounding; rounding is left to display.

A cache hit is a whole answer served by the gateway's own cache, so it costs
nothing upstream: only the misses are billed. Costs are expected values, so a
hit rate may bill a fractional number of requests.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation

from faregate.types import Price, Usage

ONE = Decimal(1)
ZERO = Decimal(0)


@dataclass(slots=True, frozen=True)
class Workload:
    """A month of traffic: how many requests and how many tokens each."""

    requests_per_month: int
    input_tokens: int
    output_tokens: int
    # Share of requests answered from the gateway cache (0 to 1).
    cache_hit_rate: Decimal = ZERO

    def __post_init__(self) -> None:
        for name in ("requests_per_month", "input_tokens", "output_tokens"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative")
        if not ZERO <= self.cache_hit_rate <= ONE:
            raise ValueError(f"cache hit rate must be between 0 and 1, got {self.cache_hit_rate}")

    @property
    def billed_requests(self) -> Decimal:
        return Decimal(self.requests_per_month) * (ONE - self.cache_hit_rate)


@dataclass(slots=True, frozen=True)
class Line:
    """The projected monthly cost of one model (or one provider's offer, or a split)."""

    label: str
    monthly: Decimal
    # Cost of one request that reaches the model; None for a split (it mixes prices).
    per_request: Decimal | None
    price: Price | None = None

    def saving_against(self, baseline: Decimal) -> Saving:
        return Saving.between(baseline, self.monthly)


@dataclass(slots=True, frozen=True)
class Saving:
    amount: Decimal
    # Share of the baseline cost saved; None when the baseline costs nothing.
    share: Decimal | None

    @classmethod
    def between(cls, baseline: Decimal, cost: Decimal) -> Saving:
        amount = baseline - cost
        return cls(amount, amount / baseline if baseline else None)


def request_cost(price: Price, input_tokens: int, output_tokens: int) -> Decimal:
    return price.cost(Usage(prompt_tokens=input_tokens, completion_tokens=output_tokens))


def monthly_cost(price: Price, workload: Workload) -> Decimal:
    return workload.billed_requests * request_cost(price, workload.input_tokens, workload.output_tokens)


def project(label: str, price: Price, workload: Workload) -> Line:
    per_request = request_cost(price, workload.input_tokens, workload.output_tokens)
    return Line(label, workload.billed_requests * per_request, per_request, price)


def split_cost(prices: Mapping[str, Price], shares: Mapping[str, Decimal], workload: Workload) -> Decimal:
    """Monthly cost when each model gets its share of the requests; shares must sum to exactly 1."""
    check_shares(shares)
    missing = sorted(set(shares) - set(prices))
    if missing:
        raise ValueError(f"no price for {', '.join(missing)}")
    return sum((share * monthly_cost(prices[model], workload) for model, share in shares.items()), ZERO)


def check_shares(shares: Mapping[str, Decimal]) -> None:
    if not shares:
        raise ValueError("a split needs at least one model")
    for model, share in shares.items():
        if not ZERO <= share <= ONE:
            raise ValueError(f"share of {model} must be between 0 and 1, got {share}")
    total = sum(shares.values(), ZERO)
    if total != ONE:
        # Exact: 0.7 + 0.3 is 1 in Decimal; a split that leaves requests unpriced is a typo.
        raise ValueError(f"split shares must sum to 1, they sum to {total}")


def parse_split(text: str) -> dict[str, Decimal]:
    """'m1=0.7,m2=0.3' (or percentages, 'm1=70%,m2=30%') -> {model: share}."""
    shares: dict[str, Decimal] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        model, sep, value = part.rpartition("=")
        model, value = model.strip(), value.strip()
        if not sep or not model or not value:
            raise ValueError(f"expected MODEL=SHARE in the split, got {part.strip()!r}")
        if model in shares:
            raise ValueError(f"{model} appears twice in the split")
        shares[model] = parse_share(value)
    check_shares(shares)
    return shares


def parse_share(text: str) -> Decimal:
    """'0.3' or '30%' -> Decimal('0.3'), exactly (never through float)."""
    text = text.strip()
    percent = text.endswith("%")
    try:
        value = Decimal(text.removesuffix("%").strip())
    except InvalidOperation:
        raise ValueError(f"not a number: {text!r}") from None
    if not value.is_finite():
        raise ValueError(f"not a finite number: {text!r}")
    return value / 100 if percent else value


def exact_usd(amount: Decimal) -> str:
    """Every digit, at least cents: '$88.00', '$0.001686155', '-$1,234.5678' (`--exact`)."""
    exponent = amount.normalize().as_tuple().exponent
    places = max(2, -exponent if isinstance(exponent, int) else 0)
    sign = "-" if amount < 0 else ""
    return f"{sign}${abs(amount):,.{places}f}"


# Tables round money for reading: cents from a dollar up, else this many significant digits. The
# figures themselves stay exact (JSON, CSV, the ledger); only their display is rounded.
DISPLAY_DIGITS = 4
CENT = Decimal("0.01")


def display_usd(amount: Decimal) -> str:
    """Dollars to read in a table: '$5.68', '$1,234.50', '$0.1313', '$0.00082', '$0.00000436', '$0.00'."""
    sign = "-" if amount < 0 else ""
    size = abs(amount)
    if size >= 1 or size == 0:
        return f"{sign}${size.quantize(CENT):,.2f}"
    places = max(2, DISPLAY_DIGITS - 1 - size.adjusted())
    rounded = size.quantize(Decimal(1).scaleb(-places))
    if rounded >= 1:  # 0.99999 rounds up to a dollar
        return f"{sign}$1.00"
    whole, _, decimals = f"{rounded:.{places}f}".partition(".")
    return f"{sign}${whole}.{decimals.rstrip('0').ljust(2, '0')}"


MoneyText = Callable[[Decimal], str]


def format_share(share: Decimal) -> str:
    """Decimal share -> '30%', '12.5%', exactly."""
    percent = (share * 100).normalize()
    exponent = percent.as_tuple().exponent
    places = max(0, -exponent if isinstance(exponent, int) else 0)
    return f"{percent:.{places}f}%"
