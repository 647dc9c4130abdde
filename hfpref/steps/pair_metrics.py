"""Per-prompt pair metrics of the DCRM paper: e_Δ, p_Δ, r_Δ and DCRM for every ordered response pair.

``PairMetrics`` reads a candidates row (one prompt, N responses) and writes four N×N matrices, row i being
the chosen candidate y⁺ = responses[i] and column j the rejected one y⁻ = responses[j] (the diagonal is
kept, with the value the formula gives):

* ``edit_distance_matrix``: e_Δ, the Levenshtein distance between the two responses' token ids (response
  tokens only, no special tokens), or between their whitespace-split words when no tokenizer is set;
* ``logp_diff_matrix``: p_Δ = |ref_logps[i] − ref_logps[j]|, or None for a row without ``ref_logps``;
* ``reward_margin_matrix``: r_Δ = rewards[i] − rewards[j];
* ``dcrm_matrix``: DCRM = (σ(r_Δ) − 0.5) / (e_Δ + p_Δ + ε), with p_Δ = 0 where it is unknown;

plus ``edit_distance_unit``, "word" or "token:<tokenizer>@<revision>", so a dataset card can say which
distance was used.

e_Δ's unit is the step's own declared setting, ``edit_distance_unit``: ``words`` (the default) or a named
tokenizer (a Hub id or a local folder), never implicitly the reference model's: the DCRM paper reports one
e_Δ for every π_ref, so changing π_ref (a ``LogProbAnnotator``'s model) must not change e_Δ. ``tokenizer``
is the older spelling of the same setting (kept for existing recipes and ``hfpref curate --tokenizer``).
Token ids computed elsewhere (``metrics_from_tokens``) are accepted only in the declared unit.

A NaN or None reward or log-prob gives NaN in the cells it enters; pair selection then leaves those cells
out and says why. A missing response (None in ``responses``, e.g. a failed API call) is no candidate: its
row and column hold None in ``edit_distance_matrix`` and NaN in the float matrices, and the other cells are
what they would be without it.
"""

from __future__ import annotations

import dataclasses
import itertools
import numbers
import os
import re
from collections import Counter
from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np
from rapidfuzz.distance import Levenshtein
from rapidfuzz.process import cdist

from hfpref.core import columns as C
from hfpref.core.errors import UserError
from hfpref.core.step import Batch, RowError, Step, StepConfig, row_label
from hfpref.models.hub import token_unit, tokenizer_content_hash
from hfpref.models.token_ids import reusable_token_ids
from hfpref.steps.word_codes import FlatTokens, flat_tokens, rapidfuzz_symbols, split_words

EDIT_DISTANCE_UNIT = C.EDIT_DISTANCE_UNIT
# token_unit and tokenizer_content_hash live in hfpref.models.hub, where the sampler (which writes token ids
# with their unit) imports them too; importable from here as before

_COMMIT_HASH = re.compile(r"^[0-9a-f]{40}$")
WORDS = "words"  # the word-level unit of edit_distance_unit ("word" is accepted too)
WORD_UNIT = "word"  # how the output column and the manifest name it


class EditDistanceUnitError(UserError):
    """Token ids in another unit than the e_Δ unit a PairMetrics step declares."""


def dcrm(reward_margin: Any, edit_distance: Any, logp_diff: Any, eps: float = 1.0) -> Any:
    """DCRM = (σ(r_Δ) − 0.5) / (e_Δ + p_Δ + ε), element-wise over floats or numpy arrays (broadcast).

    Returns a float when every argument is a scalar, else a numpy array. NaN in any input gives NaN.
    """
    r = np.asarray(reward_margin, dtype=np.float64)
    e = np.asarray(edit_distance, dtype=np.float64)
    p = np.asarray(logp_diff, dtype=np.float64)
    # σ(x) − 0.5 equals tanh(x/2)/2 exactly; the tanh form keeps the sign of tiny margins that
    # 1/(1+exp(−x)) − 0.5 rounds to zero (the paper's "DCRM has the sign of r_Δ" property)
    value = 0.5 * np.tanh(0.5 * r) / (e + p + eps)
    return float(value) if value.ndim == 0 else value


