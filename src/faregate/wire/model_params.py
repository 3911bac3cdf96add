"""Settings a model refuses, left out of what it is sent (ModelSettings.reasoning, .sampling).

The client's settings were written for whichever model answers, and a route, a router, a cascade
or a fallback picks that model. An upstream refuses what its model does not take, with a 400
that is the client's (no fallback follows it): OpenAI's non-reasoning models `reasoning_effort`
("Unsupported parameter") and a `verbosity` but "medium", its reasoning models a temperature but
1, top_p, the penalties, logprobs and logit_bias. A model the catalog marks as not taking them is
sent the request without them, whichever wire it came in on (the internal chat body, and the
client's Responses body passed through natively); the answer's x-faregate-dropped-params header
names what was left out, as OpenRouter and LiteLLM's drop_params leave them out.

An effort a reasoning model does not take is refused alike (o3 and o4-mini refuse "minimal", gpt-5
"none", the models before gpt-5.1-codex-max "xhigh", Claude Opus 4.5 "max"): a model whose
catalog entry lists the efforts it takes (ModelSettings.efforts) is sent the nearest of them
(nearest_effort), and the answer's x-faregate-adjusted-params header says the one sent.
"""

from __future__ import annotations

from collections.abc import Sequence

from faregate.types import JSON
from faregate.wire.anthropic import MESSAGES_EFFORT
from faregate.wire.responses_native import ENCRYPTED_REASONING, NATIVE_REQUEST

# The reasoning settings of the internal chat body (a Messages client's effort is both), and
# verbosity, the gpt-5 models' length hint, which the models before them refuse but at its default.
REASONING_PARAMS = frozenset({"reasoning_effort", MESSAGES_EFFORT, "verbosity"})
SAMPLING_PARAMS = frozenset(
    {
        "temperature",
        "top_p",
        "presence_penalty",
        "frequency_penalty",
        "logprobs",
        "top_logprobs",
        "logit_bias",
    }
)
# Their names in a Responses body (the rest are chat-only).
_RESPONSES_NAMES = {
    "reasoning_effort": "reasoning",
    "temperature": "temperature",
    "top_p": "top_p",
    "top_logprobs": "top_logprobs",
}


def refused_params(reasoning: bool | None, sampling: bool) -> frozenset[str]:
    """The internal body's fields a model refuses: the reasoning settings when it does not reason
    (None: not known, so nothing is left out), the sampling settings when it takes none."""
    refused: frozenset[str] = frozenset()
    if reasoning is False:
        refused |= REASONING_PARAMS
    if not sampling:
        refused |= SAMPLING_PARAMS
    return refused


def drop_refused(body: JSON, refused: frozenset[str]) -> None:
    """Take the fields `refused` out of `body`, an upstream body of its own (upstream_body's copy);
    the client's Responses body it carries, which is the client's own, is replaced by a copy
    without them."""
    for name in refused:
        body.pop(name, None)
    native = body.get(NATIVE_REQUEST)
    if isinstance(native, dict):
        names = {_RESPONSES_NAMES[name] for name in refused if name in _RESPONSES_NAMES}
        include = native.get("include")
        # Encrypted reasoning asked back: a model that does not reason refuses that too.
        if "reasoning" not in names or not isinstance(include, list) or ENCRYPTED_REASONING not in include:
            include = None
        text = native.get("text")
        if "verbosity" not in refused or not isinstance(text, dict) or "verbosity" not in text:
            text = None
        if include is not None or text is not None or not names.isdisjoint(native):
            kept = {k: v for k, v in native.items() if k not in names}
            if include is not None:
                kept["include"] = [item for item in include if item != ENCRYPTED_REASONING]
            if text is not None:
                kept["text"] = {k: v for k, v in text.items() if k != "verbosity"}
            body[NATIVE_REQUEST] = kept


