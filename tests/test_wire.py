"""The OpenAI wire module: reading answers and chunks, and writing what the client receives."""

from __future__ import annotations

from decimal import Decimal

from faregate.errors import InsufficientCredits
from faregate.types import Usage
from faregate.wire.openai import (
    StreamedAnswer,
    answer_as_chunks,
    answer_is_empty,
    answer_text,
    billed_text,
    chunk_has_content,
    error_body,
    error_code_param,
    error_message,
    finish_reason,
    free_answer,
    price_answer,
    relay_frame,
    stream_error,
    upstream_body,
    usage_chunk,
    usage_of,
    without_streaming,
)


def chunk(delta: dict[str, object], finish: str | None = None, **extra: object) -> dict[str, object]:
    return {
        "id": "c1",
        "created": 1,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }


def test_usage_accepts_whole_non_negative_numbers_only() -> None:
    assert usage_of({"usage": {"prompt_tokens": 5, "completion_tokens": 0}}) == Usage(5, 0)
    assert usage_of({"usage": {"prompt_tokens": 5.0, "completion_tokens": 2.0}}) == Usage(5, 2)
    assert usage_of({"usage": {"prompt_tokens": True, "completion_tokens": 2}}) is None
    assert usage_of({"usage": {"prompt_tokens": -1, "completion_tokens": 2}}) is None
    assert usage_of({"usage": {"prompt_tokens": 2.5, "completion_tokens": 2}}) is None
    assert usage_of({"usage": None}) is None


def test_reasoning_reported_beside_the_completion_is_billed_as_output() -> None:
    # xAI's chat usage counts reasoning apart from completion_tokens (its total_tokens is prompt
    # + completion + reasoning), where OpenAI's counts it inside: both are billed as output.
    xai = {
        "prompt_tokens": 10120,
        "completion_tokens": 1499,
        "total_tokens": 14428,
        "prompt_tokens_details": {"cached_tokens": 128},
        "completion_tokens_details": {"reasoning_tokens": 2809},
    }
    assert usage_of({"usage": xai}) == Usage(10120, 1499 + 2809, cache_read_tokens=128)
    # Without a total, reasoning larger than the completion cannot be a part of it.
    apart = {
        "prompt_tokens": 32,
        "completion_tokens": 9,
        "completion_tokens_details": {"reasoning_tokens": 94},
    }
    assert usage_of({"usage": apart}) == Usage(32, 9 + 94)
    # OpenAI's: the reasoning is inside completion_tokens, counted once.
    inside = {
        "prompt_tokens": 32,
        "completion_tokens": 103,
        "total_tokens": 135,
        "completion_tokens_details": {"reasoning_tokens": 94},
    }
    assert usage_of({"usage": inside}) == Usage(32, 103)
    assert usage_of({"usage": {**inside, "total_tokens": None}}) == Usage(32, 103)


def test_finish_reason_of_a_body_and_of_a_chunk() -> None:
    body = {"choices": [{"message": {"content": "x"}, "finish_reason": "length"}]}
    assert finish_reason(body) == "length"
    assert finish_reason(chunk({"content": "x"})) is None
    assert finish_reason(chunk({}, "tool_calls")) == "tool_calls"
    assert finish_reason({"choices": None}) is None


def test_content_checks() -> None:
    assert not chunk_has_content(chunk({"role": "assistant", "content": "  "}))
    assert chunk_has_content(chunk({"content": "hi"}))
    assert chunk_has_content(chunk({"tool_calls": [{"index": 0}]}))
    assert chunk_has_content(chunk({"refusal": "no"}))
    assert answer_is_empty({"choices": []})
    assert answer_is_empty({"choices": [{"message": {"content": " "}}]})
    assert not answer_is_empty({"choices": [{"message": {"content": None, "tool_calls": [{"id": "1"}]}}]})
    assert not answer_is_empty({"choices": [{"message": {"content": [{"type": "text"}]}}]})


def test_answer_text_includes_tool_calls() -> None:
    call = {"function": {"name": "f", "arguments": "{}"}}
    body = {"choices": [{"message": {"content": "a", "tool_calls": [call]}}]}
    assert answer_text(body) == "af{}"


