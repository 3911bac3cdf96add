"""The offers of a model that a key's tier may use, worked out once instead of on every request.

Which offers a request may try, before health, depends only on the model's offers (their
providers enabled or not, dedicated capacity for premium keys only) and the key's tier, none of
which change while the gateway runs (there is no config reload). So the plan keeps them per
(model, tier) and re-checks per request only what does change: breakers, error rates and
latency (routing/plan.py: Planner._order_offers), and what the request itself decides (its
prompt, modalities, cost cap). An entry remembers the offers list it was made from, and is made
again if the model's offers are replaced or added to (a catalog being built).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from faregate.catalog.models import Model, Offer


@dataclass(slots=True, frozen=True)
class TierOffers:
    """The offers the tier may use (empty: none, and `refusal` says why, for the client)."""

    offers: tuple[Offer, ...]
    refusal: str
    source: list[Offer]
    source_len: int
    # Some offer has a peak price (catalog/peak_hours.py): priced by the hour the request came.
    priced_by_hour: bool = False


def tier_offers(model: Model, premium: bool, enable_hints: Mapping[str, str]) -> TierOffers:
    """`enable_hints`: per provider that is off, what turns it on (Catalog.enable_hints), so the
    refusal says what to do and not only that the model cannot be served."""
    offers = model.available_offers()
    refusal = ""
    if not offers:
        providers = sorted({o.provider for o in model.offers})
        hints = "; ".join(enable_hints.get(p, f"{p}: no such provider is configured") for p in providers)
        refusal = f"{model.name} has no enabled provider ({hints or 'no provider sells it'})"
    else:
        # Dedicated offers (reserved capacity) serve premium keys only.
        offers = [o for o in offers if premium or not o.dedicated]
        if not offers:
            refusal = f"{model.name} is dedicated to premium keys"
    by_hour = any(o.peak is not None for o in offers)
    return TierOffers(tuple(offers), refusal, model.offers, len(model.offers), by_hour)


class TierOfferMemo:
    def __init__(self, enable_hints: Mapping[str, str]) -> None:
        self._enable_hints = enable_hints
        # At most two entries per model of the catalog (its size is fixed by the configuration).
        self._memo: dict[tuple[str, bool], TierOffers] = {}

    def get(self, model: Model, premium: bool) -> TierOffers:
        key = (model.name, premium)
        found = self._memo.get(key)
        if found is None or found.source is not model.offers or found.source_len != len(model.offers):
            found = self._memo[key] = tier_offers(model, premium, self._enable_hints)
        return found