@dataclasses.dataclass
class PairMetricsConfig(StepConfig):
    """Settings of ``PairMetrics``.

    edit_distance_unit: e_Δ's unit: "words" (whitespace-split words; the default) or a tokenizer, a Hub model
      id or local folder whose tokenizer gives the token ids (response tokens, no special tokens). Declare
      it on its own: it is not taken from any model step, so e_Δ is the same whatever π_ref is.
    tokenizer: the older spelling of a tokenizer unit; after construction it always names the unit's
      tokenizer (None for words), and giving both with different values is an error.
    tokenizer_revision: branch, tag or commit of a Hub tokenizer (ignored for a local folder).
    eps: ε in DCRM's denominator (the paper uses 1); must be positive.
    workers: threads rapidfuzz uses per distance matrix (-1 = all cores). Default 1: a prompt's matrix is
      small (N = 8: 28 distances) and threads for it cost more than they save (the embedded default's 541
      matrices took 1.31 s with -1 against 0.37-0.49 s with 1 on a busy 2-core machine, and each
      ``--num-proc`` worker would start its own); prompts run in parallel with ``--num-proc`` instead.
    """

    edit_distance_unit: str | None = None
    tokenizer: str | None = None
    tokenizer_revision: str | None = None
    eps: float = 1.0
    workers: int = 1

    def __post_init__(self) -> None:
        unit, tokenizer = self.edit_distance_unit, self.tokenizer
        if unit is not None and (not isinstance(unit, str) or not unit):
            raise ValueError(
                f"PairMetricsConfig.edit_distance_unit must be 'words' or a tokenizer (Hub id or local "
                f"folder), got {unit!r}"
            )
        if unit in (WORDS, WORD_UNIT):
            unit = WORDS
        if unit is None:
            unit = tokenizer or WORDS
        elif tokenizer is not None and tokenizer != unit:
            raise ValueError(
                f"PairMetricsConfig: edit_distance_unit={self.edit_distance_unit!r} and tokenizer={tokenizer!r} "
                "disagree; give the unit once, as edit_distance_unit ('words' or a tokenizer)"
            )
        self.edit_distance_unit = unit
        self.tokenizer = None if unit == WORDS else unit
        if self.tokenizer is None and self.tokenizer_revision is not None:
            raise ValueError(
                f"PairMetricsConfig.tokenizer_revision={self.tokenizer_revision!r} needs a tokenizer unit; "
                "e_Δ is counted in words here (set edit_distance_unit to a tokenizer, or drop the revision)"
            )
        if not self.eps > 0:
            raise ValueError(f"PairMetricsConfig.eps must be positive (the paper uses 1), got {self.eps!r}")
        if self.workers == 0 or self.workers < -1:
            raise ValueError(
                f"PairMetricsConfig.workers must be -1 (all cores) or >= 1, got {self.workers!r}"
            )


def dense_symbols(sequences: Sequence[Sequence[Any]]) -> list[list[int]]:
    """Relabel the tokens of a group of sequences 0, 1, 2, ... by falling frequency.

    The relabelling is one-to-one, so Levenshtein distances within the group are unchanged. It is here for
    speed: rapidfuzz looks symbols below 256 up in a flat table and all others (large token ids, words) in
    a hash map, so giving the most frequent tokens the smallest codes puts most lookups on the fast path
    (about 3x faster on 512-token responses of a 3000-token vocabulary). ``word_codes.dense_ranks`` does
    the same to a whole batch at once (what the step uses).
    """
    counts = Counter(itertools.chain.from_iterable(sequences))
    code = {token: k for k, (token, _) in enumerate(counts.most_common())}
    return [list(map(code.__getitem__, sequence)) for sequence in sequences]


