"""Shared helpers for steps that run Hugging Face models.

* devices and dtypes: ``select_device`` (one GPU per ``Dataset.map`` rank), ``parse_dtype``;
* revisions: ``resolve_revision`` (a Hub commit hash, or a content hash of a local folder), so a
  step's fingerprint changes when the weights do; ``load_model`` / ``load_tokenizer`` load exactly
  that revision;
* batching: ``HiddenStateRunner`` computes a decoder's final hidden states at chosen positions of
  many token sequences, in forward passes of at most ``token_budget`` tokens.

How ``HiddenStateRunner`` batches (``packing="tree"``, the default where the model allows it):
the sequences of one group (the N responses of a prompt) share their common token prefix. A forward
pass is one row holding, for each group packed into it, the prefix once and then each sequence's
tail, with position ids restarting per sequence; groups are packed first-fit-decreasing up to
``token_budget`` tokens (a group too large for the budget is split, each part keeping the prefix).
Attention runs per sequence: the prefix attends causally to itself, each tail to the prefix and
causally to itself. So the prompt is paid for once instead of N times, no padding is processed at
all, and the result is exact, not an approximation: every token sees exactly the keys, at exactly
the positions, it sees when its sequence runs alone. We chose this over
  * KV-cache prefix reuse (run the prompt, expand its cache to the N responses): exact too, but the
    responses of a batch then need padding to a common length, and the prompt caches too, which
    costs the padding this avoids;
  * block-diagonal packing through transformers' ``position_ids`` support: shares nothing (each
    response repeats its prompt) and only skips the masked blocks with flash-attention.
No library packs sequences around a shared prefix, so the attention is written here, as a
registered transformers attention function (``PACKED_ATTENTION``; the model uses it only during a
tree run and its own attention otherwise) with three kernels:
  * ``torch_varlen``: ``torch.nn.attention.varlen.varlen_attn`` (CUDA, fp16/bf16). A tail's keys are
    its prefix's keys followed by its own, gathered by index, and the causal mask is aligned to the
    end of the keys;
  * ``flash_attn_varlen``: ``flash_attn.flash_attn_varlen_func``, the same, when that package exists;
  * ``sdpa_loop``: one ``scaled_dot_product_attention`` per sequence (CPU, float32, or no varlen
    kernel), with 4-D inputs so CPU uses its flash kernel, and a lower-right causal mask for tails.
A fused kernel is used only after it matches the loop on random tensors (``kernel_error``), and tree
packing only after a probe matches the model's own attention on two sequences sharing a prefix.

``packing="padded"`` (or ``"auto"`` where tree packing is refused: sliding windows, soft-capping,
attention sinks, a model that cannot switch its attention function, or a failed probe) runs
length-sorted, right-padded batches of at most ``token_budget`` token slots with the model's own
attention. Both modes return hidden states only at the positions asked for, so callers apply their
head (LM head, reward head) to those rows alone.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import inspect
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AttentionInterface

from hfpref.core.errors import UserError
from hfpref.core.step import ConfigError, RowError, Step, StepConfig, runtime_field

# ---- devices and dtypes ----------------------------------------------------------------------

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
}


def parse_dtype(name: str | torch.dtype) -> torch.dtype | str:
    """``"float32"``/``"bfloat16"``/``"float16"`` (or their short forms) as a torch dtype; ``"auto"`` as is."""
    if isinstance(name, torch.dtype):
        return name
    if name == "auto":
        return "auto"
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"dtype {name!r} is not one of {sorted(DTYPES)} or 'auto'") from None


def select_device(device: str | None, rank: int | None = None) -> torch.device:
    """The device a worker runs on: ``device`` if given, else ``cuda:{rank}`` (rank 0 without a rank), else CPU."""
    if device is not None:
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda", 0 if rank is None else rank % torch.cuda.device_count())
    return torch.device("cpu")


# ---- revisions ---------------------------------------------------------------------------------

_COMMIT_HASH = re.compile(r"^[0-9a-f]{40}$")


class ModelNotFoundError(UserError):
    """A model that is neither an existing local folder nor a Hub id that resolves."""


def is_local_model(model: str) -> bool:
    return Path(model).expanduser().is_dir()


def looks_like_local_path(model: str) -> bool:
    """Whether ``model`` was meant as a folder: it starts with ``/``, ``.``, ``~``, has more than one ``/``,
    names an existing file, or its parent folder exists here (``runs/policy`` beside ``runs/``). A Hub id is
    ``NAME`` or ``OWNER/NAME`` and cannot start with ``.`` or ``/``."""
    path = Path(model).expanduser()
    if model.startswith(("/", ".", "~")) or model.count("/") > 1 or "\\" in model or path.is_file():
        return True
    return "/" in model and path.parent.is_dir() and str(path.parent) not in ("", ".")


def check_model_path(model: str, where: str = "model") -> None:
    """Raise ``ModelNotFoundError`` ("no such folder") for a model meant as a local folder that does not
    exist, instead of the Hub's "invalid repo id" or a network wait."""
    if is_local_model(model) or not looks_like_local_path(model):
        return
    path = Path(model).expanduser()
    if path.is_file():
        raise ModelNotFoundError(
            f"{where} {model!r} is a file; give the model's folder (with config.json) or a Hub id OWNER/NAME"
        )
    raise ModelNotFoundError(
        f"{where} {model!r}: no such folder (looked in {path.absolute()}); check the path, or give a Hub id "
        "as OWNER/NAME"
    )


