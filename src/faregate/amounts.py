"""Amounts of money as people write them: the one reading of a USD amount given as text (an admin
API field, the x-faregate-max-cost-usd header, a CLI argument).

Python's Decimal reads more than that: "1_000", "1e3", "NaN", "Infinity", another script's digits
("５"). Nobody means an amount of money so, and a typo read as one ("1_0.5" is 10.5) would set
someone's credits or cap. Text is digits with at most one decimal point, and a sign; blanks
around it are dropped (a header value, a pasted argument). A JSON number is a number whatever its
notation (Python writes 0.00001 as 1e-05), so only text is held to this.
"""

from __future__ import annotations

import re
from decimal import Decimal

_PLAIN = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)")


def plain_amount(text: str) -> Decimal | None:
    """`text` as a Decimal if it is a plain decimal amount (blanks around it aside), else None."""
    stripped = text.strip()
    return Decimal(stripped) if _PLAIN.fullmatch(stripped) else None
