import pytest

from faregate.catalog import build_catalog
from faregate.config import load_settings, parse_settings
from faregate.errors import InvalidRequest, ModelNotFound
from faregate.providers.registry import with_simulator
from faregate.routing.candidate_fit import ModelUnavailable, Rejections, fits, fits_now
from faregate.routing.estimate import PromptSize
from faregate.routing.plan import Planner
from faregate.server.parse import parse_chat_request

SIM = "http://127.0.0.1:4001/v1"
IMAGE = [
    {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "https://example.com/y.png"}}]}
]


def request(body: dict):  # type: ignore[no-untyped-def]
    return parse_chat_request({"messages": [{"role": "user", "content": "hi"}], **body}, {}, "r")


@pytest.fixture(scope="module")
def planner() -> Planner:
    return Planner(build_catalog(with_simulator(load_settings(), SIM)))


async def test_alias_plans_the_sim_offer(planner: Planner) -> None:
    plan = await planner.plan(request({"model": "deepseek-v4-flash"}))
    assert [c.offer.provider for c in plan.candidates] == ["sim"]
    assert plan.candidates[0].offer.upstream_model == "deepseek-ai/DeepSeek-V4-Flash"


async def test_unknown_model_is_404_with_suggestions(planner: Planner) -> None:
    with pytest.raises(ModelNotFound) as info:
        await planner.plan(request({"model": "deepseek-v4-flsh"}))
    assert info.value.status == 404
    assert "Did you mean" in info.value.message and "DeepSeek-V4-Flash" in info.value.message


async def test_unknown_model_with_no_close_name_says_where_the_names_are(planner: Planner) -> None:
    with pytest.raises(ModelNotFound) as info:
        await planner.plan(request({"model": "zzzqqq"}))
    assert info.value.message == (
        "The model 'zzzqqq' does not exist. GET /v1/models (or `faregate models`) lists the models "
        "served here."
    )


async def test_image_to_text_only_model_is_400_naming_model_and_modality(planner: Planner) -> None:
    with pytest.raises(InvalidRequest) as info:
        await planner.plan(request({"model": "deepseek-v4-flash", "messages": IMAGE}))
    assert "deepseek-ai/DeepSeek-V4-Flash" in info.value.message and "image" in info.value.message


async def test_image_to_vision_model_is_planned(planner: Planner) -> None:
    plan = await planner.plan(request({"model": "glm-4.5v", "messages": IMAGE}))
    assert plan.candidates[0].model.name == "zai-org/GLM-4.5V"


async def test_models_list_keeps_order_and_skips_unfit(planner: Planner) -> None:
    plan = await planner.plan(request({"models": ["deepseek-v4-flash", "qwen3-vl-8b"], "messages": IMAGE}))
    assert [c.model.name for c in plan.candidates] == ["Qwen/Qwen3-VL-8B-Instruct"]
    plan = await planner.plan(request({"models": ["qwen3-8b", "deepseek-v4-flash"]}))
    assert [c.model.name for c in plan.candidates] == ["Qwen/Qwen3-8B", "deepseek-ai/DeepSeek-V4-Flash"]


async def test_max_tokens_capped_at_model_max_output(planner: Planner) -> None:
    plan = await planner.plan(request({"model": "deepseek-v4-flash"}))
    assert plan.candidates[0].max_output(100_000) == 8192
    assert plan.candidates[0].max_output(10) == 10


async def test_cheapest_offer_first_among_enabled() -> None:
    settings = parse_settings(
        {
            "providers": {
                "a": {"base_url": "http://127.0.0.1:1/v1", "enabled": True},
                "b": {"base_url": "http://127.0.0.1:2/v1", "enabled": True},
            },
            "models": {
                "m": {
                    "input": 1,
                    "output": 1,
                    "offers": [
                        {"provider": "a", "input": 2, "output": 2},
                        {"provider": "b", "input": "0.5", "output": "0.5"},
                    ],
                }
            },
            "catalog": {"broad": False},
        }
    )
    plan = await Planner(build_catalog(settings)).plan(request({"model": "m"}))
    assert [c.offer.provider for c in plan.candidates] == ["b", "a"]


def lopsided_planner() -> Planner:
    """One model sold by two sellers: `a` cheap to read and dear to write, `b` the other way."""
    settings = parse_settings(
        {
            "providers": {
                "a": {"base_url": "http://127.0.0.1:1/v1", "enabled": True},
                "b": {"base_url": "http://127.0.0.1:2/v1", "enabled": True},
            },
            "models": {
                "m": {
                    "input": 3,
                    "output": 15,
                    "max_output_tokens": 4096,
                    "offers": [
                        {"provider": "a", "input": 3, "output": 15},
                        {"provider": "b", "input": 5, "output": 10},
                    ],
                }
            },
            "catalog": {"broad": False},
        }
    )
    return Planner(build_catalog(settings))


