"""Release folders: Parquet data per config, a dataset card, a plot and a machine-readable manifest.

Layout (the same files are pushed to the Hub, so ``load_dataset(folder, name=...)`` and
``load_dataset(repo_id, name=..., revision=tag)`` read the same rows)::

    FOLDER/
      README.md                                   dataset card; its YAML header declares the configs
      hfpref_manifest.json                        the recipe as run, models, versions, counts, statistics
      pairs_distance_reward_margin.png            the pairs in the e_Δ / r_Δ plane
      data/<config>/train-00000-of-00001.parquet     one config per pair strategy, maker and mix (kept pairs)
      data/candidates/train-00000-of-00001.parquet   the annotated candidates

The card is rendered from the manifest alone (``render_card``), so ``hfpref push`` can rewrite the
version and repository id into both before uploading.

Writing is atomic and locked (``write_release``): the release is built in a hidden sibling folder and
swapped in when complete, while ``FOLDER.lock`` keeps other writers out; the manifest's ``files`` holds the
sha256 of every file as written (``verify_release`` checks them).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import re
import shutil
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata, resources
from pathlib import Path
from typing import Any

from hfpref.core import columns as C
from hfpref.core.errors import UserError
from hfpref.pipeline.recipe import CANDIDATES_CONFIG, RecipeResult, check_version
from hfpref.release.plots import PLOT_FILE, plot_pairs_plane
from hfpref.release.summary import (
    METRICS,
    candidates_summary,
    column_batches,
    column_values,
    describe_values,
    pair_agreement,
    reference_config,
    strategy_summary,
)

MANIFEST_FILE = "hfpref_manifest.json"
CARD_FILE = "README.md"
CARD_TEMPLATE = "dataset_card.md.j2"
MANIFEST_FORMAT = "hfpref-release/1"
DATA_FILE = "data/{config}/train-00000-of-00001.parquet"
DATA_GLOB = "data/{config}/train-*.parquet"
PACKAGES = (
    "hfpref",
    "datasets",
    "transformers",
    "trl",
    "lm-eval",
    "rapidfuzz",
    "torch",
    "huggingface_hub",
    "pyarrow",
)
MATRIX_COLUMNS = (C.EDIT_DISTANCE_MATRIX, C.LOGP_DIFF_MATRIX, C.REWARD_MARGIN_MATRIX, C.DCRM_MATRIX)
# config fields that name a model or tokenizer; their resolved commits go on the card
MODEL_FIELDS = ("model", "tokenizer", "reward_model", "ref_model", "policy_model", "judge_model")


class ReleaseError(UserError):
    """A release folder that cannot be written or read as asked."""


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def model_references(described_steps: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every model or tokenizer a step's config names, with the commit the step resolved it to."""
    refs = []
    for described in described_steps:
        config = described.get("config") or {}
        for field in MODEL_FIELDS:
            value = config.get(field)
            if isinstance(value, str) and value:
                refs.append(
                    {
                        "step": described["step"],
                        "field": field,
                        "id": value,
                        "requested_revision": config.get(f"{field}_revision", config.get("revision")),
                        "revision": described.get("revision"),
                    }
                )
    return refs


def _edit_distance_unit(result: RecipeResult) -> str | None:
    unit = result.edit_distance_unit()
    if unit is not None:
        return unit
    for step in result.steps:  # the pair-metrics step may expose it without writing a column
        unit = getattr(step, "edit_distance_unit", None)
        if isinstance(unit, str):
            return unit
    return None


