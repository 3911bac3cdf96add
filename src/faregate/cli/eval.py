"""`faregate eval`: run a prompt set across models through the gateway; quality, latency and cost."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Annotated, Any

import typer
from openai import AsyncOpenAI
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from faregate.cli.common import ConfigOption, load_or_exit
from faregate.cli.eval_plot import plot
from faregate.cli.eval_table import comparison_lines, judging_line, table, unscored_line
from faregate.errors import StartupError
from faregate.evals.prompt_eval.judge import DEFAULT_RUBRIC
from faregate.evals.prompt_eval.report import build_report, write_results
from faregate.evals.prompt_eval.run import (
    ANSWERS_FILE,
    Answer,
    EvalItem,
    RunOptions,
    load_answers,
    load_items,
    pending,
    run,
)
from faregate.evals.prompt_eval.scorers import NEEDS_EXPECTED, SCORERS, check_expected


def _check(items: list[EvalItem], scorer: str) -> None:
    for item in items:
        if scorer in NEEDS_EXPECTED and item.expected is None:
            raise typer.BadParameter(f"item {item.id} has no `expected`, which scorer {scorer} needs")
        if item.expected is not None and scorer in NEEDS_EXPECTED:
            try:
                check_expected(scorer, item.expected)
            except ValueError as exc:
                raise typer.BadParameter(f"item {item.id}: bad expected value for {scorer}: {exc}") from None


def _read_rubric(path: Path) -> str:
    # A missing or unreadable file is a usage error (exit 2) like a missing prompt set; as a bare
    # OSError cli/main.py would say it in one line but exit 1, as for the environment.
    try:
        return path.read_text(encoding="utf-8")
    except OSError as exc:
        raise StartupError(f"{path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise StartupError(f"{path}: not UTF-8 text ({exc.reason}); save it as UTF-8") from None


async def _run(
    base_url: str,
    api_key: str,
    work: list[tuple[EvalItem, str]],
    done: dict[tuple[str, str], Answer],
    out: Path,
    options: RunOptions,
    console: Console,
) -> None:
    client = AsyncOpenAI(base_url=base_url, api_key=api_key, max_retries=2, timeout=120)
    try:
        columns = (TextColumn("answering"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=True) as progress:
            task = progress.add_task("answering", total=len(work))
            await run(client, work, done, out, options, lambda answer: progress.advance(task))
    finally:
        await client.close()


def _hint(error: str) -> str:
    """What to check, from the first error (its SDK class leads it): only a request that never got
    an answer asks whether the gateway runs there; one the gateway refused says what it refused."""
    if error.startswith(("APIConnectionError", "APITimeoutError")):
        return "Is the gateway running there (--base-url, FAREGATE_BASE_URL)? "
    if error.startswith(("AuthenticationError", "PermissionDeniedError")):
        return "Is the API key (--api-key, FAREGATE_API_KEY) one of its keys? "
    return ""


def register(app: typer.Typer) -> None:
    @app.command(name="eval")
    def eval_command(
        prompts: Annotated[
            Path, typer.Argument(help="Prompt set: JSONL or CSV with prompt|messages, expected, tags.")
        ],
        model: Annotated[
            list[str], typer.Option("--model", "-m", help="A model or route to evaluate (repeatable).")
        ],
        scorer: Annotated[str, typer.Option(help=f"How answers are graded: {', '.join(SCORERS)}.")] = "exact",
        out: Annotated[
            Path, typer.Option(help="Output directory (answers.jsonl makes re-runs resume).")
        ] = Path("eval-results"),
        base_url: Annotated[
            str | None,
            typer.Option(
                envvar="FAREGATE_BASE_URL",
                help="The gateway's OpenAI-compatible base URL (default: the configured gateway, "
                "http://127.0.0.1:4000/v1 unless server.host/port say otherwise).",
                show_default=False,
            ),
        ] = None,
        api_key: Annotated[
            str | None, typer.Option(envvar="FAREGATE_API_KEY", help="A gateway API key.", show_default=False)
        ] = None,
        concurrency: Annotated[int, typer.Option(min=1, help="Requests in flight at once.")] = 8,
        monthly_requests: Annotated[
            int, typer.Option(min=0, help="Monthly volume for the projected cost.")
        ] = 100_000,
        judge_model: Annotated[
            str | None, typer.Option(help="Model that grades answers (scorer llm-judge).")
        ] = None,
        rubric: Annotated[
            Path | None, typer.Option(help="Judge rubric file with {prompt}, {expected}, {answer}.")
        ] = None,
        max_tokens: Annotated[int | None, typer.Option(help="max_tokens per answer.")] = None,
        temperature: Annotated[float | None, typer.Option(help="Sampling temperature.")] = None,
        extra_body: Annotated[
            str | None,
            typer.Option(help="JSON object merged into every answer request's body (not the judge's)."),
        ] = None,
        config: ConfigOption = None,
    ) -> None:
        """Run PROMPTS across models through the gateway and compare quality, latency and cost.

        Each answer is appended to OUT/answers.jsonl as it arrives; a re-run only sends what is
        missing. Writes results.csv, summary.json and cost_quality.png into OUT.
        """
        if scorer not in SCORERS:
            raise typer.BadParameter(f"scorer must be one of {', '.join(SCORERS)}")
        if scorer == "llm-judge" and not judge_model:
            raise typer.BadParameter("scorer llm-judge needs --judge-model")
        if not api_key:
            raise typer.BadParameter("give --api-key or set FAREGATE_API_KEY")
        if base_url is None:
            base_url = load_or_exit(config).server.base_url
        models = list(dict.fromkeys(model))
        try:
            items = load_items(prompts)
        except OSError as exc:
            raise StartupError(f"{prompts}: {exc.strerror or exc}") from None
        except UnicodeDecodeError as exc:  # a ValueError whose message does not name the file
            raise StartupError(f"{prompts}: not UTF-8 text ({exc.reason}); save it as UTF-8") from None
        except ValueError as exc:  # the message names the file and line
            raise StartupError(str(exc)) from None
        try:
            body: Any = json.loads(extra_body) if extra_body else None
        except ValueError as exc:
            raise typer.BadParameter(f"--extra-body is not JSON: {exc}") from None
        if body is not None and not isinstance(body, dict):
            raise typer.BadParameter("--extra-body must be a JSON object")
        _check(items, scorer)
        options = RunOptions(
            concurrency=concurrency,
            judge_model=judge_model if scorer == "llm-judge" else None,
            rubric=_read_rubric(rubric) if rubric else DEFAULT_RUBRIC,
            max_tokens=max_tokens,
            temperature=temperature,
            extra_body=body,
        )
        console = Console(width=max(Console().width, 150))
        done = load_answers(out)
        work = pending(items, models, done, options.judge_id)
        skipped = len(items) * len(models) - len(work)
        if skipped:
            console.print(f"resuming: {skipped} answers already in {out / ANSWERS_FILE}, {len(work)} to go")
        if work:
            console.print(f"asking {base_url}: {len(work)} answers to get", highlight=False)
            asyncio.run(_run(base_url, api_key, work, done, out, options, console))
        answers = [done[(item.id, m)] for item in items for m in models if (item.id, m) in done]
        if answers and not any(a.ok for a in answers):
            # A table of zeros would read as a result; it is a gateway that did not answer.
            first = next(a.error for a in answers if a.error).rstrip(".")
            raise StartupError(
                f"every request failed ({len(answers)} of {len(answers)}) at {base_url}; first error: "
                f"{first}. {_hint(first)}A re-run retries every failed request"
            )
        report = build_report(items, models, done, scorer, monthly_requests)
        write_results(out, report, items, done)
        chart = plot(report, out)
        console.print(table(report))
        for line in comparison_lines(report):
            console.print(line, highlight=False)
        judging, unscored = judging_line(report), unscored_line(report)
        if judging:
            console.print(judging, highlight=False)
        if unscored:
            console.print(unscored, highlight=False, style="yellow")
        console.print(f"wrote {out / 'results.csv'}, {out / 'summary.json'}, {chart}")
        failed = sum(s.errors for s in report.summaries)
        if failed:
            console.print(f"{failed} requests failed; re-run the same command to retry them", style="yellow")
