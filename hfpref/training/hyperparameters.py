"""DPO hyperparameters and where each comes from: hfpref's defaults (the DCRM paper's recipe), the papers'
presets (``hfpref train dpo --preset``), best-checkpoint selection on held-out pairs, and the table of values
and sources the model card shows.

A ``Setting`` is a value with its source; ``resolve_hyperparameters`` turns a preset (or the defaults) and the
fields the user gave into the ``trl.DPOConfig`` fields to set, each with its source.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from hfpref.core.errors import UserError

# The DCRM paper's recipe, as DPOConfig fields (a float warmup_steps below 1 is a ratio of total steps).
DCRM_RECIPE: dict[str, Any] = {
    "beta": 0.1,
    "learning_rate": 5e-7,
    "num_train_epochs": 2,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.1,
}


class TrainError(UserError):
    """Training options that cannot work together (preset, held-out split, checkpoint selection)."""


@dataclass(frozen=True)
class Setting:
    """One hyperparameter value and where it comes from (paper and section, or our choice and why)."""

    value: Any
    source: str


# pseudo-fields of a preset, resolved by `resolve_hyperparameters` into DPOConfig fields
TOTAL_BATCH = "total_train_batch_size"  # per-device batch x gradient accumulation x devices
BEST_METRIC = "best_metric"  # "loss" or "accuracy": what picks the kept checkpoint on held-out pairs

KEEP_DEFAULT = "<TRL's default>"  # a preset value that sets nothing: the card still gives its source

BEST_METRICS = {"loss": ("eval_loss", False), "accuracy": ("eval_rewards/accuracies", True)}

_DCRM = "DCRM paper, appendix B"
_IF = "arXiv 2412.15282 (instruction following), training setup: DPO, 1 epoch, lr 5e-7, batch 32"
_IF_SILENT = "arXiv 2412.15282 is silent"
_MARGINS_SILENT = (
    "arXiv 2406.17312 (margins) gives no training hyperparameters (only: Llama-3-8B base, DPO, 8 samples "
    "per prompt, half of the pairs selected per round)"
)

PRESETS: dict[str, dict[str, Setting]] = {
    # DCRM: "β = 0.1, 2 epochs, Adam, lr 5e-7, warmup ratio 0.1, cosine schedule" (appendix B) and "select
    # the best checkpoint based on validation performance" (section 4); the batch size is not given.
    "dcrm": {
        "beta": Setting(0.1, _DCRM),
        "learning_rate": Setting(5e-7, _DCRM),
        "num_train_epochs": Setting(2, _DCRM),
        "lr_scheduler_type": Setting("cosine", _DCRM),
        "warmup_steps": Setting(0.1, _DCRM + " (warmup ratio 0.1)"),
        "weight_decay": Setting(0.0, _DCRM + ": Adam, i.e. AdamW without weight decay"),
        "per_device_train_batch_size": Setting(KEEP_DEFAULT, "DCRM paper is silent; we keep TRL's default"),
        BEST_METRIC: Setting(
            "loss",
            "DCRM paper, section 4: the best checkpoint by validation performance; it does not name the "
            "metric, we chose the held-out DPO loss",
        ),
    },
    # Instruction following: "DPO with 1 epoch, lr=5e-7, batch size=32"; β, schedule and warmup not given.
    "instruction-following": {
        "learning_rate": Setting(5e-7, _IF),
        "num_train_epochs": Setting(1, _IF),
        TOTAL_BATCH: Setting(32, _IF),
        "beta": Setting(0.1, f"{_IF_SILENT}; we chose 0.1 (TRL's default, the DCRM paper's value)"),
        "lr_scheduler_type": Setting("cosine", f"{_IF_SILENT}; we chose the DCRM paper's cosine schedule"),
        "warmup_steps": Setting(0.1, f"{_IF_SILENT}; we chose the DCRM paper's warmup ratio 0.1"),
        "weight_decay": Setting(0.0, f"{_IF_SILENT}; we chose Adam (no weight decay), TRL's default"),
        BEST_METRIC: Setting(
            "loss", f"{_IF_SILENT} on checkpoint selection; with held-out pairs we keep the best DPO loss"
        ),
    },
    # Margins: the summary we have names no hyperparameter; we train each round with the DCRM recipe.
    "margins": {
        "beta": Setting(0.1, f"{_MARGINS_SILENT}; we chose the DCRM paper's 0.1"),
        "learning_rate": Setting(5e-7, f"{_MARGINS_SILENT}; we chose the DCRM paper's 5e-7"),
        "num_train_epochs": Setting(2, f"{_MARGINS_SILENT}; we chose the DCRM paper's 2 epochs (per round)"),
        "lr_scheduler_type": Setting("cosine", f"{_MARGINS_SILENT}; we chose the DCRM paper's cosine"),
        "warmup_steps": Setting(0.1, f"{_MARGINS_SILENT}; we chose the DCRM paper's warmup ratio 0.1"),
        "weight_decay": Setting(0.0, f"{_MARGINS_SILENT}; we chose Adam (no weight decay)"),
        "per_device_train_batch_size": Setting(KEEP_DEFAULT, f"{_MARGINS_SILENT}; we keep TRL's default"),
        BEST_METRIC: Setting("loss", f"{_MARGINS_SILENT}; with held-out pairs we keep the best DPO loss"),
    },
}

# fields whose value and source the model card always lists (TRL's default when nobody set them)
CARD_FIELDS = (
    "beta",
    "loss_type",
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "lr_scheduler_type",
    "warmup_steps",
    "optim",
    "weight_decay",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "max_length",
    "bf16",
    "seed",
)
USER = "set by the user"
TRL_DEFAULT = "TRL's default (trl.DPOConfig)"


def resolve_hyperparameters(
    preset: str | None, overrides: Mapping[str, Any], world_size: int = 1
) -> tuple[dict[str, Setting], str | None]:
    """The DPOConfig fields to set, each with its source, and the preset's best-checkpoint metric.

    Without a preset the defaults are ``DCRM_RECIPE``. A preset's total batch becomes the per-device
    batch (the user's ``per_device_train_batch_size``, else the total over the devices) times the
    gradient accumulation that reaches the total on ``world_size`` devices; a user-given
    ``gradient_accumulation_steps`` wins.
    """
    if preset is None:
        settings = {k: Setting(v, "hfpref default: " + _DCRM) for k, v in DCRM_RECIPE.items()}
    elif preset in PRESETS:
        settings = dict(PRESETS[preset])
    else:
        raise TrainError(f"unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    best = settings.pop(BEST_METRIC, None)
    total = settings.pop(TOTAL_BATCH, None)
    settings.update({field: Setting(value, USER) for field, value in overrides.items()})
    if total is not None and "gradient_accumulation_steps" not in overrides:
        given = settings.get("per_device_train_batch_size")
        given = None if given is None or given.value == KEEP_DEFAULT else given
        per_device = given.value if given is not None else max(total.value // world_size, 1)
        accumulation, remainder = divmod(total.value, per_device * world_size)
        if remainder or accumulation < 1:
            raise TrainError(
                f"preset {preset!r} trains with a total batch of {total.value}, which {per_device} per device "
                f"on {world_size} device(s) does not divide; pick --batch-size so that batch x devices divides "
                f"{total.value}, or set --gradient-accumulation-steps yourself"
            )
        how = f"{total.source} (total batch {total.value} = {per_device} per device x {accumulation} x {world_size} devices)"
        if given is None:
            settings["per_device_train_batch_size"] = Setting(per_device, how)
        settings["gradient_accumulation_steps"] = Setting(accumulation, how)
    return settings, None if best is None else best.value


def card_hyperparameters(args: Any, settings: Mapping[str, Setting]) -> dict[str, dict[str, Any]]:
    """``{field: {"value", "source"}}`` for every field set and every field of ``CARD_FIELDS``."""
    names = list(dict.fromkeys([*CARD_FIELDS, *settings]))
    described = {}
    for name in names:
        value = getattr(args, name, None)
        if hasattr(value, "value"):  # enums (lr_scheduler_type, optim)
            value = value.value
        source = settings[name].source if name in settings else TRL_DEFAULT
        described[name] = {
            "value": value if isinstance(value, bool | int | float | str) or value is None else str(value),
            "source": source,
        }
    return described


def checkpoint_settings(
    metric: str, metric_source: str, overrides: Mapping[str, Any], eval_steps: float | None
) -> dict[str, Setting]:
    """DPOConfig fields that evaluate on held-out pairs and keep the best checkpoint.

    Evaluation and saving share one schedule (``load_best_model_at_end`` needs every evaluated model
    saved): every ``eval_steps`` steps (a float below 1 is a fraction of training; default 0.1, ten
    evaluations), or every epoch when the user asked for ``save_strategy="epoch"``.
    """
    if metric not in BEST_METRICS:
        raise TrainError(f"--best-metric must be one of {sorted(BEST_METRICS)}, got {metric!r}")
    strategy = overrides.get("save_strategy", "steps")
    if strategy not in ("steps", "epoch"):
        raise TrainError(
            f"keeping the best checkpoint needs saved checkpoints, but --save-strategy is {strategy!r}; "
            "use steps or epoch, or drop the held-out split"
        )
    name, greater = BEST_METRICS[metric]
    why = "best-checkpoint selection on held-out pairs"
    settings = {
        "eval_strategy": Setting(strategy, f"{why}: the same schedule as saving"),
        "save_strategy": Setting(strategy, USER if "save_strategy" in overrides else why),
        "load_best_model_at_end": Setting(True, why),
        "metric_for_best_model": Setting(name, metric_source),
        "greater_is_better": Setting(greater, metric_source),
        # the best and the latest checkpoint stay on disk, older ones are deleted
        "save_total_limit": Setting(
            overrides.get("save_total_limit", 2),
            USER if "save_total_limit" in overrides else f"{why}: keep the best and the latest",
        ),
    }
    if strategy == "steps":
        steps = eval_steps if eval_steps is not None else 0.1
        source = USER if eval_steps is not None else f"{why}: we chose 10 evaluations (every 0.1 of training)"
        settings["eval_steps"] = Setting(steps, source)
        settings["save_steps"] = Setting(steps, f"{why}: aligned with eval_steps")
    return settings
