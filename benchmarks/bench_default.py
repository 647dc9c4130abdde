"""The embedded default (``hfpref curate`` with no recipe: 541 prompts x 8 generators) from a cold cache.

Measures, on this machine, as JSON on stdout:

* ``cli_cold_s``: ``python -m hfpref.cli.main curate --cache-dir EMPTY --output FOLDER`` in a fresh process,
  imports included: what a user waits for the first time;
* ``cli_warm_s``: the same command again (every step a cache hit);
* ``*_cpu_s`` / ``cpu``: the CPU seconds of the same (user + system), which a busy machine inflates less;
* ``stages_s``: an in-process run with another empty cache, per stage: loading the input (the join of
  prompts and responses), each step (``ScreenResponses``, ``IFEvalVerifier``, ``PairMetrics``), the
  measured generator ranking, all pair strategies together, and writing the release (Parquet, plot,
  manifest, card).

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_default.py [--output results.json]``.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import StageClock, emit_report  # noqa: E402


def _cli(cache: Path, output: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of one ``hfpref curate`` process."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    start = time.perf_counter()
    subprocess.run(
        [
            sys.executable,
            "-m",
            "hfpref.cli.main",
            "curate",
            "--cache-dir",
            str(cache),
            "--output",
            str(output),
            "--no-progress",
        ],
        check=True,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def _stages(cache: Path, output: Path) -> dict[str, dict[str, float]]:
    """Each stage of ``Recipe.run`` and ``write_release``, timed by wrapping the engine and the input."""
    from hfpref.pipeline.engines.local import LocalEngine
    from hfpref.pipeline.recipe import Recipe, default_recipe
    from hfpref.release.writer import write_release

    clock = StageClock()

    class TimedEngine(LocalEngine):
        def map_step(self, step, dataset, **kwargs):
            with clock.stage(f"step:{step.name}"):
                return super().map_step(step, dataset, **kwargs)

        def select_pairs(self, selectors, candidates, **kwargs):
            with clock.stage("pairs (all strategies)"):
                yield from super().select_pairs(selectors, candidates, **kwargs)

    class TimedRecipe(Recipe):
        def load_input(self, cache_dir=None):
            with clock.stage("load input"):
                return super().load_input(cache_dir)

    recipe = TimedRecipe(**{f: getattr(default_recipe(), f) for f in ("input", "steps", "pairs", "output")})
    total = StageClock()  # the whole run, listed after the stages inside it
    with total.stage("run total (load + steps + ranking + pairs)"):
        result = recipe.run(cache_dir=cache, progress=False, engine=TimedEngine())
    # the measured ranking runs inside Recipe.run between the steps and the pairs; time it on its own
    from hfpref.steps.capabilities import generator_accuracy

    with clock.stage("measured ranking"):
        generator_accuracy(result.candidates)
    with clock.stage("write release"):
        write_release(result, output)
    return {**clock.report(), **total.report()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", help="also write the JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        cold, cold_cpu = _cli(tmp / "cache-cli", tmp / "release-cli")
        warm, warm_cpu = _cli(tmp / "cache-cli", tmp / "release-cli")
        stages = _stages(tmp / "cache-stages", tmp / "release-stages")
    result = {
        "what": "hfpref curate, embedded default (541 prompts x 8 generators), cold cache",
        "cpus": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0],
        "cli_cold_s": round(cold, 2),
        "cli_cold_cpu_s": round(cold_cpu, 2),
        "cli_warm_s": round(warm, 2),
        "cli_warm_cpu_s": round(warm_cpu, 2),
        "stages_s": stages,
    }
    emit_report(result, args.output)


if __name__ == "__main__":
    main()
