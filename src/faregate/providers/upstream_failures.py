"""Each way an OpenAI-wire upstream can fail, as the one UpstreamFailure (retryable: another
attempt or provider may work) or UpstreamRejected (the client's to fix) it is: a non-2xx
response with the upstream's own message, a body that is not the JSON object it should be, an
error where an event stream belongs, a broken connection. The detail says what happened,
because it ends up in the client's error message.

That is why the upstream's own words pass through `redact` first: a vendor refusing a key
quotes part of it (OpenAI `sk-proj-****…abcd`, DeepSeek `****abcd`), and a proxy or a 400 may
quote a key or a header whole; neither may reach a client, a request record or a trace.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import orjson

from faregate.errors import TRY_AGAIN_4XX, UpstreamFailure, UpstreamRejected
from faregate.providers.http_framing import BadResponse, TransportError
from faregate.providers.response import Response
from faregate.types import JSON
from faregate.wire.openai import error_code_param, error_message, error_status

_MAX_MESSAGE_CHARS = 300
# What is read of a body that is an error: plenty for any vendor's error JSON, and an upstream
# answering with a huge (or endless) page cannot fill the gateway's memory. The connection of a
# body cut short is closed, not reused.
MAX_ERROR_BODY_BYTES = 64 * 1024
REDACTED = "[redacted]"
# A key as vendors quote it, masked: a run of stars with what is left of the key around it.
_MASKED_KEY = re.compile(r"[\w-]*\*{3,}[\w*-]*")
# Shorter values are no secrets worth the garbling: a header's "1" or "true", a local server's
# placeholder key ("EMPTY", "ollama", which its own messages may say as a word).
_MIN_SECRET_CHARS = 8


def secrets_of(key: str | None, headers: Mapping[str, str]) -> tuple[str, ...]:
    """What an upstream's words must not carry on: the key, and each configured header's value
    and its last word (the credential after a scheme: `Bearer <token>`), longest first so that
    a secret holding another is replaced whole."""
    found = {key or ""}
    for value in headers.values():
        found.update((value.strip(), value.split()[-1] if value.split() else ""))
    return tuple(sorted((s for s in found if len(s) >= _MIN_SECRET_CHARS), key=len, reverse=True))


def redact(text: str, secrets: Sequence[str]) -> str:
    """`text` without any of `secrets` nor a masked key in it."""
    for secret in secrets:
        text = text.replace(secret, REDACTED)
    return _MASKED_KEY.sub(REDACTED, text) if "***" in text else text


async def response_failure(resp: Response, provider: str, key_hint: str, secrets: Sequence[str]) -> Exception:
    """The exception for a non-2xx response, with the upstream's own message, `secrets` redacted
    (`key_hint`: where the key comes from, for a response that refuses it)."""
    status = resp.status
    try:
        raw = await read_error_body(resp)
    except (TimeoutError, TransportError):
        raw = b""  # the status alone is enough to classify
    body = _try_json_object(raw)
    message = _error_message(body, secrets) if body is not None else _text_message(raw, secrets)
    message = message or resp.reason or "no message"
    if status in (413, 429) and _over_account_limit(message):
        # The request alone is more than our account's per-minute allowance (Groq's 413, OpenAI's
        # 429 "Request too large for ... on tokens per min"): no wait makes it fit, and it is the
        # account's tier, not the client's request, that is too small: another offer may serve it.
        return UpstreamFailure(
            "server_error",
            f"the request exceeds the provider account's rate limit (HTTP {status}): {message}",
            status=status,
            body=body,
        )
    if status == 429 and not _out_of_quota(body):
        retry_after = rate_limit_wait(resp.headers, body)
        return UpstreamFailure(
            "rate_limited", f"HTTP 429: {message}", status=status, retry_after=retry_after, body=body
        )
    if status == 408:
        return UpstreamFailure("timeout", f"HTTP 408: {message}", status=status, body=body)
    if status == 403 and (reasons := _moderation_reasons(body, secrets)) is not None:
        # OpenRouter's moderation (of a model whose vendor requires it) flagged the input: the
        # key is fine. Another provider, not moderated so, may serve it: it falls over all the same.
        said = f"; {reasons}" if reasons else ""
        return UpstreamFailure(
            "server_error",
            f"the provider's moderation flagged the input (HTTP 403{said}): {message}",
            status=status,
            body=body,
            content_flagged=True,
        )
    if status == 403 and (policy := _content_policy_code(body)) is not None:
        # A content policy refused the input (its body says so: Azure's content_filter, a
        # content_policy_violation, a ResponsibleAIPolicyViolation): the key is fine, and another
        # provider, with another policy, may serve it; it falls over, as a moderation flag does.
        return UpstreamFailure(
            "server_error",
            f"the provider's content policy refused the request (HTTP 403; {policy}): {message}",
            status=status,
            body=body,
            content_flagged=True,
        )
    if status == 403 and _refuses_region(body):
        # OpenAI's answer to a gateway in a country it does not serve: no key would do, and
        # another provider may serve it.
        return UpstreamFailure(
            "server_error",
            f"the provider does not serve the gateway's country or region (HTTP 403): {message}",
            status=status,
            body=body,
        )
    if status in (401, 403) or (status == 400 and _refuses_key(body)):
        # The upstream refused OUR key: not the client's fault, and another provider may work.
        # (Gemini says so with a 400 INVALID_ARGUMENT whose reason is API_KEY_INVALID.)
        return UpstreamFailure(
            "server_error",
            f"provider authentication failed (HTTP {status}; {key_hint}): {message}",
            status=status,
            body=body,
        )
    if status in (402, 429) or (status == 400 and _out_of_credit(message)):
        # Our account with the provider is out of credit: again not the client's to fix.
        # Anthropic says so with a 400 invalid_request_error ("Your credit balance is too low"),
        # OpenAI with a 429 insufficient_quota (no rate limit: asked again, it says so again).
        return UpstreamFailure(
            "server_error",
            f"provider account needs payment (HTTP {status}): {message}",
            status=status,
            body=body,
        )
    if status == 404:
        # The gateway chose the path and the model name (the offer's `upstream`), not the client,
        # whose model the catalog knows: a provider that does not (a wrong upstream name, a model
        # it retired, a wrong base_url) has failed, and another provider selling it may serve it.
        return UpstreamFailure(
            "server_error",
            f"the provider does not serve this model or path (HTTP 404): {message}",
            status=status,
            body=body,
        )
    if status in TRY_AGAIN_4XX:
        return UpstreamFailure(
            "server_error",
            f"HTTP {status}: {message}",
            status=status,
            retry_after=parse_retry_after(resp.headers),
            body=body,
        )
    if 400 <= status < 500:
        code, param = error_code_param(body)
        return UpstreamRejected(status, f"{provider} rejected the request: {message}", code=code, param=param)
    if 300 <= status < 400:
        where = resp.headers.get("Location", "elsewhere")
        return UpstreamFailure(
            "server_error",
            f"HTTP {status} redirect to {where}; fix the provider's base_url",
            status=status,
        )
    return UpstreamFailure(
        "server_error",
        f"HTTP {status}: {message}",
        status=status,
        retry_after=parse_retry_after(resp.headers),
        body=body,
    )


async def read_error_body(resp: Response, start: bytes = b"") -> bytes:
    """The body of an error (`start`: what was read of it already), at most MAX_ERROR_BODY_BYTES
    of it: a JSON body cut short is read as text (its message clipped all the same)."""
    parts = [start]
    size = len(start)
    while size < MAX_ERROR_BODY_BYTES and (chunk := await resp.read_chunk()):
        parts.append(chunk)
        size += len(chunk)
    return b"".join(parts)[:MAX_ERROR_BODY_BYTES]


# How upstreams say a prompt overflows the model's context window (with its max_tokens): OpenAI's
# code, and the words of those that give none of their own (DeepSeek, vLLM, Mistral, OpenRouter:
# "maximum context length"; Anthropic: "prompt is too long"; Gemini: "The input token count (N)
# exceeds the maximum number of tokens allowed (M)"; Together, as TGI: "`inputs` tokens +
# `max_new_tokens` must be <= M").
_CONTEXT_OVERFLOW_CODE = "context_length_exceeded"
_CONTEXT_OVERFLOW_WORDS = (
    "maximum context length",
    "prompt is too long",
    "context window",
    "exceeds the maximum number of tokens allowed",
    "`inputs` tokens + `max_new_tokens` must be",
)


def overflows_context(rejected: UpstreamRejected) -> bool:
    """Does the upstream refuse the request because the prompt does not fit its model's window?"""
    if rejected.code == _CONTEXT_OVERFLOW_CODE:
        return True
    message = rejected.message.lower()
    return any(words in message for words in _CONTEXT_OVERFLOW_WORDS)


