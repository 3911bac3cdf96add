"""Replay a route from the config, or a trained router file, on recorded outcomes, calling no model.

The route is the gateway's own: the catalog and the Planner are built from the config exactly as
`faregate serve` builds them, so rules (prompt tokens, modalities, ...), task and tier maps,
chains, routers and cascades decide here as they would live. Three kinds of route:

- a plain route: each recorded prompt is planned as a chat request (the prompt as one user
  message); the first model of the plan is the policy's choice;
- a router route: its trained complexity router scores every prompt (embeddings cached on disk,
  as in `faregate router eval`), which gives the full threshold sweep (APGR, CPT), and the
  route's own threshold, fed the prompts in file order, gives the configured operating point;
- a cascade route: see evals/replay/cascade.py.

Route models are catalog models; recorded outcomes are named as the data names them
(`gpt-4-1106-preview`, `mistralai/Mixtral-8x7B-Instruct-v0.1`). Each recorded name is looked up
in the catalog (aliases count); anything else is mapped explicitly (`--as CATALOG=RECORDED`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from faregate.catalog.models import Catalog, Offer, build_catalog
from faregate.config import Settings
from faregate.embedding.vector_cache import BatchEmbedder
from faregate.errors import ConfigError, FaregateError
from faregate.evals.replay.cascade import evaluate_cascade
from faregate.evals.replay.engine import DEFAULT_BINS, Pair, Report, evaluate_router, evaluate_scorer, replay
from faregate.evals.replay.outcomes import Outcomes
from faregate.evals.replay.router_eval import held_out, router_scores, scorer_of
from faregate.learning.complexity_router import KIND as ROUTER_KIND
from faregate.learning.model_file import ModelFile, load_model_file
from faregate.learning.text_features import PROMPT_NAMES
from faregate.learning.training.selection import prompts_digest
from faregate.providers.registry import SIMULATOR, with_simulator
from faregate.route_config import RouterPolicySettings, chain_steps
from faregate.routing.plan import Planner
from faregate.routing.routes import RouteBook
from faregate.types import ChatRequest, Price

# Nothing listens here and nothing is ever sent: see replay_catalog.
NOWHERE = "http://127.0.0.1:1"


@dataclass(slots=True, frozen=True)
class ModelMap:
    """Catalog models (by canonical name) to the recorded models that stand for them."""

    catalog: Catalog
    to_recorded: Mapping[str, str]
    recorded: tuple[str, ...]

    def recorded_for(self, name: str, route: str) -> str:
        model = self.catalog.get(name)
        found = self.to_recorded.get(model.name) if model is not None else None
        if found is None:
            raise ValueError(
                f"route {route} chose {name!r}, which maps to no recorded model (the data records "
                f"{', '.join(self.recorded)}); map it with --as {name}=RECORDED_MODEL"
            )
        return found


def map_models(catalog: Catalog, recorded: Sequence[str], explicit: Mapping[str, str]) -> ModelMap:
    """Each recorded name that the catalog knows (as a name or an alias), plus the explicit pairs."""
    mapping: dict[str, str] = {}
    for name in recorded:
        model = catalog.get(name)
        if model is None:
            continue
        if model.name in mapping:
            raise ValueError(
                f"the recorded models {mapping[model.name]!r} and {name!r} are both {model.name!r} in the "
                "catalog; say which one it is with --as"
            )
        mapping[model.name] = name
    for catalog_name, recorded_name in explicit.items():
        if recorded_name not in recorded:
            raise ValueError(
                f"--as {catalog_name}={recorded_name}: the data records no {recorded_name!r} "
                f"(it records {', '.join(recorded)})"
            )
        model = catalog.get(catalog_name)
        if model is None:
            raise ValueError(f"--as {catalog_name}={recorded_name}: no model or alias {catalog_name!r} here")
        mapping[model.name] = recorded_name
    return ModelMap(catalog, mapping, tuple(recorded))


def replay_catalog(settings: Settings) -> Catalog:
    """The config's catalog with every model available.

    The planner only picks models that have an available offer (a provider whose key is set, or
    the simulator), which is a fact about today's machine, not about the policy. Replay calls no
    model, so every configured model gets a simulator offer (at an address nothing listens on),
    and any catalog model still without one gets a placeholder: the route chooses as it would with
    every provider up."""
    catalog = build_catalog(with_simulator(settings, NOWHERE))
    for model in catalog.all():
        if not model.available:
            model.offers = [Offer(model.name, SIMULATOR, model.name, model.list_price, True)]
    return catalog


@dataclass(slots=True)
class RouteReplay:
    """One configured route with the gateway's own planner, ready to replay."""

    name: str
    planner: Planner
    models: ModelMap

    @property
    def book(self) -> RouteBook:
        return self.planner.routes

    @property
    def kind(self) -> str:
        route = self.book.get(self.name)
        return "cascade" if route.cascade is not None else "router" if route.router is not None else "plain"

    def trained_files(self) -> list[ModelFile]:
        """The trained router or learned judge this route uses (for held-out selection)."""
        policies = self.book.policies
        if self.name in policies.routers:
            return [policies.routers[self.name].router.file]
        cascade = policies.cascades.get(self.name)
        return [cascade.learned.file] if cascade is not None and cascade.learned is not None else []

    def step_model(self, name: str, where: str) -> str:
        """The recorded model for a router's or cascade's step, which replay needs to be a model."""
        if name in self.book:
            raise ValueError(
                f"route {self.name}: its {where} {name!r} is a route; replay needs a model there "
                "(replay that route on its own)"
            )
        return self.models.recorded_for(name, self.name)

    def close(self) -> None:
        self.book.policies.close()


