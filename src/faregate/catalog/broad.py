"""The broad catalog: thousands of models and prices from the bundled `genai-prices`
snapshot. Read from the package's own data, never fetched: start-up stays offline.
Curated models and local overrides always win over it.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from faregate.catalog.models import Catalog, Model, Offer
from faregate.config import Settings
from faregate.types import Price

# genai-prices provider id -> our provider name, for vendors we declare by default.
PROVIDER_IDS = {
    "openai": "openai",
    "deepseek": "deepseek",
    "openrouter": "openrouter",
    "zhipuai": "zhipu",
    "anthropic": "anthropic",
}


# genai-prices' prompt-cache prices, in the order of Price's cache fields.
_CACHE_PRICE_FIELDS = ("cache_read_mtok", "cache_write_mtok", "cache_write_1h_mtok")


def _decimal(model_price: Any, name: str) -> Decimal | None:
    value = getattr(model_price, name, None)
    return value if isinstance(value, Decimal) else None  # tiered prices are left out


def _unconditional_price(info: Any) -> Price | None:
    prices = info.prices
    candidates = prices if isinstance(prices, list) else [None]
    for conditional in candidates:
        model_price = prices if conditional is None else conditional.prices
        if conditional is not None and conditional.constraint is not None:
            continue
        inp = getattr(model_price, "input_mtok", None)
        out = getattr(model_price, "output_mtok", None)
        if isinstance(inp, Decimal) and isinstance(out, Decimal):
            return Price(inp, out, *(_decimal(model_price, f) for f in _CACHE_PRICE_FIELDS))
        return None
    return None


def add_broad_models(catalog: Catalog, settings: Settings, enabled: dict[str, bool]) -> int:
    """Add every priced model of every genai-prices provider; offers only for providers we declare."""
    from genai_prices.data_snapshot import get_snapshot

    added = 0
    for provider in get_snapshot().providers:
        ours = PROVIDER_IDS.get(provider.id)
        if ours is not None and ours not in settings.providers:
            ours = None
        for info in provider.models:
            if getattr(info, "deprecated", None):
                continue
            price = _unconditional_price(info)
            if price is None:
                continue
            name = info.id if ours is not None else f"{provider.id}/{info.id}"
            existing = catalog.get(name)
            if existing is not None:
                # A curated model keeps its own offers; an offer from another declared
                # provider is added only if that provider is not already offering it.
                if (
                    ours is not None
                    and not existing.curated
                    and all(o.provider != ours for o in existing.offers)
                ):
                    existing.offers.append(
                        Offer(existing.name, ours, info.id, price, enabled.get(ours, False))
                    )
                continue
            offers = [Offer(name, ours, info.id, price, enabled.get(ours, False))] if ours else []
            catalog.add(
                Model(
                    name=name,
                    list_price=price,
                    context_window=int(info.context_window or 0) or 128_000,
                    max_output_tokens=None,
                    modalities=frozenset({"text"}),
                    offers=offers,
                    curated=False,
                )
            )
            added += 1
    return added
