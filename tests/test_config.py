import re
from decimal import Decimal
from pathlib import Path

import pytest

from faregate.config import Settings, in_config_file, load_settings, parse_settings
from faregate.errors import ConfigError
from faregate.server.app import build_gateway


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "faregate.yaml"
    path.write_text(text)
    return path


def test_defaults_load_without_a_file() -> None:
    settings = load_settings()
    assert settings.server.port == 4000
    assert settings.models["deepseek-ai/DeepSeek-V4-Flash"].input == Decimal("0.27")
    assert settings.models["deepseek-ai/DeepSeek-V4-Flash"].output == Decimal("1.10")
    assert "siliconflow" in settings.providers


def test_prices_are_exact_decimals() -> None:
    settings = load_settings()
    for model in settings.models.values():
        assert isinstance(model.input, Decimal)
        assert isinstance(model.output, Decimal)
    assert settings.models["gpt-4o"].output == Decimal("10.00")


def test_unknown_top_level_key_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown field `servr`"):
        load_settings(write(tmp_path, "servr: {port: 1}\n"))


def test_unknown_nested_key_names_its_path(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"prot.*server"):
        load_settings(write(tmp_path, "server: {prot: 1}\n"))


@pytest.mark.parametrize(
    ("text", "hint"),
    [
        ("servr: {port: 1}\n", "unknown field `servr`; did you mean `server`?"),
        ("server: {prot: 1}\n", "unknown field `prot` - at `server`; did you mean `port`?"),
        # A key written as its value, kept out of the message (a secret here).
        (
            "providers: {vllm: {base_url: 'http://x', api_key: sk-secret}}\n",
            "unknown field `api_key` - at `providers.vllm`; did you mean `api_key_env`?",
        ),
        (
            "models: {Qwen/Qwen3.5-9B: {input: 1, output: 1, offers: [{provder: vllm}]}}\n",
            "at `models.Qwen/Qwen3.5-9B.offers[0]`; did you mean `provider`?",
        ),
        (
            "routes: {smart: {chain: [{modle: gpt-4o}]}}\n",
            "at `routes.smart.chain[0]`; did you mean `model`?",
        ),
        (
            "routes: {smart: {cascade: {steps: [a, b], judge: {check: [empty]}}}}\n",
            "at `routes.smart.cascade.judge`; did you mean `checks`?",
        ),
        (
            "accounts: {standard: {rpm: 60}}\n",
            "at `accounts.standard`; expected one of requests_per_minute, tokens_per_minute",
        ),
    ],
)
def test_an_unknown_key_is_refused_with_the_key_meant(tmp_path: Path, text: str, hint: str) -> None:
    with pytest.raises(ConfigError) as raised:
        load_settings(write(tmp_path, text))
    message = str(raised.value)
    assert message.endswith(hint)
    assert "\n" not in message and "sk-secret" not in message


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        ("server:\n  host: 127.0.0.1\n  prot: 4001\n", 3, "unknown field `prot` - at `server`"),
        ("# mine\nmodel:\n  m: {input: 1}\n", 2, "unknown field `model`; did you mean `models`?"),
        ("server:\n\n  port: lots\n", 3, "Expected `int`, got `str` - at `server.port`"),
        (  # a model's name with a dot, an offer in a list, a key in a flow mapping
            "models:\n  gpt-4.1:\n    input: 2\n    output: 8\n    offers:\n"
            "      - {provider: openai}\n      - {provider: openrouter, inptu: 3}\n",
            7,
            "unknown field `inptu` - at `models.gpt-4.1.offers[1]`; did you mean `input`?",
        ),
        (  # a model's own timeout (over its provider's), out of bounds
            "models:\n  o3:\n    input: 2\n    output: 8\n    first_byte_timeout_s: 0\n",
            5,
            "Expected `float` > 0.0 - at `models.o3.first_byte_timeout_s`",
        ),
    ],
)
def test_a_bad_key_or_value_names_its_line_in_the_file(
    tmp_path: Path, text: str, line: int, problem: str
) -> None:
    """A typo in a long faregate.yaml is found by its line, not by searching the file for it."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_settings(path)
    assert str(raised.value).startswith(f"{path}, line {line}: ")
    assert problem in str(raised.value)


@pytest.mark.parametrize(
    ("text", "line", "problem"),
    [
        (  # an offer naming a provider there is none of
            "server:\n  port: 4001\nmodels:\n  mine:\n    input: 1\n    output: 2\n"
            "    offers:\n      - provider: openai\n      - provider: nope\n",
            9,
            "models.mine.offers[1].provider: unknown provider 'nope'",
        ),
        (  # a name taken twice (case aside); a model's name may hold a colon
            "models:\n  a:8b: {input: 1, output: 2}\n  b:\n    input: 1\n    output: 2\n"
            "    aliases: [A:8B]\n",
            3,
            "models.b: name or alias 'A:8B' is already used by 'a:8b'",
        ),
        ("routes:\n  smart:\n    chain: [gpt-4o]\n    retries: -1\n", 4, "routes.smart.retries must not"),
    ],
)
def test_a_setting_refused_after_reading_names_its_line_in_the_file(
    tmp_path: Path, text: str, line: int, problem: str
) -> None:
    """The checks across settings (references, duplicates, bounds) find the line as a bad key does."""
    path = write(tmp_path, text)
    with pytest.raises(ConfigError) as raised:
        load_settings(path)
    assert str(raised.value).startswith(f"{path}, line {line}: {problem}")


async def test_a_route_to_an_unknown_model_names_its_line_in_the_file(tmp_path: Path) -> None:
    """A route's models are checked once the gateway is built (the whole catalog known); the
    error then names the setting alone, and serve adds the file and its line (in_config_file)."""
    path = write(
        tmp_path,
        f"store: {{path: {str(tmp_path / 'store')!r}}}\ncatalog: {{broad: false}}\n"
        "routes:\n  smart:\n    chain: [gpt-4o, gpt-nonexist]\n",
    )
    with pytest.raises(ConfigError) as raised:
        await build_gateway(load_settings(path))
    message = in_config_file(str(raised.value), path)
    assert message.startswith(f"{path}, line 4: routes.smart: unknown model or route 'gpt-nonexist'")
    # A problem about no setting of the file is left as it is.
    assert in_config_file("the database is newer", path) == "the database is newer"


def test_bad_value_says_what_was_expected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"Expected `int`, got `str` - at `server.port`"):
        load_settings(write(tmp_path, "server: {port: lots}\n"))


def test_user_file_merges_over_defaults(tmp_path: Path) -> None:
    settings = load_settings(
        write(tmp_path, "server: {port: 5000}\nmodels: {my-model: {input: 1, output: 2}}\n")
    )
    assert settings.server.port == 5000
    assert settings.server.host == "127.0.0.1"
    assert "my-model" in settings.models
    assert "gpt-4o" in settings.models


def test_offer_with_unknown_provider_is_rejected() -> None:
    with pytest.raises(ConfigError, match="unknown provider 'nope'"):
        parse_settings({"models": {"m": {"input": 1, "output": 1, "offers": [{"provider": "nope"}]}}})


def test_alias_that_differs_only_in_case_is_rejected() -> None:
    """The catalog matches names case-insensitively: "Premium" as the cheap model's alias would
    serve (and bill) requests for "premium" with the cheap model."""
    data = {
        "models": {
            "cheap": {"input": "0.1", "output": "0.2", "aliases": ["Premium"]},
            "premium": {"input": 10, "output": 40},
        }
    }
    with pytest.raises(ConfigError, match="'premium' is already used by 'cheap'"):
        parse_settings(data)
    same_model = {"models": {"gpt-4o": {"input": 1, "output": 1, "aliases": ["GPT-4o"]}}}
    assert parse_settings(same_model).models["gpt-4o"].aliases == ["GPT-4o"]


def test_a_route_named_like_a_model_but_for_case_is_rejected() -> None:
    """A route "GPT-4o" took the requests spelling gpt-4o that way (routes are matched exactly,
    models case-insensitively): refused at load, as an alias differing only in case is."""
    models = {"gpt-4o": {"input": 1, "output": 1, "aliases": ["four-o"]}, "cheap": {"input": 1, "output": 1}}
    for route in ("GPT-4o", "Four-O", "gpt-4o"):
        with pytest.raises(ConfigError, match=f"routes.{route}: the name is already model 'gpt-4o'"):
            parse_settings({"models": models, "routes": {route: {"chain": ["cheap"]}}})


def test_duplicate_alias_is_rejected() -> None:
    data = {
        "models": {
            "a": {"input": 1, "output": 1, "aliases": ["x"]},
            "b": {"input": 1, "output": 1, "aliases": ["x"]},
        }
    }
    with pytest.raises(ConfigError, match="alias 'x' is already used"):
        parse_settings(data)


def test_invalid_yaml_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(write(tmp_path, "server: [unclosed\n"))


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings(tmp_path / "absent.yaml")


def test_duplicate_keys_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="duplicate key 'sim'"):
        load_settings(write(tmp_path, "sim: {port: 1}\nsim: {port: 2}\n"))


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    # A config saved in Latin-1 (or a binary file passed by mistake): one line, not a traceback.
    path = tmp_path / "latin1.yaml"
    path.write_bytes("server: {host: caf\xe9}\n".encode("latin-1"))
    with pytest.raises(ConfigError, match=r"latin1\.yaml: not UTF-8 text"):
        load_settings(path)


@pytest.mark.parametrize("value", ["-1", ".nan", ".inf"])
@pytest.mark.parametrize("where", ["model", "offer"])
def test_a_price_must_be_a_finite_non_negative_number(tmp_path: Path, value: str, where: str) -> None:
    # A negative offer price made its provider the "cheapest" and a cost below zero; a NaN price
    # crashed the check with decimal.InvalidOperation instead of naming the key.
    model = f"input: {value}, output: 1" if where == "model" else "input: 1, output: 1"
    offer = f"input: {value}, output: 1" if where == "offer" else "output: 1"
    path = write(tmp_path, f"models: {{m: {{{model}, offers: [{{provider: openai, {offer}}}]}}}}\n")
    key = "models.m.input" if where == "model" else "models.m.offers[0].input"
    problem = "must not be negative" if value == "-1" else "must be a finite number"
    with pytest.raises(ConfigError, match=re.escape(f"{key} {problem}")):
        load_settings(path)


@pytest.mark.parametrize(
    ("section", "problem"),
    [("{flush_interval_s: 0}", "Expected `float` > 0.0"), ("{batch_size: 0}", "Expected `int` >= 1")],
)
def test_the_record_writer_needs_a_positive_interval_and_batch(
    tmp_path: Path, section: str, problem: str
) -> None:
    # flush_interval_s 0 made the writer's loop run back to back without ever yielding (the
    # gateway's event loop froze at start); batch_size 0 made a flush take 0 records forever.
    key = section.strip("{}").split(":")[0]
    with pytest.raises(ConfigError, match=re.escape(f"{problem} - at `records.{key}`")):
        load_settings(write(tmp_path, f"records: {section}\n"))


def test_the_sim_script_is_relative_to_the_config_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As trained router files are: `faregate serve -c conf/faregate.yaml` from elsewhere must start
    # the simulator with conf/faults.yaml, not look for faults.yaml in the working directory.
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "faults.yaml").write_text("defaults: {faults: {rate_limit: 0.5}}\n")
    (conf / "faregate.yaml").write_text("sim: {script: faults.yaml}\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    settings = load_settings(Path("../conf/faregate.yaml"))
    assert settings.sim.script is not None
    assert Path(settings.sim.script) == (conf / "faults.yaml").resolve()
    # An absolute path stays as given.
    absolute = tmp_path / "abs.yaml"
    (conf / "faregate.yaml").write_text(f"sim: {{script: {str(absolute)!r}}}\n")
    assert load_settings(conf / "faregate.yaml").sim.script == str(absolute)


@pytest.mark.parametrize(
    ("section", "key", "problem"),
    [
        ("cache: {max_entries: -1}", "cache.max_entries", "Expected `int` >= 1"),
        ("cache: {ttl_s: 0}", "cache.ttl_s", "Expected `float` > 0.0"),
        ("cache: {semantic: {max_entries: 0}}", "cache.semantic.max_entries", "Expected `int` >= 1"),
        ("cache: {semantic: {max_turns: 0}}", "cache.semantic.max_turns", "Expected `int` >= 1"),
    ],
)
def test_cache_sizes_and_ttl_must_be_positive(tmp_path: Path, section: str, key: str, problem: str) -> None:
    # A negative size made every cache write fail (logged, so the cache silently never stored).
    with pytest.raises(ConfigError, match=re.escape(f"{problem} - at `{key}`")):
        load_settings(write(tmp_path, section + "\n"))


@pytest.mark.parametrize("url", ["localhost:6379", "127.0.0.1:6379/0", "http://cache.internal:6379", ""])
def test_a_cache_redis_url_without_a_redis_scheme_is_one_line_at_load(url: str) -> None:
    """redis-py refuses such a URL when the cache is built: start-up ended in its traceback, where
    store.redis_url's same mistake is one line naming the setting."""
    for good in ("redis://127.0.0.1:6379/0", "rediss://cache.internal:6380", "unix:///run/redis.sock"):
        assert parse_settings({"cache": {"redis_url": good}}).cache.redis_url == good
    with pytest.raises(
        ConfigError, match=re.escape("cache.redis_url must start with redis://, rediss:// or unix://")
    ):
        parse_settings({"cache": {"redis_url": url}})


