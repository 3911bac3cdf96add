"""The Messages wire's answers as the gateway reads them from Anthropic: a Messages response
or event stream becomes an internal (OpenAI chat) answer, with its usage (cache reads and
writes, one-hour writes apart), stop reason and matched stop sequence. The requests going
the other way are wire/anthropic_upstream.py's.

The request's whitespace-only stop sequences, which Messages refuses and so were not sent
(wire/anthropic_upstream.local_stops), are applied here: the text ends where the first of them
ends in it, as an OpenAI model would have stopped there (finish_reason "stop", the sequence
itself as stop_reason, nothing after it: no later text, no later tool call). The upstream went
on generating, and its usage (billed) says so.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

import orjson

from faregate.errors import UpstreamFailure
from faregate.types import JSON, Usage
from faregate.wire.anthropic_replies import FINISH_REASONS
from faregate.wire.usage import token_count, usage_json

# The upstream's input count from message_start, on the first chunk until the relay takes it off
# (routing.opened_stream.OpenedStream.upstream_input_tokens): a Messages client's message_start
# says it, as Anthropic's did; no client sees the field.
INPUT_TOKENS = "_input_tokens"


def usage_of_message(usage: Any) -> Usage | None:
    """Internal usage from Anthropic's: prompt tokens are input + cache writes + cache reads."""
    if not isinstance(usage, dict):
        return None
    inp, out = token_count(usage.get("input_tokens")), token_count(usage.get("output_tokens"))
    if inp is None or out is None:
        return None
    write = token_count(usage.get("cache_creation_input_tokens")) or 0
    read = token_count(usage.get("cache_read_input_tokens")) or 0
    by_ttl = usage.get("cache_creation")
    write_1h = (token_count(by_ttl.get("ephemeral_1h_input_tokens")) or 0) if isinstance(by_ttl, dict) else 0
    return Usage(
        inp + write + read,
        out,
        cache_read_tokens=read,
        cache_write_tokens=write,
        cache_write_1h_tokens=min(write_1h, write),
    )


class TextCut:
    """An answer's text, piece by piece, up to where the first of `stops` ends in it: the text
    that can be sent now, holding back an end that may yet become a stop sequence."""

    __slots__ = ("held", "matched", "stops")

    def __init__(self, stops: tuple[str, ...]) -> None:
        self.stops = stops
        self.held = ""
        self.matched: str | None = None  # the stop sequence the text ended at

    def feed(self, piece: str) -> str:
        if self.matched is not None:
            return ""
        if not self.stops:
            return piece
        text = self.held + piece
        found = [(at + len(stop), at, stop) for stop in self.stops if (at := text.find(stop)) >= 0]
        if found:
            # The one a model emitting the text would meet first: the first to end.
            _, at, self.matched = min(found, key=lambda hit: (hit[0], hit[1]))
            self.held = ""
            return text[:at]
        longest = min(len(text), max(map(len, self.stops)) - 1)
        keep = next((n for n in range(longest, 0, -1) if any(s.startswith(text[-n:]) for s in self.stops)), 0)
        self.held = text[len(text) - keep :]
        return text[: len(text) - keep]

    def flush(self) -> str:
        """The text held back, when what follows can no longer make it a stop sequence."""
        held, self.held = self.held, ""
        return held


def message_to_completion(message: JSON, stops: tuple[str, ...] = ()) -> tuple[JSON, Usage | None]:
    """The internal (OpenAI chat) answer for a Messages response, and its usage; its text ends at
    the first of `stops` (the request's whitespace-only stop sequences, not sent)."""
    text: list[str] = []
    calls: list[JSON] = []
    cut = TextCut(stops)
    said = False
    for block in message.get("content") or ():
        kind = block.get("type") if isinstance(block, dict) else None
        if cut.matched is not None:
            break
        if kind == "text":
            said = True
            text.append(cut.feed(str(block.get("text", ""))))
        elif kind == "tool_use":
            text.append(cut.flush())
            arguments = orjson.dumps(block.get("input") or {}).decode()
            calls.append(
                {
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": arguments},
                }
            )
        # thinking blocks are never asked for (wire/anthropic.py refuses `thinking`): skipped.
    text.append(cut.flush())
    reply: JSON = {"role": "assistant", "content": "".join(text) if said or not calls else None}
    if calls:
        reply["tool_calls"] = calls
    choice: JSON = {"index": 0, "message": reply, "logprobs": None, "finish_reason": _finish(message)}
    if cut.matched is not None:
        choice.update(finish_reason="stop", stop_reason=cut.matched)
    elif message.get("stop_reason") == "stop_sequence" and isinstance(message.get("stop_sequence"), str):
        choice["stop_reason"] = message["stop_sequence"]
    usage = usage_of_message(message.get("usage"))
    body: JSON = {
        "id": str(message.get("id") or ""),
        "object": "chat.completion",
        "created": int(time.time()),
        "model": str(message.get("model") or ""),
        "choices": [choice],
    }
    if usage is not None:
        body["usage"] = usage_json(usage)
    return body, usage


def _finish(message: JSON) -> str | None:
    reason = message.get("stop_reason")
    return None if reason is None else FINISH_REASONS.get(str(reason), "stop")


