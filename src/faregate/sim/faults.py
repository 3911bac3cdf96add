"""Which fault a request gets, and the error bodies the failing ones send.

Draws are exclusive: one uniform number per request picks at most one fault, so a
rate of 0.1 means one request in ten gets exactly that fault. With a seed, each
model has its own random stream, so a model's sequence of faults does not depend
on how requests to other models interleave with it.
"""

from __future__ import annotations

import functools
import random

import orjson
from aiohttp import web

from faregate.sim.script import FAULTS, Faults


class FaultPicker:
    def __init__(self, seed: int | None) -> None:
        self._seed = seed
        self._streams: dict[str, random.Random] = {}

    def draw(self, model: str, faults: Faults) -> str | None:
        edges = _edges(faults)
        if not edges:
            return None  # no draw, so scripted models without faults do not shift any stream
        stream = self._streams.get(model)
        if stream is None:
            seed = None if self._seed is None else f"{self._seed}:{model}"
            stream = self._streams[model] = random.Random(seed)
        point = stream.random()
        for name, edge in edges:
            if point < edge:
                return name
        return None

    def reset(self) -> None:
        """Start every stream again from the seed."""
        self._streams.clear()


@functools.lru_cache(maxsize=1024)
def _edges(faults: Faults) -> tuple[tuple[str, float], ...]:
    """Each fault with a non-zero rate and the upper edge of its slice of [0, 1)."""
    edges: list[tuple[str, float]] = []
    total = 0.0
    for name, rate in zip(FAULTS, faults.rates(), strict=True):
        if rate > 0:
            total += rate
            edges.append((name, total))
    return tuple(edges)


def error_body(message: str, type_: str, code: str | None = None, param: str | None = None) -> bytes:
    """OpenAI's error JSON."""
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


RATE_LIMIT_MESSAGE = "Rate limit reached for requests (simulated). Please try again in {seconds}."
SERVER_ERROR_MESSAGE = "The server had an error while processing your request. Sorry about that! (simulated)"
UNAVAILABLE_MESSAGE = "The engine is currently overloaded, please try again later. (simulated)"
UNAUTHORIZED_MESSAGE = "Incorrect API key provided. (simulated)"


def rate_limit(retry_after_s: float) -> tuple[bytes, dict[str, str]]:
    # Whole seconds as an integer, as the header is usually written; fractions (for fast tests) as decimals.
    seconds = str(int(retry_after_s)) if retry_after_s.is_integer() else f"{retry_after_s:.3f}".rstrip("0")
    body = error_body(RATE_LIMIT_MESSAGE.format(seconds=f"{seconds}s"), "requests", "rate_limit_exceeded")
    # Retry-After in (possibly fractional) seconds, and the millisecond form OpenAI also sends.
    return body, {"Retry-After": seconds, "retry-after-ms": str(round(retry_after_s * 1000))}


def server_error() -> bytes:
    return error_body(SERVER_ERROR_MESSAGE, "server_error")


def unavailable() -> bytes:
    return error_body(UNAVAILABLE_MESSAGE, "server_error")


JSON_TYPE = "application/json"


def openai_error(fault: str | None, retry_after_s: float) -> web.Response | None:
    """The OpenAI-shaped answer of a fault that answers with an error (429 rate_limit, 500
    server_error, 503 unavailable, 401 unauthorized); None for any other fault (or none)."""
    if fault == "rate_limit":
        data, headers = rate_limit(retry_after_s)
        return web.Response(status=429, body=data, headers=headers, content_type=JSON_TYPE)
    if fault == "server_error":
        return web.Response(status=500, body=server_error(), content_type=JSON_TYPE)
    if fault == "unavailable":
        return web.Response(status=503, body=unavailable(), content_type=JSON_TYPE)
    if fault == "unauthorized":
        body = error_body(UNAUTHORIZED_MESSAGE, "invalid_request_error", "invalid_api_key")
        return web.Response(status=401, body=body, content_type=JSON_TYPE)
    return None
