"""The base of every step that runs one model: ``ModelStepConfig`` (the fields they share) and ``ModelStep``.

A ``ModelStep`` resolves its model's revision once, loads the model and its own tokenizer on the rank's
device, and checks ``max_length`` against the model before any batch runs (``preflight`` reads the config
alone). Engines recognise it by ``Step.uses_model`` (one accelerator per worker), never by its class.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from hfpref.core.step import Step, StepConfig, runtime_field
from hfpref.models.hub import resolve_revision
from hfpref.models.loading import (
    check_max_length,
    context_limit,
    load_config,
    load_model,
    load_tokenizer,
    select_device,
)

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
        revision = self.resolved_revision()
        model_config = load_config(config.model, revision, config.trust_remote_code)
        tokenizer = None
        if context_limit(model_config) is None:
            tokenizer = load_tokenizer(config.model, revision, config.trust_remote_code)
        check_max_length(self.name, config, model_config, tokenizer)
