"""Strict settings from one YAML file plus env vars for secrets.

The built-in defaults (`defaults/faregate.yaml`) hold the provider list and the
curated catalog; a user file is merged over them (maps merge by key, anything
else is replaced). Unknown keys and bad values fail at start-up with a message
naming the key and what was expected.
"""

from __future__ import annotations

import os
from decimal import Decimal
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import msgspec
import yaml

from faregate.errors import ConfigError

CONFIG_ENV = "FAREGATE_CONFIG"


class _Strict(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    pass


class ServerSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = 4000
    max_body_bytes: int = 8 * 1024 * 1024
    # Whole-request deadline, across every attempt.
    request_timeout_s: float = 600.0
    # Print the SDK snippet and a new key on start (make run).
    announce: bool = True


class StoreSettings(_Strict):
    # Directory for the embedded SQLite store.
    path: str = ".faregate"


class RecordsSettings(_Strict):
    batch_size: int = 512
    flush_interval_s: float = 0.25
    # Records waiting beyond this are dropped with a warning instead of growing memory without bound.
    max_pending: int = 200_000


class AuthSettings(_Strict):
    master_key_env: str = "FAREGATE_MASTER_KEY"
    # How long a verified key stays in the in-process cache before the store is asked again.
    key_cache_ttl_s: float = 5.0


class ProviderSettings(_Strict):
    base_url: str
    protocol: Literal["openai"] = "openai"
    # Env var holding the API key. A provider whose key is not set is disabled.
    api_key_env: str | None = None
    # None: enabled iff its key is set (or it needs none). True/False force it.
    enabled: bool | None = None
    headers: dict[str, str] = {}
    connect_timeout_s: float = 10.0
    # Time allowed for the response head (first byte) and for the whole call.
    first_byte_timeout_s: float = 60.0
    total_timeout_s: float = 600.0
    max_connections: int = 1000


class OfferSettings(_Strict):
    provider: str
    # Model name the provider expects; defaults to the catalog name.
    upstream: str | None = None
    # USD per 1M tokens; default to the model's list price.
    input: Decimal | None = None
    output: Decimal | None = None
    dedicated: bool = False


class ModelSettings(_Strict):
    input: Decimal | None = None
    output: Decimal | None = None
    aliases: list[str] = []
    context_window: int = 128_000
    max_output_tokens: int | None = None
    modalities: list[Literal["text", "image", "audio", "video"]] = msgspec.field(default_factory=lambda: ["text"])
    tags: list[str] = []
    offers: list[OfferSettings] = []


class CatalogSettings(_Strict):
    # Load the broad catalog (thousands of models) from the bundled genai-prices snapshot.
    broad: bool = True


class SimSettings(_Strict):
    # auto: start the simulator when no provider key is set.
    mode: Literal["auto", "on", "off"] = "auto"
    # False: use a simulator already running at host:port instead of starting one.
    launch: bool = True
    host: str = "127.0.0.1"
    port: int = 4001
    # Optional YAML script (latency, answers, faults per model); see faregate.sim.script.
    script: str | None = None
    # Timeouts the gateway applies to the simulated provider.
    first_byte_timeout_s: float = 60.0
    total_timeout_s: float = 600.0


class Settings(_Strict):
    server: ServerSettings = msgspec.field(default_factory=ServerSettings)
    store: StoreSettings = msgspec.field(default_factory=StoreSettings)
    records: RecordsSettings = msgspec.field(default_factory=RecordsSettings)
    auth: AuthSettings = msgspec.field(default_factory=AuthSettings)
    catalog: CatalogSettings = msgspec.field(default_factory=CatalogSettings)
    sim: SimSettings = msgspec.field(default_factory=SimSettings)
    baseline_model: str = "gpt-4o"
    providers: dict[str, ProviderSettings] = {}
    models: dict[str, ModelSettings] = {}

    def master_key(self) -> str | None:
        return os.environ.get(self.auth.master_key_env) or None


def _merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _merge(base[key], value) if key in base else value
        return merged
    return override


def _read_yaml(text: str, origin: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{origin}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def default_data() -> dict[str, Any]:
    text = resources.files("faregate").joinpath("defaults/faregate.yaml").read_text(encoding="utf-8")
    return _read_yaml(text, "built-in defaults")


def config_path(explicit: str | None = None) -> Path | None:
    """The config file in use: --config, then $FAREGATE_CONFIG, then ./faregate.yaml if present."""
    if explicit:
        return Path(explicit)
    if os.environ.get(CONFIG_ENV):
        return Path(os.environ[CONFIG_ENV])
    local = Path("faregate.yaml")
    return local if local.exists() else None


def load_settings(path: str | Path | None = None, *, overrides: dict[str, Any] | None = None) -> Settings:
    data = default_data()
    origin = "built-in defaults"
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file {p} does not exist")
        data = _merge(data, _read_yaml(p.read_text(encoding="utf-8"), str(p)))
        origin = str(p)
    if overrides:
        data = _merge(data, overrides)
    return parse_settings(data, origin)


def parse_settings(data: dict[str, Any], origin: str = "config") -> Settings:
    try:
        settings = msgspec.convert(data, Settings)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{origin}: {_explain(exc)}") from exc
    _check_references(settings, origin)
    return settings


def _explain(exc: msgspec.ValidationError) -> str:
    text = str(exc)
    # msgspec says "at `$.models[...]`"; say which key is meant in the file's own terms.
    return text.replace("`$.", "`").replace("`$`", "the top level")


def _check_references(settings: Settings, origin: str) -> None:
    seen_names: dict[str, str] = {}
    for name, model in settings.models.items():
        if model.context_window <= 0:
            raise ConfigError(f"{origin}: models.{name}.context_window must be positive")
        for alias in [name, *model.aliases]:
            if alias in seen_names and seen_names[alias] != name:
                raise ConfigError(
                    f"{origin}: models.{name}: name or alias {alias!r} is already used by {seen_names[alias]!r}"
                )
            seen_names[alias] = name
        for i, offer in enumerate(model.offers):
            if offer.provider not in settings.providers and offer.provider != "sim":
                raise ConfigError(
                    f"{origin}: models.{name}.offers[{i}].provider: unknown provider {offer.provider!r}; "
                    f"expected one of {sorted(settings.providers)}"
                )
            if (offer.input is None or offer.output is None) and (model.input is None or model.output is None):
                raise ConfigError(
                    f"{origin}: models.{name}.offers[{i}]: no price; set input/output on the offer or the model"
                )
        for field_name in ("input", "output"):
            value = getattr(model, field_name)
            if value is not None and value < 0:
                raise ConfigError(f"{origin}: models.{name}.{field_name} must not be negative")
    for name, provider in settings.providers.items():
        if not provider.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"{origin}: providers.{name}.base_url must start with http:// or https://")
    if settings.server.max_body_bytes <= 0:
        raise ConfigError(f"{origin}: server.max_body_bytes must be positive")
