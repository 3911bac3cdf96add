"""Reading the settings: the built-in defaults (`defaults/faregate.yaml`: the provider list and
the curated catalog) with a user file merged over them (maps merge by key, anything else is
replaced), parsed into config.sections' types, then checked across sections (references between
routes, models and providers; alerts; accounts). Every failure is one ConfigError naming the key.
"""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Callable, Collection
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import yaml

from faregate.config.sections import (
    CACHE_ALERTS,
    CONFIG_ENV,
    QUALITY_ALERTS,
    AlertSettings,
    CacheSettings,
    ModelSettings,
    OfferSettings,
    PeakSettings,
    Settings,
)
from faregate.config.yaml_lines import error_path, line_of, located, setting_line
from faregate.errors import ConfigError
from faregate.extras import check_settings
from faregate.route_config import (
    RouteSettings,
    check_cache_acceptance,
    check_routes,
    resolve_policy_files,
)


def _merge(base: Any, override: Any) -> Any:
    if isinstance(base, dict) and isinstance(override, dict):
        merged = dict(base)
        for key, value in override.items():
            merged[key] = _merge(base[key], value) if key in base else value
        return merged
    return override


class _UniqueKeyLoader(yaml.SafeLoader):
    """A YAML loader that refuses duplicate keys: PyYAML silently keeps the last one, which
    would make half of a config quietly disappear."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)  # type: ignore[no-untyped-call, unused-ignore]
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark
                )
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def read_yaml(text: str, origin: str) -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        # One line: the problem and where (PyYAML's own text quotes the source over several lines).
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        raise ConfigError(f"{origin}: not valid YAML: {problem}{where}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def read_text(path: Path) -> str:
    """A config or script file's text. YAML files are UTF-8; one saved in another encoding (or a
    binary file given by mistake) is a ConfigError, not a UnicodeDecodeError's traceback."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{path}: not UTF-8 text (byte {exc.start + 1} cannot be decoded); save it as UTF-8"
        ) from None


def read_yaml_file(path: Path) -> dict[str, Any]:
    """A YAML file of mappings (a config, a simulator script), read as strictly as the config: every
    failure is one ConfigError line naming the file."""
    return read_yaml(read_text(path), str(path))


def default_data() -> dict[str, Any]:
    text = resources.files("faregate").joinpath("defaults/faregate.yaml").read_text(encoding="utf-8")
    return read_yaml(text, "built-in defaults")


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
    text = None
    if path is not None:
        p = Path(path)
        if not p.exists():
            raise ConfigError(f"config file {p} does not exist")
        text = read_text(p)
        data = _merge(data, read_yaml(text, str(p)))
        origin = str(p)
    if overrides:
        data = _merge(data, overrides)
    settings = parse_settings(data, origin, text=text)
    if path is not None:
        base = Path(path).resolve().parent
        resolve_policy_files(settings, base)
        _resolve_sim_script(settings, base)
    return settings


def in_config_file(problem: str, path: str | Path) -> str:
    """A check made once the gateway is built (a route's unknown model, an alert's, the baseline
    model: they need the whole catalog) names its setting alone; with the config file's line of
    it, as the checks at load do. A problem about no setting in the file is left as it is."""
    try:
        line = setting_line(problem, read_text(Path(path)))
    except (OSError, ConfigError):
        return problem
    return f"{path}, line {line}: {problem}" if line is not None else problem


def _resolve_sim_script(settings: Settings, base: Path) -> None:
    """`sim.script` is named relative to the config file, like the trained router files (and like
    the replay CSVs inside a script, relative to the script): the simulator the gateway starts
    runs in the gateway's working directory, which need not be the config's."""
    script = settings.sim.script
    if script and not Path(script).is_absolute():
        settings.sim.script = str(base / script)


