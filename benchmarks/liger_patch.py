"""liger-kernel's fused Triton kernels (RMSNorm, SwiGLU, rotary) on ONE model instance, for bench_logprobs' (e).

``liger_kernel.transformers.apply_liger_kernel_to_<model_type>(model=...)`` patches at two levels: it
rebinds ``forward`` of the model's own RMSNorm and MLP modules (this instance only), and it replaces names in
transformers' modeling module (``Qwen2RMSNorm``, ``Qwen2MLP``, ``apply_rotary_pos_emb``), which is
process-wide and would silently turn the benchmark's other methods, run in the same process, into liger
runs too. So ``apply_liger`` keeps the instance patches and puts the module's names back at once, and the
rotary function, which the attention looks up in the module at every call, is swapped in only inside
``liger_rope(model)``, around (e)'s own calls (torch.compile guards on that global, so a compiled layer
never runs the other variant's rotary). liger's fused-linear-cross-entropy forward is left off: the
log-prob step applies the LM head itself.

No fallback: liger's dispatcher has no PyTorch implementation, so without Triton and a CUDA device there
is nothing to run, and ``unavailable`` says why.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
from collections.abc import Iterator
from importlib import metadata
from typing import Any

import torch

# what liger replaces in transformers' modeling module: put back right after patching
_MODULE_NAMES = ("RMSNorm", "MLP")
_ROPE = "apply_rotary_pos_emb"


def _modeling_module(model: Any):
    model_type = model.config.model_type
    return importlib.import_module(f"transformers.models.{model_type}.modeling_{model_type}")


def unavailable(model: Any, device: torch.device) -> str | None:
    """Why liger cannot run on ``model`` here, or None when it can."""
    if importlib.util.find_spec("liger_kernel") is None:
        return "liger-kernel is not installed (benchmarks/fetch_wheels.sh fetches the wheel)"
    if importlib.util.find_spec("triton") is None:
        return "triton is not installed (CUDA builds of torch ship it)"
    if device.type != "cuda":
        return f"liger's kernels are Triton GPU kernels; the device is {device.type}"
    try:
        from liger_kernel.transformers import monkey_patch
    except Exception as error:  # e.g. a liger release that needs a newer transformers
        return f"importing liger_kernel failed: {type(error).__name__}: {error}"[:300]
    if not hasattr(monkey_patch, f"apply_liger_kernel_to_{model.config.model_type}"):
        return f"liger has no patch for model type {model.config.model_type!r}"
    return None


def apply_liger(model: Any) -> dict[str, Any]:
    """Fused RMSNorm and SwiGLU on ``model``'s own modules (rotary: see ``liger_rope``); returns what was done."""
    from liger_kernel.transformers import monkey_patch

    model_type = model.config.model_type
    modeling = _modeling_module(model)
    prefix = type(model.base_model).__name__.removesuffix("Model")
    saved = {
        name: getattr(modeling, name)
        for name in [prefix + n for n in _MODULE_NAMES] + [_ROPE]
        if hasattr(modeling, name)
    }
    try:
        getattr(monkey_patch, f"apply_liger_kernel_to_{model_type}")(
            rope=False,
            cross_entropy=False,
            fused_linear_cross_entropy=False,
            rms_norm=True,
            swiglu=True,
            model=model,
        )
    finally:
        for name, value in saved.items():
            setattr(modeling, name, value)
    patched = [name for name, module in model.named_modules() if "forward" in vars(module)]  # rebound here
    return {
        "liger_kernel": metadata.version("liger-kernel"),
        "triton": metadata.version("triton"),
        "patches": ["rms_norm", "swiglu", "rope (inside liger_rope)"],
        "patched_modules": len(patched),
    }


@contextlib.contextmanager
def liger_rope(model: Any) -> Iterator[None]:
    """liger's fused rotary embedding in place of transformers' for the duration of the block."""
    from liger_kernel.transformers.rope import liger_rotary_pos_emb

    modeling = _modeling_module(model)
    previous = getattr(modeling, _ROPE)
    setattr(modeling, _ROPE, liger_rotary_pos_emb)
    try:
        yield
    finally:
        setattr(modeling, _ROPE, previous)


def _relative(value: torch.Tensor, reference: torch.Tensor) -> float:
    return float((value.float() - reference.float()).norm() / reference.float().norm().clamp(min=1e-12))


def op_errors(model: Any, patched: Any, tokens: int = 256) -> dict[str, float]:
    """Relative error of each liger kernel against transformers' own op, on random inputs of the model's
    shapes and dtype: the first layer's RMSNorm and MLP of ``patched`` against ``model``'s, and liger's rotary
    against ``apply_rotary_pos_emb`` at positions up to ~4k. A whole-model check on random weights barely sees
    the rotary (near-uniform attention), so each kernel is checked on its own too."""
    parameter = next(model.parameters())
    device, dtype, config = parameter.device, parameter.dtype, model.config
    layer, fused = model.base_model.layers[0], patched.base_model.layers[0]
    heads, kv = config.num_attention_heads, config.num_key_value_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    generator = torch.Generator(device).manual_seed(0)
    x = torch.randn(1, tokens, config.hidden_size, device=device, dtype=dtype, generator=generator)
    q = torch.randn(1, heads, tokens, head_dim, device=device, dtype=dtype, generator=generator)
    k = torch.randn(1, kv, tokens, head_dim, device=device, dtype=dtype, generator=generator)
    positions = torch.arange(0, 16 * tokens, 16, device=device)[None]
    from liger_kernel.transformers.rope import liger_rotary_pos_emb

    with torch.inference_mode():
        cos, sin = model.base_model.rotary_emb(x, positions)
        rope_ref = getattr(_modeling_module(model), _ROPE)(q.clone(), k.clone(), cos, sin)
        rope = liger_rotary_pos_emb(q.clone(), k.clone(), cos, sin)
        return {
            "rms_norm": _relative(fused.input_layernorm(x.clone()), layer.input_layernorm(x)),
            "swiglu": _relative(fused.mlp(x.clone()), layer.mlp(x)),
            "rope": max(_relative(r, ref) for r, ref in zip(rope, rope_ref, strict=True)),
        }
