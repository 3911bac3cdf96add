"""Guards against near-miss meaning, applied to a semantic-cache candidate before it is served.

Sentence embeddings score same-template questions almost identically when one detail changes:
"season 6 episode 3" vs "episode 1" (0.99), "do not have" vs "have", "North beat South" vs
"South beat North". No threshold separates those from paraphrases, so each known failure mode
gets a small, pure check of its own. Each guard answers "could these two texts want different
answers?" and errs towards yes: a false alarm costs one upstream call, a false hit serves the
answer to another question.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable
from difflib import SequenceMatcher
from importlib import resources

from faregate.cache.guard_numbers import NUMBER_WORDS, numbers_match, tokens, words

Guard = Callable[[str, str], bool]

_WORD = re.compile(r"[a-z]+(?:\+\+|#)?|\d+(?:[.,]\d+)*")
_CASED_WORD = re.compile(r"[^\W\d_](?:[\w'’\-]|\.(?=\d))*")
# Sentence punctuation only when followed by a space, so "GPT-3.5" and "e.g.," stay whole.
_SENTENCE_END = re.compile(r"[.!?:;]+(?:\s+|$)|\n+")

_NEGATIONS = frozenset(
    "not no never nor neither none nobody nothing nowhere without cannot cant dont doesnt didnt isnt arent "
    "wasnt werent wont wouldnt shouldnt couldnt hasnt havent hadnt mustnt neednt shant mightnt aint".split()
)
_OPPOSITE_PREFIXES = ("un", "in", "im", "il", "ir", "dis", "non", "de", "anti")

# Groups of mutually exclusive meanings ("on enable | off disable", "km | miles"): see the file.
_OPPOSITE_GROUPS = (
    resources.files("faregate.cache").joinpath("data/opposites.txt").read_text(encoding="utf-8")
)
# All-caps words that are not names.
_NOT_NAMES = frozenset("ok okay faq asap fyi btw pm am eg ie vs etc".split())
# Words dropped before comparing word order: articles, forms of "be" and "do", modals. Prepositions
# stay: "a list in Python" and "a Python list" must not look like two words trading places.
_FUNCTION_WORDS = frozenset(
    "a an the is are was were be been am do does did can could would should will shall may might must "
    "please i me my you your we our us".split()
)
# Prepositions that paraphrases trade freely ("in CSS", "with CSS"); "to" and "from" are not among them.
_LOOSE_PREPOSITIONS = frozenset("in on at with using via for by of about within".split())
# Words that open a request without saying what it is about.
_FRAMING_WORDS = (
    "what how why when where who whom which whose tell explain describe write compose give list show "
    "calculate compute find name define summarize summarise translate convert create make help suggest "
    "recommend provide generate draft step way tip best please i me we you"
)
# Words that name the roles of a relation, like names and numbers do: their order matters.
_ROLE_GROUPS = ("north", "northern", "celsius", "km", "kg", "dollar", "python", "windows")
# Operators and symbols that change a formula's meaning; "-" and "," are left out (hyphens, lists).
_SYMBOLS = re.compile(r"[+*/=<>^_|\\~{}\[\]]")
# Signs that are often written as words instead ("times", "divided by", "plus").
_ARITHMETIC = frozenset("*/+")
_WORD_SLASH = re.compile(r"(?<=[^\W\d_])/(?=[^\W\d_])")
# Initials before a name: "J. K. Rowling", "George R. R. Martin".
_INITIALS = re.compile(r"\b[A-Z]\.\s*(?=[A-Z])")
_INITIAL_RUN = re.compile(r"\b([A-Z])\.\s*(?=[A-Z]\.)")
# Single-letter variables (f vs g); "a" and "I" are words, and "'s"/"'t" are contractions.
_VARIABLE = re.compile(r"(?<![\w'’.])([b-hj-zB-HJ-Z])(?![\w'’])")
# Options of a multiple-choice question, lettered or numbered, one per line (an option's text with
# the spaces after it: only its words are compared). Linear in the prompt's length: "^\s*" crossed
# newlines and gave every space of a long blank run back at each line of it, and "(.+?)\s*$" gave a
# long run of spaces inside a line back at each character (quadratic: 20 kB of " \n" took 7 s on
# the embedder's thread, the GIL held, the whole process stopped).
_CHOICE = re.compile(r"^[^\S\n]*\(?([A-Ha-h]|\d{1,2})[.)]\s+(.+)$", re.MULTILINE)
# Words that restrict a statement: "if" and "only if" are different conditions.
_QUALIFIERS = frozenset("only except unless exactly solely".split())


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s", "e"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


def _group_lines() -> list[str]:
    lines: list[str] = []
    for line in _OPPOSITE_GROUPS.splitlines():
        if line.startswith("#"):
            continue
        if line.startswith(" "):
            lines[-1] += " " + line.strip()
        elif line.strip():
            lines.append(line.strip())
    return lines


def _build_groups() -> dict[str, list[tuple[int, int]]]:
    senses: dict[str, list[tuple[int, int]]] = {}
    for group_id, line in enumerate(_group_lines()):
        for sense_id, sense in enumerate(line.split("|")):
            for word in sense.split():
                senses.setdefault(_stem(word), []).append((group_id, sense_id))
    return senses


_SENSES = _build_groups()
_SYNONYMS = resources.files("faregate.cache").joinpath("data/synonyms.txt").read_text(encoding="utf-8")
# Stemmed word -> its synonym group.
_SYNONYM_OF = {
    _stem(word): group
    for group, line in enumerate(x for x in _SYNONYMS.splitlines() if x.strip() and not x.startswith("#"))
    for word in line.split()
}
_FRAMING = frozenset(map(_stem, _FRAMING_WORDS.split()))
_ROLE_WORDS = frozenset(
    word
    for line in _group_lines()
    if line.split()[0] in _ROLE_GROUPS
    for word in map(_stem, line.replace("|", " ").split())
)


def numbers_differ(a: str, b: str) -> bool:
    """Catches questions that differ in a number: amounts, dates, versions (3.5 vs 4), episodes.

    Compares the multisets of numbers, with written numbers and ordinals ("third", "twice",
    "twenty-five") made digits, so a paraphrase that spells a number out still matches; a lone
    "one" may be the pronoun ("which one is faster") and is not held against a text without it.
    """
    return not numbers_match(a, b)


def negation_differs(a: str, b: str) -> bool:
    """Catches "do not have" vs "have", "can't" vs "can", "with" vs "without": a flipped polarity.

    Counts negation words (not, no, never, n't, without, ...) in each text; any difference is
    suspect, since a paraphrase keeps its polarity.
    """

    def count(text: str) -> int:
        return sum(1 for w in words(text) if w in _NEGATIONS)

    return count(a) != count(b)


def opposite_terms(a: str, b: str) -> bool:
    """Catches opposite or exclusive words: on/off, enable/disable, buy/sell, north/south, km/miles.

    For each group of exclusive meanings both texts touch, they must touch the same ones ("turn
    off" vs "enable" differ; "USD to EUR" vs "dollars to euros" do not). A word that is the other's
    opposite by prefix or suffix (possible/impossible, useful/useless) also counts.
    """
    senses_a, senses_b = _group_senses(a), _group_senses(b)
    if any(senses_b[group] != senses for group, senses in senses_a.items() if group in senses_b):
        return True
    raw_a = set(words(a)) - set(words(b))
    raw_b = set(words(b)) - set(words(a))
    return any(_prefixed_opposites(x, y) or _prefixed_opposites(y, x) for x in raw_a for y in raw_b)


def _group_senses(text: str) -> dict[int, set[int]]:
    found: dict[int, set[int]] = {}
    for word in words(text):
        for group, sense in _SENSES.get(_stem(word), ()):
            found.setdefault(group, set()).add(sense)
    return found


def _prefixed_opposites(word: str, other: str) -> bool:
    if len(word) >= 4 and any(other == prefix + word for prefix in _OPPOSITE_PREFIXES):
        return True
    return word.endswith("ful") and other == word[:-3] + "less"


def _entities(text: str) -> set[str]:
    """Names: capitalised words past the start of a sentence, and acronyms or mixed-case words
    (NASA, iPhone, GPT-4) anywhere. A sentence's first word is not taken for a name: an embedding
    already scores "Paris is..." and "London is..." far apart (below 0.6)."""
    found: set[str] = set()
    for sentence in _SENTENCE_END.split(text):
        for position, match in enumerate(_CASED_WORD.finditer(sentence)):
            word = match.group().rstrip("'’-")
            if word.lower().endswith(("'s", "’s")):
                word = word[:-2]
            letters = [c for c in word if c.isalpha()]
            if not any(c.isupper() for c in letters) or word in ("I", "I'm", "I've", "I'd", "I'll"):
                continue
            titled = letters[0].isupper() and not any(c.isupper() for c in letters[1:]) and word.isalpha()
            if position == 0 and titled:
                continue
            key = word.lower().replace("’", "").replace("'", "")
            if key in _NOT_NAMES or key in NUMBER_WORDS or len(key) == 1:
                continue
            found.add(key)
    return found


def entities_differ(a: str, b: str) -> bool:
    """Catches the same question about another name: "capital of France" vs "of Spain", "Python" vs "Rust".

    A name (a capitalised word, or an acronym) in one text must appear, in any case, in the other.
    """
    a, b = _joined_initials(a), _joined_initials(b)
    stems_a = {_stem(w) for w in words(a)}
    stems_b = {_stem(w) for w in words(b)}
    return any(not _mentioned(e, stems_b) for e in _entities(a)) or any(
        not _mentioned(e, stems_a) for e in _entities(b)
    )


def _joined_initials(text: str) -> str:
    """ "J. K. Rowling" -> "JK. Rowling", so it names the same as "JK Rowling"."""
    return _INITIAL_RUN.sub(r"\1", text)


def _mentioned(entity: str, stems: set[str]) -> bool:
    return all(_stem(part) in stems for part in _WORD.findall(entity))


def _content(text: str) -> list[str]:
    """Stemmed words without function words, numbers canonical ("third", "3rd" and "3" are "3")."""
    return [t if is_number else _stem(t) for t, is_number in tokens(text) if t not in _FUNCTION_WORDS]


def roles_swapped(a: str, b: str) -> bool:
    """Catches the same words in other roles: "North beat South" vs "South beat North", "from New York
    to London" vs "from London to New York", "doubles the kinetic energy ... its momentum" vs "doubles
    the momentum ... its kinetic energy", "10 divided by 2" vs "2 divided by 10".

    Fires when two runs of words trade places around something in between, when two words trade
    places everywhere they occur, or when both texts use exactly the same words but their names,
    numbers and units come in another order.
    """
    seq_a, seq_b = _content(a), _content(b)
    if seq_a == seq_b:
        return False
    if _spans_swapped(seq_a, seq_b):
        return True
    if len(seq_a) == len(seq_b):
        diff = {(x, y) for x, y in zip(seq_a, seq_b, strict=True) if x != y}
        if len(diff) == 2:
            (x, y), (u, v) = diff
            if (x, y) == (v, u):
                return True
    if Counter(seq_a) != Counter(seq_b):
        return False
    names = {_stem(part) for e in _entities(a) | _entities(b) for part in _WORD.findall(e)}
    return _keys(seq_a, names) != _keys(seq_b, names)


def _spans_swapped(seq_a: list[str], seq_b: list[str], limit: int = 40) -> bool:
    """True if seq_b is seq_a with runs X and Y exchanged: P X M Y S -> P Y M X S, M not empty.

    M must not be empty: moving a clause to the front (X Y -> Y X) keeps the meaning.
    """
    if len(seq_a) != len(seq_b):
        return False
    start = 0
    while start < len(seq_a) and seq_a[start] == seq_b[start]:
        start += 1
    end = len(seq_a)
    while end > start and seq_a[end - 1] == seq_b[end - 1]:
        end -= 1
    mid_a, mid_b = seq_a[start:end], seq_b[start:end]
    n = len(mid_a)
    if n < 3 or n > limit:
        return False
    for x_len in range(1, n - 1):
        x = mid_a[:x_len]
        if mid_b[n - x_len :] != x:
            continue
        for y_len in range(1, n - x_len):
            y = mid_a[n - y_len :]
            if y != x and mid_b[:y_len] == y and mid_a[x_len : n - y_len] == mid_b[y_len : n - x_len]:
                return True
    return False


def _keys(sequence: list[str], names: set[str]) -> list[str]:
    """Names, numbers and role words in order of first appearance."""
    keys: list[str] = []
    for word in sequence:
        if (word in names or word[0].isdigit() or word in _ROLE_WORDS) and word not in keys:
            keys.append(word)
    return keys


def choices_differ(a: str, b: str) -> bool:
    """Catches a multiple-choice question with other options, or the same options in another order:
    the answer is a letter, so "B" is right for one and wrong for the other."""
    options_a, options_b = _CHOICE.findall(a), _CHOICE.findall(b)
    if len(options_a) < 2 and len(options_b) < 2:
        return False
    return [(k.upper(), words(t)) for k, t in options_a] != [(k.upper(), words(t)) for k, t in options_b]


def formulas_differ(a: str, b: str) -> bool:
    """Catches formulas that differ in an operator or a variable: "Q(sqrt(2) + sqrt(3))" vs
    "Q(sqrt(2)*sqrt(3))", "f must be injective" vs "g must be injective", "Z_3 x 3Z" vs "Z_3 x Z_3".

    Arithmetic signs are compared only when both texts write arithmetic with signs: "5 * 3" and
    "5 times 3" ask the same (the numbers guard still compares the numbers). A slash between
    words ("and/or", "TCP/IP", "km/h") is not division, and initials ("J. K. Rowling") are not
    variables.
    """
    a, b = _INITIALS.sub("", a), _INITIALS.sub("", b)
    symbols_a = Counter(_SYMBOLS.findall(_WORD_SLASH.sub(" ", a)))
    symbols_b = Counter(_SYMBOLS.findall(_WORD_SLASH.sub(" ", b)))
    if not (_ARITHMETIC & set(symbols_a)) or not (_ARITHMETIC & set(symbols_b)):
        for sign in _ARITHMETIC:
            symbols_a.pop(sign, None)
            symbols_b.pop(sign, None)
    return symbols_a != symbols_b or Counter(_VARIABLE.findall(a)) != Counter(_VARIABLE.findall(b))


def qualifiers_differ(a: str, b: str) -> bool:
    """Catches a restriction added or dropped: "raises tuition if ..." vs "only if ...", "all except X"."""
    return Counter(w for w in words(a) if w in _QUALIFIERS) != Counter(
        w for w in words(b) if w in _QUALIFIERS
    )


def one_word_swapped(a: str, b: str) -> bool:
    """Catches a template question with one term replaced: "the atomic number" vs "the mass number",
    "the judicial branch" vs "the legislative branch", "capital of france" vs "capital of germany".

    Fires when the texts are the same except for one run of at most two words replaced by at most
    two others, past the first word, unless one abbreviates the other or they share a known meaning
    ("turn on" and "enable"). Embeddings barely see such a change, and a paraphrase seldom changes
    exactly one term.
    """
    seq_a, seq_b = _content(a), _content(b)
    if min(len(seq_a), len(seq_b)) < 3:
        return False
    changes = [
        op for op in SequenceMatcher(None, seq_a, seq_b, autojunk=False).get_opcodes() if op[0] != "equal"
    ]
    if len(changes) != 1 or changes[0][0] != "replace":
        return False
    _, i1, i2, j1, j2 = changes[0]
    if i2 - i1 > 2 or j2 - j1 > 2:
        return False
    # Opening words frame the request ("What is", "Tell me", "Explain", "Write"/"Compose").
    if i1 == 0 and any(w in _FRAMING for w in seq_a[i1:i2] + seq_b[j1:j2]):
        return False
    old, new = " ".join(seq_a[i1:i2]), " ".join(seq_b[j1:j2])
    if old.startswith(new) or new.startswith(old):  # an abbreviation: dict, dictionary
        return False
    if old.replace(" ", "") == new.replace(" ", ""):  # initials: "j k" and "jk"
        return False
    if all(w in _LOOSE_PREPOSITIONS for w in seq_a[i1:i2] + seq_b[j1:j2]):
        return False
    if _synonyms(seq_a[i1:i2], seq_b[j1:j2]):
        return False
    senses_a = {sense for w in seq_a[i1:i2] for sense in _SENSES.get(w, ())}
    return not any(sense in senses_a for w in seq_b[j1:j2] for sense in _SENSES.get(w, ()))


def _synonyms(old: list[str], new: list[str]) -> bool:
    """One word for another of its synonym group ("afraid" for "scared")."""
    return len(old) == len(new) == 1 and _SYNONYM_OF.get(old[0], -1) == _SYNONYM_OF.get(new[0], -2)


GUARDS: tuple[tuple[str, Guard], ...] = (
    ("numbers", numbers_differ),
    ("negation", negation_differs),
    ("opposites", opposite_terms),
    ("entities", entities_differ),
    ("roles", roles_swapped),
    ("choices", choices_differ),
    ("formulas", formulas_differ),
    ("qualifiers", qualifiers_differ),
    ("substitution", one_word_swapped),
)


def violation(query: str, candidate: str) -> str | None:
    """The name of the first guard that refuses to let `candidate`'s answer serve `query`, or None."""
    if query == candidate:
        return None
    for name, guard in GUARDS:
        if guard(query, candidate):
            return name
    return None
