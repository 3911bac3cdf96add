"""The internal request/response types, used everywhere.

The client's JSON body is kept as a plain dict and passed upstream almost
untouched: we only read the few fields the gateway interprets. Validating the
whole body on the hot path would cost time and would reject fields that the
upstream understands and we do not.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, Protocol

JSON = dict[str, Any]

Modality = Literal["text", "image", "audio", "video", "file"]

# Body fields the gateway consumes itself and never forwards upstream.
GATEWAY_FIELDS = frozenset({"faregate", "models"})


@dataclass(slots=True)
class Usage:
    """Token usage of one completion; `estimated` when counted by us, not the upstream.

    `prompt_tokens` is every input token, prompt-cache reads and writes included (OpenAI's
    sense; Anthropic's `input_tokens` excludes them). `cache_read_tokens` and
    `cache_write_tokens` are parts of it; `cache_write_1h_tokens` is the part of the writes made
    with the one-hour TTL, which is priced apart.
    """

    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    cache_write_1h_tokens: int = 0
    # Audio tokens, parts of `prompt_tokens` and `completion_tokens` (OpenAI's
    # prompt_tokens_details.audio_tokens and completion_tokens_details.audio_tokens), priced apart.
    audio_prompt_tokens: int = 0
    audio_completion_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    @property
    def uncached_prompt_tokens(self) -> int:
        """The input tokens neither read from nor written to a prompt cache (Anthropic's
        `input_tokens`)."""
        return max(self.prompt_tokens - self.cache_read_tokens - self.cache_write_tokens, 0)


@dataclass(slots=True)
class ChatRequest:
    """One client chat-completion request, as the pipeline sees it."""

    request_id: str
    body: JSON
    model: str
    stream: bool
    include_usage: bool
    max_tokens: int | None
    required_modalities: frozenset[str]
    hints: JSON = field(default_factory=dict)
    # `n`: how many choices the upstream generates (and bills) for this one request.
    choices: int = 1
    key_id: str | None = None
    # The key is premium (fg_pro_): may use dedicated offers, goes first in upstream queues.
    premium: bool = False
    # A quality verification's shadow or judge call, not a client's: its own upstream slots.
    verification: bool = False
    received_at: float = field(default_factory=time.time)
    started: float = field(default_factory=time.perf_counter)
    # Fields the client's wire put in the body that the chat wire does not carry (a Messages
    # request's top_k and cache_control marks): sent only to a provider that carries them
    # (Provider.carries), dropped for every other. Empty for a chat-completions request, whose
    # fields all pass through as the client sent them.
    wire_extras: frozenset[str] = frozenset()


class RequestMeta(Protocol):
    """What the stages that never read a request's body (the budget hold, the attempt loop's
    deadline and breakers) need of any request, a chat or an embeddings one."""

    request_id: str
    key_id: str | None
    premium: bool
    verification: bool
    # perf_counter() when the gateway received it: the request's deadline runs from here.
    started: float


@dataclass(slots=True, frozen=True)
class Price:
    """USD per 1M tokens.

    Prompt-cache reads and writes have prices of their own where the provider sets them
    (Anthropic: writes 1.25x the input price for the 5-minute TTL, 2x for one hour; reads 0.1x).
    A missing one falls back: reads and 5-minute writes to `input`, one-hour writes to
    `cache_write`, then `input` - which is what a provider without cache pricing bills.

    Audio tokens in and out have prices of their own where the model has them (gpt-audio: 32 and
    64 against 2.50 and 10 for text); a missing one is the text price. As genai-prices counts
    OpenAI's usage, cached tokens are taken to be text: the usage says how many prompt tokens
    are audio and how many cached, not how many cached ones are audio.
    """

    input: Decimal
    output: Decimal
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None
    cache_write_1h: Decimal | None = None
    input_audio: Decimal | None = None
    output_audio: Decimal | None = None

    def cost(self, usage: Usage) -> Decimal:
        read, write, write_1h = usage.cache_read_tokens, usage.cache_write_tokens, usage.cache_write_1h_tokens
        audio_in, audio_out = usage.audio_prompt_tokens, usage.audio_completion_tokens
        if not (read or write or audio_in or audio_out):
            # Decimal * int converts the int exactly: the same result as Decimal(int) * Decimal.
            return (self.input * usage.prompt_tokens + self.output * usage.completion_tokens) / MILLION
        write_5m = max(write - write_1h, 0)
        uncached = max(usage.prompt_tokens - read - write, 0)
        audio_in = min(audio_in, uncached)
        audio_out = min(audio_out, usage.completion_tokens)
        read_price = self.input if self.cache_read is None else self.cache_read
        write_price = self.input if self.cache_write is None else self.cache_write
        write_1h_price = write_price if self.cache_write_1h is None else self.cache_write_1h
        audio_in_price = self.input if self.input_audio is None else self.input_audio
        audio_out_price = self.output if self.output_audio is None else self.output_audio
        return (
            Decimal(uncached - audio_in) * self.input
            + Decimal(audio_in) * audio_in_price
            + Decimal(read) * read_price
            + Decimal(write_5m) * write_price
            + Decimal(min(write_1h, write)) * write_1h_price
            + Decimal(usage.completion_tokens - audio_out) * self.output
            + Decimal(audio_out) * audio_out_price
        ) / MILLION

    @property
    def dearest_input(self) -> Decimal:
        """The most one input token can cost (a cache write, or an audio token, may cost more than
        plain input): what a worst-case estimate must assume for a prompt whose caching and media
        are not known in advance."""
        prices = (self.input, self.cache_read, self.cache_write, self.cache_write_1h, self.input_audio)
        return max(p for p in prices if p is not None)

    @property
    def dearest_output(self) -> Decimal:
        """The most one output token can cost (an audio token may cost more than text)."""
        return self.output if self.output_audio is None else max(self.output, self.output_audio)


MILLION = Decimal(1_000_000)


# Outcomes of calls that worked (the others are provider failures); "client_gone": a stream's
# call ended because its client left before its first content (server/pipeline.py).
ANSWERED_OUTCOMES = ("ok", "escalated", "judge", "client_gone")


@dataclass(slots=True)
class Attempt:
    """One upstream call made for a request (kept for records and error messages)."""

    model: str
    provider: str
    # "ok" (the answer), an UpstreamFailure kind, or a call that answered but did not serve:
    # "escalated" (a cascade's judge refused it) or "judge" (an LLM judge's own call).
    outcome: str
    latency_ms: float
    detail: str = ""
    status: int | None = None
    # Usage the provider reported (and billed) for this attempt, if any.
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: Decimal = Decimal(0)
    # The seconds a failed call's upstream asked to wait (its Retry-After), if it said.
    retry_after: float | None = None
    # What the call that served was sent without or instead, as the answer's
    # x-faregate-dropped-params and -adjusted-params say it (wire/model_params.py); mostly empty.
    dropped_params: str = ""
    adjusted_params: str = ""
    # Billed at its offer's peak price (the hours its provider bills more: catalog/peak_hours.py).
    at_peak: bool = False

    def describe(self) -> str:
        text = f"{self.model} via {self.provider}: {self.outcome}"
        if self.status is not None:
            text += f" (HTTP {self.status})"
        if self.detail:
            text += f" - {self.detail}"
        return text


@dataclass(slots=True)
class Completion:
    """A whole (non-streaming) upstream answer: its body is kept in the OpenAI wire format, read
    through `wire.openai` (`answer_text`, `answer_is_empty`...)."""

    body: JSON
    usage: Usage | None
    status: int = 200


# A request whose answer the cache held, refused before it was served (the key's rate limit, a key
# revoked elsewhere, the accounts store out of reach): a lookup, neither a hit served nor a miss.
REFUSED_HIT = "hit-refused"


@dataclass(slots=True)
class RequestRecord:
    """What is written for every request, successful or not."""

    request_id: str
    created_at: float
    key_id: str | None = None
    model_requested: str = ""
    model_used: str | None = None
    provider: str | None = None
    status: int = 200
    stream: bool = False
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: Decimal = Decimal(0)
    usage_estimated: bool = False
    latency_ms: float = 0.0
    ttft_ms: float | None = None
    empty_response: bool = False
    error: str | None = None
    attempts: list[Attempt] = field(default_factory=list)
    route: str | None = None
    # What the same usage would have cost on the baseline model (savings = baseline - cost).
    baseline_cost_usd: Decimal = Decimal(0)
    # miss | hit | semantic-hit | hit-refused (REFUSED_HIT) | bypass
    cache_status: str = "bypass"
    # The wire the request came in on: chat (OpenAI chat completions), messages (Anthropic),
    # responses (OpenAI's Responses API) or embeddings.
    wire: str = "chat"
    # The caller's W3C Trace Context headers, if it sent them: the request's span continues its
    # trace (telemetry/tracing.py). Not stored.
    traceparent: str | None = None
    tracestate: str | None = None
