"""Router and cascade routes: config checks, plans, the cascade's judged steps and what they cost,
with scripted providers at the transport seam (the end-to-end run is tests/test_e2e_cascade.py)."""

from __future__ import annotations

import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from faregate.catalog import build_catalog
from faregate.config import load_settings, parse_settings
from faregate.errors import ConfigError, InvalidRequest, UpstreamFailure, UpstreamRejected
from faregate.learning.complexity_router import ComplexityRouter
from faregate.learning.llm_judge import LLMJudge
from faregate.learning.thresholds import Threshold
from faregate.providers.registry import ProviderRegistry
from faregate.routing.attempts import AttemptRunner, billed_cost
from faregate.routing.cascade_runner import CascadeRunner
from faregate.routing.estimate import PromptSize
from faregate.routing.health import HealthBoard
from faregate.routing.plan import Planner
from faregate.routing.policies import RouterPolicy
from faregate.routing.worst_case import JUDGE_PROMPT_TOKENS, worst_case
from faregate.server.parse import parse_chat_request
from faregate.types import ChatRequest, Completion, Price, Usage
from test_complexity_router import HashEmbedder
from test_routing import PROVIDERS, Scripted, model, ok

ROUTERS = Path(__file__).resolve().parents[1] / "routers"
MODELS = {
    "cheap": model("0.5"),
    "strong": model("10", ctx=200_000, offers=[{"provider": "b"}]),
    "grader": model("1", offers=[{"provider": "a", "input": 1, "output": 2}]),
    "small-ctx": model("0.1", ctx=300),
}


def routes(**extra: Any) -> dict[str, Any]:
    return {
        "cascade": {
            "cascade": {"steps": ["cheap", "strong"], "judge": {"checks": ["empty", "final_number"]}}
        },
        "graded": {
            "cascade": {
                "steps": ["cheap", "strong"],
                "judge": {"checks": ["empty"], "llm": {"model": "grader"}},
            }
        },
        **extra,
    }


def settings(route_map: dict[str, Any] | None = None) -> Any:
    return parse_settings(
        {
            "providers": PROVIDERS,
            "models": MODELS,
            "routes": route_map if route_map is not None else routes(),
            "catalog": {"broad": False},
            "routing": {"backoff_base_s": 0.001, "backoff_max_s": 0.002, "retries": 0},
        }
    )


def request(body: dict[str, Any]) -> ChatRequest:
    full = {"messages": [{"role": "user", "content": "What is 6 times 7?"}], **body}
    parsed = parse_chat_request(full, {}, "req")
    parsed.started = time.perf_counter()
    return parsed


def gateway(
    providers: dict[str, Scripted], route_map: dict[str, Any] | None = None
) -> tuple[Planner, CascadeRunner]:
    s = settings(route_map)
    health = HealthBoard(s.routing.breaker)
    planner = Planner(build_catalog(s), s.routes, s.routing, health)
    runner = AttemptRunner(ProviderRegistry.of(providers), 5.0, s.routing, health)
    return planner, CascadeRunner(runner, planner)


