"""The embedded N = 8 default at the size users curate: cost per response, peak memory, both cores (issue 15).

The default candidates (IFEval's 541 prompts x 8 generators) are replicated with new keys (``key +
1_000_000 * copy``) to each of ``--sizes`` prompts and written once per size to a Parquet file in a temp
dir. Each size then runs the default recipe's steps (ScreenResponses -> IFEvalVerifier -> PairMetrics
(words) -> every reference-free strategy + release) as ``hfpref curate --input FILE`` in a fresh subprocess
with a fresh ``--cache-dir``, in each of ``--modes``:

* ``single``: the local engine, one process;
* ``num_proc2``: the local engine with ``--num-proc 2``;
* ``ray``: ``--engine ray`` on a local cluster of 2 CPUs (2 workers).

Measured per run: wall seconds of the whole process (imports included); per stage (loading the input, each
step, the measured ranking, all pair strategies, writing the release) the wall seconds and seconds per
1,000 responses, taken inside the subprocess by wrapping the engine, ``Recipe.load_input``,
``generator_accuracy`` and ``write_release`` (``--child`` mode of this script: it installs the timers, then
calls ``hfpref.cli.main.main``); peak RSS of the whole process tree (the sum over the process and all its
descendants -- Ray's raylet, GCS and workers included -- polled every 0.2 s with psutil), and its anonymous
part (less the file-backed pages, mostly the memory-mapped Arrow cache, which the kernel can drop); the
release size.

The "bare parts" of the same work, measured in the same run (and so under the same load):

* ``lm_eval_s``: ``lm_eval.tasks.ifeval.utils.process_results(doc, [response])`` over every response of the
  541 base prompts, times the replication factor (the copies are the same texts, so grading them costs the
  same; measuring every copy would double a 69k run);
* ``cdist_s``: ``rapidfuzz.process.cdist`` per prompt on its responses' whitespace-split words, densely
  relabelled (``dense_symbols``) outside the timing, base prompts times the factor; timed as lists of ints
  and as strs of those ids (the form PairMetrics uses), each with ``workers`` 1 and -1, best of 3
  interleaved repeats: the fastest of the four counts, so the step is held to the best bare call;
* ``parquet_s``: ``pyarrow.parquet.write_table`` of every Parquet file of the run's release, read back into
  Arrow first (the full size, not scaled).

``curate_over_bare`` = the run's wall seconds / (lm_eval_s + cdist_s + parquet_s), the issue's target <= 1.3.
``pair_metrics_over_cdist`` = the PairMetrics stage / cdist_s (target <= 1.2). ``num_proc2_speedup`` =
single / num_proc2 on the steps' seconds (target >= 1.7), ``ray_over_num_proc2`` likewise (target <= 1.15).
``per_response_growth`` compares seconds per 1,000 responses of the largest size with 8.7k (target <= 1.2).

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_scale.py --sizes 541,8700 --modes single,num_proc2,ray
--out benchmarks/results/cpu-2core/scale.json``. Prints the JSON (and rewrites ``--out`` after every run, so a
long run stopped part-way keeps what finished).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import emit_report  # noqa: E402

BASE_PROMPTS = 541
MODES = {
    "single": [],
    "num_proc2": ["--num-proc", "2"],
    "ray": ["--engine", "ray", "--concurrency", "2"],
}
STEP_STAGES = ("step:ScreenResponses", "step:IFEvalVerifier", "step:PairMetrics", "pairs (all strategies)")


# ---- the child: hfpref curate with stage timers ---------------------------------------------------------
def _child(timings_path: str, argv: list[str]) -> int:
    """Run ``hfpref curate argv`` in this process with wall-clock timers around each stage."""
    sys.path.insert(0, str(ROOT))
    import resource

    import hfpref.release.writer as release
    import hfpref.steps.capabilities as capabilities
    from hfpref.cli import main as cli
    from hfpref.pipeline.engines.local import LocalEngine
    from hfpref.pipeline.recipe import Recipe

    times: dict[str, float] = {}
    maxrss: dict[str, float] = {}

    def add(stage: str, seconds: float) -> None:
        times[stage] = times.get(stage, 0.0) + seconds
        # this process's peak RSS so far (MB; Linux reports KB): which stage raised the peak
        maxrss[stage] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    def timed(stage_of, fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                add(stage_of(*args, **kwargs), time.perf_counter() - start)

        return wrapper

    def timed_pairs(fn):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            yield from fn(*args, **kwargs)
            add("pairs (all strategies)", time.perf_counter() - start)

        return wrapper

    engines = [LocalEngine]
    try:
        from hfpref.pipeline.engines.ray_engine import RayEngine

        engines.append(RayEngine)
    except ImportError:
        pass
    for engine in engines:
        engine.map_step = timed(lambda self, step, *a, **k: f"step:{step.name}", engine.map_step)
        engine.select_pairs = timed_pairs(engine.select_pairs)
    Recipe.load_input = timed(lambda *a, **k: "load input", Recipe.load_input)
    capabilities.generator_accuracy = timed(
        lambda *a, **k: "measured ranking", capabilities.generator_accuracy
    )
    release.write_release = timed(lambda *a, **k: "write release", release.write_release)
    start = time.perf_counter()
    profile_path = os.environ.get("BENCH_SCALE_PROFILE")  # cProfile the run into this file
    try:
        if profile_path:
            import cProfile

            profiler = cProfile.Profile()
            code = profiler.runcall(cli.main, argv)
            profiler.dump_stats(profile_path)
        else:
            code = cli.main(argv)
    finally:
        times["cli.main"] = time.perf_counter() - start
        Path(timings_path).write_text(json.dumps({"times": times, "maxrss_mb": maxrss}), encoding="utf-8")
    return code


# ---- the parent ------------------------------------------------------------------------------------------
def tree_rss(process: Any) -> tuple[int, int]:
    """Resident bytes of ``process`` and all its descendants (those that vanish mid-poll are skipped): all of
    it, and the anonymous part (RSS less the shared pages: the memory-mapped Arrow cache files that the
    kernel can drop are file-backed, and counted in the first number only)."""
    import psutil

    total = anonymous = 0
    for proc in [process, *process.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # exited between the listing and the read
            info = proc.memory_info()
            total += info.rss
            anonymous += info.rss - getattr(info, "shared", 0)
    return total, anonymous


def run_curate(input_file: Path, workdir: Path, mode: str) -> dict[str, Any]:
    """One ``hfpref curate`` subprocess (fresh cache): wall seconds, stage seconds, peak tree RSS, release."""
    import psutil

    cache, output, timings = (
        workdir / f"cache-{mode}",
        workdir / f"release-{mode}",
        workdir / f"t-{mode}.json",
    )
    command = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        str(timings),
        "curate",
        "--input",
        str(input_file),
        "--cache-dir",
        str(cache),
        "--output",
        str(output),
        "--no-progress",
        *MODES[mode],
    ]
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    child = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc = psutil.Process(child.pid)
    peak = [0, 0]
    done = threading.Event()

    def poll() -> None:
        while not done.is_set():
            with contextlib.suppress(psutil.Error):
                peak[:] = [max(a, b) for a, b in zip(peak, tree_rss(proc), strict=True)]
            done.wait(0.2)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    log, _ = child.communicate()
    wall = time.perf_counter() - start
    done.set()
    poller.join()
    if child.returncode != 0:
        raise RuntimeError(f"curate ({mode}) failed with exit {child.returncode}:\n{log[-4000:]}")
    recorded = json.loads(timings.read_text(encoding="utf-8"))
    stages = recorded["times"]
    size = sum(f.stat().st_size for f in output.rglob("*") if f.is_file())
    return {
        "wall_s": round(wall, 2),
        "stages_s": {k: round(v, 3) for k, v in stages.items()},
        "steps_s": round(sum(stages.get(s, 0.0) for s in STEP_STAGES), 3),
        "peak_rss_tree_mb": round(peak[0] / 2**20, 1),
        "peak_anonymous_rss_tree_mb": round(peak[1] / 2**20, 1),
        "main_process_maxrss_mb_after_stage": {k: round(v, 1) for k, v in recorded["maxrss_mb"].items()},
        "release_mb": round(size / 2**20, 2),
        "parquet_files": [str(p.relative_to(output)) for p in sorted(output.rglob("*.parquet"))],
        "load_average_1min_before": round(load_before, 2),
        "load_average_1min_after": round(os.getloadavg()[0], 2),
        "_release": output,
    }


def base_candidates() -> list[dict[str, Any]]:
    """The embedded default's candidates rows (541 prompts, N <= 8), as Python rows."""
    sys.path.insert(0, str(ROOT))
    from hfpref.pipeline.default_data import load_ifeval_candidates

    with tempfile.TemporaryDirectory() as cache:
        return load_ifeval_candidates(cache_dir=cache).to_list()