def open_route(
    settings: Settings, name: str, recorded: Sequence[str], explicit: Mapping[str, str] | None = None
) -> RouteReplay:
    if name not in settings.routes:
        if not settings.routes:
            raise ValueError(f"no route {name!r}: the config has no routes (give the config file with -c)")
        raise ValueError(
            f"no route {name!r} in the config (its routes: {', '.join(sorted(settings.routes))})"
        )
    catalog = replay_catalog(settings)
    try:
        # The real planner: it loads every route's trained files and checks every step.
        planner = Planner(catalog, settings.routes, settings.routing)
    except ConfigError as exc:
        raise ValueError(f"bad configuration: {exc}") from None
    try:
        return RouteReplay(name, planner, map_models(catalog, recorded, explicit or {}))
    except ValueError:
        planner.routes.policies.close()
        raise


def _reachable(book: RouteBook, name: str) -> Iterable[str]:
    """Every route a route's steps lead to (routes may not loop: the config refuses cycles)."""
    for steps in RouteBook.all_steps(book.get(name)):
        for item in chain_steps(steps):
            if item.model in book:
                yield item.model
                yield from _reachable(book, item.model)


def _refuse_nested_policies(route: RouteReplay) -> None:
    for inner in _reachable(route.book, route.name):
        settings = route.book.get(inner)
        if settings.router is not None or settings.cascade is not None:
            kind = "router" if settings.router is not None else "cascade"
            raise ValueError(
                f"route {route.name} leads to the {kind} route {inner!r}, which replay runs only on its own: "
                f"use --policy route:{inner}"
            )


def _request(route: str, prompt: str, hints: Mapping[str, Any]) -> ChatRequest:
    body: dict[str, Any] = {"model": route, "messages": [{"role": "user", "content": prompt}]}
    if hints:
        body["faregate"] = dict(hints)
    return ChatRequest(
        request_id="replay",
        body=body,
        model=route,
        stream=False,
        include_usage=False,
        max_tokens=None,
        required_modalities=frozenset(),
        hints=dict(hints),
    )


async def first_models(
    planner: Planner, route: str, prompts: Sequence[str], hints: Mapping[str, Any]
) -> list[str]:
    """The model each prompt's plan calls first (canonical catalog names)."""
    chosen: list[str] = []
    for prompt in prompts:
        try:
            plan = await planner.plan(_request(route, prompt, hints))
        except FaregateError as exc:
            raise ValueError(
                f"route {route} cannot serve the recorded prompt {prompt[:50]!r}: {exc}"
            ) from None
        chosen.append(plan.candidates[0].model.name)
    return chosen


def _plain(
    route: RouteReplay, outcomes: Outcomes, pair: Pair, prices: dict[str, Price], hints: Mapping[str, Any]
) -> Report:
    _refuse_nested_policies(route)
    records = outcomes.records
    # One event loop for the whole set: planning is async (token counts may run on a thread).
    chosen = asyncio.run(first_models(route.planner, route.name, [r.prompt for r in records], hints))
    by_id = {id(r): route.models.recorded_for(m, route.name) for r, m in zip(records, chosen, strict=True)}
    return evaluate_router(outcomes, lambda r: by_id[id(r)], f"route {route.name}", pair, prices)


