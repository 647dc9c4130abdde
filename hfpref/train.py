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
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hfpref.model_utils import content_hash, resolve_revision
from hfpref.release import load_release

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
        raise ValueError(
            f"dataset {dataset!r} (config {config!r}, split {split!r}) lacks the preference column(s) "
            f"{missing}; columns present: {rows.column_names}"
        )
    source.rows = rows.num_rows
    return rows, source


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
    **overrides: Any,
) -> Path:
    """Train ``model`` with DPO on a pairs release; return the folder holding the trained model.

    ``dataset``: a release folder or Hub repo id (``repo@revision`` pins a revision); ``config``: which
    pair strategy (e.g. ``best_of_n2``); ``overrides``: any ``trl.DPOConfig`` fields (``beta``,
    ``learning_rate``, ``max_steps``, ``bf16``, ``use_cpu``, ...).
    """
    from transformers import AutoTokenizer
    from trl import DPOTrainer

    output_dir = Path(output_dir)
    rows, source = load_pairs(dataset, config=config, split=split)
    base_revision = resolve_revision(model, model_revision)  # fails before training, not after
    args = dpo_config(output_dir, **overrides)
    if model_revision is not None:
        args.model_init_kwargs = {**(args.model_init_kwargs or {}), "revision": model_revision}
    tokenizer = AutoTokenizer.from_pretrained(model, revision=model_revision)
    trainer = DPOTrainer(model=model, args=args, train_dataset=rows, processing_class=tokenizer)
    trainer.train()
    trainer.save_model(str(output_dir))
    write_model_card(trainer, output_dir, source, model, base_revision)
    return output_dir


def write_model_card(
    trainer: Any, output_dir: Path, source: DatasetSource, base_model: str, base_revision: str
) -> Path:
    """TRL's model card, plus the exact training data (dataset, config, revision or content hash)."""
    from huggingface_hub import ModelCard

    # TRL links `dataset_name` as a Hub dataset, which a local folder is not
    trainer.create_model_card(
        model_name=output_dir.name,
        dataset_name=None if source.is_local else source.dataset,
        tags=MODEL_CARD_TAGS,
    )
    path = output_dir / "README.md"
    card = ModelCard.load(path)
    card.data.hfpref = {
        "training_data": {k: v for k, v in asdict(source).items() if v is not None},
        "base_model": base_model,
        "base_model_revision": base_revision,
    }
    card.text = card.text.rstrip() + (
        "\n\n## Training data (hfpref)\n\n"
        f"- Dataset: {source.card_line()}\n"
        f"- Base model: `{base_model}`, revision `{base_revision}`\n"
    )
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
