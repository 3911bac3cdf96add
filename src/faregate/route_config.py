"""Route settings: chains, rules, tiers and tasks, and the router and cascade policies; checked
when the config loads (faregate.config reads the file; the routing package turns these into plans)."""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import msgspec

from faregate.errors import ConfigError
from faregate.learning.online.settings import QualitySettings, SemanticAcceptanceSettings

if TYPE_CHECKING:
    from faregate.config import SemanticCacheSettings, Settings


class _Strict(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """As in faregate.config: an unknown key is an error, not a silently ignored typo."""


class ChainItem(_Strict):
    """One step of a fallback chain: a model, alias or route name, with its own retry budget."""

    model: str
    retries: int | None = None


# A chain step is written either as a plain name or as {model, retries}.
ChainStep = str | ChainItem


class RuleMatch(_Strict):
    """Conditions on the request; all given conditions must hold."""

    min_prompt_tokens: int | None = None
    max_prompt_tokens: int | None = None
    modalities: list[Literal["image", "audio", "video", "file"]] = []
    has_tools: bool | None = None
    has_response_format: bool | None = None
    stream: bool | None = None


class Rule(_Strict):
    when: RuleMatch
    use: list[ChainStep]


class RouterPolicySettings(_Strict):
    """A learned complexity router (`faregate router train`): each prompt is scored and sent to
    the strong or the weak model (or route), the other one following as its fallback."""

    # The trained router file; a relative path is relative to the config file.
    file: str
    # Models or routes for the file's strong and weak model (default: the names in the file).
    strong: str | None = None
    weak: str | None = None
    # Exactly one: a score threshold; a target share of strong calls over recent prompts; or a
    # target quality (share of the strong model's accuracy to keep, by the file's calibration).
    threshold: float | None = None
    strong_share: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    retain: Annotated[float, msgspec.Meta(gt=0, le=1)] | None = None
    # Recent prompts the share is computed over.
    window: Annotated[int, msgspec.Meta(ge=10)] = 1000


RuleCheckName = Literal["empty", "truncated", "refusal", "json", "final_number"]


class LearnedJudgeSettings(_Strict):
    """A judge trained by `faregate router train-judge`: escalates when P(answer wrong) is high."""

    file: str
    # Exactly one: a score threshold, a target share of escalations, or a target quality.
    threshold: float | None = None
    escalate_share: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    retain: Annotated[float, msgspec.Meta(gt=0, le=1)] | None = None
    window: Annotated[int, msgspec.Meta(ge=10)] = 1000


class LLMJudgeSettings(_Strict):
    """A model, asked through the gateway, grades the answer; its call is billed to the request."""

    model: str
    # Accept when the normalised grade reaches this (0..1 of the rubric's scale).
    min_score: Annotated[float, msgspec.Meta(ge=0, le=1)] = 0.7
    rubric: str | None = None
    max_tokens: Annotated[int, msgspec.Meta(ge=1)] = 200


class JudgeSettings(_Strict):
    """How a cascade decides that an answer is good enough; every configured judge must accept."""

    checks: list[RuleCheckName] = msgspec.field(
        default_factory=lambda: ["empty", "truncated", "refusal", "json"]
    )
    # A regular expression the answer must match (e.g. a final answer line).
    required_pattern: str | None = None
    learned: LearnedJudgeSettings | None = None
    llm: LLMJudgeSettings | None = None


class CascadeSettings(_Strict):
    """Ask the first step; judge its answer; return it if it passes, else ask the next step.
    The last step's answer is returned unjudged. Every call made is billed to the request."""

    # Cheapest first. A step is a model or a route (a route is that step's own fallback chain).
    steps: list[ChainStep]
    judge: JudgeSettings = msgspec.field(default_factory=JudgeSettings)
    # Streaming requests: buffer the cheap answer until judged (the client's first token waits
    # for the whole cheap answer), or skip the cascade and stream from the strongest or the
    # cheapest step (the others follow as fallbacks).
    streams: Literal["buffer", "strongest", "cheapest"] = "buffer"


class RouteSettings(_Strict):
    """A policy that turns a request into an ordered chain of models.

    Resolution order: the first matching rule, then the task map (hint `task`), then the
    tier map (hint `tier`, else `default_tier`), then `chain`. A route with `router` picks its
    first step by the learned router instead; a route with `cascade` runs a cheap-first cascade.
    """

    chain: list[ChainStep] = []
    tiers: dict[Literal["economy", "standard", "premium"], list[ChainStep]] = {}
    default_tier: Literal["economy", "standard", "premium"] | None = None
    tasks: dict[
        Literal["chat", "code", "classify", "summarize", "translate", "reasoning", "vision"], list[ChainStep]
    ] = {}
    rules: list[Rule] = []
    # Among the offers of one model: cheapest healthy first, or lowest latency (power of two choices).
    offer_choice: Literal["cheapest", "latency"] = "cheapest"
    retries: int | None = None
    max_cost_usd: Decimal | None = None
    # Demote offers whose moving p99 latency is above this.
    failover_p99_ms: float | None = None
    router: RouterPolicySettings | None = None
    cascade: CascadeSettings | None = None
    # A router or cascade route whose cheap decisions are verified on live traffic and calibrated
    # to keep this share of the strong path's quality (docs/quality-guarantee.md).
    quality: QualitySettings | None = None


def chain_steps(steps: list[ChainStep]) -> list[ChainItem]:
    return [ChainItem(step) if isinstance(step, str) else step for step in steps]


def check_routes(settings: Settings, origin: str, model_names: dict[str, str]) -> None:
    """Every name in a route must be a model, an alias or another route; routes may not loop; no
    route step is an embedding model."""
    embedding_models = {name for name, model in settings.models.items() if model.kind == "embedding"}
    # Models are looked up case-insensitively and routes exactly: a route "GPT-4o" took requests
    # spelling the model gpt-4o that way.
    lowered = {known.lower(): model for known, model in model_names.items()}
    for name in settings.routes:
        owner = lowered.get(name.lower())
        if owner is not None:
            raise ConfigError(
                f"{origin}: routes.{name}: the name is already model {owner!r} or its alias "
                "(model names and aliases are matched case-insensitively)"
            )

    def steps_of(route: RouteSettings) -> list[tuple[str, list[ChainStep]]]:
        found: list[tuple[str, list[ChainStep]]] = [("chain", route.chain)] if route.chain else []
        found += [(f"tiers.{k}", v) for k, v in route.tiers.items()]
        found += [(f"tasks.{k}", v) for k, v in route.tasks.items()]
        found += [(f"rules[{i}].use", r.use) for i, r in enumerate(route.rules)]
        found += policy_steps(route)
        return found

    for name, route in settings.routes.items():
        if not (route.chain or route.tiers or route.tasks or route.router or route.cascade):
            raise ConfigError(
                f"{origin}: routes.{name}: give at least one of chain, tiers, tasks, router or cascade"
            )
        _check_policy(route, f"{origin}: routes.{name}")
        # A negative retry count made every step of the route zero calls (a 502 with no attempt),
        # and a cap or p99 limit of zero or below refused or demoted every request.
        if route.retries is not None and route.retries < 0:
            raise ConfigError(f"{origin}: routes.{name}.retries must not be negative")
        if route.max_cost_usd is not None and not (route.max_cost_usd.is_finite() and route.max_cost_usd > 0):
            raise ConfigError(f"{origin}: routes.{name}.max_cost_usd must be a positive number of USD")
        if route.failover_p99_ms is not None and not route.failover_p99_ms > 0:
            raise ConfigError(f"{origin}: routes.{name}.failover_p99_ms must be a positive number")
        if route.default_tier and route.default_tier not in route.tiers:
            raise ConfigError(
                f"{origin}: routes.{name}.default_tier {route.default_tier!r} is not in its tiers"
            )
        for where, steps in steps_of(route):
            if not steps:
                raise ConfigError(f"{origin}: routes.{name}.{where} is empty")
            for item in chain_steps(steps):
                if item.retries is not None and item.retries < 0:
                    raise ConfigError(f"{origin}: routes.{name}.{where}: retries must not be negative")
                if model_names.get(item.model) in embedding_models:
                    raise ConfigError(
                        f"{origin}: routes.{name}.{where}: {item.model!r} is an embedding model; "
                        "routes answer chat requests (embeddings name their model in POST /v1/embeddings)"
                    )
    # Names that are neither routes nor models are checked against the whole catalog when it is
    # built (the broad catalog is not known here).

    # Cycles: a route that reaches itself through route references.
    def visit(name: str, path: list[str]) -> None:
        if name in path:
            raise ConfigError(f"{origin}: routes form a loop: {' -> '.join([*path, name])}")
        for _, steps in steps_of(settings.routes[name]):
            for item in chain_steps(steps):
                if item.model in settings.routes:
                    visit(item.model, [*path, name])

    for name in settings.routes:
        visit(name, [])
    # A cascade is a sequence of judged calls, not a chain: it cannot be a step of another route.
    for name, route in settings.routes.items():
        for where, steps in steps_of(route):
            for item in chain_steps(steps):
                target = settings.routes.get(item.model)
                if target is not None and target.cascade is not None:
                    raise ConfigError(
                        f"{origin}: routes.{name}.{where}: {item.model!r} is a cascade route, which "
                        "cannot be a step of another route (name its models instead)"
                    )


def policy_steps(route: RouteSettings) -> list[tuple[str, list[ChainStep]]]:
    """The models and routes a router or cascade names, as (where, steps) like a chain's."""
    found: list[tuple[str, list[ChainStep]]] = []
    if route.router is not None:
        found += [
            (f"router.{k}", [v])
            for k, v in (("strong", route.router.strong), ("weak", route.router.weak))
            if v
        ]
    if route.quality is not None and route.quality.verification.judge_model is not None:
        found.append(("quality.verification.judge_model", [route.quality.verification.judge_model]))
    if route.cascade is not None:
        found.append(("cascade.steps", route.cascade.steps))
        if route.cascade.judge.llm is not None:
            found.append(("cascade.judge.llm.model", [route.cascade.judge.llm.model]))
    return found


def _check_policy(route: RouteSettings, where: str) -> None:
    if route.quality is not None:
        _check_quality(route, route.quality, where)
    if route.router is None and route.cascade is None:
        return
    if route.router is not None and route.cascade is not None:
        raise ConfigError(f"{where}: a route is a router or a cascade, not both")
    if route.tiers or route.tasks or route.rules:
        kind = "router" if route.router is not None else "cascade"
        raise ConfigError(f"{where}: a {kind} route takes no tiers, tasks or rules (only a fallback chain)")
    if route.router is not None and route.quality is None:
        given = [k for k in ("threshold", "strong_share", "retain") if getattr(route.router, k) is not None]
        if len(given) != 1:
            raise ConfigError(
                f"{where}.router: give exactly one of threshold, strong_share or retain"
                + (f" (got {', '.join(given)})" if given else "")
            )
    if route.cascade is not None:
        if len(route.cascade.steps) < 2:
            raise ConfigError(f"{where}.cascade.steps: a cascade needs at least two steps")
        learned = route.cascade.judge.learned
        if learned is not None and route.quality is None:
            given = [k for k in ("threshold", "escalate_share", "retain") if getattr(learned, k) is not None]
            if len(given) != 1:
                raise ConfigError(
                    f"{where}.cascade.judge.learned: give exactly one of threshold, escalate_share or retain"
                    + (f" (got {', '.join(given)})" if given else "")
                )
        pattern = route.cascade.judge.required_pattern
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(
                    f"{where}.cascade.judge.required_pattern: not a valid regex: {exc}"
                ) from None


# learning/online/comparators.py: the mechanical ones, answer-embedding similarity, and (with a
# judge_model) an LLM judge asked through the gateway.
QUALITY_COMPARATORS = ("exact", "numeric", "final_answer", "json", "embedding", "llm_judge")


def _check_quality(route: RouteSettings, quality: QualitySettings, where: str) -> None:
    """`quality` sets the cut itself: on a router or two-step cascade, without a cut of its own."""
    if route.router is None and route.cascade is None:
        raise ConfigError(f"{where}.quality: only a router or a cascade route takes a quality target")
    verification = quality.verification
    if verification.comparator not in QUALITY_COMPARATORS:
        raise ConfigError(
            f"{where}.quality.verification.comparator: {verification.comparator!r} is not one of "
            f"{', '.join(QUALITY_COMPARATORS)}"
        )
    if (verification.comparator == "llm_judge") != (verification.judge_model is not None):
        raise ConfigError(
            f"{where}.quality.verification: the llm_judge comparator takes a judge_model, and only it does"
        )
    if route.router is not None:
        given = [k for k in ("threshold", "strong_share", "retain") if getattr(route.router, k) is not None]
        if given:
            raise ConfigError(
                f"{where}.router: {', '.join(given)} conflicts with quality (the calibration sets the cut)"
            )
    if quality.learn_domains and route.router is None:
        raise ConfigError(
            f"{where}.quality.learn_domains: only a router route learns domains (it embeds the prompt)"
        )
    if route.cascade is not None:
        if len(route.cascade.steps) != 2:
            raise ConfigError(f"{where}.quality: a calibrated cascade has exactly two steps (cheap, strong)")
        if route.cascade.judge.llm is not None:
            raise ConfigError(f"{where}.quality: a calibrated cascade takes no LLM judge (its cut decides)")
        learned = route.cascade.judge.learned
        cuts = ("threshold", "escalate_share", "retain")
        given = [k for k in cuts if learned is not None and getattr(learned, k) is not None]
        if given:
            raise ConfigError(
                f"{where}.cascade.judge.learned: {', '.join(given)} conflicts with quality "
                "(the calibration sets the cut)"
            )


def check_cache_acceptance(semantic: SemanticCacheSettings, origin: str) -> None:
    """`cache.semantic.max_wrong_hit_rate` and its companions, checked like the rest of the config."""
    where = f"{origin}: cache.semantic"
    if semantic.comparator not in QUALITY_COMPARATORS:
        raise ConfigError(
            f"{where}.comparator: {semantic.comparator!r} is not one of {', '.join(QUALITY_COMPARATORS)}"
        )
    if (semantic.comparator == "llm_judge") != (semantic.judge_model is not None):
        raise ConfigError(f"{where}: the llm_judge comparator takes a judge_model, and only it does")
    if semantic.max_wrong_hit_rate is None:
        return
    try:
        acceptance_settings(semantic)  # the cap's check included
    except ValueError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def check_cache_judge(
    semantic: SemanticCacheSettings,
    known: Callable[[str], bool],
    hint: Callable[[str], str] = lambda name: "",
) -> None:
    """The semantic cache's judge must be a model or route the gateway can call (checked once the
    whole catalog is built, as the routes' names are); `hint` names the ones close to a typo."""
    judge = semantic.judge_model
    if semantic.enabled and judge is not None and not known(judge):
        raise ConfigError(f"cache.semantic.judge_model: unknown model or route {judge!r}{hint(judge)}")


def acceptance_settings(semantic: SemanticCacheSettings) -> SemanticAcceptanceSettings:
    """The library's settings type (learning/online/settings.py) from the flat cache keys."""
    assert semantic.max_wrong_hit_rate is not None
    return SemanticAcceptanceSettings(
        max_wrong_hit_rate=semantic.max_wrong_hit_rate,
        confidence=semantic.confidence,
        method=semantic.bound,
        prior_lookups=semantic.prior_lookups,
        verify_hits=semantic.verify_hits,
        daily_usd_cap=semantic.daily_usd_cap,
    )


def resolve_policy_files(settings: Settings, base: Path) -> None:
    """Trained router and judge files are named relative to the config file that names them."""
    for route in settings.routes.values():
        holders: list[RouterPolicySettings | LearnedJudgeSettings] = []
        if route.router is not None:
            holders.append(route.router)
        if route.cascade is not None and route.cascade.judge.learned is not None:
            holders.append(route.cascade.judge.learned)
        for holder in holders:
            if not Path(holder.file).is_absolute():
                holder.file = str((base / holder.file).resolve())