@pytest.mark.parametrize(
    ("body", "order"),
    [
        # A long prompt with a short answer: a reads it for less (3 against 5 per million).
        ({"messages": [{"role": "user", "content": "x" * 20_000}], "max_tokens": 100}, ["a", "b"]),
        # A short prompt with a long answer: b writes it for less (10 against 15 per million).
        ({"max_tokens": 4000}, ["b", "a"]),
    ],
)
async def test_offers_of_a_model_are_ordered_by_the_requests_cost(body: dict, order: list[str]) -> None:
    """Not by the sum of the per-token prices (a 18, b 15: b always first), but by what this
    request would cost at each: its prompt and the output it may bill. `plan_now`, the usual
    request's short cut, orders them alike."""
    planner = lopsided_planner()
    chat = request({"model": "m", **body})
    plan = await planner.plan(chat)
    assert [c.offer.provider for c in plan.candidates] == order
    quick = planner.plan_now(chat)
    assert quick is not None and [c.offer.provider for c in quick.candidates] == order


async def test_model_without_enabled_provider_is_503_naming_providers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("SILICONFLOW_API_KEY", raising=False)
    monkeypatch.delenv("DEEPSEEK_API_KEY", raising=False)
    monkeypatch.delenv("OPENROUTER_API_KEY", raising=False)
    planner = Planner(build_catalog(load_settings()))
    with pytest.raises(ModelUnavailable) as info:
        await planner.plan(request({"model": "deepseek-v4-flash"}))
    assert info.value.status == 503 and "siliconflow" in info.value.message
    # Nothing changes until the operator sets a key: the SDKs, which retry any 5xx twice by
    # default, are told not to (no Retry-After: there is nothing to wait for).
    assert info.value.headers == {"x-should-retry": "false"}


