"""`${NAME}` in a configured header's value: the environment variable's value, read once at start.

A header that carries a secret (a gateway token, a vendor's own auth header) belongs in the
environment, as a provider's key does (`api_key_env`), not in the config file. Only `${NAME}` is a
reference; any other `$` is text. A reference to a variable that is not set is refused (its name
said, never a value): sent as written, or empty, the header would fail upstream with no word why.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping

_REFERENCE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


def expanded_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """`headers` with every `${NAME}` replaced by the variable's value; ValueError naming the
    header and the variable for one that is not set."""
    return {name: _expanded(name, value) for name, value in headers.items()}


def _expanded(header: str, value: str) -> str:
    if "${" not in value:
        return value

    def lookup(found: re.Match[str]) -> str:
        variable = found.group(1)
        resolved = os.environ.get(variable)
        if resolved is None:
            raise ValueError(
                f"header {header}: ${{{variable}}} names an environment variable that is not set"
            )
        return resolved

    return _REFERENCE.sub(lookup, value)
