"""The PairMetrics stage (words) against the fastest bare cdist, side by side in one process (issue 15).

``bench_scale.py`` times the bare cdist once at its start and the stage minutes later inside ``hfpref curate``;
on a shared machine the load moves in between. Here both run in one process, repeats interleaved:

* ``stage``: ``PairMetrics().apply`` (what the local engine runs: ``Dataset.map`` in batches of 64 over an
  Arrow-cached dataset, input formatting and output writing included) on the embedded default's candidates
  (541 prompts, N <= 8) replicated with new keys to ``--prompts`` rows, with made-up 0/1 rewards;
* ``bare``: ``rapidfuzz.process.cdist`` per prompt on its words relabelled by ``dense_symbols`` outside the
  timing, as lists of ints and as strs, with ``workers`` 1 and -1: the fastest form is the bare part.

Reported: wall seconds (median and best of ``--repeats``) and this process's CPU seconds (median; other
processes' load does not enter it, and each form here runs on one thread except ``workers=-1``), the
ratios stage / fastest bare (target <= 1.2), and the load average.
Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_pair_metrics_stage.py --prompts 2164``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_scale import base_candidates, write_input  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=2164)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import datasets
    from rapidfuzz.distance import Levenshtein
    from rapidfuzz.process import cdist

    from hfpref.steps.pair_metrics import PairMetrics, dense_symbols

    datasets.disable_progress_bars()
    rng = random.Random(0)
    rows = [
        {**row, "rewards": [None if r is None else float(rng.random() < 0.5) for r in row["responses"]]}
        for row in base_candidates()
    ]
    with tempfile.TemporaryDirectory(prefix="bench-pm-stage-") as tmp:
        write_input(rows, args.prompts, Path(tmp) / "in.parquet")
        data = datasets.load_dataset(
            "parquet", data_files=str(Path(tmp) / "in.parquet"), split="train", cache_dir=str(Path(tmp) / "c")
        )
        lists = [dense_symbols([(r or "").split() for r in responses]) for responses in data["responses"]]
        forms = {"lists": lists, "str": [["".join(map(chr, ids)) for ids in group] for group in lists]}

        def bare(groups, workers):
            for ids in groups:
                cdist(ids, ids, scorer=Levenshtein.distance, workers=workers)

        runs = {
            f"bare_{form}_workers_{'all' if w == -1 else w}": (groups, w)
            for form, groups in forms.items()
            for w in (1, -1)
        }
        jobs = {name: (lambda g=g, w=w: bare(g, w)) for name, (g, w) in runs.items()}
        jobs["stage"] = lambda: PairMetrics().apply(data, batch_size=64, load_from_cache_file=False)
        wall: dict[str, list[float]] = {name: [] for name in jobs}
        cpu: dict[str, list[float]] = {name: [] for name in jobs}
        load_before = os.getloadavg()[0]
        for _ in range(args.repeats):
            for name, job in jobs.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                job()
                wall[name].append(time.perf_counter() - start)
                cpu[name].append(time.process_time() - start_cpu)
    median = {name: statistics.median(v) for name, v in wall.items()}
    best = {name: min(v) for name, v in wall.items()}
    cpu_median = {name: statistics.median(v) for name, v in cpu.items()}
    bares = [name for name in jobs if name.startswith("bare")]
    fastest = min(bares, key=median.__getitem__)
    print(
        json.dumps(
            {
                "prompts": args.prompts,
                "responses": sum(len(r) for r in data["responses"]),
                "repeats": args.repeats,
                "wall_median_s": {k: round(v, 3) for k, v in median.items()},
                "wall_best_s": {k: round(v, 3) for k, v in best.items()},
                "cpu_median_s": {k: round(v, 3) for k, v in cpu_median.items()},
                "fastest_bare": fastest,
                "stage_over_bare_wall_median": round(median["stage"] / median[fastest], 3),
                "stage_over_bare_wall_best": round(best["stage"] / min(best[b] for b in bares), 3),
                "stage_over_bare_cpu_median": round(
                    cpu_median["stage"] / min(cpu_median[b] for b in bares if b.endswith("_1")), 3
                ),
                "target": 1.2,
                "load_average_1min": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
