"""JSON shapes of keys, holds, ledger rows and audits, shared by the admin API, /v1/me and the CLI.

Money is a decimal string in USD ("0.00082"): exact, and what the API accepts back.
"""

from __future__ import annotations

from typing import Any

from faregate.accounts.backend import AuditReport
from faregate.accounts.money import usd_text
from faregate.accounts.service import KeyView
from faregate.store.holds import HoldRow, InstanceRow
from faregate.store.protocols import LedgerRow


def key_json(view: KeyView) -> dict[str, Any]:
    key, policy = view.key, view.policy
    return {
        "id": key.id,
        "object": "api_key",
        "name": key.name,
        "prefix": key.prefix,
        "premium": key.premium,
        "created_at": key.created_at,
        "revoked_at": key.revoked_at,
        "balance_usd": usd_text(view.balance_nano),
        "reserved_usd": usd_text(view.held_nano),
        "spend_usd": {"today": usd_text(view.today_nano), "this_month": usd_text(view.month_nano)},
        "limits": {
            "requests_per_minute": view.limits.requests_per_minute,
            "tokens_per_minute": view.limits.tokens_per_minute,
            "max_request_usd": None if policy.max_request_nano is None else usd_text(policy.max_request_nano),
            # Which limits are the key's own (the others come from its tier's defaults).
            "own": [
                name
                for name, value in (
                    ("requests_per_minute", policy.requests_per_minute),
                    ("tokens_per_minute", policy.tokens_per_minute),
                )
                if value is not None
            ],
        },
        "budgets": [
            {
                **spend.window.budget.to_json(),
                "spent_usd": usd_text(spend.spent_nano),
                "remaining_usd": usd_text(max(0, spend.window.budget.limit_nano - spend.spent_nano)),
                "resets_at": spend.window.resets_at,
            }
            for spend in view.budgets
        ],
    }


def hold_json(hold: HoldRow) -> dict[str, Any]:
    return {
        "id": hold.hold_id,
        "request_id": hold.request_id,
        "reserved_usd": usd_text(hold.amount_nano),
        "tokens": hold.tokens,
        "created_at": hold.created_at,
        "expires_at": hold.expires_at,
    }


def instance_json(row: InstanceRow, now: float) -> dict[str, Any]:
    return {
        "id": row.instance_id,
        "object": "instance",
        "alive": row.alive(now),
        "lease_until": row.lease_until,
        "holds": row.holds,
        "started_at": row.started_at,
        "host": row.host,
        "pid": row.pid,
    }


def ledger_json(row: LedgerRow) -> dict[str, Any]:
    return {
        "id": row.entry_id,
        "kind": row.kind,
        "amount_usd": usd_text(row.amount_nano),
        "cost_usd": None if row.cost_nano is None else usd_text(row.cost_nano),
        "hold_id": row.hold_id,
        "request_id": row.request_id,
        "created_at": row.created_at,
        "note": row.note,
    }


def audit_json(report: AuditReport) -> dict[str, Any]:
    return {
        "clean": report.clean,
        "accounts": report.accounts,
        "entries": report.entries,
        "problems": report.problems,
    }
