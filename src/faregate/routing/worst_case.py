"""The most a plan can cost: what a budget reservation must hold before any call is made.

The prompt is everything billed as input (routing.estimate: messages, tools, functions,
tool_choice, response_format, media by size). A request for `n` choices is held as n whole
calls, n x (prompt + output allowance): providers bill each choice's output, and some bill the
prompt once per choice too, so this is the bound whichever way the provider counts. Every prompt
token is held at the offer's dearest input price (`Price.dearest_input`): a prompt-cache write
costs more than plain input (Anthropic: 1.25x, 2x for one hour), and which tokens an upstream will
write to its cache is not known before the call; likewise an audio token, in or out, where the
model prices audio above text.
"""

from __future__ import annotations

from decimal import Decimal

from faregate.routing.candidate_fit import default_output
from faregate.routing.plan import Candidate, Plan
from faregate.types import MILLION, ChatRequest, Price, Usage

# The rubric and framing an LLM judge's prompt adds around the question and the answer (the
# default rubric; a route's own is held at its size: Plan.judge_rubric_tokens).
JUDGE_PROMPT_TOKENS = 400


def _output_allowance(candidate: Candidate, request: ChatRequest, prompt: int) -> int:
    """The output one choice may bill: the client's max_tokens at most the model's max output, or
    without one the limit the offer's wire sends (a Messages upstream must be sent one), else the
    model's max output, else what the context window leaves."""
    model = candidate.model
    out = candidate.max_output(request.max_tokens)
    if out is None:
        out = default_output(model, candidate.offer)
    return out or model.max_output_tokens or max(model.context_window - prompt, 0)


def _worst_single(candidates: list[Candidate], request: ChatRequest, prompt: int) -> tuple[Decimal, int, int]:
    """The dearest one call among the candidates, for all its `n` choices: (cost, tokens, the output
    allowance of one choice)."""
    worst_usd, worst_tokens, worst_out = Decimal(0), 0, 0
    n = request.choices
    for candidate in candidates:
        out = _output_allowance(candidate, request, prompt)
        price = candidate.offer.price
        cost = (Decimal(n * prompt) * price.dearest_input + Decimal(n * out) * price.dearest_output) / MILLION
        worst_usd = max(worst_usd, cost)
        worst_tokens = max(worst_tokens, n * (prompt + out))
        worst_out = max(worst_out, out)
    return worst_usd, worst_tokens, worst_out


def judge_call(price: Price, judged: int, max_tokens: int) -> tuple[Decimal, int]:
    """The most one LLM judge's call can cost, and its tokens: the tokens it is shown (the question
    and the answer or answers judged) plus its rubric and framing, and its whole output allowance.
    A cascade's judge and a quality verification's (quality/verifier.py) are held alike."""
    judge = Usage(judged + JUDGE_PROMPT_TOKENS, max_tokens)
    return price.cost(judge), judge.total_tokens


async def worst_case(plan: Plan, request: ChatRequest) -> tuple[Decimal, int]:
    """The most the plan can cost, and its tokens: the prompt (upper bound unless counted) plus the
    output allowance at the offer's prices. One call is made per plain plan (failed attempts are
    rarely billed); a cascade may call every step, and its LLM judge after each judged step."""
    prompt = await plan.prompt.billable() if plan.prompt is not None else 0
    if not plan.stages:
        usd, tokens, _ = _worst_single(plan.candidates, request, prompt)
        return usd, tokens
    total_usd, total_tokens = Decimal(0), 0
    for index, stage in enumerate(plan.stages):
        usd, tokens, out = _worst_single(stage, request, prompt)
        total_usd += usd
        total_tokens += tokens
        if plan.judge_price is not None and index < len(plan.stages) - 1:
            shown = prompt + out + plan.judge_rubric_tokens
            usd, tokens = judge_call(plan.judge_price, shown, plan.judge_max_tokens)
            total_usd += usd
            total_tokens += tokens
    return total_usd, total_tokens
