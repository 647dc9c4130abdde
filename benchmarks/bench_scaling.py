"""Benchmark: the same recipe on the single-process engine and on Ray with 1 and 2 workers, side by side.

CPU mode (default): the embedded IFEval recipe (IFEval checks, word-level pair metrics, ten pair
strategies) over the first ``--rows`` of the embedded candidates, optionally with a log-prob step on a
tiny seeded Llama (``--logprobs``), run by

* ``local``: ``Dataset.map`` in this process (``hfpref.pipeline.engines.local``);
* ``ray_1``: Ray Data with one worker per step (one actor for a model step, one task at a time);
* ``ray_2``: Ray Data with two (two actors, two tasks at a time).

Every run starts from a fresh copy of the input with an empty cache, so nothing is a cache hit. One local
Ray cluster (``--ray-cpus`` CPUs) is started before the timed runs, and untimed warm-up runs start its
worker processes and import what the steps load in this one, so the timed runs measure each engine as
a running process or cluster does; the cluster start and the warm-ups are reported on their own
(``ray_init_s``, ``ray_warmup_s``, ``local_warmup_s``). Engines run
interleaved (the order rotates each repeat); medians are reported. ``overhead`` = engine seconds / local
seconds; ``results_equal`` says every engine's candidates and pairs equal the local engine's.

GPU mode (``--device cuda``): one model step, ``LogProbAnnotator`` (a local ``--model`` folder, or a
random-weight Llama of ``--shape`` built with the tiny test tokenizer) over ``--rows`` candidates rows,
timed as a direct ``Dataset.map`` on one GPU (``Step.apply``), on ``--gpus`` GPUs through the local
engine's worker processes (when ``--gpus`` > 1) and through Ray with ``--gpus`` actors of one GPU each.
Each time includes loading the model (and, for Ray, starting the actors): that is what one step costs.

Prints one JSON object (and writes it to ``--output`` if given).

Examples:
  .venv/bin/python benchmarks/bench_scaling.py                   # CPU, about a minute on 2 cores
  .venv/bin/python benchmarks/bench_scaling.py --rows 64 --logprobs
  python benchmarks/bench_scaling.py --device cuda --gpus 1 --shape llama-300m --rows 541
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import datasets  # noqa: E402

from benchmarks.common import emit_report, interleaved, machine, model_sizes  # noqa: E402
from hfpref.pipeline.default_data import load_ifeval_candidates  # noqa: E402
from hfpref.pipeline.engines.local import LocalEngine  # noqa: E402
from hfpref.pipeline.recipe import DEFAULT_RECIPE, Recipe  # noqa: E402

SHAPES = {  # random-weight Llamas for the GPU comparison (the tiny test tokenizer's vocabulary)
    "tiny": model_sizes(32, 64, 2, 4, 2),
    "llama-300m": model_sizes(1024, 4096, 24, 16, 8),
    "llama-1b": model_sizes(2048, 8192, 16, 32, 8),
}


def fresh_copy(dataset: datasets.Dataset, root: Path, name: str) -> Path:
    """A new on-disk copy of ``dataset`` (its own, empty cache lives next to it)."""
    folder = root / name
    dataset.save_to_disk(str(folder))
    return folder


def same_floats(a: Any, b: Any, tol: float = 1e-5) -> bool:
    """Equal, floats to ``tol`` (model log-probs; every other value must be identical)."""
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=tol, abs_tol=tol)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same_floats(x, y, tol) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return list(a) == list(b) and all(same_floats(a[k], b[k], tol) for k in a)
    return a == b


def same_result(a: Any, b: Any) -> bool:
    return same_floats(a.candidates.to_list(), b.candidates.to_list()) and all(
        same_floats(a.pairs[s].to_list(), b.pairs[s].to_list()) for s in a.pairs
    )


def tiny_policy(root: Path, shape: str = "tiny") -> Path:
    """A random-weight Llama of ``shape`` with the tiny test tokenizer, saved under ``root``."""
    import torch
    from transformers import LlamaForCausalLM

    from tests.tiny_models import _config, build_tokenizer

    tokenizer = build_tokenizer()
    torch.manual_seed(0)
    model = LlamaForCausalLM(_config(tokenizer, max_position_embeddings=4096, **SHAPES[shape]))
    folder = root / f"policy-{shape}"
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


# ---- CPU: the recipe on three engines -----------------------------------------------------------------


def cpu_benchmark(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    import ray

    from hfpref.pipeline.engines.ray_engine import RayEngine

    candidates = load_ifeval_candidates(root / "embedded").select(range(args.rows))
    raw = json.loads(json.dumps(DEFAULT_RECIPE))
    if args.logprobs:
        model = tiny_policy(root)
        raw["steps"].append(
            {
                "step": "LogProbAnnotator",
                "config": {"model": str(model), "dtype": "float32", "overflow": "truncate"},
            }
        )
    counter = iter(range(1_000_000))

    def run(engine: Any) -> tuple[float, Any]:
        raw["input"] = {"path": str(fresh_copy(candidates, root, f"input-{next(counter)}"))}
        recipe = Recipe.from_dict(raw)
        start = time.perf_counter()
        result = recipe.run(batch_size=args.batch_size, progress=False, engine=engine)
        return time.perf_counter() - start, result

    start = time.perf_counter()
    ray.init(num_cpus=args.ray_cpus, include_dashboard=False, log_to_driver=False)
    ray_init_s = time.perf_counter() - start
    engines = {
        "local": LocalEngine(),
        "ray_1": RayEngine(concurrency=1, task_concurrency=1, progress=False),
        "ray_2": RayEngine(concurrency=2, task_concurrency=2, progress=False),
    }
    ray_warmup_s, _ = run(engines["ray_2"])  # starts the cluster's worker processes
    local_warmup_s, _ = run(engines["local"])  # imports what the steps load (lm-eval, NLTK data) here too
    seconds, results = interleaved(engines, args.repeats, run)
    ray.shutdown()

    median = {name: statistics.median(values) for name, values in seconds.items()}
    return {
        "mode": "cpu",
        "workload": {
            "rows": args.rows,
            "steps": [s["step"] for s in raw["steps"]],
            "strategies": len(raw["pairs"]["strategies"]),
            "batch_size": args.batch_size,
            "ray_cpus": args.ray_cpus,
            "repeats": args.repeats,
        },
        "ray_init_s": round(ray_init_s, 3),
        "ray_warmup_s": round(ray_warmup_s, 3),
        "local_warmup_s": round(local_warmup_s, 3),
        "seconds": {name: round(value, 3) for name, value in median.items()},
        "seconds_all": {name: [round(v, 3) for v in values] for name, values in seconds.items()},
        "rows_per_s": {name: round(args.rows / value, 1) for name, value in median.items()},
        "overhead": {name: round(median[name] / median["local"], 2) for name in ("ray_1", "ray_2")},
        "ray_2_vs_ray_1_speedup": round(median["ray_1"] / median["ray_2"], 2),
        "results_equal": all(same_result(results[name], results["local"]) for name in ("ray_1", "ray_2")),
    }


# ---- GPU: one model step, direct Dataset.map against Ray ------------------------------------------------


def gpu_benchmark(args: argparse.Namespace, root: Path) -> dict[str, Any]:
    import ray
    import torch

    from hfpref.pipeline.engines.ray_engine import RayEngine
    from hfpref.steps.logprobs import LogProbAnnotator

    if not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible")
    model = args.model or str(tiny_policy(root, args.shape))
    candidates = load_ifeval_candidates(root / "embedded").select(range(args.rows))
    config = {"model": model, "dtype": args.dtype, "overflow": "truncate", "token_budget": args.token_budget}
    counter = iter(range(1_000_000))

    def fresh() -> datasets.Dataset:
        return datasets.load_from_disk(str(fresh_copy(candidates, root, f"gpu-input-{next(counter)}")))

    def timed(engine: Any | None) -> tuple[float, list[list[float]]]:
        dataset, step = fresh(), LogProbAnnotator(config)
        step.resolved_revision()  # hash the model folder outside the timing, as a recipe does before its steps
        torch.cuda.synchronize()
        start = time.perf_counter()
        if engine is None:
            out = step.apply(dataset, batch_size=args.batch_size)
        else:
            out = engine.map_step(step, dataset, batch_size=args.batch_size)
        torch.cuda.synchronize()
        elapsed = time.perf_counter() - start
        del step  # a direct run's model lives in this process: free its GPU memory for the next run
        gc.collect()
        torch.cuda.empty_cache()
        return elapsed, out["ref_logps"]

    ray.init(num_gpus=torch.cuda.device_count(), include_dashboard=False, log_to_driver=False)
    runs = {"direct_map": None, "ray": RayEngine(gpus=args.gpus, progress=False)}
    if args.gpus > 1:
        runs["local_gpus"] = LocalEngine(gpus=args.gpus)
    timed(None)  # warm-up: CUDA context, kernels, the model files in the page cache
    seconds, logps = interleaved(runs, args.repeats, timed)
    ray.shutdown()
    median = {name: statistics.median(values) for name, values in seconds.items()}
    return {
        "mode": "gpu",
        "device": torch.cuda.get_device_name(0),
        "gpus": args.gpus,
        "workload": {
            "rows": args.rows,
            "responses": sum(len(r) for r in candidates["responses"]),
            "model": args.model or f"random {args.shape}",
            "dtype": args.dtype,
            "batch_size": args.batch_size,
            "repeats": args.repeats,
        },
        "seconds": {name: round(value, 3) for name, value in median.items()},
        "rows_per_s": {name: round(args.rows / value, 1) for name, value in median.items()},
        "overhead": {
            name: round(median[name] / median["direct_map"], 2) for name in median if name != "direct_map"
        },
        "results_equal": all(same_floats(logps[name], logps["direct_map"], 1e-2) for name in logps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--rows", type=int, default=541, help="candidates rows (the embedded data has 541)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--logprobs", action="store_true", help="CPU mode: add a tiny-model log-prob step")
    parser.add_argument(
        "--ray-cpus", type=int, default=os.cpu_count() or 2, help="CPU mode: the Ray cluster's CPUs"
    )
    parser.add_argument("--gpus", type=int, default=1, help="GPU mode: GPUs (Ray actors, local workers)")
    parser.add_argument("--model", default=None, help="GPU mode: a local causal LM folder (default: --shape)")
    parser.add_argument("--shape", choices=sorted(SHAPES), default="llama-300m")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--token-budget", type=int, default=16384)
    parser.add_argument("--output", default=None)
    args = parser.parse_args()
    if not 1 <= args.rows <= 541:
        parser.error("--rows must be between 1 and 541")
    datasets.disable_progress_bars()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="bench-scaling-") as tmp:
        report = (gpu_benchmark if args.device == "cuda" else cpu_benchmark)(args, Path(tmp))
    report["machine"] = machine()
    emit_report(report, args.output)


if __name__ == "__main__":
    main()
