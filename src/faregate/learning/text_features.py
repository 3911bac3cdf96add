"""Cheap hand-made text features for the complexity router and the cascade's learned judge.

Each function returns a fixed-length float vector in the order of its NAMES tuple; the trained
model files record those names, and loading refuses a file whose names differ, so a feature
change cannot silently mis-score. Everything here is regular expressions over one string:
tens of microseconds, next to the milliseconds of the sentence embedding.

Prompt features say how "technical" a prompt looks (numbers, math, code, multiple-choice
structure, negations like EXCEPT). Answer features say whether a worked answer looks finished and
self-consistent: a final number in the format asked for, calculator annotations whose arithmetic
holds, the question's quantities used, no hedging or self-correction. Those are the signals
FrugalGPT-style scorers pick up from (question, answer) pairs.
"""

from __future__ import annotations

import ast
import math
import operator
import re
import sys
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

Features = npt.NDArray[np.float64]

_NUMBER = re.compile(r"(?<![\w.])-?\d[\d,]*(?:\.\d+)?")
_QUESTION_WORDS = re.compile(r"\b(?:what|why|how|which|who|whom|whose|when|where)\b", re.IGNORECASE)
# A call "name()" from the start of its name only: from each character of a long word, \w+ took
# the rest of it and gave it back (quadratic: 40 kB of "a1" took 3.8 s). Finds exactly what it found.
_CODE = re.compile(
    r"```|\bdef |\breturn\b|\bimport\b|\bfunction\b|[{};]|==|!=|->|(?<!\w)\w+\(\)|\bint\b|\bprint\("
)
_MATH = re.compile(r"[=+*/^√∑∫π≤≥≠×÷%]|\\frac|\\sqrt|\bsqrt\b|\blog\b|\bsin\b|\bcos\b|\bmod\b|\b[xyzn]\^?\d")
_LATEX = re.compile(r"\$|\\[a-zA-Z]+")
# A lettered option's line. The spaces before its letter are the line's own: "^\s*" crossed newlines
# and gave every space of a blank run back at each of its lines (quadratic in a client's prompt:
# 200 kB of " \n" took minutes on the router's thread, the GIL held). Finds exactly what it found.
_OPTION = re.compile(r"^[^\S\n]*\(?[A-J][.)]\s+(.*)$", re.MULTILINE)
_STATEMENTS = re.compile(r"\bStatement\s+1\b", re.IGNORECASE)
_NEGATION = re.compile(r"\b(?:not|except|false|incorrect|least|never|no longer)\b", re.IGNORECASE)
_REASONING = re.compile(
    r"\b(?:calculate|compute|prove|find|solve|derive|evaluate|determine|estimate"
    r"|how (?:many|much|long|far))\b",
    re.IGNORECASE,
)
_SENTENCE = re.compile(r"[.!?](?:\s|$)")

PROMPT_NAMES: tuple[str, ...] = (
    "log_chars",
    "log_words",
    "digit_share",
    "log_numbers",
    "question_words",
    "log_code_markers",
    "log_math_symbols",
    "log_latex",
    "upper_share",
    "log_lines",
    "options",
    "log_option_chars",
    "statements",
    "mean_word_length",
    "log_max_number",
    "log_sentences",
    "non_ascii_share",
    "negations",
    "reasoning_verbs",
)


def _log(count: float) -> float:
    return math.log1p(max(count, 0.0))


def written_numbers(text: str) -> list[str]:
    """The numbers the text writes, as written ("1,234.50")."""
    return _NUMBER.findall(text)


def numbers_in(text: str) -> list[float]:
    values = []
    for match in _NUMBER.finditer(text):
        try:
            values.append(float(match.group().replace(",", "")))
        except ValueError:
            continue
    return values


