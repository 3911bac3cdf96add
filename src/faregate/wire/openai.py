"""The OpenAI chat-completions wire format: every shape of its bodies, chunks, events and errors.

Three groups, in the order a request meets them:
- the upstream call: the body sent upstream (`upstream_body`, `without_streaming`);
- reading what an upstream sent, a whole answer or one stream chunk: `usage_of`,
  `finish_reason`, `chunk_has_content`, `answer_is_empty`, `answer_text`, `error_message`;
  a relayed stream is read chunk by chunk into a `StreamedAnswer`;
- writing what the client receives: the priced body (`price_answer`), relayed chunks
  (`relay_frame`), the usage chunk with the cost (`usage_chunk`), SSE frames and `[DONE]`,
  the error body and the mid-stream error event, a kept answer served again (`free_answer`), and
  an answer replayed as a stream (`answer_as_chunks`, from the cache or a judged cascade step)
  or kept from one (`StreamedAnswer.answer`).

Invariants: nothing outside this module indexes `choices`, `delta`, `message` or `usage` of a
body or a chunk; token counts come from `usage_of` only (ints, or integral floats, never
negative, never bool); money reaches JSON as a float here and nowhere else (`usage_json`).
The internal answer (`Completion.body`) and stream chunks are kept in this format, so today a
Completion passes through untouched; a second wire format translates to and from them.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import orjson

from faregate.errors import FaregateError, UpstreamFailure
from faregate.types import GATEWAY_FIELDS, JSON, Usage
from faregate.wire.tool_calls import StreamedCalls, with_call_ids
from faregate.wire.usage import usage_from
from faregate.wire.usage import usage_json as usage_with_parts

DONE = b"data: [DONE]\n\n"
# A finish that ends a turn with calls for the client to make, not with text.
TOOL_FINISHES = frozenset({"tool_calls", "function_call"})
# Answers a client can be served later (from the cache): a stream cut short is not one.
WHOLE_FINISHES = frozenset({"stop", "length"})
# A stream's finish reasons when it made calls: a whole answer too.
CALL_FINISHES = WHOLE_FINISHES | TOOL_FINISHES
_STREAM_FIELDS = frozenset({"stream", "stream_options"})


# -- the upstream call ---------------------------------------------------------------------------


def upstream_body(
    body: JSON, model: str, max_output: int | None, stream: bool, limit_field: str = "max_tokens"
) -> JSON:
    """The client's body as one upstream receives it: the gateway's own fields removed, its model
    name, the token limits (both at the one in force) capped at the model's max output, and for a
    stream the usage asked for (streams are billed from the provider's own numbers).
    `limit_field`: the field the provider reads the limit from (ProviderSettings), which always
    carries the limit in force; for max_completion_tokens the limit goes there alone, as OpenAI's
    reasoning models refuse max_tokens (which the Messages and Responses translations name it)."""
    out = {k: v for k, v in body.items() if k not in GATEWAY_FIELDS}
    out["model"] = model
    # The limit in force is max_completion_tokens when given (OpenAI's rule, and what the budget
    # hold covers); an upstream that reads only max_tokens is never sent a larger one.
    limit = out.get("max_completion_tokens")
    if limit is None:
        limit = out.get("max_tokens")
    if limit is not None and max_output:
        limit = min(limit, max_output)
    if limit_field == "max_completion_tokens":
        out.pop("max_tokens", None)
        if limit is not None:
            out["max_completion_tokens"] = limit
    elif limit is not None:
        # The provider reads max_tokens: it always gets the limit there, even when the client
        # named only max_completion_tokens (which it would ignore, leaving the hold uncovered).
        out["max_tokens"] = limit
        if out.get("max_completion_tokens") is not None:
            out["max_completion_tokens"] = limit
    if stream:
        out["stream_options"] = {**(out.get("stream_options") or {}), "include_usage": True}
    return out


def without_fields(body: JSON, names: frozenset[str]) -> JSON:
    """`body` without the fields `names`, wherever the chat wire could hold them: at the top, in a
    message, a content part, a tool call or a tool (a prompt-cache mark sits on any of these).
    What is shared with the client's body is copied, never changed."""
    if not names:
        return body

    def clean(item: Any) -> Any:
        return {k: v for k, v in item.items() if k not in names} if isinstance(item, dict) else item

    out: JSON = clean(body)
    messages = out.get("messages")
    if isinstance(messages, list):
        cleaned = []
        for message in messages:
            message = clean(message)
            if isinstance(message, dict):
                for key in ("content", "tool_calls"):
                    if isinstance(message.get(key), list):
                        message[key] = [clean(part) for part in message[key]]
            cleaned.append(message)
        out["messages"] = cleaned
    if isinstance(out.get("tools"), list):
        out["tools"] = [clean(tool) for tool in out["tools"]]
    return out


def without_streaming(body: JSON) -> JSON:
    """The body of a whole (non-streaming) call for the same question."""
    return {k: v for k, v in body.items() if k not in _STREAM_FIELDS}


# -- reading an answer or a chunk ----------------------------------------------------------------


def usage_of(message: Mapping[str, Any]) -> Usage | None:
    """The token usage of a body or a chunk (prompt-cache counts included), or None if absent or
    malformed: `wire.usage` reads it, the shape every wire's translation writes."""
    return usage_from(message)


def finish_reason(message: Mapping[str, Any]) -> str | None:
    """The first finish reason among the choices of a body or a chunk."""
    for choice in message.get("choices") or ():
        reason = choice.get("finish_reason")
        if reason:
            return str(reason)
    return None


# Finish reasons that say an answer did not come out whole: its provider failed mid-answer
# (OpenRouter's "error") or a content filter cut it.
FAILED_FINISHES = frozenset({"error", "content_filter"})


def ended_unfinished(body: JSON) -> bool:
    """Whether a whole answer's provider said a choice of it did not come out whole."""
    return any(choice.get("finish_reason") in FAILED_FINISHES for choice in body.get("choices") or ())


def is_usage_only(chunk: JSON) -> bool:
    """The trailing chunk that carries the usage and no choice."""
    return not chunk.get("choices") and "usage" in chunk


def unreadable_choices(body: JSON, part: str) -> str | None:
    """Why the choices of an upstream's body or chunk cannot be read (`part`: "message" for a
    body, "delta" for a chunk), or None: every reader here takes `choices` for a list of objects,
    each one's message or delta for an object, its tool calls for objects whose function is an
    object. Valid JSON in another shape is a bad response to fall back from, not a crash."""
    choices = body.get("choices")
    if choices is None:
        return None
    if type(choices) is not list:
        return "choices is not a list"
    for index, choice in enumerate(choices):
        if type(choice) is not dict:
            return f"choice {index} is not an object"
        inner = choice.get(part)
        if inner is None:
            continue
        if type(inner) is not dict:
            return f"choice {index}'s {part} is not an object"
        calls = inner.get("tool_calls")
        if calls is not None and (
            type(calls) is not list
            or any(
                type(call) is not dict or not isinstance(call.get("function") or {}, dict) for call in calls
            )
        ):
            return f"choice {index}'s tool_calls is not a list of objects"
    return None


def chunk_has_content(chunk: JSON) -> bool:
    """A chunk that carries something the user can see: non-blank text, a tool call, a refusal."""
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        content = delta.get("content")
        if isinstance(content, str) and content.strip():
            return True
        if (
            delta.get("tool_calls")
            or delta.get("function_call")
            or delta.get("refusal")
            or delta.get("audio")
        ):
            return True
    return False


def answer_is_empty(body: JSON) -> bool:
    """A 200 that carries no usable answer: no choices, or only blank text and no tool call."""
    choices = body.get("choices")
    if not choices:
        return True
    for choice in choices:
        message = choice.get("message") or {}
        if message.get("tool_calls") or message.get("function_call"):
            return False
        content = message.get("content")
        if isinstance(content, str) and content.strip():
            return False
        if isinstance(content, list) and content:
            return False
        if message.get("refusal"):
            return False
        if message.get("audio"):
            return False
    return True


def cut_at_limit(reason: str | None) -> bool:
    """Did the answer stop at the client's max_tokens? Then it is an answer, however blank: a
    reasoning model may spend the whole allowance on its reasoning (OpenAI's own models then
    answer blank with "length"), and another call would reach the same limit."""
    return reason == "length"


def answer_text(body: JSON) -> str:
    """The text of a whole answer, tool calls' names and arguments included (what a judge reads
    and what an estimate counts)."""
    parts: list[str] = []
    for choice in body.get("choices") or ():
        message = choice.get("message") or {}
        content = message.get("content")
        if isinstance(content, str):
            parts.append(content)
        _call_text(message, parts)
    return "".join(parts)


# Where reasoning models put the reasoning they are billed for as output: DeepSeek, Qwen, vLLM
# ("reasoning_content") and OpenRouter ("reasoning"). Not part of the answer, but billed.
REASONING_FIELDS = ("reasoning_content", "reasoning")


def billed_text(body: JSON) -> str:
    """The output text a provider bills a whole answer for, when it reports no usage: the answer's
    text (`answer_text`) and its reasoning."""
    parts = [answer_text(body)]
    for choice in body.get("choices") or ():
        _reasoning_text(choice.get("message") or {}, parts)
    return "".join(parts)


def _reasoning_text(holder: JSON, parts: list[str]) -> None:
    for name in REASONING_FIELDS:
        value = holder.get(name)
        if isinstance(value, str):
            parts.append(value)


def _call_text(holder: JSON, parts: list[str]) -> bool:
    """Add the names and arguments of the calls in a message or delta to `parts`: its tool calls,
    and the functions API's one call (before tool_calls), billed as output alike. Any calls?"""
    calls = holder.get("tool_calls") or ()
    for call in calls:
        fn = call.get("function") or {}
        parts.append(str(fn.get("name") or ""))
        parts.append(str(fn.get("arguments") or ""))
    legacy = holder.get("function_call")
    if isinstance(legacy, dict):
        parts.append(str(legacy.get("name") or ""))
        parts.append(str(legacy.get("arguments") or ""))
        return True
    return bool(calls)


def error_message(body: JSON) -> str | None:
    """The message of an error body or error chunk: OpenAI's {"error": {"message"}} and the
    variants other vendors send ({"error": "text"}, {"msg"}, {"detail"})."""
    error = body.get("error", body)
    if isinstance(error, dict):
        for key in ("message", "msg", "detail"):
            value = error.get(key)
            if isinstance(value, str) and value:
                return value
        return None
    if isinstance(error, str) and error:
        return error
    return None


# The status an error sent after a 2xx head stands for, by the name it gives: Anthropic's error
# types (the status each is sent with otherwise, by its errors table), and the codes of OpenAI's
# error objects (a Responses stream's `error` event or failed Response).
_STATUS_OF_ERROR_NAME = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "rate_limit_exceeded": 429,
    "api_error": 500,
    "server_error": 500,
    "server_is_overloaded": 503,
    "timeout_error": 504,
    "overloaded_error": 529,
}


