"""Reading a release folder back: one config's rows (``load_release``) and a check of its files against the
manifest's hashes (``verify_release``)."""

from __future__ import annotations

from pathlib import Path

from hfpref.release.folder import CARD_FILE, MANIFEST_FILE, ReleaseError, hash_files, read_manifest


def load_release(folder: str | Path, name: str | None = None, split: str = "train"):
    """Load one config/split of a local release folder (or any folder of data files), keyed by its files.

    Written by hand because datasets 5.2 caches ``load_dataset(folder, name=...)`` of a folder's card
    configs by the folder's *name*, the config name and the file patterns, not by its path or files: two
    releases both called ``release`` (or a release rewritten in place) would return the first one's
    cached rows. Loading the config's Parquet files with the ``parquet`` builder hashes the files.
    """
    import datasets
    from huggingface_hub import DatasetCard

    folder = Path(folder)
    card_path = folder / CARD_FILE
    configs = DatasetCard.load(card_path).data.to_dict().get("configs") if card_path.exists() else None
    if not configs:  # a plain data folder: datasets' own layout rules, nothing cached by config name
        return datasets.load_dataset(str(folder), name=name, split=split)
    by_name = {c["config_name"]: c for c in configs}
    if name is None:
        defaults = [c for c in configs if c.get("default")]
        name = (defaults or configs)[0]["config_name"]
    if name not in by_name:
        raise ReleaseError(f"{folder} has no config {name!r}; its configs are {sorted(by_name)}")
    files = by_name[name]["data_files"]
    patterns = [f["path"] for f in files if f.get("split") == split] if isinstance(files, list) else []
    if not patterns:
        raise ReleaseError(f"config {name!r} of {folder} has no split {split!r}")
    paths = sorted(str(p) for pattern in patterns for p in folder.glob(pattern))
    if not paths:
        raise ReleaseError(f"config {name!r} of {folder}: no file matches {patterns}")
    return datasets.load_dataset("parquet", data_files={split: paths}, split=split)


def verify_release(folder: str | Path) -> list[str]:
    """What is wrong with a release folder's files against its manifest's hashes ([] when all match)."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    listed = manifest.get("files")
    if listed is None:
        return [f"{MANIFEST_FILE} lists no file hashes (written by an older hfpref)"]
    problems = []
    for name, entry in listed.items():
        if not (folder / name).is_file():
            problems.append(f"{name}: missing")
        elif hash_files(folder, [name])[name] != entry:
            problems.append(f"{name}: its bytes differ from the manifest's sha256")
    return problems
