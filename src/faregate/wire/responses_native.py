"""A Responses request passed through natively to a provider that speaks OpenAI's Responses API.

The Responses client wire translates every request to the internal chat body (so routing,
holds, the cache and fallbacks to any model work as for chat), and also carries the client's
own Responses body in it under `NATIVE_REQUEST`: a wire extra (ChatRequest.wire_extras), so
only a provider configured with `responses: true` receives it; every other provider gets the
translation. Such a provider POSTs the native body (the offer's upstream model name put in,
`store` false, for a reasoning request the client would have stored its reasoning asked back
encrypted, and without tools no tool settings, as the translation sends none) to its
/responses and hands the pipeline an internal answer read from the Response, with the
Response itself riding along:

- a whole answer: the internal chat.completion (text, function calls, finish reason, usage with
  cached tokens) with the upstream's Response under `NATIVE_ANSWER`, which the client wire
  sends as it came (the gateway's model name, `usage.cost` and `usage.baseline_cost` put in);
- a stream: per upstream event one internal chunk (its text or tool-call delta, the finish
  reason and usage on response.completed / response.incomplete) with the event itself under
  `NATIVE_EVENTS`, which the client wire's encoder relays as it came (the final event's usage
  gets the cost and the baseline cost). response.failed and `error` events raise
  UpstreamFailure, as a chat stream's error chunk does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from faregate.errors import UpstreamFailure
from faregate.types import GATEWAY_FIELDS, JSON, Usage
from faregate.wire.openai import error_status
from faregate.wire.responses import responses_usage
from faregate.wire.usage import GATEWAY_USAGE_FIELDS, token_count, usage_json

# The client's Responses body inside the internal chat body (a wire extra).
NATIVE_REQUEST = "responses_request"
# The upstream's Response inside an internal answer; its events inside an internal chunk.
NATIVE_ANSWER = "_native_response"
NATIVE_EVENTS = "_native_events"
# What a request not stored asks for to have its reasoning back: each reasoning item with its
# encrypted_content, which the next turn's input carries (OpenAI's way for stateless requests).
# Only reasoning models take it (others refuse: "Encrypted content is not supported with this
# model").
ENCRYPTED_REASONING = "reasoning.encrypted_content"
# What says nothing without a tool to call, and is not sent then: the translation drops an empty
# `tools`, a tool_choice of auto or none and parallel_tool_calls (server/parse.py, which refuses a
# forced choice, for either path), and so does the pass-through (OpenAI's Responses API refuses
# some of them without tools, other servers that speak it more).
_TOOL_SETTINGS = ("tools", "tool_choice", "parallel_tool_calls")
# The final events of a Response stream, which carry its usage.
FINAL_EVENTS = frozenset({"response.completed", "response.incomplete"})


def native_body(call_body: JSON, stream: bool) -> JSON:
    """The body sent upstream: the client's Responses request, with the upstream model name the
    call's chat body carries, nothing stored (so no reasoning item that only names a stored one,
    and a reasoning request the gateway made stateless asks for its reasoning back encrypted),
    without tool settings when it has no tools, and without the gateway's own fields."""
    asked = call_body[NATIVE_REQUEST]
    body = {k: v for k, v in asked.items() if k not in GATEWAY_FIELDS and k != "stream"}
    body["model"] = call_body["model"]
    if asked.get("store") is not False and _asks_for_reasoning(asked):
        # Stored, the reasoning items would be referenced by id on the next turn; not stored, they
        # must carry their reasoning, else they are dropped from it (`_names_a_stored_item`).
        include = asked.get("include")
        if include is None:
            body["include"] = [ENCRYPTED_REASONING]
        elif isinstance(include, list) and ENCRYPTED_REASONING not in include:
            body["include"] = [*include, ENCRYPTED_REASONING]
    body["store"] = False
    if not asked.get("tools"):
        for name in _TOOL_SETTINGS:
            body.pop(name, None)
    if isinstance(body.get("input"), list):
        body["input"] = [item for item in body["input"] if not _names_a_stored_item(item)]
    if stream:
        body["stream"] = True
    return body


def _asks_for_reasoning(asked: JSON) -> bool:
    """Does the request set `reasoning` (an effort, a summary)? Only a reasoning model takes it
    (a model the catalog says does not reason was sent none: wire/model_params.py), and the
    catalog does not say which models reason unasked: without it, no include is added."""
    reasoning = asked.get("reasoning")
    return isinstance(reasoning, dict) and any(value is not None for value in reasoning.values())