def content_hash(folder: str | Path) -> str:
    """``sha256:<hex>`` of every file under ``folder`` (relative path and bytes), hidden folders excluded."""
    root = Path(folder).expanduser()
    digest = hashlib.sha256()
    files = sorted(
        path
        for path in root.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)
    )
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()


def resolve_revision(model: str, revision: str | None = None, cache_dir: str | Path | None = None) -> str:
    """The exact version of ``model``: a content hash for a local folder, a commit hash for a Hub id.

    A Hub id's branch or tag (``revision``, default ``"main"``) is resolved on the Hub, or offline
    (``HF_HUB_OFFLINE=1``, or the Hub unreachable) from the local cache's refs. Raises ``ValueError``
    when neither works.
    """
    check_model_path(model)
    if is_local_model(model):
        if revision is not None:
            raise ModelNotFoundError(
                f"model {model!r} is a local folder; revision={revision!r} applies to Hub ids only"
            )
        return content_hash(model)
    if revision is not None and _COMMIT_HASH.match(revision):
        return revision
    import huggingface_hub
    from huggingface_hub import HfApi, try_to_load_from_cache

    ref = revision or "main"
    problems = []
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        problems.append("the Hub was not asked (HF_HUB_OFFLINE is set)")
    else:
        try:
            return HfApi().model_info(model, revision=ref).sha
        except Exception as error:  # network, auth or missing repo: the cache may still know the commit
            problems.append(f"the Hub said {type(error).__name__}: {error}")
    cached = try_to_load_from_cache(model, "config.json", cache_dir=cache_dir, revision=ref)
    if isinstance(cached, str):
        return Path(cached).parent.name  # .../snapshots/<commit>/config.json
    problems.append("the local Hugging Face cache has no snapshot for it")
    raise ModelNotFoundError(
        f"cannot resolve model {model!r} at revision {ref!r}: it is not a local folder, "
        + "; ".join(problems)
        + ". Pass a local path, a 40-character commit hash, or download the model first."
    )


def load_tokenizer(model: str, revision: str | None, trust_remote_code: bool = False):
    """The tokenizer of ``model`` at a resolved ``revision`` (ignored for local folders)."""
    from transformers import AutoTokenizer

    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if not is_local_model(model):
        kwargs["revision"] = revision
    return AutoTokenizer.from_pretrained(model, **kwargs)


def load_model(
    auto_class: Any,
    model: str,
    revision: str | None,
    *,
    dtype: str,
    device: torch.device,
    attn_implementation: str | None = None,
    trust_remote_code: bool = False,
):
    """``auto_class.from_pretrained`` at a resolved revision, on ``device``, in eval mode."""
    kwargs: dict[str, Any] = {"dtype": parse_dtype(dtype), "trust_remote_code": trust_remote_code}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if not is_local_model(model):
        kwargs["revision"] = revision
    if device.type == "cuda":
        kwargs["device_map"] = {"": str(device)}  # load straight onto the GPU
    loaded = auto_class.from_pretrained(model, **kwargs)
    return loaded.to(device).eval()


def max_length_of(model: Any) -> int | None:
    """The model's context length (``max_position_embeddings``), or None when its config has none."""
    return getattr(model.config.get_text_config(), "max_position_embeddings", None)


# transformers sets a tokenizer's model_max_length to int(1e30) when its files give none: not a real limit
_NO_TOKENIZER_LIMIT = 10**12