# Google's reasons (an ErrorInfo in the error's details) for a key it refuses with a 400.
_REFUSED_KEY_REASONS = frozenset({"API_KEY_INVALID", "API_KEY_EXPIRED"})


def _refuses_key(body: JSON | None) -> bool:
    error = body.get("error") if body is not None else None
    details = error.get("details") if isinstance(error, dict) else None
    return isinstance(details, list) and any(
        isinstance(detail, dict) and detail.get("reason") in _REFUSED_KEY_REASONS for detail in details
    )


def _moderation_reasons(body: JSON | None, secrets: Sequence[str]) -> str | None:
    """The categories a moderation flagged the input for (OpenRouter's 403: the error's
    `metadata.reasons`, beside the `flagged_input`, which is the client's words and stays out),
    "" if it gives none; None if the body is no such refusal."""
    error = body.get("error") if body is not None else None
    metadata = error.get("metadata") if isinstance(error, dict) else None
    if not isinstance(metadata, dict) or not ("reasons" in metadata or "flagged_input" in metadata):
        return None
    reasons = metadata.get("reasons")
    names = [r for r in reasons if isinstance(r, str)] if isinstance(reasons, list) else []
    return clip(redact(", ".join(names), secrets))


# The codes a content policy's refusal carries (error.code, error.type, or Azure's
# error.innererror.code): Azure OpenAI's content filter; OpenAI's and OpenRouter's content policy
# violation; Azure's Responsible AI policy.
_CONTENT_POLICY_CODES = frozenset(
    {"content_filter", "content_policy_violation", "ResponsibleAIPolicyViolation"}
)


