"""One calibrated route at request time: the rank, the cut in force, the labelling probability.

`RouteCalibration.decide` is called on the request path, once per router or cascade decision: the
decision's score becomes a rank among recent scores; the route takes the cheap path when the rank is
below the cut in force (with too little evidence the cut is 0: every request takes the strong
path). The labelling probability p and the label coin are fixed *now*, with the plan in force,
and kept on the returned `Decision` (docs/quality-guarantee.md: the inverse-probability weights
need the probability each decision really had). An unlabelled decision is observed at once (a
zero for every test); a labelled one is observed when its verification comes back
(quality/route_outcomes.py), possibly after other decisions, which keeps the bets predictable.

With domain learning, the prompt's embedding is scored by the ranking in force and by the
challenger (learning/online/ranking_switch.py); their nearest-neighbour searches run on a worker
thread once the evidence is large (`decide_off_loop`). While the daily cap has paused the
calibration (quality/route_outcomes.py), too many verifications wait for a slot
(quality/verifier.py), or too many changes wait for the store (quality/state.py, MAX_UNSAVED),
decisions still take the cut in force but are neither labelled nor counted.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor

from faregate.learning.online.domain_router import Vector
from faregate.learning.online.sampling import coin
from faregate.learning.online.verification_plan import pace
from faregate.quality.route_state import RouteState
from faregate.quality.state import Decision, LabelKind, today

# Examples (the challenger's and the frozen ranking's) from which a decision's nearest-neighbour
# searches run on a worker thread (bench/README.md, "What domain learning adds": below it the hop
# costs the event loop about as much as the searches it saves).
OFF_LOOP_EXAMPLES = 1000
_NEIGHBOURS: list[ThreadPoolExecutor] = []


def _neighbours() -> ThreadPoolExecutor:
    """The one worker thread the searches run on (created on first use)."""
    if not _NEIGHBOURS:
        _NEIGHBOURS.append(ThreadPoolExecutor(1, thread_name_prefix="faregate-neighbours"))
    return _NEIGHBOURS[0]


class RouteDecisions(RouteState):
    """A route's decisions at request time (module docstring)."""

    def decide(
        self,
        request_id: str,
        score: float,
        length: float,
        *,
        force_strong: bool = False,
        day: str | None = None,
        vector: Vector | None = None,
        scored: tuple[float, float] | None = None,
    ) -> Decision:
        """Cheap or strong for this score (`force_strong`: a cascade answer a rule check refused),
        with the labelling probability and coin fixed now; an unlabelled decision is observed now.
        `vector`: the prompt's unit embedding (domain learning); `scored`: its in-force and
        challenger scores when already computed (`decide_off_loop`), else they are computed here."""
        state = self.state
        learning = self.learn and vector is not None
        deciding, challenger = float(score), 0.0
        if learning and scored is not None:
            deciding, challenger = scored
        elif learning:
            deciding = self.switch.in_force_score(state.switch, score, vector)
            challenger = self.switch.challenger_score(state.switch, score, vector)
        challenger_rank = 0.0
        if learning:
            challenger_rank = self.switch.challenger_rank(state.switch, challenger)
        router_rank = state.ranks.rank(deciding)
        length_rank = state.length_ranks.rank(length)
        state.ranks.record(deciding)
        state.length_ranks.record(length)
        rank = length_rank if state.flagged else router_rank
        cut = self.cut
        cheap = not force_strong and cut > 0.0 and rank < cut - 1e-12
        scale = pace(self.settings.verification.share, state.shadow_calls, state.decisions)
        probability = self.plan.probability(rank, cut, scale)
        free = self.kind == "cascade" and not cheap
        label_kind: LabelKind = "free" if free else ("paid" if cheap else "cheap")
        if free:
            probability = 1.0
        paused = self.saturated or self.unsaved.reached(self.journal) or self.exhausted(day or today())
        decision = Decision(
            self.route,
            self.kind,
            request_id,
            float(score),
            rank,
            router_rank,
            length_rank,
            cut,
            cheap,
            probability,
            labelled=not paused and coin(self.seed, request_id) < probability,
            label_kind=label_kind,
            floor=self.plan.floor_probabilities(self.cuts, cut, scale),
            least=self.plan.least_probability(cut, scale),
            epoch=state.epoch,
            paused=paused,
            challenger_rank=challenger_rank,
        )
        if learning and decision.labelled:
            decision.vector = vector
        if not paused:
            self.apply(lambda: self._count(decision))
        return decision

    async def decide_off_loop(
        self, request_id: str, score: float, length: float, vector: Vector | None
    ) -> Decision:
        """`decide` for a router's prompt, with domain learning's two nearest-neighbour searches
        (and the rebuilding of the evidence's arrays after a change) on a worker thread once the
        evidence is large enough for the searches to cost the event loop more than the hop
        (OFF_LOOP_EXAMPLES, bench/domain_learning.py). The scores are the same numbers `decide`
        computes from the same evidence, so decisions do not depend on where they were computed;
        a ranking switched in while the searches ran makes them again here, on the new one."""
        switch = self.state.switch
        examples = len(switch.evidence.vectors) + (0 if switch.frozen is None else len(switch.frozen.vectors))
        if not self.learn or vector is None or examples < OFF_LOOP_EXAMPLES:
            return self.decide(request_id, score, length, vector=vector)
        job = self.switch.scoring(switch, score, vector)
        scored = await asyncio.get_running_loop().run_in_executor(_neighbours(), job.run)
        now = self.state.switch
        job.keep(now)
        valid = now.switches == job.switches
        return self.decide(request_id, score, length, vector=vector, scored=scored if valid else None)

    def _count(self, decision: Decision) -> None:
        state = self.state
        state.decisions += 1
        if decision.labelled and decision.label_kind != "free":
            state.shadow_calls += self.kind == "router" or decision.label_kind == "paid"
        if not decision.labelled and decision.epoch == state.epoch:
            self.calibrator.observe_unlabelled(state.calibration)
            if self.kind == "router" and not state.flagged:
                self.health.observe_unlabelled(state.health)
            if self.learn:
                self.switch.observe_unlabelled(state.switch)