def parse_settings(data: dict[str, Any], origin: str = "config", *, text: str | None = None) -> Settings:
    """`text`: the config file's own YAML, where a bad key or value is found to name its line."""
    try:
        settings = msgspec.convert(data, Settings)
    except msgspec.ValidationError as exc:
        # The hint walks msgspec's own path, whose map entries are `[...]` (a model's name may
        # hold dots).
        hint = known_fields_hint(str(exc))
        problem = _explain(_name_the_entry(data, str(exc)))
        at = error_path(problem)
        line = line_of(text, at) if text is not None and at is not None else None
        where = f"{origin}, line {line}" if line is not None else origin
        raise ConfigError(f"{where}: {problem}{hint}") from exc
    try:
        _check_references(settings, origin)
    except ConfigError as exc:
        # The checks say `{origin}: the.setting...`; the file's line is added as a parse error's is.
        message = str(exc)
        if text is None or not message.startswith(f"{origin}: "):
            raise
        raise ConfigError(located(message.removeprefix(f"{origin}: "), origin, text)) from None
    # A feature turned on whose optional packages are missing: one line naming the extra.
    check_settings(settings, origin)
    return settings


_ENTRY = re.compile(r"`\$\.([\w.]+)\[\.\.\.\]")


def _name_the_entry(data: dict[str, Any], text: str) -> str:
    """msgspec says `providers[...]` for a value inside a map, not which entry: find the entry that
    fails alone (tried one by one, on this error path only) and name it (`providers.openai`)."""
    found = _ENTRY.search(text)
    if found is None:
        return text
    path = found.group(1).split(".")
    entries: Any = data
    for part in path:
        entries = entries.get(part) if isinstance(entries, dict) else None
    if not isinstance(entries, dict):
        return text
    for name, value in entries.items():
        try:
            msgspec.convert(_replaced(data, path, {name: value}), Settings)
        except msgspec.ValidationError as exc:
            if str(exc) == text:
                return text.replace(found.group(0), f"`$.{found.group(1)}.{name}", 1)
    return text


_UNKNOWN_FIELD = re.compile(r"Object contains unknown field `([^`]*)`(?: - at `\$([^`]*)`)?$")
_PATH_STEP = re.compile(r"\.([^.\[]+)|\[[^\]]*\]")


def known_fields_hint(text: str, root: type = Settings) -> str:
    """For an unknown key, the key meant: the closest field of the section it is in (`; did you mean
    `port`?`), else the fields that section takes; a typo otherwise leaves the user guessing.
    `text` is msgspec's error for data converted to `root` (a sim script's parts too)."""
    found = _UNKNOWN_FIELD.search(text)
    if found is None:
        return ""
    fields = _fields_at(msgspec.inspect.type_info(root), found.group(2) or "")
    if not fields:
        return ""
    close = difflib.get_close_matches(found.group(1), fields, n=1, cutoff=0.6)
    if close:
        return f"; did you mean `{close[0]}`?"
    return f"; expected one of {', '.join(fields)}"


def _fields_at(info: msgspec.inspect.Type, path: str) -> list[str]:
    """The field names of the struct at `path` (msgspec's `.a.b[0]`) under `info`; [] if none."""
    for step in _PATH_STEP.finditer(path):
        info = _struct_or_container(info)
        if isinstance(info, msgspec.inspect.StructType) and step.group(1) is not None:
            field = next((f for f in info.fields if f.encode_name == step.group(1)), None)
            if field is None:
                return []
            info = field.type
        elif isinstance(info, msgspec.inspect.DictType):
            info = info.value_type  # a map's entry, named by its key
        elif isinstance(info, msgspec.inspect.ListType):
            info = info.item_type
        else:
            return []
    info = _struct_or_container(info)
    if isinstance(info, msgspec.inspect.StructType):
        return [f.encode_name for f in info.fields]
    return []


def _struct_or_container(info: msgspec.inspect.Type) -> msgspec.inspect.Type:
    """Through Annotated bounds and optional or alternative forms (`str | ChainItem`) to the
    struct, map or list a YAML mapping or list was read as."""
    while True:
        if isinstance(info, msgspec.inspect.Metadata):
            info = info.type
        elif isinstance(info, msgspec.inspect.UnionType):
            kinds = (msgspec.inspect.StructType, msgspec.inspect.DictType, msgspec.inspect.ListType)
            inner = [t for t in (_struct_or_container(t) for t in info.types) if isinstance(t, kinds)]
            if len(inner) != 1:
                return info
            info = inner[0]
        else:
            return info


