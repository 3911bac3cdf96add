"""An OpenAI-wire provider that also speaks OpenAI's Responses API (`responses: true` in its
settings; OpenAI's own in the built-in defaults).

A call whose body carries the client's Responses request (a request that came in on
/v1/responses: wire/responses_native.py) is POSTed natively to {base_url}/responses, with the
offer's upstream model name and `store: false`; its answer or event stream comes back as
internal answers and chunks that carry the upstream's Response and events, which the client
wire sends as they came. Every other call (chat completions, Messages clients, embeddings) is
the OpenAI-wire provider's, unchanged. Failures map exactly as for chat completions.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator

from faregate.config import ProviderSettings
from faregate.errors import UpstreamFailure
from faregate.providers.base import UpstreamCall, one_per_read
from faregate.providers.http import ConnectionPool
from faregate.providers.http_framing import Endpoint, request_head, under
from faregate.providers.openai_compat import OpenAICompatibleProvider
from faregate.types import JSON, Completion, Usage
from faregate.wire.responses_native import (
    NATIVE_REQUEST,
    chunks_of_events,
    native_body,
    response_to_completion,
    unreadable_response,
)


class OpenAIResponsesProvider(OpenAICompatibleProvider):
    __slots__ = ("_responses",)
    responses_path = "/responses"
    # The client's Responses body reaches this provider (and no other: Provider.carries).
    carries = frozenset({NATIVE_REQUEST})

    def __init__(self, name: str, settings: ProviderSettings, pool: ConnectionPool) -> None:
        super().__init__(name, settings, pool)
        endpoint = Endpoint(
            under(settings.base_url, self.responses_path), connect_timeout_s=settings.connect_timeout_s
        )
        self._responses = (endpoint, request_head(endpoint, self._headers))

    async def complete(self, call: UpstreamCall) -> Completion:
        if NATIVE_REQUEST not in call.body:
            return await super().complete(call)
        native = dataclasses.replace(call, body=native_body(call.body, stream=False))
        whole = await self._whole(native, *self._responses, _no_usage)
        body, status = whole.body, whole.status
        if body.get("object") != "response":
            raise UpstreamFailure(
                "bad_response", f"expected a Response, got object {body.get('object')!r}", status=status
            )
        if (unreadable := unreadable_response(body)) is not None:
            raise UpstreamFailure("bad_response", f"response body: {unreadable}", status=status)
        answer, usage = response_to_completion(body)
        return Completion(answer, usage, status)

    def stream(self, call: UpstreamCall) -> AsyncGenerator[JSON, None]:
        if NATIVE_REQUEST not in call.body:
            return super().stream(call)
        return self._native_stream(dataclasses.replace(call, body=native_body(call.body, stream=True)))

    def stream_reads(self, call: UpstreamCall) -> AsyncGenerator[list[JSON], None]:
        # Responses events are translated one by one: a chunk per read (the parent's reads are
        # of the chat wire).
        if NATIVE_REQUEST not in call.body:
            return super().stream_reads(call)
        return one_per_read(self.stream(call))

    async def _native_stream(self, call: UpstreamCall) -> AsyncGenerator[JSON, None]:
        events = self._sse(call, *self._responses)
        try:
            async for chunk in chunks_of_events(events):
                yield chunk
        finally:
            await events.aclose()  # releases the connection however the consumer stops


def _no_usage(body: JSON) -> Usage | None:
    return None  # a Response's usage is read by response_to_completion
