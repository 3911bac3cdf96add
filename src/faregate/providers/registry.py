"""One provider object per enabled provider, all on one shared upstream connection pool.

This is the only module that looks at a provider's protocol; everything else asks
the registry for a Provider by name.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from faregate.catalog.models import SIM_PROVIDER, provider_enabled
from faregate.config import ProviderSettings, Settings
from faregate.errors import ConfigError
from faregate.providers.anthropic import AnthropicProvider
from faregate.providers.base import Provider
from faregate.providers.http import ConnectionPool, make_upstream_pool
from faregate.providers.openai_compat import OpenAICompatibleProvider

ProviderFactory = Callable[[str, ProviderSettings, ConnectionPool], Provider]

# protocol -> implementation. A new wire protocol is one module and one line here.
PROTOCOLS: dict[str, ProviderFactory] = {"openai": OpenAICompatibleProvider, "anthropic": AnthropicProvider}


class ProviderRegistry:
    """Builds the enabled providers (and `sim` when a simulator URL is given) on `pool`.

    The pool is injected so tests swap the transport, not the code; it is closed by
    `close()` only if the registry made it (see `create`).
    """

    def __init__(
        self,
        settings: Settings,
        pool: ConnectionPool,
        *,
        sim_base_url: str | None = None,
        owns_pool: bool = False,
    ) -> None:
        self.pool = pool
        self._owns_pool = owns_pool
        self._providers: dict[str, Provider] = {
            name: _build(name, provider_settings, pool)
            for name, provider_settings in active_providers(settings, sim_base_url).items()
        }

    @classmethod
    def create(cls, settings: Settings, *, sim_base_url: str | None = None) -> ProviderRegistry:
        """A registry owning a pool sized from the providers' settings."""
        pool = make_upstream_pool(settings)
        return cls(settings, pool, sim_base_url=sim_base_url, owns_pool=True)

    def get(self, name: str) -> Provider:
        try:
            return self._providers[name]
        except KeyError:
            raise KeyError(
                f"no enabled provider named {name!r}; enabled: {sorted(self._providers)}"
            ) from None

    def __contains__(self, name: object) -> bool:
        return name in self._providers

    def names(self) -> list[str]:
        return list(self._providers)

    async def close(self) -> None:
        for provider in self._providers.values():
            await provider.close()
        if self._owns_pool:
            await self.pool.close()


def active_providers(settings: Settings, sim_base_url: str | None = None) -> dict[str, ProviderSettings]:
    """The providers to build: the enabled ones, plus `sim` at `sim_base_url` when given
    (as in build_catalog, a simulator URL means the simulator is active)."""
    active = {name: p for name, p in settings.providers.items() if provider_enabled(p)}
    if sim_base_url is not None:
        configured = settings.providers.get(SIM_PROVIDER)
        active[SIM_PROVIDER] = (
            ProviderSettings(base_url=sim_base_url)
            if configured is None
            else msgspec.structs.replace(configured, base_url=sim_base_url)
        )
    return active


def _build(name: str, settings: ProviderSettings, pool: ConnectionPool) -> Provider:
    factory = PROTOCOLS.get(settings.protocol)
    if factory is None:  # config validation makes this unreachable; kept for a clear message
        raise ValueError(f"providers.{name}: unsupported protocol {settings.protocol!r}")
    try:
        return factory(name, settings, pool)
    except ValueError as exc:  # a base URL or header the wire cannot carry: say which provider
        raise ConfigError(f"providers.{name}: {exc}") from exc
