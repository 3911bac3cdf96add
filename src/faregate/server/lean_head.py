"""The head of a lean answer (server/lean_http.py): the status line and the headers aiohttp would
send for the same answer, its Server header included, so that both servers' answers carry the
same header names (tests/test_e2e_lean_differential.py)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from email.utils import formatdate
from http import HTTPStatus
from typing import Final

from aiohttp.http import SERVER_SOFTWARE

_REASONS: Final = {status.value: status.phrase for status in HTTPStatus}
_SERVER: Final = f"Server: {SERVER_SOFTWARE}\r\n"


class _Dates:
    """The Date header's value, formatted once a second."""

    second = 0
    value = ""

    @classmethod
    def now(cls) -> str:
        second = int(time.time())
        if second != cls.second:
            cls.second = second
            cls.value = formatdate(second, usegmt=True)
        return cls.value


def response_head(
    version: str,
    status: int,
    headers: Mapping[str, str],
    content_type: str,
    length: int | None,
    chunked: bool,
    close: bool,
) -> bytes:
    """The head's bytes; `close`: the connection ends with this answer."""
    # 499, 529: no phrase, as aiohttp sends none either.
    lines = [f"HTTP/{version} {status} {_REASONS.get(status, '')}\r\n"]
    for name, value in headers.items():
        if "\n" in value or "\r" in value:
            # A header value must never end the head early (aiohttp refuses these too).
            raise ValueError(f"the response header {name} holds a newline or carriage return")
        lines.append(f"{name}: {value}\r\n")
    lines.append(f"Content-Type: {content_type}\r\n")
    if length is not None:
        lines.append(f"Content-Length: {length}\r\n")
    elif chunked:
        lines.append("Transfer-Encoding: chunked\r\n")
    lines.append(f"Date: {_Dates.now()}\r\n")
    lines.append(_SERVER)
    if close:
        if version == "1.1":
            lines.append("Connection: close\r\n")
    elif version == "1.0":
        lines.append("Connection: keep-alive\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("utf-8")
