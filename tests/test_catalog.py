from decimal import Decimal

import pytest

from faregate.catalog import build_catalog
from faregate.config import load_settings, parse_settings
from faregate.providers.registry import simulator_active, with_simulator
from faregate.types import Price, Usage

SIM_URL = "http://127.0.0.1:4001/v1"


@pytest.fixture(scope="module")
def catalog():  # type: ignore[no-untyped-def]
    return build_catalog(with_simulator(load_settings(), SIM_URL))


def test_issue_price_table_is_shipped(catalog) -> None:  # type: ignore[no-untyped-def]
    expected = {
        "deepseek-v4-flash": ("0.27", "1.10", 128_000),
        "deepseek-v4-pro": ("0.55", "2.20", 200_000),
        "qwen3-32b": ("0.30", "1.20", 32_000),
        "glm-4-plus": ("0.20", "0.80", 128_000),
        "gpt-4o": ("2.50", "10.00", 128_000),
        "gpt-4o-mini": ("0.15", "0.60", 128_000),
        "qwen3-8b": ("0.01", "0.01", 32_000),
        "qwen-mt-turbo": ("0.30", "0.30", 32_000),
        "deepseek-reasoner": ("2.50", "2.50", 128_000),
        "qwen3-vl-32b": ("0.52", "0.52", 32_000),
        "qwen3-vl-8b": ("0.50", "0.50", 32_000),
        "glm-4.5v": ("0.01", "0.01", 32_000),
        "glm-4.6v": ("0.80", "0.80", 32_000),
        "hunyuan-vision": ("1.20", "1.20", 32_000),
        "qwen3-omni-30b": ("0.52", "0.52", 32_000),
    }
    for name, (inp, out, ctx) in expected.items():
        model = catalog.get(name)
        assert model is not None, name
        assert (model.list_price.input, model.list_price.output) == (Decimal(inp), Decimal(out)), name
        assert model.context_window == ctx, name
    assert catalog.get("deepseek-v4-flash").max_output_tokens == 8192
    assert catalog.get("gpt-4o").max_output_tokens == 16384
    assert catalog.get("qwen3-omni-30b").modalities == {"text", "image", "audio", "video"}
    assert catalog.get("glm-4.5v").modalities == {"text", "image"}


def test_aliases_and_full_names_resolve_case_insensitively(catalog) -> None:  # type: ignore[no-untyped-def]
    assert catalog.get("deepseek-ai/DeepSeek-V4-Flash") is catalog.get("deepseek-v4-flash")
    assert catalog.get("DEEPSEEK-V4-FLASH") is catalog.get("deepseek-v4-flash")


def test_one_model_several_offers_with_own_prices(catalog) -> None:  # type: ignore[no-untyped-def]
    flash = catalog.get("deepseek-v4-flash")
    prices = {o.provider: o.price for o in flash.offers}
    assert prices["deepseek"] == Price(Decimal("0.15"), Decimal("0.60"), cache_read=Decimal("0.003"))
    # Twice that at DeepSeek's peak hours, its cache price with its input price.
    peak = flash.offer_of("deepseek").peak
    assert peak is not None and peak.price == Price(
        Decimal("0.30"), Decimal("1.20"), cache_read=Decimal("0.006")
    )
    assert peak.hours == ("01:00-04:00", "06:00-10:00")
    assert prices["openrouter"] == Price(Decimal("0.105"), Decimal("0.21"), cache_read=Decimal("0.021"))
    assert prices["siliconflow"] == Price(Decimal("0.27"), Decimal("1.10"))


