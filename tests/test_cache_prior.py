"""The semantic cache's prior: an offline calibration shipped with Faregate, worth N pseudo-lookups."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from faregate.cli import cache_eval
from faregate.config import SemanticCacheSettings
from faregate.errors import ConfigError
from faregate.evals.cache_eval.stream import LabelledPair, replay_stream
from faregate.learning.online.cache_acceptance import CacheAcceptance
from faregate.learning.online.cache_prior import (
    load_prior,
    prior_from_similarities,
    prior_state,
    write_prior,
)
from faregate.learning.online.settings import SemanticAcceptanceSettings
from faregate.quality.cache_live import NOTHING, CacheCalibration
from faregate.route_config import acceptance_settings, check_cache_acceptance
from test_cache_stream import _vectors


def test_a_prior_counts_every_candidate_as_labelled_and_scales_wrong_hits_up(tmp_path: Path) -> None:
    lookups = [(None, False)] * 1000 + [(0.955, False)] * 90 + [(0.905, True)] * 3 + [(0.5, True)] * 7
    prior = prior_from_similarities(lookups)
    assert prior.lookups == 1100 and sum(prior.seen) == sum(prior.labelled) == 93
    assert prior.wrong[prior.band(0.905)] == 3
    path = tmp_path / "prior.json"
    write_prior(path, prior, {"pairs": ["x"]})
    assert load_prior(path).seen == prior.seen
    scaled = prior_state(prior, 550)
    assert scaled.lookups == 550 and scaled.labelled[scaled.band(0.955)] == 45
    assert scaled.wrong[scaled.band(0.905)] == 2  # 1.5 rounded up: never fewer wrong hits
    assert prior_state(prior, 0).lookups == 0
    with pytest.raises(ValueError, match="negative"):
        prior_state(prior, -1)


def test_the_shipped_prior_is_the_dev_chat_pairs_and_certifies_a_threshold_at_once() -> None:
    prior = load_prior()
    assert prior.lookups > 2000 and 0 < sum(prior.wrong) < sum(prior.labelled)
    acceptance = CacheAcceptance()
    assert acceptance.calibrate(prior_state(prior, 200)) is None  # too little evidence
    assert acceptance.calibrate(prior_state(prior, 2000)) is not None


def test_the_live_cache_starts_from_the_prior_only_when_asked() -> None:
    cold = CacheCalibration(SemanticAcceptanceSettings(), "exact")
    assert cold.threshold() == NOTHING and cold.state.lookups == 0
    warm = CacheCalibration(SemanticAcceptanceSettings(prior_lookups=2000, method="direct"), "exact")
    assert warm.state.lookups == 2000 and warm.threshold() < 1.0
    assert warm.acceptance.method == "direct"
    assert "prior=2000" in warm.fingerprint() and "bound=direct" in warm.fingerprint()
    assert "prior" not in cold.fingerprint()  # unchanged: a stored state of a default cache is kept
    assert warm.figures()["prior_lookups"] == 2000 and warm.figures()["bound"] == "direct"
    assert warm.figures()["wrong_hit_bound"] <= 0.005
    with pytest.raises(ValueError, match="bound"):
        SemanticAcceptanceSettings(method="mean")


def test_a_stream_with_a_prior_serves_from_its_start_and_pays_for_a_wrong_prior() -> None:
    # Paraphrases sit at 0.968, near misses at 0.877 (test_cache_stream._vectors).
    pairs = [LabelledPair(f"question {i}", f"question {i} reworded", i % 3 != 0) for i in range(150)]
    distinct = [f"other {i}" for i in range(50)]
    vectors = _vectors(pairs, distinct)
    acceptance = CacheAcceptance()
    cold = replay_stream(pairs, vectors, [], distinct, acceptance, seed=0)
    assert cold.total.served == 0
    like = prior_from_similarities([(None, False)] * 3000 + [(0.965, False)] * 300 + [(0.875, True)] * 30)
    state = prior_state(like, 3330)
    acceptance.calibrate(state)
    warm = replay_stream(pairs, vectors, [], distinct, acceptance, seed=0, state=state)
    assert warm.total.paraphrases_served > 50 and warm.total.wrong == 0
    # A prior that never saw a near miss serves them: the guarantee is for the mix, not live alone.
    unlike = prior_from_similarities([(None, False)] * 3000 + [(0.965, False)] * 300 + [(0.875, False)] * 30)
    state = prior_state(unlike, 3330)
    acceptance.calibrate(state)
    wrong = replay_stream(pairs, vectors, [], distinct, acceptance, seed=0, state=state)
    assert wrong.total.wrong > 0


def test_the_config_keys_reach_the_live_cache() -> None:
    semantic = SemanticCacheSettings(max_wrong_hit_rate=0.005, bound="direct", prior_lookups=2000)
    settings = acceptance_settings(semantic)
    assert settings.method == "direct" and settings.prior_lookups == 2000
    with pytest.raises(ConfigError, match="bound"):
        check_cache_acceptance(SemanticCacheSettings(max_wrong_hit_rate=0.005, bound="mean"), "test")
    with pytest.raises(ConfigError, match="prior_lookups"):
        check_cache_acceptance(SemanticCacheSettings(max_wrong_hit_rate=0.005, prior_lookups=-1), "test")


def _cli() -> typer.Typer:
    app = typer.Typer()

    @app.callback()
    def main() -> None: ...

    cache_eval.register(app)
    return app


def test_cache_eval_writes_a_prior_and_replays_from_it(tmp_path: Path) -> None:
    pairs = tmp_path / "pairs.csv"
    rows = ["text1,text2,label"]
    rows += [f"How do I reset my router model {i}?,How can I reset my model {i} router?,1" for i in range(30)]
    rows += [f"What is the capital of country {i}?,What is the currency of country {i}?,0" for i in range(30)]
    pairs.write_text("\n".join(rows) + "\n", encoding="utf-8")
    prior_file, out, data = tmp_path / "prior.json", tmp_path / "out", tmp_path / "no-data"
    data.mkdir()
    common = ["cache-eval", "--data", str(data), "--sizes", "0", "--distinct", "0", "--pairs", str(pairs)]
    common += ["--cache-dir", str(tmp_path / "vectors"), "--out", str(out)]
    runner = CliRunner()
    built = runner.invoke(_cli(), [*common, "--write-prior", str(prior_file), "--prior-orders", "2"])
    assert built.exit_code == 0, built.output
    prior = load_prior(prior_file)
    assert prior.lookups == 2 * 120 and sum(prior.labelled) > 0
    replayed = runner.invoke(
        _cli(), [*common, "--prior", str(prior_file), "--prior-lookups", "3000", "--method", "direct"]
    )
    assert replayed.exit_code == 0, replayed.output
    assert "prior of 3,000 pseudo-lookups" in replayed.output
    summary = json.loads((out / "cache-stream.json").read_text("utf-8"))
    assert summary["runs"][0]["total"]["lookups"] == 120
    wrong = runner.invoke(_cli(), [*common, "--method", "mean"])
    assert wrong.exit_code != 0


@pytest.mark.parametrize("threshold", ["1.5", "0.705"])
def test_cache_eval_names_the_threshold_option_it_refuses(tmp_path: Path, threshold: str) -> None:
    """A threshold off the measured grid was refused as 'Invalid value: threshold must be...',
    not naming the option as every other refused option is named."""
    result = CliRunner().invoke(_cli(), ["cache-eval", "--data", str(tmp_path), "--threshold", threshold])
    assert result.exit_code == 2
    assert "Invalid value for '--threshold'" in result.output, result.output
    assert "0.7..0.99 in steps of 0.01" in result.output