def context_limit(model_config: Any, tokenizer: Any = None) -> tuple[int, str] | None:
    """(positions the model can take, where that number comes from): the config's
    ``max_position_embeddings``, else the tokenizer's ``model_max_length`` when it is a real limit."""
    text_config = model_config.get_text_config() if hasattr(model_config, "get_text_config") else model_config
    positions = getattr(text_config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        return positions, "max_position_embeddings in its config"
    limit = getattr(tokenizer, "model_max_length", None)
    if isinstance(limit, int) and 0 < limit < _NO_TOKENIZER_LIMIT:
        return limit, "its tokenizer's model_max_length"
    return None


def check_max_length(step_name: str, config: Any, model_config: Any, tokenizer: Any = None) -> None:
    """Raise ``ConfigError`` when ``config.max_length`` is beyond the model's positions: the model would
    score (or generate) past what it was trained on, silently."""
    max_length = getattr(config, "max_length", None)
    limit = context_limit(model_config, tokenizer)
    if max_length is None or limit is None or max_length <= limit[0]:
        return
    raise ConfigError(
        f"{step_name} config.max_length: {max_length} is beyond the {limit[0]} positions of model "
        f"{config.model!r} ({limit[1]}); set max_length to at most {limit[0]}, or leave it null to use "
        f"{limit[0]}"
    )


# ---- candidates rows and model steps -----------------------------------------------------------

Prompt = str | list[dict[str, str]]


def check_candidates_row(prompt: Any, responses: Any, label: str) -> None:
    """Raise ``RowError`` unless ``prompt`` is a string or chat messages and ``responses`` a list of strings."""
    messages_ok = (
        isinstance(prompt, list)
        and len(prompt) > 0
        and all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in prompt
        )
    )
    if not (isinstance(prompt, str) or messages_ok):
        raise RowError(
            f"{label}: column 'prompt' must be a string or a non-empty list of {{'role', 'content'}} "
            f"messages, got {prompt!r}"
        )
    if not isinstance(responses, list) or not all(isinstance(r, str) for r in responses):
        raise RowError(f"{label}: column 'responses' must be a list of strings, got {responses!r}")


OVERFLOW_POLICIES = ("error", "truncate")


@dataclasses.dataclass
class ModelStepConfig(StepConfig):
    """Fields every model-scoring step shares.

    ``model``: Hub id or local folder; ``revision``: branch, tag or commit (Hub ids only);
    ``dtype``: "float32", "bfloat16", "float16" or "auto" (the checkpoint's); ``device``: None picks
    ``cuda:{rank}`` (or ``cuda:0``) when CUDA is available, else the CPU; ``token_budget``: tokens per
    forward pass (padding included; a single longer sequence runs alone); ``max_length``: context
    limit, None for the model's ``max_position_embeddings``; ``overflow``: what a longer sequence
    does, "error" or "truncate" (keep its first ``max_length`` tokens, as TRL's ``keep_start``, and
    count the dropped tokens); ``packing``: "auto", "tree" or "padded" (see ``HiddenStateRunner``);
    ``compile``: ``torch.compile`` the decoder layers (worth it on a GPU for large datasets: it costs
    tens of seconds once, and compiled layers that fail their check fall back to eager).
    Fields marked ``runtime`` change speed, not results, and stay out of the fingerprint.
    """

    model: str = ""
    revision: str | None = None
    dtype: str = "auto"
    device: str | None = runtime_field(None)
    token_budget: int = runtime_field(16384)
    max_length: int | None = None
    overflow: str = "error"
    packing: str = runtime_field("auto")
    attn_implementation: str | None = runtime_field(None)
    compile: bool = runtime_field(False)
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        if not self.model:
            raise ValueError(f"{type(self).__name__} needs `model` (a Hub id or a local folder)")
        if self.overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"overflow {self.overflow!r} is not one of {OVERFLOW_POLICIES}")