def _content_policy_code(body: JSON | None) -> str | None:
    """The code by which an error says a content policy refused the request; None if it does not."""
    error = body.get("error") if body is not None else None
    if not isinstance(error, dict):
        return None
    inner = error.get("innererror")
    said = (error.get("code"), error.get("type"), inner.get("code") if isinstance(inner, dict) else None)
    return next((code for code in said if isinstance(code, str) and code in _CONTENT_POLICY_CODES), None)


def _refuses_region(body: JSON | None) -> bool:
    error = body.get("error") if body is not None else None
    return isinstance(error, dict) and error.get("code") == "unsupported_country_region_territory"


def _over_account_limit(message: str) -> bool:
    return message.lower().startswith("request too large for")


def _out_of_credit(message: str) -> bool:
    return "credit balance is too low" in message.lower()


def _out_of_quota(body: JSON | None) -> bool:
    error = body.get("error") if body is not None else None
    return isinstance(error, dict) and "insufficient_quota" in (error.get("code"), error.get("type"))


def rate_limit_wait(headers: Mapping[str, str], body: JSON | None) -> float | None:
    """Seconds a 429 asks us to wait: its Retry-After; else Gemini's RetryInfo in the body; else
    OpenAI's x-ratelimit-reset-* headers. None if none says."""
    seconds = parse_retry_after(headers)
    if seconds is None:
        seconds = _retry_info_delay(body)
    if seconds is None:
        seconds = _rate_limit_reset(headers)
    return seconds


def _retry_info_delay(body: JSON | None) -> float | None:
    """Gemini's wait: the `retryDelay` ("37s", a protobuf Duration) of a google.rpc.RetryInfo
    among the error's details."""
    error = body.get("error") if body is not None else None
    details = error.get("details") if isinstance(error, dict) else None
    for detail in details if isinstance(details, list) else ():
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            delay = detail.get("retryDelay")
            if isinstance(delay, str) and delay.endswith("s"):
                return _non_negative(delay[:-1])
    return None


def _rate_limit_reset(headers: Mapping[str, str]) -> float | None:
    """OpenAI's wait: when the limit that refused resets. Each reset is until the limit is full
    again, so the tokens' one (minutes, for a large allowance) is no wait when it is the requests
    that are spent: the requests' reset counts unless some are left, the tokens' unless none
    are; the longer of those that count."""
    left = headers.get("x-ratelimit-remaining-requests", "").strip()
    requests_left = int(left) if left.isdigit() else None
    resets = []
    if not requests_left:
        resets.append(go_duration(headers.get("x-ratelimit-reset-requests", "")))
    if requests_left != 0:
        resets.append(go_duration(headers.get("x-ratelimit-reset-tokens", "")))
    known = [seconds for seconds in resets if seconds is not None]
    return max(known) if known else None


