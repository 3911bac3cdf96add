"""The complexity router: training on a split, the model file, scoring, thresholds, held-out quality.

The embedding model is replaced by a hashed bag-of-words embedder (fast, deterministic, and it
carries the words' signal), except in the command-line test, which runs the real MiniLM on a few
dozen short prompts.
"""

from __future__ import annotations

import csv
import hashlib
import json
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import typer
from typer.testing import CliRunner

from faregate.cli import router as router_cli
from faregate.embedding.embedder import DIMENSIONS, Vector
from faregate.evals.replay.engine import Pair
from faregate.evals.replay.outcomes import STRONG_MODEL, WEAK_MODEL, load_outcomes
from faregate.evals.replay.router_eval import evaluate
from faregate.learning.complexity_router import ComplexityRouter
from faregate.learning.linear import LinearModel
from faregate.learning.thresholds import CalibrationPoint, Threshold, share_for_quality
from faregate.learning.training.fit import RouterModel, Trained, train_router
from faregate.learning.training.logistic import fit_logistic
from faregate.learning.training.selection import Candidate, Grid, SplitSpec, split_outcomes

HARD = ["integral", "derivative", "eigenvalue", "compute", "prove", "theorem", "matrix", "lemma"]
# Two penalties, two embedding weights: the real grid's shape, a fraction of its fits.
SMALL_GRID = Grid(l2=(10.0, 300.0), embedding_penalty=(1.0, 100.0))
EASY = ["capital", "colour", "animal", "river", "city", "flower", "song", "holiday"]


