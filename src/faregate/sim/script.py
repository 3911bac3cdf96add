"""The simulator's script: latency, answers and faults per model, from a strict YAML file.

A script has a `defaults` behaviour and per-model overrides. An override replaces
the fields it names and keeps the rest from `defaults`; `faults` merges by fault
name, so a model can add one fault rate without repeating the others. Unknown or duplicate
keys and bad values fail at load with a one-line message naming the key and where it is, and for
an unknown key the key meant, like faregate.config.

    seed: 7                  # reproducible fault draws (one random stream per model)
    strict_models: false     # true: unknown models get 404 model_not_found (else: served with defaults)
    catalog_models: true     # /v1/models lists the curated catalog besides the script's models
    defaults:
      ttft_ms: 20            # time to first token; for non-streams, to the response head
      tokens_per_s: 200      # pacing after the first token; 0 or null = instant
      answer: echo           # echo | inspect | {fixed: text} | {lorem: N} | {replay: {csv, column, ...}}
                             #   (echo, asked for a response_format: JSON that fits it)
      tool_call: false       # true: requests with `tools` get a call to the first (or forced) tool,
                             #   its arguments JSON that its parameters accept
      faults: {rate_limit: 0.05, server_error: 0.01}   # also unavailable, hang, reset,
      retry_after_s: 1       #   empty_choices, blank, truncate, stall, unauthorized (401);
                             #   exclusive, sum <= 1
      hang_s: 3600           # how long a hang or a stall lasts
      after_tokens: null     # content tokens a truncated or stalled stream sends first; null = half
    models:
      gpt-4o:
        # A relative csv path is relative to this file.
        answer: {replay: {csv: gsm8k_responses.csv, column: gpt-4-1106-preview_response,
                          prompt_column: prompt, fallback: "no recording"}}
      flaky-model:
        faults: {truncate: 0.5}
        after_tokens: 3

A request can force a fault with the `x-sim-fault` header, or override any behaviour
field with a `sim` body field: {"sim": {"fault": "truncate", "after_tokens": 2}}
(`fault: none` forces a clean answer).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

import msgspec

from faregate.config.loading import known_fields_hint, read_text, read_yaml
from faregate.config.yaml_lines import error_path, line_of
from faregate.errors import ConfigError
from faregate.sim import replay as replay_csv

FaultName = Literal[
    "rate_limit",
    "server_error",
    "unavailable",
    "hang",
    "reset",
    "empty_choices",
    "blank",
    "truncate",
    # A stream that sends its head and `after_tokens` content tokens, then nothing for `hang_s`,
    # then the rest; a whole answer (nothing streamed) hangs. Last: seeded draws stay as they were.
    "stall",
    # A 401 refusing the caller's key (a gateway's provider key that is wrong). After `stall`, so
    # seeded draws stay as they were.
    "unauthorized",
]
FAULTS: tuple[str, ...] = get_args(FaultName)
# `none` forces a clean answer for one request even when the script draws faults.
ForcedFault = Literal[FaultName, "none"]

Rate = Annotated[float, msgspec.Meta(ge=0, le=1)]
NonNegative = Annotated[float, msgspec.Meta(ge=0)]
T = TypeVar("T")


class _Strict(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    pass


class Faults(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, frozen=True):
    """Probability of each fault per request; the draws are exclusive, so the rates must sum to <= 1.
    Frozen, so it hashes and the picker can cache its table per Faults."""

    rate_limit: Rate = 0.0
    server_error: Rate = 0.0
    unavailable: Rate = 0.0
    hang: Rate = 0.0
    reset: Rate = 0.0
    empty_choices: Rate = 0.0
    blank: Rate = 0.0
    truncate: Rate = 0.0
    stall: Rate = 0.0
    unauthorized: Rate = 0.0

    def __post_init__(self) -> None:
        total = sum(self.rates())
        if total > 1.0 + 1e-9:
            raise ValueError(f"fault rates sum to {total:g}; they are exclusive and must sum to at most 1")

    def rates(self) -> list[float]:
        return [getattr(self, name) for name in FAULTS]


class Replay(_Strict):
    """Serve the answer recorded for a prompt equal (after strip) to the last user message."""

    csv: str
    column: str
    prompt_column: str = "prompt"
    fallback: str = "(the simulator has no recorded answer for this prompt)"


class AnswerSpec(_Strict):
    """The mapping forms of `answer`; exactly one key is set."""

    fixed: str | None = None
    lorem: Annotated[int, msgspec.Meta(ge=0)] | None = None
    replay: Replay | None = None

    def __post_init__(self) -> None:
        chosen = [name for name in ("fixed", "lorem", "replay") if getattr(self, name) is not None]
        if len(chosen) != 1:
            raise ValueError(f"answer takes exactly one of fixed, lorem, replay; got {chosen or 'none'}")


Answer = Literal["echo", "inspect"] | AnswerSpec


class Behaviour(_Strict):
    ttft_ms: NonNegative = 0.0
    tokens_per_s: NonNegative | None = None
    answer: Answer = "echo"
    # Answer requests that carry `tools` with a call to the first tool.
    tool_call: bool = False
    faults: Faults = msgspec.field(default_factory=Faults)
    retry_after_s: NonNegative = 1.0
    hang_s: NonNegative = 3600.0
    # Content tokens sent before a `truncate` cut or a `stall`; None: half the answer.
    after_tokens: Annotated[int, msgspec.Meta(ge=0)] | None = None


class _ScriptFile(_Strict):
    seed: int | None = None
    strict_models: bool = False
    catalog_models: bool = True
    defaults: dict[str, Any] = {}
    # A model listed with no fields (`name:` in YAML) gets the defaults.
    models: dict[str, dict[str, Any] | None] = {}


class Override(_Strict):
    """The per-request `sim` body field: any behaviour field, plus a forced fault."""

    fault: ForcedFault | msgspec.UnsetType = msgspec.UNSET
    ttft_ms: NonNegative | msgspec.UnsetType = msgspec.UNSET
    tokens_per_s: NonNegative | msgspec.UnsetType | None = msgspec.UNSET
    answer: Answer | msgspec.UnsetType = msgspec.UNSET
    tool_call: bool | msgspec.UnsetType = msgspec.UNSET
    retry_after_s: NonNegative | msgspec.UnsetType = msgspec.UNSET
    hang_s: NonNegative | msgspec.UnsetType = msgspec.UNSET
    after_tokens: Annotated[int, msgspec.Meta(ge=0)] | msgspec.UnsetType | None = msgspec.UNSET


class ScriptedRequestError(ValueError):
    """A request's `sim` field or x-sim-fault header is not valid (a 400 in the wire's shape)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(slots=True)