def build_manifest(
    result: RecipeResult, *, version: str, repo_id: str | None = None, created_at: str | None = None
) -> dict[str, Any]:
    """The machine-readable record of a release; deterministic except ``created_at``."""
    recipe = result.recipe
    ranking = result.generator_ranking
    steps = []
    for described, rows in zip(
        (s.describe() for s in result.steps), result.step_rows or [{}] * len(result.steps), strict=True
    ):
        steps.append({**described, **rows})
    selection = {strategy: selector.describe() for strategy, selector in result.selectors.items()}
    origins = config_origins(recipe)
    configs: dict[str, Any] = {}
    first_with_digest: dict[str, str] = {}
    for strategy, pairs in result.pairs.items():
        digest = pairs_digest(pairs)
        configs[strategy] = {
            "kind": "pairs",
            "data_files": DATA_GLOB.format(config=strategy),
            "pairs_sha256": digest,
            "same_pairs_as": first_with_digest.get(digest),
            "columns": [c for c in pairs.column_names if c != C.DROP_REASON],
            **strategy_summary(pairs, result.dropped[strategy], ranking),
        }
        if strategy in origins:  # only makers and mixes: a strategy's entry stays as it always was
            configs[strategy]["made_by"] = origins[strategy]
        first_with_digest.setdefault(digest, strategy)
    # how the strategies differ: same pair as the reference strategy, per prompt both kept
    agreement = pair_agreement(result.pairs)
    reference = reference_config(list(result.pairs))
    for strategy in result.pairs:
        configs[strategy]["same_pair_as_reference"] = {
            "reference": reference,
            **agreement[strategy][reference],
        }
    kept_candidate_columns, dropped_candidate_columns = _candidate_columns(result)
    configs[CANDIDATES_CONFIG] = {
        "kind": "candidates",
        "data_files": DATA_GLOB.format(config=CANDIDATES_CONFIG),
        "rows": len(result.candidates),
        "columns": kept_candidate_columns,
        "dropped_columns": dropped_candidate_columns,
    }
    input_info = dict(result.input_info)
    license_ = recipe.output.license or input_info.get("license") or "other"
    recipe_as_run = recipe.to_dict()
    # "all" resolved to the strategies that ran (makers and mixes have their own lists)
    recipe_as_run["pairs"]["strategies"] = [name for name in result.pairs if name not in origins]
    recipe_as_run["output"]["version"] = version
    return {
        "format": MANIFEST_FORMAT,
        "name": recipe.output.name,
        "version": version,
        "repo_id": repo_id,
        "description": recipe.description,
        "license": license_,
        "created_at": created_at or _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "recipe": recipe_as_run,
        "recipe_yaml": recipe_yaml(recipe_as_run),
        "input": input_info,
        "steps": steps,
        "pair_selection": selection,
        "skipped_strategies": dict(result.skipped_strategies),
        "models": model_references([*steps, *selection.values()]),
        "edit_distance_unit": _edit_distance_unit(result),
        "has_logp": any(
            (c["stats"] or {}).get(C.LOGP_DIFF) for c in configs.values() if c["kind"] == "pairs"
        ),
        "generator_ranking": list(ranking) if ranking else None,
        "generator_ranking_source": result.ranking_source,  # "measured", "given" or None
        "generator_accuracy": result.generator_accuracy,  # hfpref.steps.capabilities, when measured
        "pair_agreement": {a: {b: v["fraction"] for b, v in row.items()} for a, row in agreement.items()},
        "candidates_summary": candidates_summary(result.candidates),
        # generator capabilities as the generator-delta tags use them: the measured accuracies above
        # (prompt-level, the ranking's numbers) or a sweep's table; "given" when the recipe typed them
        "generator_capabilities": _generator_capabilities(result),
        "delta_sweeps": dict(result.sweeps),
        "sample_delta_filters": dict(result.filters),
        "packages": package_versions(),
        "default_config": next(iter(result.pairs), CANDIDATES_CONFIG),
        "configs": configs,
        "plot": PLOT_FILE,
    }


def _generator_capabilities(result: RecipeResult) -> dict[str, Any] | None:
    """The capability table of the release: a sweep's (all sweeps of a run measure the same way unless one is
    given), else the measured generator accuracy's prompt-level values with their Wilson intervals."""
    for sweep in result.sweeps.values():
        return sweep["capabilities"]
    if result.generator_accuracy:
        return {
            "source": "measured",
            "measure": "ifeval_prompt_level",
            "capability_name": "ifeval_prompt_level_strict_accuracy",
            "confidence": result.generator_accuracy[0]["confidence"],
            "capabilities": {a["generator"]: a["prompt_level"] for a in result.generator_accuracy},
            "intervals": {a["generator"]: list(a["prompt_level_ci"]) for a in result.generator_accuracy},
            "responses": {a["generator"]: a["responses"] for a in result.generator_accuracy},
        }
    return None


def config_origins(recipe: Any) -> dict[str, dict[str, Any]]:
    """config -> what made it, for the configs of pair makers and mixes (strategies are not listed)."""
    origins: dict[str, dict[str, Any]] = {}
    for maker in recipe.pairs.makers:
        origins[maker.name] = {"kind": "maker", "step": maker.step, "source": maker.source}
    for mix in recipe.pairs.mixes:
        origins[mix.name] = {"kind": "mix", "from": list(mix.from_)}
    for sweep in recipe.pairs.sweeps:
        for level, rejected in zip(sweep.level_names(), sweep.rejected, strict=True):
            origins[level] = {
                "kind": "sweep",
                "sweep": sweep.name,
                "chosen": sweep.chosen,
                "rejected": rejected,
            }
    for spec in recipe.pairs.filters:
        origins[spec.name] = {"kind": "filter", "from": spec.from_}
    return origins