def error_status(error: object) -> int | None:
    """The HTTP status an upstream's error object names, if any: OpenRouter's `code` is one (429,
    502...); else its `code` or `type` by name (_STATUS_OF_ERROR_NAME)."""
    if not isinstance(error, dict):
        return None
    code = error.get("code")
    if type(code) is int and 400 <= code < 600:
        return code
    for name in (code, error.get("type")):
        if isinstance(name, str) and name in _STATUS_OF_ERROR_NAME:
            return _STATUS_OF_ERROR_NAME[name]
    return None


def stream_error(chunk: JSON) -> str | None:
    """For an error sent in place of a chunk, its message ("" when it gives none); else None."""
    if not chunk.get("error"):
        return None
    return error_message(chunk) or ""


def error_code_param(body: JSON | None) -> tuple[str | None, str | None]:
    """The `code` and `param` of an upstream's error body, when it gives them as text."""
    error = body.get("error") if body is not None else None
    if not isinstance(error, dict):
        return None, None
    code, param = error.get("code"), error.get("param")
    return (code if isinstance(code, str) else None), (param if isinstance(param, str) else None)


# What every chunk of one stream says alike (the usage-only chunk the gateway writes too).
_STREAM_IDENTITY = ("id", "object", "created", "system_fingerprint")