PROVIDER = "providers: {p: {base_url: 'http://x', "


@pytest.mark.parametrize(
    ("section", "key", "problem"),
    [
        ("server: {request_timeout_s: 0}", "server.request_timeout_s", "Expected `float` > 0.0"),
        ("records: {max_pending: 0}", "records.max_pending", "Expected `int` >= 1"),
        ("auth: {key_cache_ttl_s: -1}", "auth.key_cache_ttl_s", "Expected `float` >= 0.0"),
        (PROVIDER + "connect_timeout_s: 0}}", "providers.p.connect_timeout_s", "> 0.0"),
        (PROVIDER + "first_byte_timeout_s: -5}}", "providers.p.first_byte_timeout_s", "> 0.0"),
        (PROVIDER + "total_timeout_s: 0}}", "providers.p.total_timeout_s", "> 0.0"),
        (PROVIDER + "stream_idle_timeout_s: 0}}", "providers.p.stream_idle_timeout_s", "> 0.0"),
        (PROVIDER + "max_connections: 0}}", "providers.p.max_connections", ">= 1"),
        ("models: {m: {input: 1, output: 1, max_output_tokens: 0}}", "models.m.max_output_tokens", ">= 1"),
        (
            "models: {m: {input: 1, output: 1, first_byte_timeout_s: 0}}",
            "models.m.first_byte_timeout_s",
            "> 0.0",
        ),
        (
            "models: {m: {input: 1, output: 1, stream_idle_timeout_s: -5}}",
            "models.m.stream_idle_timeout_s",
            "> 0.0",
        ),
        ("routing: {retries: -1}", "routing.retries", "Expected `int` >= 0"),
        ("routing: {backoff_base_s: -0.1}", "routing.backoff_base_s", ">= 0.0"),
        ("routing: {backoff_max_s: -1}", "routing.backoff_max_s", ">= 0.0"),
        ("routing: {max_retry_after_s: -1}", "routing.max_retry_after_s", ">= 0.0"),
        ("routing: {latency_window: 0}", "routing.latency_window", ">= 1"),
        ("routing: {breaker: {consecutive_failures: 0}}", "routing.breaker.consecutive_failures", ">= 1"),
        ("routing: {breaker: {error_rate: 0}}", "routing.breaker.error_rate", "> 0.0"),
        ("routing: {breaker: {error_rate: 1.5}}", "routing.breaker.error_rate", "<= 1.0"),
        ("routing: {breaker: {window: 0}}", "routing.breaker.window", ">= 1"),
        ("routing: {breaker: {min_calls: -1}}", "routing.breaker.min_calls", ">= 1"),
        ("routing: {breaker: {cooldown_s: -30}}", "routing.breaker.cooldown_s", ">= 0.0"),
        ("cache: {tier_ttl_s: {economy: 0}}", "cache.tier_ttl_s.economy", "> 0.0"),
        ("cache: {route_ttl_s: {chat: -1}}", "cache.route_ttl_s.chat", "> 0.0"),
        ("cache: {max_ttl_s: 0}", "cache.max_ttl_s", "> 0.0"),
        # A cosine similarity: above 1 the cache never serves, at or below 0 it serves anything.
        ("cache: {semantic: {threshold: 1.5}}", "cache.semantic.threshold", "<= 1.0"),
        ("cache: {semantic: {threshold: 0}}", "cache.semantic.threshold", "> 0.0"),
        ("sim: {first_byte_timeout_s: 0}", "sim.first_byte_timeout_s", "> 0.0"),
        ("sim: {total_timeout_s: -1}", "sim.total_timeout_s", "> 0.0"),
        ("sim: {stream_idle_timeout_s: -1}", "sim.stream_idle_timeout_s", "> 0.0"),
        ("alerts: {webhook: {url: 'http://x', timeout_s: 0}}", "alerts.webhook.timeout_s", "> 0.0"),
    ],
)
def test_numeric_settings_out_of_bounds_are_a_config_error(
    tmp_path: Path, section: str, key: str, problem: str
) -> None:
    # A zero or negative timeout, retry count, pool or window: one line naming the setting, not a
    # gateway that fails every call, never retries a negative count, or divides by an empty window.
    with pytest.raises(ConfigError, match=re.escape(f"{problem} - at `{key}`")) as raised:
        load_settings(write(tmp_path, section + "\n"))
    assert "\n" not in str(raised.value)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        (
            "providers: {vllm: {base_url: 'http://x', api_key_env: sk-proj-Zx81secret}}\n",
            "providers.vllm.api_key_env: must be the name of the environment variable that holds the key",
        ),
        (
            "providers: {openai: {api_key_env: '${OPENAI_KEY}'}}\n",
            r"providers.openai.api_key_env: write the variable's name alone \(OPENAI_KEY\)",
        ),
        (
            "auth: {master_key_env: $FG_MASTER}\n",
            r"auth.master_key_env: write the variable's name alone \(FG_MASTER\)",
        ),
        ("auth: {master_key_env: 'fg-Zx81secret'}\n", "auth.master_key_env: must be the name"),
    ],
)
def test_a_key_env_setting_must_name_a_variable(tmp_path: Path, text: str, problem: str) -> None:
    """The key itself pasted there (or a ${NAME} reference, which is not expanded) named a variable
    nobody sets: the provider stayed off, or the master key unset, without a word."""
    with pytest.raises(ConfigError, match=problem) as raised:
        load_settings(write(tmp_path, text))
    assert "Zx81secret" not in str(raised.value)


