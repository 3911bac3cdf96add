"""The LLM-judge scorer: a rubric prompt sent through the gateway, the score parsed from the reply.

Judges answer messily ("**7**", "Score: 8/10", a paragraph then "8"), so the reply is read by
the routing judge's parser, which trusts labelled scores over stray numbers in the reasoning.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal

from openai import AsyncOpenAI

from faregate.evals.prompt_eval.reply_cost import COST_HEADER, reply_cost
from faregate.learning.llm_judge import parse_judge_score

DEFAULT_RUBRIC = """You are grading an AI assistant's answer.

Question:
{prompt}

Reference answer (may be empty):
{expected}

Assistant's answer:
{answer}

Rate the answer's correctness and helpfulness from 0 to 10. Reply with "Score: N/10"."""


_PLACEHOLDER = re.compile(r"\{(prompt|expected|answer)\}")


def judge_prompt(rubric: str, prompt: str, expected: str | None, answer: str) -> str:
    # Not str.format: user rubrics may hold literal braces (JSON examples). One pass over the
    # rubric, not one str.replace per field: a question that itself holds "{answer}" must not get
    # the model's answer pasted into it.
    values = {"prompt": prompt, "expected": expected or "", "answer": answer}
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], rubric)


def parse_score(reply: str) -> float | None:
    """The judge's score in [0, 1] on a 0-10 scale unless the reply names another, or None."""
    return parse_judge_score(reply, 10.0)


@dataclass(slots=True, frozen=True)
class JudgeReply:
    """One judge call: the score (None when the reply holds none to trust), the raw reply, and
    what the call cost. Judging is paid traffic too, so its cost is kept, apart from the model's."""

    score: float | None
    reply: str
    cost: Decimal


async def judge(
    client: AsyncOpenAI,
    model: str,
    rubric: str,
    prompt: str,
    expected: str | None,
    answer: str,
    *,
    fresh: bool = False,
) -> JudgeReply:
    """Grade one answer. `fresh`: ask the judge model itself, not the gateway's cache. A judge call
    is deterministic (temperature 0), so the gateway caches it; judging again an answer whose
    reply held no score must not be handed the same cached reply (for free, and uselessly)."""
    # The raw response, like the answers': the exact cost is in a header, not in the parsed body.
    raw = await client.chat.completions.with_raw_response.create(
        model=model,
        messages=[{"role": "user", "content": judge_prompt(rubric, prompt, expected, answer)}],
        temperature=0,
        # no-cache: skip the cached reply but store the new one (no-store would skip both).
        extra_headers={"Cache-Control": "no-cache"} if fresh else None,
    )
    reply = raw.parse()
    text = (reply.choices[0].message.content or "") if reply.choices else ""
    return JudgeReply(parse_score(text), text, reply_cost(raw.headers.get(COST_HEADER), reply.usage))
