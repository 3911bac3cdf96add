"""The broad catalog: thousands of models and prices from the bundled `genai-prices`
snapshot. Read from the package's own data, never fetched: start-up stays offline.
Curated models and local overrides always win over it.
"""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, time
from decimal import Decimal
from typing import Any

from faregate.catalog.models import Catalog, Model, Offer, fits_efforts, output_default
from faregate.catalog.peak_hours import PeakPrice
from faregate.config import Settings
from faregate.types import Price
from faregate.wire.model_params import refused_params

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
# Its audio prices, in the order of Price's audio fields.
_AUDIO_PRICE_FIELDS = ("input_audio_mtok", "output_audio_mtok")


def _decimal(model_price: Any, name: str) -> Decimal | None:
    value = getattr(model_price, name, None)
    return value if isinstance(value, Decimal) else None  # tiered prices are left out


def _flat(prices: Any) -> Price | None:
    """One ModelPrice as a Price; None for a tiered one, which one Price cannot bill."""
    inp = getattr(prices, "input_mtok", None)
    out = getattr(prices, "output_mtok", None)
    if isinstance(inp, Decimal) and isinstance(out, Decimal):
        return Price(inp, out, *(_decimal(prices, f) for f in (*_CACHE_PRICE_FIELDS, *_AUDIO_PRICE_FIELDS)))
    return None


def _minute_of_day(moment: time) -> int:
    """A time of day (UTC where it has no zone) as a minute of the UTC day."""
    if moment.tzinfo is not None:
        moment = datetime.combine(date(2000, 1, 1), moment).astimezone(UTC).time()
    return moment.hour * 60 + moment.minute


def _price_in_force(info: Any, today: date) -> tuple[Price, PeakPrice | None] | None:
    """The price in force `today`, and the one it gives way to at some hours of every day (DeepSeek's
    peak hours), or None when there is none we can bill.

    genai-prices lists a model's prices in order and the last one in force wins: an
    unconstrained one, then later ones from a start date (price changes) or at some hours of the
    day. Hours of one price are billed as an offer's peak (catalog/peak_hours.py); hours at more
    than one, as tiered prices, are left out.
    """
    prices = info.prices
    if not isinstance(prices, list):
        flat = _flat(prices)
        return None if flat is None else (flat, None)
    chosen: Any = None
    hours: list[tuple[int, int]] = []
    by_hour: Any = None
    for conditional in prices:
        constraint = conditional.constraint
        start_date = getattr(constraint, "start_date", None)
        start_time, end_time = getattr(constraint, "start_time", None), getattr(constraint, "end_time", None)
        if constraint is None or (isinstance(start_date, date) and start_date <= today):
            chosen, hours, by_hour = (
                conditional.prices,
                [],
                None,
            )  # in force at every hour: wins over all before
        elif isinstance(start_date, date):
            continue  # announced, not in force yet
        elif isinstance(start_time, time) and isinstance(end_time, time):
            if by_hour is not None and conditional.prices != by_hour:
                return None  # more than one price by the hour
            by_hour = conditional.prices
            hours.append((_minute_of_day(start_time), _minute_of_day(end_time)))
        else:
            return None  # a constraint we do not know
    base = None if chosen is None else _flat(chosen)
    if base is None:
        return None
    if by_hour is None:
        return base, None
    peak = _flat(by_hour)
    if peak is None:
        return None
    labels = tuple(f"{a // 60:02}:{a % 60:02}-{b // 60:02}:{b % 60:02}" for a, b in hours)
    return base, PeakPrice(peak, tuple(hours), labels)


# OpenAI's reasoning models (o1, o3, o4-mini, gpt-5...; not the gpt-5 chat models) refuse the
# sampling settings; its older models (gpt-4o, gpt-4.1, gpt-3.5) refuse reasoning_effort.
_OPENAI_REASONING = re.compile(r"^(o\d|gpt-5)(?!.*chat)")
_OPENAI_NOT_REASONING = re.compile(r"^(gpt-4|gpt-3\.5|chatgpt-4o)")


def _openai_refuses(model_id: str) -> frozenset[str]:
    """The settings an OpenAI model of the snapshot refuses, which it does not say: by its name."""
    if _OPENAI_REASONING.match(model_id):
        return refused_params(reasoning=True, sampling=False)
    if _OPENAI_NOT_REASONING.match(model_id):
        return refused_params(reasoning=False, sampling=True)
    return frozenset()