def _replaced(data: dict[str, Any], path: list[str], value: Any) -> dict[str, Any]:
    return {**data, path[0]: _replaced(data[path[0]], path[1:], value) if path[1:] else value}


def _explain(text: str) -> str:
    # msgspec says "at `$.models[...]`"; say which key is meant in the file's own terms.
    return text.replace("`$.", "`").replace("`$`", "the top level")


def _check_references(settings: Settings, origin: str) -> None:
    seen_names: dict[str, str] = {}
    # The catalog looks names and aliases up case-insensitively (the first one added wins), so
    # "GPT-4o" as another model's alias would silently take over requests for "gpt-4o".
    seen_lowered: dict[str, str] = {}
    for name, model in settings.models.items():
        if model.context_window <= 0:
            raise ConfigError(f"{origin}: models.{name}.context_window must be positive")
        for alias in [name, *model.aliases]:
            owner = seen_lowered.get(alias.lower())
            if owner is not None and owner != name:
                raise ConfigError(
                    f"{origin}: models.{name}: name or alias {alias!r} is already used by {owner!r}"
                    " (names and aliases are matched case-insensitively)"
                )
            seen_names[alias] = name
            seen_lowered[alias.lower()] = name
        embedding = model.kind == "embedding"
        outputs = (model.output, *(o.output for o in model.offers))
        if embedding and any(p is not None and p != 0 for p in outputs):
            raise ConfigError(
                f"{origin}: models.{name}: an embedding model is priced per input token; "
                "leave output unset (it is 0)"
            )
        for i, offer in enumerate(model.offers):
            if offer.provider not in settings.providers:
                raise ConfigError(
                    f"{origin}: models.{name}.offers[{i}].provider: unknown provider {offer.provider!r}; "
                    f"expected one of {sorted(settings.providers)}"
                )
            # An embedding model's price is input only: a missing output price is 0.
            offer_priced = offer.input is not None and (offer.output is not None or embedding)
            if not offer_priced and (model.input is None or (model.output is None and not embedding)):
                raise ConfigError(
                    f"{origin}: models.{name}.offers[{i}]: no price; "
                    "set input/output on the offer or the model"
                )
        _check_prices(model, f"{origin}: models.{name}")
        for i, offer in enumerate(model.offers):
            _check_prices(offer, f"{origin}: models.{name}.offers[{i}]")
            if offer.peak is not None:
                _check_peak(offer.peak, f"{origin}: models.{name}.offers[{i}].peak")
    check_routes(settings, origin, seen_names)
    check_cache_acceptance(settings.cache.semantic, origin)
    check_alerts(settings.alerts, origin, settings.providers)
    _check_tracing(settings.tracing.otlp_endpoint, origin)
    cache_rules = [r.name for r in settings.alerts.rules if r.metric in CACHE_ALERTS]
    if cache_rules and settings.cache.semantic.max_wrong_hit_rate is None:
        raise ConfigError(
            f"{origin}: alert rule {cache_rules[0]} watches the semantic cache's calibration; "
            "set cache.semantic.max_wrong_hit_rate"
        )
    _check_accounts(settings, origin)
    # Else redis-py refused it when the cache was built: start-up ended in its traceback.
    _check_redis_url(settings.cache.redis_url, "cache.redis_url", origin)
    lowered: dict[str, str] = {}
    for name, provider in settings.providers.items():
        # Offers and limits name providers exactly, so this is another provider, not the one meant.
        other = lowered.setdefault(name.lower(), name)
        if other != name:
            raise ConfigError(
                f"{origin}: providers.{name}: the name is provider {other!r} but for case "
                "(provider names are matched exactly: write it as that one's to change it)"
            )
        if not provider.base_url.startswith(("http://", "https://")):
            raise ConfigError(f"{origin}: providers.{name}.base_url must start with http:// or https://")
        _check_env_name(provider.api_key_env, f"{origin}: providers.{name}.api_key_env")
    _check_env_name(settings.auth.master_key_env, f"{origin}: auth.master_key_env")
    if settings.server.max_body_bytes <= 0:
        raise ConfigError(f"{origin}: server.max_body_bytes must be positive")


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _check_env_name(value: str | None, where: str) -> None:
    """`*_env` names the variable that holds a secret. The key pasted there instead (or `${NAME}`,
    which is not expanded) named a variable nobody sets: the provider stayed off without a word,
    and the value, a secret, went into the hint of its upstream errors. Never echoed here."""
    if value is None or _ENV_NAME.fullmatch(value):
        return
    inner = value.removeprefix("${").removesuffix("}").removeprefix("$")
    if _ENV_NAME.fullmatch(inner):
        raise ConfigError(f"{where}: write the variable's name alone ({inner}), not a reference to it")
    raise ConfigError(
        f"{where}: must be the name of the environment variable that holds the key "
        "(e.g. OPENAI_API_KEY), not the key itself"
    )