async def chat_chunks(events: AsyncIterable[JSON], stops: tuple[str, ...] = ()) -> AsyncIterator[JSON]:
    """Internal chat chunks for a Messages event stream: a role chunk at message_start (with its
    input count under INPUT_TOKENS), content
    and tool-call deltas, a finish chunk at message_delta and then a usage chunk (input and
    cache counts from message_start, raised by message_delta's cumulative ones, never lowered). An
    `error` event raises UpstreamFailure (overloaded_error and api_error are worth a fallback).
    The text ends at the first of `stops` (the request's whitespace-only stop sequences, not
    sent); the stream is read to its end all the same, for the usage the upstream bills."""
    head: JSON = {"object": "chat.completion.chunk", "created": int(time.time())}
    cut = TextCut(stops)
    usage: JSON = {}
    tool_index: dict[int, int] = {}  # Messages block index -> chat tool call index
    # A tool block's input from its content_block_start, until a non-empty input_json_delta
    # comes: a tool without parameters streams none (or one empty piece), and the chat wire's
    # arguments must still be JSON ("{}", as the whole answer says), not "".
    unstreamed: dict[int, Any] = {}
    # message_start's usage, sent as a usage chunk just before the first content: exact for the
    # input side (cache reads and writes priced as such) should the stream be cut after content
    # (message_delta's replaces it at the end). Not before: a stream that fails before any
    # content is a failed attempt, not billed for its prompt.
    started: JSON | None = None
    async for event in events:
        kind = event.get("type")
        if kind == "message_start":
            message = event.get("message") or {}
            head.update(id=str(message.get("id") or ""), model=str(message.get("model") or ""))
            usage.update(message.get("usage") or {})
            counted_at_start = usage_of_message(usage)
            if counted_at_start is not None:
                started = {**head, "choices": [], "usage": usage_json(counted_at_start)}
            role = _chunk(head, {"role": "assistant", "content": ""})
            said = token_count(usage.get("input_tokens"))
            if said:
                role[INPUT_TOKENS] = said
            yield role
        elif kind == "content_block_start":
            block = event.get("content_block") or {}
            if block.get("type") == "tool_use" and cut.matched is None:
                if held := cut.flush():
                    yield _chunk(head, {"content": held})
                if started is not None:
                    yield started
                    started = None
                index = tool_index[event.get("index", 0)] = len(tool_index)
                unstreamed[event.get("index", 0)] = block.get("input")
                call = {
                    "index": index,
                    "id": block.get("id"),
                    "type": "function",
                    "function": {"name": block.get("name"), "arguments": ""},
                }
                yield _chunk(head, {"tool_calls": [call]})
        elif kind == "content_block_delta":
            delta = event.get("delta") or {}
            if delta.get("type") == "text_delta":
                text = cut.feed(str(delta.get("text", "")))
                if started is not None and text.strip():
                    yield started
                    started = None
                if text or not stops:
                    yield _chunk(head, {"content": text})
            elif delta.get("type") == "input_json_delta" and event.get("index") in tool_index:
                if delta.get("partial_json"):
                    unstreamed.pop(event["index"], None)
                call = {
                    "index": tool_index[event["index"]],
                    "function": {"arguments": str(delta.get("partial_json", ""))},
                }
                yield _chunk(head, {"tool_calls": [call]})
        elif kind == "content_block_stop" and event.get("index", 0) in unstreamed:
            block_index = event.get("index", 0)
            arguments = orjson.dumps(unstreamed.pop(block_index) or {}).decode()
            call = {"index": tool_index[block_index], "function": {"arguments": arguments}}
            yield _chunk(head, {"tool_calls": [call]})
        elif kind == "message_delta":
            for name, value in (event.get("usage") or {}).items():
                # Counts here are cumulative, so never below message_start's: a Messages upstream
                # that sends the input side as 0 here (sglang, some proxies) has not un-read the
                # prompt, and a smaller count must not make the prompt free.
                before = token_count(usage.get(name))
                after = token_count(value)
                if value is not None and (after is None or before is None or after >= before):
                    usage[name] = value
            if held := cut.flush():
                yield _chunk(head, {"content": held})
            delta = event.get("delta") or {}
            finish = _finish(delta) or "stop"
            extra = (
                {"stop_reason": delta["stop_sequence"]}
                if delta.get("stop_reason") == "stop_sequence" and delta.get("stop_sequence")
                else {}
            )
            if cut.matched is not None:
                finish, extra = "stop", {"stop_reason": cut.matched}
            yield _chunk(head, {}, finish, **extra)
            counted = usage_of_message(usage)
            if counted is not None:
                yield {**head, "choices": [], "usage": usage_json(counted)}
        elif kind == "error":
            error = event.get("error") or {}
            raise UpstreamFailure(
                "server_error", f"error event: {error.get('type')}: {error.get('message')}", body=event
            )
        elif kind == "message_stop":
            return


def _chunk(head: JSON, delta: JSON, finish: str | None = None, **extra: Any) -> JSON:
    choice: JSON = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish, **extra}
    return {**head, "choices": [choice]}
