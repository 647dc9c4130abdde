"""Fault tolerance of release writing: runs killed (SIGKILL) at random points and inside the release writer,
crashes at every point of the writer, and concurrent runs into one folder.

Each check ends with the same two facts: the release folder, whenever it exists, is consistent (its manifest's
sha256 of every file matches the bytes on disk, and no file is unlisted), and a rerun gives exactly the release
an uninterrupted run gives (byte for byte, except the manifest's ``created_at`` and the card's line showing it).
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import filelock
import pytest

from hfpref.cli.main import main
from hfpref.release import writer as REL
from tests.helpers import kill_when
from tests.test_release import make_small_release

REPO = Path(__file__).resolve().parents[1]
ROWS = [
    {"key": k, "prompt": f"p{k}", "responses": [f"a {k}", f"a b {k}", "c"], "rewards": [1.0, 0.0, 0.5]}
    for k in range(6)
]


# ---- what a consistent release is, computed here independently of hfpref.release.writer -------------------


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def assert_consistent(folder: Path) -> dict:
    """The folder's manifest lists every file but itself and the card, with the sha256 of its bytes."""
    manifest = json.loads((folder / "hfpref_manifest.json").read_text(encoding="utf-8"))
    on_disk = {
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and ".cache" not in p.parts
    }
    listed = manifest["files"]
    assert on_disk == {*listed, "hfpref_manifest.json", "README.md"}, "files and manifest disagree"
    for name, entry in listed.items():
        assert entry["sha256"] == sha256(folder / name), name
        assert entry["bytes"] == (folder / name).stat().st_size, name
    for config, entry in manifest["configs"].items():  # every config's data is there
        assert list(folder.glob(entry["data_files"])), config
    assert f"Made {manifest['created_at']}." in (folder / "README.md").read_text(encoding="utf-8")
    return manifest


def snapshot(folder: Path) -> dict[str, object]:
    """Every file's bytes, the manifest parsed without created_at, the card with created_at blanked."""
    manifest = json.loads((folder / "hfpref_manifest.json").read_text(encoding="utf-8"))
    created = manifest.pop("created_at")
    out: dict[str, object] = {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in ("hfpref_manifest.json", "README.md")
    }
    out["manifest"] = manifest
    out["card"] = (folder / "README.md").read_text(encoding="utf-8").replace(created, "CREATED")
    return out


def leftovers(parent: Path, name: str) -> list[str]:
    """Anything the writer of ``parent/name`` left beside it (its lock file is kept, as filelock does)."""
    return sorted(p.name for p in parent.iterdir() if name in p.name and p.name not in (name, f"{name}.lock"))


# ---- curate as a subprocess ---------------------------------------------------------------------------


def _project(tmp_path: Path) -> Path:
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS), encoding="utf-8")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(
        json.dumps(
            {
                "input": {"path": str(data)},
                "steps": [{"step": "PairMetrics", "config": {"tokenizer": None}}],
                "pairs": {"strategies": ["max_margin", "best_of_n2", "random"]},
                "output": {"name": "faults", "version": "0.1.0"},
            }
        ),
        encoding="utf-8",
    )
    return recipe


