"""One versioned schema step, the unit both stores migrate by (store/sqlite/migrations.py,
store/postgres/migrations.py: each its own numbering).

Append only: a released migration is never edited, a change is a new version. A store applies
the versions it lacks in order, in one transaction together with their rows in
`schema_migrations`, so a database is never left half-migrated.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class Migration:
    version: int
    name: str
    # One statement per item: sqlite3 can only run a multi-statement script outside a transaction.
    statements: tuple[str, ...]
