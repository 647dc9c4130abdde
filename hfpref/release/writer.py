"""Writing a release folder: Parquet data per config, a dataset card, plots and a machine-readable manifest.

Layout (the same files are pushed to the Hub, so ``load_dataset(folder, name=...)`` and
``load_dataset(repo_id, name=..., revision=tag)`` read the same rows)::

    FOLDER/
      README.md                                   dataset card; its YAML header declares the configs
      hfpref_manifest.json                        the recipe as run, models, versions, counts, statistics
      pairs_distance_reward_margin.png            the pairs in the e_Δ / r_Δ plane
      data/<config>/train-00000-of-00001.parquet     one config per pair strategy, maker and mix (kept pairs)
      data/candidates/train-00000-of-00001.parquet   the annotated candidates

Writing is atomic and locked (``write_release``): the release is built in a hidden sibling folder and
swapped in when complete (renameat2's exchange, or two renames that ``recover`` completes after a kill),
while ``FOLDER.lock`` keeps other writers out; the manifest's ``files`` holds the sha256 of every file as
written (``verify_release`` checks them).

The rest of the release layer lives beside this module, by purpose: ``manifest`` (build it), ``card``
(render it), ``folder`` (file names, lock, hashes), ``push``, ``load``, ``version``, ``content`` (the
``ReleaseContent`` protocol a result satisfies); ``hfpref.release`` exports the public names.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from hfpref.core import columns as C
from hfpref.core.columns import CANDIDATES_CONFIG
from hfpref.release.card import write_manifest_and_card
from hfpref.release.content import ReleaseContent, ReopenedContent
from hfpref.release.folder import (
    CARD_FILE,
    DATA_FILE,
    MANIFEST_FILE,
    ReleaseError,
    backup_dir,
    hash_files,
    real_folder,
    recover,
    release_lock,
    staging_dir,
    write_parquet,
)
from hfpref.release.manifest import (
    build_manifest,
    candidate_columns,
    strategy_groups,
)
from hfpref.release.plots import PLOT_FILE, plot_pairs_plane
from hfpref.release.summary import column_values, describe_values
from hfpref.release.version import check_version

# Test hook, never set in normal use: seconds the writer sleeps after each file and swap step, so a test can
# kill it (SIGKILL) at a known point of the write.
PAUSE_ENV = "HFPREF_TEST_RELEASE_PAUSE"
RENAME_EXCHANGE = 2  # linux/fs.h: swap two paths atomically (renameat2)
AT_FDCWD = -100


def _pause(where: str) -> None:
    """The test hook between two writes (see ``PAUSE_ENV``); tests also replace it to simulate crashes."""
    seconds = os.environ.get(PAUSE_ENV)
    if seconds:
        time.sleep(float(seconds))


def _check_target(folder: Path, name: str, overwrite: bool, force: bool) -> None:
    """Refuse a non-empty folder that is not an hfpref release, and one holding a different release
    (another ``output.name``) unless ``force``."""
    if not folder.exists():
        return
    if not folder.is_dir():
        raise ReleaseError(f"{folder} exists and is not a folder: not writing a release there")
    if not any(folder.iterdir()):
        return
    manifest_path = folder / MANIFEST_FILE
    if not manifest_path.exists():
        raise ReleaseError(
            f"{folder} exists, is not empty and holds no {MANIFEST_FILE}: not writing into it; "
            "choose another --output or empty the folder"
        )
    if not overwrite:
        raise ReleaseError(f"{folder} already holds a release; pass overwrite=True to replace it")
    try:
        existing = json.loads(manifest_path.read_text(encoding="utf-8")).get("name")
    except (OSError, ValueError, AttributeError) as err:
        existing = f"<unreadable {MANIFEST_FILE}: {err}>"
    if existing != name and not force:
        raise ReleaseError(
            f"{folder} holds the release {existing!r}, not {name!r} (the recipe's output.name): not replacing "
            "it. Pass --force (force=True) to replace it, or write to another folder (--output)"
        )


def _exchange(staging: Path, folder: Path) -> bool:
    """Swap two existing folders in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where the
    system or file system cannot, and nothing changed."""
    if sys.platform != "linux":
        return False
    import ctypes

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):  # a C library without renameat2 (glibc < 2.28, musl)
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    done = renameat2(AT_FDCWD, os.fsencode(staging), AT_FDCWD, os.fsencode(folder), RENAME_EXCHANGE)
    return done == 0


def _swap_in(staging: Path, folder: Path) -> None:
    """Put the finished release at ``staging`` in the place of ``folder`` (which may not exist)."""
    if not folder.exists() or not any(folder.iterdir()):
        os.replace(staging, folder)  # atomic; replaces an empty folder
        return
    if _exchange(staging, folder):  # readers see the old release or the new one, never neither
        _pause("swap: exchanged")
        shutil.rmtree(staging)  # it now holds the old release
        return
    # two renames: a crash between them leaves no folder, and the next run restores the old one (recover)
    backup = backup_dir(folder)
    os.rename(folder, backup)
    _pause("swap: old moved aside")
    os.rename(staging, folder)
    _pause("swap: new in place")
    shutil.rmtree(backup)


def write_release(
    result: ReleaseContent,
    folder: str | Path | None = None,
    *,
    version: str | None = None,
    repo_id: str | None = None,
    overwrite: bool = True,
    force: bool = False,
    created_at: str | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Path:
    """Write the data files, plot, manifest and card of ``result`` as the release folder ``folder``.

    ``extra``: manifest fields merged in before the card renders (the iterate loop's ``iteration`` record
    and ``extra_sections``), so the manifest is written once.

    The release is built in a hidden folder beside ``folder`` and swapped in when complete, under the
    folder's lock (``FOLDER.lock``; a second writer fails at once): a crash or kill at any point leaves
    either the old release or the new one, whole, and the next write cleans up after it. The manifest
    lists the sha256 of each file as written. Refuses a non-empty folder that is not a release, and one
    holding a release of another name (``output.name``) unless ``force``; returns the folder.
    """
    recipe = result.recipe
    folder = Path(folder if folder is not None else recipe.output.folder)
    version = check_version(version or recipe.output.version)
    if repo_id is None and recipe.output.push_to_hub is not None:
        repo_id = recipe.output.push_to_hub.repo_id
    with release_lock(folder):
        target = real_folder(folder)
        recover(target)
        _check_target(target, recipe.output.name, overwrite, force)
        staging = staging_dir(target)
        staging.mkdir(parents=True)
        try:
            _write_staged(
                ReopenedContent(result),
                staging,
                version=version,
                repo_id=repo_id,
                created_at=created_at,
                extra=extra,
            )
            _swap_in(staging, target)
        except Exception:  # an error (not a kill): leave the old release as it was, and no staging folder
            shutil.rmtree(staging, ignore_errors=True)
            recover(target)
            raise
    return folder


def _write_staged(
    result: ReleaseContent,
    staging: Path,
    *,
    version: str,
    repo_id: str | None,
    created_at: str | None,
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Every file of the release into the (empty) staging folder; the manifest hashes the files written."""
    written = []
    for strategy, pairs in result.pairs.items():
        keep = [c for c in pairs.column_names if c != C.DROP_REASON]  # every kept row has drop_reason None
        written.append(DATA_FILE.format(config=strategy))
        write_parquet(pairs.select_columns(keep), staging / written[-1])
        _pause(f"data: {strategy}")
    kept_columns, _ = candidate_columns(result)
    written.append(DATA_FILE.format(config=CANDIDATES_CONFIG))
    write_parquet(result.candidates.select_columns(kept_columns), staging / written[-1])
    _pause(f"data: {CANDIDATES_CONFIG}")

    manifest = build_manifest(result, version=version, repo_id=repo_id, created_at=created_at)
    manifest.update(extra or {})
    unit = manifest["edit_distance_unit"] or "unknown unit"
    groups = strategy_groups(manifest["configs"])
    plot_pairs_plane(
        {tuple(members): _plane_points(result.pairs[first]) for first, members in groups.items()},
        staging / PLOT_FILE,
        distance_label=f"e_Δ (edit distance, {unit})",
        title=f"{manifest['name']} {version}: pairs in the distance / reward-margin plane",
    )
    written.append(PLOT_FILE)
    _pause("plot")
    written += _write_delta_plots(result, manifest, staging, version)
    # hashed from the files on disk, so the manifest names exactly the bytes the release holds
    manifest["files"] = hash_files(staging, written, sync=True)
    write_manifest_and_card(staging, manifest)
    _fsync_tree(staging)
    _pause("manifest and card")


