"""The model catalog: models, their provider offers and prices, aliases, capabilities.

Built from the settings alone: which providers exist and are enabled is configuration (the
provider simulator too, once it stands in for the providers: providers/registry.py).
"""

from __future__ import annotations

import difflib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from decimal import Decimal

from faregate.catalog.peak_hours import PeakPrice, parse_hours
from faregate.config import ModelSettings, OfferSettings, PeakSettings, ProviderSettings, Settings
from faregate.errors import ConfigError
from faregate.types import Price
from faregate.wire.anthropic import MESSAGES_EFFORT
from faregate.wire.anthropic_upstream import DEFAULT_MAX_TOKENS
from faregate.wire.model_params import effort_list, refused_params

# Suggestions remembered per unknown name. Finding them scans every name in the catalog with
# difflib (~25 ms over the ~1,800 names of the broad catalog, on the event loop), and a client
# with a wrong model name sends the same one again and again.
MAX_SUGGESTIONS_KEPT = 1024


@dataclass(slots=True, frozen=True)
class Offer:
    """One provider selling one model at one price."""

    model: str
    provider: str
    upstream_model: str
    price: Price
    available: bool
    dedicated: bool = False
    # The max_tokens its upstream is sent when the client names none (at most the model's max
    # output): the Messages wire must send one (wire/anthropic_upstream.py); None, the OpenAI
    # wire's way, sends none and leaves the upstream the rest of the context window.
    output_default: int | None = None
    # False where its provider maps the client's effort to the model itself
    # (ProviderSettings.maps_efforts): the model's efforts are not fitted to (wire/model_params.py).
    fits_efforts: bool = True
    # Its provider's wire (ProviderSettings.protocol): only the Messages wire carries a Messages
    # client's efforts the chat wire lacks ("max"; wire/anthropic.py).
    protocol: str = "openai"
    # A dearer price its provider bills at some hours of the day (catalog/peak_hours.py).
    peak: PeakPrice | None = None
    # Priced for a request that came in its peak hours (`at`): its record says so.
    at_peak: bool = False

    @property
    def key(self) -> str:
        return f"{self.provider}/{self.model}"

    def at(self, unix_seconds: float) -> Offer:
        """The offer as a request that came at `unix_seconds` is held and billed: at its peak price
        in its peak hours. The price is then decided (no peak left), whatever the time it is read."""
        if self.peak is None:
            return self
        at_peak = self.peak.in_force(unix_seconds)
        return replace(self, price=self.peak.price if at_peak else self.price, peak=None, at_peak=at_peak)

    @property
    def prices(self) -> tuple[Price, ...]:
        """Every price it may bill, whatever the hour."""
        return (self.price,) if self.peak is None else (self.price, self.peak.price)


@dataclass(slots=True)
class Model:
    name: str
    list_price: Price
    context_window: int
    max_output_tokens: int | None
    modalities: frozenset[str]
    aliases: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    offers: list[Offer] = field(default_factory=list)
    curated: bool = True
    # "chat", or "embedding": served by POST /v1/embeddings only (config.ModelSettings.kind).
    kind: str = "chat"
    # The internal body's settings the model refuses, left out of what it is sent
    # (wire/model_params.py; ModelSettings.reasoning and .sampling): empty for most models.
    refuses: frozenset[str] = frozenset()
    # The reasoning efforts it takes, least to most (ModelSettings.efforts; wire/model_params.py):
    # None, for most models, sends the client's as given.
    efforts: tuple[str, ...] | None = None
    # Its own first-byte and stream idle timeouts (ModelSettings'), over its provider's; None, for
    # most models, keeps the provider's.
    first_byte_timeout_s: float | None = None
    stream_idle_timeout_s: float | None = None

    @property
    def embeds(self) -> bool:
        return self.kind == "embedding"

    @property
    def refused_params(self) -> list[str]:
        """The settings it is sent without, by the chat wire's names (GET /v1/models, faregate
        models): the Messages wire's own effort is reasoning_effort there."""
        return sorted(self.refuses - {MESSAGES_EFFORT})

    @property
    def available(self) -> bool:
        return any(o.available for o in self.offers)

    def available_offers(self) -> list[Offer]:
        return [o for o in self.offers if o.available]

    def offer_of(self, provider: str) -> Offer | None:
        return next((o for o in self.offers if o.provider == provider), None)

    def missing_modalities(self, required: Iterable[str]) -> list[str]:
        if not required:
            return []
        return sorted(m for m in required if m not in self.modalities)


