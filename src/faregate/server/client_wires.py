"""The wire a client speaks to the gateway: the one place that knows it.

The request path (pipeline, routing, caching, accounting, records) sees only the internal chat
request and answer (the OpenAI chat shape, wire/openai.py). A `ClientWire` stands at the edge:
- `to_chat(body)`: the client's body as the internal chat body (InvalidRequest naming what
  cannot be translated);
- `answer(body, asked)`: a whole, priced internal answer as the bytes the client receives
  (`asked` is the client's own body, whose settings a Response echoes);
- `stream(model, include_usage, asked, input_tokens)`: a `StreamEncoder` that turns the internal
  chunks of an answer, its priced usage chunk and a mid-stream failure into the client's SSE
  frames (`input_tokens`: the prompt's uncached input count when the upstream said it up front,
  else the gateway's own count, for a wire whose stream says it up front: `input_count_up_front`);
- `status(error)` and `error(error)`: the status and body of an error in the client's shape;
- `request_id_headers`: the headers its SDK reads an answer's or an error's request id from.

Three wires: OpenAI chat (the identity: today's bytes, and per chunk no more work than
`relay_frame`, in wire.openai.ChatStreamFrames), Anthropic Messages (wire/anthropic*.py) and the
Responses API (wire/responses*.py). `name` is what the request's record says it came in on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Protocol

import orjson

from faregate.errors import FaregateError, InvalidRequest, UpstreamFailure
from faregate.types import JSON
from faregate.wire import (
    anthropic,
    anthropic_replies,
    anthropic_stream,
    openai,
    responses,
    responses_native,
    responses_stream,
    tool_calls,
)


class StreamEncoder(Protocol):
    """One answer's stream in the client's wire; made per stream by `ClientWire.stream`."""

    def chunk(self, chunk: JSON) -> bytes:
        """The frames for one internal chunk (possibly none)."""
        ...

    def frames(self, chunks: list[JSON]) -> bytes:
        """`chunk` of each of `chunks`, joined: what one upstream read brought, in one write."""
        ...

    def close(self, usage_chunk: JSON | None) -> bytes:
        """The closing frames of a whole answer; `usage_chunk` is the priced usage-only chunk
        (None when the client did not ask for usage)."""
        ...

    def fail(self, failure: UpstreamFailure) -> bytes:
        """The closing frames of a stream that failed after content was sent (the SDKs raise)."""
        ...


class ClientWire(Protocol):
    name: str
    # Fields its translation puts in the internal body that the chat wire does not carry: sent
    # only to providers that carry them (ChatRequest.wire_extras, Provider.carries).
    extras: frozenset[str]
    # Where the client's SDK reads a response's request id (an answer's `_request_id`, an error's
    # `request_id`): each says the gateway's own, as x-faregate-request-id does.
    request_id_headers: tuple[str, ...]
    # Does its stream say the input count before the answer (`stream`'s input_tokens)?
    input_count_up_front: bool
    # The client's names of the internal body's settings, where they differ: the header that
    # lists the ones a model was sent without says these (wire/model_params.py).
    param_names: Mapping[str, str]
    # Its name of the reasoning effort, in the header that says the one a model was sent instead.
    effort_param: str

    def to_chat(self, body: JSON) -> JSON: ...

    def answer(self, body: JSON, asked: JSON) -> bytes: ...

    def stream(
        self, model: str, include_usage: bool, asked: JSON, input_tokens: int = 0
    ) -> StreamEncoder: ...

    def status(self, error: FaregateError) -> int: ...

    def error(self, error: FaregateError) -> bytes: ...


# -- OpenAI chat completions: the internal shape itself ------------------------------------------


class ChatWire:
    name = "chat"
    extras: frozenset[str] = frozenset()
    request_id_headers: tuple[str, ...] = ("x-request-id",)
    input_count_up_front = False
    param_names: Mapping[str, str] = MappingProxyType({})
    effort_param = "reasoning_effort"

    def to_chat(self, body: JSON) -> JSON:
        # The other wires' extras are theirs to put in: from a chat client, the Responses body would
        # reach a provider that speaks that API and be posted instead of the chat body the hold and
        # the cache key were made from.
        if responses_native.NATIVE_REQUEST in body:
            raise InvalidRequest(
                f"Unrecognized request argument supplied: {responses_native.NATIVE_REQUEST} (the gateway's "
                "own field; send a Responses request to /v1/responses).",
                param=responses_native.NATIVE_REQUEST,
            )
        return body

    def answer(self, body: JSON, asked: JSON) -> bytes:
        # A tool call its upstream gave no id gets one (a streamed one got it when it was read).
        return orjson.dumps(tool_calls.with_call_ids(body))

    def stream(self, model: str, include_usage: bool, asked: JSON, input_tokens: int = 0) -> StreamEncoder:
        return openai.ChatStreamFrames(model, include_usage)

    def status(self, error: FaregateError) -> int:
        return error.status

    def error(self, error: FaregateError) -> bytes:
        return orjson.dumps(openai.error_body(error))


# -- Anthropic Messages ---------------------------------------------------------------------------


class MessagesEncoder:
    __slots__ = ("_stream",)

    def __init__(self, model: str, input_tokens: int = 0) -> None:
        self._stream = anthropic_stream.MessagesStream(model, input_tokens)

    def chunk(self, chunk: JSON) -> bytes:
        return _frames(self._stream.feed(chunk), anthropic_stream.sse_frame)

    def frames(self, chunks: list[JSON]) -> bytes:
        return b"".join([self.chunk(chunk) for chunk in chunks])

    def close(self, usage_chunk: JSON | None) -> bytes:
        events = self._stream.feed(usage_chunk) if usage_chunk is not None else []
        return _frames(events + self._stream.end(), anthropic_stream.sse_frame)

    def fail(self, failure: UpstreamFailure) -> bytes:
        return _frames(self._stream.fail(failure), anthropic_stream.sse_frame)


class MessagesWire:
    name = "messages"
    # Only a Messages upstream can take top_k, prompt-cache marks and the efforts OpenAI's wire
    # lacks; OpenAI's wire refuses them.
    extras = frozenset({"top_k", "cache_control", anthropic.MESSAGES_EFFORT})
    # The anthropic SDK reads `request-id`; x-request-id kept for proxies and OpenAI-minded logs.
    request_id_headers: tuple[str, ...] = ("x-request-id", "request-id")
    # message_start says input_tokens: Anthropic's own count, before the answer.
    input_count_up_front = True
    param_names: Mapping[str, str] = MappingProxyType(
        {"reasoning_effort": "output_config.effort", anthropic.MESSAGES_EFFORT: "output_config.effort"}
    )
    effort_param = "output_config.effort"

    def to_chat(self, body: JSON) -> JSON:
        return anthropic.messages_to_chat(body)

    def answer(self, body: JSON, asked: JSON) -> bytes:
        return orjson.dumps(anthropic_replies.completion_to_message(body))

    def stream(self, model: str, include_usage: bool, asked: JSON, input_tokens: int = 0) -> StreamEncoder:
        # message_start says the input count when the upstream said it up front (Anthropic).
        return MessagesEncoder(model, input_tokens)

    def status(self, error: FaregateError) -> int:
        # Every upstream out of capacity: Anthropic's own answer to that, 529 overloaded_error
        # (an OpenAI client gets the 502 that lists the attempts).
        return anthropic_replies.OVERLOADED if anthropic_replies.overloaded(error) else error.status

    def error(self, error: FaregateError) -> bytes:
        return orjson.dumps(anthropic_replies.error_body(error)[1])


# -- OpenAI Responses (stateless) -----------------------------------------------------------------


class ResponsesEncoder:
    """Translates internal chunks into Response events, or, for a stream passed through natively
    (its chunks carry the upstream's own events), relays those (wire/responses_native.py)."""

    __slots__ = ("_model", "_native", "_stream")

    def __init__(self, model: str, asked: JSON) -> None:
        self._model = model
        self._stream = responses_stream.ResponsesStream(model, asked)
        self._native: responses_native.NativeStream | None = None

    def chunk(self, chunk: JSON) -> bytes:
        events = chunk.get(responses_native.NATIVE_EVENTS)
        if events is None:
            return _frames(self._stream.feed(chunk), responses_stream.sse_frame)
        if self._native is None:
            self._native = responses_native.NativeStream(self._model)
        return _frames(self._native.relay(events), responses_stream.sse_frame)

    def frames(self, chunks: list[JSON]) -> bytes:
        return b"".join([self.chunk(chunk) for chunk in chunks])

    def close(self, usage_chunk: JSON | None) -> bytes:
        if self._native is not None:
            return _frames(self._native.close(usage_chunk), responses_stream.sse_frame)
        events = self._stream.feed(usage_chunk) if usage_chunk is not None else []
        return _frames(events + self._stream.end(), responses_stream.sse_frame)

    def fail(self, failure: UpstreamFailure) -> bytes:
        if self._native is not None:
            return _frames(self._native.fail(failure.detail), responses_stream.sse_frame)
        return _frames(self._stream.fail(failure), responses_stream.sse_frame)


class ResponsesWire:
    name = "responses"
    # The client's own body, for a provider that speaks the Responses API (`responses: true`):
    # it is passed through to it natively (wire/responses_native.py); every other gets the
    # translation.
    extras = frozenset({responses_native.NATIVE_REQUEST})
    request_id_headers: tuple[str, ...] = ("x-request-id",)
    input_count_up_front = False
    param_names: Mapping[str, str] = MappingProxyType(
        {"reasoning_effort": "reasoning", "verbosity": "text.verbosity"}
    )
    effort_param = "reasoning.effort"

    def to_chat(self, body: JSON) -> JSON:
        chat = responses.responses_to_chat(body)
        chat[responses_native.NATIVE_REQUEST] = body
        return chat

    def answer(self, body: JSON, asked: JSON) -> bytes:
        native = responses_native.native_answer(body)
        if native is not None:
            return orjson.dumps(native)
        return orjson.dumps(responses.completion_to_response(body, asked))

    def stream(self, model: str, include_usage: bool, asked: JSON, input_tokens: int = 0) -> StreamEncoder:
        return ResponsesEncoder(model, asked)

    def status(self, error: FaregateError) -> int:
        return error.status

    def error(self, error: FaregateError) -> bytes:
        # The Responses API answers errors in OpenAI's shape.
        return orjson.dumps(openai.error_body(error))


def _frames(events: list[JSON], frame: Callable[[JSON], bytes]) -> bytes:
    return b"".join(frame(event) for event in events)


CHAT: ClientWire = ChatWire()
MESSAGES: ClientWire = MessagesWire()
RESPONSES: ClientWire = ResponsesWire()


def wire_of_path(path: str) -> ClientWire:
    """The wire an error outside the pipeline is written in (a 404, a 405, a body too large, a
    bug past the pipeline on either server): the Responses API's errors are OpenAI's shape."""
    return MESSAGES if path.startswith("/v1/messages") else CHAT