def recipe_yaml(recipe: Mapping[str, Any]) -> str:
    """A recipe dict as the YAML ``hfpref curate`` reads (the card shows it)."""
    import yaml

    return yaml.safe_dump(dict(recipe), sort_keys=False, allow_unicode=True, width=100)


def pairs_digest(pairs) -> str:
    """sha256 over the (prompt, chosen, rejected) rows of a pairs dataset, in order: equal digests mean
    two strategies picked exactly the same pairs (common with few candidates per prompt)."""
    digest = hashlib.sha256()
    # batch by batch: three whole text columns of a large config as Python strings would be gigabytes
    for batch in column_batches(pairs, [C.PROMPT, C.CHOSEN, C.REJECTED]):
        for prompt, chosen, rejected in zip(batch[C.PROMPT], batch[C.CHOSEN], batch[C.REJECTED], strict=True):
            digest.update(json.dumps([prompt, chosen, rejected], ensure_ascii=False).encode())
            digest.update(b"\n")
    return digest.hexdigest()


def strategy_groups(configs: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """first strategy -> every pairs config holding exactly its pairs (itself first), in manifest order."""
    groups: dict[str, list[str]] = {}
    for name, config in configs.items():
        if config.get("kind") != "pairs":
            continue
        groups.setdefault(config.get("same_pairs_as") or name, []).append(name)
    return groups


def _candidate_columns(result: RecipeResult) -> tuple[list[str], list[str]]:
    names = result.candidates.column_names
    dropped = [] if result.recipe.output.candidate_matrices else [c for c in MATRIX_COLUMNS if c in names]
    return [c for c in names if c not in dropped], dropped


# ---- writing a release: locked, staged beside the old one, swapped in ----------------------------------

# Test hook, never set in normal use: seconds the writer sleeps after each file and swap step, so a test can
# kill it (SIGKILL) at a known point of the write.
PAUSE_ENV = "HFPREF_TEST_RELEASE_PAUSE"
RENAME_EXCHANGE = 2  # linux/fs.h: swap two paths atomically (renameat2)
AT_FDCWD = -100


class ReleaseLockedError(ReleaseError):
    """Another run (or push) holds the release folder's lock."""


def _real(folder: str | Path) -> Path:
    """The absolute folder; a symlinked release folder is its target (the link stays, the target is
    replaced, and the lock and staging folder lie beside the target)."""
    return Path(os.path.realpath(folder) if Path(folder).is_symlink() else os.path.abspath(folder))


def lock_path(folder: str | Path) -> Path:
    """The lock file of a release folder: beside it (``FOLDER.lock``), so it survives the folder's swap."""
    folder = _real(folder)
    return folder.with_name(folder.name + ".lock")


def staging_dir(folder: str | Path) -> Path:
    """Where the next release of ``folder`` is built: a hidden sibling, on the same file system."""
    folder = _real(folder)
    return folder.with_name(f".{folder.name}.hfpref-new")


def _backup_dir(folder: Path) -> Path:
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


def _pause(where: str) -> None:
    """The test hook between two writes (see ``PAUSE_ENV``); tests also replace it to simulate crashes."""
    seconds = os.environ.get(PAUSE_ENV)
    if seconds:
        time.sleep(float(seconds))


def _recover(folder: Path) -> None:
    """Finish what a killed writer left (called under the lock): restore an old release that a swap by two
    renames moved aside before the new one was in place, and remove the staging and backup folders."""
    backup = _backup_dir(folder)
    if backup.exists():
        if folder.exists():  # killed after the new release was in place: the old one is just garbage
            shutil.rmtree(backup)
        else:  # killed between the two renames: put the old release back
            os.rename(backup, folder)
    shutil.rmtree(staging_dir(folder), ignore_errors=True)
    for name in (MANIFEST_FILE, CARD_FILE):  # a rewrite of the manifest and card (push) killed midway
        _temporary(folder / name).unlink(missing_ok=True)


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
    # two renames: a crash between them leaves no folder, and the next run restores the old one (_recover)
    backup = _backup_dir(folder)
    os.rename(folder, backup)
    _pause("swap: old moved aside")
    os.rename(staging, folder)
    _pause("swap: new in place")
    shutil.rmtree(backup)


def write_release(
    result: RecipeResult,
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
        target = _real(folder)
        _recover(target)
        _check_target(target, recipe.output.name, overwrite, force)
        staging = staging_dir(target)
        staging.mkdir(parents=True)
        try:
            _write_staged(
                result, staging, version=version, repo_id=repo_id, created_at=created_at, extra=extra
            )
            _swap_in(staging, target)
        except Exception:  # an error (not a kill): leave the old release as it was, and no staging folder
            shutil.rmtree(staging, ignore_errors=True)
            _recover(target)
            raise
    return folder


def _write_staged(
    result: RecipeResult,
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
        _write_parquet(pairs.select_columns(keep), staging / written[-1])
        _pause(f"data: {strategy}")
    kept_columns, _ = _candidate_columns(result)
    written.append(DATA_FILE.format(config=CANDIDATES_CONFIG))
    _write_parquet(result.candidates.select_columns(kept_columns), staging / written[-1])
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
    result: RecipeResult, manifest: dict[str, Any], staging: Path, version: str
) -> list[str]:
    """The sweep analysis plot (with sweeps) and the sample-delta distributions (when a judge scored some
    config); their file names go into the manifest (``delta_plots``) for the card."""
    from hfpref.steps.delta_sweep import (
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


def _write_parquet(dataset, path: Path) -> None:
    import datasets

    path.parent.mkdir(parents=True, exist_ok=True)
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()  # one bar per small file is noise
    try:
        dataset.to_parquet(str(path))
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def read_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST_FILE
    if not path.exists():
        raise ReleaseError(f"{folder} is not an hfpref release folder: {MANIFEST_FILE} is missing")
    return json.loads(path.read_text(encoding="utf-8"))


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


def write_manifest_and_card(folder: str | Path, manifest: Mapping[str, Any]) -> None:
    """Write the manifest, then the card rendered from it; each file is replaced whole (temporary file,
    then rename), so a reader or a kill never meets half a manifest."""
    folder = Path(folder)
    text = json.dumps(manifest, indent=2, ensure_ascii=False, sort_keys=False) + "\n"
    _replace_text(folder / MANIFEST_FILE, text)
    _replace_text(folder / CARD_FILE, render_card(manifest))


def _temporary(path: Path) -> Path:
    return path.with_name(f".{path.name}.hfpref-tmp")


def _replace_text(path: Path, text: str) -> None:
    temporary = _temporary(path)
    with temporary.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


def set_release_version(folder: str | Path, version: str, repo_id: str | None = None) -> dict[str, Any]:
    """Write ``version`` (and ``repo_id``) into the manifest and re-render the card; return the manifest."""
    manifest = read_manifest(folder)
    manifest["version"] = check_version(version)
    manifest["recipe"].setdefault("output", {})["version"] = version
    manifest["recipe_yaml"] = recipe_yaml(manifest["recipe"])
    if repo_id is not None:
        manifest["repo_id"] = repo_id
    write_manifest_and_card(folder, manifest)
    return manifest


# ---- the card ----------------------------------------------------------------------------------------


def _size_category(rows: int) -> str:
    for limit, label in (
        (1_000, "n<1K"),
        (10_000, "1K<n<10K"),
        (100_000, "10K<n<100K"),
        (1_000_000, "100K<n<1M"),
    ):
        if rows < limit:
            return label
    return "n>1M"


def card_header(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The card's YAML metadata: license, tags and the configs that ``load_dataset`` reads."""
    configs = []
    for name, config in manifest["configs"].items():
        entry: dict[str, Any] = {
            "config_name": name,
            "data_files": [{"split": "train", "path": config["data_files"]}],
        }
        if name == manifest["default_config"]:
            entry["default"] = True
        configs.append(entry)
    largest = max((c["rows"] for c in manifest["configs"].values()), default=0)
    return {
        "license": manifest["license"],
        "pretty_name": manifest["name"],
        "tags": ["dpo", "preference", "hfpref", "dcrm"],
        "task_categories": ["text-generation"],
        "size_categories": [_size_category(largest)],
        "configs": configs,
    }


def _fmt(value: Any, digits: int = 4) -> str:
    """A number with ``digits`` significant digits (DCRM values are small, distances large)."""
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:.{digits}g}"
    return str(value)


def render_card(manifest: Mapping[str, Any]) -> str:
    """The dataset card (README.md) for a manifest, from ``cards/dataset_card.md.j2``."""
    import jinja2
    import yaml

    template_text = (resources.files("hfpref.cards") / CARD_TEMPLATE).read_text(encoding="utf-8")
    env = jinja2.Environment(
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined
    )
    env.filters["fmt"] = _fmt
    # embedded markdown (provenance notes) must not open new top-level sections of the card
    env.filters["demote_headings"] = lambda text: re.sub(r"(?m)^(#+) ", r"###\1 ", text)
    header = yaml.safe_dump(card_header(manifest), sort_keys=False, allow_unicode=True).strip()
    pairs_configs = {k: v for k, v in manifest["configs"].items() if v["kind"] == "pairs"}
    return env.from_string(template_text).render(
        m=manifest,
        header=header,
        pairs_configs=pairs_configs,
        made={name: c["made_by"] for name, c in pairs_configs.items() if "made_by" in c},
        candidates=manifest["configs"][CANDIDATES_CONFIG],
        metrics=METRICS,
        groups=strategy_groups(manifest["configs"]),
        manifest_file=MANIFEST_FILE,
        tag=f"v{manifest['version']}",
    )


# ---- pushing -----------------------------------------------------------------------------------------


class ReleaseExistsError(ReleaseError):
    """The Hub repository already has this version's tag; versions are never silently overwritten."""


def release_branch(version: str) -> str:
    """The branch a version is committed to when no revision is given (a tag of the same name would clash)."""
    return f"release-v{version}"


def push_release(
    folder: str | Path,
    repo_id: str,
    version: str,
    *,
    revision: str | None = None,
    private: bool = False,
    token: str | None = None,
    force: bool = False,
    api: Any = None,
) -> dict[str, Any]:
    """Upload a release folder (card included) to a Hub dataset repo and tag the commit ``v{version}``.

    The commit goes to ``revision`` (a branch; default ``release-v{version}``, created from main when
    missing). Refuses, before changing anything, when the tag already exists, unless ``force`` (then the
    tag is moved to the new commit). The version and repo id are written into the manifest and card first.
    Returns {repo_id, revision, tag, commit, url}.
    """
    folder = Path(folder)
    # locked like a curate run: the manifest and card are rewritten, and the folder must not be swapped
    # under the upload
    with release_lock(folder):
        _recover(_real(folder))
        return _push_locked(
            folder, repo_id, version, revision=revision, private=private, token=token, force=force, api=api
        )


def _push_locked(
    folder: Path,
    repo_id: str,
    version: str,
    *,
    revision: str | None,
    private: bool,
    token: str | None,
    force: bool,
    api: Any,
) -> dict[str, Any]:
    from huggingface_hub import HfApi

    manifest = read_manifest(folder)  # fail early on a folder that is not a release
    if manifest.get("files") is not None:  # releases of older hfpref versions have no hashes to check
        problems = verify_release(folder)
        if problems:
            raise ReleaseError(
                f"{folder} does not match its {MANIFEST_FILE}, not pushing it: {'; '.join(problems)}. "
                "Write the release again with hfpref curate"
            )
    check_version(version)
    tag = f"v{version}"
    branch = revision or release_branch(version)
    api = api if api is not None else HfApi(token=token)

    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    refs = api.list_repo_refs(repo_id, repo_type="dataset")
    tag_exists = any(ref.name == tag for ref in refs.tags)
    if tag_exists and not force:
        raise ReleaseExistsError(
            f"{repo_id} already has the tag {tag}; a released version is never overwritten. "
            "Use a new --version, or --force to move the tag to this upload."
        )
    set_release_version(folder, version, repo_id)
    if branch != "main" and not any(ref.name == branch for ref in refs.branches):
        api.create_branch(repo_id, branch=branch, repo_type="dataset", exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=str(folder),
        repo_type="dataset",
        revision=branch,
        commit_message=f"hfpref release {tag}",
        # data files of configs this version no longer has must not linger on the branch
        delete_patterns=["data/**"],
        ignore_patterns=[".cache/**", "**/.cache/**", "*.lock"],
    )
    if tag_exists:
        api.delete_tag(repo_id, tag=tag, repo_type="dataset")
    api.create_tag(
        repo_id, tag=tag, revision=commit.oid, repo_type="dataset", tag_message=f"hfpref release {tag}"
    )
    return {
        "repo_id": repo_id,
        "revision": branch,
        "tag": tag,
        "commit": commit.oid,
        "url": commit.commit_url,
    }
