"""One provider object per enabled provider, all on one shared upstream connection pool.

This is the only module that looks at a provider's protocol, and the only one that knows the
provider simulator by name: when the simulator stands in for the providers, `with_simulator`
makes it the provider `sim` in the settings (enabled at its address, selling every curated model),
and from there on it is configuration like any vendor. Everything else asks the registry for a
provider by name: `entry(name)` is one lookup giving the provider and the timeouts its calls get.
The one upstream connection pool is sized here too, from the enabled providers' settings.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import msgspec

from faregate.catalog.models import provider_enabled
from faregate.config import ProviderSettings, Settings
from faregate.errors import ConfigError
from faregate.providers.anthropic import AnthropicProvider
from faregate.providers.base import Provider
from faregate.providers.http import ConnectionPool
from faregate.providers.openai_compat import OpenAICompatibleProvider
from faregate.providers.openai_responses import OpenAIResponsesProvider

ProviderFactory = Callable[[str, ProviderSettings, ConnectionPool], Provider]

# protocol -> implementation. A new wire protocol is one module and one line here.
PROTOCOLS: dict[str, ProviderFactory] = {"openai": OpenAICompatibleProvider, "anthropic": AnthropicProvider}
# protocol -> implementation for a provider that also speaks the Responses API (`responses: true`).
RESPONSES_PROTOCOLS: dict[str, ProviderFactory] = {"openai": OpenAIResponsesProvider}
# The provider name the simulator takes when it stands in for the providers.
SIMULATOR = "sim"


@dataclass(slots=True, frozen=True)
class ProviderEntry:
    """A provider, the timeouts its calls get (seconds to the response head, in all, and
    between a stream's reads) and the body field it reads the output limit from."""

    provider: Provider
    first_byte_timeout_s: float
    total_timeout_s: float
    output_limit_field: str = "max_tokens"
    stream_idle_timeout_s: float = 60.0

    @classmethod
    def of(cls, provider: Provider, settings: ProviderSettings) -> ProviderEntry:
        return cls(
            provider,
            settings.first_byte_timeout_s,
            settings.total_timeout_s,
            settings.output_limit_field,
            settings.stream_idle_timeout_s,
        )


class ProviderRegistry:
    """The enabled providers by name, on `pool`.

    The pool is injected so tests swap the transport, not the code; it is closed by `close()`
    only if the registry made it (see `create`).
    """

    def __init__(
        self,
        entries: Mapping[str, ProviderEntry],
        pool: ConnectionPool | None = None,
        *,
        owns_pool: bool = False,
        simulator_url: str | None = None,
    ) -> None:
        self._entries = dict(entries)
        self.pool = pool
        self._owns_pool = owns_pool
        # Where the simulator answers, when it is one of the providers.
        self.simulator_url = simulator_url

    @classmethod
    def build(cls, settings: Settings, pool: ConnectionPool, *, owns_pool: bool = False) -> ProviderRegistry:
        """Every enabled provider of `settings`, built for its protocol on `pool`."""
        active = {name: p for name, p in settings.providers.items() if provider_enabled(p)}
        entries = {name: ProviderEntry.of(_build(name, p, pool), p) for name, p in active.items()}
        sim = active.get(SIMULATOR)
        return cls(entries, pool, owns_pool=owns_pool, simulator_url=sim.base_url if sim else None)

    @classmethod
    def create(cls, settings: Settings) -> ProviderRegistry:
        """A registry owning a pool sized from the providers' settings."""
        return cls.build(settings, make_upstream_pool(settings), owns_pool=True)

    @classmethod
    def of(
        cls, providers: Mapping[str, Provider], settings: ProviderSettings | None = None
    ) -> ProviderRegistry:
        """A registry of ready-made providers, all with the timeouts (and output limit field) of
        `settings` (default: a provider's defaults): scripted providers in tests."""
        timeouts = settings or ProviderSettings(base_url="http://127.0.0.1")
        return cls({name: ProviderEntry.of(p, timeouts) for name, p in providers.items()})

    def entry(self, name: str) -> ProviderEntry:
        try:
            return self._entries[name]
        except KeyError:
            raise KeyError(f"no enabled provider named {name!r}; enabled: {sorted(self._entries)}") from None

    def get(self, name: str) -> Provider:
        return self.entry(name).provider

    def embeds(self, name: str) -> bool:
        """Is `name` enabled, with a wire that has embeddings (OpenAI's has, Messages has not)?"""
        entry = self._entries.get(name)
        return entry is not None and getattr(entry.provider, "embeds", False) is True

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def names(self) -> list[str]:
        return list(self._entries)

    async def close(self) -> None:
        for entry in self._entries.values():
            await entry.provider.close()
        if self._owns_pool and self.pool is not None:
            await self.pool.close()


def simulator_active(settings: Settings) -> bool:
    """Does the simulator stand in for the providers? With `sim.mode` on; with auto, when no
    provider is enabled (no provider key is set)."""
    if settings.sim.mode != "auto":
        return settings.sim.mode == "on"
    return not any(provider_enabled(p) for p in settings.providers.values())


def with_simulator(settings: Settings, base_url: str | None = None) -> Settings:
    """`settings` with the simulator as the provider `sim`: enabled at `base_url` (default: the
    `sim` section's host and port), selling every curated model at list price, with the `sim`
    section's timeouts; over `providers.sim` as declared (the built-in defaults declare it off)."""
    sim = settings.sim
    url = base_url or f"http://{sim.host}:{sim.port}/v1"
    declared = settings.providers.get(SIMULATOR) or ProviderSettings(base_url=url)
    provider = msgspec.structs.replace(
        declared,
        base_url=url,
        enabled=True,
        serves_every_model=True,
        first_byte_timeout_s=sim.first_byte_timeout_s,
        total_timeout_s=sim.total_timeout_s,
        stream_idle_timeout_s=sim.stream_idle_timeout_s,
    )
    return msgspec.structs.replace(settings, providers={**settings.providers, SIMULATOR: provider})


def _build(name: str, settings: ProviderSettings, pool: ConnectionPool) -> Provider:
    if settings.responses and settings.protocol not in RESPONSES_PROTOCOLS:
        raise ConfigError(
            f"providers.{name}: `responses: true` needs protocol openai, not {settings.protocol!r}"
        )
    factory = (RESPONSES_PROTOCOLS if settings.responses else PROTOCOLS).get(settings.protocol)
    if factory is None:  # config validation makes this unreachable; kept for a clear message
        raise ValueError(f"providers.{name}: unsupported protocol {settings.protocol!r}")
    try:
        return factory(name, settings, pool)
    except ValueError as exc:  # a base URL or header the wire cannot carry: say which provider
        raise ConfigError(f"providers.{name}: {exc}") from exc


def make_upstream_pool(
    settings: Settings | None = None,
    *,
    limit: int | None = None,
    limit_per_host: int | None = None,
    keepalive_timeout_s: float = 30.0,
    ssl_context: ssl.SSLContext | None = None,
) -> ConnectionPool:
    """The pool for upstream calls, sized from `settings` when given (see `pool_limits`);
    explicit arguments win. Connect timeouts are per provider (on each Endpoint)."""
    default_limit, default_per_host, _ = pool_limits(settings)
    return ConnectionPool(
        limit=default_limit if limit is None else limit,
        limit_per_host=default_per_host if limit_per_host is None else limit_per_host,
        keepalive_timeout_s=keepalive_timeout_s,
        ssl_context=ssl_context,
    )


def pool_limits(settings: Settings | None) -> tuple[int, int, float]:
    """(total limit, per-host limit, connect timeout) for the providers `settings` enables.

    One pool serves every provider and each provider is its own host, so the per-host
    cap is the largest provider's `max_connections` and the total is their sum.
    """
    if settings is None:
        return 1000, 0, 10.0
    active = [p for p in settings.providers.values() if provider_enabled(p)]
    if not active:
        return 1000, 0, 10.0
    return (
        sum(p.max_connections for p in active),
        max(p.max_connections for p in active),
        max(p.connect_timeout_s for p in active),
    )
