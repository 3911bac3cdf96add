"""The provider for every vendor speaking the OpenAI chat-completions wire protocol.

DeepSeek, DashScope, Zhipu, SiliconFlow, OpenRouter, OpenAI, vLLM, Ollama and our
simulator differ only in base URL, key and extra headers, all taken from
ProviderSettings. Everything per provider is computed once at construction (down to
the bytes of the request head); a call serialises the body with orjson, sends it
through the shared connection pool, and turns each way an upstream can fail into
one UpstreamFailure (or UpstreamRejected) whose detail says what happened, because
it ends up in the client's error message (providers/upstream_failures.py).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncGenerator, Callable, Coroutine, Mapping
from typing import Any

import orjson

from faregate.config import ProviderSettings
from faregate.config.env_refs import expanded_headers
from faregate.errors import UpstreamFailure, UpstreamRejected
from faregate.providers.base import UpstreamCall
from faregate.providers.http import USER_AGENT, ConnectionPool
from faregate.providers.http_framing import (
    BodyIdle,
    ConnectFailed,
    ConnectTimeout,
    Endpoint,
    TransportError,
    request_bytes,
    request_head,
    under,
)
from faregate.providers.response import Response
from faregate.providers.sse import SSEDecoder, SSEProtocolError
from faregate.providers.upstream_failures import (
    in_band_failure,
    json_instead_of_stream,
    json_object,
    page_instead_of_stream,
    read_error_body,
    response_failure,
    secrets_of,
    transport_failure,
)
from faregate.types import JSON, Completion, Usage
from faregate.wire.embeddings import usage_of as embedding_usage
from faregate.wire.openai import (
    answer_is_empty,
    chunk_has_content,
    stream_error,
    unreadable_choices,
    usage_of,
)

# After [DONE] the body normally ends within microseconds; reading to its end lets the
# connection go back to the pool instead of being closed. Bounded for upstreams that linger.
_DRAIN_AFTER_DONE_S = 0.5


class OpenAICompatibleProvider:
    """One OpenAI-compatible upstream. The pool is shared and owned by the registry."""

    __slots__ = ("_embeddings", "_endpoint", "_head", "_headers", "_key_hint", "_pool", "_secrets", "name")
    # Where requests go, under the base URL; another wire on the same machinery posts elsewhere.
    path = "/chat/completions"
    # Where embeddings requests go; None for a wire that has none (the registry then never plans
    # an embeddings call on it).
    embeddings_path: str | None = "/embeddings"
    # No field beyond the chat wire's own (see Provider.carries).
    carries: frozenset[str] = frozenset()

    def __init__(self, name: str, settings: ProviderSettings, pool: ConnectionPool) -> None:
        self.name = name
        self._pool = pool
        self._endpoint = Endpoint(
            under(settings.base_url, self.path), connect_timeout_s=settings.connect_timeout_s
        )
        # The key is read once: the environment does not change under a running gateway,
        # and os.environ lookups on every call are wasted work.
        key = os.environ.get(settings.api_key_env) if settings.api_key_env else None
        headers = {"User-Agent": USER_AGENT, "Content-Type": "application/json", **self._auth_headers(key)}
        # Configured headers may replace ours (e.g. a vendor that wants its own auth header);
        # `${NAME}` in one is the variable's value (config/env_refs.py).
        configured = expanded_headers(settings.headers)
        self._headers = _merged(headers, configured)
        # The head is the same for every call but for Content-Length: format it once.
        self._head = request_head(self._endpoint, self._headers)
        self._embeddings: tuple[Endpoint, bytes] | None = None
        if self.embeddings_path is not None:
            endpoint = Endpoint(
                under(settings.base_url, self.embeddings_path),
                connect_timeout_s=settings.connect_timeout_s,
            )
            self._embeddings = (endpoint, request_head(endpoint, self._headers))
        # Redacted from the upstream's words before they reach a client, a record or a trace.
        self._secrets = secrets_of(key, configured)
        if settings.api_key_env is None:
            self._key_hint = "no api_key_env is configured"
        elif key:
            self._key_hint = f"check ${settings.api_key_env}"
        else:
            self._key_hint = f"${settings.api_key_env} is not set"

    def _auth_headers(self, key: str | None) -> dict[str, str]:
        """The headers that carry the key (none without one)."""
        return {"Authorization": f"Bearer {key}"} if key else {}

    @property
    def embeds(self) -> bool:
        """Does this provider's wire have an embeddings endpoint?"""
        return self._embeddings is not None

    def complete(self, call: UpstreamCall) -> Coroutine[Any, Any, Completion]:
        """Send a non-streaming request and return the parsed answer (empty answers included:
        the attempt loop judges those). `_whole`'s own coroutine: none around it (the hot path)."""
        return self._whole(call, self._endpoint, self._head, usage_of)

    async def embed(self, call: UpstreamCall) -> Completion:
        """POST an embeddings request to {base_url}/embeddings: the same pool, deadlines and
        failure mapping as `complete`; the usage is the embeddings wire's (input tokens only).
        Whether the answer holds every vector is the caller's to judge."""
        if self._embeddings is None:
            raise UpstreamRejected(400, f"{self.name} has no embeddings endpoint")
        return await self._whole(call, *self._embeddings, embedding_usage)

    async def _whole(
        self, call: UpstreamCall, endpoint: Endpoint, head: bytes, usage: Callable[[JSON], Usage | None]
    ) -> Completion:
        """A whole JSON answer, its `usage` and its status, or the UpstreamFailure/UpstreamRejected
        it is."""
        resp = await self._open(call, endpoint, head)
        try:
            if not 200 <= resp.status < 300:
                raise await response_failure(resp, self.name, self._key_hint, self._secrets)
            try:
                raw = resp.whole_body()  # usually all here with the head: no coroutine to read it
                if raw is None:
                    raw = await resp.read()
            except TimeoutError as exc:
                raise UpstreamFailure(
                    "timeout",
                    f"response body not complete within {call.total_timeout_s:g}s",
                    status=resp.status,
                ) from exc
            except TransportError as exc:
                raise transport_failure(exc, "(reading the response body)", resp.status) from exc
        finally:
            resp.release()
        body = json_object(raw, "response body", resp.status)
        if body.get("error") and answer_is_empty(body):
            # An error in place of the answer (OpenRouter's, once a model has begun): that error.
            raise in_band_failure(body, "error instead of an answer", resp.status, self._secrets)
        if (unreadable := unreadable_choices(body, "message")) is not None:
            raise UpstreamFailure("bad_response", f"response body: {unreadable}", status=resp.status)
        return Completion(body, usage(body), resp.status)

    def stream(self, call: UpstreamCall) -> AsyncGenerator[JSON, None]:
        """Send a streaming request and yield each SSE `data` payload parsed as a JSON object
        (`stream_reads`, one chunk at a time)."""
        return self._sse(call, self._endpoint, self._head)

    def stream_reads(self, call: UpstreamCall) -> AsyncGenerator[list[JSON], None]:
        return self._sse_reads(call, self._endpoint, self._head)

    async def _sse(self, call: UpstreamCall, endpoint: Endpoint, head: bytes) -> AsyncGenerator[JSON, None]:
        """`_sse_reads` one chunk at a time."""
        reads = self._sse_reads(call, endpoint, head)
        try:
            async for chunks in reads:
                for chunk in chunks:
                    yield chunk
        finally:
            await reads.aclose()

    async def _sse_reads(
        self, call: UpstreamCall, endpoint: Endpoint, head: bytes
    ) -> AsyncGenerator[list[JSON], None]:
        """POST a streaming request to `endpoint` and yield, for each read of the body, the SSE
        `data` payloads it completed, parsed as JSON objects (a read that completed none yields
        nothing): an instant upstream sends many chunks per read, and relaying them together
        costs one client write instead of one each (bench/README.md, first token under load).
        The read that brings the first content is yielded in two: up to that chunk, then the
        rest, so the first content is not held back while the rest of its read is parsed.

        Errors before the first chunk are raised on the first `__anext__`. A connection loss or
        timeout mid-stream raises UpstreamFailure from the iterator; so does an `error` object
        sent in place of a chunk (after the chunks of its read before it). The iterator ends at
        `[DONE]` or, without it, at the end of the body: a truncated stream is not an error here,
        because only the caller can tell, from the last chunk's `finish_reason`, whether the
        answer was complete. The connection is released however iteration ends, including
        `aclose()` by a consumer that stops early.
        """
        resp = await self._open(call, endpoint, head, call.stream_idle_timeout_s)
        try:
            if not 200 <= resp.status < 300:
                raise await response_failure(resp, self.name, self._key_hint, self._secrets)
            decoder = SSEDecoder()
            chunks = 0
            content_seen = False
            try:
                data = await resp.read_chunk()
                first = data.lstrip()[:1]
                if first == b"{":
                    # A JSON body where an event stream belongs: an error, or stream:true ignored.
                    raw = await read_error_body(resp, data)
                    raise json_instead_of_stream(raw, resp.status, self._secrets)
                if first == b"<":
                    # A page (a base_url naming a web UI, a proxy's login page) holds no event:
                    # no blank answer but a bad response, saying what came.
                    raise page_instead_of_stream(data, resp.status, self._secrets)
                while data:
                    read: list[JSON] = []
                    for payload in decoder.feed(data):
                        if not payload:
                            continue  # `data:` with nothing after it: a keep-alive, not a chunk
                        # json_object's and stream_error's checks inlined (they run per chunk):
                        # anything but a valid object goes to json_object for its error.
                        try:
                            chunk = orjson.loads(payload)
                        except orjson.JSONDecodeError:
                            chunk = None
                        if type(chunk) is not dict:
                            chunk = json_object(payload, f"stream chunk {chunks + 1}", resp.status)
                        # OpenRouter and others report a failure mid-stream as a chunk with an
                        # `error` object (sometimes beside a finish_reason "error" choice).
                        if chunk.get("error") and stream_error(chunk) is not None:
                            if read:
                                yield read
                            raise in_band_failure(
                                chunk, f"error event after {chunks} chunks", resp.status, self._secrets
                            )
                        # The usual chunk (one choice whose delta is an object without tool calls)
                        # is readable: checked inline, as this runs per chunk; others in full.
                        choices = chunk.get("choices")
                        if (
                            not (
                                type(choices) is list
                                and len(choices) == 1
                                and type(only := choices[0]) is dict
                                and type(delta := only.get("delta")) is dict
                                and "tool_calls" not in delta
                            )
                            and (unreadable := unreadable_choices(chunk, "delta")) is not None
                        ):
                            if read:
                                yield read
                            raise UpstreamFailure(
                                "bad_response", f"stream chunk {chunks + 1}: {unreadable}", status=resp.status
                            )
                        chunks += 1
                        read.append(chunk)
                        if not content_seen and chunk_has_content(chunk):
                            # The first content goes at once, not after the rest of its read is parsed.
                            content_seen = True
                            yield read
                            read = []
                    if read:
                        yield read
                    if decoder.done:
                        await _drain(resp)
                        return
                    data = await resp.read_chunk()
            except BodyIdle as exc:
                # A stream that stalls (after its head, between chunks) fails now, not at the total
                # timeout: before content the attempt loop can still fall back, after it the
                # client's stream ends with the error event instead of waiting minutes for it.
                raise UpstreamFailure(
                    "timeout",
                    f"stream stalled: nothing received for {call.stream_idle_timeout_s:g}s "
                    f"({chunks} chunks received)",
                    status=resp.status,
                ) from exc
            except TimeoutError as exc:
                raise UpstreamFailure(
                    "timeout",
                    f"stream not finished within {call.total_timeout_s:g}s ({chunks} chunks received)",
                    status=resp.status,
                ) from exc
            except TransportError as exc:
                raise transport_failure(exc, f"after {chunks} chunks", resp.status) from exc
            except SSEProtocolError as exc:
                raise UpstreamFailure(
                    "bad_response", f"{exc} after {chunks} chunks", status=resp.status
                ) from exc
        finally:
            resp.release()

    async def close(self) -> None:
        """Nothing to do: the shared pool belongs to the registry."""

    async def _open(
        self, call: UpstreamCall, endpoint: Endpoint, head: bytes, idle_s: float | None = None
    ) -> Response:
        """POST the call and wait for the response head, within the first-byte deadline (which
        covers waiting for a connection and connecting). The whole-call deadline, and the idle
        limit `idle_s` (a stream's), are enforced by the transport while the body is read, so
        they are safe across the yields of a stream."""
        if call.total_timeout_s <= 0:
            raise UpstreamFailure("timeout", "no time left for this attempt")
        if call.headers:  # per-call headers (none in production today) cost a head of their own
            head = request_head(endpoint, _merged(self._headers, call.headers))
        payload = request_bytes(head, orjson.dumps(call.body))
        head_s = min(call.first_byte_timeout_s, call.total_timeout_s)
        try:
            return await self._pool.request(
                endpoint,
                payload,
                head_timeout_s=head_s,
                total_timeout_s=call.total_timeout_s,
                idle_timeout_s=idle_s,
            )
        except ConnectTimeout as exc:
            raise UpstreamFailure("timeout", str(exc)) from exc
        except TimeoutError as exc:
            raise UpstreamFailure("timeout", f"no response head within {head_s:g}s") from exc
        except ConnectFailed as exc:
            raise UpstreamFailure("connection", str(exc)) from exc
        except TransportError as exc:
            raise transport_failure(exc, "before the response head", None) from exc


async def _drain(resp: Response) -> None:
    if resp.at_eof:
        return
    try:
        async with asyncio.timeout(_DRAIN_AFTER_DONE_S):
            while await resp.read_chunk():
                pass
    except (TimeoutError, TransportError):
        pass  # the connection is closed on release instead of reused; nothing is lost


def _merged(headers: Mapping[str, str], overrides: Mapping[str, str]) -> dict[str, str]:
    """`headers` with `overrides` replacing fields of the same name in any letter case."""
    replaced = {name.lower() for name in overrides}
    return {**{k: v for k, v in headers.items() if k.lower() not in replaced}, **overrides}