def provider_enabled(settings: ProviderSettings) -> bool:
    if settings.enabled is not None:
        return settings.enabled
    if settings.api_key_env is None:
        return True
    key = os.environ.get(settings.api_key_env) or ""
    return bool(key) and key.startswith(settings.api_key_prefix or "")


def how_to_enable(name: str, settings: ProviderSettings | None) -> str:
    """What turns on the provider `name`, which is off: said in a model's 503, where a newcomer
    who asked for a model whose provider has no key would otherwise not know which to set."""
    if settings is None:
        return f"{name}: no such provider is configured"
    if settings.enabled is False:
        return f"{name}: providers.{name}.enabled is false; set it to true"
    if settings.api_key_env and os.environ.get(settings.api_key_env) and settings.api_key_prefix:
        return f"{name}: ${settings.api_key_env} must start with {settings.api_key_prefix}"
    if settings.api_key_env:
        return f"{name}: set ${settings.api_key_env} in the gateway's environment and restart"
    return f"{name}: set providers.{name}.enabled: true"


class Catalog:
    """Lookup by name or alias (case-insensitive), with suggestions for near misses."""

    def __init__(self, models: Iterable[Model], enable_hints: Mapping[str, str] | None = None) -> None:
        self.models: dict[str, Model] = {}
        # Per provider that is off, what turns it on (how_to_enable).
        self.enable_hints: Mapping[str, str] = enable_hints or {}
        self._index: dict[str, Model] = {}
        self._suggested: dict[tuple[str, int], list[str]] = {}
        for model in models:
            self.add(model)

    def add(self, model: Model) -> None:
        self._suggested.clear()
        self.models[model.name] = model
        for name in (model.name, *model.aliases):
            self._index.setdefault(name.lower(), model)

    def get(self, name: str) -> Model | None:
        return self._index.get(name.lower())

    def canonical_name(self, name: str) -> str | None:
        """The model's own name for a name or alias in any case (None: not in the catalog)."""
        model = self.get(name)
        return None if model is None else model.name

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._index

    def __len__(self) -> int:
        return len(self.models)

    def suggest(self, name: str, limit: int = 3) -> list[str]:
        lowered = name.lower()
        found = self._suggested.get((lowered, limit))
        if found is None:
            if len(self._suggested) >= MAX_SUGGESTIONS_KEPT:
                del self._suggested[next(iter(self._suggested))]  # the oldest
            found = self._suggested[(lowered, limit)] = self._suggest(lowered, limit)
        return list(found)

    def _suggest(self, lowered: str, limit: int) -> list[str]:
        matches = difflib.get_close_matches(lowered, list(self._index), n=limit * 3, cutoff=0.5)
        # Prefer curated and available models among equally close names.
        ranked = sorted(
            {self._index[m].name: self._index[m] for m in matches}.values(),
            key=lambda m: (not m.curated, not m.available),
        )
        if not ranked:
            # A substring hit ("flash" -> deepseek-v4-flash) helps when edit distance does not.
            ranked = [m for key, m in self._index.items() if lowered in key][:limit]
        return [m.name for m in ranked[:limit]]

    def all(self) -> list[Model]:
        return list(self.models.values())


def _price_of(model_settings: ModelSettings | OfferSettings | PeakSettings, embedding: bool) -> Price | None:
    output = model_settings.output
    if output is None and embedding:
        output = Decimal(0)  # an embedding model is priced per input token only
    if model_settings.input is None or output is None:
        return None
    return Price(
        Decimal(model_settings.input),
        Decimal(output),
        model_settings.cache_read,
        model_settings.cache_write,
        model_settings.cache_write_1h,
    )


_CACHE_FIELDS = ("cache_read", "cache_write", "cache_write_1h")


def _offer_price(
    offer: OfferSettings | PeakSettings, list_price: Price | None, embedding: bool
) -> Price | None:
    """The offer's price: its own input and output where it sets them, each else the model's list
    price (a seller may differ on one side only); and each cache price the offer sets, else the
    model's. A cache price is a discount or premium on
    the input price (Anthropic: reads 0.1x, writes 1.25x; OpenAI: reads 0.5x), so at an input price
    of the offer's own, a model's cache price is scaled by the offer's input to the model's: the
    model's 0.3 read at 3 becomes 0.1 at an offer's 1, rather than a read at 30% of the input (or
    a write at 3.75x it). Where the seller's cache discount differs, the offer sets its own."""
    if list_price is None:
        return _price_of(offer, embedding)  # priced by its offers alone: each sets both
    base = replace(
        list_price,
        input=list_price.input if offer.input is None else Decimal(offer.input),
        output=list_price.output if offer.output is None else Decimal(offer.output),
    )
    inherited: list[Decimal | None] = []
    for name in _CACHE_FIELDS:
        theirs: Decimal | None = getattr(list_price, name)
        mine: Decimal | None = getattr(offer, name)
        if mine is None and theirs is not None and base.input != list_price.input:
            # No ratio to keep from a free model's price: the offer's input price then.
            theirs = theirs * base.input / list_price.input if list_price.input else None
        inherited.append(theirs if mine is None else mine)
    read, write, write_1h = inherited
    return replace(base, cache_read=read, cache_write=write, cache_write_1h=write_1h)


