"""An offline calibration of the semantic cache's acceptance, as a prior worth N pseudo-lookups.

The file (data/cache_prior.json, built by `faregate cache-eval --pairs ... --write-prior FILE`)
holds the evidence of labelled pair streams replayed without serving: every lookup, and for each
0.01 similarity band from the floor the lookups whose best guard-passing candidate fell there and
how many of those candidates were a wrong answer (every one labelled, as a stream that serves
nothing labels every candidate). `prior_state(prior, N)` scales it to N pseudo-lookups and the
acceptance starts from it instead of from nothing; live lookups and labels then add to the same
counts, and after a few N live lookups they dominate.

What it costs: the bound then holds for the traffic the prior describes mixed with the live
traffic (N pseudo-lookups plus the live ones), not for the live traffic alone; where live traffic
is unlike the pairs the prior was built from, the first hits rest on the prior's word, as with the
router's prior (prior.py). Scaling rounds wrong counts up, never down.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from faregate.learning.online.cache_acceptance import AcceptanceState

DEFAULT_PRIOR = Path(__file__).parent / "data" / "cache_prior.json"


def prior_from_similarities(
    lookups: Iterable[tuple[float | None, bool]], floor: float = 0.80
) -> AcceptanceState:
    """Evidence of lookups replayed without serving: (best candidate's similarity or None, wrong)."""
    state = AcceptanceState(floor=floor)
    for similarity, wrong in lookups:
        state.lookups += 1
        if similarity is None or similarity < floor:
            continue
        band = state.band(similarity)
        state.seen[band] += 1
        state.labelled[band] += 1
        state.wrong[band] += wrong
    return state


def prior_state(prior: AcceptanceState, lookups: int) -> AcceptanceState:
    """The prior scaled to `lookups` pseudo-lookups (0: no prior, an empty state)."""
    if lookups < 0:
        raise ValueError("prior lookups must not be negative")
    state = AcceptanceState(floor=prior.floor)
    if lookups == 0 or prior.lookups == 0:
        return state
    scale = lookups / prior.lookups
    state.lookups = lookups
    for band in range(len(prior.seen)):
        seen = round(prior.seen[band] * scale)
        labelled = min(seen, round(prior.labelled[band] * scale))
        wrong = min(labelled, math.ceil(prior.wrong[band] * scale - 1e-9))
        state.seen[band], state.labelled[band], state.wrong[band] = seen, labelled, wrong
    return state


def write_prior(path: Path, prior: AcceptanceState, source: dict[str, Any]) -> None:
    data = {"source": source, **prior.to_json()}
    data.pop("threshold"), data.pop("served")
    lines = ",\n".join(f" {json.dumps(key)}: {json.dumps(value)}" for key, value in data.items())
    path.write_text("{\n" + lines + "\n}\n", encoding="utf-8")


def load_prior(path: Path | None = None) -> AcceptanceState:
    """The prior file (the shipped one by default)."""
    source = path or DEFAULT_PRIOR
    try:
        data = json.loads(source.read_text("utf-8"))
        return AcceptanceState.from_json({**data, "served": 0, "threshold": None})
    except (ValueError, KeyError, TypeError) as exc:  # `--prior` names any file: say it is not one
        raise ValueError(f"{source}: not a cache prior file (cache-eval --write-prior): {exc!r}") from None
