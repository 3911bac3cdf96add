"""Prompt-cache prices: exact cost math (types.Price), config and catalog fields, the internal
usage object's cache counts (wire/usage.py), the built-in Claude and Global API offers."""

from __future__ import annotations

from decimal import Decimal

import pytest

from faregate.catalog.models import build_catalog, provider_enabled
from faregate.config import ProviderSettings, load_settings, parse_settings
from faregate.errors import ConfigError
from faregate.types import Price, Usage
from faregate.wire.usage import usage_from, usage_json

SONNET = Price(Decimal(3), Decimal(15), Decimal("0.30"), Decimal("3.75"), Decimal(6))


def test_cache_tokens_are_billed_at_their_own_prices() -> None:
    usage = Usage(10_000, 500, cache_read_tokens=6_000, cache_write_tokens=3_000, cache_write_1h_tokens=1_000)
    # 1,000 plain x 3 + 6,000 x 0.30 + 2,000 x 3.75 + 1,000 x 6 + 500 x 15, per million.
    assert SONNET.cost(usage) == Decimal("0.0258")
    assert SONNET.cost(usage) == (
        Decimal(1000) * 3
        + Decimal(6000) * Decimal("0.30")
        + Decimal(2000) * Decimal("3.75")
        + Decimal(1000) * 6
        + 500 * 15
    ) / Decimal(1_000_000)


def test_without_cache_tokens_the_cost_is_what_it_always_was() -> None:
    assert SONNET.cost(Usage(1_000_000, 1_000_000)) == Decimal(18)
    assert Price(Decimal("0.14"), Decimal("0.28")).cost(Usage(1234, 567)) == Decimal("0.00033152")


def test_missing_cache_prices_fall_back() -> None:
    usage = Usage(1000, 0, cache_read_tokens=400, cache_write_tokens=300, cache_write_1h_tokens=100)
    plain = Price(Decimal(2), Decimal(8))
    assert plain.cost(usage) == plain.cost(Usage(1000, 0))  # no cache prices: all at the input price
    five_minutes_only = Price(Decimal(2), Decimal(8), cache_write=Decimal("2.5"))
    # 300 plain + 400 read at input, 300 writes (one-hour ones too) at the write price.
    assert five_minutes_only.cost(usage) == (Decimal(700) * 2 + Decimal(300) * Decimal("2.5")) / 1_000_000


def test_the_dearest_input_price_is_the_cache_write() -> None:
    assert SONNET.dearest_input == Decimal(6)
    assert Price(Decimal(2), Decimal(8)).dearest_input == Decimal(2)


def test_usage_json_round_trips_the_cache_counts() -> None:
    usage = Usage(100, 7, cache_read_tokens=40, cache_write_tokens=50, cache_write_1h_tokens=20)
    body = usage_json(usage)
    assert body["prompt_tokens_details"] == {
        "cached_tokens": 40,
        "cache_write_tokens": 50,
        "cache_write_tokens_details": {"ttl_5m_tokens": 30, "ttl_1h_tokens": 20},
    }
    assert usage_from({"usage": body}) == usage
    assert usage_json(Usage(3, 4)) == {"prompt_tokens": 3, "completion_tokens": 4, "total_tokens": 7}