def _identity(chunk: JSON) -> JSON:
    return {name: chunk[name] for name in _STREAM_IDENTITY if name in chunk}


class StreamedAnswer:
    """What a relayed stream has carried so far: its first chunk (id, created), its text (tool
    calls' names and arguments included) and its reasoning (both for an estimate when no usage
    comes), whether it made tool calls, its finish reason and usage, and the trailing usage-only
    chunk, held back so the cost can be added to it. `text` holds every choice's text in arrival
    order; `plain_text` says whether only choice 0 came, with text and calls alone: no logprobs,
    refusal or audio (else the stream cannot be kept as an answer). Tool calls are mended in place
    as they are read, for every client wire: an id and an index for each, and "{}" for one that
    ends without arguments (wire/tool_calls.py),
    and their deltas kept to assemble them into the answer. `ended`: has every choice (n > 1
    stream side by side) said its finish reason?"""

    __slots__ = (
        "call_deltas",
        "calls",
        "finish_reason",
        "finished",
        "first",
        "last_choice",
        "plain_text",
        "reasoning",
        "reasoning_at_usage",
        "stop_string",
        "text",
        "text_at_usage",
        "tool_calls",
        "usage",
        "usage_chunk",
        "usage_final",
    )

    def __init__(self) -> None:
        self.first: JSON | None = None
        self.text: list[str] = []
        # The reasoning relayed (REASONING_FIELDS): not the answer, but billed as output.
        self.reasoning: list[str] = []
        self.tool_calls = False
        self.plain_text = True
        self.finish_reason: str | None = None
        # The indexes of the choices that said their finish reason, and the highest index seen.
        self.finished: set[Any] = set()
        self.last_choice = 0
        # The stop string the upstream said it matched (the finishing choice's `stop_reason`).
        self.stop_string: Any = None
        self.usage: Usage | None = None
        self.usage_chunk: JSON | None = None
        # Made at the first tool call: mends calls without an id or index (wire/tool_calls.py).
        self.calls: StreamedCalls | None = None
        # Each delta with calls (tool calls or the functions API's one), as mended, and the span
        # of `text` its names and arguments took (not the answer's content).
        self.call_deltas: list[tuple[int, int, JSON]] = []
        # Was the usage reported at or after the finish (the whole answer's), or before it (exact
        # up to there: Anthropic's message_start, a server that counts as it goes)? And how much
        # text and reasoning had come by then: what follows it is not in its count.
        self.usage_final = False
        self.text_at_usage = 0
        self.reasoning_at_usage = 0

    def take(self, chunk: JSON) -> bool:
        """Read one chunk; False for the usage-only chunk (held back, not to be relayed)."""
        # usage_of, is_usage_only and finish_reason inlined, in one pass over the choices: this
        # runs for every chunk of every stream (bench/README.md, CPU per relayed stream).
        choices = chunk.get("choices")
        usage = None
        if isinstance(chunk.get("usage"), dict):  # usage_of is None for anything else
            usage = usage_of(chunk)
            if usage is not None:
                self.usage = usage
            if usage is not None and choices:
                # On a chunk with choices (an upstream that sends it on its finish, or on every
                # chunk): moved to the usage-only chunk that closes the stream, as OpenAI sends
                # it, details kept; relayed here too, a client adding up usage counted it twice.
                self.usage_chunk = {
                    **_identity(chunk),
                    "choices": [],
                    "usage": chunk["usage"],
                }
                chunk["usage"] = None
        if not choices and "usage" in chunk:
            self.usage_chunk = chunk
            if usage is not None:
                self._usage_at()
            return False
        if self.first is None:
            self.first = chunk
        reason: str | None = None
        text = self.text
        for choice in choices or ():
            delta = choice.get("delta") or {}
            content = delta.get("content")
            if isinstance(content, str):
                text.append(content)
            tool_calls = delta.get("tool_calls")
            if tool_calls:
                mending = self.calls
                if mending is None:
                    mending = self.calls = StreamedCalls()
                mending.mend(choice.get("index", 0), tool_calls)
            found = choice.get("finish_reason")
            if found and self.calls is not None:
                # Calls that ended without argument text get "{}" with the finish (mended already).
                unargued = self.calls.unargued(choice.get("index", 0))
                if unargued:
                    tool_calls = [*(tool_calls or ()), *unargued]
                    delta = choice["delta"] = {**delta, "tool_calls": tool_calls}
            if tool_calls or delta.get("function_call"):
                start = len(text)
                self.tool_calls = _call_text(delta, text) or self.tool_calls
                self.call_deltas.append((start, len(text), _calls_of(delta)))
            index = choice.get("index")
            if index or choice.get("logprobs") or delta.get("refusal") or delta.get("audio"):
                self.plain_text = False  # n > 1, logprobs, a refusal or audio: not one text answer
                if type(index) is int and index > self.last_choice:
                    self.last_choice = index
            if "reasoning_content" in delta or "reasoning" in delta:
                _reasoning_text(delta, self.reasoning)
            if found:
                self.finished.add(index or 0)
                if reason is None:
                    reason = str(found)
                    self.stop_string = choice.get("stop_reason")
        if reason:
            self.finish_reason = reason
        if usage is not None:
            self._usage_at()
        return True

    def ended(self) -> bool:
        """Has every choice said its finish reason? A stream that ends before is a cut one."""
        return self.finish_reason is not None and len(self.finished) > self.last_choice

    def _usage_at(self) -> None:
        """Mark where the usage just taken was reported (after this chunk's text)."""
        self.usage_final = self.finish_reason is not None
        self.text_at_usage = len(self.text)
        self.reasoning_at_usage = len(self.reasoning)

    def answer(self, model: str, usage: Usage) -> JSON | None:
        """The chat.completion this stream amounts to, if it is a whole answer of text and calls
        (so a later request, streaming or not, can be served from it, as from a whole answer with
        the same calls); None for a cut stream, or a stream of several choices or with more than
        text and calls (logprobs, a refusal, audio)."""
        finishes = CALL_FINISHES if self.tool_calls else WHOLE_FINISHES
        if not self.plain_text or self.finish_reason not in finishes:
            return None
        first = self.first or {}
        message: JSON = {"role": "assistant", "content": "".join(self.text), "refusal": None}
        if self.tool_calls:
            message.update(_assembled_calls(self.text, self.call_deltas))
        return {
            "id": first.get("id", "chatcmpl-cached"),
            "object": "chat.completion",
            "created": first.get("created", int(time.time())),
            "model": model,
            **{name: first[name] for name in ("system_fingerprint",) if first.get(name)},
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "logprobs": None,
                    "finish_reason": self.finish_reason,
                    # Kept for a Messages client, told `stop_sequence` and which one.
                    **({"stop_reason": self.stop_string} if self.stop_string is not None else {}),
                }
            ],
            "usage": {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "total_tokens": usage.total_tokens,
                # The output split the upstream reported (reasoning tokens), replayed on a hit.
                **_output_details(self.usage_chunk),
            },
        }


