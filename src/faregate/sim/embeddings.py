"""The simulator's embeddings endpoint: POST /v1/embeddings.

Vectors are deterministic: each input's unit vector is drawn from a generator seeded by the
model and the input, so the same text always embeds the same way and different texts almost
never alike. `dimensions` sets the length (default DIMENSIONS, at most MAX_DIMENSIONS as at
OpenAI); `encoding_format: base64` sends little-endian float32 bytes, as OpenAI does (the openai
SDK asks for it by default). Usage is
exact: each text input's tokens with the gateway's tokenizer, token-array inputs by length.
Faults as on the chat endpoint: 429, 500, 503, hang, reset, a cut body for `truncate`, and no
vectors at all for `empty_choices`.
"""

from __future__ import annotations

import array
import asyncio
import base64
import functools
import hashlib
import math
import random
import sys
from typing import TYPE_CHECKING

import orjson
from aiohttp import web

from faregate import tokens
from faregate.errors import InvalidRequest
from faregate.sim import faults
from faregate.sim.delivery import cut_body, reset_connection
from faregate.sim.faults import JSON_TYPE
from faregate.sim.script import ScriptedRequestError
from faregate.types import JSON
from faregate.wire import embeddings as wire

if TYPE_CHECKING:
    from faregate.sim.simulator import Simulator

DIMENSIONS = 1536
# The most OpenAI gives (text-embedding-3-large); more is its 400, and would be gigabytes here.
MAX_DIMENSIONS = 3072


@functools.lru_cache(maxsize=4096)
def vector(model: str, item: str | tuple[int, ...], dimensions: int) -> array.array[float]:
    """A unit float32 vector of independent, zero-mean components (int16 draws, scaled). Pure
    Python (no numpy): the simulator is part of the core install, which `make run` starts on a
    fresh clone. Remembered: benchmarks embed the same inputs over and over."""
    text = item if isinstance(item, str) else ",".join(map(str, item))
    seed = int.from_bytes(hashlib.sha256(f"{model}\0{text}".encode()).digest()[:8], "little")
    draws = array.array("h", random.Random(seed).randbytes(2 * dimensions))
    norm = math.sqrt(math.fsum(v * v for v in draws)) or 1.0
    return array.array("f", [v / norm for v in draws])


def embedding_json(index: int, values: array.array[float], encoding: str) -> JSON:
    data: object
    if encoding == "base64":
        raw = values if sys.byteorder == "little" else array.array("f", values)
        if sys.byteorder != "little":
            raw.byteswap()  # OpenAI's base64 is little-endian float32
        data = base64.b64encode(raw.tobytes()).decode()
    else:
        data = values.tolist()
    return {"object": "embedding", "index": index, "embedding": data}


class EmbeddingsEndpoint:
    def __init__(self, simulator: Simulator) -> None:
        self._sim = simulator

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        if not tokens.is_loaded():
            await self._sim.warm()
        try:
            body = orjson.loads(await request.read())
            parsed = wire.parse_request(body)
        except orjson.JSONDecodeError as exc:
            return _error(400, f"We could not parse the JSON body of your request: {exc}")
        except InvalidRequest as exc:
            self._sim.stats.rejected += 1
            return _error(400, exc.message, exc.param)
        if parsed.dimensions is not None and parsed.dimensions > MAX_DIMENSIONS:
            self._sim.stats.rejected += 1
            return _error(400, f"dimensions must be at most {MAX_DIMENSIONS}", "dimensions")
        try:
            behaviour, fault = self._sim.scripted(request, body, parsed.model)
        except ScriptedRequestError as exc:
            self._sim.stats.rejected += 1
            return _error(400, str(exc), exc.param)
        self._sim.stats.count(parsed.model, fault, False, "embeddings")
        if fault in ("hang", "stall"):  # nothing is streamed: a stall is a hang
            await asyncio.sleep(behaviour.hang_s)
            fault = None
        if fault == "reset":
            return reset_connection(request)
        failed = faults.openai_error(fault, behaviour.retry_after_s)
        if failed is not None:
            return failed
        dimensions = parsed.dimensions or DIMENSIONS
        items = [] if fault == "empty_choices" else parsed.inputs
        # As a provider counts its own tokens: by o200k, as the chat endpoint does (not with
        # wire.input_tokens, the gateway's estimate, which counts by accounts.usage_estimate).
        prompt = sum(
            len(item) if isinstance(item, tuple) else tokens.count_text(item) for item in parsed.inputs
        )
        answer = {
            "object": "list",
            "data": [
                embedding_json(i, vector(parsed.model, item, dimensions), parsed.encoding_format)
                for i, item in enumerate(items)
            ],
            "model": parsed.model,
            "usage": {"prompt_tokens": prompt, "total_tokens": prompt},
        }
        if behaviour.ttft_ms > 0:
            await asyncio.sleep(behaviour.ttft_ms / 1000)
        data = orjson.dumps(answer)
        if fault == "truncate":
            return await cut_body(request, data)
        return web.Response(body=data, content_type=JSON_TYPE)


def _error(status: int, message: str, param: str | None = None) -> web.Response:
    return web.Response(
        status=status,
        body=faults.error_body(message, "invalid_request_error", None, param),
        content_type=JSON_TYPE,
    )