def _write_delta_plots(
    result: ReleaseContent, manifest: dict[str, Any], staging: Path, version: str
) -> list[str]:
    """The sweep analysis plot (with sweeps) and the sample-delta distributions (when a judge scored some
    config); their file names go into the manifest (``delta_plots``) for the card."""
    from hfpref.release.delta_plots import (
        SAMPLE_DELTA_PLOT_FILE,
        SWEEP_PLOT_FILE,
        plot_sample_deltas,
        plot_sweeps,
        sample_delta_values,
    )

    written: dict[str, str] = {}
    if result.sweeps:
        plot_sweeps(
            result.sweeps,
            staging / SWEEP_PLOT_FILE,
            title=f"{manifest['name']} {version}: generator delta sweeps",
        )
        written["sweeps"] = SWEEP_PLOT_FILE
    values = sample_delta_values(result.pairs)
    if values:
        plot_sample_deltas(values, staging / SAMPLE_DELTA_PLOT_FILE, title="sample delta per config")
        written["sample_delta"] = SAMPLE_DELTA_PLOT_FILE
        manifest["sample_delta_stats"] = {name: describe_values(v) for name, v in values.items()}
    manifest["delta_plots"] = written
    return list(written.values())


def _fsync_tree(folder: Path) -> None:
    """Flush the manifest and card and every folder entry, so a power cut cannot swap in a hollow release."""
    for name in (MANIFEST_FILE, CARD_FILE):
        with (folder / name).open("rb") as handle:
            os.fsync(handle.fileno())
    if os.name != "posix":  # folders cannot be opened for fsync elsewhere
        return
    for path in [folder, *(p for p in folder.rglob("*") if p.is_dir())]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _plane_points(pairs) -> tuple[Any, Any]:
    """(e_Δ, r_Δ) columns of the pairs; a maker may write neither (then None each, as unknown values are)."""
    names = pairs.column_names
    distances = column_values(pairs, C.EDIT_DISTANCE) if C.EDIT_DISTANCE in names else [None] * len(pairs)
    margins = column_values(pairs, C.REWARD_MARGIN) if C.REWARD_MARGIN in names else [None] * len(pairs)
    return distances, margins


__all__ = ["AT_FDCWD", "PAUSE_ENV", "RENAME_EXCHANGE", "write_release"]