def dropped_params(body: JSON, refused: frozenset[str]) -> list[str]:
    """The settings the client's request set (`body`, the internal one) that `refused` leaves out,
    by their internal names, sorted."""
    dropped = [name for name in refused if body.get(name) is not None]
    native = body.get(NATIVE_REQUEST)
    if "reasoning_effort" in refused and "reasoning_effort" not in dropped and isinstance(native, dict):
        if native.get("reasoning") is not None:  # a summary asked for without an effort
            dropped.append("reasoning_effort")
    return sorted(dropped)


# The reasoning efforts OpenAI's reasoning_effort and Anthropic's output_config.effort say, least
# to most (Anthropic's "max" above OpenAI's "xhigh", as Anthropic places its own "xhigh").
EFFORTS = ("none", "minimal", "low", "medium", "high", "xhigh", "max")
_RANK = {effort: rank for rank, effort in enumerate(EFFORTS)}


def effort_list(efforts: Sequence[str]) -> tuple[str, ...]:
    """`efforts` (of EFFORTS) least to most, once each: Model.efforts."""
    return tuple(sorted(set(efforts), key=_RANK.__getitem__))


def nearest_effort(effort: object, accepted: tuple[str, ...]) -> object:
    """The effort of `accepted` (effort_list's order) sent for the client's `effort`: itself if
    taken; else the least one above it, so the model does not think less than asked (the client
    chose the effort for its task, and a weaker answer costs a retry), and a model that takes
    nothing above it (gpt-5 asked "xhigh") its most. An effort not on the scale is sent as
    given: the upstream's 400 then says what is wrong with it."""
    rank = _RANK.get(effort) if isinstance(effort, str) else None
    if rank is None or effort in accepted:
        return effort
    for taken in accepted:
        if _RANK[taken] > rank:
            return taken
    return accepted[-1]


def fit_effort(body: JSON, accepted: tuple[str, ...]) -> None:
    """Put in `body`, an upstream body of its own (upstream_body's copy), the nearest effort
    `accepted` where the client's is not taken: reasoning_effort, a Messages client's own effort,
    and the effort of the client's Responses body it carries (replaced by a copy: the client's)."""
    effort = body.get("reasoning_effort")
    if effort is None:  # every wire puts its effort here (a Messages client's "max" as "high")
        return
    own = body.get(MESSAGES_EFFORT)
    if own is None:
        body["reasoning_effort"] = nearest_effort(effort, accepted)
    else:
        # A Messages client's "max" (its reasoning_effort says "high"), fitted as asked: the
        # model's list says what it takes, "xhigh" (gpt-5.2) or "max" (gpt-5.6) included.
        body["reasoning_effort"] = body[MESSAGES_EFFORT] = nearest_effort(own, accepted)
    native = body.get(NATIVE_REQUEST)
    reasoning = native.get("reasoning") if isinstance(native, dict) else None
    if isinstance(native, dict) and isinstance(reasoning, dict):
        fitted = nearest_effort(reasoning.get("effort"), accepted)
        if fitted != reasoning.get("effort"):
            body[NATIVE_REQUEST] = {**native, "reasoning": {**reasoning, "effort": fitted}}


def adjusted_effort(body: JSON, accepted: tuple[str, ...]) -> object:
    """The effort sent for the client's request (`body`, the internal one) to a model that takes
    `accepted`, where it is not the one the client asked for (a Messages client's own, "max",
    included); else None."""
    asked = body.get(MESSAGES_EFFORT, body.get("reasoning_effort"))
    if asked is None:
        return None
    sent = nearest_effort(asked, accepted)
    return None if sent == asked else sent


def chat_wire_effort(body: JSON, refused: frozenset[str]) -> object:
    """The effort a chat-wire upstream is sent for a Messages client's own effort the chat wire
    lacks ("max": its reasoning_effort, "high"), where the model's efforts are not fitted to
    (none listed, or a provider that maps efforts itself) and it is not left out (`refused`);
    else None."""
    if body.get(MESSAGES_EFFORT) is None or MESSAGES_EFFORT in refused:
        return None
    return body.get("reasoning_effort")
