"""Packed attention: sequences of one packed row attend only within themselves, tails also to their prefix.

No library packs sequences around a shared prefix, so the attention is written here, as a transformers
attention function (``PACKED_ATTENTION``) that ``HiddenStateRunner`` switches a model to for the duration
of a tree run only (the model's own attention otherwise). ``register_packed_attention`` registers it with
transformers the first time a runner needs it: importing this module registers nothing. Three kernels:

* ``torch_varlen``: ``torch.nn.attention.varlen.varlen_attn`` (CUDA, fp16/bf16). A tail's keys are its
  prefix's keys followed by its own, gathered by index, and the causal mask is aligned to the end of the
  keys;
* ``flash_attn_varlen``: ``flash_attn.flash_attn_varlen_func``, the same, when that package exists;
* ``sdpa_loop``: one ``scaled_dot_product_attention`` per sequence (CPU, float32, or no varlen kernel),
  with 4-D inputs so CPU uses its flash kernel, and a lower-right causal mask for tails.

A fused kernel is used only after it matches the loop on random tensors (``kernel_error``).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

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


@functools.cache
def register_packed_attention() -> str:
    """Register ``PACKED_ATTENTION`` with transformers (once per process) and return its name."""
    from transformers import AttentionInterface

    # Opaque to torch.compile: compiled decoder layers break their graph here, so the layout (a Python
    # object whose lengths change every pass) never becomes a guard that forces recompiles.
    AttentionInterface.register(PACKED_ATTENTION, torch.compiler.disable(packed_attention_forward))
    return PACKED_ATTENTION


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
