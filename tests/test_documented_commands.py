"""Every command the README, bench/README.md, docs/accounts.md and docs/replay-routes.md show runs,
in a quick form, from this checkout.

The commands are read from the documents themselves: each line of a ```sh block, each `$ faregate`
line of a ```console block, and inline code that is a command (`faregate ...`, `make ...`,
`python bench/...`, `curl ...`). Each must have an entry in QUICK: the quick form to run, or why it
is not run here. So a documented command that
stops working, or a newly documented one that nobody tried, fails the suite.

`faregate` commands run in document order (a key is made before it is topped up or revoked) in a
scratch directory that links the checkout's data/ and routers/, so they never write into the
checkout; `make` targets and `python bench/...` run in the checkout with their outputs sent to
the scratch directory. `make run` is run for real: its output must match the README's, the
snippet it prints must print what the README says, and the README's `curl` examples must answer.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from harness import free_port, wait_until

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[1]
DOCS = ("README.md", "bench/README.md", "docs/accounts.md", "docs/replay-routes.md")
VENV_BIN = Path(sys.executable).parent
COMMAND = re.compile(r"(faregate|make|curl) \S|python bench/")


def documented() -> list[str]:
    """The commands of the documents, in order, each once."""
    found: list[str] = []
    for doc in DOCS:
        text = (ROOT / doc).read_text(encoding="utf-8")
        for block in re.findall(r"```sh\n(.*?)```", text, re.S):
            for line in block.splitlines():
                command = re.sub(r"\s+#.*$", "", line).strip()
                if command:
                    found.append(command)
        # A console block shows a session: its `$ faregate` lines are commands (its curl lines
        # name a gateway of the text's own, with its keys and ids: not run here).
        for block in re.findall(r"```console\n(.*?)```", text, re.S):
            for line in block.splitlines():
                if line.startswith("$ faregate "):
                    found.append(re.sub(r"\s+#.*$", "", line[2:]).strip())
        prose = re.sub(r"```.*?```", "", text, flags=re.S)
        found += [span for span in re.findall(r"`([^`\n]+)`", prose) if COMMAND.match(span)]
    return list(dict.fromkeys(found))


@dataclass(frozen=True)
class Quick:
    run: str = ""  # the shell command (default: the documented one as it is); {scratch} is filled in
    where: str = "scratch"  # or "checkout"
    expect: str = ""  # text its output must contain
    server: bool = False  # a long-running server: started, seen ready, stopped
    why_not: str = ""  # instead of running it: why not, and what covers it


HELP_ONLY = "the bare name of a command in the text: its help is checked"
MAKE_RUN = "run for real by test_make_run_matches_the_readme_and_its_examples_answer"
BENCH_OVERHEAD = (
    'make bench BENCH_ARGS="--duration 1 --sequential 50 --streams 2 --out {scratch}/overhead.json"'
)
LITELLM = "needs a LiteLLM install, not a dependency; `make bench` runs the same script without it"

QUICK: dict[str, Quick] = {
    "make run": Quick(why_not=MAKE_RUN),
    "make test": Quick(why_not="this suite is what `make test` runs"),
    # In a shell without the virtualenv on PATH, as a newcomer's after `make run`.
    ". .venv/bin/activate": Quick(
        run="env PATH=/usr/bin:/bin bash -c '. .venv/bin/activate && command -v faregate'",
        where="checkout",
        expect=".venv/bin/faregate",
    ),
    "make unit": Quick(run="make -n unit", where="checkout", expect='-m "not e2e"'),
    "make run EXTRAS=semantic": Quick(
        run="make -n run EXTRAS=semantic", where="checkout", expect="pip install --quiet -e '.[semantic]'"
    ),
    "make bench": Quick(run=BENCH_OVERHEAD, where="checkout", expect="healthy after start"),
    # 600 requests: enough for every kind of fault to be drawn (the test checks that it was).
    "make chaos": Quick(
        run="make chaos CHAOS_REQUESTS=200 CHAOS_REPORT={scratch}/results/chaos.json",
        where="checkout",
        expect='"client_failures": 0',
    ),
    "faregate models": Quick(expect="model(s)"),
    "faregate models flash": Quick(expect="deepseek-ai/DeepSeek-V4-Flash"),
    "faregate models --modality image --available": Quick(expect="model(s)"),
    "faregate models --all": Quick(expect="model(s)"),
    # Before any gateway or key made a store in this directory: said, and not made on the spot.
    "faregate usage --since 7d --by model": Quick(
        run="! faregate usage --since 7d --by model", expect="no store at .faregate/faregate.db"
    ),
    "faregate usage --by wire": Quick(expect="No requests recorded"),
    "faregate usage --by key": Quick(expect="No requests recorded"),
    # Listening on every interface is not done on a shared machine: its option is checked.
    "faregate serve --host 0.0.0.0": Quick(run="faregate serve --help", expect="--host"),
    "faregate keys create --name backend": Quick(expect="Store it now"),
    "faregate keys list": Quick(expect="backend"),
    "faregate keys revoke backend": Quick(expect="Revoked"),
    "faregate sim --port 4001 --script my-faults.yaml": Quick(
        run="faregate sim --port 0 --script my-faults.yaml", server=True, expect="faregate sim ready at"
    ),
    "faregate keys create --name checkout-service --credits 25 --budget day=2 --rpm 60 --max-request 0.05": (
        Quick(expect="checkout-service")
    ),
    'faregate credits add checkout-service 10 --note "March top-up"': Quick(expect="Added $10"),
    "faregate credits audit": Quick(expect="balance"),
    "faregate cost --requests-per-month 1 --input-tokens 9600000 --output-tokens 6400000 -m gpt-4o": (
        Quick(expect="$88.00")
    ),
    "faregate replay --data data/routellm/gsm8k_responses.csv --policy length --plot gsm8k.png": (
        Quick(expect="length ≥ 184 (keeps 95% of strong)")
    ),
    "faregate router evidence --data-dir data/routellm --out docs --models routers --seed 0": Quick(
        run="faregate router evidence --help",
        expect="--data-dir",
        why_not="the full run trains three models on 8,600 prompts (minutes): its help is checked here, "
        "and tests/test_complexity_router.py trains and evaluates on a sample",
    ),
    "faregate cache-eval --data data/routellm": Quick(
        run="faregate cache-eval --data data/routellm --limit 30 --latency-samples 5 --pad-to 0 --out ce",
        expect="threshold",
    ),
    "faregate credits release-instance ID": Quick(
        run="faregate credits release-instance --help",
        expect="--force",
        why_not="needs a dead instance's id: tests/test_instance_leases_e2e.py kills a gateway and "
        "releases its holds; the help is checked here",
    ),
    "faregate router train": Quick(run="faregate router train --help", expect="--data", why_not=HELP_ONLY),
    "faregate sim": Quick(run="faregate sim --help", expect="--script", why_not=HELP_ONLY),
    "faregate serve": Quick(run="faregate serve --help", expect="--new-key", why_not=HELP_ONLY),
    "faregate eval": Quick(run="faregate eval --help", expect="--base-url", why_not=HELP_ONLY),
    "faregate cost": Quick(run="faregate cost --help", expect="--from-records", why_not=HELP_ONLY),
    "faregate replay": Quick(run="faregate replay --help", expect="--policy", why_not=HELP_ONLY),
    "faregate router": Quick(run="faregate router --help", expect="evidence", why_not=HELP_ONLY),
    "python bench/overhead.py --litellm /path/to/venv/bin/litellm": Quick(why_not=LITELLM),
    "python bench/overhead.py --litellm /tmp/litellm-venv/bin/litellm": Quick(why_not=LITELLM),
    "python bench/overhead.py": Quick(why_not="what `make bench` runs: checked there"),
    "python bench/transport_bench.py --duration 5": Quick(
        run="python bench/transport_bench.py --duration 1 --modes canned,transport --out {scratch}/t.json",
        where="checkout",
        expect="transport:",
    ),
    "python bench/dashboard_bench.py --records 1000000": Quick(
        run="python bench/dashboard_bench.py --records 2000 --repeat 1 --out {scratch}/dashboard.json",
        where="checkout",
        expect="recent requests",
    ),
    "python bench/dashboard_bench_postgres.py --records 1000000": Quick(
        run="python bench/dashboard_bench_postgres.py --records 2000 --repeat 1",
        where="checkout",
        expect="recent requests",
    ),
    "python bench/fuzz_api.py --requests 10000": Quick(
        run="python bench/fuzz_api.py --requests 60 --report {scratch}/fuzz.json",
        where="checkout",
        expect="done in",
    ),
    "python bench/fuzz_api.py --requests 10000 --seed 1 --report bench/results/fuzz.json": Quick(
        why_not="the same script as the line before, with a seed and a report: run there"
    ),
    "python bench/semantic_lookup.py --wait-load 1.0": Quick(
        run="python bench/semantic_lookup.py --help",
        where="checkout",
        expect="--sizes",
        why_not="embeds ~56,000 texts on a first run (15 min) and compares with a `git archive` of main: "
        "its help is checked here; tests/test_semantic_index.py covers the lookups it times",
    ),
    "python bench/comparators.py": Quick(
        run="python bench/comparators.py --limit 20", where="checkout", expect="| final_answer |"
    ),
    "python bench/router_generalisation.py --repeats 30": Quick(
        run="python bench/router_generalisation.py --help",
        where="checkout",
        expect="--hold-out",
        why_not="about 25 fits on 3,600 prompts per split, 30 splits (10-20 min), and the MiniLM vectors of "
        "7,279 MMLU prompts (15 min on a first run): its help is checked here; "
        "tests/test_complexity_router.py covers the blend it chose",
    ),
    "python bench/router_generalisation.py": Quick(
        why_not="the same script as `python bench/router_generalisation.py --repeats 30`: checked there"
    ),
    "faregate router train --model within-subject": Quick(
        run="faregate router train --help",
        expect="within-subject",
        why_not="trains on 3,600 MMLU prompts (a minute, plus 15 min of embeddings on a first run): "
        "its help is checked here; tests/test_complexity_router.py trains that model on a sample",
    ),
    "python bench/router_generalisation.py --procedures --repeats 10": Quick(
        why_not="the same script as `python bench/router_generalisation.py --repeats 30` "
        "(about 18 min of training): its help is checked there"
    ),
    "python bench/semantic_lookup.py": Quick(
        why_not="the same script as the line before, without --wait-load: checked there"
    ),
    "python bench/estimate_accuracy.py --timing": Quick(
        run="python bench/estimate_accuracy.py --mmlu-per-subject 1 --timing",
        where="checkout",
        expect="(b) light",
    ),
    "python bench/soak.py --usage-estimate tokenizer": Quick(
        why_not="the soak of `python bench/soak.py` with the tokenizer opted in: the same code, its "
        "quick form runs there; tests/test_usage_estimate_e2e.py covers the setting"
    ),
    "python bench/soak.py": Quick(
        run="python bench/soak.py --requests 3000 --warmup-probe 1000 --max-seconds 90"
        " --out {scratch}/soak.json --png {scratch}/soak.png",
        where="checkout",
        expect="rss_peak_mib",
    ),
    "python bench/soak.py --requests 40000 --warmup-probe 5000 --tracemalloc 1": Quick(
        why_not="the soak of the line before with tracemalloc on: its start-up alone takes ~50 s here and "
        "every request is ~20x slower; run by hand (figures in bench/README.md)"
    ),
    "python bench/soak.py --requests 300000 --backpressure 0": Quick(
        why_not="the soak of `python bench/soak.py` with records.backpressure_pending set to 0: the same "
        "code, its quick form runs there; tests/test_records.py covers the setting"
    ),
    "python bench/soak.py --plot-only a.json b.json --png bench/soak-rss.png": Quick(
        why_not="draws earlier runs' files; the quick soak above draws its own curve with the same code"
    ),
    "python bench/profile_request.py": Quick(
        run="python bench/profile_request.py --duration 1 --warmup 1 --out {scratch}/profile.json",
        where="checkout",
        expect="gateway CPU",
    ),
    "python bench/record_writer.py": Quick(
        run="python bench/record_writer.py --records 2048",
        where="checkout",
        expect="| time first | no |",
    ),
    "python bench/profile_request.py --accounts": Quick(
        run="python bench/profile_request.py --accounts --duration 1 --warmup 1 --out {scratch}/metered.json",
        where="checkout",
        expect="gateway CPU",
    ),
    "python bench/profile_request.py --mode pyspy --native": Quick(
        # Without --native: the start-up under native sampling takes about a minute here.
        run="python bench/profile_request.py --mode pyspy --duration 1 --warmup 1 --out {scratch}/spy.json",
        where="checkout",
        expect="py-spy:",
    ),
    "python bench/profile_request.py --mode cprofile": Quick(
        run="python bench/profile_request.py --mode cprofile --duration 1 --warmup 1 --out {scratch}/cp.json",
        where="checkout",
        expect="cProfile:",
    ),
    "python bench/profile_request.py --mode cprofile --wire messages": Quick(
        run="python bench/profile_request.py --mode cprofile --wire messages --duration 1 --warmup 1 "
        "--out {scratch}/cp-messages.json",
        where="checkout",
        expect="cProfile:",
    ),
    "python bench/profile_request.py --mode callgrind --duration 30 --connections 16": Quick(
        why_not="valgrind runs the gateway ~50x slower (a minute or more to start): run by hand"
    ),
    "python bench/profile_request.py --stream": Quick(
        run="python bench/profile_request.py --stream --duration 1 --warmup 1 --out {scratch}/stream.json",
        where="checkout",
        expect="per request = per stream",
    ),
    "python bench/profile_request.py --stream --connections 16": Quick(
        why_not="the `--stream` form above at 16 connections, for 10 s: its quick run covers the code"
    ),
    "python bench/profile_request.py --mode pyspy --native --stream": Quick(
        # Without --native, as above: the start-up under native sampling takes about a minute here.
        run="python bench/profile_request.py --mode pyspy --stream --duration 1 --warmup 1 "
        "--out {scratch}/spy-stream.json",
        where="checkout",
        expect="py-spy:",
    ),
    "python bench/profile_request.py --mode callgrind --stream --duration 20 --connections 16": Quick(
        why_not="valgrind runs the gateway ~50x slower (a minute or more to start): run by hand"
    ),
    "python bench/profile_request.py --mode callgrind --duration 20 --connections 16 --pythonpath "
    "/tmp/perf-base/src": Quick(
        why_not="valgrind runs the gateway ~50x slower, beside another checkout: run by hand"
    ),
    "python bench/profile_request.py --mode callgrind --duration 20 --connections 16 --pythonpath "
    '"$PWD/src"': Quick(
        why_not="valgrind runs the gateway ~50x slower (a minute or more to start): run by hand"
    ),
    "git worktree add --detach /tmp/perf-base 0dd2859": Quick(
        why_not="makes the baseline checkout of a comparison, not a command of ours"
    ),
    "python bench/semantic_warmup.py --entries 50000 --scopes 4 --rounds 3": Quick(
        run="python bench/semantic_warmup.py --entries 2000 --scopes 2 --rounds 1",
        where="checkout",
        expect="warm-up",
    ),
    "python bench/profile_request.py --pythonpath /other/checkout/src": Quick(
        why_not="needs another checkout; the script's own quick form runs above"
    ),
    "python bench/store_cost.py": Quick(
        run="python bench/store_cost.py --records 500",
        where="checkout",
        expect="µs CPU per record",
    ),
    "python bench/store_cost.py --tree /tmp/fg-main-17c": Quick(
        why_not="needs another checkout; the line before runs the same script on this one"
    ),
    "python bench/ttft.py": Quick(
        run="python bench/ttft.py --seconds 1 --rounds 1 --out {scratch}/ttft.json",
        where="checkout",
        expect="added TTFT",
    ),
    "python bench/ttft.py --clients 1": Quick(why_not="the line before with one client: the same code"),
    "python bench/ttft.py --pythonpath /other/checkout/src": Quick(
        why_not="needs another checkout; the script's own quick form runs above"
    ),
    "faregate serve --workers N": Quick(why_not="the form of the command: the line below runs two"),
    "faregate serve --workers 2": Quick(
        why_not="listens on the default port 4000: tests/test_workers_e2e.py runs two workers (served by "
        "both, no overspend, one rate limit, a killed worker restarted, one record per request at SIGTERM)"
    ),
    "python bench/workers.py": Quick(
        run="python bench/workers.py --duration 1 --rounds 1 --out {scratch}/workers.json",
        where="checkout",
        expect="2 workers / 1 worker",
    ),
    "python bench/workers.py --accounts": Quick(why_not="the line before with metering on: the same code"),
    "python bench/routes_gsm8k.py": Quick(
        run="python bench/routes_gsm8k.py --questions 4 --streams 0 --out {scratch}/routes.json",
        where="checkout",
        expect="math-cascade",
    ),
    "python bench/quality_live.py": Quick(
        run="python bench/quality_live.py --questions 20 --passes 1 --out {scratch}/quality.json",
        where="checkout",
        expect="math-cascade",
    ),
    "python bench/quality_live.py --confidence 0.8": Quick(
        why_not="the line before with another confidence: the same code"
    ),
    "python bench/quality_cache_live.py --confidence 0.8": Quick(
        run=(
            # A fifth of each pair file (see scratch) with a bound of 10%, which that evidence can
            # meet: hits are served and checked, as in the full run (at 0.5% they would not be).
            "python bench/quality_cache_live.py --confidence 0.8 --bound 0.1 --distinct 10"
            " --warm {scratch}/chat_pairs_dev.txt --pairs {scratch}/chat_pairs_test.txt"
        ),
        where="checkout",
        expect="true paraphrases served",
    ),
    "python bench/quality_cache_live.py": Quick(
        why_not="the line before at another confidence: the same code"
    ),
    "python bench/quality_cache_live.py --prior-lookups 2000": Quick(
        why_not="the line with --confidence 0.8 with two config keys more (tests/test_cache_prior.py)"
    ),
    "python bench/domain_learning.py": Quick(
        run="python bench/domain_learning.py --examples 100 --calls 50",
        where="checkout",
        expect="decode + adopt",
    ),
    "python bench/quality_admission.py": Quick(
        run="python bench/quality_admission.py --examples 100 --admissions 20",
        where="checkout",
        expect="| ledger |",
    ),
    "python bench/quality_overhead.py": Quick(
        run="python bench/quality_overhead.py --requests 5", where="checkout", expect="calibrated-100"
    ),
    "python bench/request_path.py": Quick(
        run="python bench/request_path.py --runs 1", where="checkout", expect="non-streaming:"
    ),
    "python bench/wires.py": Quick(
        run="python bench/wires.py --duration 1 --sequential 30 --rounds 1 --out {scratch}/wires.json",
        where="checkout",
        expect="/v1/embeddings |",
    ),
    # docs/accounts.md's CLI session. Its key has the README's name, and a name must be unique among
    # live keys for `checkout-service` to name one: the README's key is revoked first.
    "faregate keys create --name checkout-service --credits 25 --budget day=2 --budget month:rolling=40"
    " --rpm 60 --max-request 0.05": Quick(
        run="faregate keys revoke checkout-service && faregate keys create --name checkout-service"
        " --credits 25 --budget day=2 --budget month:rolling=40 --rpm 60 --max-request 0.05",
        expect="with $25 of credits",
    ),
    "faregate keys update checkout-service --budget day=3 --budget month=50 --tpm 200000": Quick(
        expect="60 requests/min, 200,000 tokens/min, per request $0.05"
    ),
    "faregate keys show checkout-service": Quick(expect="budget    calendar month: $0 of $50, resets"),
    "faregate keys revoke checkout-service": Quick(expect="Revoked"),
    # No gateway has run in the scratch directory: no instance to list, and said so.
    "faregate credits instances": Quick(expect="No serving instance is registered"),
    "faregate credits release-instance inst_77aa01e9b3c2": Quick(
        why_not="the id of the text's dead instance: `faregate credits release-instance ID` (help) above"
    ),
    "faregate credits audit -c a/faregate.yaml": Quick(
        why_not="one of two instances on PostgreSQL and Redis: tests/test_scaleout.py audits them; "
        "`faregate credits audit` runs above"
    ),
    "faregate credits ledger KEY": Quick(
        run="faregate credits ledger --help", expect="newest first", why_not=HELP_ONLY
    ),
    # docs/replay-routes.md: the three replays of its config (the router's MiniLM vectors of 654
    # prompts are cached in ~/.cache/faregate/router after a first run).
    "faregate replay --data data/routellm/gsm8k_responses.csv -c replay.yaml"
    " --policy route:short-to-mixtral": Quick(
        expect="│ route short-to-mixtral │                    30.5% │    72.7% │ 0.406 │   $2.28 │"
    ),
    "faregate replay --data data/routellm/gsm8k_responses.csv -c replay.yaml --policy route:math-cascade"
    " --held-out": Quick(
        expect="│                    41.4% │    80.4% │ 0.747 │    $1.45 │               48.5% │"
    ),
    "faregate replay --data data/routellm/gsm8k_responses.csv -c replay.yaml --policy route:math-router"
    " --held-out": Quick(
        expect="│ route math-router (strong_share 40%) │                    42.4% │    75.8% │ 0.547 │"
    ),
    "faregate router eval": Quick(run="faregate router eval --help", expect="--judge", why_not=HELP_ONLY),
    "faregate keys …": Quick(run="faregate keys --help", expect="revoke", why_not=HELP_ONLY),
    "faregate credits …": Quick(run="faregate credits --help", expect="release-instance", why_not=HELP_ONLY),
}
CURL = "curl "  # the README's curl examples: answered by the gateway of `make run`
# Blocks of each chat pair file (of 45) bench/quality_cache_live.py's quick run replays.
QUICK_PAIR_BLOCKS = 9
# A fault script for the simulator line (the README's `my-faults.yaml`).
FAULTS = "defaults: {faults: {rate_limit: 0.1, server_error: 0.05}}\n"


def env(**extra: str) -> dict[str, str]:
    """The documents' shell: the checkout's virtualenv first on PATH, no provider keys, no config."""
    drop = ("FAREGATE_CONFIG", "FAREGATE_MASTER_KEY", "FAREGATE_BASE_URL", "FAREGATE_API_KEY")
    values = {k: v for k, v in os.environ.items() if not k.endswith("_API_KEY") and k not in drop}
    values["PATH"] = f"{VENV_BIN}{os.pathsep}{values.get('PATH', '')}"
    values["COLUMNS"] = "160"
    values.update(extra)
    return values


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("documented")
    for name in ("data", "routers"):
        (folder / name).symlink_to(ROOT / name)
    (folder / "my-faults.yaml").write_text(FAULTS)
    # docs/replay-routes.md's `replay.yaml`: the page's own config block.
    page = (ROOT / "docs" / "replay-routes.md").read_text(encoding="utf-8")
    (folder / "replay.yaml").write_text(re.findall(r"```yaml\n(.*?)```", page, re.S)[0])
    # bench/quality_cache_live.py's quick run: the first blocks of the chat pair files (paraphrases
    # and near misses, a warm-up file and a test file).
    for name in ("chat_pairs_dev.txt", "chat_pairs_test.txt"):
        pairs = (ROOT / "src" / "faregate" / "evals" / "cache_eval" / "data" / name).read_text("utf-8")
        (folder / name).write_text("\n\n".join(pairs.split("\n\n")[: 1 + QUICK_PAIR_BLOCKS]) + "\n")
    return folder


def test_every_documented_command_has_a_quick_form_here() -> None:
    commands = documented()
    missing = [c for c in commands if c not in QUICK and not c.startswith(CURL)]
    assert missing == [], "documented commands with no quick form in QUICK: " + repr(missing)
    stale = [c for c in QUICK if c not in commands]
    assert stale == [], "QUICK entries the documents no longer show: " + repr(stale)


def runnable() -> list[str]:
    return [c for c in documented() if c in QUICK and (QUICK[c].run or not QUICK[c].why_not)]


@pytest.mark.parametrize("command", runnable())
def test_documented_command_runs(command: str, scratch: Path) -> None:
    quick = QUICK[command]
    line = (quick.run or command).format(scratch=scratch)
    cwd = ROOT if quick.where == "checkout" else scratch
    if quick.server:
        output = run_server(line, cwd)
    else:
        result = subprocess.run(
            ["bash", "-c", line], cwd=cwd, env=env(), capture_output=True, text=True, timeout=600
        )
        output = result.stdout + result.stderr
        assert result.returncode == 0, f"{line}\n{output[-3000:]}"
        assert "Traceback" not in output, output[-3000:]
    assert quick.expect in output, f"{line}: {quick.expect!r} not in\n{output[-3000:]}"


def run_server(line: str, cwd: Path) -> str:
    log = cwd / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            ["bash", "-c", f"exec {line}"], cwd=cwd, env=env(), stdout=out, stderr=subprocess.STDOUT
        )
        try:
            wait_until(lambda: "ready" in log.read_text() or process.poll() is not None, f"{line} is ready")
        finally:
            process.terminate()
            process.wait(15)
    return log.read_text()


def readme_block(after: str) -> list[str]:
    """The lines of the first plain ``` block after `after` in the README."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("```\n", text.index(after)) + 4
    return text[start : text.index("```", start)].rstrip("\n").splitlines()


