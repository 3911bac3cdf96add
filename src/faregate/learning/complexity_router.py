"""A trained complexity router: how much a prompt needs the strong model, as one number.

The score is a logistic model over the prompt's MiniLM sentence embedding and a few cheap text
features (learning/text_features.py), trained by `faregate router train` on recorded outcomes to
predict "the weak model fails where the strong one succeeds" — the only prompts where paying for
the strong model buys anything. Sending the highest-scoring prompts to the strong model is what the
RouteLLM metrics (APGR, CPT) reward. The trained router is one small JSON file (learning/model_file.py)
that a route config points at.

Scoring cost, measured on this shared 2-core machine with one embedding thread, one prompt at a
time (`faregate router eval --timing N` measures it): short chat prompts p50 8 ms / p95 10 ms;
GSM8K questions (~60-100 tokens) p50 21 ms / p95 35 ms; MMLU questions (up to the 256-token cut)
p50 25 ms / p95 106 ms. Nearly all of it is the embedding; the text features and the dot product
take 0.05-0.2 ms. The request path uses `score_async`, which runs on a single worker thread,
never on the event loop.

A threshold turns the score into a model (learning/thresholds.py): fixed; a target share of strong
calls over recent prompts; or a target quality, read off the calibration curve stored in the file.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from faregate.learning.linear import Array
from faregate.learning.model_file import ModelFile, load_model_file
from faregate.learning.text_features import PROMPT_NAMES, last_user_text, prompt_features
from faregate.learning.thresholds import DEFAULT_WINDOW, Threshold, share_for_quality

if TYPE_CHECKING:
    # onnxruntime (~40 MB) is imported only when a model is actually loaded.
    from faregate.embedding.embedder import Vector

KIND = "complexity-router"


class SentenceEmbedder(Protocol):
    """What scoring needs from the embedder: unit vectors, long texts cut at the model's limit."""

    def embed(self, texts: Sequence[str]) -> Vector: ...


def prompt_matrix(texts: Sequence[str], vectors: Array | Vector) -> Array:
    """The router's inputs, one row per prompt: the embedding, then the hand-made features."""
    hand = np.stack([prompt_features(t) for t in texts]) if texts else np.zeros((0, len(PROMPT_NAMES)))
    return np.hstack([np.asarray(vectors, dtype=np.float64), hand])


class ComplexityRouter:
    """Scores prompts with a trained file; picks the strong or weak model through a Threshold.

    Not thread-safe for scoring by contract (the embedder is not): call `score` from one thread,
    or `score_async` from the event loop, which serialises on the router's single worker.
    """

    def __init__(
        self,
        file: ModelFile,
        *,
        embedder: SentenceEmbedder | None = None,
        executor: Executor | None = None,
    ) -> None:
        if file.embedded != ("prompt",):
            raise ValueError("a complexity router file must embed the prompt")
        self.file = file
        self._embedder = embedder
        # One worker: the embedder is single-threaded, and the other core serves requests.
        self._owns_executor = executor is None
        self._executor = executor or ThreadPoolExecutor(max_workers=1, thread_name_prefix="faregate-router")

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        embedder: SentenceEmbedder | None = None,
        executor: Executor | None = None,
    ) -> ComplexityRouter:
        """Read a trained router. The embedding model loads lazily on first use (on the worker).

        Pass `embedder` and `executor` to share one loaded MiniLM and its thread with the
        semantic cache instead of loading a second copy (~175 MB)."""
        return cls(load_model_file(path, KIND, PROMPT_NAMES), embedder=embedder, executor=executor)

    @property
    def strong(self) -> str:
        return self.file.strong

    @property
    def weak(self) -> str:
        return self.file.weak

    @property
    def training(self) -> Mapping[str, Any]:
        return self.file.training

    def _model(self) -> SentenceEmbedder:
        if self._embedder is None:
            from faregate.embedding.embedder import Embedder

            self._embedder = Embedder.load()
        return self._embedder

    def score_vectors(self, texts: Sequence[str], vectors: Array | Vector) -> Array:
        """Scores for prompts whose embeddings are already known (training, replay)."""
        return self.file.model.predict(prompt_matrix(texts, vectors))

    def score_many(self, texts: Sequence[str]) -> Array:
        return self.score_vectors(texts, self._model().embed(list(texts)))

    def score(self, text: str) -> float:
        """P(weak fails and strong succeeds) for one prompt, by the trained model. Blocking."""
        return float(self.score_many([text])[0])

    async def score_async(self, text: str) -> float:
        """`score` on the router's worker thread: the event loop never waits on the model."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, self.score, text)

    async def score_request(self, body: Mapping[str, Any]) -> float:
        return await self.score_async(last_user_text(body))

    def score_with_vector(self, text: str) -> tuple[float, Any]:
        """The score and the prompt's unit embedding it was computed from (domain learning reuses
        it: one embedding per request). Blocking."""
        vectors = self._model().embed([text])
        return float(self.score_vectors([text], vectors)[0]), np.asarray(vectors[0], dtype=np.float32)

    async def score_request_with_vector(self, body: Mapping[str, Any]) -> tuple[float, Any]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self.score_with_vector, last_user_text(body))

    # -- thresholds ------------------------------------------------------------------------------------

    def fixed_threshold(self, value: float) -> Threshold:
        return Threshold.fixed(value)

    def share_threshold(self, share: float, *, window: int = DEFAULT_WINDOW) -> Threshold:
        """Send about `share` of recent prompts to the strong model (warm start: training scores)."""
        return Threshold(share=share, reference=self.file.reference_scores, window=window)

    def quality_threshold(self, retain: float, *, window: int = DEFAULT_WINDOW) -> Threshold:
        """Keep `retain` (e.g. 0.95) of the strong model's accuracy, by the file's calibration curve:
        the least strong-call share that kept that much on held-out training folds, held as a share."""
        if not self.file.calibration:
            raise ValueError("this router file has no calibration curve; set a threshold or a share")
        return self.share_threshold(self.strong_share_for(retain), window=window)

    def strong_share_for(self, retain: float) -> float:
        return share_for_quality(self.file.calibration, retain)

    def choose(self, score: float, threshold: Threshold) -> str:
        """The model for a scored prompt; records the score when the threshold follows a share."""
        return self.strong if threshold.decide(score) else self.weak

    async def route(self, body: Mapping[str, Any], threshold: Threshold) -> tuple[str, float]:
        """Score a chat request off the loop, then pick its model: (model, score)."""
        score = await self.score_request(body)
        return self.choose(score, threshold), score

    def close(self) -> None:
        """Stop the worker thread if the router made it (a shared executor belongs to its owner)."""
        if self._owns_executor and isinstance(self._executor, ThreadPoolExecutor):
            self._executor.shutdown(wait=False)