class HashEmbedder:
    """Bag of hashed words, L2-normalised: similar words -> similar vectors, no model to load."""

    max_tokens = 10_000  # a cache key of its own: never mixed with the real model's vectors

    def __init__(self) -> None:
        self.threads: set[str] = set()

    def embed(self, texts: Sequence[str]) -> Vector:
        self.threads.add(threading.current_thread().name)
        out = np.zeros((len(texts), DIMENSIONS), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in text.lower().split():
                out[row, int(hashlib.md5(word.encode()).hexdigest(), 16) % DIMENSIONS] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        result: Vector = out / np.maximum(norms, 1e-9)
        return result


def write_subjects(directory: Path, subjects: int = 6, per_subject: int = 40, seed: int = 1) -> Path:
    """MMLU-like data: several subject files; hard prompts are where only the strong model is right."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for s in range(subjects):
        with (directory / f"mmlu_subject{s}.csv").open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["prompt", WEAK_MODEL, STRONG_MODEL])
            for i in range(per_subject):
                hard = rng.random() < 0.4
                words = rng.choice(HARD if hard else EASY, size=3)
                prompt = f"Question {s}-{i}: {' '.join(words)} of item {i} in set {s}?"
                # 90% of hard prompts need the strong model; easy ones both models get right.
                weak_ok = (not hard) or rng.random() < 0.1
                writer.writerow([prompt, weak_ok, True])
    return directory


def trained_on_subjects(root: Path, model_kind: RouterModel = "linear") -> tuple[Path, Trained, Path]:
    """A router of `model_kind` trained on write_subjects' data in `root`, half the subjects held
    out: the data, the training's result and the file it is saved in."""
    data = write_subjects(root / "mmlu")
    split = split_outcomes(load_outcomes(data, drop_contaminated=False), SplitSpec("source", 0.5, 0))
    result = train_router(
        split,
        Pair(),
        seed=0,
        repeats=2,
        cache_dir=root / "cache",
        embedder=HashEmbedder(),
        grid=SMALL_GRID,
        model_kind=model_kind,
    )
    path = root / "router.json"
    result.file.save(path)
    return data, result, path


def assert_beats_random(data: Path, router: ComplexityRouter, cache_dir: Path) -> None:
    evaluation = evaluate(
        load_outcomes(data, drop_contaminated=False),
        router=router.file,
        cache_dir=cache_dir,
        embedder=HashEmbedder(),
    )
    by_name = {c.name: c.metrics for c in evaluation.curves}
    assert by_name["complexity router"].apgr > by_name["random (seed 0)"].apgr + 0.2


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("router")
    data, _, path = trained_on_subjects(root)
    return data, path, root / "cache"


def test_split_by_subject_holds_out_whole_subjects(tmp_path: Path) -> None:
    outcomes = load_outcomes(write_subjects(tmp_path / "d"), drop_contaminated=False)
    split = split_outcomes(outcomes, SplitSpec("source", 0.5, 0))
    train_sources = {r.source for r in split.train.records}
    test_sources = {r.source for r in split.test.records}
    assert train_sources and test_sources and not train_sources & test_sources
    assert test_sources == set(split.test_sources)
    again = split_outcomes(outcomes, SplitSpec("source", 0.5, 0))
    assert again.test_sources == split.test_sources  # the seed fixes it
    rows = split_outcomes(outcomes, SplitSpec("row", 0.25, 3))
    assert len(rows.test) == round(len(outcomes) * 0.25)
    assert not {r.prompt for r in rows.test.records} & {r.prompt for r in rows.train.records}


def test_trained_file_loads_and_scores_deterministically(trained: tuple[Path, Path, Path]) -> None:
    _, path, _ = trained
    data = json.loads(path.read_text())
    assert data["kind"] == "complexity-router" and data["features"]["embedded"] == ["prompt"]
    assert data["training"]["seed"] == 0 and data["training"]["split"]["by"] == "source"
    assert data["training"]["split"]["test_sources"]
    assert len(data["reference_scores"]) == 101 and data["calibration"][0]["share"] == 0.0
    first = ComplexityRouter.load(path, embedder=HashEmbedder())
    second = ComplexityRouter.load(path, embedder=HashEmbedder())
    prompt = "Question: compute the eigenvalue of the matrix?"
    score = first.score(prompt)
    assert 0.0 < score < 1.0
    assert first.score(prompt) == score == second.score(prompt)
    assert first.score(prompt) > first.score("Question: the capital city of the river holiday?")
    # The JSON round trip is exact, float for float.
    model = first.file.model
    again = LinearModel.from_json(json.loads(json.dumps(model.to_json())))
    for name in ("mean", "scale", "weights"):
        assert np.array_equal(getattr(again, name), getattr(model, name))
    assert again.bias == model.bias


def test_held_out_subjects_beat_random_and_length(trained: tuple[Path, Path, Path]) -> None:
    """A broken model (sign flip, misaligned features, training on noise) would fail this."""
    data, path, cache = trained
    router = ComplexityRouter.load(path)
    evaluation = evaluate(
        load_outcomes(data, drop_contaminated=False),
        router=router.file,
        cache_dir=cache,
        embedder=HashEmbedder(),
    )
    by_name = {c.name: c.metrics for c in evaluation.curves}
    oracle = next(m for m in evaluation.reference if m.name == "oracle")
    # Near the oracle (which here needs ~36% strong calls, so its APGR is ~0.82), far above random.
    assert 0.9 * oracle.apgr < by_name["complexity router"].apgr <= oracle.apgr + 1e-9
    assert by_name["complexity router"].apgr > by_name["random (seed 0)"].apgr + 0.2
    # The held-out prompts are exactly the subjects the file says were held out.
    assert evaluation.split["test_sources"] == router.training["split"]["test_sources"]


def test_eval_refuses_data_the_model_was_not_trained_on(
    trained: tuple[Path, Path, Path], tmp_path: Path
) -> None:
    _, path, cache = trained
    other = load_outcomes(write_subjects(tmp_path / "other", seed=7), drop_contaminated=False)
    with pytest.raises(ValueError, match="differs"):
        evaluate(other, router=ComplexityRouter.load(path).file, cache_dir=cache, embedder=HashEmbedder())


async def test_score_async_runs_off_the_event_loop(trained: tuple[Path, Path, Path]) -> None:
    _, path, _ = trained
    embedder = HashEmbedder()
    router = ComplexityRouter.load(path, embedder=embedder)
    try:
        score = await router.score_async("compute the integral")
        # Only the router's worker thread ran the model; the event loop's thread never did.
        assert embedder.threads and all(name.startswith("faregate-router") for name in embedder.threads)
        assert score == router.score("compute the integral")
        body = {
            "messages": [{"role": "system", "content": "x"}, {"role": "user", "content": "prove the lemma"}]
        }
        model, routed_score = await router.route(body, router.fixed_threshold(0.0))
        assert model == STRONG_MODEL and routed_score == router.score("prove the lemma")
        model, _ = await router.route(body, router.fixed_threshold(1.01))
        assert model == WEAK_MODEL
    finally:
        router.close()


def test_threshold_modes(trained: tuple[Path, Path, Path]) -> None:
    _, path, _ = trained
    router = ComplexityRouter.load(path, embedder=HashEmbedder())
    fixed = router.fixed_threshold(0.4)
    assert fixed.decide(0.4) and not fixed.decide(0.39)
    # A share: starts from the training scores, then follows the recent window.
    share = router.share_threshold(0.3, window=500)
    reference = np.asarray(router.file.reference_scores)
    assert np.mean(reference >= share.value) == pytest.approx(0.3, abs=0.05)
    rng = np.random.default_rng(0)
    for value in rng.random(2000):
        share.decide(float(value))
    assert share.samples == 500  # bounded
    later = rng.random(2000)
    assert np.mean(later >= share.value) == pytest.approx(0.3, abs=0.05)
    # A quality target reads the calibration curve, then holds the share it names.
    target = router.quality_threshold(0.95)
    assert target.share == router.strong_share_for(0.95)
    assert 0.0 <= target.share <= 1.0


def test_threshold_share_and_quality_by_hand() -> None:
    curve = [
        CalibrationPoint(0.0, 0.8, 0.0),
        CalibrationPoint(0.2, 0.9, 0.5),
        CalibrationPoint(0.4, 0.96, 0.8),
    ]
    assert share_for_quality(curve, 0.95) == 0.4
    assert share_for_quality(curve, 0.9) == 0.2
    assert share_for_quality(curve, 0.99) == 1.0  # never reached: everything strong
    assert Threshold(share=0.25).decide(-1e9)  # no history at all: the safe side, strong
    threshold = Threshold(share=0.25, window=100, refresh_every=10, min_samples=20)
    for value in range(100):
        threshold.observe(float(value))
    assert threshold.value == 75.0
    assert Threshold(share=0.0).value == np.inf and Threshold(share=1.0).value == -np.inf
    with pytest.raises(ValueError):
        Threshold(value=0.5, share=0.5)
    with pytest.raises(ValueError):
        Threshold(share=1.5)


def test_loading_refuses_other_files(tmp_path: Path, trained: tuple[Path, Path, Path]) -> None:
    _, path, _ = trained
    data = json.loads(path.read_text())
    wrong_kind = tmp_path / "kind.json"
    wrong_kind.write_text(json.dumps({**data, "kind": "cascade-judge"}))
    with pytest.raises(ValueError, match="not a 'complexity-router'"):
        ComplexityRouter.load(wrong_kind)
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps({**data, "features": {**data["features"], "text": ["log_chars"]}}))
    with pytest.raises(ValueError, match="other text features"):
        ComplexityRouter.load(stale)
    (tmp_path / "junk.json").write_text("{")
    with pytest.raises(ValueError):
        ComplexityRouter.load(tmp_path / "junk.json")


