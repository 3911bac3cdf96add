"""The cascade and the complexity router as gateway routes, on held-out GSM8K, through the gateway.

Starts the simulator replaying the real recorded answers of GPT-4 and Mixtral
(data/routellm/gsm8k_responses.csv) and a gateway whose routes use the trained files in
routers/, then sends every held-out question of the files' split (seed 0, 654 questions) to each
route with the official openai SDK. Quality is the recorded correctness of the answer the gateway
actually returned; cost is what the gateway charged (`usage.cost`: both calls when the cascade
escalated); the savings column is read back from the dashboard's JSON API.

    python bench/routes_gsm8k.py [--questions N] [--concurrency 4] [--out docs/routing-gateway.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

import openai

from faregate.evals.costs.projection import display_usd
from faregate.evals.replay.outcomes import STRONG_MODEL, WEAK_MODEL, load_outcomes
from faregate.evals.replay.router_eval import held_out
from faregate.learning.cascade_judges import LearnedJudge

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "routellm" / "gsm8k_responses.csv"
MASTER = "fg-bench-master-0123456789abcdefghijkl"
STRONG, WEAK = "gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1"
ROUTES = ("all-strong", "all-weak", "math-router", "math-cascade")
# Stream pacing for the latency part: first token after 300 ms, then 60 tokens a second.
PACING = {"ttft_ms": 300, "tokens_per_s": 60, "fault": "none"}

SIM = f"""
seed: 1
defaults: {{ttft_ms: 5, tokens_per_s: 0, faults: {{}}}}
models:
  {STRONG}:
    answer: {{replay: {{csv: {DATA}, column: {STRONG}_response, prompt_column: prompt}}}}
  {WEAK}:
    answer: {{replay: {{csv: {DATA}, column: "{WEAK_MODEL}_response", prompt_column: prompt}}}}
"""

CONFIG = """
server: {{port: {port}, request_timeout_s: 60}}
store: {{path: {store}}}
records: {{flush_interval_s: 0.2}}
sim: {{mode: 'on', launch: false, port: {sim_port}, first_byte_timeout_s: 30}}
baseline_model: {strong}
models:
  {strong}: {{input: 10, output: 30, context_window: 128000}}
  {weak}: {{input: 0.6, output: 0.6, context_window: 32768, aliases: ["{weak_recorded}"]}}
routes:
  all-strong: {{chain: [{strong}]}}
  all-weak: {{chain: [{weak}]}}
  math-router:
    # Keep 95% of GPT-4's accuracy by the router's calibration curve (held-out training folds).
    router: {{file: {routers}/router-gsm8k.json, retain: 0.95}}
  math-cascade:
    cascade:
      steps: [{weak}, {strong}]
      judge:
        checks: [empty, truncated, refusal, final_number]
        learned: {{file: {routers}/judge-gsm8k.json, retain: 0.95}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not become healthy")


def env() -> dict[str, str]:
    out = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY")}
    out["FAREGATE_MASTER_KEY"] = MASTER
    return out


async def ask_all(
    base_url: str, key: str, route: str, questions: list[str], concurrency: int
) -> list[dict[str, Any]]:
    client = openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=120)
    gate = asyncio.Semaphore(concurrency)

    async def one(question: str) -> dict[str, Any]:
        async with gate:
            raw = await client.chat.completions.with_raw_response.create(
                model=route, messages=[{"role": "user", "content": question}]
            )
            completion = raw.parse()
            usage = completion.usage
            assert usage is not None and usage.model_extra is not None
            return {
                "question": question,
                "model": raw.headers["x-faregate-model"],
                "escalated": raw.headers.get("x-faregate-cascade", "").startswith("escalated"),
                "cost": Decimal(raw.headers["x-faregate-cost-usd"]),
            }

    try:
        return list(await asyncio.gather(*(one(q) for q in questions)))
    finally:
        await client.close()


async def stream_latency(
    base_url: str, key: str, route: str, questions: list[str], pacing: dict[str, int]
) -> list[dict[str, Any]]:
    """Time to first content and to the end, one stream at a time, with the simulator pacing
    tokens like a hosted model (the replay run above is instant)."""
    client = openai.AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=120)
    out = []
    try:
        for question in questions:
            started = time.perf_counter()
            first = None
            async with client.chat.completions.with_streaming_response.create(
                model=route,
                messages=[{"role": "user", "content": question}],
                stream=True,
                extra_body={"sim": pacing},
            ) as response:
                escalated = response.headers.get("x-faregate-cascade", "").startswith("escalated")
                async for chunk in await response.parse():
                    if first is None and chunk.choices and chunk.choices[0].delta.content:
                        first = time.perf_counter() - started
            out.append({"ttft": first, "total": time.perf_counter() - started, "escalated": escalated})
    finally:
        await client.close()
    return out


