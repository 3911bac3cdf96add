"""What one request record adds to a total: the one definition every total of records is built from.

The dashboard, the alerts and `faregate usage` read TOTAL_COLUMNS, `faregate cost --from-records`
TRAFFIC_COLUMNS, all through the analytics queries (store/sqlite/analytics.py,
store/postgres/analytics.py), which sum these expressions over request_records, or read their
hourly sums from the rollups (which add the same expressions). Plain SQL that SQLite and
PostgreSQL read alike; money is summed as integer nano-dollars, except the traffic's exact cost.
"""

from __future__ import annotations

HOUR = 3600
# Records per transaction while catching up.
CHUNK = 20_000

# Requests that failed entirely have no model_used; they count against the model asked for.
# `{t}` is a table alias and a dot when a query joins (feedback), else nothing.
GROUP_SQL: dict[str, str] = {
    "model": "COALESCE({t}model_used, {t}model_requested)",
    "provider": "{t}provider",
    "key": "{t}key_id",
    "route": "{t}route",
    "wire": "{t}wire",
}
CACHE_HIT = "cache_status IN ('hit', 'semantic-hit')"


def flag(condition: str) -> str:
    return f"CASE WHEN {condition} THEN 1 ELSE 0 END"


# (column of rollup_hourly, the value one record adds to it). Every one is read from the columns
# of the covering index `request_records_dashboard`, so raw scans never touch the table rows.
TOTAL_COLUMNS: tuple[tuple[str, str], ...] = (
    ("requests", "1"),
    ("errors", flag("status >= 500")),
    ("client_errors", flag("status >= 400 AND status < 500")),
    ("budget_refusals", flag("status = 402")),
    ("rate_limited", flag("status = 429")),
    ("cost_nanousd", "cost_nanousd"),
    ("baseline_nanousd", "baseline_cost_nanousd"),
    ("prompt_tokens", "prompt_tokens"),
    ("completion_tokens", "completion_tokens"),
    ("cache_lookups", flag("cache_status <> 'bypass'")),
    ("cache_hits", flag("cache_status = 'hit'")),
    ("semantic_hits", flag("cache_status = 'semantic-hit'")),
    ("cache_saved_nanousd", f"CASE WHEN {CACHE_HIT} THEN baseline_cost_nanousd - cost_nanousd ELSE 0 END"),
    ("empty_responses", "empty_response"),
)
# A fallback and a retry (worked out when the record is made: store/rows.py, attempt_summary) among
# the requests taken on: one that still ended in a 4xx (the last upstream refused the input) is a
# refusal, out of the rates as it is out of the error rate's (ReliabilityRow.taken_on).
_TAKEN_ON = "NOT (status >= 400 AND status < 500)"
EVENT_COLUMNS: tuple[tuple[str, str], ...] = (
    ("fallbacks", f"CASE WHEN {_TAKEN_ON} THEN fell_back ELSE 0 END"),
    ("retried", f"CASE WHEN {_TAKEN_ON} THEN retried ELSE 0 END"),
)
# The rollup's dimensions: '' (every record) and one per group.
ROLLUP_DIMS: tuple[tuple[str, str], ...] = (("", "''"), *((d, s.format(t="")) for d, s in GROUP_SQL.items()))

# Re-pricing recorded traffic on another model (faregate cost --from-records, analytics_rows.Traffic):
# cache hits cost nothing on any model, so only billed requests' tokens count. The cost beside
# them is summed exactly from cost_usd, each dialect its own way.
BILLED = "cache_status IN ('bypass', 'miss')"
# It groups by the model that served: a request none served (refused, or failed on every
# provider) falls in the '' group, apart, not under the model it asked for as GROUP_SQL counts it.
SERVED_MODEL = "COALESCE(model_used, '')"
TRAFFIC_COLUMNS: tuple[tuple[str, str], ...] = (
    ("requests", "1"),
    ("cache_hits", flag(CACHE_HIT)),  # served: a hit refused before it was (hit-refused) is none
    ("prompt_tokens", f"CASE WHEN {BILLED} THEN prompt_tokens ELSE 0 END"),
    ("completion_tokens", f"CASE WHEN {BILLED} THEN completion_tokens ELSE 0 END"),
)