def prompt_features(text: str) -> Features:
    chars = len(text)
    words = text.split()
    numbers = numbers_in(text)
    options = _OPTION.findall(text)
    letters = sum(c.isalpha() for c in text)
    values = (
        _log(chars),
        _log(len(words)),
        sum(c.isdigit() for c in text) / max(chars, 1),
        _log(len(numbers)),
        len(_QUESTION_WORDS.findall(text)),
        _log(len(_CODE.findall(text))),
        _log(len(_MATH.findall(text))),
        _log(len(_LATEX.findall(text))),
        sum(c.isupper() for c in text) / max(letters, 1),
        _log(text.count("\n")),
        len(options),
        _log(sum(len(o) for o in options) / max(len(options), 1)),
        float(bool(_STATEMENTS.search(text))),
        sum(len(w) for w in words) / max(len(words), 1),
        # (a number of 309 digits or more reads as inf: bounded, so the feature stays finite)
        math.log10(1.0 + max((_bounded(abs(n)) for n in numbers), default=0.0)),
        _log(len(_SENTENCE.findall(text))),
        sum(not c.isascii() for c in text) / max(chars, 1),
        len(_NEGATION.findall(text)),
        len(_REASONING.findall(text)),
    )
    return np.array(values, dtype=np.float64)


# -- answers --------------------------------------------------------------------------------------------

# GSM8K's "#### 18", "The answer is 18", "Answer: 18", "**18**" at the end. Each run of spaces
# has one \s* to match it (an optional ":" or "$" brings its own): "\s*[:=]?\s*\$?\s*" split a
# long run between three, every way, before giving up (cubic: an answer with "answer is" and
# 3,000 spaces took 97 s, the GIL held throughout).
_FINAL = re.compile(
    r"(?:####|\b(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)(?:\s*[:=])?)(?:\s*\$)?\s*(-?\d[\d,]*(?:\.\d+)?)",
    re.IGNORECASE,
)
_CALC = re.compile(r"<<([^<>=]*)=([^<>]*)>>")
# Written equations, "3 * 4 = 12": (left side, stated result) as
# r"(-?N(?:\s*[-+*/x×÷]\s*-?N)+)\s*=\s*\$?\s*(-?N)(?!\d|[/.]\d)" with N = r"\d[\d,]*(?:\.\d+)?" finds
# them, but tried from each digit of a long number or each term of a long "1+1+1..." it re-read the
# rest every time (quadratic: 20,000 digits took seconds on the event loop). `equations` finds
# exactly what it found, reading each character a bounded number of times: a left side has no "=",
# so it ends where the spaces before the next "=" begin; its terms split one way only (one operator
# between two numbers, each number as long as it goes); and starts whose first number ends at the
# same place succeed or fail together.
_NUMBER_TERM = re.compile(r"-?\d[\d,]*")
_DECIMALS = re.compile(r"\.\d+")
_NEXT_TERM = re.compile(r"\s*[-+*/x×÷]\s*-?\d[\d,]*(\.\d+)?")
_TERM_START = re.compile(r"-?\d")
_RESULT = re.compile(r"=\s*(?:\$\s*)?(-?\d[\d,]*(?:\.\d+)?)(?!\d|[/.]\d)")


def _more_terms(text: str, start: int, end: int) -> tuple[bool, int]:
    """Whether text[start:end] is one or more "operator number" terms; and where the digits and
    commas of the last number read end (0 if none was)."""
    at, digits_end = start, 0
    while at < end:
        term = _NEXT_TERM.match(text, at, end)
        if term is None:
            break
        at, digits_end = term.end(), term.start(1) if term.group(1) else term.end()
    return start < at == end, digits_end


