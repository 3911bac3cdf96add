"""Audio tokens at their own prices: the usage object's audio counts (wire/usage.py, OpenAI's
prompt_tokens_details.audio_tokens and completion_tokens_details.audio_tokens), the cost math
(types.Price), genai-prices' audio prices in the broad catalog, and the worst-case hold."""

from __future__ import annotations

from decimal import Decimal

from faregate.catalog.models import build_catalog
from faregate.config import load_settings
from faregate.types import Price, Usage
from faregate.wire.usage import usage_from, usage_json

# gpt-audio on OpenAI's price page and in genai-prices: text 2.50 / 10, audio 32 / 64 per 1M.
GPT_AUDIO = Price(Decimal("2.5"), Decimal(10), input_audio=Decimal(32), output_audio=Decimal(64))


def test_usage_reads_and_writes_the_audio_counts() -> None:
    body = {
        "prompt_tokens": 1000,
        "completion_tokens": 300,
        "total_tokens": 1300,
        "prompt_tokens_details": {"cached_tokens": 100, "audio_tokens": 600},
        "completion_tokens_details": {"audio_tokens": 250, "reasoning_tokens": 0},
    }
    usage = usage_from({"usage": body})
    expected = Usage(1000, 300, cache_read_tokens=100, audio_prompt_tokens=600, audio_completion_tokens=250)
    assert usage == expected
    assert usage_from({"usage": usage_json(usage)}) == usage
    # Audio counts that do not fit the prompt or the completion are dropped, as cache counts are.
    too_many = {"prompt_tokens": 10, "completion_tokens": 5, "completion_tokens_details": {"audio_tokens": 6}}
    assert usage_from({"usage": too_many}) == Usage(10, 5)


def test_audio_tokens_are_billed_at_the_audio_prices() -> None:
    usage = Usage(1000, 300, cache_read_tokens=100, audio_prompt_tokens=600, audio_completion_tokens=250)
    # 300 text x 2.5 + 600 audio x 32 + 100 cached at the input price (no cache price here),
    # 50 text out x 10 + 250 audio out x 64; per million.
    expected = (Decimal(400) * Decimal("2.5") + 600 * 32 + 50 * 10 + 250 * 64) / Decimal(1_000_000)
    assert GPT_AUDIO.cost(usage) == expected
    # Without audio prices, audio tokens are text tokens (what a provider without them bills).
    text_only = Price(Decimal("2.5"), Decimal(10))
    assert text_only.cost(usage) == text_only.cost(Usage(1000, 300, cache_read_tokens=100))
    # The dearest token either way is what a worst-case hold assumes.
    assert (GPT_AUDIO.dearest_input, GPT_AUDIO.dearest_output) == (Decimal(32), Decimal(64))


def test_the_broad_catalog_keeps_genai_prices_audio_prices() -> None:
    catalog = build_catalog(load_settings())
    model = catalog.get("gpt-audio")
    assert model is not None and not model.curated
    (offer,) = model.offers
    assert (offer.provider, offer.price) == ("openai", GPT_AUDIO)


def test_usage_from_puts_every_count_in_its_own_field() -> None:
    """Each of usage_from's three shapes, with a different number in every count: the Usage is
    made positionally on this hot path, so a count in the wrong field would show here."""
    no_details = {
        "prompt_tokens": 90,
        "completion_tokens": 80,
        "completion_tokens_details": {"audio_tokens": 7},
    }
    assert usage_from({"usage": no_details}) == Usage(90, 80, audio_completion_tokens=7)
    overflowing = {
        **no_details,
        "prompt_tokens_details": {"cached_tokens": 60, "cache_write_tokens": 40, "audio_tokens": 5},
    }
    assert usage_from({"usage": overflowing}) == Usage(
        90, 80, audio_prompt_tokens=5, audio_completion_tokens=7
    )
    full = {
        **no_details,
        "prompt_tokens_details": {
            "cached_tokens": 30,
            "cache_write_tokens": 20,
            "cache_write_tokens_details": {"ttl_1h_tokens": 11},
            "audio_tokens": 5,
        },
    }
    assert usage_from({"usage": full}) == Usage(
        90,
        80,
        cache_read_tokens=30,
        cache_write_tokens=20,
        cache_write_1h_tokens=11,
        audio_prompt_tokens=5,
        audio_completion_tokens=7,
    )