class ModelStep(Step):
    """A step that runs one model named by ``config.model`` / ``config.revision``.

    It resolves the revision once (``resolved_revision``, kept when pickled); its config's runtime fields
    (``hfpref.core.step.runtime_field``: device, batching) stay out of ``describe`` as for every step.
    """

    uses_model = True

    def resolved_revision(self) -> str:
        if getattr(self, "_revision", None) is None:
            self._revision = resolve_revision(self.config.model, self.config.revision)
        return self._revision

    def load_model_and_tokenizer(self, auto_class: Any, rank: int | None) -> tuple[Any, Any]:
        """The config's model (through ``auto_class``) on this rank's device, and its own tokenizer."""
        config = self.config
        revision = self.resolved_revision()
        tokenizer = load_tokenizer(config.model, revision, config.trust_remote_code)
        model = load_model(
            auto_class,
            config.model,
            revision,
            dtype=config.dtype,
            device=select_device(config.device, rank),
            attn_implementation=config.attn_implementation,
            trust_remote_code=config.trust_remote_code,
        )
        check_max_length(self.name, config, model.config, tokenizer)  # before the first batch runs
        return model, tokenizer

    def preflight(self) -> None:
        """Check ``max_length`` against the model's config (no weights loaded), before a recipe's first step;
        the tokenizer is read only when the config gives no ``max_position_embeddings``."""
        config = self.config
        if getattr(config, "max_length", None) is None:  # None, or a config without the field (sampling)
            return  # the model's own limit is used: nothing to check, and no reason to touch the Hub
        from transformers import AutoConfig

        revision = self.resolved_revision()
        kwargs: dict[str, Any] = {"trust_remote_code": config.trust_remote_code}
        if not is_local_model(config.model):
            kwargs["revision"] = revision
        model_config = AutoConfig.from_pretrained(config.model, **kwargs)
        tokenizer = None
        if context_limit(model_config) is None:
            tokenizer = load_tokenizer(config.model, revision, config.trust_remote_code)
        check_max_length(self.name, config, model_config, tokenizer)


# ---- token-budget batching ---------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class SequenceQuery:
    """One token sequence and the (ascending) positions whose final hidden states are wanted."""

    tokens: Sequence[int]
    positions: Sequence[int]


@dataclasses.dataclass
class HiddenRows:
    """Hidden states of one forward pass: rows of ``keys[i]`` are where ``owner == i``, in position order."""

    keys: list[tuple[int, int]]  # (group, member) of each sequence in the pass
    hidden: torch.Tensor  # [rows, hidden_size], in the model's dtype
    owner: torch.Tensor  # [rows] long, index into keys


@dataclasses.dataclass
class _Segment:
    """Sequences of one group packed around their shared prefix."""

    members: list[tuple[int, int]]
    queries: list[SequenceQuery]
    prefix: int

    @property
    def cost(self) -> int:
        return self.prefix + sum(len(q.tokens) - self.prefix for q in self.queries)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    differ = np.flatnonzero(np.asarray(a[:n]) != np.asarray(b[:n]))
    return int(differ[0]) if differ.size else n


def split_group(group: int, queries: Sequence[SequenceQuery], token_budget: int) -> list[_Segment]:
    """Segments of one group, each within the budget with its prefix counted once.

    A sequence longer than the budget gets a segment of its own (run over budget: it cannot be split).
    """
    order = sorted(range(len(queries)), key=lambda i: -len(queries[i].tokens))
    segments: list[_Segment] = []
    for i in order:
        query = queries[i]
        current = segments[-1] if segments else None
        if current is not None:
            prefix = min(current.prefix, common_prefix(current.queries[0].tokens, query.tokens))
            total = sum(len(q.tokens) for q in current.queries) + len(query.tokens)
            if total - len(current.queries) * prefix <= token_budget:
                current.members.append((group, i))
                current.queries.append(query)
                current.prefix = prefix
                continue
        segments.append(_Segment([(group, i)], [query], len(query.tokens)))
    return segments


def pack_segments(segments: list[_Segment], token_budget: int) -> list[list[_Segment]]:
    """First-fit decreasing bin packing of segments into forward passes of at most ``token_budget`` tokens."""
    bins: list[list[_Segment]] = []
    loads: list[int] = []
    for segment in sorted(segments, key=lambda s: -s.cost):
        for b, load in enumerate(loads):
            if load + segment.cost <= token_budget:
                bins[b].append(segment)
                loads[b] += segment.cost
                break
        else:
            bins.append([segment])
            loads.append(segment.cost)
    return bins


def plan_padded_batches(lengths: Sequence[int], token_budget: int) -> list[list[int]]:
    """Indices grouped into batches of length-sorted sequences whose padded size fits ``token_budget``."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    for i in order:
        if current and (len(current) + 1) * lengths[current[0]] > token_budget:
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


# ---- packed attention --------------------------------------------------------------------------

PACKED_ATTENTION = "hfpref_packed"
LAYOUT_KWARG = "hfpref_packed_layout"


class UnsupportedAttention(RuntimeError):
    """The model's attention does something the packed kernels do not (sliding window, soft-capping, sinks)."""


