"""What the simulator says: answer text, its token-aligned stream pieces and its exact token count.

Usage must match what a real o200k model would report for the text sent, so every
count here is of the text actually sent (after any max_tokens cut). `lorem`
answers are built from words that are each one o200k token, so they are counted
and split without running the tokenizer: the benchmark path stays cheap.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from faregate import tokens
from faregate.sim import replay
from faregate.sim.script import Answer, AnswerSpec, Behaviour
from faregate.sim.structured import instance_json, structured_answer
from faregate.types import JSON

# Each word is a single o200k token when preceded by a space, and "Lorem" is one token on its
# own, so "Lorem ipsum dolor ..." with N words is exactly N tokens (checked in tests/test_sim.py).
LOREM_FIRST = "Lorem"
LOREM_WORDS = (
    "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore et "
    "dolore magna aliqua enim ad minim veniam quis exercitation laboris nisi ex ea commodo consequat aute in "
    "reprehenderit voluptate velit esse fugiat nulla pariatur sint non sunt culpa qui officia deserunt anim "
    "id est laborum"
).split()
_SPACED = tuple(" " + word for word in LOREM_WORDS)
# A blank answer: whitespace only, sent as two deltas when streamed.
BLANK_PIECES = (" ", "\n")


@dataclass(slots=True)
class Reply:
    content: str
    tokens: int
    finish_reason: str  # "stop", or "length" when max_tokens cut the answer
    pieces: Sequence[str] | None = None  # stream deltas, one token each (a split character stays whole)


def make_reply(answer: Answer, body: JSON, max_tokens: int | None, *, split: bool) -> Reply:
    """The reply to `body`; `split` asks for the stream pieces too."""
    if isinstance(answer, AnswerSpec) and answer.lorem is not None:
        return lorem_reply(answer.lorem, max_tokens)
    return text_reply(answer_text(answer, body), max_tokens, split=split)


def answer_text(answer: Answer, body: JSON) -> str:
    if answer == "echo":
        echo = last_user_text(body)
        return structured_answer(body, echo) or echo
    if answer == "inspect":
        return orjson.dumps(body).decode()
    assert isinstance(answer, AnswerSpec)
    if answer.fixed is not None:
        return answer.fixed
    assert answer.replay is not None
    spec = answer.replay
    recorded = replay.table(spec.csv, spec.prompt_column, spec.column)
    return recorded.get(last_user_text(body).strip(), spec.fallback)


def last_user_text(body: JSON) -> str:
    for message in reversed(body.get("messages") or []):
        if isinstance(message, dict) and message.get("role") == "user":
            return content_text(message.get("content"))
    return ""


def content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return "\n".join(str(p.get("text", "")) for p in parts)
    return ""


def lorem_reply(n: int, max_tokens: int | None) -> Reply:
    finish = "stop"
    if max_tokens is not None and n > max_tokens:
        n, finish = max_tokens, "length"
    text, pieces = _lorem(n)
    return Reply(text, n, finish, pieces)


def lorem_pieces(n: int) -> tuple[str, ...]:
    return _lorem(n)[1]


@functools.lru_cache(maxsize=256)
def _lorem(n: int) -> tuple[str, tuple[str, ...]]:
    # Benchmarks ask for the same few lengths over and over: build each once.
    if n <= 0:
        return "", ()
    count = len(_SPACED)
    pieces = (LOREM_FIRST, *(_SPACED[i % count] for i in range(1, n)))
    return "".join(pieces), pieces


def text_reply(text: str, max_tokens: int | None, *, split: bool) -> Reply:
    if max_tokens is None and not split:
        return Reply(text, tokens.count_text(text), "stop")
    ids = tokens.encoding().encode_ordinary(text) if text else []
    finish = "stop"
    if max_tokens is not None and len(ids) > max_tokens:
        text, ids = _cut(ids, max_tokens)
        finish = "length"
    return Reply(text, len(ids), finish, _pieces(ids) if split else None)


def blank_reply() -> Reply:
    text = "".join(BLANK_PIECES)
    return Reply(text, tokens.count_text(text), "stop", list(BLANK_PIECES))


def _cut(ids: list[int], limit: int) -> tuple[str, list[int]]:
    """The longest prefix whose own re-count fits the limit (BPE is not prefix-stable, rarely)."""
    enc = tokens.encoding()
    keep = limit
    while True:
        # A cut inside a multi-token character drops its partial bytes.
        text = enc.decode_bytes(ids[:keep]).decode("utf-8", "ignore")
        recount = enc.encode_ordinary(text)
        if len(recount) <= limit:
            return text, recount
        keep -= 1


def _pieces(ids: list[int]) -> list[str]:
    pieces: list[str] = []
    pending = b""
    for chunk in tokens.encoding().decode_tokens_bytes(ids):
        pending += chunk
        try:
            pieces.append(pending.decode("utf-8"))
        except UnicodeDecodeError:
            continue  # part of a character that spans several tokens
        pending = b""
    if pending:
        pieces.append(pending.decode("utf-8", "replace"))
    return pieces


def tool_to_call(body: JSON) -> str | None:
    """Name of the tool a `tool_call` behaviour calls: the forced one, else the first; None without tools."""
    tools = body.get("tools")
    choice = body.get("tool_choice")
    if not isinstance(tools, list) or not tools or choice == "none":
        return None
    if isinstance(choice, dict):
        forced = (choice.get("function") or {}).get("name")
        if isinstance(forced, str):
            return forced
    first = tools[0] if isinstance(tools[0], dict) else {}
    name = (first.get("function") or {}).get("name")
    return name if isinstance(name, str) else None


def tool_parameters(body: JSON, name: str) -> Any:
    """The parameters schema of the tool `name` in `body`; a tool without one takes an object."""
    for tool in body.get("tools") or []:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and function.get("name") == name:
            parameters = function.get("parameters")
            if isinstance(parameters, dict) and parameters:
                return parameters
    return {"type": "object"}


def scripted_reply(
    body: JSON, behaviour: Behaviour, fault: str | None, max_tokens: int | None, split: bool
) -> tuple[Reply, str | None]:
    """The reply to a chat body under `behaviour` and `fault`, and the tool it calls (if any)."""
    tool = tool_to_call(body) if behaviour.tool_call and fault in (None, "truncate", "stall") else None
    if fault == "empty_choices":
        return Reply("", 0, "stop", []), None
    if fault == "blank":
        return blank_reply(), None
    if tool is not None:
        # What a model would have generated: the call's name and arguments its parameters accept.
        arguments = instance_json(tool_parameters(body, tool), last_user_text(body))
        return Reply(arguments, tokens.count_text(tool) + tokens.count_text(arguments), "tool_calls"), tool
    return make_reply(behaviour.answer, body, max_tokens, split=split), None
