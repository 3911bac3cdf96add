"""Usage no upstream reported: the light estimate by default (no tokenizer), o200k when opted in.

The light estimate against o200k on the texts bench/estimate_accuracy.py measures (it may count
over, seldom under); the framing it shares with the tokenizer; the mode switch; and, in process,
that a cut stream and a stream whose client left are billed what the estimator says, marked
estimated, never under the content deltas they carried. tests/test_usage_estimate_e2e.py checks
that a real gateway never imports the tokenizer by default.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from faregate import counting, light_tokens, tokens, usage_estimate
from faregate.routing.estimate import PromptSize
from faregate.types import ChatRequest
from test_pipeline import ASK, WHOLE_STREAM, Harness, chunk, harness  # noqa: F401  (the fixture)

ROOT = Path(__file__).resolve().parent.parent
REQUEST = ChatRequest(
    "r", {"messages": [{"role": "user", "content": "hi"}]}, "m", True, False, None, frozenset()
)
FIXTURE = json.loads((Path(__file__).parent / "fixtures/estimate_texts.json").read_text(encoding="utf-8"))


@pytest.fixture(autouse=True)
def light_mode() -> Iterator[None]:
    """Each test starts in the default mode and leaves the process in it."""
    usage_estimate.configure("light")
    yield
    usage_estimate.configure("light")


def test_the_light_estimate_does_not_count_under_o200k_on_code_json_and_other_languages() -> None:
    exact = {name: tokens.count_text(text) for name, text in FIXTURE.items()}
    light = {name: light_tokens.count_text(text) for name, text in FIXTURE.items()}
    assert sum(light.values()) >= sum(exact.values())
    # Per text, at most a few percent under (a table of numbers), and never wildly over.
    for name in FIXTURE:
        assert exact[name] * 0.95 <= light[name] <= exact[name] * 2, name


def test_the_light_estimate_on_model_answers_counts_over_in_total_and_rarely_under() -> None:
    with (ROOT / "data/routellm/gsm8k_responses.csv").open(newline="", encoding="utf-8") as f:
        texts = [row["gpt-4-1106-preview_response"] for row in csv.DictReader(f)][:300]
    exact = [tokens.count_text(t) for t in texts]
    light = [light_tokens.count_text(t) for t in texts]
    assert sum(exact) <= sum(light) <= sum(exact) * 1.2
    under = [(e, n) for e, n in zip(exact, light, strict=True) if n < e]
    assert len(under) <= len(texts) * 0.05
    assert all(n >= e * 0.8 for e, n in under)


def test_the_light_estimate_of_nothing_is_nothing_and_of_anything_at_least_one() -> None:
    assert light_tokens.count_text("") == 0
    assert light_tokens.count_text(" ") == 1
    assert light_tokens.count_text("a") == 1
    # A long word is several tokens, not one; digits go by three as o200k splits them.
    assert light_tokens.count_text("antidisestablishmentarianism") >= 4
    assert light_tokens.count_text("1234567") == 3


def test_both_modes_share_the_framing_of_a_chat_request() -> None:
    body = {"messages": [{"role": "user", "content": "hello"}], "tools": [{"type": "function"}]}
    extras = counting.billed_extras_text(body)
    light = light_tokens.count_text("hello") + light_tokens.count_text(extras)
    assert usage_estimate.count_input(body) == light + counting.TOKENS_PER_MESSAGE + counting.TOKENS_PER_REPLY
    usage_estimate.configure("tokenizer")
    assert usage_estimate.count_input(body) == tokens.count_input(body)


async def test_an_estimate_is_marked_and_never_under_the_deltas_a_stream_carried() -> None:
    request = ChatRequest(
        "r", {"messages": [{"role": "user", "content": "hi"}]}, "m", True, False, None, frozenset()
    )
    usage = await usage_estimate.estimate_usage(request, "Hello there", deltas=0)
    assert usage.estimated and usage.completion_tokens == light_tokens.count_text("Hello there")
    assert usage.prompt_tokens == usage_estimate.count_input(request.body)
    many = await usage_estimate.estimate_usage(request, "Hello there", deltas=40)
    assert many.completion_tokens == 40
    usage_estimate.configure("tokenizer")
    exact = await usage_estimate.estimate_usage(request, "Hello there")
    assert exact.estimated and exact.completion_tokens == tokens.count_text("Hello there")


async def _estimated(pipeline: Harness, body: dict[str, object]) -> tuple[int, int, bool]:
    status, _, _ = await pipeline.post(body)
    assert status == 200
    (record,) = pipeline.records
    return record.prompt_tokens, record.completion_tokens, record.usage_estimated


async def test_a_cut_stream_is_billed_what_the_light_estimate_says(harness: Harness) -> None:  # noqa: F811
    text = "The answer is forty-two, as computed by multiplying six by seven."
    harness.a.outcomes = [[chunk({"role": "assistant", "content": ""}), chunk({"content": text})]]
    body = {"model": "cheap", "stream": True, **ASK}
    prompt, completion, estimated = await _estimated(harness, body)
    assert estimated
    assert prompt == usage_estimate.count_input({**ASK}) == counting.count_input(ASK, light_tokens.count_text)
    # One delta carried the whole text: the text's estimate, not the delta count.
    assert completion == light_tokens.count_text(text) > 1


async def test_a_cut_stream_of_many_deltas_is_billed_no_fewer_tokens_than_deltas(
    harness: Harness,  # noqa: F811
) -> None:
    pieces = ["4", "2", ",", " ", "4", "2", "!", "!", "!", "?"]
    harness.a.outcomes = [
        [chunk({"role": "assistant", "content": ""}), *(chunk({"content": p}) for p in pieces)]
    ]
    _, completion, estimated = await _estimated(harness, {"model": "cheap", "stream": True, **ASK})
    assert estimated and completion == len(pieces) > light_tokens.count_text("".join(pieces))


async def test_a_whole_stream_with_its_usage_is_not_an_estimate(harness: Harness) -> None:  # noqa: F811
    harness.a.outcomes = [WHOLE_STREAM]
    prompt, completion, estimated = await _estimated(harness, {"model": "cheap", "stream": True, **ASK})
    assert (prompt, completion, estimated) == (10, 2, False)


def test_opting_in_counts_with_o200k() -> None:
    usage_estimate.configure("tokenizer")
    assert usage_estimate.mode() == "tokenizer"
    text = FIXTURE["python"]
    assert usage_estimate.count_text(text) == tokens.count_text(text)
    usage_estimate.preload()
    assert usage_estimate.ready() and usage_estimate.state()["tokenizer_loaded"] is True


def test_the_light_estimate_is_bounded_by_the_bytes() -> None:
    """The estimate stays under the UTF-8 byte count that routing takes as its upper bound, so a
    context-window fit the bound settled is one the estimate agrees with."""
    for text in FIXTURE.values():
        assert light_tokens.count_text(text) <= len(text.encode())


async def test_a_reservation_counts_the_prompt_at_least_as_o200k_does() -> None:
    # A reservation is a worst case: where the light estimate counts a prompt under o200k (GSM8K
    # answers of both models, the fixture), the billable count must not.
    with (ROOT / "data/routellm/gsm8k_responses.csv").open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))[:400]
    texts = [
        row[column]
        for row in rows
        for column in ("gpt-4-1106-preview_response", "mistralai/Mixtral-8x7B-Instruct-v0.1_response")
    ]
    texts += list(FIXTURE.values())
    under = 0
    for text in texts:
        messages = [{"role": "user", "content": text}]
        exact = tokens.count_messages(messages)
        under += counting.count_messages(messages, light_tokens.count_text) < exact
        assert await PromptSize.of({"messages": messages}).billable() >= exact
    assert under > 0  # the case this guards against is in the data
