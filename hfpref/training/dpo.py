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

import json
import logging
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hfpref.core.errors import UserError
from hfpref.models.hub import content_hash, resolve_revision
from hfpref.release.writer import load_release

logger = logging.getLogger(__name__)

MANIFEST_FILE = "hfpref_manifest.json"

# The DCRM paper's recipe, as DPOConfig fields (a float warmup_steps below 1 is a ratio of total steps).
DCRM_RECIPE: dict[str, Any] = {
    "beta": 0.1,
    "learning_rate": 5e-7,
    "num_train_epochs": 2,
    "lr_scheduler_type": "cosine",
    "warmup_steps": 0.1,
}

MODEL_CARD_TAGS = ["hfpref", "dpo", "trl"]


class TrainError(UserError):
    """Training options that cannot work together (preset, held-out split, checkpoint selection)."""


class MissingPreferenceColumnsError(TrainError):
    """The dataset to train on has no ``prompt`` / ``chosen`` / ``rejected`` column (e.g. a candidates config)."""


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


@dataclass
class DatasetSource:
    """Where training pairs came from, precisely enough to get the same rows again."""

    dataset: str  # the folder or repo id as given
    config: str | None
    split: str
    revision: str | None  # Hub: the commit hash (or the requested revision when offline)
    requested_revision: str | None = None
    manifest_version: str | None = None  # local release: the manifest's version
    content_hash: str | None = None  # local release: "sha256:<hex>" over the folder's files
    rows: int | None = None

    @property
    def is_local(self) -> bool:
        return self.content_hash is not None

    def card_line(self) -> str:
        where = f"`{self.dataset}`" + (f", config `{self.config}`" if self.config else "")
        if self.is_local:
            return (
                f"{where}, split `{self.split}`: local release, manifest version "
                f"`{self.manifest_version}`, content hash `{self.content_hash}` ({self.rows} rows)"
            )
        return f"{where}, split `{self.split}`, revision `{self.revision}` ({self.rows} rows)"


def parse_dataset_spec(spec: str) -> tuple[str, str | None]:
    """``"repo@revision"`` -> (repo, revision); a local folder is never split (its path may hold ``@``)."""
    if Path(spec).exists() or "@" not in spec:
        return spec, None
    name, _, revision = spec.rpartition("@")
    if not name or not revision:
        raise ValueError(f"dataset {spec!r}: expected FOLDER, REPO or REPO@REVISION")
    return name, revision


def load_pairs(dataset: str, config: str | None = None, split: str = "train"):
    """Load one config/split of a pairs release and describe exactly which data it is.

    Returns ``(datasets.Dataset, DatasetSource)``.
    """
    import datasets

    name, revision = parse_dataset_spec(dataset)
    folder = Path(name)
    if folder.is_dir():
        rows = load_release(folder, name=config, split=split)
        manifest = _read_manifest(folder)
        source = DatasetSource(
            dataset=name,
            config=config,
            split=split,
            revision=None,
            manifest_version=None if manifest is None else str(manifest.get("version")),
            content_hash=content_hash(folder),
        )
    else:
        rows = datasets.load_dataset(name, name=config, split=split, revision=revision)
        source = DatasetSource(
            dataset=name,
            config=config,
            split=split,
            revision=_resolve_dataset_revision(name, revision),
            requested_revision=revision,
        )
    missing = [c for c in ("prompt", "chosen", "rejected") if c not in rows.column_names]
    if missing:
        pairs_configs = None
        if folder.is_dir() and manifest is not None:
            pairs_configs = sorted(
                name for name, entry in manifest.get("configs", {}).items() if entry.get("kind") == "pairs"
            )
        fix = (
            f"train on one of this release's pairs configs with --config: {pairs_configs}"
            if pairs_configs
            else "pass --config naming a pairs config of the release (a candidates config holds responses, "
            "not pairs)"
        )
        raise MissingPreferenceColumnsError(
            f"dataset {dataset!r} (config {config!r}, split {split!r}) lacks the preference column(s) "
            f"{missing} that DPO trains on; columns present: {rows.column_names}. {fix}, or give a dataset "
            "with 'prompt', 'chosen' and 'rejected' columns"
        )
    source.rows = rows.num_rows
    return rows, source


def dpo_config(output_dir: str | Path, **overrides: Any):
    """A ``trl.DPOConfig`` with the DCRM recipe as defaults; ``overrides`` are DPOConfig fields."""
    from trl import DPOConfig

    return DPOConfig(output_dir=str(output_dir), **{**DCRM_RECIPE, **overrides})


