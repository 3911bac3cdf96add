"""Issue #12, item 11: the gateway describes its own endpoints (GET /openapi.json), and requests
generated from that description never get a 5xx, never leave a reservation or a record behind,
and leave the gateway healthy. A few hundred here; bench/fuzz_api.py sends tens of thousands.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from faregate.config import load_settings
from faregate.server.app import build_gateway, create_app
from fuzzing import SIM_SCRIPT, Target, check_invariants, fuzz, new_fuzz_key
from harness import MASTER_KEY, GatewayProcess, run_sim
from servers import launch_gateway

pytestmark = pytest.mark.e2e

FUZZ_REQUESTS = int(os.environ.get("FUZZ_REQUESTS", "400"))
# Routes that are not part of the API: the dashboard's HTML page and files, and the unversioned
# aliases of the chat and embeddings routes (the same handlers as their /v1/ routes).
NOT_API = ("/dashboard", "/dashboard/", "/dashboard/static/{name}", "/chat/completions", "/embeddings")


@pytest.fixture(scope="module")
def fuzzed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GatewayProcess, Target]]:
    workdir = tmp_path_factory.mktemp("fuzz")
    with (
        run_sim(workdir, SIM_SCRIPT) as sim,
        launch_gateway(workdir / "gw", sim, extra="accounts: {enabled: true}\n") as gateway,
    ):
        root = f"http://127.0.0.1:{gateway.port}"
        victim = new_fuzz_key(root, MASTER_KEY, "victim")
        yield gateway, Target(root, new_fuzz_key(root, MASTER_KEY)["api_key"], MASTER_KEY, victim["id"])


def test_the_description_is_served_and_valid(fuzzed: tuple[GatewayProcess, Target]) -> None:
    import schemathesis

    _, target = fuzzed
    document = httpx.get(f"{target.root}/openapi.json").json()
    assert document["openapi"].startswith("3.")
    schema = schemathesis.openapi.from_dict(document)
    labels = {result.ok().label for result in schema.get_all_operations()}
    assert {"POST /v1/chat/completions", "GET /v1/me", "POST /v1/feedback", "GET /admin/instances"} <= labels


async def test_every_route_is_described(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from faregate.server.openapi import openapi_document

    monkeypatch.setenv("FAREGATE_MASTER_KEY", MASTER_KEY)
    settings = load_settings(
        overrides={"store": {"path": str(tmp_path / "store")}, "catalog": {"broad": False}}
    )
    app = create_app(await build_gateway(settings))
    async with TestClient(TestServer(app)):
        served: set[tuple[str, str]] = set()
        for route in app.router.routes():
            info: dict[str, Any] = route.resource.get_info() if route.resource is not None else {}
            path = info.get("path") or info.get("formatter") or ""
            if route.method != "HEAD" and path not in NOT_API:
                served.add((route.method.lower(), path.replace("{name:.+}", "{name}")))
    described = {(method, path) for path, ops in openapi_document()["paths"].items() for method in ops}
    dashboard = {("get", f"/admin/dashboard/{n}") for n in ("summary", "requests")}
    assert dashboard <= described
    # The dashboard panels are one route with a {name} in the app and one path each here.
    served.discard(("get", "/admin/dashboard/{name}"))
    assert served <= described, sorted(served - described)
    assert isinstance(app, web.Application)


def test_generated_requests_never_get_a_5xx_or_leave_anything_behind(
    fuzzed: tuple[GatewayProcess, Target],
) -> None:
    gateway, target = fuzzed
    report = fuzz(target, FUZZ_REQUESTS, seed_value=12)
    assert report.sent >= FUZZ_REQUESTS and report.chat > FUZZ_REQUESTS // 5, report.by_operation
    invariants = check_invariants(target, gateway.store_path, report)
    problems = invariants.problems(report)
    assert not problems, (
        problems,
        report.server_errors[:3],
        report.transport_errors[:3],
        gateway.read_log()[-3000:],
    )
    assert gateway.process.poll() is None
