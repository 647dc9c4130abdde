"""Drawing the arguments of a prompt's IFEval constraints, consistent with each other.

Each kind's arguments are drawn from the ranges lm-eval's checks use (their module constants) with the
row's own generator, then passed explicitly to the check's ``build_description`` (``build_constraint``),
whose text goes into the prompt; so lm-eval never draws from Python's global ``random`` (it is saved and
restored around every build anyway). Arguments are also kept consistent within a prompt, where IFEval's
conflict table does not see the clash:

* words (keywords to include, the keyword to count, forbidden words, a paragraph's first word) are
  distinct, none contains another, and none occurs in a phrase the response must contain (an end phrase,
  a postscript marker, a section marker), so a forbidden word is never also required;
* a section marker is ``SECTION`` when the response must be all capitals and ``Section`` when capital
  words are counted;
* "fewer than n capital words" counts the capital words that required phrases force (``I`` in an end
  phrase, ``P.S``), and "fewer than n of letter x" only picks letters absent from required words and
  phrases ("at least" when every letter is taken);
* "fewer than n sentences" starts at n = 2 (fewer than one sentence only an empty response meets, and
  an empty response fails every check), and "paragraph i must start with w" has i ≤ the number of
  paragraphs (lm-eval's default draws up to one past it, a paragraph that cannot exist).

Other tensions between arguments (e.g. a short word limit with many required sections) are not modelled:
they make a prompt harder, not unverifiable.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from hfpref.steps.ifeval import global_random_restored, instruction_registry


def lm_eval_modules() -> tuple[Any, Any, Any]:
    """lm-eval's ``instructions``, ``instructions_util`` and ``instructions_registry`` modules."""
    instruction_registry()  # imports lm-eval with hfpref's packaged NLTK data (no download attempt)
    from lm_eval.tasks.ifeval import instructions, instructions_registry, instructions_util

    return instructions, instructions_util, instructions_registry


@dataclasses.dataclass
class _Draw:
    """One prompt's argument drawing: its generator, its kinds, lm-eval's modules (whose constants give
    the ranges) and what its constraints have fixed so far, for the consistency rules of the module
    docstring."""

    rng: np.random.Generator
    kinds: frozenset[str]
    ins: Any  # lm_eval.tasks.ifeval.instructions
    util: Any  # lm_eval.tasks.ifeval.instructions_util
    words: list[str] = dataclasses.field(default_factory=list)  # words any constraint names
    required: list[str] = dataclasses.field(default_factory=list)  # text the response must contain

    def integer(self, low: int, high: int) -> int:
        """Uniform integer in [low, high], both included (as ``random.randint``)."""
        return int(self.rng.integers(low, high + 1))

    def choice(self, options: Sequence[Any]) -> Any:
        return options[int(self.rng.integers(len(options)))]

    def relation(self) -> str:
        return self.choice(self.ins._COMPARISON_RELATION)

    def word(self) -> str:
        """A word from lm-eval's list that neither contains nor is contained in a word or phrase in use."""
        word_list = self.util.WORD_LIST
        required = " ".join(self.required).lower()
        for _ in range(1000):  # 1525 words: a handful of retries at most
            word = self.choice(word_list)
            if word in required or any(word in used or used in word for used in self.words):
                continue
            self.words.append(word)
            return word
        raise RuntimeError(f"could not draw a word overlapping none of {self.words} and {self.required}")


def _end_phrase(d: _Draw) -> dict[str, Any]:
    phrase = d.choice(d.ins._ENDING_OPTIONS)
    d.required.append(phrase)
    return {"end_phrase": phrase}


def _postscript(d: _Draw) -> dict[str, Any]:
    marker = d.choice(d.ins._POSTSCRIPT_MARKER)
    d.required.append(marker)
    return {"postscript_marker": marker}


def _sections(d: _Draw) -> dict[str, Any]:
    if "change_case:english_capital" in d.kinds:
        spliter = "SECTION"
    elif "change_case:capital_word_frequency" in d.kinds:
        spliter = "Section"
    else:
        spliter = d.choice(d.ins._SECTION_SPLITER)
    d.required.append(spliter)
    return {"section_spliter": spliter, "num_sections": d.integer(1, d.ins._NUM_SECTIONS)}


def _keywords(d: _Draw) -> dict[str, Any]:
    words = [d.word() for _ in range(d.ins._NUM_KEYWORDS)]
    d.required.extend(words)
    return {"keywords": words}


def _keyword_frequency(d: _Draw) -> dict[str, Any]:
    word, relation = d.word(), d.relation()
    if relation == "at least":
        d.required.append(word)
    return {"keyword": word, "frequency": d.integer(1, d.ins._KEYWORD_FREQUENCY), "relation": relation}


def _forbidden_words(d: _Draw) -> dict[str, Any]:
    return {"forbidden_words": [d.word() for _ in range(d.ins._NUM_KEYWORDS)]}


def _first_word(d: _Draw) -> dict[str, Any]:
    paragraphs = d.integer(1, d.ins._NUM_PARAGRAPHS)
    word = d.word()
    d.required.append(word)
    return {"num_paragraphs": paragraphs, "nth_paragraph": d.integer(1, paragraphs), "first_word": word}


