"""Run a prompt set across models through the gateway, appending each answer to answers.jsonl.

The answers file is the checkpoint: one JSON line per (item, model) written as soon as the
answer arrives, so an interrupted run loses at most the requests in flight, and a re-run
sends only the pairs not yet answered. Failed requests are recorded too (so the report can
count them) but are retried by the next run.
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import json
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from openai import AsyncOpenAI, OpenAIError

from faregate.evals.prompt_eval.judge import judge
from faregate.evals.prompt_eval.reply_cost import COST_HEADER, reply_cost, usd_text

ANSWERS_FILE = "answers.jsonl"


@dataclass(slots=True, frozen=True)
class EvalItem:
    id: str
    messages: list[dict[str, Any]]
    expected: str | None = None
    tags: tuple[str, ...] = ()

    @property
    def prompt(self) -> str:
        """The last user message's text (what the judge is shown as the question)."""
        for message in reversed(self.messages):
            if message.get("role") == "user" and isinstance(message.get("content"), str):
                return str(message["content"])
        return ""


@dataclass(slots=True)
class Answer:
    item_id: str
    model: str
    text: str = ""
    error: str | None = None
    latency_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Exact decimal text, as the gateway's x-faregate-cost-usd header gives it.
    cost_usd: str = "0"
    served_by: str | None = None
    judge_score: float | None = None
    judge_reply: str | None = None
    # Which judge (model and rubric, see RunOptions.judge_id) gave judge_score: a score from
    # another judge is not reused when the judge or the rubric changes.
    judged_by: str | None = None
    # Every judge call that got a reply for this answer (a reply without a readable score is
    # re-judged by the next run, and paid for again), and what they cost together.
    judge_calls: int = 0
    judge_cost_usd: str = "0"
    created_at: float = field(default_factory=time.time)

    @property
    def cost(self) -> Decimal:
        return Decimal(self.cost_usd)

    @property
    def judge_cost(self) -> Decimal:
        return Decimal(self.judge_cost_usd)

    @property
    def ok(self) -> bool:
        return self.error is None


def _item_id(payload: Any) -> str:
    # Content-addressed: editing or reordering the file keeps the answers of unchanged items.
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _tags(value: Any) -> tuple[str, ...]:
    if value is None or value == "":
        return ()
    if isinstance(value, list):
        return tuple(str(tag) for tag in value)
    return tuple(tag.strip() for tag in str(value).replace(";", ",").split(",") if tag.strip())


def _item(row: dict[str, Any], where: str) -> EvalItem:
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object with `prompt` or `messages`")
    messages = row.get("messages")
    if isinstance(messages, str) and messages.strip():
        try:
            messages = json.loads(messages)  # CSV cells hold messages as JSON text
        except ValueError as exc:
            raise ValueError(f"{where}: `messages` is not JSON: {exc}") from None
    if not messages:
        prompt = row.get("prompt")
        if not isinstance(prompt, str) or not prompt:
            raise ValueError(f"{where}: needs a `prompt` or `messages`")
        messages = [{"role": "user", "content": prompt}]
    if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
        raise ValueError(f"{where}: `messages` must be a list of {{role, content}} objects")
    expected = row.get("expected")
    if isinstance(expected, list):
        # Its JSON text would be compared with each answer, and every answer fail: no scorer takes one.
        raise ValueError(
            f"{where}: `expected` is a list; give one text (several acceptable answers: --scorer regex "
            "with an alternation)"
        )
    if isinstance(expected, bool):
        # Its JSON text "true" would be compared: `exact` and `regex` failed an answer "True". Which
        # words count as yes is the prompt set's to say, in a text and a scorer.
        raise ValueError(
            f'{where}: `expected` is a JSON boolean; give the answer as text ("true", "True", "yes"), '
            "with --scorer contains to ignore case"
        )
    if expected is not None and not isinstance(expected, str):
        # JSON items may give a number or a schema object; scorers compare text.
        expected = expected if isinstance(expected, str) else json.dumps(expected)
    if expected == "":
        expected = None
    explicit = row.get("id")
    item_id = str(explicit) if explicit not in (None, "") else _item_id([messages, expected])
    return EvalItem(item_id, messages, expected, _tags(row.get("tags")))


def load_items(path: Path) -> list[EvalItem]:
    """Items from JSONL (one object a line) or CSV (a header row); duplicate ids are an error."""
    # utf-8-sig: a byte-order mark (Excel's "CSV UTF-8", Notepad) is not part of the first key.
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows: Iterable[tuple[int, dict[str, Any]]] = list(enumerate(csv.DictReader(handle), 2))
    else:
        rows = []
        for number, line in enumerate(path.read_text(encoding="utf-8-sig").splitlines(), 1):
            if line.strip():
                try:
                    rows.append((number, json.loads(line)))
                except ValueError as exc:  # its own "line 1 column 15" would not say which line
                    raise ValueError(f"{path}:{number}: not JSON: {exc}") from None
    items: list[EvalItem] = []
    seen: set[str] = set()
    for number, row in rows:
        item = _item(row, f"{path}:{number}")
        if item.id in seen:
            raise ValueError(f"{path}:{number}: duplicate item {item.id} (give items an `id`)")
        seen.add(item.id)
        items.append(item)
    if not items:
        raise ValueError(f"{path}: no items")
    return items