def _output_details(usage_chunk: JSON | None) -> JSON:
    """The completion_tokens_details of a stream's usage chunk, as a field (none: nothing)."""
    usage = usage_chunk.get("usage") if usage_chunk is not None else None
    details = usage.get("completion_tokens_details") if isinstance(usage, dict) else None
    return {"completion_tokens_details": details} if isinstance(details, dict) else {}


def _calls_of(delta: JSON) -> JSON:
    """A delta's calls, copied: the deltas go on to the client's wire after this."""
    calls: JSON = {}
    tool_calls = delta.get("tool_calls")
    if tool_calls:
        calls["tool_calls"] = [{**call, "function": dict(call.get("function") or {})} for call in tool_calls]
    legacy = delta.get("function_call")
    if isinstance(legacy, dict):
        calls["function_call"] = dict(legacy)
    return calls


def _assembled_calls(text: list[str], deltas: list[tuple[int, int, JSON]]) -> JSON:
    """The message fields a stream's calls amount to, as the SDK's stream helper adds them up
    (the first id and type; names and arguments joined), and its content: the text outside the
    calls' names and arguments, null when there is none (as a whole answer with calls says)."""
    tool_calls: dict[int, JSON] = {}
    legacy: JSON | None = None
    spans: set[int] = set()
    for start, end, delta in deltas:
        spans.update(range(start, end))
        for call in delta.get("tool_calls") or ():
            assembled = tool_calls.setdefault(
                call["index"], {"id": None, "type": "function", "function": {"name": "", "arguments": ""}}
            )
            assembled["id"] = assembled["id"] or call.get("id")
            assembled["type"] = call.get("type") or assembled["type"]
            _join_call(assembled["function"], call["function"])
        if "function_call" in delta:
            legacy = legacy or {"name": "", "arguments": ""}
            _join_call(legacy, delta["function_call"])
    content = "".join(piece for i, piece in enumerate(text) if i not in spans)
    fields: JSON = {"content": content or None}
    if tool_calls:
        fields["tool_calls"] = [tool_calls[index] for index in sorted(tool_calls)]
    if legacy is not None:
        fields["function_call"] = legacy
    return fields