def test_a_legacy_function_call_is_output_an_estimate_counts() -> None:
    # The functions API's one call (before tool_calls): an answer of it alone, without usage, is
    # estimated from its name and arguments, as a tool call is, not as no output at all.
    call = {"name": "get_weather", "arguments": '{"city": "Paris"}'}
    message = {"content": None, "function_call": call}
    body = {"choices": [{"message": message, "finish_reason": "function_call"}]}
    assert billed_text(body) == 'get_weather{"city": "Paris"}'
    seen = StreamedAnswer()
    seen.take(chunk({"role": "assistant", "function_call": {"name": "get_weather", "arguments": ""}}))
    seen.take(chunk({"function_call": {"arguments": '{"city": "Paris"}'}}))
    seen.take(chunk({}, "stop"))
    assert "".join(seen.text) == 'get_weather{"city": "Paris"}'
    # Kept as the whole answer with this call would be (README, Caching).
    kept = seen.answer("m", Usage(5, 9))
    assert kept is not None and kept["choices"][0]["message"]["function_call"] == call
    assert kept["choices"][0]["message"]["content"] is None


def test_error_shapes() -> None:
    assert error_message({"error": {"message": "quota"}}) == "quota"
    assert error_message({"error": "plain"}) == "plain"
    assert error_message({"detail": "why"}) == "why"
    assert error_code_param({"error": {"code": "c", "param": 3}}) == ("c", None)
    assert error_code_param(None) == (None, None)
    assert stream_error(chunk({"content": "x"})) is None
    assert stream_error({"error": {"code": 1}}) == ""
    assert stream_error({"error": {"message": "overloaded"}}) == "overloaded"
    error = InsufficientCredits("no money")
    assert error_body(error) == {
        "error": {
            "message": "no money",
            "type": "insufficient_quota",
            "param": None,
            "code": "insufficient_quota",
        }
    }


def test_upstream_body() -> None:
    body = {"model": "alias", "messages": [], "max_tokens": 10_000, "faregate": {}, "models": ["a"]}
    sent = upstream_body(body, "up/model", 4096, stream=True)
    assert sent == {
        "model": "up/model",
        "messages": [],
        "max_tokens": 4096,
        "stream_options": {"include_usage": True},
    }
    assert upstream_body({"max_tokens": 5}, "m", None, stream=False) == {"max_tokens": 5, "model": "m"}
    # A provider that reads max_completion_tokens gets the limit in force there alone.
    both = {"max_tokens": 9000, "max_completion_tokens": 8000}
    assert upstream_body(both, "m", 4096, False, "max_completion_tokens") == {
        "max_completion_tokens": 4096,
        "model": "m",
    }
    # A provider that reads max_tokens gets the limit there even when the client named only
    # max_completion_tokens (it would otherwise generate past what the hold covers).
    assert upstream_body({"max_completion_tokens": 8000}, "m", 4096, False) == {
        "max_completion_tokens": 4096,
        "max_tokens": 4096,
        "model": "m",
    }
    assert without_streaming({"stream": True, "stream_options": {}, "n": 1}) == {"n": 1}


