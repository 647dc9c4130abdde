"""``HiddenStateRunner``: a decoder's final hidden states at chosen positions of many token sequences, in
forward passes of at most ``token_budget`` tokens (log-probs and reward heads are computed from these).

How it batches (``packing="tree"``, the default where the model allows it): the sequences of one group
(the N responses of a prompt) share their common token prefix. A forward pass is one row holding, for each
group packed into it, the prefix once and then each sequence's tail, with position ids restarting per
sequence; groups are packed first-fit-decreasing up to ``token_budget`` tokens (a group too large for the
budget is split, each part keeping the prefix; ``hfpref.models.packing``). Attention runs per sequence
(``hfpref.models.attention``): the prefix attends causally to itself, each tail to the prefix and causally
to itself. So the prompt is paid for once instead of N times, no padding is processed at all, and the
result is exact, not an approximation: every token sees exactly the keys, at exactly the positions, it
sees when its sequence runs alone. We chose this over
  * KV-cache prefix reuse (run the prompt, expand its cache to the N responses): exact too, but the
    responses of a batch then need padding to a common length, and the prompt caches too, which costs the
    padding this avoids;
  * block-diagonal packing through transformers' ``position_ids`` support: shares nothing (each response
    repeats its prompt) and only skips the masked blocks with flash-attention.
Tree packing is used only after a probe matches the model's own attention on two sequences sharing a
prefix.

``packing="padded"`` (or ``"auto"`` where tree packing is refused: sliding windows, soft-capping,
attention sinks, a model that cannot switch its attention function, or a failed probe) runs length-sorted,
right-padded batches of at most ``token_budget`` token slots with the model's own attention. Both modes
return hidden states only at the positions asked for, so callers apply their head (LM head, reward head)
to those rows alone.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch

from hfpref.models.attention import (
    LAYOUT_KWARG,
    UnsupportedAttention,
    build_layout,
    candidate_kernels,
    kernel_error,
    register_packed_attention,
)
from hfpref.models.packing import (
    HiddenRows,
    Segment,
    SequenceQuery,
    pack_segments,
    plan_padded_batches,
    split_group,
)

PACKINGS = ("auto", "tree", "padded")


def _relative_error(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value - reference).norm() / reference.norm().clamp(min=1e-12))


class HiddenStateRunner:
    """Final hidden states of a causal decoder at chosen positions, in forward passes of ``token_budget`` tokens.

    ``model`` is a ``PreTrainedModel`` whose base model (``model.base_model``) is a decoder: a causal LM
    or a sequence-classification model. ``run(groups)`` yields one ``HiddenRows`` per forward pass; the
    sequences of a group may share a prefix, which tree packing computes once (see the module notes).
    ``stats`` counts the tokens of the sequences asked for, the token slots processed (padding
    included, shared prefixes once) and the forward passes, for benchmarks.
    """

    def __init__(
        self, model: Any, *, token_budget: int = 16384, packing: str = "auto", compile: bool = False
    ) -> None:
        if packing not in PACKINGS:
            raise ValueError(f"packing {packing!r} is not one of {PACKINGS}")
        if token_budget < 1:
            raise ValueError(f"token_budget must be positive, got {token_budget}")
        self.model = model
        self.backbone = model.base_model
        parameter = next(model.parameters())
        self.device, self.dtype = parameter.device, parameter.dtype
        self.token_budget = token_budget
        self.native_attention = model.config._attn_implementation
        self.fallback_reason: str | None = None
        self.kernel_check: dict[str, float | str] = {}
        self.stats = {"sequence_tokens": 0, "processed_tokens": 0, "padding_tokens": 0, "forward_passes": 0}
        self.mode, self.kernel = self._choose_mode(packing)
        self.compiled, self.compile_error = False, None
        if compile:
            self._compile()

    # -- mode selection --------------------------------------------------------------------------
    def _choose_mode(self, packing: str) -> tuple[str, str]:
        if packing == "padded":
            return "padded", self.native_attention
        for kernel in candidate_kernels(self.device, self.dtype):
            if kernel == "sdpa_loop":
                break
            try:
                error = kernel_error(kernel, self.device, self.dtype)
            except Exception as failure:  # e.g. a torch build without the fused kernel
                self.kernel_check[kernel] = f"{type(failure).__name__}: {failure}"[:300]
                continue
            self.kernel_check[kernel] = error
            if error <= 3e-2:
                break
            warnings.warn(
                f"packed attention kernel {kernel} differs from the exact loop by {error:.3g}; not using it",
                stacklevel=3,
            )
        self.mode, self.kernel = "tree", kernel
        try:
            self._probe()
        except Exception as error:  # any failure here means: do not trust tree packing for this model
            if packing == "tree":
                raise
            self.fallback_reason = f"{type(error).__name__}: {error}"
            warnings.warn(
                f"tree packing unavailable ({self.fallback_reason}); using padded batches", stacklevel=3
            )
            return "padded", self.native_attention
        return "tree", kernel

    def _probe_sequences(self) -> list[list[int]]:
        """Two short random sequences sharing a 6-token prefix."""
        vocab = self.model.get_input_embeddings().num_embeddings
        rng = np.random.default_rng(0)
        shared = rng.integers(0, vocab, 6).tolist()
        return [shared + rng.integers(0, vocab, 5).tolist(), shared + rng.integers(0, vocab, 9).tolist()]

    def _own_hidden_states(self, sequences: list[list[int]]) -> torch.Tensor:
        """The model's own forward, one sequence at a time: the reference for every probe."""
        with torch.inference_mode():
            return torch.cat(
                [
                    self.backbone(input_ids=torch.tensor([s], device=self.device), use_cache=False)
                    .last_hidden_state[0]
                    .float()
                    for s in sequences
                ]
            )

    def _probe(self) -> None:
        """Compare tree-packed hidden states with the model's own attention on two short sequences."""
        sequences = self._probe_sequences()
        packed = self._hidden_states(sequences)
        reference = self._own_hidden_states(sequences)
        relative = _relative_error(packed, reference)
        tolerance = 1e-4 if self.dtype == torch.float32 else 5e-2
        self.kernel_check["probe_relative_error"] = relative
        if not relative <= tolerance:
            raise UnsupportedAttention(
                f"packed hidden states differ from the model's own by {relative:.3g} (relative; allowed {tolerance})"
            )

    def _compile(self) -> None:
        """``torch.compile`` each decoder layer in place (dynamic shapes), if the result checks out.

        Fusing the eager elementwise work between the matmuls (norms, activations, rotary embeddings,
        residual adds) is where the time goes once batching is right: on an H100 it was about 40% of
        a 1.5B model's pass. The compiled layers must reproduce the eager hidden states on a probe;
        if compiling fails or they do not, the layers go back to eager with a warning.
        """
        layers = getattr(self.backbone, "layers", None)
        if not isinstance(layers, torch.nn.ModuleList) or not len(layers):
            self.compile_error = f"{type(self.backbone).__name__} has no `layers` list of decoder layers"
            warnings.warn(f"compile skipped: {self.compile_error}", stacklevel=3)
            return
        probe = self._probe_sequences()
        reference = self._own_hidden_states(probe)
        for layer in layers:
            layer.compile(dynamic=True)
        try:
            relative = _relative_error(self._hidden_states(probe), reference)
            tolerance = 1e-4 if self.dtype == torch.float32 else 5e-2
            if not relative <= tolerance:
                raise UnsupportedAttention(f"compiled hidden states differ from eager by {relative:.3g}")
        except Exception as error:  # a missing compiler, an untraceable model, a wrong result: run eagerly
            for layer in layers:
                layer._compiled_call_impl = None  # what nn.Module.compile set: back to the eager forward
            self.compile_error = f"{type(error).__name__}: {error}"[:500]
            warnings.warn(f"torch.compile unavailable ({self.compile_error}); running eagerly", stacklevel=3)
            return
        self.kernel_check["compiled_relative_error"] = relative
        self.compiled = True

    def _hidden_states(self, sequences: list[list[int]]) -> torch.Tensor:
        """Hidden states of every position of ``sequences`` (one group), through ``run``; stats untouched."""
        saved = dict(self.stats)
        by_key = {}
        for rows in self.run([[SequenceQuery(s, range(len(s))) for s in sequences]]):
            for i, key in enumerate(rows.keys):
                by_key[key] = rows.hidden[rows.owner == i]
        self.stats = saved
        return torch.cat([by_key[(0, i)] for i in range(len(sequences))]).float()

    @contextlib.contextmanager
    def _packed_attention(self) -> Iterator[None]:
        """The packed attention function for the duration of a tree run; the model's own outside it."""
        previous = self.model.config._attn_implementation
        packed = register_packed_attention()  # registered with transformers on first use, not on import
        self.model.set_attn_implementation(packed)
        try:
            if self.model.config._attn_implementation != packed:
                raise UnsupportedAttention(
                    f"{type(self.model).__name__} cannot switch its attention function"
                )
            yield
        finally:
            self.model.set_attn_implementation(previous)

    # -- running ---------------------------------------------------------------------------------
    def run(self, groups: Sequence[Sequence[SequenceQuery]]) -> Iterator[HiddenRows]:
        """Hidden states at every query's positions; ``keys`` are (group index, index within the group)."""
        self.stats["sequence_tokens"] += sum(len(q.tokens) for group in groups for q in group)
        if self.mode == "tree":
            yield from self._run_tree(groups)
        else:
            yield from self._run_padded(groups)

    def _run_tree(self, groups: Sequence[Sequence[SequenceQuery]]) -> Iterator[HiddenRows]:
        segments = [
            seg
            for g, queries in enumerate(groups)
            if queries
            for seg in split_group(g, queries, self.token_budget)
        ]
        with self._packed_attention():
            for packed in pack_segments(segments, self.token_budget):
                yield self._forward_tree(packed)

    def _forward_tree(self, packed: list[Segment]) -> HiddenRows:
        shapes = [(s.prefix, [len(q.tokens) - s.prefix for q in s.queries]) for s in packed]
        layout, starts = build_layout(shapes, self.device, self.kernel)
        ids, positions, rows, counts, keys = [], [], [], [], []
        for segment, (segment_start, tail_starts) in zip(packed, starts, strict=True):
            prefix = segment.prefix
            ids.append(np.asarray(segment.queries[0].tokens[:prefix], dtype=np.int64))
            positions.append(np.arange(prefix))
            for key, query, tail_start in zip(segment.members, segment.queries, tail_starts, strict=True):
                ids.append(np.asarray(query.tokens[prefix:], dtype=np.int64))
                positions.append(np.arange(prefix, len(query.tokens)))
                wanted = np.asarray(query.positions, dtype=np.int64)
                rows.append(np.where(wanted < prefix, segment_start + wanted, tail_start + wanted - prefix))
                counts.append(len(wanted))
                keys.append(key)
        input_ids = torch.from_numpy(np.concatenate(ids)).to(self.device)[None]
        position_ids = torch.from_numpy(np.concatenate(positions)).to(self.device)[None]
        with torch.inference_mode():
            hidden = self.backbone(
                input_ids=input_ids, position_ids=position_ids, use_cache=False, **{LAYOUT_KWARG: layout}
            ).last_hidden_state[0]
            row_index = torch.from_numpy(np.concatenate(rows)).to(self.device)
            gathered = hidden.index_select(0, row_index)
        self.stats["processed_tokens"] += input_ids.shape[1]
        self.stats["forward_passes"] += 1
        return HiddenRows(keys, gathered, self._owner(counts))

    def _run_padded(self, groups: Sequence[Sequence[SequenceQuery]]) -> Iterator[HiddenRows]:
        flat = [((g, i), q) for g, queries in enumerate(groups) for i, q in enumerate(queries)]
        for batch in plan_padded_batches([len(q.tokens) for _, q in flat], self.token_budget):
            width = max(len(flat[i][1].tokens) for i in batch)
            ids = np.zeros((len(batch), width), dtype=np.int64)  # pad value is masked out: any valid id
            mask = np.zeros((len(batch), width), dtype=np.int64)
            rows, counts, keys = [], [], []
            for b, i in enumerate(batch):
                key, query = flat[i]
                ids[b, : len(query.tokens)] = query.tokens
                mask[b, : len(query.tokens)] = 1
                rows.append(b * width + np.asarray(query.positions, dtype=np.int64))
                counts.append(len(query.positions))
                keys.append(key)
            with torch.inference_mode():
                hidden = self.backbone(
                    input_ids=torch.from_numpy(ids).to(self.device),
                    attention_mask=torch.from_numpy(mask).to(self.device),
                    use_cache=False,
                ).last_hidden_state
                row_index = torch.from_numpy(np.concatenate(rows)).to(self.device)
                gathered = hidden.reshape(-1, hidden.shape[-1]).index_select(0, row_index)
            self.stats["processed_tokens"] += ids.size
            self.stats["padding_tokens"] += ids.size - int(mask.sum())
            self.stats["forward_passes"] += 1
            yield HiddenRows(keys, gathered, self._owner(counts))

    def _owner(self, counts: list[int]) -> torch.Tensor:
        return torch.repeat_interleave(
            torch.arange(len(counts), device=self.device), torch.tensor(counts, device=self.device)
        )