def held_out_pairs(
    rows: Any,
    *,
    dataset: str,
    config: str | None,
    split: str,
    eval_split_ratio: float | None,
    eval_config: str | None,
    eval_split: str | None,
    seed: int,
) -> tuple[Any, Any, dict[str, Any] | None]:
    """``(train rows, held-out rows or None, what the held-out rows are)`` for best-checkpoint selection.

    ``eval_split_ratio``: that fraction of the training split, drawn with ``seed`` (``Dataset.train_test_split``);
    ``eval_config`` / ``eval_split``: another config and/or split of the same release (default: the training
    config, split ``train`` of another config), never the training rows themselves.
    """
    if eval_split_ratio is not None and (eval_config is not None or eval_split is not None):
        raise TrainError("give --eval-split-ratio or --eval-config/--eval-split, not both")
    if eval_split_ratio is not None:
        if not 0 < eval_split_ratio < 1:
            raise TrainError(f"--eval-split-ratio must be between 0 and 1, got {eval_split_ratio}")
        held = round(rows.num_rows * eval_split_ratio)
        if held < 1 or held >= rows.num_rows:
            raise TrainError(
                f"--eval-split-ratio {eval_split_ratio} of {rows.num_rows} training pairs holds out {held}; "
                "at least one pair must be held out and one left to train on"
            )
        parts = rows.train_test_split(test_size=held, seed=seed, shuffle=True)
        described = {"held_out_of": "the training split", "ratio": eval_split_ratio, "seed": seed}
        described["rows"] = parts["test"].num_rows
        return parts["train"], parts["test"], described
    if eval_config is None and eval_split is None:
        return rows, None, None
    name = eval_config if eval_config is not None else config
    which = eval_split if eval_split is not None else "train"
    if name == config and which == split:
        raise TrainError(
            f"the held-out pairs (config {name!r}, split {which!r}) are the training pairs; name another "
            "split (--eval-split validation) or config, or use --eval-split-ratio"
        )
    eval_rows, eval_source = load_pairs(dataset, config=name, split=which)
    return rows, eval_rows, {k: v for k, v in asdict(eval_source).items() if v is not None}


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
    from transformers import AutoTokenizer
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
        metric = best_metric or preset_metric or "loss"
        if best_metric is not None:
            metric_source = USER
        elif preset is not None:
            metric_source = PRESETS[preset][BEST_METRIC].source
        else:
            metric_source = "hfpref default: the held-out DPO loss"
        settings.update(checkpoint_settings(metric, metric_source, overrides, eval_steps))
    elif best_metric is not None or eval_steps is not None:
        raise TrainError(
            "--best-metric and --eval-steps need held-out pairs: add --eval-split-ratio, --eval-config or --eval-split"
        )
    elif preset_metric is not None and preset == "dcrm":
        logger.warning(
            "preset dcrm keeps the best checkpoint on held-out pairs; without --eval-split-ratio or "
            "--eval-config/--eval-split the last checkpoint is kept"
        )
    fields = {name: s.value for name, s in settings.items() if s.value != KEEP_DEFAULT}
    args = DPOConfig(output_dir=str(output_dir), **fields)
    if model_revision is not None:
        args.model_init_kwargs = {**(args.model_init_kwargs or {}), "revision": model_revision}
    tokenizer = AutoTokenizer.from_pretrained(model, revision=model_revision)
    trainer = DPOTrainer(
        model=model, args=args, train_dataset=rows, eval_dataset=eval_rows, processing_class=tokenizer
    )
    trainer.train()
    trainer.save_model(str(output_dir))
    training = {"preset": preset, "hyperparameters": card_hyperparameters(args, settings)}
    if eval_rows is not None:
        checkpoint = trainer.state.best_model_checkpoint
        training["held_out"] = eval_described
        training["best_checkpoint"] = {
            "metric": args.metric_for_best_model,
            "value": trainer.state.best_metric,
            "step": trainer.state.best_global_step,
            "checkpoint": None if checkpoint is None else Path(checkpoint).name,
        }
    write_model_card(trainer, output_dir, source, model, base_revision, training=training)
    return output_dir


def write_model_card(
    trainer: Any,
    output_dir: Path,
    source: DatasetSource,
    base_model: str,
    base_revision: str,
    training: Mapping[str, Any] | None = None,
    tags: list[str] | None = None,
) -> Path:
    """TRL's model card, plus the exact training data (dataset, config, revision or content hash) and,
    with ``training``, the preset, each hyperparameter with its source and the kept checkpoint."""
    from huggingface_hub import ModelCard

    # TRL links `dataset_name` as a Hub dataset, which a local folder is not
    trainer.create_model_card(
        model_name=output_dir.name,
        dataset_name=None if source.is_local else source.dataset,
        tags=tags or MODEL_CARD_TAGS,
    )
    path = output_dir / "README.md"
    card = ModelCard.load(path)
    card.data.hfpref = {
        "training_data": {k: v for k, v in asdict(source).items() if v is not None},
        "base_model": base_model,
        "base_model_revision": base_revision,
        **(training or {}),
    }
    text = (
        "\n\n## Training data (hfpref)\n\n"
        f"- Dataset: {source.card_line()}\n"
        f"- Base model: `{base_model}`, revision `{base_revision}`\n"
    )
    if training:
        if training.get("method") == "kto":
            unpaired = training["unpaired"]
            text += (
                "\n## Training recipe (hfpref)\n\n- Method: KTO (`trl.KTOTrainer`) on unpaired rows made by "
                f"`{unpaired['helper']}`: {unpaired['pairs']} pairs -> {unpaired['rows']} rows (chosen desirable, "
                f"rejected undesirable), shuffled with seed {unpaired['shuffle_seed']}\n"
            )
        else:
            text += f"\n## Training recipe (hfpref)\n\n- Preset: `{training.get('preset') or 'none (DCRM defaults)'}`\n"
        best = training.get("best_checkpoint")
        if best:
            text += (
                f"- Kept checkpoint: `{best['checkpoint']}` (step {best['step']}), the best "
                f"`{best['metric']}` = {best['value']} on held-out pairs ({training['held_out']})\n"
            )
        text += "\n| hyperparameter | value | source |\n|---|---|---|\n"
        for name, entry in training["hyperparameters"].items():
            text += f"| `{name}` | `{entry['value']}` | {entry['source']} |\n"
    card.text = card.text.rstrip() + text
    card.save(path)
    return path


def _read_manifest(folder: Path) -> Mapping[str, Any] | None:
    path = folder / MANIFEST_FILE
    if not path.is_file():
        logger.warning("%s has no %s; the model card will carry only its content hash", folder, MANIFEST_FILE)
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def _resolve_dataset_revision(repo: str, revision: str | None) -> str | None:
    """The commit hash a Hub dataset revision points at; the requested revision when offline."""
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(repo, revision=revision).sha
    except Exception:  # offline, or a private repo without a token: keep what was asked for
        return revision
