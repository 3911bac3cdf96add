"""The accounts HTTP API in process (aiohttp's test server): the master key guards every /admin
route, keys are managed and topped up through it, and a key reads its own state at /v1/me."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from faregate.config import load_settings
from faregate.server.app import build_gateway, create_app
from harness import MASTER_KEY

ADMIN = {"Authorization": f"Bearer {MASTER_KEY}"}


@pytest.fixture
async def client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[TestClient[Any, Any]]:
    monkeypatch.setenv("FAREGATE_MASTER_KEY", MASTER_KEY)
    settings = load_settings(
        overrides={
            "store": {"path": str(tmp_path / "store")},
            "catalog": {"broad": False},
            "accounts": {"enabled": True, "new_key_credits_usd": "5"},
        }
    )
    gateway = await build_gateway(settings)
    async with TestClient(TestServer(create_app(gateway))) as test_client:
        yield test_client


def admin_routes(app: web.Application) -> list[tuple[str, str]]:
    routes = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter") or ""
        if path.startswith("/admin") and route.method != "HEAD":
            routes.append((route.method, re.sub(r"\{[^}]+\}", "x", path)))
    return routes


async def test_no_admin_endpoint_answers_without_the_master_key(client: TestClient[Any, Any]) -> None:
    created = await client.post("/admin/keys", json={"name": "user"}, headers=ADMIN)
    user_key = (await created.json())["api_key"]
    routes = admin_routes(client.app)  # type: ignore[arg-type]
    assert ("POST", "/admin/keys") in routes and ("GET", "/admin/audit") in routes and len(routes) >= 10
    for method, path in routes:
        for headers, statuses in (
            ({}, {401}),
            ({"Authorization": f"Bearer {user_key}"}, {403}),
            ({"Authorization": f"Bearer {MASTER_KEY}0"}, {403}),
            ({"Authorization": f"Basic {MASTER_KEY}"}, {401, 403}),
        ):
            response = await client.request(method, path, headers=headers, json={})
            assert response.status in statuses, (method, path, headers, response.status)
            body = await response.json()
            assert set(body["error"]) == {"message", "type", "param", "code"}
    # The key's account was not touched by any of those calls.
    listed = await (await client.get("/admin/keys", headers=ADMIN)).json()
    assert [k["balance_usd"] for k in listed["data"]] == ["5"]


async def test_admin_endpoints_are_off_without_a_master_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("FAREGATE_MASTER_KEY", raising=False)
    settings = load_settings(overrides={"store": {"path": str(tmp_path / "s")}, "catalog": {"broad": False}})
    async with TestClient(TestServer(create_app(await build_gateway(settings)))) as test_client:
        response = await test_client.get("/admin/keys", headers=ADMIN)
        assert response.status == 403 and "disabled" in (await response.json())["error"]["message"]


async def test_key_lifecycle_credits_budgets_and_limits(client: TestClient[Any, Any]) -> None:
    response = await client.post(
        "/admin/keys",
        json={
            "name": "team-a",
            "premium": True,
            "credits_usd": "12.5",
            "budgets": [
                {"period": "month", "limit_usd": "100"},
                {"period": "day", "window": "rolling", "limit_usd": 5},
            ],
            "requests_per_minute": 100,
            "max_request_usd": "0.25",
        },
        headers=ADMIN,
    )
    assert response.status == 201
    key = await response.json()
    assert key["api_key"].startswith("fg_pro_") and key["premium"] is True
    assert key["balance_usd"] == "12.5" and key["reserved_usd"] == "0"
    assert key["limits"] == {
        "requests_per_minute": 100,
        "tokens_per_minute": 10_000_000,  # the premium tier's default
        "max_request_usd": "0.25",
        "own": ["requests_per_minute"],
    }
    assert [(b["period"], b["window"], b["limit_usd"], b["spent_usd"]) for b in key["budgets"]] == [
        ("month", "calendar", "100", "0"),
        ("day", "rolling", "5", "0"),
    ]
    key_id = key["id"]

    topped = await client.post(
        f"/admin/keys/{key_id}/credits", json={"amount_usd": "7.5", "note": "invoice 42"}, headers=ADMIN
    )
    assert (await topped.json())["balance_usd"] == "20"
    updated = await client.patch(
        "/admin/keys/team-a",
        json={"requests_per_minute": None, "budgets": [], "name": "team-b"},
        headers=ADMIN,
    )
    body = await updated.json()
    assert (
        body["name"] == "team-b" and body["budgets"] == [] and body["limits"]["requests_per_minute"] == 6000
    )
    ledger = await (await client.get(f"/admin/keys/{key_id}/ledger", headers=ADMIN)).json()
    assert [(row["kind"], row["amount_usd"], row["note"]) for row in ledger["data"]] == [
        ("topup", "7.5", "invoice 42"),
        ("grant", "12.5", "new key"),
    ]
    holds = await (await client.get(f"/admin/keys/{key_id}/reservations", headers=ADMIN)).json()
    assert holds == {"object": "list", "data": []}

    me = await client.get("/v1/me", headers={"Authorization": f"Bearer {key['api_key']}"})
    mine = await me.json()
    assert me.status == 200 and mine["id"] == key_id and mine["balance_usd"] == "20"
    assert "api_key" not in mine and not any(key["api_key"] in str(v) for v in mine.values())

    revoked = await client.delete(f"/admin/keys/{key_id}", headers=ADMIN)
    assert (await revoked.json())["revoked_at"] is not None
    assert (await client.get("/v1/me", headers={"Authorization": f"Bearer {key['api_key']}"})).status == 401
    assert (await client.get("/admin/keys?revoked=false", headers=ADMIN)).status == 200
    audit = await (await client.get("/admin/audit", headers=ADMIN)).json()
    assert audit["clean"] is True and audit["entries"] == 2


async def test_a_revoked_key_takes_no_credits_nor_policy_change(client: TestClient[Any, Any]) -> None:
    """A revoked key is final: a top-up to it could never be spent, a budget or limit on it never
    applies. Both answered 200 as if done; now each is a 409 that says why, and nothing changes
    (the ledger keeps its one grant row). A rename alone changes no money and stays allowed."""
    created = await client.post("/admin/keys", json={"name": "gone", "credits_usd": "5"}, headers=ADMIN)
    key_id = (await created.json())["id"]
    assert (await client.delete(f"/admin/keys/{key_id}", headers=ADMIN)).status == 200
    topup = await client.post(f"/admin/keys/{key_id}/credits", json={"amount_usd": "10"}, headers=ADMIN)
    error = (await topup.json())["error"]
    assert topup.status == 409, error
    assert error["code"] == "key_revoked" and f"{key_id} (gone) is revoked" in error["message"], error
    patched = await client.patch(
        f"/admin/keys/{key_id}", json={"max_request_usd": "1", "name": "x"}, headers=ADMIN
    )
    error = (await patched.json())["error"]
    assert patched.status == 409 and error["code"] == "key_revoked", error
    shown = await (await client.get(f"/admin/keys/{key_id}", headers=ADMIN)).json()
    assert (shown["name"], shown["balance_usd"], shown["limits"]["max_request_usd"]) == ("gone", "5", None)
    ledger = await (await client.get(f"/admin/keys/{key_id}/ledger", headers=ADMIN)).json()
    assert [row["kind"] for row in ledger["data"]] == ["grant"], ledger
    renamed = await client.patch(f"/admin/keys/{key_id}", json={"name": "gone-old"}, headers=ADMIN)
    assert renamed.status == 200 and (await renamed.json())["name"] == "gone-old"


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "param"),
    [
        ("POST", "/admin/keys", {}, 400, "name"),
        ("POST", "/admin/keys", {"name": "x", "credits_usd": "-1"}, 400, "credits_usd"),
        (
            "POST",
            "/admin/keys",
            {"name": "x", "budgets": [{"period": "year", "limit_usd": 1}]},
            400,
            "budgets[0].period",
        ),
        ("POST", "/admin/keys", {"name": "x", "rpm": 5}, 400, "rpm"),
        ("POST", "/admin/keys/nope/credits", {"amount_usd": "1"}, 404, None),
        ("POST", "/admin/keys/KEY/credits", {"amount_usd": "0.0000000001"}, 400, "amount_usd"),
        ("PATCH", "/admin/keys/KEY", {"tokens_per_minute": 0}, 400, "tokens_per_minute"),
        ("GET", "/admin/keys/KEY/ledger?limit=0", None, 400, "limit"),
        # Past SQLite's INTEGER (orjson reads up to 2**64 - 1 as an int): a 400, not a 500.
        ("PATCH", "/admin/keys/KEY", {"tokens_per_minute": 2**63}, 400, "tokens_per_minute"),
        ("POST", "/admin/keys", {"name": "x", "requests_per_minute": 2**64 - 1}, 400, "requests_per_minute"),
        ("POST", "/admin/keys/KEY/credits", {"amount_usd": "1e999999"}, 400, "amount_usd"),
        ("POST", "/admin/keys", {"name": "x", "credits_usd": "9e999999"}, 400, "credits_usd"),
        ("PATCH", "/admin/keys/KEY", {"max_request_usd": "1e999999"}, 400, "max_request_usd"),
        (
            "PATCH",
            "/admin/keys/KEY",
            {"budgets": [{"period": "day", "limit_usd": "1e99999999"}]},
            400,
            "budgets[0].limit_usd",
        ),
    ],
)
async def test_bad_admin_requests_are_clear_400s_and_404s(
    client: TestClient[Any, Any], method: str, path: str, body: Any, status: int, param: str | None
) -> None:
    created = await (await client.post("/admin/keys", json={"name": "k"}, headers=ADMIN)).json()
    response = await client.request(method, path.replace("KEY", created["id"]), json=body, headers=ADMIN)
    assert response.status == status
    error = (await response.json())["error"]
    assert error["param"] == param and error["message"]


async def test_a_bad_quality_limit_is_a_400_naming_it(client: TestClient[Any, Any]) -> None:
    # /admin/quality read `limit` with a bare int() and fell back to 20 on anything else: a typo
    # was answered as if it had not been asked. It is checked as the dashboard API's are.
    response = await client.get("/admin/quality?limit=abc", headers=ADMIN)
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["param"] == "limit" and "'abc'" in error["message"]
    assert (await client.get("/admin/quality?limit=5", headers=ADMIN)).status == 200


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/messages"])
async def test_a_wrong_method_is_a_405_that_says_which_are_allowed(
    client: TestClient[Any, Any], path: str
) -> None:
    """RFC 9110 15.5.6: a 405 carries an Allow header. aiohttp's has one; the answer the error
    middleware writes in its place (OpenAI's or Anthropic's error shape) dropped it."""
    response = await client.get(path)
    assert response.status == 405
    assert "POST" in response.headers.get("Allow", "")


async def test_the_answer_that_carries_a_new_raw_key_is_never_stored_by_a_cache(
    client: TestClient[Any, Any],
) -> None:
    """The raw key is in this answer only: a proxy or browser cache in between must not keep it."""
    created = await client.post("/admin/keys", json={"name": "cached?"}, headers=ADMIN)
    assert created.status == 201 and (await created.json())["api_key"]
    assert created.headers.get("Cache-Control") == "no-store"


async def test_revoking_again_by_a_reused_name_finishes_the_latest_revocation(
    client: TestClient[Any, Any],
) -> None:
    """A retry of a revocation by name (after a 503 half-way, or an answer lost) is a success, as
    by id. When the name was used by a key revoked earlier (a rotation: the old key revoked, a new
    one made under the same name), the retry answered 400 "2 keys are named ..." instead."""
    old = await (await client.post("/admin/keys", json={"name": "svc"}, headers=ADMIN)).json()
    assert (await client.delete(f"/admin/keys/{old['id']}", headers=ADMIN)).status == 200
    new = await (await client.post("/admin/keys", json={"name": "svc"}, headers=ADMIN)).json()
    first = await client.delete("/admin/keys/svc", headers=ADMIN)
    assert first.status == 200 and (await first.json())["id"] == new["id"]
    for method, path in (("DELETE", "/admin/keys/svc"), ("POST", "/admin/keys/svc/revoke")):
        again = await client.request(method, path, headers=ADMIN)
        body = await again.json()
        assert again.status == 200, body
        assert body["id"] == new["id"] and body["revoked_at"] is not None
    # A name no key ever had is still a 404.
    unknown = await client.delete("/admin/keys/nobody", headers=ADMIN)
    assert unknown.status == 404 and (await unknown.json())["error"]["code"] == "key_not_found"


async def test_the_revoked_filter_of_the_key_list_is_a_boolean_or_a_400(client: TestClient[Any, Any]) -> None:
    """`?revoked=` took anything but false/0/no as true: a typo (`flase`) listed the revoked keys
    it was meant to leave out, answered as if nothing had been asked."""
    kept = await (await client.post("/admin/keys", json={"name": "kept"}, headers=ADMIN)).json()
    gone = await (await client.post("/admin/keys", json={"name": "gone"}, headers=ADMIN)).json()
    await client.delete(f"/admin/keys/{gone['id']}", headers=ADMIN)

    async def listed(query: str) -> set[str]:
        response = await client.get(f"/admin/keys{query}", headers=ADMIN)
        assert response.status == 200, await response.text()
        return {key["id"] for key in (await response.json())["data"]}

    assert {kept["id"], gone["id"]} <= await listed("")
    for yes in ("true", "True", "1", "yes", ""):  # empty: the default, as the other parameters
        assert gone["id"] in await listed(f"?revoked={yes}")
    for no in ("false", "FALSE", "0", "no"):
        ids = await listed(f"?revoked={no}")
        assert kept["id"] in ids and gone["id"] not in ids
    for typo in ("flase", "2", "only"):
        response = await client.get(f"/admin/keys?revoked={typo}", headers=ADMIN)
        assert response.status == 400
        error = (await response.json())["error"]
        assert error["param"] == "revoked" and repr(typo) in error["message"]


async def test_the_ledger_is_read_a_page_at_a_time_to_its_first_row(client: TestClient[Any, Any]) -> None:
    """The ledger listing had `limit` (at most 1000) and no way on: past a key's newest 1000 rows
    (500 requests), its grant and top-ups could not be read through the API at all. `after` (the
    last id of a page) gives the next page, `has_more` says whether there is one."""
    key = await (await client.post("/admin/keys", json={"name": "paged"}, headers=ADMIN)).json()
    other = await (await client.post("/admin/keys", json={"name": "other"}, headers=ADMIN)).json()
    ledger = f"/admin/keys/{key['id']}/ledger"
    for cents in range(1, 8):
        await client.post(
            f"/admin/keys/{key['id']}/credits", json={"amount_usd": f"0.0{cents}"}, headers=ADMIN
        )
    whole = await (await client.get(ledger, headers=ADMIN)).json()
    assert len(whole["data"]) == 8 and whole["has_more"] is False
    assert whole["data"][-1]["kind"] == "grant"

    pages: list[list[dict[str, Any]]] = []
    query = "?limit=3"
    while True:
        page = await (await client.get(ledger + query, headers=ADMIN)).json()
        pages.append(page["data"])
        if len(pages) == 1:
            # A row added while the pages are read is newer than all of them: no gap, no repeat.
            await client.post(f"/admin/keys/{key['id']}/credits", json={"amount_usd": "1"}, headers=ADMIN)
        if not page["has_more"]:
            break
        query = f"?limit=3&after={page['data'][-1]['id']}"
    assert [len(p) for p in pages] == [3, 3, 2]
    assert [row["id"] for p in pages for row in p] == [row["id"] for row in whole["data"]]

    for after, why in (("topup_nope", "unknown"), (other["id"], "a key id"), ("x\x00", "NUL")):
        response = await client.get(ledger, params={"after": after}, headers=ADMIN)
        assert response.status == 400, why
        assert (await response.json())["error"]["param"] == "after"
    # An entry of another key's ledger is no place in this one.
    theirs = (await (await client.get(f"/admin/keys/{other['id']}/ledger", headers=ADMIN)).json())["data"][0]
    response = await client.get(ledger, params={"after": theirs["id"]}, headers=ADMIN)
    assert response.status == 400 and (await response.json())["error"]["param"] == "after"


async def test_the_key_list_is_read_a_page_at_a_time(client: TestClient[Any, Any]) -> None:
    """GET /admin/keys answered every key at once, each read in full (balance, spend: a few queries
    a key), and took no `limit`: asked for one, it still answered all. `limit` and `after` (the
    last id of a page) page it, oldest first; a key made or revoked meanwhile moves no page."""
    made = [
        (await (await client.post("/admin/keys", json={"name": f"k{i}"}, headers=ADMIN)).json())["id"]
        for i in range(7)
    ]
    whole = await (await client.get("/admin/keys", headers=ADMIN)).json()
    assert [k["id"] for k in whole["data"]] == made and whole["has_more"] is False

    async def pages(query: str, meanwhile: bool) -> list[list[str]]:
        out: list[list[str]] = []
        after = ""
        while True:
            page = await (await client.get(f"/admin/keys?limit=3{query}{after}", headers=ADMIN)).json()
            out.append([k["id"] for k in page["data"]])
            if meanwhile and len(out) == 1:
                await client.post("/admin/keys", json={"name": "late"}, headers=ADMIN)
                # The key the next page starts after is revoked: the place is kept all the same.
                await client.delete(f"/admin/keys/{out[0][-1]}", headers=ADMIN)
            if not page["has_more"]:
                return out
            after = f"&after={out[-1][-1]}"

    first = await pages("", meanwhile=True)
    late = (await (await client.get("/admin/keys", headers=ADMIN)).json())["data"][-1]["id"]
    assert first == [made[0:3], made[3:6], [made[6], late]]
    active = await pages("&revoked=false", meanwhile=False)
    assert active == [[made[0], made[1], made[3]], [made[4], made[5], made[6]], [late]]

    for query, param in (("?limit=0", "limit"), ("?limit=1001", "limit"), ("?limit=x", "limit"),
                         ("?after=key_000000000000", "after")):  # fmt: skip
        response = await client.get(f"/admin/keys{query}", headers=ADMIN)
        assert response.status == 400 and (await response.json())["error"]["param"] == param


@pytest.mark.parametrize(
    ("path", "body", "param", "meant"),
    [
        ("/admin/keys", {"name": "x", "tokens_per_minuet": 5}, "tokens_per_minuet", "tokens_per_minute"),
        ("/admin/keys", {"name": "x", "credit_usd": "1"}, "credit_usd", "credits_usd"),
        (
            "/admin/keys",
            {"name": "x", "budgets": [{"period": "day", "limit": "5"}]},
            "budgets[0]",
            "limit_usd",
        ),
        ("/admin/keys/KEY/credits", {"amount": "5"}, "amount", "amount_usd"),
    ],
)
async def test_an_unknown_field_is_named_with_the_one_meant(
    client: TestClient[Any, Any], path: str, body: dict[str, Any], param: str, meant: str
) -> None:
    """A misspelt field was named, but the field meant had to be found in the list of all of them
    (and a budget's was not even listed)."""
    created = await (await client.post("/admin/keys", json={"name": "k"}, headers=ADMIN)).json()
    response = await client.post(path.replace("KEY", created["id"]), json=body, headers=ADMIN)
    assert response.status == 400
    error = (await response.json())["error"]
    assert error["param"] == param and f"did you mean '{meant}'?" in error["message"], error


async def test_a_key_reads_at_v1_me_whether_its_metering_is_on(
    client: TestClient[Any, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With metering off, /v1/me showed a balance of 0, rate limits and budgets as if they applied,
    though nothing enforces them (a client could take itself for out of credit): it says whether
    the key is metered."""
    created = await (await client.post("/admin/keys", json={"name": "on"}, headers=ADMIN)).json()
    mine = await (
        await client.get("/v1/me", headers={"Authorization": f"Bearer {created['api_key']}"})
    ).json()
    assert mine["metered"] is True

    settings = load_settings(
        overrides={"store": {"path": str(tmp_path / "off")}, "catalog": {"broad": False}}
    )
    gateway = await build_gateway(settings)
    async with TestClient(TestServer(create_app(gateway))) as unmetered:
        created = await (await unmetered.post("/admin/keys", json={"name": "off"}, headers=ADMIN)).json()
        me = await unmetered.get("/v1/me", headers={"Authorization": f"Bearer {created['api_key']}"})
        mine = await me.json()
    assert me.status == 200 and mine["metered"] is False