# The efforts OpenAI documents its reasoning models to take (the SDK's ReasoningEffort: the models
# before gpt-5.1 take no "none", gpt-5.1 none to high, gpt-5-pro only "high", "xhigh" the models
# after gpt-5.1-codex-max; o1, o3 and o4-mini low to high; the model pages of gpt-5.2-pro,
# gpt-5.3-codex, gpt-5.4 and its mini and nano, gpt-5.5 and gpt-5.6-sol, "max" included, which
# the gpt-5.6 alias names; the deep-research models "medium" only and gpt-5.1-codex-mini low to
# high, as OpenAI's 400s list them); the others are sent the client's as given (gpt-5.6-terra
# and -luna, whose "max" the sources disagree on; the pro models after gpt-5.2-pro).
_TO_HIGH = ("low", "medium", "high")
_TO_XHIGH = ("none", *_TO_HIGH, "xhigh")
_OPENAI_EFFORTS: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("o1", "o1-pro", "o3", "o3-mini", "o3-pro", "o4-mini"), _TO_HIGH),
    **dict.fromkeys(("gpt-5", "gpt-5-mini", "gpt-5-nano"), ("minimal", *_TO_HIGH)),
    "gpt-5-pro": ("high",),
    "gpt-5.1": ("none", *_TO_HIGH),
    "gpt-5.2": _TO_XHIGH,
    "gpt-5.2-pro": ("medium", "high", "xhigh"),
    "gpt-5.3-codex": (*_TO_HIGH, "xhigh"),
    "gpt-5.1-codex-mini": _TO_HIGH,
    **dict.fromkeys(("gpt-5.4", "gpt-5.4-mini", "gpt-5.4-nano", "gpt-5.5"), _TO_XHIGH),
    **dict.fromkeys(("gpt-5.6", "gpt-5.6-sol"), (*_TO_XHIGH, "max")),
    **dict.fromkeys(("o3-deep-research", "o4-mini-deep-research"), ("medium",)),
}
# A dated snapshot (o3-2025-04-16) takes what its model takes.
_SNAPSHOT_DATE = re.compile(r"-\d{4}-\d{2}-\d{2}$")


def _openai_efforts(model_id: str) -> tuple[str, ...] | None:
    return _OPENAI_EFFORTS.get(_SNAPSHOT_DATE.sub("", model_id))


def _modalities(price: Price) -> frozenset[str]:
    """What the model reads. The snapshot does not say, but a price for audio input does (gpt-audio,
    the realtime and live models): text only refused their input_audio parts. Images and files
    it cannot tell: a model declared in the config says those."""
    return frozenset({"text", "audio"} if price.input_audio is not None else {"text"})


def add_broad_models(catalog: Catalog, settings: Settings, enabled: dict[str, bool]) -> int:
    """Add every priced model of every genai-prices provider; offers only for providers we declare."""
    from genai_prices.data_snapshot import get_snapshot

    added = 0
    today = datetime.now(UTC).date()  # price changes dated later in the snapshot are not in force yet
    for provider in get_snapshot().providers:
        ours = PROVIDER_IDS.get(provider.id)
        if ours is not None and ours not in settings.providers:
            ours = None
        default = output_default(settings.providers[ours]) if ours is not None else None
        fits = fits_efforts(settings.providers[ours]) if ours is not None else True
        wire = settings.providers[ours].protocol if ours is not None else "openai"
        for info in provider.models:
            if getattr(info, "deprecated", None):
                continue
            in_force = _price_in_force(info, today)
            if in_force is None:
                continue
            price, peak = in_force
            name = info.id if ours is not None else f"{provider.id}/{info.id}"
            existing = catalog.get(name)
            # This provider's offer of it (none for a vendor not declared here: known by price only).
            offer = (
                Offer(
                    existing.name if existing is not None else name,
                    ours,
                    info.id,
                    price,
                    enabled.get(ours, False),
                    output_default=default,
                    fits_efforts=fits,
                    protocol=wire,
                    peak=peak,
                )
                if ours is not None
                else None
            )
            if existing is not None:
                # A curated model keeps its own offers; an offer from another declared
                # provider is added only if that provider is not already offering it.
                if (
                    offer is not None
                    and not existing.curated
                    and all(o.provider != ours for o in existing.offers)
                ):
                    existing.offers.append(offer)
                continue
            offers = [offer] if offer is not None else []
            catalog.add(
                Model(
                    name=name,
                    list_price=price,
                    context_window=int(info.context_window or 0) or 128_000,
                    max_output_tokens=None,
                    modalities=_modalities(price),
                    offers=offers,
                    curated=False,
                    refuses=_openai_refuses(info.id) if provider.id == "openai" else frozenset(),
                    efforts=_openai_efforts(info.id) if provider.id == "openai" else None,
                )
            )
            added += 1
    return added
