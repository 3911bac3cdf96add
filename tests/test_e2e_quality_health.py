"""Router health live: a router whose ranking is worse than random on this traffic is flagged
(/admin/quality, /metrics, an alert) and its route falls back to ranking by prompt length.

The simulator's weak model answers right exactly where the trained router is most sure the strong
model is needed, and wrong where it is most sure it is not: the opposite of a useful ranking."""

from __future__ import annotations

import csv
import json
import sys
import urllib.request
from pathlib import Path
from typing import Any

import openai
import pytest

from faregate.learning.complexity_router import ComplexityRouter
from harness import MASTER_KEY, GatewayProcess, create_key, run_gateway, run_sim, wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
ROUTER = ROOT / "routers" / "router-gsm8k.json"
GSM8K = ROOT / "data" / "routellm" / "gsm8k_responses.csv"
REQUESTS = 160


def admin(gateway: GatewayProcess, path: str) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{gateway.port}{path}", headers={"Authorization": f"Bearer {MASTER_KEY}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        body = response.read()
    return json.loads(body) if path.startswith("/admin") else body.decode()


def test_a_router_worse_than_random_is_flagged_and_falls_back_to_length(tmp_path: Path) -> None:
    csv.field_size_limit(sys.maxsize)
    with GSM8K.open(encoding="utf-8", newline="") as handle:
        prompts = [
            row["prompt"].strip() for _, row in zip(range(REQUESTS), csv.DictReader(handle), strict=False)
        ]
    router = ComplexityRouter.load(ROUTER)
    try:
        scores = [float(s) for s in router.score_many(prompts)]
    finally:
        router.close()
    median = sorted(scores)[len(scores) // 2]
    with (tmp_path / "weak.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "answer"])
        for prompt, score in zip(prompts, scores, strict=True):
            # Right where the router says "strong needed", wrong where it says "weak will do".
            writer.writerow([prompt, "The answer is 42." if score >= median else "The answer is 7."])
    sim_script = (
        "seed: 1\ndefaults: {ttft_ms: 1, tokens_per_s: 0, faults: {}}\nmodels:\n"
        "  strong-m: {answer: {fixed: 'The answer is 42.'}}\n"
        f"  weak-m: {{answer: {{replay: {{csv: {tmp_path / 'weak.csv'}, column: answer,"
        " prompt_column: prompt}}}\n"
    )
    config = f"""
baseline_model: strong-m
models:
  strong-m: {{input: 10, output: 30}}
  weak-m: {{input: 0.6, output: 0.6}}
routes:
  upside-down:
    router: {{file: {ROUTER}, strong: strong-m, weak: weak-m}}
    quality:
      target: 0.9
      confidence: 0.8
      verification: {{share: 1.0, frontier: 0, rest_ratio: 1, comparator: final_answer}}
alerts:
  interval_s: 0.5
  rules:
    - {{name: router-flagged, metric: router_flagged, above: 0.5}}
"""
    with run_sim(tmp_path, sim_script) as sim, run_gateway(tmp_path / "gateway", sim, config) as gateway:
        client = openai.OpenAI(
            base_url=gateway.base_url, api_key=create_key(gateway.store_path), max_retries=0
        )
        for prompt in prompts:
            client.chat.completions.create(
                model="upside-down", messages=[{"role": "user", "content": prompt}], max_tokens=20
            )
        wait_until(lambda: admin(gateway, "/admin/quality")["pending"] == 0, "verifications finish")
        route = admin(gateway, "/admin/quality")["routes"][0]
        assert route["flagged"] and route["ranking"] == "length", route
        assert "worse than random" in route["health"]
        assert 'faregate_router_flagged{route="upside-down"} 1.0' in admin(gateway, "/metrics")
        wait_until(
            lambda: any(
                a["rule"] == "router-flagged" for a in admin(gateway, "/admin/dashboard/alerts")["firing"]
            ),
            "the router-flagged alert fires",
        )