def dashboard(port: int) -> dict[str, dict[str, Any]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}/admin/dashboard/breakdown?by=route&range=24h",
        headers={"Authorization": f"Bearer {MASTER}"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        rows = json.loads(response.read())["rows"]
    return {row["group"]: row for row in rows}


def savings_text(saved: dict[str, Any]) -> str:
    """The dashboard's savings, rounded for the table (the JSON keeps every digit)."""
    amount = saved.get("savings_usd")
    return "-" if amount is None else display_usd(Decimal(str(amount)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=0, help="First N held-out questions (0: all)")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--streams", type=int, default=30, help="Questions streamed for the latency part")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "routing-gateway.json")
    args = parser.parse_args()

    outcomes = load_outcomes(DATA, drop_contaminated=True)
    split = held_out(outcomes, LearnedJudge.read(ROOT / "routers" / "judge-gsm8k.json"))
    records = split.test.records[: args.questions or None]
    correct = {r.prompt.strip(): r.correct for r in records}
    questions = list(correct)

    work = Path(tempfile.mkdtemp(prefix="faregate-routes-"))
    sim_port, port = free_port(), free_port()
    (work / "sim.yaml").write_text(SIM)
    (work / "faregate.yaml").write_text(
        CONFIG.format(
            port=port,
            store=work / "store",
            sim_port=sim_port,
            strong=STRONG,
            weak=WEAK,
            weak_recorded=WEAK_MODEL,
            routers=ROOT / "routers",
        )
    )
    cli = [sys.executable, "-m", "faregate.cli.main"]
    sim = subprocess.Popen(
        [*cli, "sim", "--port", str(sim_port), "--script", str(work / "sim.yaml")], env=env()
    )
    gateway = subprocess.Popen([*cli, "serve", "-c", str(work / "faregate.yaml")], env=env())
    try:
        wait_healthy(f"http://127.0.0.1:{sim_port}/health")
        wait_healthy(f"http://127.0.0.1:{port}/health")
        key = subprocess.run(
            [*cli, "keys", "create", "--name", "bench", "-c", str(work / "faregate.yaml")],
            env=env(),
            check=True,
            capture_output=True,
            text=True,
        ).stdout.split()[-1]
        results: dict[str, Any] = {}
        for route in ROUTES:
            started = time.perf_counter()
            answers = asyncio.run(
                ask_all(f"http://127.0.0.1:{port}/v1", key, route, questions, args.concurrency)
            )
            seconds = time.perf_counter() - started
            recorded = {STRONG: STRONG_MODEL, WEAK: WEAK_MODEL}
            right = sum(correct[a["question"]][recorded[a["model"]]] for a in answers)
            results[route] = {
                "questions": len(answers),
                "strong_calls": sum(a["model"] == STRONG for a in answers),
                "escalated": sum(a["escalated"] for a in answers),
                "accuracy": right / len(answers),
                "cost_usd": str(sum((a["cost"] for a in answers), Decimal(0))),
                "seconds": round(seconds, 1),
            }
        time.sleep(1.0)  # the records are flushed every 0.2 s
        board = dashboard(port)
        latency = {
            route: asyncio.run(
                stream_latency(f"http://127.0.0.1:{port}/v1", key, route, questions[: args.streams], PACING)
            )
            for route in ("all-weak", "math-cascade")
        }
    finally:
        for process in (gateway, sim):
            process.terminate()
            process.wait(timeout=30)
    strong = results["all-strong"]
    print(f"{len(questions)} held-out GSM8K questions (split seed 0), through the gateway\n")
    print("| route | GPT-4 answers | accuracy | % of GPT-4's accuracy | cost | cost vs all-GPT-4 |", end="")
    print(" dashboard savings |")
    print("|---|---|---|---|---|---|---|")
    for route, row in results.items():
        saved = board.get(route, {})
        print(
            f"| {route} | {row['strong_calls'] / row['questions']:.1%}"
            + (f" ({row['escalated']} escalated)" if route == "math-cascade" else "")
            + f" | {row['accuracy']:.1%} | {row['accuracy'] / strong['accuracy']:.1%}"
            f" | {display_usd(Decimal(row['cost_usd']))}"
            f" | {Decimal(row['cost_usd']) / Decimal(strong['cost_usd']):.1%}"
            f" | {saved.get('savings_percent', '-')}% ({savings_text(saved)}) |"
        )
    pace = f"{PACING['ttft_ms']} ms to the first token, then {PACING['tokens_per_s']} tokens/s"
    print(f"\nStreams, one at a time, {pace}:")
    print("| route | streams | time to first content p50 | p90 | whole answer p50 |")
    print("|---|---|---|---|---|")
    for route, rows in latency.items():
        groups = {route: rows}
        if route == "math-cascade":
            groups = {
                f"{route}, accepted": [r for r in rows if not r["escalated"]],
                f"{route}, escalated": [r for r in rows if r["escalated"]],
            }
        for label, group in groups.items():
            if not group:
                continue
            ttft = sorted(r["ttft"] for r in group if r["ttft"] is not None)
            total = sorted(r["total"] for r in group)
            p90 = ttft[int(0.9 * (len(ttft) - 1))]
            print(
                f"| {label} | {len(group)} | {1000 * statistics.median(ttft):.0f} ms"
                f" | {1000 * p90:.0f} ms | {1000 * statistics.median(total):.0f} ms |"
            )
    for route, row in results.items():
        row["dashboard"] = {
            k: board.get(route, {}).get(k) for k in ("spend_usd", "savings_usd", "savings_percent")
        }
    summary = {"questions": len(questions), "routes": results, "stream_pacing": PACING, "streams": latency}
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