def _names_a_stored_item(item: Any) -> bool:
    """A reasoning item without its encrypted_content, as `input += response.output` passes one
    back after a reasoning model answered: it names the item stored upstream by its id only, and
    with `store: false` OpenAI refuses it (404 "Item with id 'rs_...' not found. Items are not
    persisted..."). Dropped, as the translation drops every reasoning item: the model reasons
    afresh. One with its encrypted_content (`include: ["reasoning.encrypted_content"]`) is
    self-contained and goes along."""
    return isinstance(item, dict) and item.get("type") == "reasoning" and not item.get("encrypted_content")


def usage_of(response: Any) -> Usage | None:
    """The internal usage of a Response's usage (input_tokens include cached tokens, as in chat)."""
    usage = response.get("usage") if isinstance(response, dict) else None
    if not isinstance(usage, dict):
        return None
    prompt, completion = token_count(usage.get("input_tokens")), token_count(usage.get("output_tokens"))
    if prompt is None or completion is None:
        return None
    details = usage.get("input_tokens_details")
    read = (token_count(details.get("cached_tokens")) or 0) if isinstance(details, dict) else 0
    write = (token_count(details.get("cache_write_tokens")) or 0) if isinstance(details, dict) else 0
    if read + write > prompt:
        return Usage(prompt, completion)
    return Usage(prompt, completion, cache_read_tokens=read, cache_write_tokens=write)


def unreadable_response(response: JSON) -> str | None:
    """Why a Response cannot be read here (its output a list of objects, a message's content a
    list, incomplete_details an object), or None. Any OpenAI-wire server may be configured with
    `responses: true`: valid JSON in another shape is a bad response to fall back from, not a
    crash."""
    output = response.get("output")
    if output is not None:
        if type(output) is not list:
            return "output is not a list"
        for index, item in enumerate(output):
            if type(item) is not dict:
                return f"output item {index} is not an object"
            content = item.get("content")
            if item.get("type") == "message" and content is not None and type(content) is not list:
                return f"output item {index}'s content is not a list"
    details = response.get("incomplete_details")
    if details is not None and type(details) is not dict:
        return "incomplete_details is not an object"
    return None


def response_to_completion(response: JSON) -> tuple[JSON, Usage | None]:
    """The internal chat.completion a whole Response amounts to, the Response under NATIVE_ANSWER."""
    texts: list[str] = []
    refusals: list[str] = []
    calls: list[JSON] = []
    for item in response.get("output") or ():
        if not isinstance(item, dict):
            continue
        if item.get("type") == "message":
            for part in item.get("content") or ():
                if isinstance(part, dict) and part.get("type") == "output_text":
                    texts.append(str(part.get("text") or ""))
                elif isinstance(part, dict) and part.get("type") == "refusal":
                    refusals.append(str(part.get("refusal") or ""))
        elif item.get("type") == "function_call":
            calls.append(_tool_call(item))
    message: JSON = {"role": "assistant", "content": "".join(texts) if texts or not calls else None}
    if refusals:
        message["refusal"] = "".join(refusals)
    if calls:
        message["tool_calls"] = calls
    usage = usage_of(response)
    body: JSON = {
        "id": str(response.get("id") or ""),
        "object": "chat.completion",
        "created": response.get("created_at"),
        "model": response.get("model"),
        "choices": [{"index": 0, "message": message, "finish_reason": _finish(response, bool(calls))}],
        NATIVE_ANSWER: response,
    }
    if usage is not None:
        body["usage"] = usage_json(usage)
    return body, usage


def native_answer(body: JSON) -> JSON | None:
    """The upstream's Response for a priced internal answer (None if it was translated), as the
    client receives it: the gateway's model name, the priced usage with its cost."""
    native = body.get(NATIVE_ANSWER)
    if not isinstance(native, dict):
        return None
    usage = priced_usage(native.get("usage"), body.get("usage"))
    return {**native, "model": body.get("model"), "usage": usage}


def priced_usage(native: Any, internal: Any) -> JSON | None:
    """The upstream's Responses usage with the gateway's `cost`, `baseline_cost` (and `estimated`)
    put in; the internal usage in Responses' shape when the upstream gave none."""
    if not isinstance(native, dict):
        return responses_usage(internal) if isinstance(internal, dict) else None
    out = dict(native)
    if isinstance(internal, dict):
        for extra in GATEWAY_USAGE_FIELDS:
            if extra in internal:
                out[extra] = internal[extra]
    return out


