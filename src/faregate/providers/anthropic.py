"""The provider for Anthropic's Messages wire protocol.

The same exchange as the OpenAI-wire provider (the shared pool, the prebuilt request head,
the deadlines, and one UpstreamFailure or UpstreamRejected per way a call can fail: 429 and
5xx, 529 overloaded_error included, are retryable and fall back, as are a refused key and an
account out of credit, which Anthropic says with a 400; other 4xx are the client's),
with the Messages wire around it: the internal chat body is translated before it is sent
(wire/anthropic_upstream.py), answers and event streams are translated back into internal
completions and chunks (wire/anthropic_upstream_answers.py). The key goes in `x-api-key`,
with an `anthropic-version` header; configured headers replace either.

A body the Messages wire cannot carry (n > 1, logprobs, ...) is refused before any network
call with UpstreamRejected 400, naming the parameter.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator

from faregate.errors import InvalidRequest, UpstreamFailure, UpstreamRejected
from faregate.providers.base import UpstreamCall, one_per_read
from faregate.providers.openai_compat import OpenAICompatibleProvider
from faregate.types import JSON, Completion
from faregate.wire.anthropic import MESSAGES_EFFORT
from faregate.wire.anthropic_upstream import chat_to_messages, local_stops
from faregate.wire.anthropic_upstream_answers import chat_chunks, message_to_completion

ANTHROPIC_VERSION = "2023-06-01"


class AnthropicProvider(OpenAICompatibleProvider):
    """One Messages upstream (Anthropic, or anything speaking its wire). The pool is shared."""

    __slots__ = ()
    path = "/messages"
    embeddings_path = None  # the Messages wire has no embeddings
    # A Messages client's top_k, prompt-cache marks and an effort the chat wire lacks ("max")
    # reach Anthropic (wire/anthropic_upstream.py).
    carries = frozenset({"top_k", "cache_control", MESSAGES_EFFORT})

    def _auth_headers(self, key: str | None) -> dict[str, str]:
        headers = {"anthropic-version": ANTHROPIC_VERSION}
        if key:
            headers["x-api-key"] = key
        return headers

    async def complete(self, call: UpstreamCall) -> Completion:
        raw = await super().complete(self._messages_call(call))
        if raw.body.get("type") != "message":
            raise UpstreamFailure(
                "bad_response",
                f"expected a Messages response, got type {raw.body.get('type')!r}",
                status=raw.status,
            )
        body, usage = message_to_completion(raw.body, local_stops(call.body))
        return Completion(body, usage, raw.status)

    async def stream(self, call: UpstreamCall) -> AsyncGenerator[JSON, None]:
        events = super().stream(self._messages_call(call))
        try:
            async for chunk in chat_chunks(events, local_stops(call.body)):
                yield chunk
        finally:
            await events.aclose()  # releases the connection however the consumer stops

    def stream_reads(self, call: UpstreamCall) -> AsyncGenerator[list[JSON], None]:
        # The Messages events are translated one by one: a chunk per read (not the parent's
        # reads, which are untranslated events).
        return one_per_read(self.stream(call))

    def _messages_call(self, call: UpstreamCall) -> UpstreamCall:
        try:
            body = chat_to_messages(call.body, call.max_output_tokens)
        except InvalidRequest as exc:
            raise UpstreamRejected(
                400,
                f"{self.name} (Messages wire) cannot take this request: {exc.message}",
                param=exc.param,
                untranslatable=True,
            ) from exc
        return dataclasses.replace(call, body=body)
