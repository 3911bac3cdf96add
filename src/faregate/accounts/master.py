"""The master key: the admin credential for /admin, the dashboard, /metrics and GET /health's detail.

Two sources, either or both:
- the raw key in the env var named by `auth.master_key_env` (FAREGATE_MASTER_KEY), for
  deployments, where one secret is given to every instance;
- a key made by `faregate serve --new-key` (`make run`), shown once and kept only as its
  SHA-256 digest in `<store.path>/master-key.sha256`, like API keys (see accounts/keys.py for
  why a plain hash suits a 240-bit random key). A new one replaces the previous one.

Every comparison is in constant time over digests, so no code path accepts a key on a
timing-dependent comparison.

Failed attempts are not rate limited (a limit per client address is void behind a proxy, and a
global one would let anyone lock the operators out): the key's length is what makes guessing it
hopeless, so an environment key shorter than MIN_MASTER_KEY_CHARS is refused at start. A made key
is "fg-master-" and 40 random characters (240 bits).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from faregate.config import Settings
from faregate.errors import ConfigError

MASTER_PREFIX = "fg-master-"
DIGEST_FILE = "master-key.sha256"
# 32 random characters from any shell's `openssl rand -base64 24` or `-hex 16` are 128 bits or more;
# the words and placeholders people type ("fg-master-change-me") are far shorter.
MIN_MASTER_KEY_CHARS = 32


def _digest(raw: str) -> str:
    # surrogateescape: a presented key's header bytes that are not UTF-8 (and an environment
    # value's, which Python decodes the same way) are hashed as the bytes they were.
    return hashlib.sha256(raw.encode("utf-8", "surrogateescape")).hexdigest()


def check_env_key(settings: Settings) -> str | None:
    """The environment's master key, if set; ConfigError if it is too short to resist guessing
    (its length said, never its value)."""
    env = settings.master_key()
    if env is not None and len(env) < MIN_MASTER_KEY_CHARS:
        raise ConfigError(
            f"${settings.auth.master_key_env} is {len(env)} characters long; a master key needs at "
            f"least {MIN_MASTER_KEY_CHARS} (make one with `openssl rand -base64 32`), or unset it "
            "and start with `faregate serve --new-key`, which makes one"
        )
    return env


def digest_path(settings: Settings) -> Path:
    return Path(settings.store.path) / DIGEST_FILE


class MasterKey:
    """The digests of the keys that are master keys right now (none: the admin API is off)."""

    def __init__(self, *raw_keys: str) -> None:
        self._digests = [_digest(raw) for raw in raw_keys if raw]

    @classmethod
    def load(cls, settings: Settings) -> MasterKey:
        """The master keys now; ConfigError for an environment key too short (`check_env_key`)."""
        key = cls()
        env = check_env_key(settings)
        if env:
            key._digests.append(_digest(env))
        try:
            stored = digest_path(settings).read_text(encoding="ascii").strip()
        except FileNotFoundError:
            stored = ""
        if stored:
            key._digests.append(stored)
        return key

    @property
    def enabled(self) -> bool:
        return bool(self._digests)

    def matches(self, presented: str) -> bool:
        digest = _digest(presented)
        # Compare with every digest (no early exit), each in constant time.
        return sum(hmac.compare_digest(digest, known) for known in self._digests) > 0

    def create(self, settings: Settings) -> str:
        """A new master key: its digest replaces the stored one (the environment's key stays valid).
        The raw key is returned once and kept nowhere."""
        raw = MASTER_PREFIX + secrets.token_urlsafe(30)
        path = digest_path(settings)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_suffix(".tmp")
        # Owner-only, written whole then renamed: a reader sees the old digest or the new one.
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="ascii") as file:
            file.write(_digest(raw) + "\n")
        os.replace(temporary, path)
        env = settings.master_key()
        self._digests = [_digest(raw), *([_digest(env)] if env else [])]
        return raw