PRICE_FIELDS = ("input", "output", "cache_read", "cache_write", "cache_write_1h")


def _check_prices(priced: ModelSettings | OfferSettings | PeakSettings, where: str) -> None:
    """Every price given on a model or an offer is a finite, non-negative Decimal. YAML reads
    `.nan` and `.inf` as numbers, and a NaN cannot even be compared (decimal.InvalidOperation); a
    negative offer price would make its provider the cheapest and its cost negative."""
    for field_name in PRICE_FIELDS:
        value = getattr(priced, field_name)
        if value is None:
            continue
        if not value.is_finite():
            raise ConfigError(f"{where}.{field_name} must be a finite number, not {value}")
        if value < 0:
            raise ConfigError(f"{where}.{field_name} must not be negative")


def _check_peak(peak: PeakSettings, where: str) -> None:
    from faregate.catalog.peak_hours import parse_hours  # the catalog imports the config

    _check_prices(peak, where)
    try:
        parse_hours(peak.hours)
    except ValueError as e:
        raise ConfigError(f"{where}.{e}") from None


def check_alerts(alerts: AlertSettings, origin: str, providers: Collection[str]) -> None:
    names: set[str] = set()
    for i, rule in enumerate(alerts.rules):
        where = f"{origin}: alerts.rules[{i}] ({rule.name})"
        if rule.name in names:
            raise ConfigError(f"{where}: the name is already used by another rule")
        names.add(rule.name)
        if (rule.above is None) == (rule.below is None):
            raise ConfigError(f"{where}: give exactly one of above or below")
        if rule.metric == "daily_spend_usd" and rule.per not in (None, "key"):
            raise ConfigError(f"{where}: daily_spend_usd is always per key; per must be key or unset")
        if rule.metric in CACHE_ALERTS:
            if rule.per is not None or rule.route is not None:
                raise ConfigError(f"{where}: {rule.metric} is the semantic cache's; it takes no per or route")
        elif rule.metric in QUALITY_ALERTS:
            if rule.per not in (None, "route"):
                raise ConfigError(f"{where}: {rule.metric} is always per route; per must be route or unset")
            rule.per = "route"
        # Records name the provider as configured: a rule for another name never fires.
        if rule.provider is not None and rule.provider not in providers:
            raise ConfigError(
                f"{where}.provider: unknown provider {rule.provider!r}; expected one of {sorted(providers)}"
            )
    if alerts.webhook is not None and not alerts.webhook.url.startswith(("http://", "https://")):
        raise ConfigError(f"{origin}: alerts.webhook.url must start with http:// or https://")


def _check_tracing(endpoint: str | None, origin: str) -> None:
    """The OTLP/HTTP exporter posts to the URL as given (it adds no /v1/traces): one it cannot
    post to, or a collector's base URL (a 404), would drop every span with an error line each
    batch."""
    if endpoint is None:
        return
    if not endpoint.startswith(("http://", "https://")):
        raise ConfigError(f"{origin}: tracing.otlp_endpoint must start with http:// or https://")
    if urlsplit(endpoint).path in ("", "/"):
        raise ConfigError(
            f"{origin}: tracing.otlp_endpoint must be the traces URL "
            f"({endpoint.rstrip('/')}/v1/traces for a collector there), not its base URL"
        )


