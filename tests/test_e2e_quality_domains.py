"""Domain learning live (`quality.learn_domains`): a router whose prior is wrong for this traffic is
replaced by the learned ranking once the challenger's test wins, and /admin/quality and /metrics
say so; the same traffic on a route without learn_domains never switches.

The traffic is two clear domains, GSM8K word problems and MMLU marketing questions, in a seeded
order. The simulator's weak model is wrong on every word problem and right on every marketing
question; the trained router's prior does not rank them that way (its health check flags it and
the route falls back to length first: the challenger then competes with the length ranking).
"""

from __future__ import annotations

import csv
import random
import sys
from pathlib import Path

import openai
import pytest

from harness import GatewayProcess, create_key, run_gateway, run_sim, wait_until
from test_e2e_quality_health import admin

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
ROUTER = ROOT / "routers" / "router-gsm8k.json"
GSM8K = ROOT / "data" / "routellm" / "gsm8k_responses.csv"
MARKETING = ROOT / "data" / "routellm" / "mmlu" / "mmlu_marketing.csv"
PER_DOMAIN = 100


def prompts(path: Path, n: int) -> list[str]:
    csv.field_size_limit(sys.maxsize)
    with path.open(encoding="utf-8", newline="") as handle:
        return [row["prompt"].strip() for _, row in zip(range(n), csv.DictReader(handle), strict=False)]


def route_figures(gateway: GatewayProcess) -> dict[str, dict[str, object]]:
    return {r["route"]: r for r in admin(gateway, "/admin/quality")["routes"]}


def test_a_wrong_prior_is_replaced_by_the_learned_ranking_only_where_learning_is_on(tmp_path: Path) -> None:
    maths, marketing = prompts(GSM8K, PER_DOMAIN), prompts(MARKETING, PER_DOMAIN)
    stream = maths + marketing
    random.Random(7).shuffle(stream)
    with (tmp_path / "weak.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "answer"])
        for prompt in maths:
            writer.writerow([prompt, "The answer is 7."])
        for prompt in marketing:
            writer.writerow([prompt, "The answer is 42."])
    sim_script = (
        "seed: 1\ndefaults: {ttft_ms: 1, tokens_per_s: 0, faults: {}}\nmodels:\n"
        "  strong-m: {answer: {fixed: 'The answer is 42.'}}\n"
        f"  weak-m: {{answer: {{replay: {{csv: {tmp_path / 'weak.csv'}, column: answer,"
        " prompt_column: prompt}}}\n"
    )
    quality = (
        "{target: 0.9, confidence: 0.8, LEARN"
        " verification: {share: 1.0, frontier: 0, rest_ratio: 1, comparator: final_answer}}"
    )
    config = f"""
baseline_model: strong-m
models:
  strong-m: {{input: 10, output: 30}}
  weak-m: {{input: 0.6, output: 0.6}}
routes:
  learns:
    router: {{file: {ROUTER}, strong: strong-m, weak: weak-m}}
    quality: {quality.replace("LEARN", "learn_domains: true, domain_examples: 500,")}
  static:
    router: {{file: {ROUTER}, strong: strong-m, weak: weak-m}}
    quality: {quality.replace("LEARN", "")}
"""
    with run_sim(tmp_path, sim_script) as sim, run_gateway(tmp_path / "gateway", sim, config) as gateway:
        client = openai.OpenAI(
            base_url=gateway.base_url, api_key=create_key(gateway.store_path), max_retries=0
        )
        before = route_figures(gateway)
        assert before["learns"]["ranking"] == "prior" and before["learns"]["learn_domains"]
        assert before["static"]["challenger_evidence"] is None
        for prompt in stream:
            for route in ("learns", "static"):
                client.chat.completions.create(
                    model=route, messages=[{"role": "user", "content": prompt}], max_tokens=20
                )
        wait_until(lambda: admin(gateway, "/admin/quality")["pending"] == 0, "verifications finish")
        routes = route_figures(gateway)
        learns, static = routes["learns"], routes["static"]
        assert learns["ranking"] == "learned" and learns["switches"] == 1, learns
        assert isinstance(learns["epoch"], int) and learns["epoch"] >= 1
        assert learns["domain_examples"] == learns["verifications"]
        assert static["ranking"] != "learned" and static["switches"] == 0, static
        metrics = admin(gateway, "/metrics")
        assert 'faregate_router_ranking{ranking="learned",route="learns"} 1.0' in metrics
        assert 'faregate_router_ranking{ranking="learned",route="static"} 0.0' in metrics
        assert 'faregate_router_challenger_evidence{route="learns"}' in metrics
