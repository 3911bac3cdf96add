"""Rate-limited logging of repeated failures: one line per kind of failure per interval.

During an outage every request fails the same way; logging each one (with its traceback) wrote
megabytes a second and buried everything else. `RepeatFilter` sits on the log handlers: the
first record of a kind (logger, level, message template, exception type) goes through whole;
more of the same within `interval_s` are counted, not written; the next one after the interval
goes through as one line that says how many were held back. Records of other kinds are never
held back by these, nor records logged with `extra=EVERY_LINE`: events each of their own (an
alert firing) that share a message template without repeating one another.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

DEFAULT_INTERVAL_S = 10.0
# Kinds remembered; the least recently seen is forgotten beyond this (it then counts as new).
MAX_KINDS = 1000

Kind = tuple[str, int, str, str]

# `extra=` for a line that is an event of its own, never a repeat: always written.
EVERY_LINE = {"faregate_every_line": True}


@dataclass(slots=True)
class _Seen:
    last_written: float
    held_back: int = 0


class RepeatFilter(logging.Filter):
    def __init__(
        self, interval_s: float = DEFAULT_INTERVAL_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        super().__init__()
        self.interval_s = interval_s
        self._clock = clock
        self._seen: OrderedDict[Kind, _Seen] = OrderedDict()

    @staticmethod
    def kind(record: logging.LogRecord) -> Kind:
        error = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else ""
        return (record.name, record.levelno, str(record.msg), error)

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "faregate_every_line", False):
            return True
        now = self._clock()
        kind = self.kind(record)
        seen = self._seen.get(kind)
        if seen is None:
            self._seen[kind] = _Seen(now)
            if len(self._seen) > MAX_KINDS:
                self._seen.popitem(last=False)
            return True
        self._seen.move_to_end(kind)
        if now - seen.last_written < self.interval_s:
            seen.held_back += 1
            return False
        if seen.held_back or record.exc_info:
            # Formatted now (args cleared), so the note needs no escaping of its own.
            text = record.getMessage()
            if seen.held_back:
                text += f" [{seen.held_back} more like this in the last {now - seen.last_written:.0f}s]"
            if record.exc_info:
                # The traceback was written with the first one; later ones get the exception's line.
                error = record.exc_info[1]
                text += f" ({type(error).__name__}: {error})"
                record.exc_info = None
                record.exc_text = None
            record.msg, record.args = text, None
        seen.last_written = now
        seen.held_back = 0
        return True


def install(logger: logging.Logger | None = None, interval_s: float = DEFAULT_INTERVAL_S) -> RepeatFilter:
    """Put one RepeatFilter on every handler of `logger` (the root logger by default)."""
    repeat = RepeatFilter(interval_s)
    for handler in (logger or logging.getLogger()).handlers:
        handler.addFilter(repeat)
    return repeat
