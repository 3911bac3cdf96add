"""The runtime side of `router` and `cascade` routes: trained files loaded once at start-up.

A router route scores each prompt with its trained complexity router and puts the strong or the
weak step first (the other follows as its fallback). A cascade route asks its steps cheapest
first and returns the first answer its judge accepts. Both are described in faregate.config; the
trained files come from `faregate router train` / `train-judge`.

All trained models share one MiniLM embedder on one worker thread: it is loaded on first use,
never on the event loop, and scoring never runs there either.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from faregate.embedding.model import ModelUnavailable
from faregate.embedding.shared import SharedEmbedder
from faregate.errors import ConfigError
from faregate.learning.cascade_judges import (
    DEFAULT_CHECKS,
    AllOf,
    Check,
    Judge,
    LearnedJudge,
    RuleJudge,
    Verdict,
    check_empty,
    check_final_number,
    check_json,
    check_refusal,
    check_truncated,
    required_pattern,
)
from faregate.learning.complexity_router import ComplexityRouter
from faregate.learning.llm_judge import DEFAULT_RUBRIC, Complete, LLMJudge
from faregate.learning.text_features import last_user_text
from faregate.learning.thresholds import Threshold
from faregate.route_config import (
    CascadeSettings,
    JudgeSettings,
    RouterPolicySettings,
    RouteSettings,
    chain_steps,
)

if TYPE_CHECKING:
    from faregate.quality.live import Decision, RouteCalibration

log = logging.getLogger("faregate.routing")

CHECKS: Mapping[str, Check] = {
    "empty": check_empty,
    "truncated": check_truncated,
    "refusal": check_refusal,
    "json": check_json,
    "final_number": check_final_number,
}
assert set(DEFAULT_CHECKS) <= set(CHECKS.values())


@dataclass(slots=True)
class Pick:
    first: str
    other: str
    score: float | None
    # A calibrated route's decision (quality/live.py), None otherwise.
    decision: Decision | None = None


@dataclass(slots=True)
class RouterPolicy:
    router: ComplexityRouter
    threshold: Threshold
    strong: str
    weak: str
    # Set on a route with `quality`: the calibrated cut decides instead of `threshold`.
    quality: RouteCalibration | None = None

    async def pick(self, body: Mapping[str, Any], request_id: str = "") -> Pick:
        """The first step, its fallback, the prompt's score. If scoring fails, the strong model
        answers: a broken router may cost money, never quality."""
        vector = None
        try:
            if self.quality is not None and self.quality.learn:
                score, vector = await self.router.score_request_with_vector(body)
            else:
                score = await self.router.score_request(body)
        except ModelUnavailable:
            # The embedding model failed to load: logged once per try (embedding/load_backoff.py).
            return Pick(self.strong, self.weak, None)
        except Exception:
            log.exception("the complexity router failed to score a prompt; sending it to %s", self.strong)
            return Pick(self.strong, self.weak, None)
        if self.quality is not None:
            length = float(len(last_user_text(body)))
            decision = await self.quality.decide_off_loop(request_id, score, length, vector)
            first, other = (self.weak, self.strong) if decision.cheap else (self.strong, self.weak)
            return Pick(first, other, score, decision)
        if self.threshold.decide(score):
            return Pick(self.strong, self.weak, score)
        return Pick(self.weak, self.strong, score)


@dataclass(slots=True)
class CascadePolicy:
    settings: CascadeSettings
    rules: RuleJudge
    learned: LearnedJudge | None
    # Set on a route with `quality`: the calibrated cut on the judge's score decides.
    quality: RouteCalibration | None = None

    async def calibrated(
        self, request_id: str, body: Mapping[str, Any], answer: str, finish: str | None
    ) -> tuple[bool, str, Decision]:
        """Accept the cheap answer? Its score is the learned P(wrong) (0 without a learned judge);
        an answer a rule check refuses is escalated whatever its rank, and so is one the learned
        judge cannot score (its embedding model failed to load or to run)."""
        assert self.quality is not None
        refused = self.rules.verdict(body, answer, finish)
        score = 0.0
        if self.learned is not None:
            scored = await self.learned.score_or_refusal(body, answer, finish)
            if not isinstance(scored, Verdict):
                score = scored
            elif refused.accepted:
                refused = scored
        decision = self.quality.decide(
            request_id,
            score + (1.0 if not refused.accepted else 0.0),
            float(len(last_user_text(body))),
            force_strong=not refused.accepted,
        )
        decision.cheap_text = answer
        if not refused.accepted:
            return False, refused.reason, decision
        verdict = "accepted" if decision.cheap else "escalated"
        reason = (
            f"calibrated: P(wrong)={score:.2f}, rank {decision.rank:.2f} vs cut {decision.cut:.2f}: {verdict}"
        )
        return decision.cheap, reason, decision

    def judge(self, complete: Complete | None) -> Judge:
        """The route's judges, cheapest first; `complete` reaches the LLM judge's model."""
        judges: list[Judge] = [self.rules]
        if self.learned is not None:
            judges.append(self.learned)
        llm = self.settings.judge.llm
        if llm is not None:
            if complete is None:
                raise ValueError("this cascade has an LLM judge: give it a way to call its model")
            judges.append(LLMJudge(complete, min_score=llm.min_score, rubric=llm.rubric or DEFAULT_RUBRIC))
        return judges[0] if len(judges) == 1 else AllOf(*judges)


def rules_of(judge: JudgeSettings) -> str:
    """A cascade's rule checks, as its calibration's settings name them ("" for the default set):
    the checks refuse together, so their order says nothing; a required pattern is one more."""
    checks = ",".join(sorted(set(judge.checks)))
    spelled = checks if judge.required_pattern is None else f"{checks};pattern={judge.required_pattern}"
    return "" if spelled == ",".join(sorted(set(JudgeSettings().checks))) else spelled


class RoutePolicies:
    """The router and cascade policies of the configured routes, by route name."""

    def __init__(self, routes: Mapping[str, RouteSettings]) -> None:
        self.routers: dict[str, RouterPolicy] = {}
        self.cascades: dict[str, CascadePolicy] = {}
        # The calibrated routes (`quality`), by name.
        self.calibrations: dict[str, RouteCalibration] = {}
        self._embedder: SharedEmbedder | None = None
        for name, route in routes.items():
            if route.router is not None:
                self.routers[name] = self._router(name, route.router, route.quality is not None)
            if route.cascade is not None:
                self.cascades[name] = self._cascade(name, route.cascade, route.quality is not None)
            if route.quality is not None:
                self.calibrations[name] = self._calibration(name, route)

    def embedder(self) -> SharedEmbedder:
        """The MiniLM the trained policies share (loaded on first use): also the `embedding`
        comparator's, for shadow verification."""
        return self._shared()

    def _shared(self) -> SharedEmbedder:
        if self._embedder is None:
            self._embedder = SharedEmbedder()
        return self._embedder

    def _calibration(self, name: str, route: RouteSettings) -> RouteCalibration:
        from faregate.quality.live import Prior, RouteCalibration

        assert route.quality is not None
        file = None
        if name in self.routers:
            file = self.routers[name].router.file
        elif self.cascades[name].learned is not None:
            file = self.cascades[name].learned.file  # type: ignore[union-attr]
        prior = None
        if file is not None and file.calibration and "strong_accuracy_train" in file.training:
            prior = Prior(tuple(file.calibration), float(file.training["strong_accuracy_train"]))
        elif route.quality.prior_outcomes > 0:
            raise ConfigError(
                f"routes.{name}.quality.prior_outcomes: the route's trained file has no calibration curve"
            )
        calibration = RouteCalibration(
            name,
            "router" if name in self.routers else "cascade",
            route.quality,
            reference_scores=list(file.reference_scores) if file is not None else [],
            prior=prior,
        )
        calibration.scorer = file.digest() if file is not None else ""
        if name in self.routers:
            self.routers[name].quality = calibration
            calibration.cheap, calibration.strong = self.routers[name].weak, self.routers[name].strong
        else:
            self.cascades[name].quality = calibration
            settings = self.cascades[name].settings
            steps = chain_steps(settings.steps)
            calibration.cheap, calibration.strong = steps[0].model, steps[-1].model
            calibration.rules = rules_of(settings.judge)
        return calibration

    def _router(self, name: str, settings: RouterPolicySettings, calibrated: bool = False) -> RouterPolicy:
        shared = self._shared()
        try:
            router = ComplexityRouter.load(settings.file, embedder=shared, executor=shared.executor)
            if calibrated:
                threshold = router.fixed_threshold(1.0)  # unused: the calibrated cut decides
            elif settings.threshold is not None:
                threshold = router.fixed_threshold(settings.threshold)
            elif settings.strong_share is not None:
                threshold = router.share_threshold(settings.strong_share, window=settings.window)
            else:
                assert settings.retain is not None
                threshold = router.quality_threshold(settings.retain, window=settings.window)
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(f"routes.{name}.router: cannot use {settings.file}: {exc}") from exc
        return RouterPolicy(router, threshold, settings.strong or router.strong, settings.weak or router.weak)

    def _cascade(self, name: str, settings: CascadeSettings, calibrated: bool = False) -> CascadePolicy:
        checks = [CHECKS[c] for c in settings.judge.checks]
        if settings.judge.required_pattern is not None:
            checks.append(required_pattern(settings.judge.required_pattern))
        learned = None
        spec = settings.judge.learned
        if spec is not None:
            shared = self._shared()
            try:
                learned = LearnedJudge.load(
                    spec.file,
                    # Calibrated: only the score is used; the cut decides.
                    threshold=1.0 if calibrated else spec.threshold,
                    escalate_share=None if calibrated else spec.escalate_share,
                    retain=None if calibrated else spec.retain,
                    window=spec.window,
                    embedder=shared,
                    executor=shared.executor,
                )
            except (OSError, ValueError, KeyError) as exc:
                raise ConfigError(
                    f"routes.{name}.cascade.judge.learned: cannot use {spec.file}: {exc}"
                ) from exc
        return CascadePolicy(settings, RuleJudge(checks), learned)

    def trained(self, name: str) -> list[str]:
        """The digests of a route's trained files as loaded (ModelFile.decisions_digest), for its
        cache digest (RouteBook.definition)."""
        found: list[str] = []
        if name in self.routers:
            found.append(self.routers[name].router.file.decisions_digest())
        learned = self.cascades[name].learned if name in self.cascades else None
        if learned is not None:
            found.append(learned.file.decisions_digest())
        return found

    def steps(self, name: str) -> list[str]:
        """Every model or route a route's policy may call (checked against the catalog at start)."""
        found: list[str] = []
        if name in self.routers:
            found += [self.routers[name].strong, self.routers[name].weak]
        return found

    def close(self) -> None:
        if self._embedder is not None:
            self._embedder.close()
