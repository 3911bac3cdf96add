"""What the alerts posted, kept in the store so that a restart neither posts a firing alert again
nor forgets to post its resolution (telemetry/alerts.py). Only the process that posts to the
webhook keeps it: the one whose posts the receiver has seen."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import orjson


@dataclass(slots=True, frozen=True)
class FiredAlert:
    """A firing alert: its rule's name, subject (None: not per anything) and what was posted."""

    rule: str
    subject: str | None
    label: str | None
    value: float
    pending_since: float
    fired_at: float

    @property
    def alert(self) -> str:
        """The row's key: rule and subject as a JSON pair (any text in either, None apart from "")."""
        return alert_key(self.rule, self.subject)

    def state_json(self) -> str:
        state = {
            "label": self.label,
            "value": self.value,
            "pending_since": self.pending_since,
            "fired_at": self.fired_at,
        }
        return orjson.dumps(state).decode()

    @classmethod
    def from_row(cls, alert: str, state: str) -> FiredAlert:
        rule, subject = orjson.loads(alert)
        fields = orjson.loads(state)
        return cls(
            rule,
            subject,
            fields["label"],
            float(fields["value"]),
            float(fields["pending_since"]),
            float(fields["fired_at"]),
        )


def alert_key(rule: str, subject: str | None) -> str:
    return orjson.dumps([rule, subject]).decode()


class AlertMemory(Protocol):
    async def fired(self) -> list[FiredAlert]:
        """Every alert remembered as firing."""
        ...

    async def remember(self, alert: FiredAlert) -> None: ...

    async def forget(self, rule: str, subject: str | None) -> None: ...
