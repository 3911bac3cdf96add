"""Numbers in a text, however written, as canonical tokens: the numbers guard's reading of a question.

"twenty-five", "25" and "25.0"? Not the last: "3.10" and "3.1" are kept apart (versions). Written
numbers, ordinals ("third", "3rd"), multiples ("twice"), fractions ("half") and roman numerals past
"i" become digits, so a paraphrase that spells a number out still matches. The word "one" is often
a pronoun ("which one", "no one", "one of them"): alone it becomes ONE, a token that may stand for
1 or for nothing (numbers_differ treats it so); in a compound ("one hundred", "twenty one") it is 1.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from functools import lru_cache

# A lone "one": the number 1, or a pronoun.
ONE = "1?"

_THOUSANDS = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?")
_SMALL = dict(
    zip(
        "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
        "sixteen seventeen eighteen nineteen".split(),
        range(20),
        strict=True,
    )
)
_TENS = dict(
    zip("twenty thirty forty fifty sixty seventy eighty ninety".split(), range(20, 100, 10), strict=True)
)
_SPOKEN = frozenset(_SMALL) | frozenset(_TENS)
_SCALES = {"thousand": 10**3, "million": 10**6, "billion": 10**9, "trillion": 10**12}
_OTHER_NUMBERS: dict[str, tuple[str, ...]] = {
    "first": ("1",), "second": ("2",), "third": ("3",), "fourth": ("4",), "fifth": ("5",), "sixth": ("6",),
    "seventh": ("7",), "eighth": ("8",), "ninth": ("9",), "tenth": ("10",), "eleventh": ("11",),
    "twelfth": ("12",), "twentieth": ("20",), "hundredth": ("100",), "once": ("1",), "twice": ("2",),
    "thrice": ("3",), "dozen": ("12",), "half": ("1", "2"), "quarter": ("1", "4"),
    # Roman numerals past "i" (a pronoun) and "v", "x" (letters in formulas): World War II, Part IV.
    "ii": ("2",), "iii": ("3",), "iv": ("4",), "vi": ("6",), "vii": ("7",), "viii": ("8",), "ix": ("9",),
    "xi": ("11",), "xii": ("12",),
}  # fmt: skip


# Words that are numbers: not names, whatever their case.
NUMBER_WORDS = _SPOKEN | frozenset(_OTHER_NUMBERS)
_WORD = re.compile(r"[a-z]+(?:\+\+|#)?|\d+(?:[.,]\d+)*")
_POSSESSIVE = re.compile(r"(?<=[a-z])'s\b")


@lru_cache(maxsize=4096)
def words(text: str) -> tuple[str, ...]:
    """Lower-cased words and numbers; possessive 's and apostrophes dropped ("don't" is "dont")."""
    lowered = _POSSESSIVE.sub("", text.lower().replace("’", "'"))
    return tuple(_WORD.findall(lowered.replace("'", "")))


def numbers(text: str) -> list[str]:
    """Every number in a text, canonical: digits, written ("twenty-five", "2 million"), ordinals, roman."""
    return [token for token, is_number in tokens(text) if is_number]


@lru_cache(maxsize=4096)
def tokens(text: str) -> tuple[tuple[str, bool], ...]:
    """The seq of a text with each number, however written, as one canonical token."""
    seq = words(text)
    out: list[tuple[str, bool]] = []
    i = 0
    while i < len(seq):
        word = seq[i]
        if word[0].isdigit():
            values = _canonical(word)
            if len(values) == 1 and i + 1 < len(seq) and seq[i + 1] in _SCALES:
                values = [_scaled(values[0], _SCALES[seq[i + 1]])]
                i += 1
            out.extend((v, True) for v in values)
            i += 1
            if i < len(seq) and seq[i] in ("st", "nd", "rd", "th"):  # 3rd
                i += 1
        elif word == "one" and not _compound(seq, i):
            out.append((ONE, True))
            i += 1
        elif word in _SPOKEN or word in _SCALES or word == "hundred":
            value, i = _spoken(seq, i)
            out.append((value, True))
        elif word in _OTHER_NUMBERS:
            out.extend((v, True) for v in _OTHER_NUMBERS[word])
            i += 1
        else:
            out.append((word, False))
            i += 1
    return tuple(out)


def _compound(seq: tuple[str, ...], i: int) -> bool:
    """Whether the "one" at seq[i] is part of a spoken number ("one hundred", "twenty one")."""
    after = seq[i + 1] if i + 1 < len(seq) else ""
    before = seq[i - 1] if i else ""
    return after in _SCALES or after == "hundred" or before in _TENS


def _spoken(words: tuple[str, ...], start: int) -> tuple[str, int]:
    """The number spelled out from words[start] on, and where it ends."""
    total, current, j = 0, 0, start
    while j < len(words):
        word = words[j]
        tail = current % 100
        # "twenty five" is one number, "five three" two: a run only continues as spoken.
        if word in _SMALL and (tail == 0 or (tail % 10 == 0 and tail >= 20 and _SMALL[word] < 10)):
            current += _SMALL[word]
        elif word in _TENS and tail == 0:
            current += _TENS[word]
        elif word == "hundred":
            current = max(current, 1) * 100
        elif word in _SCALES:
            total, current = total + max(current, 1) * _SCALES[word], 0
        elif not (word == "and" and j > start and j + 1 < len(words) and words[j + 1] in _SPOKEN):
            break
        j += 1
    return str(total + current), j


def _canonical(token: str) -> list[str]:
    # "1,000" is a thousand but "1,2,3" is a list; "3.10" stays apart from "3.1" (versions).
    token = token.replace(",", "") if _THOUSANDS.fullmatch(token) else token
    return [part if "." in part else _integer(part) for part in token.split(",") if part]


def _integer(digits: str) -> str:
    """str(int(digits)): ASCII, no leading zeros. Past 4,300 digits int() refuses (ValueError: the
    whole semantic lookup failed, logged with a traceback each time), so long runs are read here."""
    if len(digits) <= 100:
        return str(int(digits))
    return "".join(str(unicodedata.decimal(c)) for c in digits).lstrip("0") or "0"


def _scaled(value: str, scale: int) -> str:
    number = float(value) * scale
    return str(int(number)) if number.is_integer() else str(number)


def numbers_match(a: str, b: str) -> bool:
    """The same numbers in both texts, where a lone "one" may stand for 1 or for nothing."""
    found_a, found_b = Counter(numbers(a)), Counter(numbers(b))
    ones_a, ones_b = found_a.pop(ONE, 0), found_b.pop(ONE, 0)
    extra_a, extra_b = found_a - found_b, found_b - found_a
    # What one side has more of may only be 1s, each matched by a lone "one" on the other side.
    if not set(extra_a) | set(extra_b) <= {"1"}:
        return False
    return extra_a["1"] <= ones_b and extra_b["1"] <= ones_a
