"""Where the training pairs come from: one config and split of a pairs release (a local folder written by
``hfpref curate``, or a Hub dataset repo, optionally ``repo@revision``), described precisely enough for the
model card to name the exact data (``DatasetSource``), and the held-out pairs that pick the kept checkpoint.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from hfpref.models.hub import content_hash
from hfpref.release import load_release
from hfpref.training.hyperparameters import TrainError

logger = logging.getLogger(__name__)

MANIFEST_FILE = "hfpref_manifest.json"


class MissingPreferenceColumnsError(TrainError):
    """The dataset to train on has no ``prompt`` / ``chosen`` / ``rejected`` column (e.g. a candidates config)."""


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
            f"train on one of this release's pairs configs with --dataset-config: {pairs_configs}"
            if pairs_configs
            else "pass --dataset-config naming a pairs config of the release (a candidates config holds responses, "
            "not pairs)"
        )
        raise MissingPreferenceColumnsError(
            f"dataset {dataset!r} (config {config!r}, split {split!r}) lacks the preference column(s) "
            f"{missing} that DPO trains on; columns present: {rows.column_names}. {fix}, or give a dataset "
            "with 'prompt', 'chosen' and 'rejected' columns"
        )
    source.rows = rows.num_rows
    return rows, source


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
