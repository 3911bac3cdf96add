"""The attempt loop: call the plan's candidates in order until one gives a real answer.

A failure moves on to the next candidate when it is the provider's fault (429, 5xx,
timeout, connection error, a 200 with nothing in it, a stream that dies before its
first content). A 4xx that is the client's fault is returned at once: another
provider would refuse it too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from faregate.config import ProviderSettings
from faregate.errors import UpstreamFailed, UpstreamFailure
from faregate.providers.base import Provider, UpstreamCall
from faregate.routing.plan import Candidate, Plan
from faregate.types import GATEWAY_FIELDS, JSON, Attempt, ChatRequest, Completion

DEFAULT_PROVIDER_SETTINGS = ProviderSettings(base_url="http://127.0.0.1")


@dataclass(slots=True)
class Served:
    completion: Completion
    candidate: Candidate
    attempts: list[Attempt]


@dataclass(slots=True)
class OpenedStream:
    """A stream that has produced its first real content; `buffered` holds the chunks read so far."""

    candidate: Candidate
    buffered: list[JSON]
    rest: AsyncIterator[JSON]
    attempts: list[Attempt]
    started: float
    first_content_at: float
    finished: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def delta_has_content(chunk: JSON) -> bool:
    """A chunk that carries something the user can see: non-blank text, a tool call, a refusal."""
    for choice in chunk.get("choices") or ():
        delta = choice.get("delta") or {}
        content = delta.get("content")
        if isinstance(content, str) and content.strip():
            return True
        if delta.get("tool_calls") or delta.get("function_call") or delta.get("refusal") or delta.get("audio"):
            return True
    return False


def chunk_finish_reason(chunk: JSON) -> str | None:
    for choice in chunk.get("choices") or ():
        reason = choice.get("finish_reason")
        if reason:
            return str(reason)
    return None


class AttemptRunner:
    def __init__(
        self,
        providers: Callable[[str], Provider],
        provider_settings: Callable[[str], ProviderSettings | None],
        request_timeout_s: float,
    ) -> None:
        self._provider = providers
        self._provider_settings = provider_settings
        self.request_timeout_s = request_timeout_s

    def build_call(self, request: ChatRequest, candidate: Candidate) -> UpstreamCall:
        body = {k: v for k, v in request.body.items() if k not in GATEWAY_FIELDS}
        body["model"] = candidate.offer.upstream_model
        for name in ("max_completion_tokens", "max_tokens"):
            if name in body and body[name] is not None:
                body[name] = candidate.max_output(body[name])
        if request.stream:
            # Always ask for usage so streams are billed from the provider's own numbers.
            body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        settings = self._provider_settings(candidate.offer.provider) or DEFAULT_PROVIDER_SETTINGS
        return UpstreamCall(
            offer=candidate.offer,
            body=body,
            stream=request.stream,
            first_byte_timeout_s=settings.first_byte_timeout_s,
            total_timeout_s=settings.total_timeout_s,
        )

    def _deadline_left(self, request: ChatRequest) -> float:
        return self.request_timeout_s - (time.perf_counter() - request.started)

    async def complete(self, request: ChatRequest, plan: Plan) -> Served:
        attempts: list[Attempt] = []
        timed_out = False
        for candidate in plan.candidates:
            left = self._deadline_left(request)
            if left <= 0:
                timed_out = True
                break
            call = self.build_call(request, candidate)
            provider = self._provider(candidate.offer.provider)
            t0 = time.perf_counter()
            try:
                async with asyncio.timeout(left):
                    completion = await provider.complete(call)
            except UpstreamFailure as failure:
                attempts.append(_failed(candidate, t0, failure))
                continue
            except TimeoutError:
                attempts.append(_failed(candidate, t0, UpstreamFailure("timeout", "request deadline reached")))
                timed_out = True
                break
            if completion.is_empty:
                attempts.append(
                    _failed(candidate, t0, UpstreamFailure("empty", "200 with no choices or blank content"))
                )
                continue
            attempts.append(_ok(candidate, t0))
            return Served(completion, candidate, attempts)
        raise UpstreamFailed(attempts, timeout=timed_out or _all_timeouts(attempts))

    async def open_stream(self, request: ChatRequest, plan: Plan) -> OpenedStream:
        """Open streams in plan order until one yields real content. Nothing has reached the
        client yet, so a failure here still falls back invisibly."""
        attempts: list[Attempt] = []
        timed_out = False
        for candidate in plan.candidates:
            left = self._deadline_left(request)
            if left <= 0:
                timed_out = True
                break
            call = self.build_call(request, candidate)
            provider = self._provider(candidate.offer.provider)
            t0 = time.perf_counter()
            iterator = aiter(provider.stream(call))
            buffered: list[JSON] = []
            try:
                async with asyncio.timeout(left):
                    while True:
                        try:
                            chunk = await anext(iterator)
                        except StopAsyncIteration:
                            raise _early_end(buffered) from None
                        buffered.append(chunk)
                        if delta_has_content(chunk):
                            break
                        if chunk_finish_reason(chunk):
                            raise UpstreamFailure("empty", "stream finished without any content")
            except UpstreamFailure as failure:
                await _close(iterator)
                attempts.append(_failed(candidate, t0, failure))
                continue
            except TimeoutError:
                await _close(iterator)
                attempts.append(_failed(candidate, t0, UpstreamFailure("timeout", "request deadline reached")))
                timed_out = True
                break
            except BaseException:
                await _close(iterator)
                raise
            attempts.append(_ok(candidate, t0))
            return OpenedStream(candidate, buffered, iterator, attempts, t0, time.perf_counter())
        raise UpstreamFailed(attempts, timeout=timed_out or _all_timeouts(attempts))


def _early_end(buffered: list[JSON]) -> UpstreamFailure:
    if buffered:
        return UpstreamFailure("truncated", f"stream ended after {len(buffered)} chunk(s) without content")
    return UpstreamFailure("empty", "stream ended without any chunk")


async def _close(iterator: AsyncIterator[JSON]) -> None:
    closer = getattr(iterator, "aclose", None)
    if closer is not None:
        try:
            await closer()
        except Exception:  # noqa: BLE001 - closing a broken upstream must not mask the real failure
            pass


def _ok(candidate: Candidate, t0: float) -> Attempt:
    return Attempt(candidate.model.name, candidate.offer.provider, "ok", (time.perf_counter() - t0) * 1000)


def _failed(candidate: Candidate, t0: float, failure: UpstreamFailure) -> Attempt:
    return Attempt(
        candidate.model.name,
        candidate.offer.provider,
        failure.kind,
        (time.perf_counter() - t0) * 1000,
        detail=failure.detail,
        status=failure.status,
    )


def _all_timeouts(attempts: list[Attempt]) -> bool:
    return bool(attempts) and all(a.outcome == "timeout" for a in attempts)