@pytest.mark.parametrize(
    ("offer", "price"),
    [
        # A seller dearer to write only: its output price, the model's input price.
        ({"output": "20"}, Price(Decimal(3), Decimal(20), cache_read=Decimal("0.3"))),
        # A seller cheaper to read only: its input price (and the model's cache discount on it).
        ({"input": "1.5"}, Price(Decimal("1.5"), Decimal(15), cache_read=Decimal("0.15"))),
    ],
)
def test_an_offer_that_sets_one_price_is_billed_at_it(offer: dict[str, str], price: Price) -> None:
    """An offer's input and output each default to the model's list price (config's OfferSettings).
    One that set only one of them was billed at the list price for both: the price it set was
    ignored, so a seller dearer to write was charged for (and its output held) at the cheaper
    list price, and the gateway's bill fell short of the seller's."""
    settings = parse_settings(
        {
            "providers": {"x": {"base_url": "http://127.0.0.1:1/v1", "enabled": True}},
            "models": {
                "m": {
                    "input": "3",
                    "output": "15",
                    "cache_read": "0.3",
                    "offers": [{"provider": "x", **offer}],
                }
            },
            "catalog": {"broad": False},
        }
    )
    model = build_catalog(settings).get("m")
    assert model is not None
    assert model.offers[0].price == price


