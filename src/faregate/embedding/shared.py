"""One loaded MiniLM for every trained router and judge, and the single worker thread it runs on.

Loaded by whichever model needs it first, on that worker (never on the event loop): loading takes
about half a second and ~175 MB, so the route policies share one copy instead of one each.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    # onnxruntime (~40 MB) is imported only when the model is actually loaded.
    from faregate.embedding.embedder import Embedder, Vector


class SharedEmbedder:
    """One MiniLM for every trained router and judge, loaded by whichever needs it first."""

    def __init__(self) -> None:
        self._model: Embedder | None = None
        self._lock = threading.Lock()
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="faregate-policy")

    def embed(self, texts: Sequence[str]) -> Vector:
        with self._lock:
            if self._model is None:
                from faregate.embedding.embedder import Embedder

                self._model = Embedder.load()
        return self._model.embed(texts)

    def close(self) -> None:
        self.executor.shutdown(wait=False)