def _join_call(assembled: JSON, function: JSON) -> None:
    for name in ("name", "arguments"):
        piece = function.get(name)
        if isinstance(piece, str):
            assembled[name] += piece


# -- writing what the client receives ------------------------------------------------------------


# What an upstream says it charged beside its own `cost` (OpenRouter's cost_details): the seller's
# cost, not the client's, which `cost` says.
_UPSTREAM_COST_FIELDS = ("cost_details",)


def usage_json(upstream: Any, usage: Usage, cost: Decimal, baseline: Decimal) -> JSON:
    """The `usage` object a client sees: the upstream's (details kept, its own cost not) with our
    counts, the cost and the baseline cost (what the baseline model would have cost for the same
    usage)."""
    out: JSON = dict(upstream) if isinstance(upstream, dict) else {}
    for name in _UPSTREAM_COST_FIELDS:
        out.pop(name, None)
    out.update(
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        total_tokens=usage.total_tokens,
        cost=float(cost),
        baseline_cost=float(baseline),
    )
    if usage.estimated:
        out["estimated"] = True
    return out


def price_answer(body: JSON, model: str, usage: Usage, cost: Decimal, baseline: Decimal) -> JSON:
    """A whole answer as the client sees it: the catalog's model name, our usage with the cost
    and the baseline cost."""
    body["model"] = model
    body["usage"] = usage_json(body.get("usage"), usage, cost, baseline)
    return body


