"""The settings a model refuses, refused as OpenAI refuses them (a 400 `invalid_request_error`).

Which models refuse what is the catalog's (ModelSettings.reasoning and .sampling): gpt-4o-mini
refuses `reasoning_effort` ("Unsupported parameter"), a reasoning model a temperature but its
default 1 ("Unsupported value"), and top_p, the penalties, logprobs and logit_bias alike; a model
before gpt-5 a verbosity but "medium". A setting at its default is taken, as OpenAI takes it.
An effort a model does not take (ModelSettings.efforts: o3 "minimal", Claude Opus 4.5 "max") is
refused as well, in OpenAI's words or Anthropic's shape (effort_refusal).
"""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import web

from faregate.sim.delivery import error_response
from faregate.types import JSON

# The defaults a model that refuses the setting still takes.
_DEFAULTS: dict[str, object] = {
    "temperature": 1,
    "top_p": 1,
    "presence_penalty": 0,
    "frequency_penalty": 0,
    "logprobs": False,
}


def refusal(
    body: JSON, refused: frozenset[str], names: Mapping[str, str] | None = None
) -> web.Response | None:
    """OpenAI's 400 for the first setting of `body` (a chat body) among `refused`, or None;
    `names`: the setting's name as the client's wire says it (`reasoning.effort` on /responses)."""
    for name in sorted(refused):
        value = body.get(name)
        if value is None or (name in _DEFAULTS and value == _DEFAULTS[name]):
            continue
        param = names.get(name, name) if names else name
        if name == "verbosity":
            if value == "medium":
                continue
            message = (
                f"Unsupported value: '{param}' does not support {value!r} with this model. "
                "Supported values are: 'medium'."
            )
            code = "unsupported_value"
        elif name in _DEFAULTS:
            message = (
                f"Unsupported value: '{param}' does not support {value!r} with this model. "
                f"Only the default ({_DEFAULTS[name]}) value is supported."
            )
            code = "unsupported_value"
        else:
            message = f"Unsupported parameter: '{param}' is not supported with this model."
            code = "unsupported_parameter"
        return error_response(400, message, "invalid_request_error", code, param=param)
    return None


def effort_refusal(effort: object, accepted: tuple[str, ...], param: str) -> str | None:
    """The message of the 400 for an `effort` the model does not take (`accepted`, ordered), or
    None; `param`: its name on the client's wire (reasoning_effort, reasoning.effort,
    output_config.effort). OpenAI's words, which the Messages endpoint puts in Anthropic's shape."""
    if effort is None or effort in accepted:
        return None
    listed = [repr(taken) for taken in accepted]
    said = listed[0] if len(listed) == 1 else ", ".join(listed[:-1]) + f", and {listed[-1]}"
    return (
        f"Unsupported value: '{param}' does not support {effort!r} with this model. "
        f"Supported values are: {said}."
    )


def openai_effort_refusal(effort: object, accepted: tuple[str, ...], param: str) -> web.Response | None:
    """OpenAI's 400 for an effort the model does not take, or None."""
    message = effort_refusal(effort, accepted, param)
    if message is None:
        return None
    return error_response(400, message, "invalid_request_error", "unsupported_value", param=param)