# -- config ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("route", "message"),
    [
        ({"router": {"file": "r.json"}}, "exactly one of threshold, strong_share or retain"),
        ({"router": {"file": "r.json", "threshold": 0.5, "retain": 0.9}}, "(got threshold, retain)"),
        ({"cascade": {"steps": ["cheap"]}}, "at least two steps"),
        (
            {"cascade": {"steps": ["cheap", "strong"]}, "tiers": {"economy": ["cheap"]}},
            "no tiers, tasks or rules",
        ),
        (
            {"cascade": {"steps": ["cheap", "strong"], "judge": {"learned": {"file": "j.json"}}}},
            "exactly one of threshold, escalate_share or retain",
        ),
        (
            {"cascade": {"steps": ["cheap", "strong"], "judge": {"required_pattern": "(("}}},
            "not a valid regex",
        ),
        (
            {"router": {"file": "r.json", "threshold": 1}, "cascade": {"steps": ["cheap", "strong"]}},
            "a router or a cascade, not both",
        ),
    ],
)
def test_policy_routes_are_checked_when_the_config_loads(route: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        settings({"bad": route})


def test_a_cascade_cannot_be_a_step_of_another_route() -> None:
    with pytest.raises(ConfigError, match="is a cascade route"):
        settings(routes(outer={"chain": ["cascade", "strong"]}))


def test_unknown_step_and_missing_file_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown model or route 'nope'"):
        s = settings({"c": {"cascade": {"steps": ["cheap", "nope"]}}})
        Planner(build_catalog(s), s.routes, s.routing)
    with pytest.raises(ConfigError, match=r"routes\.r\.router: cannot use"):
        s = settings({"r": {"router": {"file": str(tmp_path / "missing.json"), "threshold": 0.5}}})
        Planner(build_catalog(s), s.routes, s.routing)


def test_trained_files_are_found_relative_to_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "conf" / "faregate.yaml"
    config.parent.mkdir()
    config.write_text(
        "routes:\n  r:\n    router: {file: ../routers/r.json, strong_share: 0.3}\n"
        "  c:\n    cascade:\n      steps: [gpt-4o-mini, gpt-4o]\n"
        "      judge: {learned: {file: j.json, threshold: 0.5}}\n"
    )
    s = load_settings(config)
    assert s.routes["r"].router is not None and s.routes["c"].cascade is not None
    assert s.routes["r"].router.file == str(tmp_path / "routers" / "r.json")
    learned = s.routes["c"].cascade.judge.learned
    assert learned is not None and learned.file == str(tmp_path / "conf" / "j.json")


# -- plans -------------------------------------------------------------------------------------------------


async def test_a_cascade_plans_one_stage_per_step() -> None:
    planner, _ = gateway({})
    plan = await planner.plan(request({"model": "cascade"}))
    assert [[c.model.name for c in stage] for stage in plan.stages] == [["cheap"], ["strong"]]
    assert plan.cascade is not None and plan.route == "cascade"


async def test_a_step_that_cannot_serve_is_left_out_and_one_step_left_is_a_plain_plan() -> None:
    planner, _ = gateway({}, routes(tight={"cascade": {"steps": ["small-ctx", "strong"]}}))
    long_prompt = {"model": "tight", "messages": [{"role": "user", "content": "word " * 400}]}
    plan = await planner.plan(request(long_prompt))
    assert plan.stages == [] and plan.cascade is None
    assert [c.model.name for c in plan.candidates] == ["strong"]


@pytest.mark.parametrize(("mode", "first"), [("strongest", "strong"), ("cheapest", "cheap")])
async def test_streams_may_skip_the_cascade(mode: str, first: str) -> None:
    route_map = routes(skip={"cascade": {"steps": ["cheap", "strong"], "streams": mode}})
    planner, _ = gateway({}, route_map)
    streamed = await planner.plan(request({"model": "skip", "stream": True}))
    assert streamed.stages == [] and streamed.candidates[0].model.name == first
    assert len(streamed.candidates) == 2  # the other step stays as the fallback
    whole = await planner.plan(request({"model": "skip"}))
    assert len(whole.stages) == 2
    buffered = await planner.plan(request({"model": "cascade", "stream": True}))
    assert len(buffered.stages) == 2


async def test_a_cascade_is_not_one_of_several_models() -> None:
    planner, _ = gateway({})
    with pytest.raises(InvalidRequest, match="cannot be one of several"):
        await planner.plan(request({"model": "cascade", "models": ["cascade", "strong"]}))


async def test_the_reservation_covers_every_step_and_the_judge() -> None:
    planner, _ = gateway({})
    body = {"model": "graded", "max_tokens": 100}
    plan = await planner.plan(request(body))
    worst, tokens = await worst_case(plan, request(body))
    prompt = await plan.prompt.billable() if plan.prompt else 0
    cheap = Price(Decimal("0.5"), Decimal("0.5")).cost(Usage(prompt, 100))
    strong = Price(Decimal(10), Decimal(10)).cost(Usage(prompt, 100))
    judge = Price(Decimal(1), Decimal(2)).cost(Usage(prompt + 100 + JUDGE_PROMPT_TOKENS, 200))
    assert worst == cheap + strong + judge
    assert tokens == 2 * (prompt + 100) + prompt + 100 + JUDGE_PROMPT_TOKENS + 200


async def test_a_cost_cap_holds_for_the_whole_cascade() -> None:
    """`max_cost_usd` was checked candidate by candidate, so a cascade (the cheap call, its judge,
    then the strong call) could cost more than the cap in all though each call fitted it. A cascade
    whose worst case is over the cap is skipped: the cheapest step answers, the others are its
    fallbacks, each within the cap (one call, as a stream skipping the cascade)."""
    planner, _ = gateway({})
    body: dict[str, Any] = {"model": "graded", "max_tokens": 100}
    cascade = await planner.plan(request(body))
    whole, _ = await worst_case(cascade, request(body))
    assert cascade.prompt is not None
    # The dearest one call, its prompt at the bound the cap is checked with.
    strong_alone = Price(Decimal(10), Decimal(10)).cost(Usage(cascade.prompt.upper_bound, 100))
    cap = (whole + strong_alone) / 2
    assert strong_alone < cap < whole
    capped = {**body, "faregate": {"max_cost_usd": str(cap)}}
    plan = await planner.plan(request(capped))
    assert plan.stages == [] and plan.cascade is None
    assert [c.model.name for c in plan.candidates] == ["cheap", "strong"]
    assert (await worst_case(plan, request(capped)))[0] <= cap
    # The same from the route's own cap; and a cap the whole cascade fits keeps it.
    route_map = routes(capped={**routes()["graded"], "max_cost_usd": str(cap)})
    planner, _ = gateway({}, route_map)
    assert (await planner.plan(request({**body, "model": "capped"}))).stages == []
    roomy = {**body, "faregate": {"max_cost_usd": str(whole)}}
    assert len((await planner.plan(request(roomy))).stages) == 2


async def test_the_judges_hold_covers_a_long_rubric_of_its_own() -> None:
    """The hold allowed JUDGE_PROMPT_TOKENS for the rubric and framing, enough for the default
    rubric; a route's own rubric may be any length, and its judge call was billed past the hold."""
    rubric = "Grade the answer strictly, step by step, against every detail of the request. " * 200
    judge = {"checks": ["empty"], "llm": {"model": "grader", "rubric": rubric}}
    planner, _ = gateway({}, routes(long={"cascade": {"steps": ["cheap", "strong"], "judge": judge}}))
    body = {"model": "long", "max_tokens": 100}
    plan = await planner.plan(request(body))
    worst, _ = await worst_case(plan, request(body))
    prompt = await plan.prompt.billable() if plan.prompt else 0
    steps = Price(Decimal("0.5"), Decimal("0.5")).cost(Usage(prompt, 100))
    steps += Price(Decimal(10), Decimal(10)).cost(Usage(prompt, 100))
    shown = LLMJudge(None, rubric=rubric).messages(request(body).body, "42 " * 100)  # type: ignore[arg-type]
    judge_prompt = await PromptSize.of({"messages": shown}).exact()
    assert judge_prompt > JUDGE_PROMPT_TOKENS + prompt + 100
    assert worst - steps >= Price(Decimal(1), Decimal(2)).cost(Usage(judge_prompt, 200))


async def test_the_judges_hold_covers_its_dearest_input_and_output_over_its_offers() -> None:
    """The LLM judge is planned like any request, so any of its model's offers may grade: the hold
    takes the highest input and the highest output price across them, not one offer's pair."""
    graders = [{"provider": "a", "input": 10, "output": 1}, {"provider": "b", "input": 1, "output": 2}]
    s = parse_settings(
        {
            "providers": PROVIDERS,
            "models": {**MODELS, "grader": model("1", offers=graders)},
            "routes": routes(),
            "catalog": {"broad": False},
        }
    )
    planner = Planner(build_catalog(s), s.routes, s.routing)
    plan = await planner.plan(request({"model": "graded", "max_tokens": 100}))
    assert plan.judge_price == Price(Decimal(10), Decimal(2))
    assert planner.dearest_price("grader") == Price(Decimal(10), Decimal(2))


# -- judged steps ------------------------------------------------------------------------------------------


async def test_an_answer_that_passes_is_served_and_the_strong_model_is_never_called() -> None:
    cheap, strong = Scripted("a", [ok("6 times 7 is 42. The answer is 42")]), Scripted("b", [])
    planner, cascades = gateway({"a": cheap, "b": strong})
    req = request({"model": "cascade"})
    judged = await cascades.judged_steps(req, await planner.plan(req))
    assert judged.served is not None and judged.served.candidate.model.name == "cheap"
    assert [a.outcome for a in judged.attempts] == ["ok"]
    assert strong.calls == [] and judged.escalations == 0


async def test_a_refused_answer_is_billed_and_escalated() -> None:
    cheap = Scripted("a", [Completion(ok("I think it is big").body, Usage(20, 5))])
    planner, cascades = gateway({"a": cheap, "b": Scripted("b", [])})
    req = request({"model": "cascade"})
    judged = await cascades.judged_steps(req, await planner.plan(req))
    assert judged.served is None
    (attempt,) = judged.attempts
    assert (attempt.model, attempt.outcome, attempt.detail) == (
        "cheap",
        "escalated",
        "no final numeric answer",
    )
    assert (attempt.prompt_tokens, attempt.completion_tokens) == (20, 5)
    assert attempt.cost == Decimal(25) * Decimal("0.5") / Decimal(1_000_000)
    assert billed_cost(judged.attempts) == attempt.cost
    assert "escalated: no final numeric answer" in judged.verdicts[0]


async def test_a_cheap_step_that_fails_is_skipped_like_a_fallback() -> None:
    cheap = Scripted("a", [UpstreamFailure("server_error", "500", status=500)])
    planner, cascades = gateway({"a": cheap, "b": Scripted("b", [])})
    req = request({"model": "cascade"})
    judged = await cascades.judged_steps(req, await planner.plan(req))
    assert judged.served is None and [a.outcome for a in judged.attempts] == ["server_error"]
    assert judged.escalations == 0 and "no answer" in judged.verdicts[0]


async def test_a_client_error_is_not_escalated() -> None:
    cheap = Scripted("a", [UpstreamRejected(400, "bad tool schema")])
    planner, cascades = gateway({"a": cheap, "b": Scripted("b", [])})
    req = request({"model": "cascade"})
    with pytest.raises(UpstreamRejected) as caught:
        await cascades.judged_steps(req, await planner.plan(req))
    assert [a.outcome for a in caught.value.attempts] == ["rejected"]  # type: ignore[attr-defined]


async def test_a_cheap_step_that_finds_the_prompt_too_long_is_skipped_like_a_fallback() -> None:
    # The cheap step's upstream says the prompt overflows its window (the plan's fit was the
    # gateway's estimate): the strong step, with a larger window, is asked; the client is not
    # refused for a step the route chose.
    too_long = UpstreamRejected(400, "This model's maximum context length is 32000 tokens.")
    cheap, strong = Scripted("a", [too_long]), Scripted("b", [ok("42")])
    planner, cascades = gateway({"a": cheap, "b": strong})
    req = request({"model": "cascade"})
    cascaded = await cascades.run(req, await planner.plan(req))
    assert [(a.model, a.outcome) for a in cascaded.answer.attempts] == [
        ("cheap", "rejected"),
        ("strong", "ok"),
    ]
    assert cascaded.judged.escalations == 0 and "no answer" in cascaded.judged.verdicts[0]


async def test_the_llm_judge_is_asked_through_the_attempt_loop_and_billed() -> None:
    grader = Scripted("a", [ok("6x7 is 42"), Completion(ok("Looks right. Score: 9/10").body, Usage(300, 10))])
    planner, cascades = gateway({"a": grader, "b": Scripted("b", [])})
    req = request({"model": "graded"})
    judged = await cascades.judged_steps(req, await planner.plan(req))
    assert judged.served is not None and judged.served.candidate.model.name == "cheap"
    outcomes = [(a.model, a.outcome) for a in judged.attempts]
    assert outcomes == [("cheap", "ok"), ("grader", "judge")]
    judge = judged.attempts[1]
    assert judge.cost == Price(Decimal(1), Decimal(2)).cost(Usage(300, 10))
    # The judge saw the question and the answer, and was asked for a short, deterministic grade.
    call = grader.calls[1]
    assert call.body["model"] == "grader" and call.body["temperature"] == 0 and call.body["max_tokens"] == 200
    assert "What is 6 times 7?" in call.body["messages"][1]["content"]
    assert "6x7 is 42" in call.body["messages"][1]["content"]


async def test_a_failing_llm_judge_escalates_instead_of_failing_the_request() -> None:
    grader = Scripted("a", [ok("42"), UpstreamFailure("server_error", "500", status=500)])
    planner, cascades = gateway({"a": grader, "b": Scripted("b", [])})
    req = request({"model": "graded"})
    judged = await cascades.judged_steps(req, await planner.plan(req))
    assert judged.served is None
    assert [(a.model, a.outcome) for a in judged.attempts] == [
        ("cheap", "escalated"),
        ("grader", "server_error"),
    ]
    assert "LLM judge call failed" in judged.attempts[0].detail
    assert judged.attempts[1].detail.startswith("LLM judge call")


async def test_a_judge_call_its_upstream_refuses_escalates_and_is_in_the_attempts() -> None:
    # A judge model that refuses the judge's call (a 400: temperature 0 refused by a reasoning
    # model, an answer too long for its window) escalated, but its call was missing from the record.
    refused = UpstreamRejected(400, "Unsupported value: 'temperature' does not support 0")
    grader = Scripted("a", [ok("42"), refused])
    planner, cascades = gateway({"a": grader, "b": Scripted("b", [])})
    req = request({"model": "graded"})
    judged = await cascades.judged_steps(req, await planner.plan(req))
    assert judged.served is None
    assert [(a.model, a.outcome) for a in judged.attempts] == [("cheap", "escalated"), ("grader", "rejected")]
    assert "LLM judge call failed (UpstreamRejected)" in judged.attempts[0].detail
    assert judged.attempts[1].detail.startswith("LLM judge call")


class OnePolicy:
    """A Policies source holding one router route (the real trained file, a hashing embedder)."""

    def __init__(self, name: str, router: RouterPolicy) -> None:
        self.routers = {name: router}
        self.cascades: dict[str, Any] = {}

    def steps(self, name: str) -> list[str]:
        return [self.routers[name].strong, self.routers[name].weak] if name in self.routers else []

    def trained(self, name: str) -> list[str]:
        return [self.routers[name].router.file.decisions_digest()] if name in self.routers else []

    def close(self) -> None:
        pass


@pytest.mark.parametrize(("threshold", "first"), [(-1.0, "strong"), (2.0, "cheap")])
async def test_a_router_step_may_be_a_route_and_the_other_step_is_its_fallback(
    threshold: float, first: str
) -> None:
    route_map = routes(premium={"chain": ["strong", "grader"]}, smart={"chain": ["cheap"]})
    s = settings(route_map)
    scorer = ComplexityRouter.load(ROUTERS / "router-gsm8k.json", embedder=HashEmbedder())
    policy = RouterPolicy(scorer, Threshold.fixed(threshold), strong="premium", weak="cheap")
    planner = Planner(build_catalog(s), s.routes, s.routing, policies=OnePolicy("smart", policy))
    plan = await planner.plan(request({"model": "smart"}))
    names = [c.model.name for c in plan.candidates]
    assert names == (["strong", "grader", "cheap"] if first == "strong" else ["cheap", "strong", "grader"])
    assert plan.trace.router_choice == ("premium" if first == "strong" else "cheap")
    assert plan.trace.router_score is not None


async def test_a_router_that_cannot_score_sends_the_prompt_to_the_strong_step() -> None:
    class Broken:
        def embed(self, texts: Any) -> Any:
            raise RuntimeError("model file missing")

    s = settings(routes(smart={"chain": ["cheap"]}))
    scorer = ComplexityRouter.load(ROUTERS / "router-gsm8k.json", embedder=Broken())
    policy = RouterPolicy(scorer, Threshold.fixed(2.0), strong="strong", weak="cheap")
    planner = Planner(build_catalog(s), s.routes, s.routing, policies=OnePolicy("smart", policy))
    plan = await planner.plan(request({"model": "smart"}))
    assert [c.model.name for c in plan.candidates][:2] == ["strong", "cheap"]
    assert plan.trace.router_choice == "strong" and plan.trace.router_score is None


async def test_a_shared_model_that_fails_to_load_is_tried_again_after_a_back_off(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Corrupt model files: every router score and judged answer tried to load the shared MiniLM
    again (half a second of the policies' worker each) and logged a traceback. The load is tried
    again after the semantic cache's back-off; meanwhile the router sends prompts to the strong
    model and the learned judge escalates, with no log line of their own."""
    import numpy as np

    from faregate.embedding.model import DIMENSIONS
    from faregate.embedding.shared import SharedEmbedder
    from faregate.learning.cascade_judges import JUDGE_FEATURES, KIND, UNSCORED, LearnedJudge
    from faregate.learning.linear import LinearModel
    from faregate.learning.model_file import EMBEDDING_ID, ModelFile

    now = [0.0]
    loads: list[float] = []

    def loader() -> Any:
        loads.append(now[0])
        if len(loads) < 3:
            raise RuntimeError("the packaged embedding model does not match its pinned SHA-256")
        return HashEmbedder()

    shared = SharedEmbedder(loader, clock=lambda: now[0])
    scorer = ComplexityRouter.load(ROUTERS / "router-gsm8k.json", embedder=shared, executor=shared.executor)
    router = RouterPolicy(scorer, Threshold.fixed(2.0), strong="strong", weak="cheap")
    width = 2 * DIMENSIONS + len(JUDGE_FEATURES)
    weights = LinearModel(np.zeros(width), np.ones(width), np.zeros(width), 0.0)
    file = ModelFile(KIND, JUDGE_FEATURES, EMBEDDING_ID, ("question", "answer"), weights, "s", "w")
    judge = LearnedJudge(file, Threshold.fixed(0.9), embedder=shared, executor=shared.executor)
    body = {"model": "smart", "messages": [{"role": "user", "content": "What is 2 + 2?"}]}
    try:
        with caplog.at_level("INFO"):
            for _ in range(10):
                assert (await router.pick(body)).first == "strong"
                assert await judge.accept(body, "#### 4", "stop") == (False, UNSCORED)
            assert loads == [0.0]
            now[0] = 31.0  # the back-off (30 s) is over: tried again, failing again
            for _ in range(10):
                assert (await router.pick(body)).first == "strong"
            assert loads == [0.0, 31.0]
            now[0] = 31.0 + 61.0  # twice as long: loaded
            pick = await router.pick(body)
            assert pick.first == "cheap" and pick.score is not None
            assert (await judge.accept(body, "#### 4", "stop"))[0]
            assert loads == [0.0, 31.0, 92.0]
        assert sum(bool(r.exc_info) for r in caplog.records) == 1  # the first try's traceback
        assert len(caplog.records) == 3, [r.getMessage() for r in caplog.records]
    finally:
        shared.close()


async def test_a_calibrated_cascade_escalates_an_answer_its_learned_judge_cannot_score() -> None:
    """With its embedding model failed to load, a calibrated cascade's learned judge raised out of
    the judged step (the request failed); the answer is escalated instead, forced strong."""
    import numpy as np

    from faregate.embedding.model import DIMENSIONS
    from faregate.embedding.shared import SharedEmbedder
    from faregate.learning.cascade_judges import JUDGE_FEATURES, KIND, UNSCORED, LearnedJudge, RuleJudge
    from faregate.learning.linear import LinearModel
    from faregate.learning.model_file import EMBEDDING_ID, ModelFile
    from faregate.route_config import CascadeSettings
    from faregate.routing.policies import CascadePolicy
    from test_quality_live import calibration

    def corrupt() -> Any:
        raise RuntimeError("the packaged embedding model does not match its pinned SHA-256")

    shared = SharedEmbedder(corrupt)
    width = 2 * DIMENSIONS + len(JUDGE_FEATURES)
    weights = LinearModel(np.zeros(width), np.ones(width), np.zeros(width), 0.0)
    file = ModelFile(KIND, JUDGE_FEATURES, EMBEDDING_ID, ("question", "answer"), weights, "s", "w")
    judge = LearnedJudge(file, Threshold.fixed(1.0), embedder=shared, executor=shared.executor)
    settings = CascadeSettings(steps=["cheap", "strong"])  # type: ignore[list-item]
    policy = CascadePolicy(settings, RuleJudge([]), judge, quality=calibration("cascade"))
    body = {"model": "c", "messages": [{"role": "user", "content": "What is 2 + 2?"}]}
    try:
        for n in range(3):
            accepted, reason, decision = await policy.calibrated(f"req{n}", body, "#### 4", "stop")
            assert (accepted, reason, decision.cheap) == (False, UNSCORED, False)
    finally:
        shared.close()


class BrokenEmbedder:
    """An embedding model that loaded but fails to run (onnxruntime out of memory, say)."""

    def embed(self, texts: list[str]) -> Any:
        raise RuntimeError("Failed to allocate memory for requested buffer")


def embedding_judge_file() -> Any:
    import numpy as np

    from faregate.embedding.model import DIMENSIONS
    from faregate.learning.cascade_judges import JUDGE_FEATURES, KIND
    from faregate.learning.linear import LinearModel
    from faregate.learning.model_file import EMBEDDING_ID, ModelFile

    width = 2 * DIMENSIONS + len(JUDGE_FEATURES)
    weights = LinearModel(np.zeros(width), np.ones(width), np.zeros(width), 0.0)
    return ModelFile(KIND, JUDGE_FEATURES, EMBEDDING_ID, ("question", "answer"), weights, "s", "w")


async def test_a_learned_judge_that_fails_to_score_escalates_instead_of_failing_the_request(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A learned judge whose scoring raised anything but ModelUnavailable (its embedding model
    failing to run) raised out of the judged step, and the client got a 500; it escalates, as a
    router that fails to score sends the prompt to the strong model, and says why in the log."""
    from faregate.learning.cascade_judges import LearnedJudge

    judge = LearnedJudge(embedding_judge_file(), Threshold.fixed(0.9), embedder=BrokenEmbedder())
    body = {"model": "c", "messages": [{"role": "user", "content": "What is 2 + 2?"}]}
    try:
        accepted, reason = await judge.accept(body, "#### 4", "stop")
    finally:
        judge.close()
    assert (accepted, reason) == (False, "learned judge: cannot score (RuntimeError): escalated")
    assert any(r.exc_info for r in caplog.records)


async def test_a_calibrated_cascade_escalates_an_answer_its_learned_judge_fails_to_score() -> None:
    from faregate.learning.cascade_judges import LearnedJudge, RuleJudge
    from faregate.route_config import CascadeSettings
    from faregate.routing.policies import CascadePolicy
    from test_quality_live import calibration

    judge = LearnedJudge(embedding_judge_file(), Threshold.fixed(1.0), embedder=BrokenEmbedder())
    settings = CascadeSettings(steps=["cheap", "strong"])  # type: ignore[list-item]
    policy = CascadePolicy(settings, RuleJudge([]), judge, quality=calibration("cascade"))
    body = {"model": "c", "messages": [{"role": "user", "content": "What is 2 + 2?"}]}
    try:
        accepted, reason, decision = await policy.calibrated("req", body, "#### 4", "stop")
    finally:
        judge.close()
    assert (accepted, reason, decision.cheap) == (
        False,
        "learned judge: cannot score (RuntimeError): escalated",
        False,
    )
