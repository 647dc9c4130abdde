"""Verifiable-constraint rewards: IFEval's 25 instruction checks, as lm-eval maintains them.

``IFEvalVerifier`` grades every response of a candidates row against the row's constraints
(``instruction_id_list`` with one ``kwargs`` dict each) and writes IFEval's strict and loose verdicts,
the strict fraction of constraints met (``correctness``, the measure of arXiv 2412.15282) and, unless
``reward=None``, that fraction (strict or loose) as ``rewards``.

The checks themselves are lm-eval's (``lm_eval.tasks.ifeval.instructions_registry``); this module only
builds them and applies IFEval's strict/loose protocol, the way ``lm_eval.tasks.ifeval.utils`` does, with
four deliberate differences, all needed to make it a reproducible data step:

* A check is built once per (row, instruction) and serves both strict and loose grading of all N
  responses (lm-eval rebuilds it for each response, twice). Loose grading reuses the strict verdict on the
  unmodified response instead of recomputing it.
* Only ``None`` arguments are dropped before building a check. Arrow turns a list of kwargs dicts with
  different keys into structs with every key, the missing ones ``None``, so ``None`` means "not given".
  lm-eval drops every falsy value (``if v``), which would turn an explicit ``0`` (e.g. ``frequency=0``)
  or ``""`` into "not given", and the check would then draw a random value or silently pick a default;
  here they reach the check unchanged (an invalid one, e.g. ``relation=""``, is then reported as a
  ``RowError``). On IFEval's own data no argument is falsy, so both rules agree there.
* Python's global ``random`` is seeded from the instruction id and its arguments while a check is built
  (and restored afterwards): lm-eval's checks draw any argument that is missing or invalid from it, e.g.
  a random letter when ``letter_frequency``'s ``letter`` is not a letter (IFEval keys 1122, 1129).
* An argument a check draws at random (missing, or invalid such as a non-letter ``letter``) is graded as
  lm-eval grades it, with the seeded draw, but flagged: ``ifeval_invented_args`` lists
  ``"<instruction id>.<argument>"`` for each one, and ``strict_args=True`` refuses such rows instead
  (``RowError`` naming the row, key, instruction and argument). A draw is detected exactly, by the global
  ``random`` state moving while the check is built; the arguments it went to are those the built check
  reports (``get_instruction_args``) that were not given or whose given value it replaced.
* A missing response (None in ``responses``, e.g. a failed API call) is not graded: its entries in
  ``ifeval_strict``, ``ifeval_loose``, ``correctness`` and ``rewards`` are None.
* langdetect is seeded (``DetectorFactory.seed = 0``) while a batch is graded, and restored afterwards,
  so language and case checks give the same verdict in every run and process.

NLTK's Punkt data comes from the package (``hfpref/nltk_data``), put first on NLTK's path before lm-eval
is imported, so grading works offline and never attempts a download.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import random
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
from typing import Any

from hfpref.core.columns import (
    CORRECTNESS,
    IFEVAL_INVENTED_ARGS,
    IFEVAL_LOOSE,
    IFEVAL_STRICT,
    INSTRUCTION_ID_LIST,
    KWARGS,
    PROMPT,
    RESPONSES,
    REWARD_SOURCE,
    REWARDS,
)
from hfpref.core.step import Batch, RowError, Step, StepConfig, row_label
from hfpref.steps.nltk_setup import use_packaged_nltk_data

REWARD_MODES = ("strict", "loose", None)


@dataclasses.dataclass
class IFEvalConfig(StepConfig):
    """``reward``: which fraction of constraints met becomes ``rewards`` ("strict", "loose"), or None
    to write only the verdicts and ``correctness``. ``strict_args``: refuse (``RowError``) a row whose
    kwargs leave an argument to be drawn at random, instead of grading it and flagging it in
    ``ifeval_invented_args``."""

    reward: str | None = "strict"
    strict_args: bool = False

    def __post_init__(self) -> None:
        if self.reward not in REWARD_MODES:
            raise ValueError(f"IFEvalConfig.reward must be one of {REWARD_MODES}, got {self.reward!r}")
        if not isinstance(self.strict_args, bool):
            raise ValueError(f"IFEvalConfig.strict_args must be True or False, got {self.strict_args!r}")


def checker_versions() -> str:
    """The packages whose code decides a verdict: lm-eval's checks, langdetect's models, NLTK's Punkt."""
    return " ".join(f"{name}=={metadata.version(name)}" for name in ("lm-eval", "langdetect", "nltk"))


