"""The accounts HTTP API: /admin/keys... behind the master key, and /v1/me for a key itself.

    POST   /admin/keys                      create a key (the raw key is in this answer only)
    GET    /admin/keys[?revoked=false&limit=&after=]  list keys with balances, oldest first
    GET    /admin/keys/{id}                 one key: balance, reserved, spend, limits, budgets
    PATCH  /admin/keys/{id}                 rename; set limits, the per-request cap, budgets
    DELETE /admin/keys/{id}                 revoke (also POST /admin/keys/{id}/revoke)
    POST   /admin/keys/{id}/credits         add credits {"amount_usd": "10", "note": "..."}
    GET    /admin/keys/{id}/reservations    holds of requests in flight
    GET    /admin/keys/{id}/ledger[?limit=&after=]  balance changes, newest first, a page at a time
    GET    /admin/audit                     recompute every balance from the ledger
    GET    /admin/instances                 serving processes, their leases and holds
    POST   /admin/instances/{id}/release    release a dead instance's holds now (force: a live one's)
    GET    /v1/me                           the calling key's own balance, spend and limits

{id} is a key id or a unique key name. Errors use OpenAI's error JSON like every other route.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from aiohttp import web

from faregate.accounts.master import MasterKey
from faregate.accounts.money import parse_usd
from faregate.accounts.policy import meant_field, parse_budgets, parse_limit
from faregate.accounts.service import AccountsService, PolicyChange
from faregate.accounts.views import audit_json, hold_json, instance_json, key_json, ledger_json
from faregate.errors import InvalidRequest, NotFound
from faregate.server.admin import require_master
from faregate.server.parse import decode_json_object
from faregate.server.pipeline import ChatPipeline
from faregate.server.request_checks import check_text

_POLICY_FIELDS = frozenset({"requests_per_minute", "tokens_per_minute", "max_request_usd", "budgets"})
_CREATE_FIELDS = _POLICY_FIELDS | {"name", "premium", "credits_usd"}
_UPDATE_FIELDS = _POLICY_FIELDS | {"name"}
# The most rows of a page (keys, ledger rows).
MAX_PAGE_ROWS = 1000


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def _check_fields(body: dict[str, Any], allowed: frozenset[str]) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise InvalidRequest(
            f"Unknown fields: {unknown}{meant_field(unknown[0], sorted(allowed))}; "
            f"expected some of {sorted(allowed)}.",
            param=unknown[0],
        )


def policy_change(body: dict[str, Any]) -> PolicyChange:
    """The policy fields present in the body (absent: unchanged; null: back to the default)."""
    change = PolicyChange()
    for name in ("requests_per_minute", "tokens_per_minute"):
        if name in body:
            setattr(change, name, parse_limit(body[name], name))
    if "max_request_usd" in body:
        value = body["max_request_usd"]
        change.max_request_nano = None if value is None else parse_usd(value, "max_request_usd")
    if "budgets" in body:
        change.budgets = () if body["budgets"] is None else parse_budgets(body["budgets"])
    return change


_TRUE = frozenset({"true", "1", "yes"})
_FALSE = frozenset({"false", "0", "no"})


def bool_param(request: web.Request, name: str, default: bool) -> bool:
    """A boolean query parameter; `default` when absent or empty, a 400 naming it when it is
    neither true nor false (a typo must not be answered as if it had not been asked)."""
    text = request.query.get(name)
    if not text:
        return default
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise InvalidRequest(f"'{name}' must be true or false, not {text!r}.", param=name)


def _limit_param(request: web.Request) -> int | None:
    """A page's `limit`, 1 to MAX_PAGE_ROWS; None when absent."""
    text = request.query.get("limit")
    if text is None:
        return None
    try:
        limit = int(text)
    except ValueError:
        raise InvalidRequest("'limit' must be an integer.", param="limit") from None
    if not 1 <= limit <= MAX_PAGE_ROWS:
        raise InvalidRequest(f"'limit' must be between 1 and {MAX_PAGE_ROWS}.", param="limit")
    return limit


async def _body(request: web.Request) -> dict[str, Any]:
    return decode_json_object(await request.read())


