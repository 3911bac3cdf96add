"""The Provider protocol: one implementation per wire protocol, not per vendor.

A provider stream is an async iterator of chunks; whoever stops reading one before its end closes
it with `aclose_quietly`, which gives its connection (and its upstream queue slot) back.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from faregate.catalog.models import Offer
from faregate.types import JSON, Completion


@dataclass(slots=True)
class UpstreamCall:
    """One call to one provider offer. `body` is ready to send: the upstream model name is set,
    gateway-only fields are removed, and for streams `stream_options.include_usage` is on."""

    offer: Offer
    body: JSON
    stream: bool
    # Seconds allowed until the response head arrives, and for the whole call.
    first_byte_timeout_s: float
    total_timeout_s: float
    # The model's maximum output tokens (None: unknown): a wire that must name a limit the client
    # did not give asks for no more than this.
    max_output_tokens: int | None = None
    # Seconds a stream may go without receiving anything after its head (None: no bound but the
    # total timeout): a stalled stream fails as a timeout instead of waiting out the whole call.
    stream_idle_timeout_s: float | None = None
    headers: dict[str, str] = field(default_factory=dict)


async def aclose_quietly(stream: AsyncIterator[Any]) -> None:
    """Close a stream that is being abandoned; a failure while closing it is no news then."""
    closer = getattr(stream, "aclose", None)
    if closer is not None:
        try:
            await closer()
        except Exception:
            pass


Reads = Callable[[UpstreamCall], AsyncIterator[list[JSON]]]


async def one_per_read(stream: AsyncIterator[JSON]) -> AsyncGenerator[list[JSON], None]:
    """A stream as reads of one chunk each (a provider that cannot tell what one read brought)."""
    try:
        async for chunk in stream:
            yield [chunk]
    finally:
        await aclose_quietly(stream)


def stream_reads(provider: Provider, call: UpstreamCall) -> AsyncIterator[list[JSON]]:
    """The provider's stream as the chunks each upstream read brought, in order: a provider that
    can say so has `stream_reads`; any other gives one chunk per read. The relay writes what one
    read brought in one client write (server/responses.py)."""
    reads: Reads | None = getattr(provider, "stream_reads", None)
    if reads is not None:
        return reads(call)
    return one_per_read(provider.stream(call))


class Provider(Protocol):
    name: str
    # Body fields beyond the chat wire that this provider's wire can carry (a Messages request's
    # top_k and prompt-cache marks for the Messages wire); a request whose client wire added
    # such fields has them dropped before any other provider (ChatRequest.wire_extras).
    carries: frozenset[str]

    async def complete(self, call: UpstreamCall) -> Completion:
        """Send a non-streaming request. Raises UpstreamFailure on any failed call
        (429, 5xx, timeout, connection error, unparsable body) and UpstreamRejected for other 4xx."""
        ...

    def stream(self, call: UpstreamCall) -> AsyncIterator[JSON]:
        """Send a streaming request and yield each SSE `data:` chunk parsed as JSON, stopping at
        `[DONE]` or at the end of the body. Raises like `complete`; a failure after the first
        chunk is raised from the iterator."""
        ...

    async def close(self) -> None: ...


class EmbeddingProvider(Provider, Protocol):
    """A provider whose wire has embeddings (`embeds` is True): the registry's `embeds(name)`
    tells which do, so a provider without them is never planned for an embeddings request."""

    @property
    def embeds(self) -> bool: ...

    async def embed(self, call: UpstreamCall) -> Completion:
        """POST an embeddings request; raises like `complete`."""
        ...
