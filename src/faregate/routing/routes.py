"""Route policies: turn a route name and a request into an ordered chain of models.

A route picks its chain by, in order: the first matching rule, the task map (hint
`task`), the tier map (hint `tier`, else `default_tier`). The route's own `chain`
follows as the general fallback. A step may name another route, which is expanded
in place (loops are refused when the config loads). A router route puts its trained
router's pick first and the other model after it (routing/policies.py); a cascade route
is planned stage by stage in routing/plan.py, and comes here only when a stream skips it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from decimal import Decimal
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from faregate.amounts import plain_amount
from faregate.catalog.models import Catalog
from faregate.errors import ConfigError, InvalidRequest
from faregate.route_config import ChainItem, RouteSettings, RuleMatch, chain_steps, policy_steps
from faregate.routing.estimate import PromptSize
from faregate.types import ChatRequest

if TYPE_CHECKING:
    from faregate.quality.live import Decision, RouteCalibration
    from faregate.routing.policies import CascadePolicy, RouterPolicy


class Policies(Protocol):
    """The trained route policies (routing/policies.py), by route name."""

    routers: dict[str, RouterPolicy]
    cascades: dict[str, CascadePolicy]
    calibrations: dict[str, RouteCalibration]

    def steps(self, name: str) -> list[str]: ...

    def trained(self, name: str) -> list[str]: ...

    def close(self) -> None: ...


class NoPolicies:
    """A config without router or cascade routes: nothing to load, and no numpy or model code
    imported at start-up."""

    def __init__(self) -> None:
        self.routers: dict[str, RouterPolicy] = {}
        self.cascades: dict[str, CascadePolicy] = {}
        self.calibrations: dict[str, RouteCalibration] = {}

    def steps(self, name: str) -> list[str]:
        return []

    def trained(self, name: str) -> list[str]:
        return []

    def close(self) -> None:
        pass


TIERS = ("economy", "standard", "premium")
# The largest `max_cost_usd` taken, far above what any one request can cost: a larger one (e.g.
# 1e9999999) is past what Decimal's arithmetic holds, and normalising it for the cache key overflowed.
MAX_COST_CAP_USD = Decimal(10**9)
TASKS = ("chat", "code", "classify", "summarize", "translate", "reasoning", "vision")


@dataclass(slots=True, frozen=True)
class Step:
    model: str
    retries: int | None
    # The smallest `max_cost_usd` of the routes the step was reached through: each route's cap
    # holds for its steps, whichever route the request named first (plan._cap adds the rest).
    max_cost_usd: Decimal | None = None


@dataclass(slots=True)
class RouteTrace:
    """What a policy decided for one request, for headers and records."""

    router_score: float | None = None
    router_choice: str | None = None
    # A calibrated route's decision (quality/live.py): verified after the response if labelled.
    quality: Decision | None = None


@dataclass(slots=True)
class Hints:
    tier: str | None = None
    task: str | None = None
    max_cost_usd: Decimal | None = None


# Every hint a chat request may give (`cache` is the cache's: cache/service.py).
HINT_KEYS = ("tier", "task", "max_cost_usd", "cache")


def parse_hints(raw: dict[str, Any]) -> Hints:
    hints = Hints()
    if not raw:
        return hints
    # A misspelt hint is refused, not ignored: `max_cost` for `max_cost_usd` left the request
    # without the cap its client set (as POST /v1/embeddings refuses a hint it does not take).
    unknown = sorted(str(k) for k in raw if k not in HINT_KEYS)
    if unknown:
        raise InvalidRequest(
            f"'faregate.{unknown[0]}' is not a gateway hint; the hints are {', '.join(HINT_KEYS)}.",
            param=f"faregate.{unknown[0]}",
        )
    tier = raw.get("tier")
    if tier is not None:
        if tier not in TIERS:
            raise InvalidRequest(
                f"'faregate.tier' must be one of {list(TIERS)}, got {tier!r}.", param="faregate.tier"
            )
        hints.tier = str(tier)
    task = raw.get("task")
    if task is not None:
        if task not in TASKS:
            raise InvalidRequest(
                f"'faregate.task' must be one of {list(TASKS)}, got {task!r}.", param="faregate.task"
            )
        hints.task = str(task)
    cap = raw.get("max_cost_usd")
    if cap is not None:
        value = _cap_amount(cap)
        if value is None or not value.is_finite() or value <= 0 or value > MAX_COST_CAP_USD:
            raise InvalidRequest(
                f"'faregate.max_cost_usd' must be a positive number of USD up to {MAX_COST_CAP_USD}, "
                f"got {cap!r}.",
                param="faregate.max_cost_usd",
            )
        hints.max_cost_usd = value
    return hints


def _cap_amount(cap: object) -> Decimal | None:
    """A cost cap as text (the header's, or the hint's) is a plain amount; a JSON number is any."""
    if isinstance(cap, str):
        return plain_amount(cap)
    if isinstance(cap, int | float) and not isinstance(cap, bool):
        return Decimal(str(cap))  # str(): the short decimal the client wrote (0.1, not 0.1000…)
    return None


async def rule_matches(when: RuleMatch, request: ChatRequest, prompt: PromptSize) -> bool:
    if when.modalities and not set(when.modalities) <= request.required_modalities:
        return False
    # Tools are `tools`, or the functions API's `functions` before it (still served upstream).
    body = request.body
    if when.has_tools is not None and bool(body.get("tools") or body.get("functions")) != when.has_tools:
        return False
    if when.has_response_format is not None and _asks_format(body) != when.has_response_format:
        return False
    if when.stream is not None and request.stream != when.stream:
        return False
    if when.max_prompt_tokens is not None and not await prompt.at_most(when.max_prompt_tokens):
        return False
    return not (when.min_prompt_tokens is not None and await prompt.at_most(when.min_prompt_tokens - 1))


def _asks_format(body: dict[str, Any]) -> bool:
    """Whether the request asks for structured output: `{"type": "text"}` is the default format
    (what no `response_format` gives), so it does not count."""
    fmt = body.get("response_format")
    return bool(fmt) and not (isinstance(fmt, dict) and fmt.get("type") == "text")


class RouteBook:
    """The configured routes, checked against the catalog once at start-up."""

    def __init__(
        self, routes: dict[str, RouteSettings], catalog: Catalog, policies: Policies | None = None
    ) -> None:
        self.routes = routes
        if policies is None:
            policies = NoPolicies()
            if any(r.router is not None or r.cascade is not None for r in routes.values()):
                from faregate.routing.policies import RoutePolicies

                policies = RoutePolicies(routes)
        self.policies: Policies = policies
        for name, route in routes.items():
            # The broad catalog's names too (config.loading checks the configured ones): a route
            # is matched exactly and a model in any case, so the route would shadow that spelling.
            shadowed = catalog.get(name)
            if shadowed is not None:
                raise ConfigError(
                    f"routes.{name}: the name is already model {shadowed.name!r} or its alias "
                    "(model names and aliases are matched case-insensitively)"
                )
            names = [item.model for steps in self.all_steps(route) for item in chain_steps(steps)]
            for model in [*names, *self.policies.steps(name)]:
                if model not in routes and model not in catalog:
                    suggestions = catalog.suggest(model)
                    hint = f"; did you mean {', '.join(suggestions)}?" if suggestions else ""
                    raise ConfigError(f"routes.{name}: unknown model or route {model!r}{hint}")
            router = self.policies.routers.get(name)
            if router is not None and (self._is_cascade(router.strong) or self._is_cascade(router.weak)):
                raise ConfigError(f"routes.{name}.router: a cascade route cannot be a router's step")
        # The routes whose model may differ for a stream (`picks_by_stream`), known once.
        self.stream_picked = frozenset(name for name in routes if self._picks_by_stream(name))
        self._definitions: dict[str, str] = {}

    def definition(self, name: str) -> str:
        """A digest of route `name` as configured, with every route it reaches (routes do not
        loop: check_routes): what the cache keys its entries by beside the name, so that a route
        pointed at other models is not served the answers its old ones gave (the cache, in Redis,
        outlives a restart). Trained files count by their content, not their path (another
        machine's path may differ): a router retrained in place decides otherwise, and may name
        other models, so its route starts afresh too."""
        found = self._definitions.get(name)
        if found is None:
            route = self.routes[name]
            names = [item.model for steps in self.all_steps(route) for item in chain_steps(steps)]
            names += self.policies.steps(name)
            reached = sorted({step for step in names if step in self.routes and step != name})
            material = [_without_files(msgspec.to_builtins(route)), [self.definition(r) for r in reached]]
            trained = self.policies.trained(name)
            if trained:  # only then: a route without trained files keeps the digest it had
                material.append(trained)
            found = hashlib.sha256(msgspec.json.encode(material)).hexdigest()[:16]
            self._definitions[name] = found
        return found

    def _picks_by_stream(self, name: str) -> bool:
        """Whether route `name` may pick another model for a stream than for a whole answer: a
        rule on `stream`, or a cascade that streams from one step instead of buffering, in it or in
        any route it reaches (routes do not loop: check_routes)."""
        route = self.routes[name]
        if any(rule.when.stream is not None for rule in route.rules):
            return True
        if route.cascade is not None and route.cascade.streams != "buffer":
            return True
        names = [item.model for steps in self.all_steps(route) for item in chain_steps(steps)]
        names += self.policies.steps(name)
        return any(step in self.routes and self._picks_by_stream(step) for step in names)

    def _is_cascade(self, name: str | None) -> bool:
        return name is not None and name in self.routes and self.routes[name].cascade is not None

    @staticmethod
    def all_steps(route: RouteSettings) -> list[list[Any]]:
        return [
            route.chain,
            *route.tiers.values(),
            *route.tasks.values(),
            *(r.use for r in route.rules),
            *(steps for _, steps in policy_steps(route)),
        ]

    def __contains__(self, name: str) -> bool:
        return name in self.routes

    def get(self, name: str) -> RouteSettings:
        return self.routes[name]

    async def expand(
        self,
        name: str,
        request: ChatRequest,
        prompt: PromptSize,
        hints: Hints,
        retries: int | None = None,
        trace: RouteTrace | None = None,
    ) -> list[Step]:
        route = self.routes[name]
        selected: list[ChainItem] = []
        router = self.policies.routers.get(name)
        if router is not None and request.verification:
            # A quality verification's call to a router route (a served semantic hit's fresh call):
            # its strong path, the standard labels take, as a cascade's strongest step. Through
            # the router it was one more decision of a calibrated route, counted though no routed
            # answer came of it, and answered by the weak model when the cut sent it there.
            selected = [ChainItem(router.strong), ChainItem(router.weak)]
        elif router is not None:
            pick = await router.pick(request.body, request.request_id)
            selected = [ChainItem(pick.first), ChainItem(pick.other)]
            if trace is not None and trace.router_choice is None:
                trace.router_score, trace.router_choice = pick.score, pick.first
                trace.quality = pick.decision
        elif route.cascade is not None:
            # Reached only when the cascade is skipped (a stream the route does not buffer).
            selected = chain_steps(route.cascade.steps)
            if route.cascade.streams == "strongest":
                selected.reverse()
        else:
            selected = await _select(route, request, prompt, hints)
        steps = [*selected, *(s for s in chain_steps(route.chain) if s not in selected)]
        if not steps:
            raise InvalidRequest(
                f"Route '{name}' has no chain for this request (tier={hints.tier}, task={hints.task}) and no "
                "default chain.",
                param="model",
            )
        default_retries = route.retries if route.retries is not None else retries
        out: list[Step] = []
        for item in steps:
            step_retries = item.retries if item.retries is not None else default_retries
            if item.model in self.routes:
                out.extend(await self.expand(item.model, request, prompt, hints, step_retries, trace))
            else:
                out.append(Step(item.model, step_retries))
        cap = route.max_cost_usd
        if cap is None:
            return out
        return [
            replace(s, max_cost_usd=cap if s.max_cost_usd is None else min(cap, s.max_cost_usd)) for s in out
        ]


async def _select(
    route: RouteSettings, request: ChatRequest, prompt: PromptSize, hints: Hints
) -> list[ChainItem]:
    """A plain route's own steps: the first matching rule, else the task map, else the tier map."""
    for rule in route.rules:
        if await rule_matches(rule.when, request, prompt):
            return chain_steps(rule.use)
    if hints.task and hints.task in route.tasks:
        return chain_steps(route.tasks[hints.task])
    tier = hints.tier if hints.tier in route.tiers else route.default_tier
    return chain_steps(route.tiers[tier]) if tier is not None else []


def _without_files(value: Any) -> Any:
    """A route's settings as plain data without the paths of its trained files."""
    if isinstance(value, dict):
        return {k: _without_files(v) for k, v in value.items() if k != "file"}
    if isinstance(value, list):
        return [_without_files(v) for v in value]
    return value
