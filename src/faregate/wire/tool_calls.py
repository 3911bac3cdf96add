"""Tool calls as upstreams give them, made ones a client can read and answer.

Three things upstreams get wrong that a client cannot mend:
- no id (Ollama, StepFun, GLM behind DashScope): the client must send a call's id back as its
  result's tool_call_id (OpenAI and Anthropic refuse a result without one), so the gateway makes
  one (`new_call_id`): whole (`with_call_ids`) and streamed (`StreamedCalls`, on the call's first
  delta only: the openai SDK's stream helper appends every later delta's id to the call's);
- parallel calls streamed under one index, or none (Gemini's OpenAI-compatible endpoint: each
  call's first delta brings its id and name, `is_new_call`): the SDK's helper made them one call
  (two JSON objects run together as its arguments), or raised without an index, so each gets an
  index of its own (`StreamedCalls`);
- no arguments for a function without parameters ("" or none at all, where OpenAI says "{}"):
  the client json.loads them (the openai SDK's parse helpers too), and "" is not JSON, so the
  call's arguments are "{}" (`NO_ARGUMENTS`): whole, and streamed as one more delta with the
  choice's finish (`StreamedCalls.unargued`) for a call that ended with no argument text at all
  (a client adds the deltas up: any other call's are its own).
Streams are mended where they are read (wire.openai.StreamedAnswer.take, for every client
wire: only chunks that carry tool calls cost anything), whole answers by the chat wire
(client_wires.ChatWire) and when replayed as a stream (wire.openai.answer_as_chunks); the
Messages and Responses wires make their own ids for whole answers.
"""

from __future__ import annotations

import secrets
from typing import Any

from faregate.types import JSON


def new_call_id() -> str:
    """An id for a tool call its upstream gave none: a result names its call by it, so it must
    be there and unique."""
    return "call_" + secrets.token_hex(12)


def is_new_call(call: JSON, open_id: Any) -> bool:
    """Does this tool-call delta start a call other than the open one (whose upstream id is
    `open_id`) at its index? Gemini's OpenAI endpoint streams parallel calls under one index (or
    none), each starting with its own id and its name. Later deltas of a call carry no name (or
    an empty one), and no id, an empty one, the same one, or (Poolside) another one. A call
    opened without an id is never split (its id may come late)."""
    new_id, fn = call.get("id"), call.get("function")
    named = isinstance(fn, dict) and isinstance(fn.get("name"), str) and bool(fn["name"])
    return named and bool(open_id) and isinstance(new_id, str) and bool(new_id) and new_id != open_id


# A call's arguments when its upstream gave none: OpenAI's own for a function without
# parameters, a JSON object.
NO_ARGUMENTS = "{}"


def with_call_ids(body: JSON) -> JSON:
    """A whole chat answer whose every tool call has an id and arguments: `body` itself when
    they all do (the usual case: nothing copied, a look at each choice), else a copy with an id
    made for each call that had none, and NO_ARGUMENTS for each that had none. The shape is the
    one the provider checked (unreadable_choices)."""
    choices = body.get("choices") or ()
    for choice in choices:
        calls = (choice.get("message") or _NOTHING).get("tool_calls")
        if calls and not all(_is_whole(call) for call in calls):
            return {**body, "choices": [_mended(choice) for choice in choices]}
    return body


_NOTHING: JSON = {}


def _is_whole(call: JSON) -> bool:
    return bool(call.get("id")) and bool((call.get("function") or _NOTHING).get("arguments"))


def _mended(choice: JSON) -> JSON:
    message = choice.get("message") or _NOTHING
    if not message.get("tool_calls"):
        return choice
    calls = []
    for call in message["tool_calls"]:
        if not _is_whole(call):
            fn = call.get("function")
            call = {**call, "id": call.get("id") or new_call_id()}
            if isinstance(fn, dict) and not fn.get("arguments"):
                call["function"] = {**fn, "arguments": NO_ARGUMENTS}
        calls.append(call)
    return {**choice, "message": {**message, "tool_calls": calls}}


class StreamedCalls:
    """One stream's tool-call deltas, mended in place as they are read (module docstring): a
    call's first delta gets an id when it has none, and each call an index of its own, the
    upstream's own unless an earlier call took it. Only deltas that carry tool calls come here,
    and, at a choice's finish, `unargued` says the calls that ended without arguments."""

    __slots__ = ("_open", "_taken", "_unargued")

    def __init__(self) -> None:
        # (choice index, upstream call index) -> [index sent, upstream id, whether the id was made]
        self._open: dict[tuple[Any, Any], list[Any]] = {}
        self._taken: dict[Any, set[int]] = {}  # per choice: the call indexes sent so far
        self._unargued: dict[Any, set[int]] = {}  # per choice: those of calls without argument text

    def mend(self, choice: Any, calls: list[JSON]) -> None:
        """The tool calls of one delta of choice `choice`."""
        for call in calls:  # a list of objects (the provider checked: unreadable_choices)
            key = (choice, call.get("index"))
            opened = self._open.get(key)
            if opened is None or is_new_call(call, opened[1]):
                upstream_id = call.get("id")
                made = not upstream_id
                if made:
                    call["id"] = new_call_id()
                opened = self._open[key] = [self._index_for(choice, call.get("index")), upstream_id, made]
                self._unargued.setdefault(choice, set()).add(opened[0])
            elif opened[2] and "id" in call:
                del call["id"]  # late: the client has the one made, which the SDK would append it to
            call["index"] = opened[0]
            fn = call.get("function")
            if isinstance(fn, dict) and fn.get("arguments") and (unargued := self._unargued.get(choice)):
                unargued.discard(opened[0])

    def unargued(self, choice: Any) -> list[JSON]:
        """At choice `choice`'s finish: a delta for each of its calls that had no argument text,
        giving it NO_ARGUMENTS (the deltas of the others already add up to their arguments)."""
        indexes = self._unargued.pop(choice, ())
        return [{"index": index, "function": {"arguments": NO_ARGUMENTS}} for index in sorted(indexes)]

    def _index_for(self, choice: Any, index: Any) -> int:
        taken = self._taken.setdefault(choice, set())
        wanted = index if isinstance(index, int) and index >= 0 else 0
        given = wanted if wanted not in taken else max(taken) + 1
        taken.add(given)
        return given
