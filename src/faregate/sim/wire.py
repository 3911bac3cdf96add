"""OpenAI's chat-completion wire shapes: the whole body, and the SSE chunks of a stream.

Stream chunks share everything but the delta and finish_reason, so a ChunkWriter
serialises the common head and tail once and splices each delta in: a 1,000-token
stream costs 1,000 small orjson calls on strings, not 1,000 dict dumps.
"""

from __future__ import annotations

import itertools
import os
import time
from typing import Any

import orjson

from faregate.types import JSON

SYSTEM_FINGERPRINT = "fp_faregate_sim"
DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}

_ID_PREFIX = os.urandom(4).hex()
_ids = itertools.count(1)


def new_id(prefix: str = "chatcmpl-") -> str:
    # Unique within the process and unlikely to repeat across restarts; far cheaper than uuid4.
    return f"{prefix}{_ID_PREFIX}{next(_ids):012x}"


def usage(prompt_tokens: int, completion_tokens: int) -> JSON:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def completion(model: str, choices: list[JSON], prompt_tokens: int, completion_tokens: int) -> bytes:
    return orjson.dumps(
        {
            "id": new_id(),
            "object": "chat.completion",
            "created": int(time.time()),
            "model": model,
            "choices": choices,
            "usage": usage(prompt_tokens, completion_tokens),
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
    )


def choice(message: JSON, finish_reason: str, index: int = 0) -> JSON:
    return {"index": index, "message": message, "logprobs": None, "finish_reason": finish_reason}


def text_message(content: str) -> JSON:
    return {"role": "assistant", "content": content, "refusal": None}


def tool_message(call_id: str, name: str, arguments: str) -> JSON:
    return {
        "role": "assistant",
        "content": None,
        "refusal": None,
        "tool_calls": [
            {"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
        ],
    }


class ChunkWriter:
    """Builds the `data: {...}\\n\\n` frames of one stream (of one choice: `index`)."""

    def __init__(self, model: str, include_usage: bool, index: int = 0, common: JSON | None = None) -> None:
        self._common: JSON = common or {
            "id": new_id(),
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
            "system_fingerprint": SYSTEM_FINGERPRINT,
        }
        self._model = model
        self._include_usage = include_usage
        head = orjson.dumps(self._common)[:-1]  # without the closing brace
        self._head = b"data: " + head + b',"choices":[{"index":%d,"delta":' % index
        usage_null = b',"usage":null' if include_usage else b""
        self._tail = b',"logprobs":null,"finish_reason":null}]' + usage_null + b"}\n\n"
        self._finish_tail = b',"logprobs":null,"finish_reason":"%s"}]' + usage_null + b"}\n\n"

    def for_choice(self, index: int) -> ChunkWriter:
        """A writer for another choice of the same stream (same id and time)."""
        return ChunkWriter(self._model, self._include_usage, index, self._common)

    def delta(self, delta: JSON) -> bytes:
        return self._head + orjson.dumps(delta) + self._tail

    def content(self, text: str) -> bytes:
        return self._head + b'{"content":' + orjson.dumps(text) + b"}" + self._tail

    def finish(self, reason: str) -> bytes:
        return self._head + b"{}" + self._finish_tail % reason.encode()

    def no_choices(self) -> bytes:
        return self._frame({"choices": [], **({"usage": None} if self._include_usage else {})})

    def usage(self, prompt_tokens: int, completion_tokens: int) -> bytes:
        return self._frame({"choices": [], "usage": usage(prompt_tokens, completion_tokens)})

    def _frame(self, fields: dict[str, Any]) -> bytes:
        return b"data: " + orjson.dumps({**self._common, **fields}) + b"\n\n"


def role_delta() -> JSON:
    return {"role": "assistant", "content": ""}


def tool_call_deltas(call_id: str, name: str, arguments: str) -> tuple[JSON, JSON]:
    """The two deltas OpenAI streams for one call: id and name first, then the arguments text."""
    head = {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"index": 0, "id": call_id, "type": "function", "function": {"name": name, "arguments": ""}}
        ],
    }
    body = {"tool_calls": [{"index": 0, "function": {"arguments": arguments}}]}
    return head, body