def _curate(cwd: Path, recipe: Path, *extra: str, pause: float | None = None) -> subprocess.Popen:
    """``hfpref curate RECIPE -o release`` in ``cwd`` (a relative folder: the manifest records it as given)."""
    cwd.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(REL.PAUSE_ENV, None)
    if pause is not None:
        env[REL.PAUSE_ENV] = str(pause)
    args = ["curate", str(recipe), "-o", "release", "--cache-dir", str(cwd.parent / "cache"), "--no-progress"]
    return subprocess.Popen(
        [sys.executable, "-m", "hfpref.cli.main", *args, *extra],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def _finish(proc: subprocess.Popen) -> tuple[int, str]:
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err


def _staged_files(folder: Path) -> int:
    staging = REL.staging_dir(folder)
    return sum(1 for p in staging.rglob("*") if p.is_file()) if staging.exists() else 0


def test_killed_runs_leave_a_consistent_folder_and_a_rerun_equals_an_uninterrupted_run(tmp_path):
    recipe = _project(tmp_path)
    started = time.monotonic()
    code, err = _finish(_curate(tmp_path / "ref", recipe))
    duration = time.monotonic() - started
    assert code == 0, err
    expected = snapshot(tmp_path / "ref" / "release")
    assert_consistent(tmp_path / "ref" / "release")

    work = tmp_path / "work"
    folder = work / "release"
    # 1. SIGKILL at random moments of fresh runs (import, input, steps, selection or writing)
    rng = random.Random(13)
    for delay in sorted(rng.uniform(0.3, duration) for _ in range(2)):
        proc = _curate(work, recipe)
        time.sleep(delay)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        if folder.exists():
            assert_consistent(folder)
    # 2. SIGKILL inside the writer of a fresh folder, two files written: no half-written folder appears
    if folder.exists():  # a random kill may have come after the swap
        shutil.rmtree(folder)
    proc = _curate(work, recipe, pause=0.3)
    kill_when(proc, lambda: _staged_files(folder) >= 2, "two staged files")
    assert not folder.exists(), "a killed writer must not leave a half-written release folder"

    # 3. a finished release of other rows, then SIGKILL inside the writer replacing it: the old one stays whole
    other = tmp_path / "other.jsonl"
    other.write_text("".join(json.dumps({**r, "prompt": r["prompt"] + "!"}) + "\n" for r in ROWS))
    code, err = _finish(_curate(work, recipe, "--input", str(other)))
    assert code == 0, err
    before = snapshot(folder)
    proc = _curate(work, recipe, pause=0.3)
    kill_when(proc, lambda: _staged_files(folder) >= 3, "three staged files")
    assert_consistent(folder)
    assert snapshot(folder) == before, "the old release is intact until the new one is swapped in"

    # 4. the same command again finishes the job: the release of an uninterrupted run, nothing left over
    code, err = _finish(_curate(work, recipe))
    assert code == 0, err
    manifest = assert_consistent(folder)
    assert snapshot(folder) == expected
    assert manifest["input"]["files_sha256"] == {
        str(tmp_path / "rows.jsonl"): sha256(tmp_path / "rows.jsonl")
    }
    assert leftovers(work, "release") == []


def test_concurrent_runs_into_one_folder_one_wins_the_other_fails_at_once(tmp_path):
    recipe = _project(tmp_path)
    work = tmp_path / "work"
    # the writer pauses 0.8 s per file, so the winner holds the lock for seconds after the loser asks
    procs = [_curate(work, recipe, pause=0.8) for _ in range(2)]
    results = [_finish(p) for p in procs]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    lock = work / "release.lock"
    assert "hfpref curate: error:" in loser and "is being written by another hfpref run" in loser
    assert str(work / "release") in loser and str(lock) in loser
    assert "Traceback" not in loser
    assert_consistent(work / "release")
    assert leftovers(work, "release") == []


def test_a_held_lock_fails_the_run_before_any_step(tmp_path, capsys):
    recipe = _project(tmp_path)
    out = tmp_path / "out"
    with filelock.FileLock(str(tmp_path / "out.lock")):  # another process's lock: a separate lock object
        code = main(
            ["curate", str(recipe), "-o", str(out), "--cache-dir", str(tmp_path / "c"), "--no-progress"]
        )
    assert code == 2
    err = capsys.readouterr().err
    assert f"{out} is being written by another hfpref run" in err and str(tmp_path / "out.lock") in err
    assert not out.exists() and not (tmp_path / "c").exists(), "no step ran"


# ---- a crash at every point of the writer, in this process --------------------------------------------


class Killed(BaseException):
    """Stands for SIGKILL: not an Exception, so the writer's error clean-up does not run."""


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2-exchange", "two-renames"])
def test_a_crash_at_every_point_of_the_writer(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(REL, "_exchange", lambda staging, folder: False)
    else:
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        (tmp_path / "a" / "x").touch()
        if not REL._exchange(tmp_path / "a", tmp_path / "b"):
            pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
        assert (tmp_path / "b" / "x").exists() and not (tmp_path / "a" / "x").exists()
    # matplotlib takes most of a write's second: the writes below reuse each release's real plot bytes
    drawn: dict[tuple, bytes] = {}
    real_plot = REL.plot_pairs_plane

    def plot(groups, path, **kwargs):
        if tuple(groups) not in drawn:
            real_plot(groups, path, **kwargs)
            drawn[tuple(groups)] = Path(path).read_bytes()
        Path(path).write_bytes(drawn[tuple(groups)])

    monkeypatch.setattr(REL, "plot_pairs_plane", plot)
    stamp = {"created_at": "2026-01-01T00:00:00+00:00"}
    results = {
        "three": make_small_release(tmp_path, folder_name="three", **stamp),
        "one": make_small_release(tmp_path, folder_name="one", strategies=["max_margin"], **stamp),
    }
    expected = {name: snapshot(folder) for name, (_, folder) in results.items()}
    folder = tmp_path / "rel"
    REL.write_release(results["three"][0], folder, **stamp)

    points: dict[str, list[str]] = {}
    for target in ("one", "three"):  # the pause points of a write of each over the other
        monkeypatch.setattr(
            REL, "_pause", lambda where, target=target: points.setdefault(target, []).append(where)
        )
        REL.write_release(results[target][0], folder, **stamp)
    swaps = ["swap: exchanged"] if exchange else ["swap: old moved aside", "swap: new in place"]
    assert points["one"] == ["data: max_margin", "data: candidates", "plot", "manifest and card", *swaps]
    assert len(points["three"]) == len(points["one"]) + 2

    current = "three"
    for target, n in [(t, n) for n in range(len(points["three"])) for t in ("one", "three")]:
        if n >= len(points[target]):
            continue
        if not exchange and not points[target][n].startswith("swap"):
            continue  # the points before the swap are the same code in both modes: tested once
        calls: list[str] = []

        def crash(where, n=n, calls=calls):
            calls.append(where)
            if len(calls) > n:
                raise Killed(where)

        monkeypatch.setattr(REL, "_pause", crash)
        with pytest.raises(Killed):
            REL.write_release(results[target][0], folder, **stamp)
        monkeypatch.setattr(REL, "_pause", lambda where: None)
        if folder.exists():  # a crash between two renames leaves no folder until the next run restores it
            assert_consistent(folder)
            assert snapshot(folder) in (expected[current], expected[target]), calls[-1]
        else:
            assert calls[-1] == "swap: old moved aside", calls[-1]
        REL.write_release(results[target][0], folder, **stamp)  # the rerun finishes the job
        assert_consistent(folder)
        assert snapshot(folder) == expected[target], calls[-1]
        assert leftovers(tmp_path, "rel") == []
        current = target


def test_an_error_in_the_writer_cleans_up_and_keeps_the_old_release(tmp_path, monkeypatch):
    result, folder = make_small_release(tmp_path, folder_name="rel")
    before = snapshot(folder)

    def fail(where):
        if where.startswith("plot"):
            raise OSError("disk full")

    monkeypatch.setattr(REL, "_pause", fail)
    with pytest.raises(OSError, match="disk full"):
        REL.write_release(result, folder)
    assert snapshot(folder) == before and leftovers(tmp_path, "rel") == []