def load_answers(out: Path) -> dict[tuple[str, str], Answer]:
    """The latest answer per (item, model); a torn last line (killed mid-write) is ignored."""
    answers: dict[tuple[str, str], Answer] = {}
    path = out / ANSWERS_FILE
    if not path.exists():
        return answers
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            answer = Answer(**json.loads(line))
        except (ValueError, TypeError):
            continue
        previous = answers.get((answer.item_id, answer.model))
        # A success is never replaced by a later failure of the same pair.
        if previous is None or answer.ok or not previous.ok:
            answers[(answer.item_id, answer.model)] = answer
    return answers


def pending(
    items: list[EvalItem], models: list[str], done: dict[tuple[str, str], Answer], judge_id: str | None
) -> list[tuple[EvalItem, str]]:
    """The (item, model) pairs still to answer, or (with a judge) to judge: an answer without a
    score from this very judge is judged again; its saved answer is reused, not asked again."""

    def finished(answer: Answer | None) -> bool:
        if answer is None or not answer.ok:
            return False
        return judge_id is None or (answer.judge_score is not None and answer.judged_by == judge_id)

    return [(item, model) for item in items for model in models if not finished(done.get((item.id, model)))]


@dataclass(slots=True)
class RunOptions:
    concurrency: int = 8
    judge_model: str | None = None
    rubric: str = ""
    max_tokens: int | None = None
    temperature: float | None = None
    extra_body: dict[str, Any] | None = None

    @property
    def judge_id(self) -> str | None:
        """The judge model and a digest of the rubric: scores are reused only from the same judge."""
        if not self.judge_model:
            return None
        return f"{self.judge_model}#{hashlib.sha256(self.rubric.encode()).hexdigest()[:12]}"


async def ask(client: AsyncOpenAI, item: EvalItem, model: str, options: RunOptions) -> Answer:
    started = time.perf_counter()
    # Items hold free-form message dicts (from the user's file); the gateway validates them.
    kwargs: dict[str, Any] = {"messages": item.messages}
    if options.max_tokens is not None:
        kwargs["max_tokens"] = options.max_tokens
    if options.temperature is not None:
        kwargs["temperature"] = options.temperature
    try:
        raw = await client.chat.completions.with_raw_response.create(
            model=model, extra_body=options.extra_body, **kwargs
        )
        reply = raw.parse()
    except OpenAIError as exc:
        return Answer(item.id, model, error=f"{type(exc).__name__}: {exc}"[:500])
    latency = time.perf_counter() - started
    usage = reply.usage
    return Answer(
        item.id,
        model,
        text=(reply.choices[0].message.content or "") if reply.choices else "",
        latency_s=latency,
        prompt_tokens=usage.prompt_tokens if usage else 0,
        completion_tokens=usage.completion_tokens if usage else 0,
        cost_usd=usd_text(reply_cost(raw.headers.get(COST_HEADER), usage)),
        served_by=raw.headers.get("x-faregate-model") or reply.model,
    )


async def _judge(
    client: AsyncOpenAI, judge_model: str, item: EvalItem, answer: Answer, options: RunOptions
) -> None:
    """Judge one answer in place. A failed judge call or an unreadable reply leaves no score
    (None, never 0): the report counts it as unscored and the next run judges it again."""
    # Judged before (its reply held no score, or it was another judge): ask afresh, past the cache.
    fresh = answer.judge_calls > 0
    answer.judge_score, answer.judged_by = None, options.judge_id
    try:
        verdict = await judge(
            client, judge_model, options.rubric, item.prompt, item.expected, answer.text, fresh=fresh
        )
    except OpenAIError as exc:
        answer.judge_reply = f"judge failed: {type(exc).__name__}: {exc}"[:500]
        return
    answer.judge_score, answer.judge_reply = verdict.score, verdict.reply
    answer.judge_calls += 1
    # Accumulated, not replaced: a re-judged answer was paid for on every attempt.
    answer.judge_cost_usd = usd_text(answer.judge_cost + verdict.cost)


async def run(
    client: AsyncOpenAI,
    work: list[tuple[EvalItem, str]],
    done: dict[tuple[str, str], Answer],
    out: Path,
    options: RunOptions,
    on_answer: Callable[[Answer], None] = lambda answer: None,
) -> dict[tuple[str, str], Answer]:
    """Answer (and judge) every pending pair, at most `concurrency` at a time, checkpointing each."""
    await asyncio.to_thread(out.mkdir, parents=True, exist_ok=True)
    # One handle for the run, flushed per answer: the checkpoint is on disk before the next one.
    handle = await asyncio.to_thread((out / ANSWERS_FILE).open, "a", encoding="utf-8")
    gate = asyncio.Semaphore(options.concurrency)
    lock = asyncio.Lock()

    async def one(item: EvalItem, model: str) -> None:
        async with gate:
            previous = done.get((item.id, model))
            # Judge-only work: the answer is saved, the judge score is not (judge added later).
            answer = (
                previous if previous is not None and previous.ok else await ask(client, item, model, options)
            )
            if answer.ok and options.judge_model:
                await _judge(client, options.judge_model, item, answer, options)
        async with lock:
            done[(item.id, model)] = answer
            handle.write(json.dumps(asdict(answer)) + "\n")
            handle.flush()
        on_answer(answer)

    try:
        await asyncio.gather(*(one(item, model) for item, model in work))
    finally:
        handle.close()
    return done
