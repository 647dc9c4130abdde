"""A release folder on disk: its file names, its lock, its manifest, file hashes, and recovery after a kill.

Everything that several parts of the release layer (writer, push, load, the human-labels release) do to a
folder without knowing what the release holds.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from hfpref.core.errors import UserError

MANIFEST_FILE = "hfpref_manifest.json"
CARD_FILE = "README.md"
DATA_FILE = "data/{config}/train-00000-of-00001.parquet"
DATA_GLOB = "data/{config}/train-*.parquet"


class ReleaseError(UserError):
    """A release folder that cannot be written or read as asked."""


class ReleaseLockedError(ReleaseError):
    """Another run (or push) holds the release folder's lock."""


def read_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST_FILE
    if not path.exists():
        raise ReleaseError(f"{folder} is not an hfpref release folder: {MANIFEST_FILE} is missing")
    return json.loads(path.read_text(encoding="utf-8"))


def real_folder(folder: str | Path) -> Path:
    """The absolute folder; a symlinked release folder is its target (the link stays, the target is
    replaced, and the lock and staging folder lie beside the target)."""
    return Path(os.path.realpath(folder) if Path(folder).is_symlink() else os.path.abspath(folder))


def lock_path(folder: str | Path) -> Path:
    """The lock file of a release folder: beside it (``FOLDER.lock``), so it survives the folder's swap."""
    folder = real_folder(folder)
    return folder.with_name(folder.name + ".lock")


def staging_dir(folder: str | Path) -> Path:
    """Where the next release of ``folder`` is built: a hidden sibling, on the same file system."""
    folder = real_folder(folder)
    return folder.with_name(f".{folder.name}.hfpref-new")


def backup_dir(folder: Path) -> Path:
    """Where the old release waits during a swap by two renames (when renameat2 cannot exchange)."""
    return folder.with_name(f".{folder.name}.hfpref-old")


@contextlib.contextmanager
def release_lock(folder: str | Path) -> Iterator[Path]:
    """Hold ``FOLDER.lock`` for a block, or fail at once if another process holds it.

    Re-entrant in one thread (``curate`` holds it for the whole run, ``write_release`` takes it again).
    The lock file stays after release, as filelock leaves it: deleting it could let two runs lock two
    different files of the same name.
    """
    import filelock

    path = lock_path(folder)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(str(path), blocking=False, is_singleton=True)
    try:
        lock.acquire()
    except filelock.Timeout:
        raise ReleaseLockedError(
            f"{folder} is being written by another hfpref run: its lock {path} is held. Wait for that run "
            "to finish, or write to another folder (--output)"
        ) from None
    try:
        yield path
    finally:
        lock.release()


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.hfpref-tmp")


def replace_text(path: Path, text: str) -> None:
    """Write ``path`` whole: a temporary file beside it, flushed, then renamed over it (a reader or a kill
    never meets half a file; ``recover`` removes a temporary file a kill left)."""
    temporary = _temporary(path)
    with temporary.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def recover(folder: Path) -> None:
    """Finish what a killed writer left (called under the lock): restore an old release that a swap by two
    renames moved aside before the new one was in place, and remove the staging and backup folders."""
    backup = backup_dir(folder)
    if backup.exists():
        if folder.exists():  # killed after the new release was in place: the old one is just garbage
            shutil.rmtree(backup)
        else:  # killed between the two renames: put the old release back
            os.rename(backup, folder)
    shutil.rmtree(staging_dir(folder), ignore_errors=True)
    for name in (MANIFEST_FILE, CARD_FILE):  # a rewrite of the manifest and card (push) killed midway
        _temporary(folder / name).unlink(missing_ok=True)


def hash_files(folder: Path, names: Sequence[str], *, sync: bool = False) -> dict[str, dict[str, Any]]:
    """relative name -> {sha256, bytes} of each file; ``sync``: also flush each file to disk."""
    out = {}
    for name in names:
        digest = hashlib.sha256()
        size = 0
        with (folder / name).open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
                size += len(chunk)
            if sync:
                os.fsync(handle.fileno())
        out[name] = {"sha256": digest.hexdigest(), "bytes": size}
    return out


def write_parquet(dataset, path: Path) -> None:
    """One data file of a release (its folders made), without datasets' progress bar."""
    import datasets

    path.parent.mkdir(parents=True, exist_ok=True)
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # one bar per small file is noise
    try:
        dataset.to_parquet(str(path))
    finally:
        if was_enabled:
            datasets.enable_progress_bars()
