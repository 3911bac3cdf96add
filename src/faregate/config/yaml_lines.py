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


# The setting a check's message starts with: `models.x.offers[0].provider: unknown provider ...`,
# `routes.smart.retries must not be negative`, `alerts.rules[0] (name): ...`. A model's name may
# hold a colon (`qwen3:8b`), never followed by a space.
_LEADING_SETTING = re.compile(r"^(\S+?)(?=: | |$)")


def setting_line(problem: str, text: str) -> int | None:
    """The line in the YAML `text` of the setting `problem` (a check's message) starts with; None
    where the file does not hold it or the message names no setting."""
    setting = _LEADING_SETTING.match(problem)
    return line_of(text, setting.group(1)) if setting is not None else None


def located(problem: str, origin: str, text: str | None) -> str:
    """`problem`, a check's message that starts with the setting it is about, prefixed with the
    file and the setting's line there (`faregate.yaml, line 7: routes.smart: ...`), as a value
    msgspec refuses is; the file alone where the file does not hold the setting."""
    line = setting_line(problem, text) if text is not None else None
    return f"{origin}, line {line}: {problem}" if line is not None else f"{origin}: {problem}"