def test_disabled_providers_show_models_unavailable_not_dropped(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("OPENAI_API_KEY", "DEEPSEEK_API_KEY", "SILICONFLOW_API_KEY", "OPENROUTER_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    catalog = build_catalog(load_settings())
    flash = catalog.get("deepseek-v4-flash")
    assert flash is not None and not flash.available
    monkeypatch.setenv("DEEPSEEK_API_KEY", "sk-test")
    catalog = build_catalog(load_settings())
    offers = {o.provider: o.available for o in catalog.get("deepseek-v4-flash").offers}
    assert offers["deepseek"] is True and offers["siliconflow"] is False


def test_sim_mode_is_auto_only_without_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in load_settings().providers.values():
        if name.api_key_env:
            monkeypatch.delenv(name.api_key_env, raising=False)
    assert simulator_active(load_settings())
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    assert not simulator_active(load_settings())
    assert simulator_active(parse_settings({"sim": {"mode": "on"}}))


def test_the_simulator_is_a_provider_like_any_other(catalog) -> None:  # type: ignore[no-untyped-def]
    settings = load_settings(overrides={"sim": {"first_byte_timeout_s": 7}})
    assert settings.providers["sim"].enabled is False  # declared by the defaults, off
    sim = with_simulator(settings, SIM_URL).providers["sim"]
    assert (sim.base_url, sim.enabled, sim.serves_every_model) == (SIM_URL, True, True)
    assert (sim.first_byte_timeout_s, sim.total_timeout_s) == (7, settings.sim.total_timeout_s)
    assert with_simulator(settings).providers["sim"].base_url == "http://127.0.0.1:0/v1"
    # Off, it sells nothing; on, it sells every curated model at list price, under its own name.
    assert all(o.provider != "sim" for o in build_catalog(settings).get("gpt-4o").offers)
    offer = catalog.get("gpt-4o").offers[0]
    assert (offer.provider, offer.upstream_model, offer.available) == ("sim", "gpt-4o", True)
    assert offer.price == catalog.get("gpt-4o").list_price


def test_broad_catalog_knows_thousands_offline(catalog) -> None:  # type: ignore[no-untyped-def]
    assert len(catalog) > 1000
    gpt41 = catalog.get("gpt-4.1")
    assert gpt41 is not None and gpt41.list_price.input == Decimal("2")


def test_a_broad_model_priced_for_audio_input_reads_audio(catalog) -> None:  # type: ignore[no-untyped-def]
    """The snapshot says no modality, but a price for audio input says the model takes it: listed
    as text only, gpt-audio refused every request with an input_audio part."""
    audio = catalog.get("gpt-audio")
    assert audio is not None and not audio.curated and audio.list_price.input_audio is not None
    assert audio.modalities == {"text", "audio"}
    assert catalog.get("gpt-4.1").modalities == {"text"}


def test_local_override_wins_over_broad_catalog() -> None:
    settings = parse_settings(
        {
            "models": {
                "gpt-4.1": {"input": "1.5", "output": "6", "offers": [{"provider": "openai"}]},
            },
            "providers": {"openai": {"base_url": "https://api.openai.com/v1"}},
        }
    )
    catalog = build_catalog(settings)
    assert catalog.get("gpt-4.1").list_price == Price(Decimal("1.5"), Decimal("6"))


def test_suggestions_for_unknown_names(catalog) -> None:  # type: ignore[no-untyped-def]
    assert "deepseek-ai/DeepSeek-V4-Flash" in catalog.suggest("deepseek-v4-flsh")


def test_suggestions_are_remembered_per_name_within_a_bound(catalog, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A scan of every name costs milliseconds: the same unknown name is scanned once."""
    from faregate.catalog import models

    catalog._suggested.clear()  # the fixture is shared with other tests
    scans: list[str] = []
    scan = catalog._suggest
    monkeypatch.setattr(catalog, "_suggest", lambda name, limit: scans.append(name) or scan(name, limit))
    first = catalog.suggest("deepseek-v4-flsh")
    first.append("changed by the caller")
    assert catalog.suggest("DeepSeek-v4-flsh") == first[:-1] and scans == ["deepseek-v4-flsh"]
    monkeypatch.setattr(models, "MAX_SUGGESTIONS_KEPT", 3)
    for i in range(10):
        catalog.suggest(f"no-such-model-{i}")
    assert len(catalog._suggested) == 3


def test_cost_math_is_exact() -> None:
    flash = Price(Decimal("0.27"), Decimal("1.10"))
    assert flash.cost(Usage(1000, 500)) == Decimal("0.00082")
    gpt4o = Price(Decimal("2.50"), Decimal("10.00"))
    assert gpt4o.cost(Usage(9_600_000, 6_400_000)) == Decimal("88")


def test_broad_catalog_bills_the_snapshot_price_in_force_not_the_first_one() -> None:
    """genai-prices lists a model's price changes in order, the last one in force winning
    (o3 went from 10/40 to 2/8 on 2025-06-10): the catalog must bill that one."""
    settings = parse_settings({"providers": {"openai": {"base_url": "https://api.openai.com/v1"}}})
    catalog = build_catalog(settings)
    o3 = catalog.get("o3")
    assert o3 is not None
    assert (o3.list_price.input, o3.list_price.output) == (Decimal(2), Decimal(8))
    assert (o3.offers[0].price.input, o3.offers[0].price.output) == (Decimal(2), Decimal(8))


def test_broad_prices_follow_start_dates_and_hours_of_the_day() -> None:
    from datetime import UTC, date, time
    from types import SimpleNamespace as Obj

    from faregate.catalog.broad import _price_in_force

    def price(inp: str, out: str) -> Obj:
        return Obj(input_mtok=Decimal(inp), output_mtok=Decimal(out), cache_read_mtok=None)

    def model(*conditionals: tuple[object, Obj]) -> Obj:
        return Obj(prices=[Obj(constraint=c, prices=p) for c, p in conditionals])

    today = date(2026, 1, 1)
    changed = model((None, price("10", "40")), (Obj(start_date=date(2025, 6, 10)), price("2", "8")))
    assert _price_in_force(changed, today) == (Price(Decimal(2), Decimal(8)), None)
    announced = model((None, price("10", "40")), (Obj(start_date=date(2026, 6, 1)), price("2", "8")))
    assert _price_in_force(announced, today) == (Price(Decimal(10), Decimal(40)), None)
    # DeepSeek's peak hours: the price of those hours is the offer's peak price.
    peak = Obj(start_time=time(0, 30, tzinfo=UTC), end_time=time(16, 30, tzinfo=UTC))
    by_hour = model((None, price("0.135", "0.55")), (peak, price("0.27", "1.1")))
    found = _price_in_force(by_hour, today)
    assert found is not None
    base, at_peak = found
    assert base == Price(Decimal("0.135"), Decimal("0.55"))
    assert at_peak is not None and at_peak.price == Price(Decimal("0.27"), Decimal("1.1"))
    assert (at_peak.spans, at_peak.hours) == (((30, 990),), ("00:30-16:30",))
    # A price in force at every hour from a later date wins over the hours before it.
    repriced = model(*by_hour_items(by_hour), (Obj(start_date=date(2025, 1, 1)), price("1", "2")))
    assert _price_in_force(repriced, today) == (Price(Decimal(1), Decimal(2)), None)
    # Hours at two prices are left out, as tiered prices are.
    other = Obj(start_time=time(18, 0, tzinfo=UTC), end_time=time(20, 0, tzinfo=UTC))
    assert _price_in_force(model(*by_hour_items(by_hour), (other, price("9", "9"))), today) is None


def by_hour_items(model: object) -> list[tuple[object, object]]:
    return [(c.constraint, c.prices) for c in model.prices]  # type: ignore[attr-defined]


def test_broad_deepseek_models_are_billed_by_the_hour() -> None:
    """deepseek-chat, priced by the hour in the snapshot, is served with its peak hours rather
    than left out (a 404 for DeepSeek's best-known name)."""
    catalog = build_catalog(
        parse_settings({"providers": {"deepseek": {"base_url": "https://api.deepseek.com/v1"}}})
    )
    chat = catalog.get("deepseek-chat")
    assert chat is not None
    (offer,) = chat.offers
    assert offer.peak is not None and offer.peak.hours == ("00:30-16:30",)
    for moment in _through_today():
        sold = _snapshot_price("deepseek", "deepseek-chat", moment)
        assert sold is not None
        assert (offer.at(moment).price.input, offer.at(moment).price.output) == (sold.input, sold.output)


def _through_today() -> list[float]:
    """Every half hour of today (UTC), as Unix seconds: DeepSeek's peak hours start and end on
    the hour or the half hour."""
    from datetime import UTC, datetime

    midnight = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
    return [midnight + 1800 * half_hour for half_hour in range(48)]


def _snapshot_price(provider: str, upstream: str, unix_seconds: float) -> Price | None:
    """The price the bundled genai-prices snapshot bills `upstream` at, at `unix_seconds`: None
    where the snapshot does not know the model."""
    from datetime import UTC, datetime

    from genai_prices.data_snapshot import get_snapshot

    from faregate.catalog.broad import PROVIDER_IDS

    theirs = next((p for p in get_snapshot().providers if p.id == PROVIDER_IDS.get(provider, "")), None)
    info = None if theirs is None else theirs.find_model(upstream)
    if info is None:
        return None
    sold = info.get_prices(datetime.fromtimestamp(unix_seconds, UTC))
    return Price(sold.input_mtok, sold.output_mtok or Decimal(0), sold.cache_read_mtok)


def test_curated_offers_bill_the_snapshot_price_in_force() -> None:
    """A curated offer of a provider the bundled snapshot prices is billed what the snapshot says
    that provider charges, at every hour of today, not a price it charged before (DeepSeek's V4
    prices moved on 2026-08-17 and 2026-09-10, OpenRouter's V4-Flash on 2026-11-09) nor one price
    at all hours where it bills more at its peak hours (DeepSeek's). A price change the snapshot
    dates later fails this on its day: the curated price is then stale."""
    settings = load_settings(overrides={"catalog": {"broad": False}})
    checked = 0
    for model in build_catalog(settings).all():
        for offer in model.offers:
            for moment in _through_today():
                sold = _snapshot_price(offer.provider, offer.upstream_model, moment)
                if sold is None:
                    break  # SiliconFlow, DashScope, Global API: not in the snapshot
                billed = offer.at(moment).price
                assert (billed.input, billed.output, billed.cache_read) == (
                    sold.input,
                    sold.output,
                    sold.cache_read,
                ), f"{offer.key} ({offer.upstream_model}) at {moment}"
            else:
                checked += 1
    assert checked >= 15