def test_cli_train_and_eval_with_the_real_embedder(tmp_path: Path) -> None:
    data = write_subjects(tmp_path / "mmlu", subjects=4, per_subject=16)
    # The commands always leave out contaminated prompts; one is listed here, and must be left out.
    contaminated = (data / "mmlu_subject0.csv").read_text().splitlines()[1].rsplit(",", 2)[0]
    (tmp_path / "mmlu_contaminated_prompts.jsonl").write_text(
        json.dumps({"eval_prompt": contaminated}) + "\n"
    )
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Test app."""

    router_cli.register(app)
    runner = CliRunner()
    cache = tmp_path / "cache"
    model = tmp_path / "r.json"
    result = runner.invoke(
        app,
        [
            "router",
            "train",
            "--data",
            str(data),
            "--out",
            str(model),
            "--repeats",
            "1",
            "--cache-dir",
            str(cache),
        ],
    )
    assert result.exit_code == 0, result.output
    training = json.loads(model.read_text())["training"]
    assert training["split"]["by"] == "source" and training["contaminated_prompts_left_out"] == 1
    out = tmp_path / "out"
    args = ["router", "eval", "--data", str(data), "--router", str(model), "--out", str(out)]
    result = runner.invoke(app, [*args, "--cache-dir", str(cache), "--timing", "3"])
    assert result.exit_code == 0, result.output
    assert "APGR" in result.output and "complexity router" in result.output
    report = json.loads((out / "routing.json").read_text())
    assert {p["policy"] for p in report["policies"]} >= {"complexity router", "prompt length", "oracle"}
    assert (out / "routing-shares.png").stat().st_size > 10_000
    assert report["timing_ms"]["p50_ms"] > 0


def test_blend_is_one_linear_model_ranking_like_its_two_parts() -> None:
    """The blend (the MMLU router's model) must equal, in ranking, the average of the standardised
    embedding logit and standardised log_chars, and score as one plain linear model over the
    router's columns: a wrong sign or offset in the algebra would break the ranking."""
    rng = np.random.default_rng(3)
    n, embedding = 400, 8
    x = np.hstack([rng.normal(size=(n, embedding)), rng.normal(3.0, 0.5, size=(n, 3))])
    y = (x[:, 0] + x[:, embedding] + rng.normal(size=n) > 2.5).astype(np.float64)
    columns = np.arange(embedding, dtype=np.int64)
    candidate = Candidate("blend", 30.0, columns=columns, blend_column=embedding)
    model = candidate.fit(x, y)
    assert model.dimensions == x.shape[1]
    # Only the embedding and the blended column carry weight.
    assert np.all(model.weights[embedding + 1 :] == 0.0) and model.weights[embedding] > 0.0
    base = fit_logistic(x[:, columns], y, 30.0)
    logit, length = base.logit(x[:, columns]), x[:, embedding]
    by_hand = (logit - logit.mean()) / logit.std() + (length - length.mean()) / length.std()
    scores = model.predict(x)
    assert np.all((scores > 0.0) & (scores < 1.0))
    assert np.array_equal(np.argsort(scores, kind="stable"), np.argsort(by_hand, kind="stable"))

    # Better than either part alone on the data it was fitted on (both carry signal).
    def auc(s: np.ndarray) -> float:
        ranks = np.argsort(np.argsort(s))
        positive = y == 1
        return float((ranks[positive].mean() - (positive.sum() - 1) / 2) / (~positive).sum())

    assert auc(scores) > max(auc(logit), auc(length))


def test_blend_router_trains_to_a_loadable_file(tmp_path: Path) -> None:
    data, result, path = trained_on_subjects(tmp_path, "blend")
    assert result.selection.best.blend_column is not None
    assert result.file.training["model"] == "blend"
    router = ComplexityRouter.load(path, embedder=HashEmbedder())
    hard, easy = "Question: compute the eigenvalue of the matrix?", "Question: the capital city?"
    assert router.score(hard) > router.score(easy)
    text = router.file.model.weights[DIMENSIONS:]
    assert np.count_nonzero(text) == 1  # log_chars alone among the hand-made features
    assert_beats_random(data, router, tmp_path / "cache")


def test_within_subject_model_ignores_which_subject_a_prompt_resembles() -> None:
    """The MMLU router's model: the training subjects' centroid directions are projected out, so
    moving a prompt towards another subject's centroid cannot change its score, while what
    separates prompts within a subject still ranks them. One plain linear model over all columns."""
    rng = np.random.default_rng(5)
    n, embedding = 600, 6
    groups = [f"s{i % 3}" for i in range(n)]
    offsets = {"s0": 0.0, "s1": 2.0, "s2": -1.0}
    e = rng.normal(size=(n, embedding))
    e[:, 0] += [offsets[g] for g in groups]  # the subject shows in dimension 0
    # Subject s1 is "hard" (a subject-level effect that would not transfer), and within every
    # subject dimension 1 says which prompts need the strong model.
    y = ((e[:, 1] + (np.array(groups) == "s1") * 2.0 + rng.normal(size=n)) > 1.0).astype(np.float64)
    x = np.hstack([e, rng.normal(size=(n, 2))])
    candidate = Candidate("within", 10.0, columns=np.arange(embedding, dtype=np.int64), within_groups=True)
    model = candidate.fit(x, y, groups)
    assert model.dimensions == x.shape[1] and np.all(model.weights[embedding:] == 0.0)
    centroids = np.stack([e[np.array(groups) == g].mean(axis=0) for g in ("s0", "s1", "s2")])
    shift = np.zeros(x.shape[1])
    shift[:embedding] = centroids[1] - centroids[0]  # from subject s0's centre to s1's
    assert np.allclose(model.logit(x + shift), model.logit(x))
    raw = model.weights / model.scale
    assert raw[1] > 0.0 and abs(raw[1]) > 5 * abs(raw[0])
    # Without the projection the model uses the subject (dimension 0) too.
    plain = fit_logistic(x[:, :embedding], y, 10.0)
    assert abs(plain.weights[0] / plain.scale[0]) > 5 * abs(raw[0])
    with pytest.raises(ValueError, match="group"):
        candidate.fit(x, y)


def test_within_subject_router_trains_to_a_loadable_file(tmp_path: Path) -> None:
    data, result, path = trained_on_subjects(tmp_path, "within-subject")
    assert result.selection.best.within_groups
    assert result.file.training["model"] == "within-subject"
    router = ComplexityRouter.load(path, embedder=HashEmbedder())
    assert not np.any(router.file.model.weights[DIMENSIONS:])  # no hand-made feature
    assert router.score("Question: compute the eigenvalue of the matrix?") > router.score(
        "Question: the capital city?"
    )
    assert_beats_random(data, router, tmp_path / "cache")


def test_cli_trains_and_evaluates_on_your_own_outcomes_without_a_contaminated_list(tmp_path: Path) -> None:
    # The README: "retrain with faregate router train / train-judge on your own outcomes". Own data
    # has no contaminated-prompt list beside it; the error said to "pass one explicitly or keep the
    # contaminated prompts", which the router commands had no option for.
    data = write_subjects(tmp_path / "mine", subjects=4, per_subject=16)
    app = typer.Typer()

    @app.callback()
    def main() -> None:
        """Test app."""

    router_cli.register(app)
    runner = CliRunner()
    model = tmp_path / "r.json"
    common = ["--data", str(data), "--cache-dir", str(tmp_path / "cache")]
    refused = runner.invoke(app, ["router", "train", *common, "--out", str(model), "--repeats", "1"])
    assert refused.exit_code == 2 and "no contaminated-prompt list found" in refused.output
    kept = ["--keep-contaminated"]
    result = runner.invoke(app, ["router", "train", *common, *kept, "--out", str(model), "--repeats", "1"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["router", "eval", *common, *kept, "--router", str(model)])
    assert result.exit_code == 0, result.output
    assert "complexity router" in result.output
    # Or an explicit list: the eval must leave out the same prompts as the training did.
    listed = tmp_path / "listed.jsonl"
    prompt = (data / "mmlu_subject0.csv").read_text().splitlines()[1].rsplit(",", 2)[0]
    listed.write_text(json.dumps({"eval_prompt": prompt}) + "\n")
    explicit = ["--contaminated", str(listed)]
    result = runner.invoke(
        app, ["router", "train", *common, *explicit, "--out", str(model), "--repeats", "1"]
    )
    assert result.exit_code == 0, result.output
    assert json.loads(model.read_text())["training"]["contaminated_prompts_left_out"] == 1
    result = runner.invoke(app, ["router", "eval", *common, *explicit, "--router", str(model)])
    assert result.exit_code == 0, result.output
