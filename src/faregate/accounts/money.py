"""Money on the ledger: whole nano-dollars (1e-9 USD) as integers.

Balances, reservations and ledger rows are integers so that every store can add and compare
them atomically and exactly (SQLite and Redis have no decimal type). Prices with up to three
decimals per 1M tokens give whole nano-dollars per token, so real costs are exact; a finer
price leaves a sub-nano remainder that `charge_nano` rounds half-even, the same way request
records store cost (store.rows.to_nanousd), so the ledger's spend equals the records' spend.
Reservations round up instead: a hold must never be smaller than the worst case it guards.
"""

from __future__ import annotations

from decimal import ROUND_CEILING, Decimal

from faregate.amounts import plain_amount
from faregate.errors import InvalidRequest
from faregate.store.rows import from_nanousd, to_nanousd

NANO = Decimal("1e-9")
# A balance past this could not be compared exactly by Redis scripts (Lua numbers are doubles).
MAX_NANO = 2**53 - 1
MAX_USD = Decimal(MAX_NANO).scaleb(-9)


def charge_nano(cost: Decimal) -> int:
    """What a request is charged: its exact cost, rounded half-even to a nano-dollar."""
    return to_nanousd(cost)


def hold_nano(worst: Decimal) -> int:
    """What a request reserves: its worst case rounded up, so the hold always covers it."""
    return int(worst.scaleb(9).to_integral_value(rounding=ROUND_CEILING))


def usd(nano: int) -> Decimal:
    return from_nanousd(nano)


def usd_text(nano: int) -> str:
    """Plain decimal text without exponent or trailing zeros: "0.00082", "12", "-0.5"."""
    text = format(from_nanousd(nano), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def parse_usd(value: object, param: str, *, allow_zero: bool = False) -> int:
    """A USD amount from a client (string or number) as nano-dollars; refuses what cannot be
    stored exactly rather than rounding someone's money."""
    if isinstance(value, bool) or not isinstance(value, str | int | float | Decimal):
        raise InvalidRequest(f"'{param}' must be a decimal amount in USD, e.g. \"10.50\".", param=param)
    if isinstance(value, str):
        read = plain_amount(value)
        if read is None:
            raise InvalidRequest(f"'{param}' is not a decimal amount: {value!r}.", param=param)
        amount = read
    else:
        # str() first: a float's repr is the short decimal the client wrote (0.1, not 0.1000000000000000055).
        amount = Decimal(str(value))
    if not amount.is_finite():
        raise InvalidRequest(f"'{param}' must be a finite amount.", param=param)
    if amount < 0 or (amount == 0 and not allow_zero):
        raise InvalidRequest(f"'{param}' must be {'at least' if allow_zero else 'more than'} 0.", param=param)
    # Compared before any arithmetic: scaling under the decimal context would raise Overflow on a
    # huge exponent, round past its 28 digits, and flush a tiny amount to 0.
    if amount > MAX_USD:
        raise InvalidRequest(f"'{param}' is too large (at most {usd_text(MAX_NANO)}).", param=param)
    exact = amount.quantize(NANO)  # at most 16 digits now: within the context, so exact or not
    if exact != amount:
        raise InvalidRequest(f"'{param}' has more than 9 decimal places.", param=param)
    return int(exact.scaleb(9))
