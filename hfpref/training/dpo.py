"""A thin entry point from a curated pairs release to ``trl.DPOTrainer``.

``train_dpo(dataset, model, output_dir, **overrides)`` loads one config of a release (a local folder
written by ``hfpref curate``, or a Hub dataset repo, optionally ``repo@revision``), hands its rows to
TRL unchanged and saves the trained model with a model card naming the exact data it saw.

The pairs rows carry TRL's preference columns (``prompt``, ``chosen``, ``rejected``) plus our metadata
(``chosen_index``, ``reward_margin``, ``dcrm``, ...). They are passed as they are: TRL tokenizes the three
preference columns and its Trainer drops every column outside ``DPOTrainer``'s signature columns
(``remove_unused_columns=True``, the default) before batching, so metadata never reaches the model.

Defaults follow the DCRM paper's training recipe (its appendix B): β = 0.1, learning rate 5e-7, cosine
schedule, warmup ratio 0.1, 2 epochs, Adam (TRL's AdamW with ``weight_decay=0``, the default, is Adam).
Every other ``trl.DPOConfig`` field keeps TRL's default and can be overridden by name.

``preset=`` (``hfpref train dpo --preset``) trains as one of the papers trains (``PRESETS``: ``dcrm``,
``instruction-following``, ``margins``); each setting carries where it comes from, and where a paper is
silent the source says so and what we chose. Fields the user gives win over the preset.

Best checkpoint, as the DCRM paper keeps it ("the best checkpoint based on validation performance"):
with held-out pairs (``eval_split_ratio`` of the training split, or another config/split of the
release) the trainer evaluates and saves every ``eval_steps``, and transformers'
``load_best_model_at_end`` reloads the checkpoint with the best ``eval_loss`` (the DPO loss on the
held-out pairs) or ``eval_rewards/accuracies`` before the model is saved. The model card records the
preset, every hyperparameter with its source, and the kept checkpoint with its metric.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from hfpref.models.hub import resolve_revision

# re-exported: ``hfpref.training.dpo`` is where callers have found these names
from hfpref.training.data import (
    DatasetSource,
    MissingPreferenceColumnsError,
    held_out_pairs,
    load_pairs,
    parse_dataset_spec,
)
from hfpref.training.hyperparameters import (
    BEST_METRIC,
    BEST_METRICS,
    CARD_FIELDS,
    DCRM_RECIPE,
    KEEP_DEFAULT,
    PRESETS,
    TRL_DEFAULT,
    USER,
    Setting,
    TrainError,
    card_hyperparameters,
    checkpoint_settings,
    resolve_hyperparameters,
)
from hfpref.training.trainer import train_and_save, write_model_card

logger = logging.getLogger(__name__)

MODEL_CARD_TAGS = ["hfpref", "dpo", "trl"]


def dpo_config(output_dir: str | Path, **overrides: Any):
    """A ``trl.DPOConfig`` with the DCRM recipe as defaults; ``overrides`` are DPOConfig fields."""
    from trl import DPOConfig

    return DPOConfig(output_dir=str(output_dir), **{**DCRM_RECIPE, **overrides})


def train_dpo(
    dataset: str,
    model: str,
    output_dir: str | Path,
    *,
    config: str | None = None,
    split: str = "train",
    model_revision: str | None = None,
    preset: str | None = None,
    eval_split_ratio: float | None = None,
    eval_config: str | None = None,
    eval_split: str | None = None,
    best_metric: str | None = None,
    eval_steps: float | None = None,
    **overrides: Any,
) -> Path:
    """Train ``model`` with DPO on a pairs release; return the folder holding the trained model.

    ``dataset``: a release folder or Hub repo id (``repo@revision`` pins a revision); ``config``: which
    pair strategy (e.g. ``best_of_n2``); ``preset``: a paper's recipe (``PRESETS``); held-out pairs
    (``eval_split_ratio``, or ``eval_config``/``eval_split``) keep the checkpoint with the best
    ``best_metric`` ("loss": held-out DPO loss, "accuracy": held-out reward accuracy), evaluated every
    ``eval_steps``; ``overrides``: any ``trl.DPOConfig`` fields (``beta``, ``learning_rate``,
    ``max_steps``, ``bf16``, ``use_cpu``, ...), which win over the preset.
    """
    from trl import DPOConfig, DPOTrainer

    output_dir = Path(output_dir)
    rows, source = load_pairs(dataset, config=config, split=split)
    base_revision = resolve_revision(model, model_revision)  # fails before training, not after
    settings, preset_metric = resolve_hyperparameters(preset, overrides, int(os.environ.get("WORLD_SIZE", 1)))
    rows, eval_rows, eval_described = held_out_pairs(
        rows,
        dataset=dataset,
        config=config,
        split=split,
        eval_split_ratio=eval_split_ratio,
        eval_config=eval_config,
        eval_split=eval_split,
        seed=overrides.get("seed", 42),
    )
    if eval_rows is not None:
        metric, metric_source = _best_metric(best_metric, preset, preset_metric)
        settings.update(checkpoint_settings(metric, metric_source, overrides, eval_steps))
    else:
        _check_no_held_out_options(best_metric, eval_steps, preset, preset_metric)
    fields = {name: s.value for name, s in settings.items() if s.value != KEEP_DEFAULT}
    args = DPOConfig(output_dir=str(output_dir), **fields)
    trainer = train_and_save(DPOTrainer, args, model, model_revision, rows, eval_rows)
    training = {"preset": preset, "hyperparameters": card_hyperparameters(args, settings)}
    if eval_rows is not None:
        training["held_out"] = eval_described
        training["best_checkpoint"] = _kept_checkpoint(trainer, args)
    write_model_card(
        trainer, output_dir, source, model, base_revision, training=training, tags=MODEL_CARD_TAGS
    )
    return output_dir


def _best_metric(best_metric: str | None, preset: str | None, preset_metric: str | None) -> tuple[str, str]:
    """(the metric that picks the kept checkpoint, its source): the user's, the preset's, else the loss."""
    if best_metric is not None:
        return best_metric, USER
    if preset is not None:
        return preset_metric or "loss", PRESETS[preset][BEST_METRIC].source
    return "loss", "hfpref default: the held-out DPO loss"


def _check_no_held_out_options(
    best_metric: str | None, eval_steps: float | None, preset: str | None, preset_metric: str | None
) -> None:
    """Without held-out pairs, checkpoint options are a mistake; a preset that keeps the best one warns."""
    if best_metric is not None or eval_steps is not None:
        raise TrainError(
            "--best-metric and --eval-steps need held-out pairs: add --eval-split-ratio, --eval-config or --eval-split"
        )
    if preset_metric is not None and preset == "dcrm":
        logger.warning(
            "preset dcrm keeps the best checkpoint on held-out pairs; without --eval-split-ratio or "
            "--eval-config/--eval-split the last checkpoint is kept"
        )


def _kept_checkpoint(trainer: Any, args: Any) -> dict[str, Any]:
    """The checkpoint transformers reloaded at the end (``load_best_model_at_end``), for the model card."""
    checkpoint = trainer.state.best_model_checkpoint
    return {
        "metric": args.metric_for_best_model,
        "value": trainer.state.best_metric,
        "step": trainer.state.best_global_step,
        "checkpoint": None if checkpoint is None else Path(checkpoint).name,
    }


__all__ = [
    "BEST_METRICS",
    "CARD_FIELDS",
    "DCRM_RECIPE",
    "KEEP_DEFAULT",
    "MODEL_CARD_TAGS",
    "PRESETS",
    "TRL_DEFAULT",
    "USER",
    "DatasetSource",
    "MissingPreferenceColumnsError",
    "Setting",
    "TrainError",
    "card_hyperparameters",
    "dpo_config",
    "load_pairs",
    "parse_dataset_spec",
    "resolve_hyperparameters",
    "train_dpo",
]
