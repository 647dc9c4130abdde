"""Loading a model and its tokenizer at a resolved revision, on the right device, and its context limit.

* devices and dtypes: ``select_device`` (one GPU per ``Dataset.map`` rank), ``parse_dtype``;
* ``load_config`` / ``load_tokenizer`` / ``load_model`` load exactly the revision ``hub.resolve_revision``
  named (a local folder has no revision);
* context limits: ``max_length_of``, ``context_limit`` and ``check_max_length`` (a ``max_length`` beyond
  the model's positions is a config error, not silently scored past what the model was trained on).
"""

from __future__ import annotations

from typing import Any

import torch

from hfpref.core.step import ConfigError
from hfpref.models.hub import is_local_model

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


def _revision_kwargs(model: str, revision: str | None, trust_remote_code: bool) -> dict[str, Any]:
    """``from_pretrained`` arguments naming the revision (Hub ids only: a local folder has none)."""
    kwargs: dict[str, Any] = {"trust_remote_code": trust_remote_code}
    if not is_local_model(model):
        kwargs["revision"] = revision
    return kwargs


def load_config(model: str, revision: str | None, trust_remote_code: bool = False) -> Any:
    """The config of ``model`` at a resolved ``revision``: what a check needs, without the weights."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model, **_revision_kwargs(model, revision, trust_remote_code))


def load_tokenizer(model: str, revision: str | None, trust_remote_code: bool = False):
    """The tokenizer of ``model`` at a resolved ``revision`` (ignored for local folders)."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(model, **_revision_kwargs(model, revision, trust_remote_code))


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
    kwargs = {"dtype": parse_dtype(dtype), **_revision_kwargs(model, revision, trust_remote_code)}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
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
