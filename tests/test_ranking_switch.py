"""The challenger ranking (learning/online/ranking_switch.py): switched in by an anytime-valid test."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from faregate.learning.online.calibrator import ScoreRanks
from faregate.learning.online.ranking_switch import RankingSwitch, SwitchState

DIM = 16
Prior = Callable[[int, np.random.Generator], float]


@dataclass
class Stream:
    """Prompts from a few clear domains; the strong model's net gain depends on the domain only."""

    centres: np.ndarray
    # Per domain: P(net gain +1), P(net gain -1).
    up: np.ndarray
    down: np.ndarray

    def draw(self, rng: np.random.Generator) -> tuple[int, np.ndarray, int]:
        domain = int(rng.integers(len(self.centres)))
        vector = self.centres[domain] + 0.15 * rng.standard_normal(DIM)
        vector /= np.linalg.norm(vector)
        u = rng.random()
        net = 1 if u < self.up[domain] else (-1 if u < self.up[domain] + self.down[domain] else 0)
        return domain, vector.astype(np.float32), net

    def mean_gain(self, domain: int) -> float:
        return float(self.up[domain] - self.down[domain])


def make_stream(seed: int) -> Stream:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((6, DIM))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    return Stream(centres, np.array([0.45, 0.40, 0.30, 0.05, 0.03, 0.02]), np.array([0.02] * 6))


def run(
    stream: Stream, prior_of: Prior, decisions: int, seed: int, switch: RankingSwitch | None = None
) -> tuple[RankingSwitch, SwitchState, list[int]]:
    """The loop as the replay and the gateway run it, labels drawn at a flat 20%."""
    switch = switch or RankingSwitch()
    state = SwitchState()
    ranks = ScoreRanks()
    rng = np.random.default_rng(seed)
    switched_at: list[int] = []
    for t in range(decisions):
        domain, vector, net = stream.draw(rng)
        prior = float(prior_of(domain, rng))
        in_force = ranks.rank(switch.in_force_score(state, prior, vector))
        ranks.record(switch.in_force_score(state, prior, vector))
        challenger = switch.challenger_rank(state, switch.challenger_score(state, prior, vector))
        if rng.random() < 0.2:
            if switch.observe(state, net, in_force, challenger, vector, 0.2, 0.2):
                switch.switch(state)
                ranks = state.challenger_ranks
                state.challenger_ranks = ScoreRanks.from_json(ranks.to_json())
                switched_at.append(t)
        else:
            switch.observe_unlabelled(state)
    return switch, state, switched_at


def ranking_worth(
    stream: Stream, switch: RankingSwitch, state: SwitchState, prior_of: Prior, seed: int, learned: bool
) -> float:
    """E[net gain x rank] of a ranking on fresh prompts (random: 0; higher: better)."""
    rng = np.random.default_rng(seed)
    scores, nets = [], []
    for _ in range(3000):
        domain, vector, _net = stream.draw(rng)
        prior = float(prior_of(domain, rng))
        scores.append(switch.in_force_score(state, prior, vector) if learned else prior)
        nets.append(stream.mean_gain(domain))
    ranks = np.argsort(np.argsort(scores)) / len(scores)
    return float(np.mean(np.array(nets) * (ranks - 0.5)))


def poor_prior(domain: int, rng: np.random.Generator) -> float:
    # Says the opposite of the truth, with noise: the offline model on unfamiliar subjects.
    return 0.2 * (domain / 5.0) + 0.05 * float(rng.random())


def test_a_poor_prior_on_clear_domains_is_replaced_by_the_learned_ranking() -> None:
    stream = make_stream(1)
    switch, state, switched_at = run(stream, poor_prior, 3000, seed=2)
    assert switched_at, "the challenger never won"
    assert switch.ranking(state, flagged=False) == "learned"
    # No switch before the test starts (100 labels at 20%: about 500 decisions).
    assert switched_at[0] > 300
    before = ranking_worth(stream, switch, state, poor_prior, seed=3, learned=False)
    after = ranking_worth(stream, switch, state, poor_prior, seed=3, learned=True)
    assert before < 0 < after
    assert after - before > 0.05


def test_a_right_prior_is_never_replaced_the_test_holds_its_alpha() -> None:
    stream = make_stream(4)

    def right_prior(domain: int, rng: np.random.Generator) -> float:
        return stream.mean_gain(domain)

    switches = 0
    for seed in range(20):
        _, state, switched_at = run(stream, right_prior, 1500, seed=100 + seed)
        switches += bool(switched_at)
        assert state.tested > 0
    # H0 is true (the prior already orders the domains exactly): alpha = 5%, 20 runs.
    assert switches <= 2


def test_the_frozen_ranking_does_not_move_within_an_epoch() -> None:
    stream = make_stream(1)
    switch, state, switched_at = run(stream, poor_prior, 3000, seed=2)
    assert switched_at
    probe = stream.centres[0].astype(np.float32)
    frozen_score = switch.in_force_score(state, 0.1, probe)
    challenger_before = switch.challenger_score(state, 0.1, probe)
    rng = np.random.default_rng(9)
    for _ in range(300):
        domain, vector, net = stream.draw(rng)
        switch.observe(state, -1 if domain == 0 else net, 0.5, 0.5, vector, 0.2, 0.2)
    assert switch.in_force_score(state, 0.1, probe) == frozen_score
    assert switch.challenger_score(state, 0.1, probe) != challenger_before


def test_without_vectors_both_rankings_are_the_prior_and_the_state_round_trips() -> None:
    switch = RankingSwitch(min_labels=1)
    state = SwitchState()
    assert switch.in_force_score(state, 0.3, None) == 0.3
    assert switch.challenger_score(state, 0.3, None) == 0.3
    vector = np.ones(DIM, np.float32) / np.sqrt(DIM)
    switch.observe(state, 1, 0.2, 0.8, vector, 0.5, 0.1)
    switch.observe(state, 1, 0.2, 0.8, vector, 0.5, 0.1)
    switch.switch(state)
    again = SwitchState.from_json(state.to_json())
    assert again.switches == 1 and again.frozen is not None
    assert switch.in_force_score(again, 0.3, vector) == switch.in_force_score(state, 0.3, vector)
    assert switch.ranking(again, flagged=True) == "length"


def test_evidence_round_trips_at_the_stored_precision() -> None:
    from faregate.learning.online.domain_router import DomainEvidence

    rng = np.random.default_rng(0)
    for dim in (384, 16):  # unpadded base64 (decoded in one go) and padded
        evidence = DomainEvidence()
        for g in (-1, 0, 1):
            vector = rng.standard_normal(dim).astype(np.float32)
            evidence.add(vector / np.linalg.norm(vector), g, 2.0)
        again = DomainEvidence.from_json(evidence.to_json())
        assert np.array_equal(again.matrix(), evidence.matrix())
        assert again.to_json() == evidence.to_json()
        assert list(again.net_gains) == [-1, 0, 1] and again.total == 6.0
