"""PairMetrics with and without the sampler's token ids (issue 15: "no second tokenization").

Setup (no downloads): ``bench_pair_metrics.py``'s synthetic candidates (200 prompts x N = 16 responses of
about 512 tokens) and its byte-level BPE tokenizer trained in-process, saved to a folder that is the
step's ``edit_distance_unit``. The ``cached`` copy of the candidates also carries ``response_token_ids``
(int32, as ``ResponseSampler`` writes them: here the tokenizer's own ids of each text, so both runs must
give identical matrices) and ``response_token_unit`` (the step's declared unit). Both datasets are saved
to disk and loaded back memory-mapped, as a recipe's cached step outputs are, so reading the ids column
from Arrow into Python lists is part of what the cached run pays.

Measured side by side, repeats interleaved, medians reported:

* ``map_tokenize_s`` / ``map_reuse_s``: ``PairMetrics.apply`` (``Dataset.map``, batches of 64, the step's
  default ``workers=1``) over the plain / cached dataset, recomputed every time;
* ``call_tokenize_s`` / ``call_reuse_s``: the step called on the same batches as Python dicts (no Arrow);
* ``tokenize_s``: the plain map's time inside ``PairMetrics.tokenize`` (what reuse skips).

Cost: ``token_ids_bytes_per_response`` (Arrow buffers of the ids column / responses) beside
``response_text_bytes_per_response``, and the on-disk size of the two datasets. Run:
``PYTHONPATH=$PWD .venv/bin/python benchmarks/bench_token_reuse.py``.
"""

from __future__ import annotations

import json
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

import datasets
import numpy as np

from benchmarks.bench_pair_metrics import BATCH_SIZE, PROMPTS, SEED, N, synthetic_batches, train_tokenizer
from hfpref.core import columns as C
from hfpref.steps.pair_metrics import PairMetrics

REPEATS = 3


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def main() -> None:
    started = time.perf_counter()
    datasets.disable_progress_bars()
    batches = synthetic_batches(random.Random(SEED))
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        train_tokenizer(batches, str(tmp / "tokenizer"))
        step = PairMetrics(edit_distance_unit=str(tmp / "tokenizer"))
        unit = step.unit_label()
        responses = [r for b in batches for r in b[C.RESPONSES]]
        rewards = [[float(k) for k in range(N)] for _ in responses]
        ids = [
            [np.asarray(x, dtype=np.int32) for x in step.tokenize(texts)] for texts in responses
        ]  # loads the tokenizer outside the timings
        plain = datasets.Dataset.from_dict({C.RESPONSES: responses, C.REWARDS: rewards})
        cached = plain.add_column(C.RESPONSE_TOKEN_IDS, ids).add_column(
            C.RESPONSE_TOKEN_UNIT, [unit] * PROMPTS
        )
        assert cached.features[C.RESPONSE_TOKEN_IDS] == datasets.List(datasets.List(datasets.Value("int32")))
        plain.save_to_disk(tmp / "plain")
        cached.save_to_disk(tmp / "cached")
        plain, cached = datasets.load_from_disk(tmp / "plain"), datasets.load_from_disk(tmp / "cached")
        dict_batches = {
            name: [data[start : start + BATCH_SIZE] for start in range(0, PROMPTS, BATCH_SIZE)]
            for name, data in (("plain", plain), ("cached", cached))
        }

        tokenize_seconds = [0.0]
        original = PairMetrics.tokenize

        def timed_tokenize(self, texts, rank=None):
            start = time.perf_counter()
            try:
                return original(self, texts, rank)
            finally:
                tokenize_seconds[0] += time.perf_counter() - start

        PairMetrics.tokenize = timed_tokenize
        outputs = {}

        def run_map(name: str, data: datasets.Dataset) -> float:
            start = time.perf_counter()
            outputs[name] = step.apply(data, batch_size=BATCH_SIZE, load_from_cache_file=False)
            return time.perf_counter() - start

        def run_calls(name: str) -> float:
            start = time.perf_counter()
            for batch in dict_batches[name]:
                step(batch)
            return time.perf_counter() - start

        times: dict[str, list[float]] = {
            k: [] for k in ("map_tok", "map_reuse", "call_tok", "call_reuse", "tok")
        }
        for _ in range(REPEATS):
            tokenize_seconds[0] = 0.0
            times["map_tok"].append(run_map("plain", plain))
            times["tok"].append(tokenize_seconds[0])
            tokenize_seconds[0] = 0.0
            times["map_reuse"].append(run_map("cached", cached))
            assert tokenize_seconds[0] == 0.0, "the cached run tokenized"
            times["call_reuse"].append(run_calls("cached"))
            times["call_tok"].append(run_calls("plain"))
        same = outputs["plain"][C.EDIT_DISTANCE_MATRIX] == outputs["cached"][C.EDIT_DISTANCE_MATRIX]
        median = {k: statistics.median(v) for k, v in times.items()}
        n_responses = PROMPTS * N
        ids_bytes = cached.data.column(C.RESPONSE_TOKEN_IDS).nbytes
        text_bytes = cached.data.column(C.RESPONSES).nbytes
        tokens = sum(len(x) for row in ids for x in row)
        report = {
            "map_tokenize_s": round(median["map_tok"], 3),
            "map_reuse_s": round(median["map_reuse"], 3),
            "map_saved_fraction": round(1 - median["map_reuse"] / median["map_tok"], 3),
            "call_tokenize_s": round(median["call_tok"], 3),
            "call_reuse_s": round(median["call_reuse"], 3),
            "call_saved_fraction": round(1 - median["call_reuse"] / median["call_tok"], 3),
            "tokenize_s": round(median["tok"], 3),
            "identical_matrices": same,
            "token_ids_bytes_per_response": round(ids_bytes / n_responses, 1),
            "token_ids_bytes_per_token": round(ids_bytes / tokens, 2),
            "response_text_bytes_per_response": round(text_bytes / n_responses, 1),
            "disk_bytes_plain": folder_bytes(tmp / "plain"),
            "disk_bytes_cached": folder_bytes(tmp / "cached"),
            "config": {
                "prompts": PROMPTS,
                "responses_per_prompt": N,
                "mean_tokens_per_response": round(tokens / n_responses, 1),
                "batch_size": BATCH_SIZE,
                "repeats": REPEATS,
                "workers": step.config.workers,
                "seed": SEED,
            },
            "load_average": os.getloadavg(),
            "total_wall_s": round(time.perf_counter() - started, 1),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
