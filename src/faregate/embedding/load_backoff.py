"""A model load that, once failed, is tried again only after a back-off.

Loading the embedding model costs its worker about half a second; with corrupt or missing files
every caller trying it again (and logging a traceback) would be a storm under load. Shared by
the semantic cache's embedder (embedder.AsyncEmbedder) and the one the trained routers and
learned judges share (shared.SharedEmbedder). Kept free of onnxruntime, like model.py.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Generic, TypeVar

from faregate.embedding.model import ModelUnavailable

M = TypeVar("M")

log = logging.getLogger("faregate.embedding")

# A failed load is tried again after this long, then twice as long each time up to the most.
LOAD_RETRY_S = 30.0
LOAD_RETRY_MAX_S = 600.0


class BackedOffLoad(Generic[M]):
    """`load()` the model, or raise ModelUnavailable without trying while a failed load's
    back-off runs. One log line per try, the traceback once. Not thread-safe: its owner calls it
    from one thread at a time (its single worker, or under its lock)."""

    def __init__(
        self,
        loader: Callable[[], M],
        *,
        meanwhile: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._loader = loader
        # What its users do while the model is unavailable, for the log ("the semantic cache misses").
        self._meanwhile = meanwhile
        self._clock = clock
        self._model: M | None = None
        # Why the last load failed, and when the next may be tried.
        self._failure: str | None = None
        self._retry_at = 0.0
        self._retry_s = LOAD_RETRY_S

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def unavailable(self) -> str | None:
        """Why the model cannot be had now (a failed load whose back-off runs), else None: a
        cheap check for callers that would otherwise hand work to a worker, or pay for a call,
        only to fail."""
        if self._model is None and self._failure is not None and self._clock() < self._retry_at:
            return self._failure
        return None

    def load(self) -> M:
        if self._model is not None:
            return self._model
        failure = self.unavailable()
        if failure is not None:
            raise ModelUnavailable(failure)
        try:
            self._model = self._loader()
        except Exception as exc:
            first = self._failure is None
            self._failure = f"the embedding model failed to load ({type(exc).__name__}: {exc})"
            self._retry_at = self._clock() + self._retry_s
            log.log(
                logging.ERROR if first else logging.WARNING,
                "the embedding model failed to load (%s: %s); %s until it is tried again in %.0f s",
                type(exc).__name__,
                exc,
                self._meanwhile,
                self._retry_s,
                exc_info=first,
            )
            self._retry_s = min(self._retry_s * 2, LOAD_RETRY_MAX_S)
            raise ModelUnavailable(self._failure) from exc
        if self._failure is not None:
            log.warning("the embedding model loaded after all, on a try after a failed load")
            self._failure = None
        return self._model
