"""Sentence vectors of many texts, cached on disk by text hash, so training re-runs do not re-embed.

Embedding the 7,279 MMLU prompts and the GSM8K questions and answers takes minutes on this
machine's shared cores; a re-run with the same texts loads them in milliseconds. Each text is keyed
by the SHA-256 of (model digest, max tokens, text), so one store serves any subset or order of
texts and never mixes vectors of different weights. Long texts are cut at the model's limit (as
sentence-transformers does) rather than skipped: a router still needs a vector for a long prompt.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import numpy as np

from faregate.embedding.embedder import DIMENSIONS, MAX_TOKENS, MODEL_SHA256, Embedder, Vector

Progress = Callable[[int, int], None]
# Texts embedded between saves: a long run that is stopped keeps most of its work.
SAVE_EVERY = 512
KEY_BYTES = 16


class BatchEmbedder(Protocol):
    """The real Embedder, or a test double: unit vectors, and the token limit they were cut at."""

    @property
    def max_tokens(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> Vector: ...


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "faregate" / "router"


class VectorCache:
    """A dict from text to unit vector, persisted as one .npz of (keys, vectors)."""

    def __init__(self, directory: Path, max_tokens: int) -> None:
        self.path = directory / f"vectors-{MODEL_SHA256[:12]}-{max_tokens}.npz"
        self._salt = f"{MODEL_SHA256}:{max_tokens}:".encode()
        self._index: dict[bytes, int] = {}
        self._rows: list[Vector] = []
        if self.path.exists():
            with np.load(self.path) as stored:
                keys, vectors = stored["keys"], stored["vectors"]
            if (
                keys.shape[1:] == (KEY_BYTES,)
                and vectors.shape[1:] == (DIMENSIONS,)
                and len(keys) == len(vectors)
            ):
                self._index = {k.tobytes(): i for i, k in enumerate(keys)}
                self._rows = list(vectors.astype(np.float32))

    def key(self, text: str) -> bytes:
        return hashlib.sha256(self._salt + text.encode("utf-8")).digest()[:KEY_BYTES]

    def missing(self, texts: Sequence[str]) -> list[str]:
        return list(dict.fromkeys(t for t in texts if self.key(t) not in self._index))

    def add(self, texts: Sequence[str], vectors: Vector) -> None:
        for text, vector in zip(texts, vectors, strict=True):
            key = self.key(text)
            if key not in self._index:
                self._index[key] = len(self._rows)
                self._rows.append(np.asarray(vector, dtype=np.float32))

    def get(self, texts: Sequence[str]) -> Vector:
        rows = [self._index[self.key(t)] for t in texts]
        table = np.stack(self._rows) if self._rows else np.zeros((0, DIMENSIONS), np.float32)
        result: Vector = table[rows] if rows else np.zeros((0, DIMENSIONS), np.float32)
        return result

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # Raw bytes as uint8 rows: a fixed-width bytes dtype would drop a key's trailing zero bytes.
        keys = np.frombuffer(b"".join(self._index), dtype=np.uint8).reshape(-1, KEY_BYTES)
        vectors = np.stack(self._rows) if self._rows else np.zeros((0, DIMENSIONS), np.float32)
        # Write then rename: a run killed mid-save leaves the previous file whole.
        partial = self.path.with_suffix(".partial.npz")
        np.savez(partial, keys=keys, vectors=vectors)
        partial.replace(self.path)


def embed_texts(
    texts: Sequence[str],
    cache_dir: Path | None = None,
    *,
    embedder: BatchEmbedder | None = None,
    progress: Progress | None = None,
) -> Vector:
    """Unit vectors of texts (one row each, in order), computing only those not cached yet.

    `cache_dir=None` uses ~/.cache/faregate/router. The model is loaded only if something is
    missing, with one thread: the machine is shared and the other core serves other work.
    """
    max_tokens = embedder.max_tokens if embedder is not None else MAX_TOKENS
    cache = VectorCache(cache_dir or default_cache_dir(), max_tokens)
    todo = cache.missing(texts)
    if todo:
        model: BatchEmbedder = embedder or Embedder.load()
        for start in range(0, len(todo), SAVE_EVERY):
            chunk = todo[start : start + SAVE_EVERY]
            cache.add(chunk, model.embed(chunk))
            cache.save()
            if progress is not None:
                progress(min(start + SAVE_EVERY, len(todo)), len(todo))
    return cache.get(texts)