@dataclasses.dataclass
class PackedLayout:
    """Where the attention sequences of a packed row lie: queries in token order, keys gathered by index."""

    spans: list[tuple[int, int, int, int]]  # (query start, query end, key start, key end) per sequence
    key_index: torch.Tensor  # [keys] long: the packed token behind each key slot
    cu_q: torch.Tensor  # [sequences + 1] int32
    cu_k: torch.Tensor
    max_q: int
    max_k: int
    kernel: str
    masks: dict[tuple[int, int], torch.Tensor] = dataclasses.field(default_factory=dict)


def build_layout(
    shapes: Sequence[tuple[int, Sequence[int]]], device: torch.device, kernel: str
) -> tuple[PackedLayout, list[tuple[int, list[int]]]]:
    """Layout of segments given as (prefix length, tail lengths), and where each prefix and tail starts."""
    spans, key_chunks, starts = [], [], []
    q_pos = k_pos = 0
    for prefix, tails in shapes:
        segment_start = q_pos
        prefix_keys = np.arange(segment_start, segment_start + prefix)
        if prefix:
            spans.append((q_pos, q_pos + prefix, k_pos, k_pos + prefix))
            key_chunks.append(prefix_keys)
            k_pos += prefix
        q_pos += prefix
        tail_starts = []
        for tail in tails:
            tail_starts.append(q_pos)
            if tail:
                spans.append((q_pos, q_pos + tail, k_pos, k_pos + prefix + tail))
                key_chunks += [prefix_keys, np.arange(q_pos, q_pos + tail)]
                k_pos += prefix + tail
            q_pos += tail
        starts.append((segment_start, tail_starts))
    q_lengths = np.array([s[1] - s[0] for s in spans], dtype=np.int64)
    k_lengths = np.array([s[3] - s[2] for s in spans], dtype=np.int64)
    cu_q = np.concatenate([[0], np.cumsum(q_lengths)]).astype(np.int32)
    cu_k = np.concatenate([[0], np.cumsum(k_lengths)]).astype(np.int32)
    layout = PackedLayout(
        spans=spans,
        key_index=torch.from_numpy(np.concatenate(key_chunks) if key_chunks else np.zeros(0, np.int64)).to(
            device
        ),
        cu_q=torch.from_numpy(cu_q).to(device),
        cu_k=torch.from_numpy(cu_k).to(device),
        max_q=int(q_lengths.max(initial=0)),
        max_k=int(k_lengths.max(initial=0)),
        kernel=kernel,
    )
    return layout, starts


_SDPA_GQA = tuple(int(part) for part in torch.__version__.split(".")[:2]) >= (2, 5)  # enable_gqa argument


def _sdpa_loop(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: PackedLayout, scale: float):
    """Exact reference kernel: one ``scaled_dot_product_attention`` call per sequence."""
    out = torch.empty_like(q)
    repeats = q.shape[1] // k.shape[1]
    for q_start, q_end, k_start, k_end in layout.spans:
        # [1, heads, length, head_dim]: 4-D inputs let CPU sdpa use its flash kernel instead of the math path
        qs = q[q_start:q_end].transpose(0, 1)[None]
        ks = k[k_start:k_end].transpose(0, 1)[None]
        vs = v[k_start:k_end].transpose(0, 1)[None]
        options: dict[str, Any] = {"scale": scale}
        if repeats > 1 and _SDPA_GQA:
            options["enable_gqa"] = True
        elif repeats > 1:  # kv head j serves query heads j*repeats ... (as transformers' repeat_kv)
            ks, vs = ks.repeat_interleave(repeats, 1), vs.repeat_interleave(repeats, 1)
        n_q, n_k = q_end - q_start, k_end - k_start
        if n_q == n_k:
            attended = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, **options)
        else:  # a tail after its prefix: query i sees keys up to n_k - n_q + i
            mask = layout.masks.get((n_q, n_k))
            if mask is None:  # built once per shape, shared by all layers
                mask = torch.ones(n_q, n_k, dtype=torch.bool, device=q.device).tril(n_k - n_q)
                layout.masks[(n_q, n_k)] = mask
            attended = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, **options)
        out[q_start:q_end] = attended[0].transpose(0, 1)
    return out


@functools.cache
def _parameters(function: Any) -> frozenset[str]:
    return frozenset(inspect.signature(function).parameters)