def _sentences(d: _Draw) -> dict[str, Any]:
    relation = d.relation()
    low = 2 if relation == "less than" else 1
    return {"num_sentences": d.integer(low, d.ins._MAX_NUM_SENTENCES), "relation": relation}


def _words(d: _Draw) -> dict[str, Any]:
    count = d.integer(d.ins._NUM_WORDS_LOWER_LIMIT, d.ins._NUM_WORDS_UPPER_LIMIT)
    return {"num_words": count, "relation": d.relation()}


def _capital_words(d: _Draw) -> dict[str, Any]:
    relation = d.relation()
    frequency = d.integer(1, d.ins._ALL_CAPITAL_WORD_FREQUENCY)
    if relation == "less than":  # capital words that required phrases force, counted as the check counts
        forced = sum(token.isupper() for token in d.util.nltk.word_tokenize(" ".join(d.required)))
        frequency = max(frequency, forced + 1)
    return {"capital_frequency": frequency, "capital_relation": relation}


def _letter_frequency(d: _Draw) -> dict[str, Any]:
    relation = d.relation()
    letters = list(string.ascii_lowercase)  # lm-eval draws from ascii_letters, then lower-cases
    if relation == "less than":
        required = set(" ".join(d.required).lower())
        free = [c for c in letters if c not in required]
        if free:
            letters = free
        else:  # every letter occurs in a required word or phrase
            relation = "at least"
    return {
        "letter": d.choice(letters),
        "let_frequency": d.integer(1, d.ins._LETTER_FREQUENCY),
        "let_relation": relation,
    }


def _count(argument: str, limit: str) -> Callable[[_Draw], dict[str, Any]]:
    """A check with one count argument, drawn from 1 to lm-eval's constant ``limit``."""
    return lambda d: {argument: d.integer(1, getattr(d.ins, limit))}


def _no_arguments(d: _Draw) -> dict[str, Any]:
    return {}


# instruction id -> its argument sampler, in drawing order: phrases first (words must avoid them), then
# words, then counts, and last the counts that depend on the phrases and words drawn before them
ARGUMENT_SAMPLERS: dict[str, Callable[[_Draw], dict[str, Any]]] = {
    "startend:end_checker": _end_phrase,
    "detectable_content:postscript": _postscript,
    "detectable_format:multiple_sections": _sections,
    "keywords:existence": _keywords,
    "keywords:frequency": _keyword_frequency,
    "keywords:forbidden_words": _forbidden_words,
    "length_constraints:nth_paragraph_first_word": _first_word,
    "language:response_language": lambda d: {"language": d.choice(sorted(d.util.LANGUAGE_CODES))},
    "length_constraints:number_sentences": _sentences,
    "length_constraints:number_paragraphs": _count("num_paragraphs", "_NUM_PARAGRAPHS"),
    "length_constraints:number_words": _words,
    "detectable_content:number_placeholders": _count("num_placeholders", "_NUM_PLACEHOLDERS"),
    "detectable_format:number_bullet_lists": _count("num_bullets", "_NUM_BULLETS"),
    "detectable_format:number_highlighted_sections": _count("num_highlights", "_NUM_HIGHLIGHTED_SECTIONS"),
    "detectable_format:constrained_response": _no_arguments,
    "detectable_format:json_format": _no_arguments,
    "detectable_format:title": _no_arguments,
    "combination:two_responses": _no_arguments,
    "change_case:english_capital": _no_arguments,
    "change_case:english_lowercase": _no_arguments,
    "punctuation:no_comma": _no_arguments,
    "startend:quotation": _no_arguments,
    "change_case:capital_word_frequency": _capital_words,
    "keywords:letter_frequency": _letter_frequency,
}
DRAW_ORDER: dict[str, int] = {kind: position for position, kind in enumerate(ARGUMENT_SAMPLERS)}


def draw_arguments(rng: np.random.Generator, kinds: Sequence[str]) -> dict[str, dict[str, Any]]:
    """kind -> the arguments drawn for it (from ``rng``), consistent across the prompt's kinds."""
    ins, util, _ = lm_eval_modules()
    draw = _Draw(rng=rng, kinds=frozenset(kinds), ins=ins, util=util)
    return {kind: ARGUMENT_SAMPLERS[kind](draw) for kind in sorted(kinds, key=DRAW_ORDER.__getitem__)}


def build_constraint(
    registry: Mapping[str, type], kind: str, arguments: Mapping[str, Any]
) -> tuple[str, dict]:
    """(the check's own description, the check's own record of its arguments) for explicit arguments."""
    check = registry[kind](kind)
    with global_random_restored():  # every argument is given, but lm-eval must never move our random
        description = check.build_description(**arguments)
        recorded = check.get_instruction_args() or {}
    return description, dict(recorded)


__all__ = ["ARGUMENT_SAMPLERS", "DRAW_ORDER", "build_constraint", "draw_arguments", "lm_eval_modules"]
