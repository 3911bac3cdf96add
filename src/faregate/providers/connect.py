"""Reaching one upstream host: its addresses, and a TCP (and, for https, TLS) connection to it.

A literal address never needs a lookup; a name's DNS answers are kept for the pool's TTL, so a
provider costs one lookup per TTL, not one per connection, and are dropped when no address
answers (the host may have moved). Each address is tried in turn; a TLS failure stops at once
(the server is there but cannot be trusted). Every failure is a ConnectFailed saying where and why.

An https upstream is reached through the proxy that HTTPS_PROXY (or ALL_PROXY) names, as other
HTTP clients do, unless NO_PROXY exempts its host: a CONNECT tunnel to an http:// proxy, and TLS
with the upstream inside it (the proxy resolves the name). Plain http upstreams (a local vLLM or
Ollama, the simulator) are always reached directly.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import math
import socket
import ssl
import urllib.request
from urllib.parse import unquote, urlsplit

from faregate.providers.http_framing import ConnectFailed, Endpoint

# The proxy's answer to CONNECT is a short head; a longer one is no proxy we can talk to.
_MAX_PROXY_HEAD = 16 * 1024


class Proxy:
    """An http:// proxy that HTTPS_PROXY names, and what it needs to hear from us."""

    __slots__ = ("authorization", "host", "port", "url")

    def __init__(self, url: str) -> None:
        if "://" not in url:
            url = f"http://{url}"  # "proxy:3128", as curl reads it
        parts = urlsplit(url)
        self.url = f"{parts.scheme}://{parts.hostname}:{parts.port or 80}"  # no credentials in messages
        if parts.scheme.lower() != "http":
            raise ConnectFailed(f"proxy {self.url}: only http:// proxies are supported")
        if not parts.hostname:
            raise ConnectFailed(f"proxy {url!r} has no host")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.authorization: str | None = None
        if parts.username is not None:
            user_password = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
            self.authorization = "Basic " + base64.b64encode(user_password.encode()).decode("ascii")


def https_proxy_for(host: str) -> Proxy | str | None:
    """The proxy the environment names for an https upstream on `host` (None: go direct; a str:
    why the proxy named cannot be used, said when connecting)."""
    proxies = urllib.request.getproxies_environment()
    url = proxies.get("https") or proxies.get("all")
    if not url or urllib.request.proxy_bypass_environment(host, proxies):  # type: ignore[attr-defined]
        return None
    try:
        return Proxy(url)
    except ConnectFailed as exc:
        return str(exc)