def test_a_relayed_stream_is_read_and_kept_as_an_answer() -> None:
    seen = StreamedAnswer()
    chunks = [
        chunk({"role": "assistant", "content": ""}, system_fingerprint="fp_1"),
        chunk({"content": "Hello"}),
        chunk({"content": " world"}),
        chunk({}, "stop"),
        {"id": "c1", "choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}},
    ]
    relayed = [c for c in chunks if seen.take(c)]
    assert len(relayed) == 4 and seen.usage_chunk is chunks[-1]
    assert (seen.finish_reason, "".join(seen.text), seen.usage) == ("stop", "Hello world", Usage(3, 2))
    body = seen.answer("m", Usage(3, 2))
    assert body is not None and body["id"] == "c1" and body["created"] == 1
    assert body["system_fingerprint"] == "fp_1"
    assert body["choices"][0]["message"]["content"] == "Hello world"
    # ...and replayed as a stream that says the same.
    body["usage"] = {"cost": 0.0}
    frames = answer_as_chunks(body, include_usage=True)
    text = "".join(f["choices"][0]["delta"].get("content", "") for f in frames[:-1])
    assert text == "Hello world"
    assert frames[0]["choices"][0]["delta"]["role"] == "assistant"
    assert frames[-2]["choices"][0]["finish_reason"] == "stop"
    assert all(f["usage"] is None for f in frames[:-1])
    assert frames[-1]["choices"] == [] and frames[-1]["usage"] == {"cost": 0.0}
    assert "usage" not in answer_as_chunks(body, include_usage=False)[-1]
    again = free_answer(body, Usage(3, 2), Decimal("0.0005"))
    assert (
        again["usage"]["cost"] == 0 and again["choices"] == body["choices"] and body["usage"] == {"cost": 0.0}
    )
    assert again["usage"]["baseline_cost"] == 0.0005  # free, and what it saved


def test_streams_that_are_not_whole_text_answers_are_not_kept() -> None:
    cut = StreamedAnswer()
    cut.take(chunk({"content": "x"}))
    assert cut.answer("m", Usage(1, 1)) is None
    tools = StreamedAnswer()
    tools.take(chunk({"tool_calls": [{"index": 0, "function": {"name": "f", "arguments": "{}"}}]}))
    assert tools.answer("m", Usage(1, 1)) is None  # no finish reason: cut
    tools.take(chunk({}, "content_filter"))
    assert tools.tool_calls and tools.answer("m", Usage(1, 1)) is None
    assert "".join(tools.text) == "f{}"
    # n > 1: the chunks of choice 0 and 1 interleave; kept as one choice they would merge.
    several = StreamedAnswer()
    for index, word in ((0, "a"), (1, "b"), (0, "c"), (1, "d")):
        several.take({"id": "c1", "choices": [{"index": index, "delta": {"content": word}}]})
    several.take(
        {"id": "c1", "choices": [{"index": i, "delta": {}, "finish_reason": "stop"} for i in (0, 1)]}
    )
    assert several.answer("m", Usage(1, 4)) is None
    # logprobs asked for: the kept answer would say `logprobs: null`.
    logprobs = StreamedAnswer()
    logprobs.take(chunk({"content": "x"}, logprobs=None))
    logprobs.take(
        {
            "id": "c1",
            "choices": [{"index": 0, "delta": {"content": "y"}, "logprobs": {"content": [{"token": "y"}]}}],
        }
    )
    logprobs.take(chunk({}, "stop"))
    assert logprobs.answer("m", Usage(1, 2)) is None
    # A refusal or audio is content the client saw, but not text: kept, the answer would be blank.
    for delta in ({"refusal": "I can't help with that."}, {"audio": {"id": "a1", "data": "UklGR"}}):
        other = StreamedAnswer()
        other.take(chunk(delta))
        other.take(chunk({}, "stop"))
        assert other.answer("m", Usage(1, 5)) is None, delta


def test_a_stream_of_tool_calls_is_kept_as_the_whole_answer_it_amounts_to() -> None:
    """Whole answers with tool calls are kept, so a streamed one is too (README, Caching): its
    calls assembled as the SDK's stream helper assembles them, its text beside them, and replayed
    as a stream that says the same."""
    seen = StreamedAnswer()
    for delta in (
        {"role": "assistant", "content": "Let me look."},
        {
            "tool_calls": [
                {
                    "index": 0,
                    "id": "call_a",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": ""},
                }
            ]
        },
        {"tool_calls": [{"index": 0, "function": {"arguments": '{"city": '}}]},
        {"tool_calls": [{"index": 0, "function": {"arguments": '"Paris"}'}}]},
        {
            "tool_calls": [
                {"index": 1, "type": "function", "function": {"name": "get_time", "arguments": "{}"}}
            ]
        },
    ):
        seen.take(chunk(delta))
    seen.take(chunk({}, "tool_calls"))
    body = seen.answer("m", Usage(20, 30))
    assert body is not None
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] == "Let me look."
    made_id = message["tool_calls"][1]["id"]  # the upstream gave none: one made when relayed
    assert made_id.startswith("call_")
    assert message["tool_calls"] == [
        {
            "id": "call_a",
            "type": "function",
            "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        },
        {"id": made_id, "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
    ]
    body["usage"] = {"cost": 0.0}
    frames = answer_as_chunks(body, include_usage=False)
    calls = [call for f in frames for call in f["choices"][0]["delta"].get("tool_calls") or ()]
    assert [(c["index"], c["id"], c["function"]["name"]) for c in calls] == [
        (0, "call_a", "get_weather"),
        (1, made_id, "get_time"),
    ]
    # Calls alone: the message's content is null, as a whole answer's is.
    alone = StreamedAnswer()
    alone.take(
        chunk(
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"index": 0, "id": "c", "function": {"name": "f", "arguments": "{}"}}],
            }
        )
    )
    alone.take(chunk({}, "tool_calls"))
    kept = alone.answer("m", Usage(1, 1))
    assert kept is not None and kept["choices"][0]["message"]["content"] is None


