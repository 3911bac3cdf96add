"""The LLM-judge scorer: a rubric prompt sent through the gateway, the score parsed from the reply.

Judges answer messily ("**7**", "Score: 8/10", a paragraph then "8"), so the reply is read by
the routing judge's parser, which trusts labelled scores over stray numbers in the reasoning.
"""

from __future__ import annotations

from openai import AsyncOpenAI

from faregate.routing.llm_judge import parse_judge_score

DEFAULT_RUBRIC = """You are grading an AI assistant's answer.

Question:
{prompt}

Reference answer (may be empty):
{expected}

Assistant's answer:
{answer}

Rate the answer's correctness and helpfulness from 0 to 10. Reply with "Score: N/10"."""


def judge_prompt(rubric: str, prompt: str, expected: str | None, answer: str) -> str:
    # str.replace, not str.format: user rubrics may hold literal braces (JSON examples).
    return (
        rubric.replace("{prompt}", prompt).replace("{expected}", expected or "").replace("{answer}", answer)
    )


def parse_score(reply: str) -> float | None:
    """The judge's score in [0, 1] on a 0-10 scale unless the reply names another, or None."""
    return parse_judge_score(reply, 10.0)


async def judge(
    client: AsyncOpenAI, model: str, rubric: str, prompt: str, expected: str | None, answer: str
) -> tuple[float | None, str]:
    """(score in [0, 1] or None when unparseable, the judge's raw reply)."""
    reply = await client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": judge_prompt(rubric, prompt, expected, answer)}],
        temperature=0,
    )
    text = (reply.choices[0].message.content or "") if reply.choices else ""
    return parse_score(text), text