@functools.cache
def _lm_eval_version() -> str:
    return metadata.version("lm-eval")


@functools.cache
def instruction_registry() -> Mapping[str, type]:
    """lm-eval's map from IFEval instruction id to check class, imported with the packaged NLTK data."""
    with global_random_restored():  # importing nltk draws from the global random
        use_packaged_nltk_data()  # before the import: lm-eval downloads Punkt at import when it finds none
        from lm_eval.tasks.ifeval import instructions_registry

    return instructions_registry.INSTRUCTION_DICT


@contextlib.contextmanager
def global_random_restored(seed: str | None = None) -> Iterator[None]:
    """Run a block with the global ``random`` (which lm-eval's checks draw from) seeded, when a seed is
    given, and give the caller its own random state back afterwards."""
    saved = random.getstate()
    if seed is not None:
        random.seed(seed)  # a str seed is hashed with SHA-512: the same in every process, unlike hash()
    try:
        yield
    finally:
        random.setstate(saved)


@contextlib.contextmanager
def _seeded_langdetect() -> Iterator[None]:
    """Make langdetect deterministic for a block (each detection reseeds its own RNG from this seed)."""
    from langdetect import DetectorFactory

    saved = DetectorFactory.seed
    DetectorFactory.seed = 0
    try:
        yield
    finally:
        DetectorFactory.seed = saved


def loose_variants(response: str) -> list[str]:
    """The response variants IFEval's loose grading accepts (first/last line removed, ``*`` stripped).

    Written out because lm-eval builds them inside ``test_instruction_following_loose`` rather than
    exposing them; the list and its order are the same.
    """
    lines = response.split("\n")
    without_first = "\n".join(lines[1:]).strip()
    without_last = "\n".join(lines[:-1]).strip()
    without_both = "\n".join(lines[1:-1]).strip()
    variants = [response, without_first, without_last, without_both]
    stripped = [v.replace("*", "") for v in variants]
    return [response, stripped[0], without_first, without_last, without_both, *stripped[1:]]


def prompt_text(prompt: Any, where: str) -> str:
    """The text IFEval's checks see: the prompt itself, or the last user message's content."""
    if isinstance(prompt, str):
        return prompt
    if isinstance(prompt, Sequence):
        for message in reversed(prompt):
            if isinstance(message, Mapping) and message.get("role") == "user":
                content = message.get("content")
                if isinstance(content, str):
                    return content
                raise RowError(
                    f"{where}: column {PROMPT!r}: the last user message's content is {content!r}, not text"
                )
        raise RowError(f"{where}: column {PROMPT!r} has no user message: {prompt!r}")
    raise RowError(f"{where}: column {PROMPT!r} must be a string or a list of messages, got {prompt!r}")