def test_a_cache_hit_tells_the_reasoning_tokens_of_the_answer_it_replays() -> None:
    """A kept answer's completion_tokens_details (a reasoning model's reasoning_tokens) are replayed
    on a hit as its prompt_tokens_details are, whether it was kept whole or from a stream; the
    upstream's other usage fields (its own cost) are not."""
    upstream = {
        "prompt_tokens": 10,
        "completion_tokens": 50,
        "total_tokens": 60,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 40, "accepted_prediction_tokens": 0},
        "cost_details": {"upstream_inference_cost": 0.001},
    }
    usage = Usage(10, 50, cache_read_tokens=4)
    whole = price_answer(
        {
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "42"}}],
            "usage": dict(upstream),
        },
        "m",
        usage,
        Decimal("0.0001"),
        Decimal("0.0002"),
    )
    seen = StreamedAnswer()
    seen.take(chunk({"role": "assistant", "content": "42"}))
    seen.take(chunk({}, "stop"))
    seen.take({"id": "c1", "choices": [], "usage": dict(upstream)})
    streamed = seen.answer("m", usage)
    assert streamed is not None
    for kept in (whole, streamed):
        replayed = free_answer(kept, usage, Decimal("0.0002"))["usage"]
        assert replayed["completion_tokens_details"] == {
            "reasoning_tokens": 40,
            "accepted_prediction_tokens": 0,
        }
        assert replayed["prompt_tokens_details"]["cached_tokens"] == 4
        assert replayed["cost"] == 0 and "cost_details" not in replayed
    # Audio counted by the gateway wins over what the body said.
    audio = free_answer(whole, Usage(10, 50, audio_completion_tokens=7), Decimal("0.0002"))["usage"]
    assert audio["completion_tokens_details"] == {
        "reasoning_tokens": 40,
        "accepted_prediction_tokens": 0,
        "audio_tokens": 7,
    }


def test_what_the_client_receives_carries_the_cost_and_the_baseline_cost() -> None:
    body = {"model": "up", "choices": [], "usage": {"prompt_tokens": 1, "details": {"x": 1}}}
    price_answer(body, "catalog-name", Usage(3, 4, estimated=True), Decimal("0.00001"), Decimal("0.00004"))
    assert body["model"] == "catalog-name"
    assert body["usage"] == {
        "prompt_tokens": 3,
        "completion_tokens": 4,
        "total_tokens": 7,
        "cost": 1e-05,
        "baseline_cost": 4e-05,
        "estimated": True,
        "details": {"x": 1},
    }
    relayed = chunk({"content": "x"}, usage=None)
    frame = relay_frame(relayed, "catalog-name", include_usage=False)
    assert frame.startswith(b"data: {") and frame.endswith(b"}\n\n")
    assert relayed["model"] == "catalog-name" and "usage" not in relayed
    made = usage_chunk(None, "m", Usage(1, 2), Decimal(0), Decimal("0.003"))
    assert made["choices"] == [] and made["usage"]["total_tokens"] == 3 and made["model"] == "m"
    assert (made["usage"]["cost"], made["usage"]["baseline_cost"]) == (0, 0.003)
    # Azure's first chunk (its prompt filter's) names no stream: the made chunk names one still.
    azure_first = {"id": "", "object": "", "created": 0, "model": "", "choices": []}
    made = usage_chunk(None, "m", Usage(1, 2), Decimal(0), Decimal(0), azure_first)
    assert made["id"] == "chatcmpl-faregate" and made["object"] == "chat.completion.chunk"
    assert made["created"] > 0


def test_streamed_answer_reads_every_kind_of_chunk() -> None:
    """StreamedAnswer.take (inlined for speed): text, tool calls, the first finish reason among the
    choices, usage wherever it comes (a usage-only chunk held back, a malformed one ignored)."""
    from faregate.wire.openai import StreamedAnswer

    seen = StreamedAnswer()
    role = {"index": 0, "delta": {"role": "assistant", "content": ""}}
    first = {"id": "c1", "choices": [role], "usage": None}
    assert seen.take(first) is True and seen.first is first
    assert seen.take({"choices": [{"delta": {"content": "Hi"}, "finish_reason": None}], "usage": "bad"})
    call = {"tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}
    assert seen.take({"choices": [{"delta": call}, {"delta": {"content": "!"}, "finish_reason": "stop"}]})
    assert seen.take({"choices": [{"delta": {}, "finish_reason": "length"}], "usage": {"prompt_tokens": 3}})
    assert seen.usage is None  # a usage without completion_tokens is no usage
    assert seen.text == ["", "Hi", "f", "{}", "!"] and seen.tool_calls and seen.finish_reason == "length"
    counts = {"prompt_tokens": 3, "completion_tokens": 4}
    with_usage = {"choices": [{"delta": {"content": "x"}}], "usage": counts}
    assert seen.take(with_usage) is True and seen.usage is not None and seen.usage.completion_tokens == 4
    # Usage on a chunk with choices: moved to the closing usage-only chunk, null where it came.
    assert with_usage["usage"] is None and seen.usage_chunk == {"choices": [], "usage": counts}
    usage_only = {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 5}}
    assert seen.take(usage_only) is False and seen.usage_chunk is usage_only
    assert seen.usage.completion_tokens == 5
    assert seen.take({"usage": None}) is False  # no choices but a usage key: held, not relayed
    assert seen.finish_reason == "length"


