"""HTTP/1.1 framing that needs no socket: where a provider's requests go and their bytes, the
response's headers and body decoders, and the errors an exchange can end in.

The request head is the same for every call to a provider but for its length, so it is built once
(`request_head`) and each call only joins it with its body (`request_bytes`). A configured header
can never split the request or contradict our framing. `providers/transport.py` sends and reads
these over one connection.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterator, Mapping
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# We frame the body ourselves; a configured header must not contradict that.
_FRAMING_REQUEST_HEADERS = frozenset({"content-length", "transfer-encoding", "connection"})


class TransportError(Exception):
    """An exchange that failed; str() says what happened in plain words."""


class ConnectFailed(TransportError):
    """No connection: DNS, refused, unreachable, or a failed TLS handshake."""


class ConnectTimeout(TransportError):
    """The TCP connect (and TLS handshake) did not finish in time."""


class ConnectionClosed(TransportError):
    """The connection ended before the response did."""


class BadResponse(TransportError):
    """The upstream's bytes are not a valid HTTP/1.x response."""


class PoolClosed(TransportError):
    """The pool was closed (the gateway is shutting down)."""


class BodyIdle(TimeoutError):
    """Nothing of the body arrived for the idle time allowed (a stalled stream). A TimeoutError,
    as the body's own deadline is: whoever does not tell them apart treats it the same."""


class Endpoint:
    """Where the requests for one base URL go, parsed once per provider."""

    __slots__ = ("authority", "connect_timeout_s", "host", "key", "path", "port", "tls")

    def __init__(self, url: str, *, connect_timeout_s: float = 10.0) -> None:
        parts = urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https"):
            raise ValueError(f"{url!r}: only http:// and https:// URLs are supported")
        host = parts.hostname
        if not host:
            raise ValueError(f"{url!r} has no host")
        self.tls = scheme == "https"
        default_port = 443 if self.tls else 80
        self.port: int = parts.port or default_port
        self.host = host
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        bracketed = f"[{host}]" if ":" in host else host  # an IPv6 literal
        self.authority = bracketed if self.port == default_port else f"{bracketed}:{self.port}"
        self.key = (scheme, host, self.port)
        self.connect_timeout_s = connect_timeout_s

    def __repr__(self) -> str:
        return f"Endpoint({'https' if self.tls else 'http'}://{self.authority}{self.path})"


def under(base_url: str, path: str) -> str:
    """The URL of `path` under a provider's base URL: appended to its path, before its query
    (Azure OpenAI's ?api-version=..., a key some vendors take there), which is kept."""
    parts = urlsplit(base_url)
    return urlunsplit(parts._replace(path=parts.path.rstrip("/") + path, fragment=""))


def request_head(endpoint: Endpoint, headers: Mapping[str, str]) -> bytes:
    """The request line and headers of a POST to `endpoint`, up to but not including
    Content-Length, which `request_bytes` adds per body. Built once per provider.

    A configured Host replaces ours; Content-Length, Transfer-Encoding and Connection are ours
    alone (the body framing and keep-alive depend on them) and are dropped if configured.
    Raises ValueError for a header that could split the request (CR, LF, NUL, or a bad name).
    """
    lines = [f"POST {endpoint.path} HTTP/1.1"]
    if not any(name.lower() == "host" for name in headers):
        lines.append(f"Host: {endpoint.authority}")
    for name, value in headers.items():
        if not _TOKEN.fullmatch(name):
            raise ValueError(f"invalid header name {name!r}")
        if any(c in value for c in "\r\n\0"):
            raise ValueError(f"header {name}: the value contains a line break or NUL")
        if name.lower() not in _FRAMING_REQUEST_HEADERS:
            lines.append(f"{name}: {value}")
    lines.append("")
    try:
        return "\r\n".join(lines).encode("latin-1")
    except UnicodeEncodeError as exc:
        raise ValueError(f"header values must be Latin-1 text: {exc}") from None


def request_bytes(head: bytes, body: bytes) -> bytes:
    """The whole request, built with one join (one copy of each part)."""
    return b"".join((head, b"Content-Length: %d\r\n\r\n" % len(body), body))


class Headers(Mapping[str, str]):
    """Response headers with case-insensitive lookup; repeated fields are joined with ", "."""

    __slots__ = ("_map",)

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        fields: dict[str, str] = {}
        for raw_name, raw_value in raw:
            name = raw_name.decode("latin-1").lower()
            value = raw_value.decode("latin-1")
            fields[name] = f"{fields[name]}, {value}" if name in fields else value
        self._map = fields

    def __getitem__(self, name: str) -> str:
        return self._map[name.lower()]

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and name.lower() in self._map

    def __iter__(self) -> Iterator[str]:
        return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    def __repr__(self) -> str:
        return f"Headers({self._map!r})"


class Decoder(Protocol):
    def decompress(self, data: bytes, /) -> bytes: ...
    def flush(self) -> bytes: ...


class _Inflate:
    """`deflate` is meant to be zlib-wrapped, but some servers send raw deflate: try both."""

    __slots__ = ("_first", "_z")

    def __init__(self) -> None:
        self._z = zlib.decompressobj(zlib.MAX_WBITS)
        self._first = True

    def decompress(self, data: bytes, /) -> bytes:
        if self._first:
            self._first = False
            try:
                return self._z.decompress(data)
            except zlib.error:
                self._z = zlib.decompressobj(-zlib.MAX_WBITS)
        return self._z.decompress(data)

    def flush(self) -> bytes:
        return self._z.flush()


class _Unreadable:
    """A content-coding we cannot decode (br, zstd...): its first bytes fail the body, as a
    corrupt gzip body does, saying why; a body without bytes reads as empty."""

    __slots__ = ("_encoding",)

    def __init__(self, encoding: bytes) -> None:
        self._encoding = encoding

    def decompress(self, data: bytes, /) -> bytes:
        raise zlib.error(f"only gzip and deflate are decoded, not {self._encoding.decode('latin-1')}")

    def flush(self) -> bytes:
        return b""


def body_decoder(encoding: bytes) -> Decoder | None:
    """We never send Accept-Encoding, so a server may compress in any coding (RFC 9110 12.5.3);
    gzip and deflate are decoded, any other fails the body as undecodable (its bytes read as
    JSON or as an event stream would fail obscurely, or, for a stream, not at all)."""
    if encoding in (b"gzip", b"x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == b"deflate":
        return _Inflate()
    if encoding == b"identity":
        return None
    return _Unreadable(encoding)