class _TunnelHead(asyncio.Protocol):
    """Reads the proxy's answer to CONNECT (the bytes up to its blank line), nothing after."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.head: asyncio.Future[bytes] = loop.create_future()
        self._data = b""

    def data_received(self, data: bytes) -> None:
        self._data += data
        end = self._data.find(b"\r\n\r\n")
        if self.head.done():
            return
        if end >= 0:
            self.head.set_result(self._data[: end + 4])
        elif len(self._data) > _MAX_PROXY_HEAD:
            self.head.set_exception(ConnectFailed("the proxy's answer to CONNECT is too long"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.head.done():
            self.head.set_exception(ConnectFailed("the proxy closed the connection"))


class Destination:
    """Where the connections of one (scheme, host, port) go."""

    __slots__ = ("addresses", "expires", "name", "port", "proxy", "tls")

    def __init__(self, endpoint: Endpoint) -> None:
        self.name = endpoint.host
        self.port = endpoint.port
        self.tls = endpoint.tls
        self.addresses: list[tuple[int, str]] | None = None  # (family, address)
        self.expires = 0.0
        # Read once per host: the environment does not change under a running gateway.
        self.proxy = https_proxy_for(self.name) if self.tls else None
        try:
            ip = ipaddress.ip_address(self.name)
        except ValueError:
            pass
        else:  # a literal address never needs a lookup
            family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
            self.addresses, self.expires = [(family, self.name)], math.inf

    async def connect(
        self,
        loop: asyncio.AbstractEventLoop,
        protocol: asyncio.Protocol,
        tls: ssl.SSLContext | None,
        dns_ttl_s: float,
    ) -> None:
        """Connect `protocol` to the first address that answers (TLS with `tls` when given)."""
        where = f"{self.name}:{self.port}"
        if self.proxy is not None and tls is not None:
            if isinstance(self.proxy, str):
                raise ConnectFailed(self.proxy)
            await self._tunnel(loop, protocol, tls, self.proxy)
            return
        failure: OSError | None = None
        for family, address in await self._resolve(loop, dns_ttl_s):
            try:
                await loop.create_connection(
                    lambda: protocol,
                    address,
                    self.port,
                    family=family,
                    ssl=tls,
                    server_hostname=self.name if tls is not None else None,
                )
                return
            except ssl.SSLError as exc:  # the server is there but cannot be trusted: do not go on
                raise ConnectFailed(f"TLS handshake with {where} failed: {exc.reason or exc}") from exc
            except OSError as exc:
                failure = exc
        if self.expires != math.inf:
            self.addresses = None  # the address may have changed: look it up again next time
        if isinstance(failure, ConnectionRefusedError):
            raise ConnectFailed(f"connection refused by {where}") from failure
        reason = failure.strerror if failure is not None and failure.strerror else str(failure)
        raise ConnectFailed(f"connect to {where} failed ({reason})") from failure

    async def _tunnel(
        self, loop: asyncio.AbstractEventLoop, protocol: asyncio.Protocol, tls: ssl.SSLContext, proxy: Proxy
    ) -> None:
        """Connect `protocol` to the upstream through a CONNECT tunnel of `proxy`, TLS inside it."""
        where = f"{self.name}:{self.port}"
        authority = f"[{self.name}]:{self.port}" if ":" in self.name else where
        opener = _TunnelHead(loop)
        try:
            raw, _ = await loop.create_connection(lambda: opener, proxy.host, proxy.port)
        except OSError as exc:
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise ConnectFailed(f"connect to the proxy {proxy.url} failed ({reason})") from exc
        try:
            lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
            if proxy.authorization is not None:
                lines.append(f"Proxy-Authorization: {proxy.authorization}")
            raw.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
            status_line = (await opener.head).split(b"\r\n", 1)[0].decode("latin-1")
            status = status_line.split(" ", 2)
            if len(status) < 2 or not status[0].startswith("HTTP/") or not status[1].startswith("2"):
                refused = status_line.strip()
                raise ConnectFailed(f"the proxy {proxy.url} refused a tunnel to {where}: {refused!r}")
            try:
                secured = await loop.start_tls(raw, protocol, tls, server_hostname=self.name)
            except ssl.SSLError as exc:
                raise ConnectFailed(f"TLS handshake with {where} failed: {exc.reason or exc}") from exc
            except (OSError, ConnectionError) as exc:
                raise ConnectFailed(f"the tunnel to {where} through {proxy.url} closed ({exc})") from exc
        except BaseException:
            raw.close()
            raise
        # start_tls hands the secured transport back without telling the protocol.
        assert secured is not None
        protocol.connection_made(secured)

    async def _resolve(self, loop: asyncio.AbstractEventLoop, dns_ttl_s: float) -> list[tuple[int, str]]:
        now = loop.time()
        if self.addresses is not None and now < self.expires:
            return self.addresses
        try:
            infos = await loop.getaddrinfo(self.name, self.port, type=socket.SOCK_STREAM)
        except socket.gaierror as exc:
            raise ConnectFailed(f"DNS lookup failed for {self.name}") from exc
        addresses = list(dict.fromkeys((int(family), str(addr[0])) for family, _, _, _, addr in infos))
        if not addresses:
            raise ConnectFailed(f"DNS lookup failed for {self.name}")
        self.addresses, self.expires = addresses, now + dns_ttl_s
        return addresses