def as_pattern(line: str) -> re.Pattern[str]:
    """A README output line, with what changes from run to run (keys, ids, ports) as wildcards."""
    pattern = re.escape(line)
    for varying, wildcard in (
        (r"fg\\-master\\-[\w\\-]+", r"fg-master-[\w-]+"),
        (r"fg\\-[\w\\-]+", r"fg-[\w-]+"),
        (r"key_[0-9a-f]+", r"key_[0-9a-f]+"),
        (r"127\\.0\\.0\\.1:\d+", r"127\.0\.0\.1:\d+"),
        (r"msg_ID", r"msg_[0-9a-f]+"),
        # A log line's time.
        (r"\d{4}\\-\d\d\\-\d\d\\ \d\d:\d\d:\d\d,\d{3}", r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}"),
    ):
        pattern = re.sub(varying, lambda _m, w=wildcard: w, pattern)
    return re.compile(pattern)


@pytest.fixture
def make_run(tmp_path: Path) -> Iterator[tuple[int, str]]:
    """`make run` as the README says, on a free port (FAREGATE_CONFIG) with its store in tmp_path."""
    port = free_port()
    config = tmp_path / "faregate.yaml"
    config.write_text(f"server: {{port: {port}}}\nstore: {{path: {str(tmp_path / 'store')!r}}}\n")
    log = tmp_path / "make-run.log"
    with open(log, "wb") as out:
        # Its own session: make and the processes it starts are stopped together, and only they.
        process = subprocess.Popen(
            ["make", "run"],
            cwd=ROOT,
            env=env(FAREGATE_CONFIG=str(config)),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_until(
                lambda: 'print("cost (USD):"' in log.read_text() or process.poll() is not None,
                "make run prints its snippet",
                timeout_s=120,
            )
            yield port, log.read_text()
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(30)


def test_make_run_matches_the_readme_and_its_examples_answer(make_run: tuple[int, str]) -> None:
    port, output = make_run
    lines = output.splitlines()
    for shown in readme_block("a snippet to\npaste,"):
        assert any(as_pattern(shown).fullmatch(line) for line in lines), f"not printed: {shown!r}\n{output}"

    # The snippet it printed prints what the README says it prints.
    snippet = output[output.index("from openai import OpenAI") : output.index('print("cost (USD):"')]
    snippet += 'print("cost (USD):", reply.usage.cost)\n'
    ran = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, timeout=60)
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == readme_block("that prints:")

    # The README's curl examples, with the keys make run printed.
    api_key = re.search(r"API key \(shown once[^)]*\): (fg-\S+)", output)
    master = re.search(r"Master key \(shown once[^)]*\): (fg-master-\S+)", output)
    assert api_key and master, output
    curls = [c for c in documented() if c.startswith(CURL)]
    assert len(curls) >= 3
    for curl in curls:
        line = curl.replace("localhost:4000", f"localhost:{port}")
        result = subprocess.run(
            ["bash", "-c", line],
            env=env(FAREGATE_MASTER_KEY=master.group(1), KEY=api_key.group(1)),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, (curl, result.stderr)
        answer = json.loads(result.stdout)
        assert "error" not in answer, (curl, answer)
        shown = shown_output(curl)
        if shown is not None:  # what the README says it prints, ids aside
            printed = result.stdout.strip()
            assert any(as_pattern(line).fullmatch(printed) for line in shown), (curl, printed)


def shown_output(curl: str) -> list[str] | None:
    """The lines of the plain ``` block right after the ```sh block of `curl` in the README, if one
    follows it at once (the answers it shows), with the ids of Anthropic messages as wildcards."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    end = text.index("```", text.index(curl)) + 3
    if not text[end:].startswith("\n\n```\n"):
        return None
    start = end + len("\n\n```\n")
    lines = text[start : text.index("```", start)].rstrip("\n").splitlines()
    return [re.sub(r'"id":"msg_[0-9a-f]+"', '"id":"msg_ID"', line) for line in lines]