def test_a_key_env_setting_may_name_any_variable(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, "providers: {vllm: {api_key_env: _My_Key2}}\n"))
    assert settings.providers["vllm"].api_key_env == "_My_Key2"


def ttl_settings(tmp_path: Path, route_ttl_s: dict[str, float]) -> Settings:
    return load_settings(
        overrides={
            "store": {"path": str(tmp_path / "store")},
            "catalog": {"broad": False},
            "routes": {"smart": {"chain": ["deepseek-v4-flash", "gpt-4o-mini"]}},
            "cache": {"route_ttl_s": route_ttl_s},
        }
    )


async def test_a_route_ttl_for_a_model_alias_applies_to_its_requests(tmp_path: Path) -> None:
    """The TTL is looked up by the name a request resolves to (a route, or the model's canonical
    name): one keyed by the alias was never found, and those entries lived cache.ttl_s."""
    settings = ttl_settings(tmp_path, {"smart": 60, "deepseek-v4-flash": 120, "GPT-4o-mini": 30})
    gateway = await build_gateway(settings)
    try:
        assert settings.cache.route_ttl_s == {
            "smart": 60,
            "deepseek-ai/DeepSeek-V4-Flash": 120,
            "gpt-4o-mini": 30,
        }
    finally:
        await gateway.close()


