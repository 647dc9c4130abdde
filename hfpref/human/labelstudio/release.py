"""A pull written as a release folder (``load_release`` / ``train_dpo`` read it).

Configs: ``human`` (TRL rows, ``label_source = human:<annotator ids>``), ``pairs`` (every pushed pair once,
with its outcome) and ``annotations`` (every vote), with a manifest and a card with the counts. Neither
holds the API key or an e-mail address.
"""

from __future__ import annotations

import datetime as _dt
import json
import shutil
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hfpref.core import columns as C
from hfpref.human.labelstudio.labels import OUTCOME, PAIR_ID, PullResult, labels_dataset
from hfpref.release.card import card_configs, render_template
from hfpref.release.folder import CARD_FILE, DATA_FILE, DATA_GLOB, MANIFEST_FILE, ReleaseError, write_parquet
from hfpref.release.manifest import package_versions

MANIFEST_FORMAT = "hfpref-human-labels/1"
HUMAN_CONFIG = "human"  # TRL preference rows made from the people's labels
PAIRS_CONFIG = "pairs"  # every pushed pair once, with its outcome
ANNOTATIONS_CONFIG = "annotations"  # every vote
CARD_TEMPLATE = "human_labels_card.md.j2"


def build_manifest(
    result: PullResult, *, name: str, version: str, created_at: str | None = None
) -> dict[str, Any]:
    """The machine-readable record of a human-labels release (no API key, no e-mail addresses)."""
    sizes = {
        HUMAN_CONFIG: ("pairs", len(result.rows)),
        PAIRS_CONFIG: ("pushed_pairs", len(result.pairs)),
        ANNOTATIONS_CONFIG: ("annotations", len(result.annotations)),
    }
    return {
        "format": MANIFEST_FORMAT,
        "name": name,
        "version": version,
        "created_at": created_at or _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "label_source": "human",
        "annotation_tool": {
            "name": "label-studio",
            "project": result.project,
            "project_id": result.project_id,
            "url": result.url,
        },
        "rule": result.rule,
        "min_annotations": result.min_annotations,
        "counts": result.counts,
        "agreement": result.agreement,
        "pending_pair_ids": result.pending,
        "packages": package_versions(("hfpref", "datasets", "pyarrow")),
        "default_config": HUMAN_CONFIG,
        "configs": {
            config: {"kind": kind, "rows": rows, "data_files": DATA_GLOB.format(config=config)}
            for config, (kind, rows) in sizes.items()
        },
    }


def render_card(manifest: Mapping[str, Any]) -> str:
    """The dataset card of a human-labels release, from ``cards/human_labels_card.md.j2``."""
    header = {"configs": card_configs(manifest), "tags": ["hfpref", "preference", "dpo", "human-annotated"]}
    return render_template(CARD_TEMPLATE, header, m=manifest)


def _table(rows: list[dict[str, Any]], empty_columns: list[str]):
    """Rows as a Dataset; with no rows, the named (string) columns, so the Parquet file still loads."""
    import datasets

    if rows:
        return datasets.Dataset.from_list(rows)
    return datasets.Dataset.from_dict(
        {c: [] for c in empty_columns},
        features=datasets.Features({c: datasets.Value("string") for c in empty_columns}),
    )


def write_labels_release(
    result: PullResult,
    folder: str | Path,
    *,
    name: str | None = None,
    version: str = "0.1.0",
    overwrite: bool = False,
    created_at: str | None = None,
) -> Path:
    """Write a pull as a release folder, atomically: built in a temporary folder beside ``folder`` and
    moved into place only when complete, so a failure leaves no partial output."""
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()):
        if not (folder / MANIFEST_FILE).exists():
            raise ReleaseError(
                f"{folder} exists, is not empty and holds no {MANIFEST_FILE}: not writing into it"
            )
        if not overwrite:
            raise ReleaseError(f"{folder} already holds a release; pass --overwrite to replace it")
    folder.parent.mkdir(parents=True, exist_ok=True)
    manifest = build_manifest(result, name=name or folder.name, version=version, created_at=created_at)
    build = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        tables = {
            HUMAN_CONFIG: labels_dataset(result),
            PAIRS_CONFIG: _table(result.pairs, [PAIR_ID, C.PROMPT, OUTCOME]),
            ANNOTATIONS_CONFIG: _table(result.annotations, [PAIR_ID, "annotator", "shown", "prefers"]),
        }
        for config, table in tables.items():
            write_parquet(table, build / DATA_FILE.format(config=config))
        (build / MANIFEST_FILE).write_text(
            json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8"
        )
        (build / CARD_FILE).write_text(render_card(manifest), encoding="utf-8")
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            folder.rename(old)
            build.rename(folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            build.rename(folder)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise
    return folder
