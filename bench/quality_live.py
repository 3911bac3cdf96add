"""The quality loop live: calibrated router and cascade routes on held-out GSM8K, through the gateway.

Starts the simulator replaying the real recorded answers of GPT-4 and Mixtral
(data/routellm/gsm8k_responses.csv) and a gateway whose `math-router` and `math-cascade` routes
carry `quality: {target: 0.95}` with shadow verification (comparator `final_answer`: the cheap
answer's final number against the strong path's), then streams the held-out questions of the
trained files' split (seed 0, 654) to each route `--passes` times, each pass in a fresh seeded
order, with the official openai SDK. The verifications run in the gateway after each response,
as in production; at the end the figures come from GET /admin/quality and the request records.

Quality is the recorded correctness of the answer the gateway returned, against GPT-4's on the
same questions (the all-strong route, same run); cost is what the gateway charged plus what
verification cost (the shadow calls are paid by the gateway, not by a key).

    python bench/quality_live.py [--passes 2] [--prior 200] [--share 0.05] [--questions N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from decimal import Decimal
from pathlib import Path
from typing import Any

from faregate.evals.replay.outcomes import STRONG_MODEL, WEAK_MODEL, load_outcomes
from faregate.evals.replay.router_eval import held_out
from faregate.learning.cascade_judges import LearnedJudge
from routes_gsm8k import DATA, MASTER, ROOT, SIM, STRONG, WEAK, ask_all, env, free_port, wait_healthy

QUALITY = (
    "{{target: 0.95, confidence: {confidence}, prior_outcomes: {prior}, "
    "verification: {{share: {share}, comparator: final_answer, daily_usd_cap: '{cap}'}}}}"
)

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
  math-router:
    router: {{file: {routers}/router-gsm8k.json}}
    quality: {quality}
  math-cascade:
    cascade:
      steps: [{weak}, {strong}]
      judge:
        checks: [empty, truncated, refusal, final_number]
        learned: {{file: {routers}/judge-gsm8k.json}}
    quality: {quality}
"""
ROUTES = ("all-strong", "math-router", "math-cascade")


def admin(port: int, path: str) -> Any:
    request = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", headers={"Authorization": f"Bearer {MASTER}"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=0, help="First N held-out questions (0: all)")
    parser.add_argument("--passes", type=int, default=2, help="Times the questions are streamed")
    parser.add_argument("--prior", type=int, default=200, help="prior_outcomes (0: no prior)")
    parser.add_argument("--share", type=float, default=0.05, help="verification share")
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--cap", default="5", help="daily_usd_cap")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="Write the figures as JSON here")
    args = parser.parse_args()

    outcomes = load_outcomes(DATA, drop_contaminated=True)
    split = held_out(outcomes, LearnedJudge.read(ROOT / "routers" / "judge-gsm8k.json"))
    records = split.test.records[: args.questions or None]
    correct = {r.prompt.strip(): r.correct for r in records}
    questions = list(correct)
    rng = random.Random(args.seed)
    stream = []
    for _ in range(args.passes):
        order = questions[:]
        rng.shuffle(order)
        stream += order

    work = Path(tempfile.mkdtemp(prefix="faregate-quality-"))
    sim_port, port = free_port(), free_port()
    (work / "sim.yaml").write_text(SIM)
    quality = QUALITY.format(confidence=args.confidence, prior=args.prior, share=args.share, cap=args.cap)
    (work / "faregate.yaml").write_text(
        CONFIG.format(
            port=port,
            store=work / "store",
            sim_port=sim_port,
            strong=STRONG,
            weak=WEAK,
            weak_recorded=WEAK_MODEL,
            routers=ROOT / "routers",
            quality=quality,
        )
    )
    cli = [sys.executable, "-m", "faregate.cli.main"]
    sim = subprocess.Popen(
        [*cli, "sim", "--port", str(sim_port), "--script", str(work / "sim.yaml")], env=env()
    )
    gateway = subprocess.Popen([*cli, "serve", "-c", str(work / "faregate.yaml")], env=env())
    results: dict[str, Any] = {}
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
        for route in ROUTES:
            started = time.perf_counter()
            answers = asyncio.run(
                ask_all(f"http://127.0.0.1:{port}/v1", key, route, stream, args.concurrency)
            )
            recorded = {STRONG: STRONG_MODEL, WEAK: WEAK_MODEL}
            last = answers[-len(questions) :]
            results[route] = {
                "requests": len(answers),
                "strong_answers": sum(a["model"] == STRONG for a in answers),
                "strong_answers_last_pass": sum(a["model"] == STRONG for a in last),
                "correct": sum(correct[a["question"]][recorded[a["model"]]] for a in answers),
                "correct_last_pass": sum(correct[a["question"]][recorded[a["model"]]] for a in last),
                "cost_usd": str(sum((a["cost"] for a in answers), Decimal(0))),
                "seconds": round(time.perf_counter() - started, 1),
            }
        deadline = time.monotonic() + 300
        while admin(port, "/admin/quality")["pending"] and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(2.5)  # the state is saved after each verification; the refresh runs every 2 s
        figures = {row["route"]: row for row in admin(port, "/admin/quality?limit=1")["routes"]}
    finally:
        for process in (gateway, sim):
            process.terminate()
            process.wait(timeout=30)
    strong = results["all-strong"]
    print(
        f"{len(questions)} held-out GSM8K questions x {args.passes} passes, target 95% of GPT-4's accuracy, "
        f"confidence {args.confidence}, prior {args.prior}, verification share {args.share}\n"
    )
    print(
        "| route | GPT-4 answers (last pass) | kept vs all-GPT-4 (last pass) | shadow calls (cheap / paid)"
        " | free labels | verification cost | cost incl. verification vs all-GPT-4"
        " | strong share at the end |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for route, row in results.items():
        n = row["requests"]
        kept = row["correct"] / strong["correct"]
        kept_last = row["correct_last_pass"] / strong["correct_last_pass"]
        fig = figures.get(route)
        verification = Decimal(fig["verification_cost_usd"]) if fig else Decimal(0)
        cost = Decimal(row["cost_usd"]) + verification
        labels = fig["by_label"] if fig else {"cheap": 0, "paid": 0, "free": 0}
        shadow = labels["cheap"] + labels["paid"]
        print(
            f"| {route} | {row['strong_answers'] / n:.1%}"
            f" ({row['strong_answers_last_pass'] / len(questions):.1%})"
            f" | {kept:.1%} ({kept_last:.1%})"
            f" | {shadow / n:.2%} ({labels['cheap']} / {labels['paid']}) | {labels['free']}"
            f" | ${verification:.4f} | {cost / Decimal(strong['cost_usd']):.1%}"
            f" | {fig['strong_share']:.0%} |"
            if fig
            else f"| {route} | 100.0% (100.0%) | 100.0% (100.0%) | - | - | - | 100.0% | - |"
        )
    if args.out is not None:
        args.out.write_text(json.dumps({"results": results, "quality": figures}, indent=2, default=str))


if __name__ == "__main__":
    main()