@pytest.mark.parametrize(
    ("ttls", "problem"),
    [
        ({"smrt": 60}, r"cache.route_ttl_s.smrt: unknown route or model 'smrt'; did you mean smart"),
        (
            {"deepseek-v4-flash": 60, "deepseek-ai/DeepSeek-V4-Flash": 90},
            "'deepseek-ai/DeepSeek-V4-Flash' is already given another TTL",
        ),
    ],
)
async def test_a_route_ttl_for_no_route_or_model_stops_start_up(
    tmp_path: Path, ttls: dict[str, float], problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        await build_gateway(ttl_settings(tmp_path, ttls))


async def test_a_misspelt_baseline_model_says_which_model_was_meant(tmp_path: Path) -> None:
    """Every figure of savings is priced on baseline_model: a typo stopped start-up with no hint
    of the name meant, unlike an unknown model in a route."""
    settings = load_settings(
        overrides={
            "store": {"path": str(tmp_path / "store")},
            "catalog": {"broad": False},
            "baseline_model": "gpt-4oo",
        }
    )
    with pytest.raises(ConfigError, match=r"^baseline_model: unknown model 'gpt-4oo'; did you mean gpt-4o\b"):
        await build_gateway(settings)


def test_a_provider_named_like_another_but_for_case_is_refused(tmp_path: Path) -> None:
    """Provider names are matched exactly: `OpenAI:` meant to point the built-in openai elsewhere
    was a second provider, and openai's offers still went to api.openai.com."""
    text = "providers: {OpenAI: {base_url: 'http://127.0.0.1:9/v1', api_key_env: OPENAI_API_KEY}}\n"
    with pytest.raises(ConfigError, match=r"providers.OpenAI: the name is provider 'openai'"):
        load_settings(write(tmp_path, text))
