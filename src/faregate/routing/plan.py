"""Turn a request into an ordered plan of attempts (model + provider offer + retry budget).

The request names a model, an alias, a route, or a list of them (`models`). Routes
expand to chains; then every model is checked against the request (modalities,
context window with its max_tokens, the request's cost cap: routing/candidate_fit.py)
and its offers are ordered (cheapest healthy, or lowest latency). Models that cannot
serve the request are never tried; if none can, the client is told why, model by model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING

from faregate.catalog.models import Catalog, Model, Offer
from faregate.config import RoutingSettings
from faregate.errors import InvalidRequest, ModelNotFound
from faregate.route_config import ChainItem, RouteSettings, chain_steps
from faregate.routing.candidate_fit import (
    ModelUnavailable,
    Rejections,
    call_worst,
    fits,
    fits_now,
    offers_fit_now,
    offers_that_fit,
    output_allowance,
    refuse,
    unavailable_headers,
    within_cap,
)
from faregate.routing.estimate import PromptSize
from faregate.routing.health import HealthBoard
from faregate.routing.routes import Hints, RouteBook, RouteTrace, Step, parse_hints
from faregate.routing.tier_offers import TierOfferMemo
from faregate.types import Attempt, ChatRequest, Price

if TYPE_CHECKING:
    from faregate.routing.policies import CascadePolicy
    from faregate.routing.routes import Policies


@dataclass(slots=True, frozen=True)
class Candidate:
    model: Model
    offer: Offer
    retries: int = 0

    def max_output(self, requested: int | None) -> int | None:
        """The request's max_tokens capped at the model's max output."""
        cap = self.model.max_output_tokens
        if requested is None:
            return None
        return min(requested, cap) if cap else requested


@dataclass(slots=True)
class Plan:
    route: str
    candidates: list[Candidate]
    prompt: PromptSize | None = None
    hints: Hints = field(default_factory=Hints)
    trace: RouteTrace = field(default_factory=RouteTrace)
    # A cascade: the candidates of each step, cheapest step first (`candidates` is all of them).
    stages: list[list[Candidate]] = field(default_factory=list)
    cascade: CascadePolicy | None = None
    # The dearest price the cascade's LLM judge may be called at, and its output allowance.
    judge_price: Price | None = None
    judge_max_tokens: int = 0
    # A route's own rubric, in UTF-8 bytes (a bound on its tokens): the judge is shown it beside
    # the question and the answer, and worst_case.JUDGE_PROMPT_TOKENS allows for the default only.
    judge_rubric_tokens: int = 0
    # The places (candidates planned before) of the models left out because the breaker of every
    # offer was open: a candidate at or past one is not the route's own choice but its fallback.
    passed_over: list[int] = field(default_factory=list)

    def own_choice(self, model: str, attempts: Sequence[Attempt]) -> bool:
        """Whether `model`'s answer, after these calls, is the one the route gives when every
        upstream is well (what the cache may keep for it): `model` is the first model of its step
        (of the plan; of a cascade's step), and the steps before it were each answered by their
        own first model and escalated; no model was passed over ahead of it for its open breakers,
        and every call went to one of those models (a failed call on another offer of the same
        model is no matter: the same model answers). A fallback's answer is served, not kept:
        kept, it would be served for the whole TTL after the route's own model is back."""
        firsts = [stage[0].model.name for stage in self.stages or [self.candidates] if stage]
        if model not in firsts:
            return False
        step = firsts.index(model)
        place = sum(len(stage) for stage in self.stages[:step]) if self.stages else 0
        if any(at <= place for at in self.passed_over):
            return False
        escalated = [a.model for a in attempts if a.outcome == "escalated"]
        called = {a.model for a in attempts if a.outcome != "judge"}
        return escalated == firsts[:step] and called <= set(firsts[: step + 1])

    def stage(self, index: int) -> Plan:
        """One cascade step as a plan of its own (its candidates are that step's fallbacks)."""
        return Plan(self.route, self.stages[index], self.prompt, self.hints, self.trace)


class Planner:
    def __init__(
        self,
        catalog: Catalog,
        routes: dict[str, RouteSettings] | None = None,
        routing: RoutingSettings | None = None,
        health: HealthBoard | None = None,
        policies: Policies | None = None,
    ) -> None:
        self.catalog = catalog
        self.routing = routing or RoutingSettings()
        self.routes = RouteBook(routes or {}, catalog, policies)
        self.health = health or HealthBoard(self.routing.breaker, self.routing.latency_window)
        self._tier_offers = TierOfferMemo(catalog.enable_hints)

    def resolve(self, name: str) -> Model:
        model = self.catalog.get(name)
        if model is None:
            suggestions = [
                *(r for r in self.routes.routes if name.lower() in r.lower()),
                *self.catalog.suggest(name),
            ]
            # Nothing close: where the names are, rather than a dead end.
            hint = (
                f" Did you mean: {', '.join(suggestions[:4])}?"
                if suggestions
                else " GET /v1/models (or `faregate models`) lists the models served here."
            )
            raise ModelNotFound(f"The model '{name}' does not exist.{hint}", param="model")
        return model

    def listed_model(self, name: str) -> Model:
        """The model `name` as GET /v1/models lists it: 404 for a name the catalog does not know
        and for a model no declared provider sells (a broad-catalog model of a vendor not declared
        here, known for its price only), which a request could never reach - not a 503 that
        says to retry, nor a 200 from GET /v1/models/{id} for a model the listing leaves out."""
        model = self.resolve(name)
        if not model.offers:
            raise ModelNotFound(
                f"The model '{model.name}' has a known price but no provider here sells it.", param="model"
            )
        return model

    def chat_model(self, name: str) -> Model:
        """The model a chat request names; an embedding model is refused (400), not planned."""
        model = self.listed_model(name)
        if model.embeds:
            raise InvalidRequest(
                f"The model '{model.name}' is an embedding model: it answers POST /v1/embeddings, "
                "not chat requests.",
                param="model",
                code="model_not_supported",
            )
        return model

    def embedding_model(self, name: str) -> Model:
        """The model an embeddings request names; a chat model is refused (400)."""
        model = self.resolve(name)
        if not model.embeds:
            embedding = ", ".join(m.name for m in self.catalog.all() if m.embeds and m.offers)
            raise InvalidRequest(
                f"The model '{model.name}' is not an embedding model; POST /v1/embeddings takes one of: "
                f"{embedding or 'none is configured'}.",
                param="model",
                code="model_not_supported",
            )
        return model

    def embedding_plan(
        self, name: str, *, premium: bool, key_id: str | None, serves: Callable[[str], bool]
    ) -> Plan:
        """The offers of the embedding model `name`, cheapest healthy first, from the providers
        `serves` says can embed (a wire without embeddings is left out); a chat model is refused
        (400). No routes, policies or prompt checks: an embedding request names its model."""
        model = self.embedding_model(name)
        rejected = Rejections()
        offers = [
            o for o in self._order_offers(model, rejected, False, None, premium, key_id) if serves(o.provider)
        ]
        if not offers:
            parts = list(rejected.unavailable)
            parts += [f"circuit breaker open for {b}" for b in rejected.breaker]
            reason = "; ".join(parts) or f"no enabled provider of {model.name} serves embeddings"
            raise ModelUnavailable(
                f"No candidate can serve this request: {reason}.", headers=unavailable_headers(rejected)
            )
        return Plan(route=model.name, candidates=[Candidate(model, o, self.routing.retries) for o in offers])

    def requested_route(self, request: ChatRequest) -> str:
        """The route the request asks for, as records, the x-faregate-route header and metrics
        name it, whether the answer came from a model or from the cache: a configured route, or a
        model's canonical name whatever alias or case the client wrote (one route is one row on
        the dashboard; `model_requested` keeps the spelling). A name that is neither stays as
        written: the request is refused."""
        names: list[str] = request.body.get("models") or [request.model]
        canonical = [self._canonical_name(name) for name in names]
        return canonical[0] if len(canonical) == 1 else "list:" + ",".join(canonical)

    def _canonical_name(self, name: str) -> str:
        if name in self.routes:
            return name
        model = self.catalog.get(name)
        return model.name if model is not None else name

    def route_label(self, route: str | None) -> str:
        """A metrics label for a record's route, from a closed set: a configured route, a canonical
        model name, "list" for a request's own `models` list, "none" or "other". Never the
        client's own text (a name not in the catalog, a long list) in a label."""
        if not route:
            return "none"
        if route in self.routes:
            return route
        if route.startswith("list:"):
            return "list"
        model = self.catalog.get(route)
        return model.name if model is not None else "other"

    def resolved_name(self, request: ChatRequest) -> str:
        """The route or canonical model a request asks for (aliases resolved), e.g. for cache keys."""
        names: list[str] = request.body.get("models") or [request.model]
        resolved = [name if name in self.routes else self.resolve(name).name for name in names]
        return resolved[0] if len(resolved) == 1 else "list:" + ",".join(resolved)

    def route_definition(self, resolved: str) -> str | None:
        """The digest of the routes a resolved name (`resolved_name`) asks for as configured
        (RouteBook.definition), for the cache key; None for models alone."""
        names = resolved.removeprefix("list:").split(",") if resolved.startswith("list:") else [resolved]
        digests = [self.routes.definition(name) for name in names if name in self.routes]
        return ",".join(digests) or None

    def picks_by_stream(self, request: ChatRequest) -> bool:
        """Whether the route the request names may answer a stream with another model than a whole
        answer (RouteBook.stream_picked): then the cache keeps the two apart."""
        picked = self.routes.stream_picked
        if not picked:
            return False
        names: list[str] = request.body.get("models") or [request.model]
        return any(name in picked for name in names)

    def plan_now(self, request: ChatRequest) -> Plan | None:
        """`plan` of the usual request, without a wait and without the general machinery: one
        model named (no route, no `models` list, no hints), that fits by the prompt's upper bound
        and has a usable offer. None: `plan` it (which also raises the error of a request that
        cannot be served). tests/test_plan.py holds the two to the same plan."""
        if request.hints or "models" in request.body:
            return None
        name = request.model
        if name in self.routes:
            return None
        model = self.chat_model(name)  # the same 404 or 400 as `plan`
        prompt = PromptSize.of(request.body)
        rejected = Rejections()  # thrown away: `plan` records the reasons again when it refuses
        if not fits_now(model, request, prompt, rejected):
            return None
        sized = (request, prompt)
        offers = self._order_offers(model, rejected, False, None, request.premium, request.key_id, sized)
        if not offers or not offers_fit_now(model, offers, request, prompt):
            return None
        retries = self.routing.retries
        return Plan(model.name, [Candidate(model, offer, retries) for offer in offers], prompt)

    async def plan(self, request: ChatRequest) -> Plan:
        hints = parse_hints(request.hints)
        prompt = PromptSize.of(request.body)
        names: list[str] = request.body.get("models") or [request.model]
        trace = RouteTrace()
        route = self.requested_route(request)
        if len(names) > 1 and any(name in self.routes.policies.cascades for name in names):
            raise InvalidRequest(
                "A cascade route cannot be one of several 'models': it runs its own steps in order.",
                param="models",
            )
        cascade = self.routes.policies.cascades.get(route)
        if cascade is not None and (not request.stream or cascade.settings.streams == "buffer"):
            return await self._plan_cascade(route, cascade, request, prompt, hints)
        # Each name in turn with its own settings (a route's offer choice, p99 failover and cap
        # hold for its own steps, a model named directly has none), as if it were asked alone;
        # every name is resolved first, so an unknown one is a 404 whatever its place.
        entries: list[tuple[list[Step], RouteSettings | None]] = []
        for name in names:
            if name in self.routes:
                steps = await self.routes.expand(name, request, prompt, hints, trace=trace)
                entries.append((steps, self.routes.get(name)))
            else:
                self.chat_model(name)
                entries.append(([Step(name, None)], None))
        rejected = Rejections()
        seen: set[str] = set()
        candidates: list[Candidate] = []
        for steps, settings in entries:
            candidates += await self._candidates(
                steps, request, prompt, hints, settings, rejected, seen, len(candidates)
            )
        if not candidates:
            await refuse(rejected, prompt)
        plan = Plan(route=route, candidates=candidates, prompt=prompt, hints=hints, trace=trace)
        plan.passed_over = rejected.passed_over
        return plan

    async def _plan_cascade(
        self, route: str, cascade: CascadePolicy, request: ChatRequest, prompt: PromptSize, hints: Hints
    ) -> Plan:
        """One stage of candidates per cascade step; a step no candidate of which fits is skipped."""
        settings = self.routes.get(route)
        rejected = Rejections()
        seen: set[str] = set()
        trace = RouteTrace()
        stages: list[list[Candidate]] = []
        for item in chain_steps(cascade.settings.steps):
            steps = await self._steps(item, request, prompt, hints, trace)
            planned = sum(len(s) for s in stages)
            stage = await self._candidates(steps, request, prompt, hints, settings, rejected, seen, planned)
            if stage:
                stages.append(stage)
        chain: list[Step] = []
        for item in chain_steps(settings.chain):
            chain += await self._steps(item, request, prompt, hints, trace)
        planned = sum(len(s) for s in stages)
        fallback = await self._candidates(chain, request, prompt, hints, settings, rejected, seen, planned)
        if fallback:
            # The route's own chain backs up the last step (it is never judged).
            if stages:
                stages[-1] = stages[-1] + fallback
            else:
                stages.append(fallback)
        if not stages:
            await refuse(rejected, prompt)
        candidates = [c for stage in stages for c in stage]
        if len(stages) == 1:
            plan = Plan(route=route, candidates=candidates, prompt=prompt, hints=hints, trace=trace)
            plan.passed_over = rejected.passed_over
            return plan
        plan = Plan(route, candidates, prompt, hints, trace, stages, cascade)
        plan.passed_over = rejected.passed_over
        llm = cascade.settings.judge.llm
        if llm is not None:
            plan.judge_price, plan.judge_max_tokens = self._dearest_price(llm.model), llm.max_tokens
            plan.judge_rubric_tokens = len(llm.rubric.encode()) if llm.rubric else 0
        cap = _cap(hints, settings)
        if cap is not None and not await _cascade_within_cap(plan, request, prompt, cap):
            # Each candidate is within the cap but every step plus the judge is not: the cascade
            # is skipped, as for a stream (`streams: cheapest`): one call, the cheapest step first.
            plan = Plan(route=route, candidates=candidates, prompt=prompt, hints=hints, trace=trace)
            plan.passed_over = rejected.passed_over
        return plan

    def dearest_price(self, name: str) -> Price:
        """The highest price a model or route name can be called at (a shadow call's estimate)."""
        return self._dearest_price(name)

    def _dearest_price(self, name: str) -> Price:
        """The highest price any model a name can reach (a model, or a route's every step) charges."""
        if name not in self.routes:
            model = self.resolve(name)
            found = [p for o in model.offers for p in o.prices] or [model.list_price]
        else:
            route = self.routes.get(name)
            names = [i.model for steps in RouteBook.all_steps(route) for i in chain_steps(steps)]
            names += self.routes.policies.steps(name)
            found = [self._dearest_price(n) for n in names]
        # Each price on its own: any offer may be the one called, and the one with the dearest
        # output need not have the dearest input (a hold at its pair fell short of the other's).
        # Input and output only: this prices an LLM judge's call (worst_case.judge_call), whose
        # prompt is the gateway's own text, with no cache marks and no audio to bill dearer.
        return Price(max(p.input for p in found), max(p.output for p in found))

    async def _steps(
        self, item: ChainItem, request: ChatRequest, prompt: PromptSize, hints: Hints, trace: RouteTrace
    ) -> list[Step]:
        if item.model in self.routes:
            return await self.routes.expand(item.model, request, prompt, hints, item.retries, trace)
        self.chat_model(item.model)
        return [Step(item.model, item.retries)]

    async def _candidates(
        self,
        steps: list[Step],
        request: ChatRequest,
        prompt: PromptSize,
        hints: Hints,
        route_settings: RouteSettings | None,
        rejected: Rejections,
        seen: set[str],
        planned: int = 0,
    ) -> list[Candidate]:
        """The offers of every step that can serve the request, in order (a model only once);
        `planned`: the candidates planned before these (where a model passed over would be)."""
        route_cap = _cap(hints, route_settings)
        p99_limit = route_settings.failover_p99_ms if route_settings else None
        by_latency = route_settings is not None and route_settings.offer_choice == "latency"
        candidates: list[Candidate] = []
        for step in steps:
            model = self.resolve(step.model)
            if model.name in seen or model.embeds:  # a route's policy never answers chat with one
                continue
            seen.add(model.name)
            retries = step.retries if step.retries is not None else self.routing.retries
            caps = (route_cap, step.max_cost_usd)
            cap = min((c for c in caps if c is not None), default=None)
            fit = fits_now(model, request, prompt, rejected)
            if fit is None:
                fit = await fits(model, request, prompt, rejected)
            if not fit:
                continue
            unhealthy = len(rejected.breaker)
            offers = self._order_offers(
                model, rejected, by_latency, p99_limit, request.premium, request.key_id, (request, prompt)
            )
            if len(rejected.breaker) > unhealthy:
                rejected.passed_over.append(planned + len(candidates))
            if offers:
                offers = await offers_that_fit(model, offers, request, prompt, rejected)
            if cap is not None and offers:
                offers = await within_cap(model, offers, request, prompt, cap, rejected)
                if not offers:
                    # Over this step's cap, which is its route's: a later step reached another way
                    # (a `models` entry without that cap) may still try it.
                    seen.discard(model.name)
            candidates.extend(Candidate(model, offer, retries) for offer in offers)
        return candidates

    def _order_offers(
        self,
        model: Model,
        rejected: Rejections,
        by_latency: bool,
        p99_limit: float | None,
        premium: bool = False,
        api_key: str | None = None,
        sized: tuple[ChatRequest, PromptSize] | None = None,
    ) -> list[Offer]:
        """The model's offers the key may use, healthy ones only, cheapest for this request first:
        `sized`, a chat request and its prompt, priced as the cost cap reckons them (the prompt's
        byte bound, no count; the output it may bill), so that a seller cheap to read but dear to
        write comes first for a long prompt with a short answer, and last for the other way round.
        None: an embedding request, which bills its input only."""
        tier = self._tier_offers.get(model, premium)
        if not tier.offers:
            rejected.unavailable.append(tier.refusal)
            return []
        # Only health is read per request: the offers a tier may use are remembered.
        now = time.monotonic()
        usable = [o for o in tier.offers if self.health.usable(o.key, now, api_key)]
        if not usable:
            rejected.breaker.append(", ".join(f"{o.provider}/{model.name}" for o in tier.offers))
            wait = min(self.health.reopens_in(o.key, now, api_key) for o in tier.offers)
            if rejected.breaker_wait is None or wait < rejected.breaker_wait:
                rejected.breaker_wait = wait
            return []
        if tier.priced_by_hour:  # known per tier: no scan of the offers per request
            # Priced by the hour the request came (an embedding request: now), once: its hold,
            # its bill and its offer order read the same price.
            came = sized[0].received_at if sized is not None else time.time()
            usable = [o.at(came) for o in usable]
        if len(usable) == 1:
            return usable
        # Cheapest for this request first, with recent errors making an offer look dearer than it
        # is; at the same cost, the offer whose prompt-cache reads (then writes) cost less: never
        # dearer, and cheaper for every prompt with a cached prefix (a seller without a cache
        # discount bills those tokens as plain input).
        if sized is None:
            tokens_in, tokens_out = 1, 0
        else:
            request, prompt = sized
            tokens_in, tokens_out = prompt.billable_bound, output_allowance(model, request, prompt)
        usable.sort(
            key=lambda o: (
                (o.price.input * tokens_in + o.price.output * tokens_out)
                * Decimal(1 + 2 * self.health.error_rate(o.key)),
                o.price.input if o.price.cache_read is None else o.price.cache_read,
                o.price.input if o.price.cache_write is None else o.price.cache_write,
            )
        )
        if by_latency and len(usable) > 1:
            a, b = self.health.pick_two(len(usable))
            first, second = usable[a], usable[b]
            lat_a = self.health.ewma(first.key, now) or 0.0
            lat_b = self.health.ewma(second.key, now) or 0.0
            # A tie (no latency known yet for either, or the same) goes to the cheaper offer, the
            # one earlier in the list: not to whichever the random draw named first.
            chosen = first if (lat_a, a) <= (lat_b, b) else second
            usable.remove(chosen)
            usable.insert(0, chosen)
        if p99_limit is not None:
            slow = [o for o in usable if (self.health.p99(o.key, now) or 0.0) > p99_limit]
            usable = [o for o in usable if o not in slow] + slow
        return usable


def _cap(hints: Hints, route: RouteSettings | None) -> Decimal | None:
    """The request's cost cap. The route's is the operator's ceiling: a client's hint may lower
    it, never raise it."""
    caps = [hints.max_cost_usd, route.max_cost_usd if route is not None else None]
    return min((c for c in caps if c is not None), default=None)


async def _cascade_within_cap(plan: Plan, request: ChatRequest, prompt: PromptSize, cap: Decimal) -> bool:
    """Whether a cascade's every step, each at its dearest candidate, plus its LLM judge after each
    judged step, is within the cap, reckoned as a candidate's is (candidate_fit.within_cap)."""
    from faregate.routing.worst_case import judge_call  # worst_case imports this module

    def total(tokens_in: int) -> Decimal:
        usd = Decimal(0)
        for index, stage in enumerate(plan.stages):
            calls = [(c.offer.price, output_allowance(c.model, request, prompt, c.offer)) for c in stage]
            usd += max(call_worst(price, request, tokens_in, out) for price, out in calls)
            if plan.judge_price is not None and index < len(plan.stages) - 1:
                # The question, the answer and a rubric of the route's own.
                judged = tokens_in + max(out for _, out in calls) + plan.judge_rubric_tokens
                usd += judge_call(plan.judge_price, judged, plan.judge_max_tokens)[0]
        return usd

    if total(prompt.billable_bound) <= cap:
        return True
    return total(await prompt.billable()) <= cap