class PairMetrics(Step):
    """e_Δ, p_Δ, r_Δ and DCRM for every ordered pair of a prompt's responses.

    Input columns: ``responses`` (list[str]), ``rewards`` (list[float]); ``ref_logps`` (list[float]) is
    used when present. A None response is missing: its row and column of every matrix are None (the int
    matrix) or NaN (the float ones). ``response_token_ids`` with ``response_token_unit`` (written by
    ``ResponseSampler``) are used when present: a row whose unit is the declared one is not tokenized again.

    What a sampled response's tokens are. In the sampler's tokenizer unit, a response's tokens are the ids
    it was sampled as (special tokens left out), not ``encode(decode(ids))``: the two differ where the
    sampled bytes are no valid UTF-8 (decoding writes U+FFFD, whose encoding is other tokens) or, for BPE,
    where the model sampled a split that encoding would merge. The sampled ids are the response the model
    produced, so e_Δ counts the model's own edits; the unit label stays ``token:<tokenizer>@<revision>``
    either way. On the tiny test model (random weights, byte-level BPE) every response without U+FFFD
    re-encoded to its sampled ids, and every one with U+FFFD did not. Rows without ids, with ids in
    another unit, or a response whose ids are None (not from the sampler), are tokenized as before.
    Output columns: ``edit_distance_matrix`` (N×N int), ``logp_diff_matrix`` (N×N float, or None when the
    row has no ``ref_logps``), ``reward_margin_matrix`` and ``dcrm_matrix`` (N×N float), and
    ``edit_distance_unit`` (str).
    """

    config_class = PairMetricsConfig
    version = "2"  # 2: a None response's cells are None / NaN instead of those of the empty text
    config: PairMetricsConfig

    def input_columns(self) -> list[str]:
        return [C.RESPONSES, C.REWARDS]

    def output_columns(self) -> list[str]:
        return [*C.MATRIX_COLUMNS, EDIT_DISTANCE_UNIT]

    # ---- tokenizer -------------------------------------------------------------------------
    def resolved_revision(self) -> str | None:
        name = self.config.tokenizer
        if name is None:
            return None
        if os.path.isdir(name):
            return tokenizer_content_hash(name)
        revision = self.config.tokenizer_revision
        if revision is not None and _COMMIT_HASH.match(revision):
            return revision
        import huggingface_hub

        # works offline too, from the revision -> commit mapping the Hub cache keeps
        return huggingface_hub.resolve_revision(name, revision=revision).resolved

    def unit_label(self) -> str:
        """The declared unit as the output column names it: "word" or "token:<tokenizer>@<revision>"."""
        if self.config.tokenizer is None:
            return WORD_UNIT
        return token_unit(self.config.tokenizer, self.resolved_revision())

    @property
    def edit_distance_unit(self) -> str:
        """The e_Δ unit (what the manifest's ``edit_distance_unit`` records)."""
        return self.unit_label()

    def load(self, rank: int | None) -> dict[str, Any]:
        if self.config.tokenizer is None:
            return {"tokenizer": None, "backend": None, "unit": WORD_UNIT}
        from transformers import AutoTokenizer

        revision = self.resolved_revision()
        local = os.path.isdir(self.config.tokenizer)
        # a Hub tokenizer loads at the commit the fingerprint names, even if its branch moves meanwhile
        tokenizer = AutoTokenizer.from_pretrained(self.config.tokenizer, revision=None if local else revision)
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            # this instance is ours alone: make sure no saved truncation or padding setting alters the ids
            backend.no_truncation()
            backend.no_padding()
            backend.encode_special_tokens = bool(getattr(tokenizer, "split_special_tokens", False))
        return {
            "tokenizer": tokenizer,
            "backend": backend,
            "unit": token_unit(self.config.tokenizer, revision),
        }

    def tokenize(self, texts: Sequence[str], rank: int | None = None) -> list[list[int]] | list[list[str]]:
        """Response tokens (no special tokens) per text, or whitespace-split words without a tokenizer."""
        resources = self.resources(rank)
        if not texts:
            return []
        if resources["tokenizer"] is None:
            return [text.split() for text in texts]
        unique = list(dict.fromkeys(texts))  # sampled responses repeat; encode each distinct text once
        if resources["backend"] is not None:
            # the Rust tokenizer's encode_batch_fast gives the ids tokenizer(...) gives, without the
            # offsets and per-encoding Python conversion transformers adds (about 25% faster here)
            encoded = [
                e.ids for e in resources["backend"].encode_batch_fast(unique, add_special_tokens=False)
            ]
        else:
            encoded = resources["tokenizer"](unique, add_special_tokens=False, return_attention_mask=False)[
                "input_ids"
            ]
        if len(unique) == len(texts):
            return encoded
        by_text = dict(zip(unique, encoded, strict=True))
        return [by_text[text] for text in texts]

    # ---- the map function ------------------------------------------------------------------
    def process(self, batch: Batch, rank: int | None, indices: list[int] | None) -> Batch:
        texts = self.response_texts(batch, indices)
        declared = self.resources(rank)["unit"]
        if C.RESPONSE_TOKEN_IDS not in batch or declared not in (batch.get(C.RESPONSE_TOKEN_UNIT) or ()):
            # no row's ids are in this step's unit (e.g. words): all tokenized the fast way
            return self.metrics_from_tokens(batch, self.token_codes(texts, rank), indices, rank)
        tokens = self.reused_token_ids(batch, rank)
        missing = [k for k, ids in enumerate(tokens) if ids is None]
        if missing:  # responses without ids in the declared unit: tokenized as without the column
            for k, ids in zip(missing, self.tokenize([texts[k] for k in missing], rank), strict=True):
                tokens[k] = ids
        return self.metrics_from_tokens(batch, tokens, indices, rank, unit=declared)

    def reused_token_ids(self, batch: Batch, rank: int | None = None) -> list[Any]:
        """The sampler's ids of every response where they are in the declared unit, else None (see
        ``hfpref.models.token_ids.reusable_token_ids``)."""
        return reusable_token_ids(batch, self.resources(rank)["unit"])

    def token_codes(self, texts: Sequence[str], rank: int | None = None) -> FlatTokens:
        """``tokenize(texts)`` in the flat form ``metrics_from_tokens`` relabels fastest: words are split
        and encoded in Arrow (as ``str.split()`` splits them) instead of as Python lists of strings."""
        if self.resources(rank)["tokenizer"] is None:
            return split_words(texts)
        return flat_tokens(self.tokenize(texts, rank))

    def response_texts(self, batch: Batch, indices: list[int] | None = None) -> list[str]:
        """Every response of the batch, flattened in row order (a missing one, None, as the empty text: a
        placeholder that keeps the flattening aligned; ``metrics_from_tokens`` blanks its cells)."""
        texts: list[str] = []
        for i, responses in enumerate(batch[C.RESPONSES]):
            for k, text in enumerate(responses or []):
                if text is not None and not isinstance(text, str):
                    raise RowError(
                        f"{self.name}: {row_label(batch, i, indices)} column {C.RESPONSES!r}[{k}] must be a "
                        f"string, got {type(text).__name__} {text!r}"
                    )
                texts.append("" if text is None else text)
        return texts

    def metrics_from_tokens(
        self,
        batch: Batch,
        tokens: Sequence[Sequence[Any]] | FlatTokens,
        indices: list[int] | None = None,
        rank: int | None = None,
        *,
        unit: str | None = None,
    ) -> Batch:
        """The output columns, given the tokens of ``response_texts(batch)`` (one sequence per response,
        as lists or as ``token_codes`` gives them).

        ``tokens`` are the step's own (``tokenize``) unless ``unit`` says what they are: token ids reused
        from elsewhere (e.g. a model step's tokenization) are taken only when ``unit`` equals the declared
        unit (``unit_label()``, e.g. ``token_unit(tokenizer, resolved_revision)``), so e_Δ cannot silently
        be counted in another tokenizer's tokens.
        """
        declared = self.resources(rank)["unit"]
        if unit is not None and unit != declared:
            raise EditDistanceUnitError(
                f"{self.name}: token ids given in unit {unit!r}, but this step declares edit_distance_unit "
                f"{self.config.edit_distance_unit!r} ({declared}); let the step tokenize the responses "
                "(PairMetrics.tokenize), or declare that tokenizer as edit_distance_unit"
            )
        unit = declared
        sizes = [len(responses or []) for responses in batch[C.RESPONSES]]
        if sum(sizes) != len(tokens):
            raise ValueError(f"{self.name}: got {len(tokens)} token sequences for {sum(sizes)} responses")
        symbols = rapidfuzz_symbols(tokens if isinstance(tokens, FlatTokens) else flat_tokens(tokens), sizes)
        out: Batch = {name: [] for name in self.output_columns()}
        # inf/NaN inputs give inf/NaN cells, by design (one errstate for the batch: entering it costs ~40 µs)
        with np.errstate(over="ignore", invalid="ignore"):
            self._fill_rows(out, batch, symbols, sizes, indices)
        out[EDIT_DISTANCE_UNIT] = [unit] * len(sizes)
        return out

    def _fill_rows(
        self, out: Batch, batch: Batch, symbols: list, sizes: list[int], indices: list[int] | None
    ) -> None:
        has_logps = batch.get(C.REF_LOGPS) is not None
        stop = 0
        for i, responses in enumerate(batch[C.RESPONSES]):
            n = sizes[i]
            start, stop = stop, stop + n
            rewards = self._per_response(batch, C.REWARDS, i, n, indices)
            logps = self._per_response(batch, C.REF_LOGPS, i, n, indices) if has_logps else None
            edit, logp_diff, margin, value = self._row_cells(
                symbols[start:stop], responses or [], rewards, logps
            )
            out[C.EDIT_DISTANCE_MATRIX].append(edit)
            out[C.LOGP_DIFF_MATRIX].append(logp_diff)
            out[C.REWARD_MARGIN_MATRIX].append(margin)
            out[C.DCRM_MATRIX].append(value)

    def _row_cells(
        self,
        symbols: Sequence[Any],
        responses: Sequence[str | None],
        rewards: np.ndarray,
        logps: np.ndarray | None,
    ) -> tuple[list, list | None, list, list]:
        """One row's e_Δ, p_Δ (None without log-probs), r_Δ and DCRM matrices as nested lists."""
        n = len(symbols)
        # passing the same list as queries and choices lets rapidfuzz compute only one triangle
        edit = cdist(symbols, symbols, scorer=Levenshtein.distance, workers=self.config.workers).reshape(n, n)
        margin = rewards[:, None] - rewards[None, :]
        logp_diff = None if logps is None else np.abs(logps[:, None] - logps[None, :])
        value = dcrm(margin, edit, 0.0 if logp_diff is None else logp_diff, self.config.eps)
        edit_cells: list = edit.tolist()
        if None in responses:
            # the placeholder "" must not look like a response: blank every cell a missing one enters
            missing = np.array([text is None for text in responses], dtype=bool)
            blank = missing[:, None] | missing[None, :]
            edit_object = edit.astype(object)
            edit_object[blank] = None
            edit_cells = edit_object.tolist()
            for matrix in (margin, value, logp_diff):
                if matrix is not None:
                    matrix[blank] = np.nan
        return edit_cells, None if logp_diff is None else logp_diff.tolist(), margin.tolist(), value.tolist()

    def _per_response(
        self, batch: Batch, column: str, i: int, n: int, indices: list[int] | None
    ) -> np.ndarray | None:
        """Row i of a per-response float column as an array (None elements become NaN); None if the row is."""
        values = batch[column][i]
        if values is None:
            return None if column == C.REF_LOGPS else np.full(n, np.nan)
        if len(values) != n:
            raise RowError(
                f"{self.name}: {row_label(batch, i, indices)} column {column!r} has {len(values)} values for "
                f"{n} responses: {values!r}"
            )
        if not all(type(v) is float or v is None or isinstance(v, numbers.Real) for v in values):
            raise RowError(
                f"{self.name}: {row_label(batch, i, indices)} column {column!r} must hold numbers, got {values!r}"
            )
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)

    # ---- datasets integration --------------------------------------------------------------
    def output_features(self, input_features: datasets.Features) -> datasets.Features:
        """The mapped dataset's features: the input's plus the matrices', so None rows keep a stable type."""
        floats = datasets.List(datasets.List(datasets.Value("float64")))
        return datasets.Features(
            {
                **input_features,
                C.EDIT_DISTANCE_MATRIX: datasets.List(datasets.List(datasets.Value("int64"))),
                C.LOGP_DIFF_MATRIX: floats,
                C.REWARD_MARGIN_MATRIX: floats,
                C.DCRM_MATRIX: floats,
                EDIT_DISTANCE_UNIT: datasets.Value("string"),
            }
        )