def write_input(rows: list[dict[str, Any]], prompts: int, path: Path) -> int:
    """``prompts`` rows cycling over ``rows`` with new keys, as one Parquet file; returns the response count."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    writer = None
    responses = 0
    chunk = len(rows)
    for first in range(0, prompts, chunk):
        copy = first // chunk
        part = [{**row, "key": row["key"] + 1_000_000 * copy} for row in rows[: min(chunk, prompts - first)]]
        responses += sum(sum(r is not None for r in row["responses"]) for row in part)
        table = pa.Table.from_pylist(part)
        if writer is None:
            writer = pq.ParquetWriter(path, table.schema)
        writer.write_table(table.cast(writer.schema))
    writer.close()
    return responses


def bare_grading(rows: list[dict[str, Any]]) -> float:
    """Seconds lm-eval's own IFEval grading takes for every response of ``rows``."""
    sys.path.insert(0, str(ROOT))
    from hfpref.steps.nltk_setup import use_packaged_nltk_data

    use_packaged_nltk_data()  # the verifier's Punkt tables, before lm-eval's import looks for them
    from langdetect import DetectorFactory
    from lm_eval.tasks.ifeval.utils import process_results

    DetectorFactory.seed = 0
    docs = [
        {
            "key": row["key"],
            "prompt": row["prompt"],
            "instruction_id_list": row["instruction_id_list"],
            # Arrow filled every argument in; lm-eval builds each check from the ones it takes
            "kwargs": [{k: v for k, v in kw.items() if v is not None} for kw in row["kwargs"]],
        }
        for row in rows
    ]
    process_results(docs[0], [rows[0]["responses"][0]])  # warm-up: langdetect's profiles
    start = time.perf_counter()
    for doc, row in zip(docs, rows, strict=True):
        for response in row["responses"]:
            if response is not None:
                process_results(doc, [response])
    return time.perf_counter() - start