def output_default(provider: ProviderSettings | None) -> int | None:
    """`Offer.output_default` for an offer of `provider`."""
    return DEFAULT_MAX_TOKENS if provider is not None and provider.protocol == "anthropic" else None


def fits_efforts(provider: ProviderSettings | None) -> bool:
    """`Offer.fits_efforts` for an offer of `provider`."""
    return provider is None or not provider.maps_efforts


def protocol(provider: ProviderSettings | None) -> str:
    """`Offer.protocol` for an offer of `provider`."""
    return "openai" if provider is None else provider.protocol


def build_catalog(settings: Settings) -> Catalog:
    """Curated models from the config, the broad catalog for declared providers, and an offer at
    list price on every curated model from each enabled provider that serves every model."""
    enabled = {name: provider_enabled(p) for name, p in settings.providers.items()}
    everywhere = [n for n, p in settings.providers.items() if p.serves_every_model and enabled[n]]
    models: list[Model] = []
    for name, ms in settings.models.items():
        embedding = ms.kind == "embedding"
        list_price = _price_of(ms, embedding)
        offers: list[Offer] = []
        for offer in ms.offers:
            price = _offer_price(offer, list_price, embedding)
            if price is None:
                raise ConfigError(f"models.{name}: offer from {offer.provider} has no price")
            peak = None
            if offer.peak is not None:
                # What the peak does not set is the offer's own, as what an offer does not set
                # is the model's.
                peak_price = _offer_price(offer.peak, price, embedding)
                assert peak_price is not None  # priced over the offer's price, which is set
                peak = PeakPrice(peak_price, parse_hours(offer.peak.hours), tuple(offer.peak.hours))
            offers.append(
                Offer(
                    model=name,
                    provider=offer.provider,
                    upstream_model=offer.upstream or name,
                    price=price,
                    available=enabled.get(offer.provider, False),
                    dedicated=offer.dedicated,
                    output_default=output_default(settings.providers.get(offer.provider)),
                    fits_efforts=fits_efforts(settings.providers.get(offer.provider)),
                    protocol=protocol(settings.providers.get(offer.provider)),
                    peak=peak,
                )
            )
        if list_price is None:
            list_price = min((o.price for o in offers), key=lambda p: p.input + p.output, default=None)
        if list_price is None:
            raise ConfigError(f"models.{name}: no price (set input/output or give an offer with a price)")
        if ms.efforts is not None and ms.reasoning is False:
            raise ConfigError(f"models.{name}: efforts for a model with reasoning: false, which is sent none")
        for provider in everywhere:
            if not any(o.provider == provider for o in offers):
                default = output_default(settings.providers[provider])
                offers.insert(
                    0,
                    Offer(
                        name,
                        provider,
                        name,
                        list_price,
                        True,
                        output_default=default,
                        fits_efforts=fits_efforts(settings.providers[provider]),
                        protocol=settings.providers[provider].protocol,
                    ),
                )
        models.append(
            Model(
                name=name,
                list_price=list_price,
                context_window=ms.context_window,
                max_output_tokens=ms.max_output_tokens,
                modalities=frozenset(ms.modalities),
                aliases=tuple(ms.aliases),
                tags=tuple(ms.tags),
                offers=offers,
                kind=ms.kind,
                refuses=refused_params(ms.reasoning, ms.sampling),
                efforts=None if ms.efforts is None else effort_list(ms.efforts),
                first_byte_timeout_s=ms.first_byte_timeout_s,
                stream_idle_timeout_s=ms.stream_idle_timeout_s,
            )
        )
    hints = {name: how_to_enable(name, p) for name, p in settings.providers.items() if not enabled[name]}
    catalog = Catalog(models, hints)
    if settings.catalog.broad:
        from faregate.catalog.broad import add_broad_models

        add_broad_models(catalog, settings, enabled)
    return catalog