def equations(text: str) -> list[tuple[str, str]]:
    """Each written equation's left side and stated result, in order (the pattern above's findall)."""
    found: list[tuple[str, str]] = []
    searched = 0  # where the next equation may start
    after_equals = 0  # a left side starts after the previous "="
    for equals in re.finditer("=", text):
        sign = equals.start()
        first = max(searched, after_equals)
        after_equals = sign + 1
        result = _RESULT.match(text, sign) if sign >= searched else None
        if result is None:
            continue
        end = sign
        while end > first and text[end - 1].isspace():
            end -= 1
        start = _TERM_START.search(text, first, end)
        while start is not None:
            number = _NUMBER_TERM.match(text, start.start(), end)
            assert number is not None  # it starts with "-?\d"
            decimals = _DECIMALS.match(text, number.end(), end)
            reaches, digits_end = _more_terms(text, decimals.end() if decimals else number.end(), end)
            if reaches:
                found.append((text[start.start() : end], result.group(1)))
                searched = result.end()
                break
            # A later start before `digits_end` has its first number end where one read here ends,
            # and fails the same way.
            start = _TERM_START.search(text, max(number.end(), digits_end), end)
    return found


_HEDGE = re.compile(
    r"\b(?:assum\w*|however|actually|approximately|roughly|about|round\w*|can't|cannot|not possible|"
    r"not enough|unclear|wait|mistake|incorrect|re-?evaluat\w*|reconsider|but since|doesn't make sense|"
    r"not (?:a )?whole|it seems|might|perhaps|probably|likely)\b",
    re.IGNORECASE,
)
_ALGEBRA = re.compile(
    r"\blet(?:'s)?\s+(?:\w+\s+)?(?:denote|call|represent|say|x|y|n)\b|\b[xyn]\s*=", re.IGNORECASE
)
_REFUSAL = re.compile(
    r"\b(?:I(?:'m| am) sorry|I can(?:not|'t) (?:help|assist|answer|provide)|as an AI"
    r"|I'm unable|I am unable)\b",
    re.IGNORECASE,
)
_WORD_NUMBERS = {
    "half": 2.0, "twice": 2.0, "double": 2.0, "triple": 3.0, "quarter": 4.0, "third": 3.0, "dozen": 12.0,
    "one": 1.0, "two": 2.0, "three": 3.0, "four": 4.0, "five": 5.0, "six": 6.0, "seven": 7.0,
    "eight": 8.0, "nine": 9.0, "ten": 10.0, "eleven": 11.0, "twelve": 12.0, "fifteen": 15.0,
    "twenty": 20.0, "thirty": 30.0, "forty": 40.0, "fifty": 50.0, "hundred": 100.0,
}  # fmt: skip
_WORD = re.compile(r"\b(" + "|".join(_WORD_NUMBERS) + r")\b", re.IGNORECASE)

ANSWER_NAMES: tuple[str, ...] = (
    "empty",
    "refusal",
    "truncated",
    "has_final",
    "final_integer",
    "final_negative",
    "log_final",
    "final_decimals",
    "final_is_last_number",
    "final_in_question",
    "log_calcs",
    "calc_wrong_share",
    "equation_wrong_share",
    "unclosed_calc",
    "question_numbers_used",
    "hedges",
    "algebra",
    "log_answer_chars",
    "log_answer_lines",
    "answer_question_ratio",
    "log_answer_numbers",
    "ends_cleanly",
)


def final_number_text(answer: str) -> str | None:
    """The answer's stated final number as written, without its commas (for exact comparison:
    309 digits or more are inf as a float), if any."""
    found = _FINAL.findall(answer)
    return found[-1].replace(",", "") if found else None


def final_number(answer: str) -> float | None:
    """The answer's stated final number (the last `#### N` or `answer is N`), if any."""
    written = final_number_text(answer)
    if written is None:
        return None
    try:
        return float(written)
    except ValueError:
        return None


_OPERATORS: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
}