class IFEvalVerifier(Step):
    """Grade each response against its row's IFEval constraints with lm-eval's checks.

    Input columns: ``prompt`` (str or list of messages), ``responses`` (list[str]),
    ``instruction_id_list`` (list[str], IFEval ids such as ``punctuation:no_comma``), ``kwargs``
    (list of dicts, one per instruction, ``None`` values meaning "not given").

    A None response is missing: it is not graded and gets None in every per-response output.

    Output columns: ``ifeval_strict``, ``ifeval_loose`` (per response, per instruction: list[list[bool]]),
    ``correctness`` (per response, strict fraction of constraints met: list[float]),
    ``ifeval_invented_args`` (per row, list[str]: ``"<instruction id>.<argument>"`` for each argument the
    check drew at random; empty when every argument was given and valid) and, when ``config.reward`` is
    set, ``rewards`` (the strict or loose fraction: list[float]) and ``reward_source`` (str, e.g.
    ``"ifeval:strict (lm-eval 0.4.13)"``).
    """

    config_class = IFEvalConfig
    version = "2"  # 2: missing responses, ifeval_invented_args
    config: IFEvalConfig

    def input_columns(self) -> list[str]:
        return [PROMPT, RESPONSES, INSTRUCTION_ID_LIST, KWARGS]

    def output_columns(self) -> list[str]:
        columns = [IFEVAL_STRICT, IFEVAL_LOOSE, CORRECTNESS, IFEVAL_INVENTED_ARGS]
        if self.config.reward is not None:
            columns += [REWARDS, REWARD_SOURCE]
        return columns

    def load(self, rank: int | None) -> Mapping[str, type]:
        return instruction_registry()

    def resolved_revision(self) -> str:
        return checker_versions()

    def reward_source(self) -> str:
        return f"ifeval:{self.config.reward} (lm-eval {_lm_eval_version()})"

    def process(self, batch: Batch, rank: int | None, indices: list[int] | None) -> Batch:
        registry = self.resources(rank)
        out: Batch = {column: [] for column in self.output_columns()}
        source = self.reward_source() if self.config.reward is not None else None
        with _seeded_langdetect():
            for i in range(len(batch[RESPONSES])):
                where = row_label(batch, i, indices)
                checks, invented = self._build_row_checks(registry, batch, i, where)
                strict_rows: list[list[bool] | None] = []
                loose_rows: list[list[bool] | None] = []
                for j, response in enumerate(_responses(batch[RESPONSES][i], where)):
                    if response is None:  # a missing response is not graded: None, aligned with responses
                        strict_rows.append(None)
                        loose_rows.append(None)
                        continue
                    if not isinstance(response, str):
                        raise RowError(f"{where}: column {RESPONSES!r}[{j}] is {response!r}, not a string")
                    strict, loose = grade(checks, response)
                    strict_rows.append(strict)
                    loose_rows.append(loose)
                out[IFEVAL_STRICT].append(strict_rows)
                out[IFEVAL_LOOSE].append(loose_rows)
                out[CORRECTNESS].append([_fraction(v) for v in strict_rows])
                out[IFEVAL_INVENTED_ARGS].append(invented)
                if self.config.reward is not None:
                    graded = strict_rows if self.config.reward == "strict" else loose_rows
                    out[REWARDS].append([_fraction(v) for v in graded])
                    out[REWARD_SOURCE].append(source)
        return out

    def _build_row_checks(
        self, registry: Mapping[str, type], batch: Batch, i: int, where: str
    ) -> tuple[list[Any], list[str]]:
        """The row's checks, and ``"<instruction id>.<argument>"`` for each argument a check drew at random."""
        ids, kwargs_list = batch[INSTRUCTION_ID_LIST][i], batch[KWARGS][i]
        if not isinstance(ids, Sequence) or isinstance(ids, str) or not ids:
            raise RowError(
                f"{where}: column {INSTRUCTION_ID_LIST!r} must be a non-empty list of instruction ids, "
                f"got {ids!r}"
            )
        if not isinstance(kwargs_list, Sequence) or len(kwargs_list) != len(ids):
            raise RowError(
                f"{where}: column {KWARGS!r} must hold one dict per instruction ({len(ids)}: {list(ids)}), "
                f"got {kwargs_list!r}"
            )
        text = prompt_text(batch[PROMPT][i], where)
        checks, invented = [], []
        for position, (iid, kw) in enumerate(zip(ids, kwargs_list, strict=True)):
            check, drawn = build_flagged_check(registry, iid, kw, text, where)
            if drawn and self.config.strict_args:
                given = _kwargs_dict(kw, iid, where)
                detail = ", ".join(
                    f"{name!r} ({'not given' if given.get(name) is None else f'invalid: {given[name]!r}'})"
                    for name in drawn
                )
                raise RowError(
                    f"{where}: column {KWARGS!r}[{position}] for instruction {iid!r} leaves argument(s) {detail} "
                    "to be drawn at random by lm-eval's check. Give a valid value, or set strict_args=False "
                    f"to grade against the (seeded) drawn value with the row flagged in {IFEVAL_INVENTED_ARGS!r}"
                )
            checks.append(check)
            invented.extend(f"{iid}.{name}" for name in drawn)
        return checks, invented

    # ---- datasets integration --------------------------------------------------------------
    def output_features(self, input_features: Any) -> Any:
        """The output columns' types, fixed up front: a batch whose responses are all missing (all None)
        or that flags no argument (empty lists) must not set a null type the next batch cannot follow."""
        import datasets

        real, boolean, string = datasets.Value("float64"), datasets.Value("bool"), datasets.Value("string")
        features = {
            **input_features,
            IFEVAL_STRICT: datasets.List(datasets.List(boolean)),
            IFEVAL_LOOSE: datasets.List(datasets.List(boolean)),
            CORRECTNESS: datasets.List(real),
            IFEVAL_INVENTED_ARGS: datasets.List(string),
        }
        if self.config.reward is not None:
            features.update({REWARDS: datasets.List(real), REWARD_SOURCE: string})
        return datasets.Features(features)