def test_cache_counts_that_do_not_fit_the_prompt_are_dropped() -> None:
    body = {"prompt_tokens": 10, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": 11}}
    assert usage_from({"usage": body}) == Usage(10, 1)
    openai_style = {
        "prompt_tokens": 10,
        "completion_tokens": 1,
        "prompt_tokens_details": {"cached_tokens": 4, "audio_tokens": 0},
    }
    assert usage_from({"usage": openai_style}) == Usage(10, 1, cache_read_tokens=4)


def test_cache_prices_come_from_the_config() -> None:
    settings = parse_settings(
        {
            "providers": {
                "p": {"base_url": "http://127.0.0.1:9/v1"},
                "q": {"base_url": "http://127.0.0.1:9/v1"},
            },
            "models": {
                "m": {
                    "input": 3,
                    "output": 15,
                    "cache_read": "0.3",
                    "cache_write": "3.75",
                    "cache_write_1h": 6,
                    "offers": [
                        {"provider": "p"},
                        {"provider": "q", "input": 2, "output": 10, "cache_read": "0.2"},
                    ],
                }
            },
        }
    )
    model = build_catalog(settings).get("m")
    assert model is not None
    assert model.offers[0].price == Price(
        Decimal(3), Decimal(15), Decimal("0.3"), Decimal("3.75"), Decimal(6)
    )
    # An offer with its own price keeps its own cache prices and the model's others, scaled by
    # its input price to the model's (2 of 3): a cache price is a discount or premium on input.
    assert model.offers[1].price == Price(Decimal(2), Decimal(10), Decimal("0.2"), Decimal("2.5"), Decimal(4))
    with pytest.raises(ConfigError, match="cache_write must not be negative"):
        parse_settings({"models": {"m": {"input": 1, "output": 1, "cache_write": -1}}})


def test_an_offer_keeps_the_cache_prices_it_does_not_set() -> None:
    def offer_prices(*offers: dict[str, object]) -> list[Price]:
        settings = parse_settings(
            {
                "providers": {"p": {"base_url": "http://127.0.0.1:9/v1"}},
                "models": {
                    "m": {
                        "input": 3,
                        "output": 15,
                        "cache_read": "0.3",
                        "cache_write": "3.75",
                        "offers": [{"provider": "p", **o} for o in offers],
                    }
                },
            }
        )
        model = build_catalog(settings).get("m")
        assert model is not None
        return [o.price for o in model.offers]

    # At the model's own input price, the model's cache prices as they are.
    (same,) = offer_prices({"input": 3, "output": 12})
    assert same == Price(Decimal(3), Decimal(12), Decimal("0.3"), Decimal("3.75"))
    # A reseller at a third of the input price: reads and writes a third too, not a read at
    # 0.3 of 1 (30%, not 10%) and a write at 3.75x the offer's input.
    (cheaper,) = offer_prices({"input": 1, "output": 5})
    assert cheaper == Price(Decimal(1), Decimal(5), Decimal("0.1"), Decimal("1.25"))
    # Cache prices alone on an offer apply on top of the model's price (they were ignored).
    (own_read,) = offer_prices({"cache_read": "0.25"})
    assert own_read == Price(Decimal(3), Decimal(15), Decimal("0.25"), Decimal("3.75"))


def test_a_key_prefix_enables_a_provider_only_for_its_kind_of_key(monkeypatch: pytest.MonkeyPatch) -> None:
    pro = ProviderSettings(base_url="https://x", api_key_env="FAREGATE_TEST_GA", api_key_prefix="ga_pro_")
    monkeypatch.delenv("FAREGATE_TEST_GA", raising=False)
    assert not provider_enabled(pro)
    monkeypatch.setenv("FAREGATE_TEST_GA", "ga_std_123")
    assert not provider_enabled(pro)
    monkeypatch.setenv("FAREGATE_TEST_GA", "ga_pro_123")
    assert provider_enabled(pro)


def test_the_built_in_claude_models_have_anthropics_prices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant")
    settings = load_settings()
    assert settings.providers["anthropic"].protocol == "anthropic"
    catalog = build_catalog(settings)
    expected = {
        "claude-haiku-4-5": ("1", "5", "0.1", "1.25", "2"),
        "claude-sonnet-5": ("2", "10", "0.2", "2.5", "4"),
        "claude-sonnet-4-6": ("3", "15", "0.3", "3.75", "6"),
        "claude-opus-4-5": ("5", "25", "0.5", "6.25", "10"),
        "claude-opus-4-6": ("5", "25", "0.5", "6.25", "10"),
        "claude-opus-5": ("5", "25", "0.5", "6.25", "10"),
    }
    for name, prices in expected.items():
        model = catalog.get(name)
        assert model is not None and model.curated
        (offer,) = model.offers
        assert (offer.provider, offer.available) == ("anthropic", True)
        price = offer.price
        assert (
            price.input,
            price.output,
            price.cache_read,
            price.cache_write,
            price.cache_write_1h,
        ) == tuple(Decimal(p) for p in prices)
        # Anthropic's ratios: 5-minute writes 1.25x, one-hour writes 2x, reads 0.1x the input price.
        assert (price.cache_write, price.cache_write_1h, price.cache_read) == (
            price.input * Decimal("1.25"),
            price.input * 2,
            price.input / 10,
        )
    # The broad catalog's Claude models are Anthropic offers now, cache prices included.
    older = catalog.get("claude-opus-4-1")
    assert older is not None and older.offers[0].provider == "anthropic"
    assert older.offers[0].price.cache_read == Decimal("1.5")


GLOBAL_API_OFFERS = {
    "deepseek-ai/DeepSeek-V4-Flash": ("deepseek-ai/DeepSeek-V4-Flash", "0.14", "0.28"),
    "deepseek-ai/DeepSeek-V4-Pro": ("deepseek-ai/DeepSeek-V4-Pro", "0.55", "2.20"),
    "THUDM/glm-4-plus": ("glm-4-plus", "0.20", "0.80"),
    "Qwen/Qwen3-32B": ("qwen3-32b", "0.30", "1.20"),
    "Qwen/Qwen3-VL-32B-Instruct": ("Qwen/Qwen3-VL-32B-Instruct", "0.52", "0.52"),
    "Qwen/Qwen3-Omni-30B-A3B-Instruct": ("Qwen/Qwen3-Omni-30B-A3B-Instruct", "0.52", "0.52"),
    "deepseek-ai/DeepSeek-V3.2": ("deepseek-ai/DeepSeek-V3.2", "0.28", "0.42"),
}


def test_global_api_offers_at_the_makers_prices(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLOBAL_API_KEY", "ga_std_key")
    settings = load_settings()
    assert settings.providers["globalapi"].base_url == "https://global-apis.com/v1"
    catalog = build_catalog(settings)
    for name, (upstream, inp, out) in GLOBAL_API_OFFERS.items():
        model = catalog.get(name)
        assert model is not None
        (offer,) = [o for o in model.offers if o.provider == "globalapi"]
        assert (offer.upstream_model, offer.price.input, offer.price.output) == (
            upstream,
            Decimal(inp),
            Decimal(out),
        )
        assert offer.available and not offer.dedicated
        # The makers' own prices (DeepSeek's, Zhipu's) are genai-prices', checked in
        # test_catalog.py; Global API's are not in that snapshot.
    for alias in ("deepseek-v4-flash", "glm-4-plus", "qwen3-32b"):
        model = catalog.get(alias)
        assert model is not None and any(o.provider == "globalapi" for o in model.offers)
    model = catalog.get("deepseek-v3.2")
    assert model is not None
    pro = model.offers[0]
    assert (pro.provider, pro.upstream_model, pro.dedicated, pro.available) == (
        "globalapi_pro",
        "Pro/deepseek-ai/DeepSeek-V3.2",
        True,
        False,  # a standard key does not open the Pro channel
    )
    monkeypatch.setenv("GLOBAL_API_KEY", "ga_pro_key")
    model = build_catalog(load_settings()).get("deepseek-v3.2")
    assert model is not None and model.offers[0].available


def test_the_built_in_openai_models_discount_cached_input() -> None:
    """OpenAI caches long prompts by itself and bills the cached part at its cached-input price
    (gpt-4o: 1.25 of 2.50; gpt-4o-mini: 0.075 of 0.15, on OpenAI's price page and in
    genai-prices), reporting it as prompt_tokens_details.cached_tokens: so must the gateway."""
    catalog = build_catalog(load_settings(overrides={"catalog": {"broad": False}}))
    usage = usage_from(
        {
            "usage": {
                "prompt_tokens": 10_000,
                "completion_tokens": 0,
                "prompt_tokens_details": {"cached_tokens": 8_000},
            }
        }
    )
    assert usage is not None
    for name, cached in (("gpt-4o", "1.25"), ("gpt-4o-mini", "0.075")):
        model = catalog.get(name)
        assert model is not None
        for offer in model.offers:  # openai's own, and OpenRouter's resale at the same prices
            plain = offer.price.input
            assert offer.price.cost(usage) == (2_000 * plain + 8_000 * Decimal(cached)) / 1_000_000


def _listed_prices(info: object) -> list[Price]:
    """Every flat price genai-prices lists for a model: unconstrained, dated and hour-of-day ones."""
    from faregate.catalog.broad import _CACHE_PRICE_FIELDS, _decimal

    prices = getattr(info, "prices", None)
    listed = []
    for entry in prices if isinstance(prices, list) else [prices]:
        price = getattr(entry, "prices", entry)
        inp, out = _decimal(price, "input_mtok"), _decimal(price, "output_mtok")
        if inp is not None and out is not None:
            listed.append(Price(inp, out, *(_decimal(price, f) for f in _CACHE_PRICE_FIELDS)))
    return listed


def test_curated_offers_keep_the_cache_prices_genai_prices_knows() -> None:
    """Every curated offer genai-prices knows (same provider and upstream model) bills cached
    tokens as genai-prices does. At a price genai-prices lists (the one in force first, then any
    dated or hour-of-day one: DeepSeek's vary through the day), the cache prices are that one's.
    At a price it does not list, cached input is still discounted when genai-prices discounts it
    at every price it lists, by a ratio to the input price within the ratios it lists."""
    from datetime import UTC, datetime

    from genai_prices.data_snapshot import get_snapshot

    from faregate.catalog.broad import PROVIDER_IDS, _price_in_force

    today = datetime.now(UTC).date()
    known = {
        (PROVIDER_IDS[p.id], m.id): ((_price_in_force(m, today) or (None, None))[0], _listed_prices(m))
        for p in get_snapshot().providers
        if p.id in PROVIDER_IDS
        for m in p.models
    }
    catalog = build_catalog(load_settings(overrides={"catalog": {"broad": False}}))
    wrong = []
    checked = 0
    for model in catalog.all():
        for offer in model.offers:
            if (offer.provider, offer.upstream_model) not in known:
                continue
            in_force, listed = known[(offer.provider, offer.upstream_model)]
            for ours in offer.prices:  # its peak price too, where it has one
                same = [
                    p
                    for p in (in_force, *reversed(listed))
                    if p and (p.input, p.output) == (ours.input, ours.output)
                ]
                checked += 1
                if same:
                    if (ours.cache_read, ours.cache_write) != (same[0].cache_read, same[0].cache_write):
                        wrong.append(f"{model.name} via {offer.provider}: {ours} is not {same[0]}")
                    continue
                ratios = [p.cache_read / p.input for p in listed if p.cache_read is not None and p.input]
                if not listed or len(ratios) < len(listed):
                    continue  # genai-prices does not discount cached input at every price it lists
                if ours.cache_read is None or not min(ratios) <= ours.cache_read / ours.input <= max(ratios):
                    wrong.append(
                        f"{model.name} via {offer.provider}: cache_read {ours.cache_read}, ratios {ratios}"
                    )
    assert checked >= 15
    assert wrong == []