def relay_frame(chunk: JSON, model: str, include_usage: bool) -> bytes:
    """A chunk's SSE frame as the client sees it: the catalog's model name; the usage field only
    if the client asked for it."""
    chunk["model"] = model
    if not include_usage:
        chunk.pop("usage", None)
    return sse_frame(chunk)


class ChatStreamFrames:
    """A stream's frames as a chat client receives them (the chat wire's encoder in
    server/client_wires.py): each chunk as `relay_frame` writes it, then the priced usage chunk
    (when asked for) and `[DONE]`, or the error event for a stream that failed after content."""

    __slots__ = ("include_usage", "model")

    def __init__(self, model: str, include_usage: bool) -> None:
        self.model = model
        self.include_usage = include_usage

    def chunk(self, chunk: JSON) -> bytes:
        # relay_frame's body, inlined: it runs for every chunk of every chat stream, and a call
        # through a partial or a second function costs more than the work itself.
        chunk["model"] = self.model
        if not self.include_usage:
            chunk.pop("usage", None)
        return sse_frame(chunk)

    def frames(self, chunks: list[JSON]) -> bytes:
        """`chunk` of each, joined, without a call per chunk and with one copy of each frame's
        bytes (not the three of `sse_frame`'s concatenations): it runs for every read relayed."""
        model, include_usage, dumps = self.model, self.include_usage, orjson.dumps
        parts: list[bytes] = []
        for chunk in chunks:
            chunk["model"] = model
            if not include_usage:
                chunk.pop("usage", None)
            parts += (b"data: ", dumps(chunk), b"\n\n")
        return b"".join(parts)

    def close(self, usage_chunk: JSON | None) -> bytes:
        if usage_chunk is None or not self.include_usage:
            return DONE
        return sse_frame(usage_chunk) + DONE

    def fail(self, failure: UpstreamFailure) -> bytes:
        return error_event(failure.detail, "stream_interrupted")


def usage_chunk(
    held: JSON | None, model: str, usage: Usage, cost: Decimal, baseline: Decimal, first: JSON | None = None
) -> JSON:
    """The stream's usage-only chunk with the cost and the baseline cost: the upstream's, or a new
    one if it sent none, which carries the id, created and fingerprint of the stream's `first`
    chunk (every chunk of one stream shares them; a client groups chunks by id), those it gives
    (Azure's first chunk, its prompt filter's, says id "" and created 0)."""
    chunk: JSON = held or {
        "id": "chatcmpl-faregate",
        "object": "chat.completion.chunk",
        "created": int(time.time()),
        **{name: value for name, value in _identity(first or {}).items() if value},
        "choices": [],
    }
    chunk["model"] = model
    chunk["usage"] = usage_json(chunk.get("usage"), usage, cost, baseline)
    return chunk