def _arithmetic(node: ast.expr) -> float:
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
        return float(node.value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_arithmetic(node.operand)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPERATORS:
        return _OPERATORS[type(node.op)](_arithmetic(node.left), _arithmetic(node.right))
    raise ValueError("not plain arithmetic")


def safe_eval(expression: str) -> float | None:
    """Evaluate + - * / over plain numbers (calculator annotations); None for anything else."""
    cleaned = expression.replace(",", "").replace("x", "*").replace("×", "*").replace("÷", "/").strip()
    if not cleaned or len(cleaned) > 80 or not re.fullmatch(r"[-+*/(). \d]+", cleaned):
        return None
    try:
        return _arithmetic(ast.parse(cleaned, mode="eval").body)
    except (SyntaxError, ValueError, ZeroDivisionError, OverflowError, RecursionError):
        return None


def _wrong(claimed: str, expression: str) -> bool | None:
    value = safe_eval(expression)
    try:
        stated = float(claimed.replace(",", "").replace("$", "").strip())
    except ValueError:
        return None
    if value is None:
        return None
    # Rounded intermediate results (83.33 for 250/3) are not errors.
    return abs(value - stated) > max(0.011, 0.005 * abs(value))


def _wrong_share(pairs: list[tuple[str, str]]) -> float:
    checked = [w for w in (_wrong(claimed, expr) for expr, claimed in pairs) if w is not None]
    return sum(checked) / len(checked) if checked else 0.0


def question_quantities(question: str) -> set[float]:
    found = {abs(v) for v in numbers_in(question)}
    found |= {_WORD_NUMBERS[w.lower()] for w in _WORD.findall(question)}
    return found


def _bounded(value: float) -> float:
    """A number past the largest float (309 digits or more reads as inf) as the largest float:
    int(inf) raises, and the judge's features must be finite."""
    return max(-sys.float_info.max, min(value, sys.float_info.max))


def answer_features(question: str, answer: str, finish_reason: str | None = None) -> Features:
    text = answer.strip()
    stated = final_number(text)
    final = None if stated is None else _bounded(stated)
    numbers = [_bounded(v) for v in numbers_in(text)]
    quantities = {_bounded(v) for v in question_quantities(question)}
    used = {abs(v) for v in numbers} | {_WORD_NUMBERS[w.lower()] for w in _WORD.findall(text)}
    calcs = _CALC.findall(text)
    written_equations = equations(text)
    last = numbers[-1] if numbers else None
    values = (
        float(not text),
        float(bool(_REFUSAL.search(text))),
        float(finish_reason == "length"),
        float(final is not None),
        float(final is not None and final == int(final)),
        float(final is not None and final < 0),
        math.log10(1.0 + abs(final)) if final is not None else 0.0,
        float(len(str(final).split(".")[1].rstrip("0")))
        if final is not None and final != int(final)
        else 0.0,
        float(final is not None and last is not None and abs(final - last) < 1e-9),
        float(final is not None and abs(final) in quantities),
        _log(len(calcs)),
        _wrong_share(calcs),
        _wrong_share(written_equations),
        float(text.count("<<") > text.count(">>")),
        len(quantities & used) / len(quantities) if quantities else 1.0,
        len(_HEDGE.findall(text)),
        float(bool(_ALGEBRA.search(text))),
        _log(len(text)),
        _log(text.count("\n")),
        math.log((len(text) + 1) / (len(question) + 1)),
        _log(len(numbers)),
        float(bool(text) and text[-1] in ".!?)*0123456789"),
    )
    return np.array(values, dtype=np.float64)


def message_text(content: Any) -> str:
    """The text of a chat message's content: a string, or the text parts of a content list."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = [p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        return "\n".join(str(p) for p in parts)
    return ""


def last_user_text(body: Mapping[str, Any]) -> str:
    """What a router scores and a judge reads as "the question": the last user message's text.

    RouteLLM routes on the last user turn too; earlier turns are context the models share."""
    messages = body.get("messages")
    if isinstance(messages, list):
        for message in reversed(messages):
            if isinstance(message, dict) and message.get("role") == "user":
                return message_text(message.get("content"))
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else ""
