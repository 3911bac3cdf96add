"""The JSON file of a trained scorer (complexity router or cascade judge): weights and provenance.

One format for both, told apart by `kind`:

    {
      "format": "faregate.scorer/1",
      "kind": "complexity-router" | "cascade-judge",
      "features": {"embedding": "<embedder model sha256>:<max tokens>" | null,
                   "embedded": ["prompt"] | ["question", "answer"] | [],   # texts embedded, in order
                   "text": [hand-made feature names, in order]},
      "model": {"mean": [...], "scale": [...], "weights": [...], "bias": b, "l2": l},
      "models": {"strong": "...", "weak": "..."},
      "calibration": [{"share": s, "retained": r, "pgr": p}, ...],   # held-out folds of training data
      "reference_scores": [101 quantiles of the final model's scores on its training prompts],
      "training": {seed, split, data, prompts, chosen hyperparameters, CV table, ...}
    }

Loading refuses other formats, a different embedding model, and feature lists that differ from
this code's: a stale file fails loudly at start-up instead of scoring wrongly.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from faregate.embedding.model import DIMENSIONS, MAX_TOKENS, MODEL_SHA256
from faregate.learning.linear import LinearModel
from faregate.learning.thresholds import CalibrationPoint

FORMAT = "faregate.scorer/1"
EMBEDDING_ID = f"{MODEL_SHA256}:{MAX_TOKENS}"


@dataclass(slots=True)
class ModelFile:
    kind: str
    text_features: tuple[str, ...]
    embedding: str | None
    # Which texts are embedded, in the order their vectors lead the feature row.
    embedded: tuple[str, ...]
    model: LinearModel
    strong: str
    weak: str
    calibration: list[CalibrationPoint] = field(default_factory=list)
    reference_scores: list[float] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)

    def digest(self) -> str:
        """What the trained scorer is, its provenance aside: a hash of its kind, features and
        weights (a retrained or replaced file has another; quality/route_state.py)."""
        scorer = {k: v for k, v in self.to_json().items() if k in ("kind", "features", "model")}
        return hashlib.sha256(json.dumps(scorer, sort_keys=True).encode()).hexdigest()[:16]

    def decisions_digest(self) -> str:
        """What decides with this file, its provenance (`training`) aside: the scorer, the models it
        names, its calibration curve and reference scores (which place a share's or a quality
        target's threshold). A file retrained in place has another; the same file on another
        machine, under another path, the same (routing/routes.py: the cache's route digest)."""
        decisive = {k: v for k, v in self.to_json().items() if k != "training"}
        return hashlib.sha256(json.dumps(decisive, sort_keys=True).encode()).hexdigest()[:16]

    def to_json(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "kind": self.kind,
            "features": {
                "embedding": self.embedding,
                "embedded": list(self.embedded),
                "text": list(self.text_features),
            },
            "model": self.model.to_json(),
            "models": {"strong": self.strong, "weak": self.weak},
            "calibration": [
                {"share": p.share, "retained": p.retained, "pgr": p.pgr} for p in self.calibration
            ],
            "reference_scores": list(self.reference_scores),
            "training": self.training,
        }

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n", encoding="utf-8")


def load_model_file(path: str | Path, kind: str, text_features: tuple[str, ...]) -> ModelFile:
    source = Path(path)
    try:
        data = json.loads(source.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"{source}: cannot read a trained {kind}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{source}: not a {FORMAT} file")
    try:
        return _parse(source, data, kind, text_features)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{source}: malformed {kind} file ({exc!r})") from None


def _parse(source: Path, data: dict[str, Any], kind: str, text_features: tuple[str, ...]) -> ModelFile:
    if data.get("kind") != kind:
        raise ValueError(f"{source}: holds a {data.get('kind')!r}, not a {kind!r}")
    features = data["features"]
    if tuple(features["text"]) != text_features:
        raise ValueError(f"{source}: trained on other text features than this version computes; retrain it")
    embedding = features.get("embedding")
    if embedding is not None and embedding != EMBEDDING_ID:
        raise ValueError(f"{source}: trained on another embedding model ({embedding}); retrain it")
    embedded = tuple(str(t) for t in features.get("embedded", []))
    if (embedding is None) != (not embedded):
        raise ValueError(f"{source}: embedded texts listed without an embedding model, or the reverse")
    model = LinearModel.from_json(data["model"])
    expected = len(text_features) + DIMENSIONS * len(embedded)
    if model.dimensions != expected:
        raise ValueError(f"{source}: the model has {model.dimensions} weights, expected {expected}")
    return ModelFile(
        kind=kind,
        text_features=text_features,
        embedding=embedding,
        embedded=embedded,
        model=model,
        strong=str(data["models"]["strong"]),
        weak=str(data["models"]["weak"]),
        calibration=[
            CalibrationPoint(float(p["share"]), float(p["retained"]), float(p["pgr"]))
            for p in data.get("calibration", [])
        ],
        reference_scores=[float(v) for v in data.get("reference_scores", [])],
        training=dict(data.get("training", {})),
    )