def free_answer(body: JSON, usage: Usage, baseline: Decimal) -> JSON:
    """A kept answer served again (a cache hit): the same body, its usage at no cost (and what it
    would have cost on the baseline model: the hit's saving), with its
    prompt-cache and audio parts (what the Messages and Responses wires read their input split
    from: without them a hit told every prompt token as uncached input), and the answer's own
    output split (completion_tokens_details: a reasoning model's reasoning_tokens), not the rest
    of what its upstream said (its own cost)."""
    replayed = usage_with_parts(usage)
    kept = body.get("usage")
    details = kept.get("completion_tokens_details") if isinstance(kept, dict) else None
    if isinstance(details, dict):
        replayed["completion_tokens_details"] = {
            **details,
            **(replayed.get("completion_tokens_details") or {}),
        }
    return {**body, "usage": usage_json(replayed, usage, Decimal(0), baseline)}


def answer_as_chunks(body: JSON, include_usage: bool) -> list[JSON]:
    """A whole, priced chat.completion replayed as the chunks of a stream: per choice a role
    chunk, its content, refusal, tool calls, legacy function call and audio with its logprobs,
    its finish; then, when the client asked for usage, the usage-only chunk with the body's usage,
    and `"usage": null` on every other chunk as OpenAI sends it. A call without an id gets one.
    Every chunk carries the answer's system_fingerprint, as OpenAI's do."""
    body = with_call_ids(body)
    base = {
        "id": body.get("id", "chatcmpl-cached"),
        "object": "chat.completion.chunk",
        "created": body.get("created", int(time.time())),
        "model": body.get("model"),
    }
    if body.get("system_fingerprint") is not None:
        base["system_fingerprint"] = body["system_fingerprint"]

    def frame(index: int, delta: JSON, finish: str | None = None, logprobs: Any = None) -> JSON:
        return {
            **base,
            "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish}],
        }

    frames: list[JSON] = []
    for choice in body.get("choices") or []:
        index = choice.get("index", 0)
        message = choice.get("message") or {}
        # Content "" only where the answer has text: a tool call's or a refusal's content is null
        # (the SDK's stream helper keeps the first delta's, so "" read back as text said).
        said = "" if isinstance(message.get("content"), str) else None
        frames.append(frame(index, {"role": "assistant", "content": said}))
        delta: JSON = {}
        if message.get("content"):
            delta["content"] = message["content"]
        if message.get("refusal"):
            delta["refusal"] = message["refusal"]
        if message.get("tool_calls"):
            delta["tool_calls"] = [{**call, "index": i} for i, call in enumerate(message["tool_calls"])]
        # A kept answer may be no text at all (a legacy function call, an audio answer): without
        # these the stream said nothing.
        for field in ("function_call", "audio"):
            if message.get(field):
                delta[field] = message[field]
        logprobs = choice.get("logprobs")
        if delta or logprobs:
            frames.append(frame(index, delta, logprobs=logprobs))
        finish = frame(index, {}, choice.get("finish_reason") or "stop")
        if choice.get("stop_reason") is not None:
            # The stop string the upstream matched (vLLM's field): what a Messages client is told.
            finish["choices"][0]["stop_reason"] = choice["stop_reason"]
        frames.append(finish)
    if include_usage:
        for each in frames:
            each["usage"] = None
        frames.append({**base, "choices": [], "usage": body.get("usage")})
    return frames


def sse_frame(payload: JSON) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def error_body(error: FaregateError) -> JSON:
    """An error as OpenAI sends it: {"error": {"message", "type", "param", "code"}}."""
    return {"error": {"message": error.message, "type": error.type, "param": error.param, "code": error.code}}


def error_event(message: str, code: str) -> bytes:
    """The frame that ends a stream which failed after content was sent (the SDKs raise on it)."""
    return sse_frame({"error": {"message": message, "type": "upstream_error", "param": None, "code": code}})