class Script:
    seed: int | None = None
    strict_models: bool = False
    catalog_models: bool = True
    defaults: Behaviour = field(default_factory=Behaviour)
    models: dict[str, Behaviour] = field(default_factory=dict)

    def behaviour(self, model: str) -> Behaviour:
        return self.models.get(model, self.defaults)


def load_script(path: str | Path | None) -> Script:
    """The script at `path` (replay CSV paths are relative to it); None: all defaults."""
    if path is None:
        return Script()
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"sim script {p} does not exist")
    # The config's reader: one-line errors (PyYAML's own report spans lines), not-UTF-8 text
    # caught, duplicate keys refused rather than the last one silently kept.
    text = read_text(p)
    try:
        return parse_script(read_yaml(text, str(p)), str(p), base_dir=p.parent)
    except ConfigError as exc:
        # A bad key or value names its line in the file, as the config's do.
        problem = str(exc).removeprefix(f"{p}: ")
        at = error_path(problem)
        line = line_of(text, at) if at is not None else None
        if line is None or problem == str(exc):
            raise
        raise ConfigError(f"{p}, line {line}: {problem}") from exc


def parse_script(data: Any, origin: str = "sim script", *, base_dir: str | Path = ".") -> Script:
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a mapping at the top level, got {type(data).__name__}")
    raw = _convert(data, _ScriptFile, origin, "")
    base = Path(base_dir)
    defaults = _behaviour(raw.defaults, origin, "defaults", base)
    models = {
        name: _behaviour(_merge(raw.defaults, override or {}), origin, f"models.{name}", base)
        for name, override in raw.models.items()
    }
    return Script(raw.seed, raw.strict_models, raw.catalog_models, defaults, models)


def apply_override(behaviour: Behaviour, override: Override) -> Behaviour:
    """The behaviour with the request's `sim` fields replacing the scripted ones (fault excluded)."""
    changes = {
        name: value
        for name in Override.__struct_fields__
        if name != "fault" and (value := getattr(override, name)) is not msgspec.UNSET
    }
    if not changes:
        return behaviour
    updated = msgspec.structs.replace(behaviour, **changes)
    if isinstance(updated.answer, AnswerSpec) and updated.answer.replay is not None:
        # Paths in a request are relative to the simulator's working directory.
        _check_replay(updated.answer.replay, "sim.answer.replay")
    return updated


def _merge(defaults: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = {**defaults, **override}
    if isinstance(defaults.get("faults"), dict) and isinstance(override.get("faults"), dict):
        merged["faults"] = {**defaults["faults"], **override["faults"]}
    return merged


def _behaviour(data: dict[str, Any], origin: str, where: str, base: Path) -> Behaviour:
    behaviour = _convert(data, Behaviour, origin, where)
    if isinstance(behaviour.answer, AnswerSpec) and behaviour.answer.replay is not None:
        replay = msgspec.structs.replace(behaviour.answer.replay, csv=str(base / behaviour.answer.replay.csv))
        try:
            _check_replay(replay, f"{where}.answer.replay")
        except ValueError as exc:
            raise ConfigError(f"{origin}: {exc}") from exc
        answer = msgspec.structs.replace(behaviour.answer, replay=replay)
        behaviour = msgspec.structs.replace(behaviour, answer=answer)
    return behaviour


def _check_replay(replay: Replay, where: str) -> None:
    """Load the recorded answers now, so a bad path or column fails at start-up, not mid-run."""
    try:
        replay_csv.table(replay.csv, replay.prompt_column, replay.column)
    except replay_csv.ReplayError as exc:
        raise ValueError(f"{where}: {exc}") from exc


def _convert(data: Any, kind: type[T], origin: str, where: str) -> T:
    try:
        return msgspec.convert(data, kind)
    except msgspec.ValidationError as exc:
        # The key meant, as the config says it (the path in msgspec's text is still kind's own).
        hint = known_fields_hint(str(exc), kind)
        raise ConfigError(f"{origin}: {_explain(exc, where)}{hint}") from exc


def _explain(exc: msgspec.ValidationError, where: str) -> str:
    text = str(exc)
    # msgspec says "at `$.faults.hang`"; name the key the way the file spells it.
    if where:
        if " - at `$" not in text:
            # An error in the part itself (`defaults`, a model's): msgspec names no place at all.
            return f"{text} - at `{where}`"
        return text.replace("`$.", f"`{where}.").replace("`$`", f"`{where}`")
    return text.replace("`$.", "`").replace("`$`", "the top level")
