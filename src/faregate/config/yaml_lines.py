"""Where in a YAML file a setting is: the line a config error names, so that a newcomer with a
typo in a long faregate.yaml is sent to it rather than left to search for the key."""

from __future__ import annotations

import re

import yaml

# msgspec's path of a value, as the config error says it after `- at `: `server.port`,
# `routes.smart.chain[0]`, `models.gpt-4.1.offers[1]` (a map's key may hold dots).
_AT = re.compile(r" - at `([^`]*)`")
_UNKNOWN = re.compile(r"^Object contains unknown field `([^`]*)`")
_INDEX = re.compile(r"\[(\d+)\]")


def error_path(message: str) -> str | None:
    """The setting a msgspec error (its `$.` already taken off) is about: the unknown key's own
    path, else the value's; None if it names none."""
    at = _AT.search(message)
    path = at.group(1) if at else ""
    unknown = _UNKNOWN.search(message)
    if unknown:
        return f"{path}.{unknown.group(1)}" if path else unknown.group(1)
    return path or None


def line_of(text: str, path: str) -> int | None:
    """The 1-based line of the key (or list item) at `path` in the YAML `text`; None where the
    file does not hold it (a default's setting) or cannot be read."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return None
    rest = path
    line: int | None = None
    while rest and node is not None:
        index = _INDEX.match(rest)
        if index is not None:
            if not isinstance(node, yaml.SequenceNode) or int(index.group(1)) >= len(node.value):
                return None
            node = node.value[int(index.group(1))]
            line = node.start_mark.line + 1
            rest = rest[index.end() :].removeprefix(".")
            continue
        if not isinstance(node, yaml.MappingNode):
            return None
        # The longest key the path goes on from: a model's name may hold dots.
        found = None
        for key, value in node.value:
            name = str(key.value)
            if (rest == name or rest.startswith((name + ".", name + "["))) and (
                found is None or len(name) > len(str(found[0].value))
            ):
                found = (key, value)
        if found is None:
            return None
        key, node = found
        line = key.start_mark.line + 1
        rest = rest[len(str(key.value)) :].removeprefix(".")
    return line if not rest else None