async def test_model_without_enabled_provider_says_which_key_to_set(monkeypatch: pytest.MonkeyPatch) -> None:
    """A newcomer asking for a model whose providers have no key is told which variable turns
    each on (one set to the wrong kind of key, and one forced off, say so), not that "an" API
    key is not set."""
    for var in ("SILICONFLOW_API_KEY", "DEEPSEEK_API_KEY", "OPENROUTER_API_KEY", "GLOBAL_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    pro_only = {"input": 1, "output": 1, "offers": [{"provider": "globalapi_pro"}]}
    settings = load_settings(
        overrides={"providers": {"deepseek": {"enabled": False}}, "models": {"pro-only": pro_only}}
    )
    planner = Planner(build_catalog(settings))
    with pytest.raises(ModelUnavailable) as info:
        await planner.plan(request({"model": "deepseek-v4-flash"}))
    message = info.value.message
    assert info.value.status == 503
    assert "deepseek-ai/DeepSeek-V4-Flash has no enabled provider" in message
    assert "siliconflow: set $SILICONFLOW_API_KEY in the gateway's environment and restart" in message
    assert "openrouter: set $OPENROUTER_API_KEY" in message
    assert "deepseek: providers.deepseek.enabled is false; set it to true" in message
    assert "API key not set" not in message
    monkeypatch.setenv("GLOBAL_API_KEY", "ga_plain")
    planner = Planner(build_catalog(settings))
    with pytest.raises(ModelUnavailable) as pro:
        await planner.plan(request({"model": "pro-only"}))
    assert "globalapi_pro: $GLOBAL_API_KEY must start with ga_pro_" in pro.value.message


@pytest.mark.parametrize(
    "body",
    [
        {"model": "deepseek-v4-flash"},
        {"model": "deepseek-v4-flash", "messages": IMAGE},  # modality: refused at once
        {"model": "deepseek-v4-flash", "max_tokens": 10**9},
        {"model": "deepseek-v4-flash", "messages": [{"role": "user", "content": "x" * 600_000}]},
        {"model": "glm-4.5v", "messages": IMAGE},
    ],
)
async def test_fits_now_says_what_fits_says_or_defers_to_it(planner: Planner, body: dict) -> None:
    """The plan's no-wait check (`fits_now`) never disagrees with `fits`, and when it defers
    (None) it has recorded no reason: `fits` records it once."""
    chat = request(body)
    model = planner.resolve(chat.model)
    now, later = Rejections(), Rejections()
    quick = fits_now(model, chat, PromptSize.of(chat.body), now)
    full = await fits(model, chat, PromptSize.of(chat.body), later)
    if quick is None:
        assert now == Rejections()
    else:
        assert quick == full and now == later


@pytest.mark.parametrize(
    "body",
    [
        {"model": "deepseek-v4-flash"},
        {"model": "deepseek-ai/DeepSeek-V4-Flash", "max_tokens": 100},
        {"model": "glm-4.5v", "messages": IMAGE},
        {"model": "qwen3-8b", "stream": True},
    ],
)
async def test_plan_now_is_plan_for_the_usual_request(planner: Planner, body: dict) -> None:
    chat = request(body)
    quick, full = planner.plan_now(chat), await planner.plan(chat)
    assert quick is not None
    assert quick.route == full.route and quick.candidates == full.candidates
    assert quick.hints == full.hints and quick.trace == full.trace and not quick.stages
    assert quick.prompt is not None and full.prompt is not None
    assert quick.prompt.upper_bound == full.prompt.upper_bound


@pytest.mark.parametrize(
    "body",
    [
        {"models": ["qwen3-8b", "deepseek-v4-flash"]},  # a list: the general plan
        {"model": "deepseek-v4-flash", "faregate": {"tier": "economy"}},  # hints
        {"model": "deepseek-v4-flash", "messages": IMAGE},  # cannot serve it: `plan` says why
        {"model": "deepseek-v4-flash", "messages": [{"role": "user", "content": "x" * 600_000}]},
    ],
)
async def test_plan_now_leaves_the_rest_to_plan(planner: Planner, body: dict) -> None:
    assert planner.plan_now(request(body)) is None


async def test_plan_now_raises_what_plan_raises_for_an_unknown_model(planner: Planner) -> None:
    with pytest.raises(ModelNotFound) as now:
        planner.plan_now(request({"model": "deepseek-v4-flsh"}))
    with pytest.raises(ModelNotFound) as later:
        await planner.plan(request({"model": "deepseek-v4-flsh"}))
    assert now.value.message == later.value.message


async def test_plan_now_leaves_a_route_to_plan() -> None:
    settings = with_simulator(load_settings(), SIM)
    routes = {"cheap": {"chain": ["deepseek-v4-flash"]}}
    routed = Planner(build_catalog(settings), parse_settings({"routes": routes}).routes)
    assert routed.plan_now(request({"model": "cheap"})) is None
    assert [c.model.name for c in (await routed.plan(request({"model": "cheap"}))).candidates] == [
        "deepseek-ai/DeepSeek-V4-Flash"
    ]


def test_a_routes_cache_digest_follows_its_definition_and_the_routes_it_reaches() -> None:
    """The exact cache keys a route's entries by this digest (README, Caching): a route pointed at
    other models, directly or through a route it reaches, gets another one; the same settings
    give the same one (instances sharing a Redis), and a plain model has none."""

    def digests(routes: dict) -> tuple[str | None, ...]:  # type: ignore[type-arg]
        settings = with_simulator(load_settings(overrides={"routes": routes}), SIM)
        planner = Planner(build_catalog(settings), settings.routes)
        names = ("outer", "inner", "other", "list:outer,gpt-4o-mini", "gpt-4o-mini")
        return tuple(planner.route_definition(name) for name in names)

    base = {
        "outer": {"chain": ["inner", "gpt-4o"]},
        "inner": {"chain": ["gpt-4o-mini"]},
        "other": {"chain": ["gpt-4o"]},
    }
    first = digests(base)
    assert first == digests(dict(base)) and first[-1] is None and first[3] == first[0]
    moved = digests({**base, "inner": {"chain": ["gpt-4o"]}})
    assert moved[0] != first[0] and moved[1] != first[1]
    assert moved[2] == first[2]  # a route that does not reach the one changed keeps its entries


def test_a_trained_routes_cache_digest_follows_its_file_not_its_path(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A router or cascade judge retrained in place (same path, new weights) decides otherwise (a
    router file may name other models), but kept its route's digest: the cache served answers
    picked by the old file. A file counts by what decides in it, so the same file under another
    path (another machine) or with other provenance keeps the digest, and a retrained one does
    not."""
    import json
    from pathlib import Path
    from typing import Any

    routers = Path(__file__).resolve().parents[1] / "routers"

    def router(file: str) -> dict:  # type: ignore[type-arg]
        return {"router": {"file": file, "strong": "gpt-4o", "weak": "gpt-4o-mini", "threshold": 0.5}}

    def cascade(file: str) -> dict:  # type: ignore[type-arg]
        judge = {"learned": {"file": file, "threshold": 0.5}}
        return {"cascade": {"steps": ["gpt-4o-mini", "gpt-4o"], "judge": judge}}

    def digest(route: Any, file: Path, content: dict) -> str | None:  # type: ignore[type-arg]
        file.write_text(json.dumps(content))
        overrides = {"routes": {"smart": route(str(file))}, "catalog": {"broad": False}}
        settings = with_simulator(load_settings(overrides=overrides), SIM)
        return Planner(build_catalog(settings), settings.routes).route_definition("smart")

    for source, route in (("router-gsm8k.json", router), ("judge-gsm8k.json", cascade)):
        trained = json.loads((routers / source).read_text())
        first = digest(route, tmp_path / "trained.json", trained)
        assert first is not None
        assert digest(route, tmp_path / "elsewhere.json", trained) == first
        assert digest(route, tmp_path / "trained.json", {**trained, "training": {"note": "copied"}}) == first
        retrained = {**trained, "model": {**trained["model"], "bias": trained["model"]["bias"] + 0.5}}
        assert digest(route, tmp_path / "trained.json", retrained) != first, source