class AdminApi:
    def __init__(self, service: AccountsService, master_key: MasterKey) -> None:
        self.service = service
        self.master_key = master_key

    async def _key_id(self, request: web.Request) -> str:
        require_master(request, self.master_key)
        return await self.service.resolve(check_text(request.match_info["key_id"], "id"))

    async def create(self, request: web.Request) -> web.StreamResponse:
        require_master(request, self.master_key)
        body = await _body(request)
        _check_fields(body, _CREATE_FIELDS)
        name = body.get("name")
        if not isinstance(name, str):
            raise InvalidRequest("'name' is required: a label for the key.", param="name")
        check_text(name, "name")
        premium = body.get("premium", False)
        if not isinstance(premium, bool):
            raise InvalidRequest("'premium' must be a boolean.", param="premium")
        credits = body.get("credits_usd")
        credits_nano = None if credits is None else parse_usd(credits, "credits_usd", allow_zero=True)
        view, raw = await self.service.create_key(name, premium, credits_nano, policy_change(body))
        response = _json({**key_json(view), "api_key": raw}, status=201)
        # The raw key is in this answer only: no cache in between (a proxy, a browser) may keep it.
        response.headers["Cache-Control"] = "no-store"
        return response

    async def list(self, request: web.Request) -> web.StreamResponse:
        require_master(request, self.master_key)
        include_revoked = bool_param(request, "revoked", True)
        limit = _limit_param(request)
        after = request.query.get("after") or None
        views, more = await self.service.key_page(
            include_revoked, limit, None if after is None else check_text(after, "after")
        )
        return _json({"object": "list", "data": [key_json(v) for v in views], "has_more": more})

    async def show(self, request: web.Request) -> web.StreamResponse:
        return _json(key_json(await self.service.view(await self._key_id(request))))

    async def update(self, request: web.Request) -> web.StreamResponse:
        key_id = await self._key_id(request)
        body = await _body(request)
        _check_fields(body, _UPDATE_FIELDS)
        name = body.get("name")
        if name is not None and not isinstance(name, str):
            raise InvalidRequest("'name' must be a string.", param="name")
        if name is not None:
            check_text(name, "name")
        return _json(key_json(await self.service.update(key_id, policy_change(body), name)))

    async def revoke(self, request: web.Request) -> web.StreamResponse:
        require_master(request, self.master_key)
        # Not resolved first: a name that several revoked keys had is no ambiguity here (the
        # service finishes the latest revocation), as an active key's name is.
        id_or_name = check_text(request.match_info["key_id"], "id")
        view = await self.service.revoke(id_or_name)
        if view is None:
            # Already revoked (told again): answered the same, so a retry succeeds.
            key_id = await self.service.revoked_id(id_or_name)
            if key_id is None:
                raise NotFound(f"No key with id or name {id_or_name!r}.", code="key_not_found")
            view = await self.service.view(key_id)
        return _json(key_json(view))

    async def credits(self, request: web.Request) -> web.StreamResponse:
        key_id = await self._key_id(request)
        body = await _body(request)
        _check_fields(body, frozenset({"amount_usd", "note"}))
        note = body.get("note")
        if note is not None and not isinstance(note, str):
            raise InvalidRequest("'note' must be a string.", param="note")
        if note is not None:
            check_text(note, "note")
        view = await self.service.add_credits(key_id, parse_usd(body.get("amount_usd"), "amount_usd"), note)
        return _json(key_json(view))

    async def reservations(self, request: web.Request) -> web.StreamResponse:
        holds = await self.service.reservations(await self._key_id(request))
        return _json({"object": "list", "data": [hold_json(h) for h in holds]})

    async def ledger(self, request: web.Request) -> web.StreamResponse:
        key_id = await self._key_id(request)
        limit = _limit_param(request) or 100
        after = request.query.get("after") or None
        if after is not None:
            check_text(after, "after")
        # One row more than the page: whether there is a next one.
        rows = await self.service.ledger(key_id, limit + 1, after)
        page = rows[:limit]
        return _json(
            {"object": "list", "data": [ledger_json(r) for r in page], "has_more": len(rows) > limit}
        )

    async def audit(self, request: web.Request) -> web.StreamResponse:
        require_master(request, self.master_key)
        return _json(audit_json(await self.service.audit()))

    async def instances(self, request: web.Request) -> web.StreamResponse:
        require_master(request, self.master_key)
        now = time.time()
        rows = await self.service.instances()
        return _json({"object": "list", "data": [instance_json(row, now) for row in rows]})

    async def release_instance(self, request: web.Request) -> web.StreamResponse:
        require_master(request, self.master_key)
        raw = await request.read()
        body = decode_json_object(raw) if raw.strip() else {}
        _check_fields(body, frozenset({"force"}))
        force = body.get("force", False)
        if not isinstance(force, bool):
            raise InvalidRequest("'force' must be a boolean.", param="force")
        instance_id = check_text(request.match_info["instance_id"], "instance_id")
        released = await self.service.release_instance(instance_id, force)
        return _json({"object": "instance.release", "id": instance_id, "released": released})


def add_account_routes(
    app: web.Application, service: AccountsService, pipeline: ChatPipeline, master_key: MasterKey
) -> None:
    api = AdminApi(service, master_key)
    app.router.add_post("/admin/keys", api.create)
    app.router.add_get("/admin/keys", api.list)
    app.router.add_get("/admin/keys/{key_id}", api.show)
    app.router.add_patch("/admin/keys/{key_id}", api.update)
    app.router.add_delete("/admin/keys/{key_id}", api.revoke)
    app.router.add_post("/admin/keys/{key_id}/revoke", api.revoke)
    app.router.add_post("/admin/keys/{key_id}/credits", api.credits)
    app.router.add_get("/admin/keys/{key_id}/reservations", api.reservations)
    app.router.add_get("/admin/keys/{key_id}/ledger", api.ledger)
    app.router.add_get("/admin/audit", api.audit)
    app.router.add_get("/admin/instances", api.instances)
    app.router.add_post("/admin/instances/{instance_id}/release", api.release_instance)

    async def me(request: web.Request) -> web.StreamResponse:
        key = await pipeline.authenticate(request)
        data = key_json(await service.view(key.id))
        # With metering off nothing holds the key to its balance, limits or budgets (shown as they
        # would apply): the key is told, not left to take itself for out of credit.
        data["metered"] = pipeline.metered
        # The caller knows its key already; its prefix is enough to say which one this is.
        return _json(data)

    app.router.add_get("/v1/me", me)