def parse_retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from `retry-after-ms` (OpenAI's, more precise) or `Retry-After`
    (delay-seconds or an HTTP date); None if absent or unreadable."""
    millis = headers.get("retry-after-ms")
    if millis:
        seconds = _non_negative(millis)
        if seconds is not None:
            return seconds / 1000
    value = headers.get("Retry-After")
    if not value:
        return None
    seconds = _non_negative(value)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


# Go's time.Duration text, as OpenAI (and Groq) write their x-ratelimit-reset-* headers: "20ms",
# "1.5s", "6m0s", "2m59.56s".
_DURATION = re.compile(r"(?:(?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|ms|s|m|h))+")
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_DURATION_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def go_duration(text: str) -> float | None:
    """Seconds in a Go duration ("6m0s"); None if `text` is none."""
    if not _DURATION.fullmatch(text):
        return None
    return sum(float(n) * _DURATION_UNIT_SECONDS[unit] for n, unit in _DURATION_PART.findall(text))


def _non_negative(text: str) -> float | None:
    try:
        number = float(text)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None


def json_object(raw: bytes, what: str, status: int) -> JSON:
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise UpstreamFailure(
            "bad_response", f"{what} is not valid JSON ({exc}): {_snippet(raw)}", status=status
        ) from exc
    if not isinstance(value, dict):
        raise UpstreamFailure(
            "bad_response", f"{what} is a JSON {type(value).__name__}, expected an object", status=status
        )
    return value


def _try_json_object(raw: bytes) -> JSON | None:
    """An error body's JSON object; one alone in an array too (Gemini's OpenAI-compatible
    endpoint sends `[{"error": {...}}]`), so its message is read, not quoted as JSON text."""
    if not raw:
        return None
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    if isinstance(value, list) and len(value) == 1:
        value = value[0]
    return value if isinstance(value, dict) else None


def _error_message(body: JSON, secrets: Sequence[str]) -> str | None:
    message = error_message(body)
    # Redacted before it is clipped: a clip could cut a secret in two, and half would be left.
    return clip(redact(message, secrets)) if message else None


def _text_message(raw: bytes, secrets: Sequence[str]) -> str | None:
    text = raw.decode("utf-8", "replace").strip()
    # An HTML error page (a load balancer's 502) says less than the status line does.
    if not text or text.startswith("<"):
        return None
    return clip(redact(" ".join(text.split()), secrets))


def in_band_failure(body: JSON, when: str, status: int, secrets: Sequence[str]) -> UpstreamFailure:
    """The failure an error object sent after a 2xx head (in the body, or as a stream's event)
    is (`when`: where it came, for the detail). Its status is the one the error names
    (`error_status`), not the head's 200: so a rate limit or an overload there counts as one (the
    retry, the capacity checks, the record)."""
    named = error_status(body.get("error")) or status
    message = _error_message(body, secrets) or "no message"
    kind = "rate_limited" if named == 429 and not _out_of_quota(body) else "server_error"
    retry_after = _retry_info_delay(body) if kind == "rate_limited" else None
    # OpenRouter's moderation, once a model has begun (its output flagged): the content's, not the offer's.
    flagged = named == 403 and (
        _moderation_reasons(body, secrets) is not None or _content_policy_code(body) is not None
    )
    return UpstreamFailure(
        kind, f"{when}: {message}", status=named, retry_after=retry_after, body=body, content_flagged=flagged
    )


def json_instead_of_stream(raw: bytes, status: int, secrets: Sequence[str]) -> UpstreamFailure:
    body = _try_json_object(raw)
    if body is not None and "error" in body:
        return in_band_failure(body, "error instead of a stream", status, secrets)
    snippet = _snippet(redact(raw.decode("utf-8", "replace"), secrets))
    return UpstreamFailure(
        "bad_response", f"a JSON body instead of an event stream: {snippet}", status=status, body=body
    )


def page_instead_of_stream(start: bytes, status: int, secrets: Sequence[str]) -> UpstreamFailure:
    """A markup page (its first bytes: `start`) where an event stream belongs."""
    snippet = _snippet(redact(start.decode("utf-8", "replace").strip(), secrets))
    return UpstreamFailure("bad_response", f"a page instead of an event stream: {snippet}", status=status)


def transport_failure(exc: TransportError, when: str, status: int | None) -> UpstreamFailure:
    """A failed exchange: bytes that are not HTTP are a bad response; everything else
    (closed, reset, pool shut down) is the connection's fault."""
    kind = "bad_response" if isinstance(exc, BadResponse) else "connection"
    return UpstreamFailure(kind, f"{exc} {when}", status=status)


def clip(text: str) -> str:
    return text if len(text) <= _MAX_MESSAGE_CHARS else text[: _MAX_MESSAGE_CHARS - 1] + "…"


def _snippet(raw: bytes | str) -> str:
    start = raw[:80]
    text = start.decode("utf-8", "replace") if isinstance(start, bytes) else start
    return repr(text) + ("…" if len(raw) > 80 else "")
