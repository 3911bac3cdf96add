"""One loaded MiniLM for every trained router and judge, and the single worker thread it runs on.

Loaded by whichever model needs it first, on that worker (never on the event loop): loading takes
about half a second and ~175 MB, so the route policies share one copy instead of one each. A load
that fails is tried again only after a back-off (load_backoff.py); meanwhile `embed` raises
ModelUnavailable at once and each policy takes its fallback (routing/policies.py).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from faregate.embedding.load_backoff import BackedOffLoad
from faregate.embedding.model import ModelUnavailable

if TYPE_CHECKING:
    # onnxruntime (~40 MB) is imported only when the model is actually loaded.
    from faregate.embedding.embedder import Embedder, Vector

# What the route policies do while the model is unavailable (for the load's log line).
MEANWHILE = "trained routers send prompts to their strong model and learned judges escalate"


def _load_embedder() -> Embedder:
    from faregate.embedding.embedder import Embedder

    return Embedder.load()


class SharedEmbedder:
    """One MiniLM for every trained router and judge, loaded by whichever needs it first."""

    def __init__(
        self,
        loader: Callable[[], Embedder] = _load_embedder,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._load = BackedOffLoad(loader, meanwhile=MEANWHILE, clock=clock)
        self._lock = threading.Lock()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="faregate-policy")

    @property
    def loaded(self) -> bool:
        return self._load.loaded

    def unready(self) -> str | None:
        """None once the model is loaded (loading it now if it may be tried), else why it cannot
        be had. Blocking: run it on `executor`, like `embed`."""
        try:
            with self._lock:
                self._load.load()
        except ModelUnavailable as exc:
            return str(exc)
        return None

    def embed(self, texts: Sequence[str]) -> Vector:
        with self._lock:
            model = self._load.load()
        return model.embed(texts)

    def close(self) -> None:
        self.executor.shutdown(wait=False)