def check_seed(instruction_id: str, arguments: Mapping[str, Any]) -> str:
    """The seed of Python's global ``random`` while a check is built from its (non-None) arguments."""
    return f"{instruction_id}|{json.dumps(dict(arguments), sort_keys=True, default=repr)}"


def _kwargs_dict(kwargs: Any, instruction_id: str, where: str) -> dict[str, Any]:
    """One instruction's arguments as a dict (None: no arguments; a JSON string from Ray is decoded)."""
    if kwargs is None:  # Arrow writes a null struct for an instruction without arguments
        return {}
    if isinstance(kwargs, str):
        # a datasets Json() column (how the embedded data stores kwargs) reaches Ray Data batches undecoded
        with contextlib.suppress(json.JSONDecodeError):  # undecodable text is reported just below
            kwargs = json.loads(kwargs)
    if not isinstance(kwargs, Mapping):
        raise RowError(
            f"{where}: column {KWARGS!r} for instruction {instruction_id!r} must be a dict, got {kwargs!r}"
        )
    return dict(kwargs)


def _same_argument(given: Any, used: Any) -> bool:
    """Whether the check kept a given argument (up to the case and whitespace it normalises)."""
    if isinstance(given, str) and isinstance(used, str):
        return given.strip().lower() == used.strip().lower()
    if isinstance(given, (list, tuple)) and isinstance(used, (list, tuple, set)):
        return sorted(map(str, given)) == sorted(map(str, used)) or [
            str(g).strip().lower() for g in given
        ] == [str(u).strip().lower() for u in used]
    return given == used


def build_flagged_check(
    registry: Mapping[str, type],
    instruction_id: str,
    kwargs: Mapping[str, Any] | None,
    prompt: str,
    where: str,
) -> tuple[Any, list[str]]:
    """One lm-eval check, and the names of the arguments it drew at random (empty when it drew none)."""
    if instruction_id not in registry:
        raise RowError(
            f"{where}: column {INSTRUCTION_ID_LIST!r} holds unknown IFEval instruction id {instruction_id!r}; "
            f"known ids: {sorted(registry)}"
        )
    arguments = {
        name: value
        for name, value in _kwargs_dict(kwargs, instruction_id, where).items()
        if value is not None
    }
    check = registry[instruction_id](instruction_id)
    with global_random_restored(check_seed(instruction_id, arguments)):
        seeded = random.getstate()
        try:
            check.build_description(**arguments)
            # IFEval's protocol: a check that declares a ``prompt`` argument is rebuilt with the prompt
            declared = check.get_instruction_args()
            if declared and "prompt" in declared:
                check.build_description(prompt=prompt)
        except (TypeError, ValueError) as err:
            raise RowError(
                f"{where}: column {KWARGS!r} holds {arguments!r} for instruction {instruction_id!r}, "
                f"which its check rejects: {err}"
            ) from err
        # every random draw in lm-eval's checks replaces a missing or invalid argument
        drew = random.getstate() != seeded
    if not drew:
        return check, []
    used = check.get_instruction_args() or {}
    drawn = [
        name
        for name, value in used.items()
        if name != "prompt" and (name not in arguments or not _same_argument(arguments[name], value))
    ]
    # a draw that no reported argument shows (not so in lm-eval 0.4.x) is still flagged, by the unset ones
    return check, drawn or [name for name in used if name not in arguments] or ["<unknown>"]


def grade(checks: Sequence[Any], response: str) -> tuple[list[bool], list[bool]]:
    """IFEval's strict and loose verdicts of one response, one per check; an empty response fails all."""
    strict = [bool(response.strip()) and bool(check.check_following(response)) for check in checks]
    variants: list[str] | None = None
    loose = []
    for check, passed in zip(checks, strict, strict=True):
        if not passed:
            variants = variants or loose_variants(response)
            # variants[0] is the response itself, already graded strictly
            passed = any(v.strip() and check.check_following(v) for v in variants[1:])
        loose.append(bool(passed))
    return strict, loose


def _responses(responses: Any, where: str) -> Sequence[Any]:
    if not isinstance(responses, Sequence) or isinstance(responses, str):
        raise RowError(f"{where}: column {RESPONSES!r} must be a list of strings, got {responses!r}")
    return responses


def _fraction(verdicts: list[bool] | None) -> float | None:
    return None if verdicts is None else sum(verdicts) / len(verdicts)