def _check_accounts(settings: Settings, origin: str) -> None:
    store = settings.store
    if (store.postgres_url is None) != (store.redis_url is None):
        raise ConfigError(
            f"{origin}: store.postgres_url and store.redis_url go together (several instances share "
            "balances in PostgreSQL and reservations in Redis); set both or neither"
        )
    if store.postgres_url is not None and not store.postgres_url.startswith(("postgresql://", "postgres://")):
        raise ConfigError(f"{origin}: store.postgres_url must start with postgresql://")
    _check_redis_url(store.redis_url, "store.redis_url", origin)
    credits = settings.accounts.new_key_credits_usd
    # Balances are kept in whole nano-dollars: a finer grant could not be stored exactly.
    if not credits.is_finite() or credits < 0 or credits.scaleb(9) != credits.scaleb(9).to_integral_value():
        raise ConfigError(
            f"{origin}: accounts.new_key_credits_usd must be a non-negative whole number of nano-dollars"
        )
    for name in settings.upstream_limits:
        if name not in settings.providers:
            raise ConfigError(
                f"{origin}: upstream_limits.{name}: unknown provider; expected one of "
                f"{sorted(settings.providers)}"
            )


def _check_redis_url(url: str | None, setting: str, origin: str) -> None:
    if url is not None and not url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError(f"{origin}: {setting} must start with redis://, rediss:// or unix://")


def check_alert_subjects(
    alerts: AlertSettings,
    routes: dict[str, RouteSettings],
    canonical: Callable[[str], str | None],
    suggest: Callable[[str], list[str]],
) -> None:
    """Every route and model an alert rule narrows to must be one the gateway records (checked once
    the whole catalog is built, as the routes' names are): a rule for a typo, or for a model's
    alias (records hold its canonical name), never had any traffic and so never fired.
    `canonical` is a catalog name or alias's canonical model name (None: not in the catalog); a
    model's alias or case in a rule is replaced by that name, as a request's is in its record."""
    for i, rule in enumerate(alerts.rules):
        where = f"alerts.rules[{i}] ({rule.name})"
        if rule.route is not None and rule.metric in QUALITY_ALERTS:
            route = routes.get(rule.route)
            if route is None or route.quality is None:
                calibrated = sorted(name for name, r in routes.items() if r.quality is not None)
                raise ConfigError(
                    f"{where}.route: {rule.route!r} is not a calibrated route (routes.NAME.quality); "
                    f"expected one of {calibrated}"
                )
        elif rule.route is not None and rule.route not in routes:
            # A request naming a model directly is recorded under the model's canonical name.
            model = canonical(rule.route)
            if model is None:
                hint = did_you_mean(suggest, rule.route, routes)
                raise ConfigError(f"{where}.route: unknown route or model {rule.route!r}{hint}")
            rule.route = model
        if rule.model is not None:
            model = canonical(rule.model)
            if model is None:
                raise ConfigError(
                    f"{where}.model: unknown model {rule.model!r}{did_you_mean(suggest, rule.model, {})}"
                )
            rule.model = model


def check_route_ttls(
    cache: CacheSettings,
    routes: dict[str, RouteSettings],
    canonical: Callable[[str], str | None],
    suggest: Callable[[str], list[str]],
) -> None:
    """`cache.route_ttl_s` is looked up by the route or canonical model name a request resolves
    to: a key that was a model's alias, another case or a typo was never looked up, and its
    entries lived `ttl_s` without a word. A model's alias or case is read as its canonical name;
    an unknown name stops start-up (checked once the whole catalog is built)."""
    resolved: dict[str, float] = {}
    for name, ttl in cache.route_ttl_s.items():
        target = name if name in routes else canonical(name)
        if target is None:
            hint = did_you_mean(suggest, name, routes)
            raise ConfigError(f"cache.route_ttl_s.{name}: unknown route or model {name!r}{hint}")
        if target in resolved and resolved[target] != ttl:
            raise ConfigError(f"cache.route_ttl_s.{name}: {target!r} is already given another TTL")
        resolved[target] = ttl
    cache.route_ttl_s = resolved


def did_you_mean(suggest: Callable[[str], list[str]], name: str, routes: Collection[str]) -> str:
    """`; did you mean a, b?` for an unknown model or route name: the close route names, then the
    catalog's (`suggest`); "" if none is close."""
    close = difflib.get_close_matches(name, list(routes), n=2) + suggest(name)
    return f"; did you mean {', '.join(close[:3])}?" if close else ""
