"""`faregate replay --policy route:NAME | router:FILE`: configured routes and trained routers.

Kept apart from cli/replay.py, which handles the built-in and plug-in policies, and
cli/replay_report.py, which renders the output.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from faregate import usage_estimate
from faregate.cli.common import load_or_exit
from faregate.evals.replay.engine import Pair, Report
from faregate.evals.replay.outcomes import Outcomes
from faregate.evals.replay.routes import (
    evaluate_route,
    evaluate_router_file,
    held_out_part,
    open_route,
    read_router,
    trained_here,
)
from faregate.learning.model_file import ModelFile
from faregate.types import Price

ROUTE_PREFIX = "route:"
ROUTER_PREFIX = "router:"


def is_named(spec: str) -> bool:
    return spec.startswith((ROUTE_PREFIX, ROUTER_PREFIX))


def parse_pairs(values: Sequence[str] | None, option: str) -> dict[str, str]:
    """['a=b', ...] -> {'a': 'b'}; the value may itself hold '=' (only the first one splits)."""
    pairs: dict[str, str] = {}
    for text in values or ():
        key, sep, value = text.partition("=")
        if not (sep and key.strip() and value.strip()):
            raise ValueError(f"{option} expects KEY=VALUE, got {text!r}")
        pairs[key.strip()] = value.strip()
    return pairs


@dataclass(slots=True)
class Options:
    config: str | None
    pair: Pair
    prices: dict[str, Price]
    bins: int
    aliases: dict[str, str] = field(default_factory=dict)
    hints: dict[str, str] = field(default_factory=dict)
    cache_dir: Path | None = None
    held_out: bool = False


def _select(outcomes: Outcomes, files: list[ModelFile], held_out: bool, notes: list[str]) -> Outcomes:
    """The held-out prompts if asked; else all of them, with a note when a file trained on some."""
    if held_out:
        part = held_out_part(outcomes, files)
        notes.append(f"--held-out: {len(part):,} prompts the trained files never saw")
        return part
    for file in trained_here(files, outcomes):
        trained = (file.training.get("split") or {}).get("train_prompts")
        count = f"{trained:,} of" if isinstance(trained, int) else "some of"
        notes.append(
            f"note: the {file.kind} was trained on {count} these prompts ({outcomes.name}), "
            "which flatter it; --held-out replays only the prompts it never saw"
        )
    return outcomes


def replay_named(spec: str, outcomes: Outcomes, options: Options) -> tuple[Report, list[str]]:
    """Replay `route:NAME` (from the config) or `router:FILE`; the report and notes to print first."""
    notes: list[str] = []
    if spec.startswith(ROUTER_PREFIX):
        path = Path(spec.removeprefix(ROUTER_PREFIX))
        file = read_router(path)
        outcomes = _select(outcomes, [file], options.held_out, notes)
        report = evaluate_router_file(
            outcomes, file, f"router {path.name}", options.prices, options.bins, cache_dir=options.cache_dir
        )
        return report, notes
    settings = load_or_exit(options.config)
    # A rule on prompt tokens counts them as the gateway with this config would
    # (accounts.usage_estimate: the light count runs over o200k, so the two disagree near a limit).
    usage_estimate.configure(settings.accounts.usage_estimate)
    route = open_route(settings, spec.removeprefix(ROUTE_PREFIX), outcomes.models, options.aliases)
    try:
        outcomes = _select(outcomes, route.trained_files(), options.held_out, notes)
        report = evaluate_route(
            route,
            outcomes,
            options.pair,
            options.prices,
            options.bins,
            hints=options.hints,
            cache_dir=options.cache_dir,
        )
    finally:
        route.close()
    return report, notes
