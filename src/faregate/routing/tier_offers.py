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

from dataclasses import dataclass

from faregate.catalog.models import Model, Offer


@dataclass(slots=True, frozen=True)
class TierOffers:
    """The offers the tier may use (empty: none, and `refusal` says why, for the client)."""

    offers: tuple[Offer, ...]
    refusal: str
    source: list[Offer]
    source_len: int


def tier_offers(model: Model, premium: bool) -> TierOffers:
    offers = model.available_offers()
    refusal = ""
    if not offers:
        providers = ", ".join(sorted({o.provider for o in model.offers})) or "none"
        refusal = f"{model.name} (providers {providers} disabled)"
    else:
        # Dedicated offers (reserved capacity) serve premium keys only.
        offers = [o for o in offers if premium or not o.dedicated]
        if not offers:
            refusal = f"{model.name} (dedicated to premium keys)"
    return TierOffers(tuple(offers), refusal, model.offers, len(model.offers))


class TierOfferMemo:
    def __init__(self) -> None:
        # At most two entries per model of the catalog (its size is fixed by the configuration).
        self._memo: dict[tuple[str, bool], TierOffers] = {}

    def get(self, model: Model, premium: bool) -> TierOffers:
        key = (model.name, premium)
        found = self._memo.get(key)
        if found is None or found.source is not model.offers or found.source_len != len(model.offers):
            found = self._memo[key] = tier_offers(model, premium)
        return found