def test_a_kept_refusal_replayed_as_a_stream_still_says_it() -> None:
    """A whole answer that is a refusal (content null, `refusal` set) is kept by the cache;
    replayed to a streaming request its chunks carried no refusal: an empty answer."""
    refusal = "I can't help with that."
    body = {
        "id": "c1",
        "created": 1,
        "model": "m",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": None, "refusal": refusal},
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8, "cost": 0.0},
    }
    frames = answer_as_chunks(body, include_usage=False)
    said = "".join(f["choices"][0]["delta"].get("refusal") or "" for f in frames)
    assert said == refusal
    assert frames[-1]["choices"][0]["finish_reason"] == "stop"


def test_a_kept_answer_replayed_as_a_stream_reads_back_as_that_answer_in_the_sdk() -> None:
    """A kept (or judged) whole answer replayed as a stream, read by the openai SDK's own stream
    helper, is the answer: every choice's text, refusal and tool calls, no content where it had
    none (a tool call or a refusal said content "" in its replay), and its system_fingerprint on
    every chunk, as OpenAI's chunks carry it."""
    from openai.lib.streaming.chat import ChatCompletionStreamState
    from openai.types.chat import ChatCompletionChunk

    calls = [{"id": "call_1", "type": "function", "function": {"name": "f", "arguments": '{"a": 1}'}}]
    messages = [
        {"role": "assistant", "content": "Hello", "refusal": None},
        {"role": "assistant", "content": None, "refusal": "I can't help with that."},
        {"role": "assistant", "content": None, "tool_calls": calls},
    ]
    body = {
        "id": "c1",
        "object": "chat.completion",
        "created": 1,
        "model": "m",
        "system_fingerprint": "fp_1",
        "choices": [
            {"index": i, "message": message, "logprobs": None, "finish_reason": "stop"}
            for i, message in enumerate(messages)
        ],
        "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8, "cost": 0.0},
    }
    frames = answer_as_chunks(body, include_usage=True)
    assert {f.get("system_fingerprint") for f in frames} == {"fp_1"}
    state = ChatCompletionStreamState()
    for frame in frames:
        state.handle_chunk(ChatCompletionChunk.model_validate(frame))
    final = state.get_final_completion()
    assert final.system_fingerprint == "fp_1"
    read = [choice.message.model_dump(include={"content", "refusal"}) for choice in final.choices]
    assert read == [{"content": m["content"], "refusal": m.get("refusal")} for m in messages]
    (call,) = final.choices[2].message.tool_calls or []
    assert (call.id, call.function.name, call.function.arguments) == ("call_1", "f", '{"a": 1}')


def test_an_answer_says_the_gateways_cost_not_its_upstreams() -> None:
    """OpenRouter's usage says what it charged: `cost` and `cost_details` (its upstream's cost
    for BYOK keys). The answer's `cost` was the gateway's, but `cost_details` went on to the
    client beside it: the seller's cost basis, and a second cost that disagrees with `cost` (a
    client adding it up counts what the key was not charged). A cache hit already left it out."""
    upstream = {
        "prompt_tokens": 10,
        "completion_tokens": 2,
        "total_tokens": 12,
        "cost": 0.000004,
        "is_byok": False,
        "cost_details": {"upstream_inference_cost": 0.000003},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    usage = Usage(10, 2)
    body = {
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "42"}}],
        "usage": dict(upstream),
    }
    whole = price_answer(body, "m", usage, Decimal("0.00002"), Decimal("0.0001"))["usage"]
    streamed = usage_chunk(
        {"id": "c", "choices": [], "usage": dict(upstream)}, "m", usage, Decimal("0.00002"), Decimal("0.0001")
    )["usage"]
    for said in (whole, streamed):
        assert said["cost"] == 0.00002 and said["baseline_cost"] == 0.0001
        assert "cost_details" not in said
        assert said["completion_tokens_details"] == {"reasoning_tokens": 0}  # details kept