def _torch_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: PackedLayout, scale: float):
    from torch.nn.attention.varlen import varlen_attn

    params = _parameters(varlen_attn)
    q = q.contiguous()
    kwargs: dict[str, Any] = {"scale": scale}
    if "window_size" in params:
        kwargs["window_size"] = (-1, 0)  # causal, aligned to the end of the keys
    else:
        kwargs["is_causal"] = True
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in params:
            kwargs["enable_gqa"] = True
        else:
            repeats = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(repeats, 1), v.repeat_interleave(repeats, 1)
    return varlen_attn(q, k, v, layout.cu_q, layout.cu_k, layout.max_q, layout.max_k, **kwargs)


def _flash_attn_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layout: PackedLayout, scale: float):
    from flash_attn import flash_attn_varlen_func

    return flash_attn_varlen_func(
        q.contiguous(),
        k,
        v,
        layout.cu_q,
        layout.cu_k,
        layout.max_q,
        layout.max_k,
        softmax_scale=scale,
        causal=True,
    )


KERNELS = {"torch_varlen": _torch_varlen, "flash_attn_varlen": _flash_attn_varlen, "sdpa_loop": _sdpa_loop}


def packed_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention function for a packed row: query/key/value [1, heads, tokens, head_dim]."""
    layout: PackedLayout | None = kwargs.get(LAYOUT_KWARG)
    if layout is None:
        raise UnsupportedAttention(f"the {PACKED_ATTENTION!r} attention only runs inside HiddenStateRunner")
    for name in ("sliding_window", "softcap", "s_aux"):
        if kwargs.get(name) is not None:
            raise UnsupportedAttention(f"packed attention does not implement {name}={kwargs[name]!r}")
    if not getattr(module, "is_causal", True) or query.shape[0] != 1:
        raise UnsupportedAttention("packed attention needs a causal decoder and one packed row")
    scale = scaling if scaling is not None else query.shape[-1] ** -0.5
    q = query[0].transpose(0, 1)
    k = key[0].transpose(0, 1).index_select(0, layout.key_index)
    v = value[0].transpose(0, 1).index_select(0, layout.key_index)
    out = KERNELS[layout.kernel](q, k, v, layout, scale)
    return out.unsqueeze(0), None


# Opaque to torch.compile: compiled decoder layers break their graph here, so the layout (a Python
# object whose lengths change every pass) never becomes a guard that forces recompiles.
AttentionInterface.register(PACKED_ATTENTION, torch.compiler.disable(packed_attention_forward))


def candidate_kernels(device: torch.device, dtype: torch.dtype) -> list[str]:
    """Packed-attention kernels usable on this device and dtype, fastest first (the exact loop always last)."""
    kernels = []
    if device.type == "cuda" and dtype in (torch.float16, torch.bfloat16):
        try:
            from torch.nn.attention.varlen import varlen_attn  # noqa: F401

            kernels.append("torch_varlen")
        except ImportError:
            pass
        try:
            from flash_attn import flash_attn_varlen_func  # noqa: F401

            kernels.append("flash_attn_varlen")
        except ImportError:
            pass
    return [*kernels, "sdpa_loop"]


def kernel_error(kernel: str, device: torch.device, dtype: torch.dtype) -> float:
    """Largest difference between ``kernel`` and the exact loop on random inputs (a guard against layout bugs)."""
    generator = torch.Generator().manual_seed(0)
    shapes = [(37, [50, 1, 0, 19]), (5, [64]), (0, [23, 8])]
    layout, _ = build_layout(shapes, device, kernel)
    tokens = sum(p + sum(t) for p, t in shapes)
    q = torch.randn(tokens, 4, 64, generator=generator).to(device, dtype)
    k = torch.randn(tokens, 2, 64, generator=generator).to(device, dtype)
    v = torch.randn(tokens, 2, 64, generator=generator).to(device, dtype)
    k, v = k.index_select(0, layout.key_index), v.index_select(0, layout.key_index)
    with torch.inference_mode():
        got = KERNELS[kernel](q, k, v, layout, 0.125).float()
        want = _sdpa_loop(q.float(), k.float(), v.float(), layout, 0.125)
    return float((got - want).abs().max())


# ---- the runner ----------------------------------------------------------------------------------

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
        self.model.set_attn_implementation(PACKED_ATTENTION)
        try:
            if self.model.config._attn_implementation != PACKED_ATTENTION:
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

    def _forward_tree(self, packed: list[_Segment]) -> HiddenRows:
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
