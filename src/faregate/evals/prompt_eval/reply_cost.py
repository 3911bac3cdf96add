"""What one gateway reply cost, read the way every eval request reads it (answers and judge calls)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

COST_HEADER = "x-faregate-cost-usd"


def reply_cost(header: str | None, usage: Any) -> Decimal:
    """The gateway's exact cost header; usage.cost (a float) only when the header is missing.

    The header is exact decimal text; usage.cost is a JSON number, so it is read through str()
    to keep the digits the gateway wrote rather than the float's binary expansion."""
    try:
        if header is not None:
            return Decimal(header)
        extra = getattr(usage, "model_extra", None) or {}
        if "cost" in extra:
            return Decimal(str(extra["cost"]))
    except InvalidOperation:
        pass
    return Decimal(0)


def usd_text(amount: Decimal) -> str:
    """Positional decimal text for answers.jsonl ("0.00000082", never "8.2E-7"): exact and readable."""
    return format(amount, "f")
