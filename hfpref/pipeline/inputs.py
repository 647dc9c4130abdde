"""A recipe's input as a candidates ``Dataset``: the embedded default data, a Hub dataset at a revision, or a
local file or folder, renamed and narrowed as the ``input`` section says, with a description for the card.

Local inputs are keyed by their bytes (sha256 of every file), not their path or modification time, so the
step caches downstream follow the content.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from hfpref.pipeline.spec import InputSpec
from hfpref.pipeline.validate import RecipeError

_FILE_BUILDERS = {".json": "json", ".jsonl": "json", ".parquet": "parquet", ".csv": "csv", ".arrow": "arrow"}


def _sha256_files(paths: list[Path]) -> dict[str, str]:
    """path -> sha256 of its bytes, for each path in order."""
    out = {}
    for path in paths:
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        out[str(path)] = digest.hexdigest()
    return out


# bump when the way a local input becomes rows changes: every input is then loaded afresh
INPUT_LOADER_VERSION = "1"


def load_input(spec: InputSpec, cache_dir: str | Path | None = None) -> tuple[Any, dict[str, Any]]:
    """Load a recipe's input as a candidates ``Dataset`` (with cache files, so steps are cached),
    renamed and narrowed as the spec says, and describe it for the card (kind, id or path, revision,
    file hashes, license when known)."""
    dataset, info = _load_input_rows(spec, cache_dir)
    if spec.rename:
        _check_has_columns(dataset, spec.rename, "input.rename")
        dataset = dataset.rename_columns(dict(spec.rename))
    if spec.columns:
        _check_has_columns(dataset, spec.columns, "input.columns")
        dataset = dataset.select_columns(list(spec.columns))
    return dataset, info


def _check_has_columns(dataset: Any, names: Iterable[str], where: str) -> None:
    missing = [c for c in names if c not in dataset.column_names]
    if missing:
        raise RecipeError(f"{where}: column(s) {missing} not in the input; it has {dataset.column_names}")


def _load_input_rows(spec: InputSpec, cache_dir: str | Path | None) -> tuple[Any, dict[str, Any]]:
    """The input's rows as they are, and its description."""
    if spec.default is not None:
        from hfpref.pipeline import default_data

        return (
            default_data.load_ifeval_candidates(cache_dir, spec.generators, name=spec.default),
            default_data.input_description(spec.default, spec.generators),
        )
    if spec.hub is not None:
        return _load_hub(spec, cache_dir)
    return _load_path(spec, cache_dir)


def _load_hub(spec: InputSpec, cache_dir: str | Path | None) -> tuple[Any, dict[str, Any]]:
    import datasets

    cache = str(cache_dir) if cache_dir is not None else None
    dataset = datasets.load_dataset(
        spec.hub, name=spec.config, revision=spec.revision, split=spec.split, cache_dir=cache
    )
    info = {
        "kind": "hub",
        "id": spec.hub,
        "revision": spec.revision,
        "split": spec.split,
        "config": spec.config,
    }
    info["resolved_revision"] = _hub_commit(spec.hub, spec.revision)
    return dataset, info


def _local_files(spec: InputSpec, path: Path) -> tuple[str, list[Path]]:
    """(kind of local input, the files its rows are read from)."""
    if path.is_dir() and (path / "state.json").exists():  # a folder written by Dataset.save_to_disk
        state = json.loads((path / "state.json").read_text(encoding="utf-8"))
        # the files the dataset is made of (steps may write their own cache-*.arrow files beside them)
        return "arrow-folder", [path / entry["filename"] for entry in state.get("_data_files", [])]
    if path.is_dir():
        return "folder", sorted(p for p in path.rglob("*") if p.is_file() and ".cache" not in p.parts)
    kind = _FILE_BUILDERS.get("".join(path.suffixes[-1:]).lower())
    if kind is None:
        raise RecipeError(
            f"input.path: cannot read {spec.path!r}; known file types: {sorted(_FILE_BUILDERS)}"
        )
    return kind, [path]


def _load_path(spec: InputSpec, cache_dir: str | Path | None) -> tuple[Any, dict[str, Any]]:
    import shutil

    import datasets

    path = Path(spec.path)
    if not path.exists():
        raise RecipeError(f"input.path: {spec.path!r} does not exist")
    info: dict[str, Any] = {"kind": "path", "path": str(path), "split": spec.split, "revision": None}
    kind, files = _local_files(spec, path)
    hashes = _sha256_files(files)
    info["files_sha256"] = hashes
    # Rows are keyed by the bytes, not the path: datasets' json/csv/parquet builders key their cache on path
    # and modification time, so a file rewritten with its old mtime (cp -p, rsync -a, unzip) would load the
    # old rows. Each content gets its own builder cache folder and the dataset a fingerprint made from the
    # hashes, so the step caches downstream follow the content too.
    key = _content_key(kind, spec.split, path, hashes)
    cache = str(cache_dir) if cache_dir is not None else datasets.config.HF_DATASETS_CACHE
    content_cache = Path(cache) / "hfpref-inputs" / key
    if kind == "arrow-folder":
        dataset = datasets.load_from_disk(str(path))  # memory-mapped as it is: no builder cache
    elif kind == "folder":
        dataset = datasets.load_dataset(str(path), split=spec.split, cache_dir=str(content_cache))
    else:
        dataset = datasets.load_dataset(
            kind, data_files=str(path), split="train", cache_dir=str(content_cache)
        )
    if _sha256_files(files) != hashes:  # written to while it was read: the rows may be of neither version
        shutil.rmtree(content_cache, ignore_errors=True)
        raise RecipeError(
            f"input.path: {spec.path!r} changed while it was being read; run again once it is no longer "
            "being written"
        )
    # a contiguous select is a zero-copy view over the same Arrow files, with the fingerprint we give it
    return dataset.select(range(len(dataset)), new_fingerprint=key), info


def _content_key(kind: str, split: str, root: Path, hashes: Mapping[str, str]) -> str:
    """A fingerprint of an input made from what it holds: its kind, split and files' names (relative to
    the input path, since a folder's file names can name splits) and bytes, not where it lies or when it
    was written."""
    files = {
        (str(Path(name).relative_to(root)) if root.is_dir() else Path(name).suffix): digest
        for name, digest in hashes.items()
    }
    record = {"loader": INPUT_LOADER_VERSION, "kind": kind, "split": split, "files": files}
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:32]


def _hub_commit(repo_id: str, revision: str | None) -> str | None:
    """The commit a Hub revision (branch or tag) points to, or None when the Hub cannot be reached."""
    try:
        from huggingface_hub import HfApi

        return HfApi().dataset_info(repo_id, revision=revision).sha
    except Exception:  # offline, or a private repo without a token: the card then shows the revision as given
        return None