def _operating_point(settings: RouterPolicySettings) -> str:
    if settings.threshold is not None:
        return f"score ≥ {settings.threshold:g}"
    if settings.retain is not None:
        return f"retain {settings.retain:.0%}"
    return f"strong_share {settings.strong_share:.0%}"


def _router_route(
    route: RouteReplay,
    outcomes: Outcomes,
    prices: dict[str, Price],
    bins: int,
    cache_dir: Path | None,
    embedder: BatchEmbedder | None,
) -> Report:
    policy = route.book.policies.routers[route.name]
    settings = route.book.get(route.name).router
    assert settings is not None
    pair = Pair(
        strong=route.step_model(policy.strong, "strong step"), weak=route.step_model(policy.weak, "weak step")
    )
    records = outcomes.records
    scores = router_scores(policy.router.file, records, cache_dir, embedder)
    report = evaluate_scorer(
        outcomes, scorer_of(records, scores), f"route {route.name}: router score", pair, prices, bins
    )
    # The configured operating point: the route's own threshold, deciding prompt by prompt in file
    # order as the gateway would (a share-mode threshold starts from the training scores and follows
    # the recent ones).
    strong = {id(r) for r, s in zip(records, scores, strict=True) if policy.threshold.decide(float(s))}
    name = f"route {route.name} ({_operating_point(settings)})"
    report.policy = replay(outcomes, lambda r: pair.strong if id(r) in strong else pair.weak, prices, name)
    return report


def evaluate_route(
    route: RouteReplay,
    outcomes: Outcomes,
    pair: Pair,
    prices: dict[str, Price],
    bins: int = DEFAULT_BINS,
    *,
    hints: Mapping[str, Any] | None = None,
    cache_dir: Path | None = None,
    embedder: BatchEmbedder | None = None,
) -> Report:
    """A plain route is compared on `pair`; a router or cascade route brings its own pair.

    A share-mode threshold (router strong_share/retain, judge escalate_share/retain) keeps state as
    it decides: replay an opened route once."""
    if route.kind == "router":
        return _router_route(route, outcomes, prices, bins, cache_dir, embedder)
    if route.kind == "cascade":
        policy = route.book.policies.cascades[route.name]
        steps = chain_steps(policy.settings.steps)
        if len(steps) != 2:
            raise ValueError(
                f"route {route.name}: replay runs a cascade of two steps (cheap, then strong), "
                f"this one has {len(steps)}"
            )
        cascade_pair = Pair(
            strong=route.step_model(steps[1].model, "cascade step"),
            weak=route.step_model(steps[0].model, "cascade step"),
        )
        return evaluate_cascade(
            outcomes, policy, route.name, cascade_pair, prices, bins, cache_dir=cache_dir, embedder=embedder
        )
    return _plain(route, outcomes, pair, prices, hints or {})


# -- a trained router file as a scorer ------------------------------------------------------------------


def read_router(path: str | Path) -> ModelFile:
    return load_model_file(path, ROUTER_KIND, PROMPT_NAMES)


def evaluate_router_file(
    outcomes: Outcomes,
    file: ModelFile,
    name: str,
    prices: dict[str, Price],
    bins: int = DEFAULT_BINS,
    *,
    cache_dir: Path | None = None,
    embedder: BatchEmbedder | None = None,
) -> Report:
    """The file's scores swept over thresholds, on the two models it was trained on."""
    outcomes.require(file.strong, file.weak)
    scores = router_scores(file, outcomes.records, cache_dir, embedder)
    pair = Pair(strong=file.strong, weak=file.weak)
    return evaluate_scorer(outcomes, scorer_of(outcomes.records, scores), name, pair, prices, bins)


# -- trained on this data? ------------------------------------------------------------------------------


def trained_here(files: Sequence[ModelFile], outcomes: Outcomes) -> list[ModelFile]:
    """The files whose training data has this name: their training prompts flatter them here."""
    return [f for f in files if f.training.get("data") == outcomes.name]


def held_out_part(outcomes: Outcomes, files: Sequence[ModelFile]) -> Outcomes:
    """Only the prompts none of the files trained on (the test part of their recorded split)."""
    if not files:
        raise ValueError("--held-out: this policy uses no trained file, so there is nothing to hold out")
    parts = [held_out(outcomes, f).test for f in files]
    if len({prompts_digest(p.records) for p in parts}) > 1:
        raise ValueError("--held-out: the route's trained files were trained on different splits")
    return parts[0]
