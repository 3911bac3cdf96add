"""Reaching one upstream host: its addresses, and a TCP (and, for https, TLS) connection to it.

A literal address never needs a lookup; a name's DNS answers are kept for the pool's TTL, so a
provider costs one lookup per TTL, not one per connection, and are dropped when no address
answers (the host may have moved). Each address is tried in turn; a TLS failure stops at once
(the server is there but cannot be trusted). Every failure is a ConnectFailed saying where and why.
"""

from __future__ import annotations

import asyncio
import ipaddress
import math
import socket
import ssl

from faregate.providers.http_framing import ConnectFailed, Endpoint


class Destination:
    """Where the connections of one (scheme, host, port) go."""

    __slots__ = ("addresses", "expires", "name", "port", "tls")

    def __init__(self, endpoint: Endpoint) -> None:
        self.name = endpoint.host
        self.port = endpoint.port
        self.tls = endpoint.tls
        self.addresses: list[tuple[int, str]] | None = None  # (family, address)
        self.expires = 0.0
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
