"""The media URL filter: image, audio, video and file URLs must name a public address.

Self-hosted upstreams (vLLM, Ollama, an OpenAI-compatible server on the same network) may
fetch the URLs of content parts themselves; a URL naming `127.0.0.1`, a private range, the
link-local metadata address or `file://` would make them read their own network or disk for
the client (SSRF). So, unless `limits.allow_private_media_urls` is set, a request whose parts
carry such a URL is refused with 400 `media_url_not_allowed` before anything is sent.

What it checks: the scheme (http, https and inline `data:` only), no backslash in the host
part (where URL parsers disagree on the host), and the host as a fetcher reads it (IDNA's
mapping of other digits and full stops to ASCII: `①②⑦.0.0.1` is 127.0.0.1):
every spelling of an IP address that resolvers accept (dotted, integer, hex and octal IPv4,
IPv6 with an IPv4 address in it: mapped, compatible, translated, 6to4, NAT64) must be a global
address, and names reserved for local use
(`localhost`, `*.localhost`, `*.local`, `*.internal`, `*.home.arpa`, `*.lan`) are refused.
What it does not: resolve DNS. A public name that resolves to a private address (or is rebound
to one later) is not caught here; the upstream resolves it again on its own, so a check here
would be racy anyway. Keep an egress policy on upstreams that fetch URLs.
"""

from __future__ import annotations

import ipaddress
import unicodedata
from typing import Any
from urllib.parse import urlsplit

from faregate.errors import InvalidRequest

# Keys of a content part (or of its typed object) whose string value is a URL to fetch.
URL_KEYS = ("url", "image_url", "audio_url", "video_url", "file_url", "input_image")
ALLOWED_SCHEMES = frozenset({"http", "https", "data"})
LOCAL_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost", "ip6-loopback"})
LOCAL_SUFFIXES = (".localhost", ".local", ".internal", ".home.arpa", ".lan", ".localdomain")


def _inet_aton(host: str) -> ipaddress.IPv4Address | None:
    """IPv4 as the C resolver reads it: 1 to 4 parts, each decimal, 0x-hex or 0-octal
    (127.1, 2130706433, 0x7f.0.0.1 and 0177.0.0.1 are all 127.0.0.1)."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4:
        return None
    numbers: list[int] = []
    for part in parts:
        try:
            if part.lower().startswith("0x"):
                numbers.append(int(part[2:] or "0", 16))
            elif len(part) > 1 and part.startswith("0"):
                numbers.append(int(part, 8))
            else:
                numbers.append(int(part, 10))
        except ValueError:
            return None
    *head, last = numbers
    if any(n > 255 for n in head) or last >= 256 ** (4 - len(head)):
        return None
    value = last
    for index, number in enumerate(head):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


# IPv6 prefixes whose last 32 bits are an IPv4 address the packet ends up at: IPv4-compatible
# (deprecated, still tunnelled by some stacks), SIIT's IPv4-translated, and NAT64's well-known
# prefix (a NAT64 gateway, as on IPv6-only cloud subnets, reaches private IPv4 in its network).
_IPV4_EMBEDDING = tuple(
    ipaddress.IPv6Network(prefix) for prefix in ("::/96", "::ffff:0:0:0/96", "64:ff9b::/96")
)
# Not global though Python before 3.12.4 says so: NAT64's local-use prefix (RFC 8215), whose
# IPv4 part sits where the network's own prefix length puts it.
_NOT_GLOBAL = (ipaddress.IPv6Network("64:ff9b:1::/48"),)


def _address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address a host names (an IPv6 one carrying an IPv4 address as that IPv4 address)."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return _inet_aton(host)
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour
        if mapped is not None:
            return mapped
        if any(address in network for network in _IPV4_EMBEDDING):
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    if address.is_multicast or not address.is_global:
        return False
    return not (isinstance(address, ipaddress.IPv6Address) and any(address in n for n in _NOT_GLOBAL))


# Full stops IDNA reads as ".": ideographic, fullwidth and halfwidth ideographic.
_DOTS = str.maketrans({"\u3002": ".", "\uff0e": ".", "\uff61": "."})


def _as_fetched(host: str) -> str:
    """The host as URL libraries turn it into a name to resolve: IDNA maps compatibility
    characters to ASCII (NFKC) and other full stops to dots, so aiohttp (yarl) and httpx fetch
    `①②⑦.0.0.1` and `127。0.0.1` from 127.0.0.1."""
    if not host.isascii():
        host = unicodedata.normalize("NFKC", host).translate(_DOTS)
    return host.rstrip(".").lower()


def refusal(url: str) -> str | None:
    """Why this URL may not be forwarded, or None when it may."""
    try:
        parts = urlsplit(url.strip())
    except ValueError:
        return "it is not a valid URL"
    scheme = parts.scheme.lower()
    if scheme not in ALLOWED_SCHEMES:
        return f"scheme {scheme + '://' if scheme else '(none)'} is not allowed (http, https or data only)"
    if scheme == "data":
        return None
    if "\\" in parts.netloc:
        # urllib3 (requests), like browsers, ends the host at a backslash where urlsplit does not:
        # `http://127.0.0.1\@example.com/` is example.com here and 127.0.0.1 to the fetcher.
        return "its host part holds a backslash"
    try:
        host = _as_fetched(parts.hostname or "")
    except ValueError:
        return "its host is not valid"
    if not host:
        return "it has no host"
    if host in LOCAL_NAMES or host.endswith(LOCAL_SUFFIXES) or ("." not in host and _address(host) is None):
        return f"host {host!r} is a local name"
    address = _address(host)
    if address is not None and not _is_public(address):
        return f"host {host} is not a public address"
    return None


def part_urls(part: dict[str, Any]) -> list[str]:
    """The URLs one content part carries, at the part's top level or in its typed object."""
    found: list[str] = []
    for holder in (part, part.get(str(part.get("type") or ""))):
        if not isinstance(holder, dict):
            continue
        for key in URL_KEYS:
            value = holder.get(key)
            if isinstance(value, str):
                found.append(value)
            elif isinstance(value, dict) and isinstance(value.get("url"), str):
                found.append(value["url"])
    return found


def check_media_urls(messages: list[Any]) -> None:
    """Raise 400 for the first content part whose URL names a non-public place."""
    for i, message in enumerate(messages):
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for j, part in enumerate(content):
            if not isinstance(part, dict) or part.get("type") == "text":
                continue
            for url in part_urls(part):
                reason = refusal(url)
                if reason is not None:
                    raise InvalidRequest(
                        f"'messages[{i}].content[{j}]' has a URL the gateway will not forward: {reason}. "
                        "Media URLs must point at public addresses (or send the data inline).",
                        param=f"messages[{i}].content[{j}]",
                        code="media_url_not_allowed",
                    )