def bare_cdist(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Seconds of ``rapidfuzz.process.cdist`` per prompt on its densely relabelled word ids, in each form
    rapidfuzz takes them (lists of ints, or strs whose characters are the ids) with one thread and with all
    cores (``workers`` 1 and -1), repeats interleaved, best of 3 each; the fastest is the bare part."""
    from rapidfuzz.distance import Levenshtein
    from rapidfuzz.process import cdist

    from hfpref.steps.pair_metrics import dense_symbols

    lists = [dense_symbols([(r or "").split() for r in row["responses"]]) for row in rows]
    # the same ids as characters (dense ids of one prompt stay far below the surrogates at 0xD800)
    strings = [["".join(map(chr, ids)) for ids in group] for group in lists]
    forms = {"lists": lists, "str": strings}
    seconds: dict[str, float] = {}
    for _ in range(3):
        for form, groups in forms.items():
            for workers in (1, -1):
                start = time.perf_counter()
                for ids in groups:
                    cdist(ids, ids, scorer=Levenshtein.distance, workers=workers)
                key = f"{form}_workers_{'all' if workers == -1 else workers}"
                seconds[key] = min(seconds.get(key, float("inf")), time.perf_counter() - start)
    return seconds


def bare_parquet(release: Path, scratch: Path) -> float:
    """Seconds pyarrow takes to write the release's Parquet files again (read into memory first)."""
    import pyarrow.parquet as pq

    tables = [pq.read_table(path) for path in sorted(release.rglob("*.parquet"))]
    start = time.perf_counter()
    for k, table in enumerate(tables):
        pq.write_table(table, scratch / f"bare-{k}.parquet")
    seconds = time.perf_counter() - start
    for k in range(len(tables)):
        (scratch / f"bare-{k}.parquet").unlink()
    return seconds


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--child":
        sys.exit(_child(sys.argv[2], sys.argv[3:]))
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="541,8700,69000", help="prompts per run, comma-separated")
    parser.add_argument("--modes", default="single,num_proc2,ray", help=f"of {list(MODES)}, comma-separated")
    parser.add_argument("--out", help="also write the JSON here (rewritten after every run)")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        parser.error(f"unknown modes {unknown}; choose from {list(MODES)}")

    rows = base_candidates()
    bare_lm_eval_base = bare_grading(rows)
    bare_cdist_base = bare_cdist(rows)
    result: dict[str, Any] = {
        "what": "hfpref curate, embedded N = 8 default replicated with new keys (issue 15)",
        "cpus": os.cpu_count(),
        "machine": platform.platform(),
        "python": platform.python_version(),
        "base": {
            "prompts": len(rows),
            "lm_eval_s": round(bare_lm_eval_base, 3),
            "cdist_relabelled_s": {form: round(v, 3) for form, v in bare_cdist_base.items()},
        },
        "sizes": {},
    }

    def dump() -> str:
        return emit_report(result, args.out, echo=False)

    for prompts in sizes:
        with tempfile.TemporaryDirectory(prefix=f"bench-scale-{prompts}-") as tmp:
            tmp = Path(tmp)
            input_file = tmp / "candidates.parquet"
            responses = write_input(rows, prompts, input_file)
            factor = prompts / len(rows)
            entry: dict[str, Any] = {
                "prompts": prompts,
                "responses": responses,
                "input_mb": round(input_file.stat().st_size / 2**20, 2),
                "bare": {
                    "lm_eval_s": round(bare_lm_eval_base * factor, 2),
                    "cdist_s": round(min(bare_cdist_base.values()) * factor, 3),
                },
                "runs": {},
            }
            result["sizes"][str(prompts)] = entry
            for mode in modes:
                run = run_curate(input_file, tmp, mode)
                release = run.pop("_release")
                if "parquet_s" not in entry["bare"]:
                    entry["bare"]["parquet_s"] = round(bare_parquet(release, tmp), 3)
                bare_sum = sum(entry["bare"][k] for k in ("lm_eval_s", "cdist_s", "parquet_s"))
                per_k = 1000 / responses
                run["per_1k_responses_s"] = {k: round(v * per_k, 4) for k, v in run["stages_s"].items()}
                run["per_1k_responses_s"]["wall"] = round(run["wall_s"] * per_k, 4)
                run["curate_over_bare"] = round(run["wall_s"] / bare_sum, 3)
                pm = run["stages_s"].get("step:PairMetrics")
                if pm is not None:
                    run["pair_metrics_over_cdist"] = round(pm / entry["bare"]["cdist_s"], 3)
                entry["runs"][mode] = run
                entry["bare_sum_s"] = round(bare_sum, 2)
                runs = entry["runs"]
                if "single" in runs and "num_proc2" in runs:
                    entry["num_proc2_speedup_steps"] = round(
                        runs["single"]["steps_s"] / runs["num_proc2"]["steps_s"], 3
                    )
                    entry["num_proc2_speedup_wall"] = round(
                        runs["single"]["wall_s"] / runs["num_proc2"]["wall_s"], 3
                    )
                if "ray" in runs and "num_proc2" in runs:
                    entry["ray_over_num_proc2_steps"] = round(
                        runs["ray"]["steps_s"] / runs["num_proc2"]["steps_s"], 3
                    )
                    entry["ray_over_num_proc2_wall"] = round(
                        runs["ray"]["wall_s"] / runs["num_proc2"]["wall_s"], 3
                    )
                print(
                    f"# {prompts} prompts, {mode}: {run['wall_s']} s, {run['peak_rss_tree_mb']} MB",
                    file=sys.stderr,
                )
                dump()
    # cost per response as the size grows: the largest size against 8.7k (or the smallest measured)
    measured = sorted(int(s) for s in result["sizes"])
    if len(measured) > 1:
        ref = "8700" if "8700" in result["sizes"] and measured[-1] != 8700 else str(measured[0])
        top = str(measured[-1])
        growth = {}
        for mode, run in result["sizes"][top]["runs"].items():
            base_run = result["sizes"][ref]["runs"].get(mode)
            if base_run:
                growth[mode] = round(
                    run["per_1k_responses_s"]["wall"] / base_run["per_1k_responses_s"]["wall"], 3
                )
        result["per_response_growth"] = {"from": ref, "to": top, "wall_ratio": growth}
    print(dump())


if __name__ == "__main__":
    main()