async def chunks_of_events(events: AsyncIterator[JSON]) -> AsyncIterator[JSON]:
    """The internal chunks of a Response event stream, each carrying its event (NATIVE_EVENTS)."""
    tools: dict[Any, int] = {}  # output_index -> tool call index
    async for event in events:
        kind = event.get("type")
        if "response" in event or kind in FINAL_EVENTS:
            snapshot = event.get("response")
            if type(snapshot) is not dict:
                raise UpstreamFailure("bad_response", f"{kind} event: response is not an object", body=event)
            if (unreadable := unreadable_response(snapshot)) is not None:
                raise UpstreamFailure("bad_response", f"{kind} event: response's {unreadable}", body=event)
        if kind == "error" or kind == "response.failed":
            error = event.get("error") or (event.get("response") or {}).get("error") or event
            message = error.get("message") if isinstance(error, dict) else None
            # The status its code names (the head said 200): a rate limit or an overload is one.
            status = error_status(error)
            raise UpstreamFailure(
                "rate_limited" if status == 429 else "server_error",
                f"{kind} event: {message or 'no message'}",
                status=status,
                body=event,
            )
        delta: JSON = {}
        finish: str | None = None
        chunk: JSON = {"object": "chat.completion.chunk", NATIVE_EVENTS: [event]}
        if kind == "response.output_text.delta":
            delta["content"] = str(event.get("delta") or "")
        elif kind == "response.refusal.delta":
            delta["refusal"] = str(event.get("delta") or "")
        elif kind == "response.output_item.added" and _is_call(event.get("item")):
            item = event["item"]
            index = tools.setdefault(event.get("output_index"), len(tools))
            delta["tool_calls"] = [{**_tool_call(item), "index": index}]
            delta["tool_calls"][0]["function"]["arguments"] = str(item.get("arguments") or "")
        elif kind == "response.function_call_arguments.delta":
            index = tools.get(event.get("output_index"), 0)
            delta["tool_calls"] = [{"index": index, "function": {"arguments": str(event.get("delta") or "")}}]
        elif kind in FINAL_EVENTS:
            response = event.get("response") or {}
            finish = _finish(response, bool(tools))
            usage = usage_of(response)
            if usage is not None:
                chunk["usage"] = usage_json(usage)
        chunk["choices"] = [{"index": 0, "delta": delta, "finish_reason": finish}] if delta or finish else []
        yield chunk


def _is_call(item: Any) -> bool:
    return isinstance(item, dict) and item.get("type") == "function_call"


def _tool_call(item: JSON) -> JSON:
    return {
        "id": str(item.get("call_id") or ""),
        "type": "function",
        "function": {"name": str(item.get("name") or ""), "arguments": str(item.get("arguments") or "")},
    }


def _finish(response: JSON, called: bool) -> str:
    """The chat finish reason of a Response's status."""
    reason = (response.get("incomplete_details") or {}).get("reason")
    if response.get("status") == "incomplete":
        return "content_filter" if reason == "content_filter" else "length"
    return "tool_calls" if called else "stop"


class NativeStream:
    """The client's side of a passed-through Response stream: each upstream event relayed as it
    came (the gateway's model name in the Response snapshots), the final one held back until its
    usage can carry the cost; a failure after the start ends it with response.failed."""

    __slots__ = ("_final", "_model", "_sequence", "_snapshot")

    def __init__(self, model: str) -> None:
        self._model = model
        self._final: JSON | None = None
        self._snapshot: JSON = {"object": "response", "model": model, "output": []}
        self._sequence = -1

    def relay(self, events: list[JSON]) -> list[JSON]:
        out: list[JSON] = []
        for event in events:
            sequence = event.get("sequence_number")
            if type(sequence) is int:
                self._sequence = sequence
            response = event.get("response")
            if isinstance(response, dict):
                response = {**response, "model": self._model}
                self._snapshot = response
                event = {**event, "response": response}
            if event.get("type") in FINAL_EVENTS:
                self._final = event
            else:
                out.append(event)
        return out

    def close(self, usage_chunk: JSON | None) -> list[JSON]:
        """The final event, its usage priced (`usage_chunk`: the priced internal usage chunk)."""
        final = self._final
        if final is None:
            return self.fail("the upstream stream ended without response.completed")
        response = dict(final["response"])
        internal = usage_chunk.get("usage") if usage_chunk is not None else None
        response["usage"] = priced_usage(response.get("usage"), internal)
        return [{**final, "response": response}]

    def fail(self, message: str) -> list[JSON]:
        self._sequence += 1
        error = {"code": "server_error", "message": message}
        response = {**self._snapshot, "status": "failed", "error": error}
        return [{"type": "response.failed", "sequence_number": self._sequence, "response": response}]
