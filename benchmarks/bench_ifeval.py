"""IFEvalVerifier against lm-eval's own per-response grading, on the embedded default data.

Input: IFEval's 541 prompts with GPT-4's and text-bison's published responses (1,081 responses; one
candidates row per prompt, N = 2 except key 2785), read from the package copy.

Measured side by side, repeats interleaved, medians reported (imports and langdetect's profile loading
done once before timing):

* ``step_s``: ``IFEvalVerifier`` called on batches of 64 rows, as ``Dataset.map(batched=True)`` calls it,
  strict and loose verdicts, correctness and rewards;
* ``lm_eval_s``: ``lm_eval.tasks.ifeval.utils.process_results(doc, [response])`` once per response (the
  strict and loose verdicts lm-eval's harness computes, nothing else).

``ratio`` = step_s / lm_eval_s. Run: ``.venv/bin/python benchmarks/bench_ifeval.py``.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import hfpref
from hfpref.pipeline import default_data
from hfpref.steps.ifeval import IFEvalVerifier, instruction_registry

DATA = Path(hfpref.__file__).parent / "data" / "ifeval"
BATCH_SIZE, REPEATS = 64, 3


def _read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def candidates() -> list[dict]:
    prompts = {row["key"]: row for row in _read_jsonl(DATA / "prompts.jsonl")}
    responses: dict[int, list[str]] = {key: [] for key in prompts}
    for name in ("gpt-4", "text-bison"):
        for answer in default_data.response_records(name):
            responses[answer["key"]].append(answer["response"])
    return [{**prompts[key], "responses": responses[key]} for key in prompts]


def main() -> None:
    rows = candidates()
    columns = ("key", "prompt", "responses", "instruction_id_list", "kwargs")
    batches = [
        {c: [row[c] for row in rows[i : i + BATCH_SIZE]] for c in columns}
        for i in range(0, len(rows), BATCH_SIZE)
    ]
    instruction_registry()
    from langdetect import DetectorFactory
    from lm_eval.tasks.ifeval.utils import process_results

    DetectorFactory.seed = 0  # same detections on both sides
    step = IFEvalVerifier()
    step(batches[0])  # warm-up: langdetect loads its profiles on first use

    def run_step() -> None:
        for batch in batches:
            step(batch)

    def run_lm_eval() -> None:
        for row in rows:
            for response in row["responses"]:
                process_results(row, [response])

    times: dict[str, list[float]] = {"step_s": [], "lm_eval_s": []}
    for _ in range(REPEATS):
        for name, fn in (("step_s", run_step), ("lm_eval_s", run_lm_eval)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    result = {name: round(statistics.median(v), 3) for name, v in times.items()}
    result["ratio"] = round(result["step_s"] / result["lm_eval_s"], 3)
    result["responses"] = sum(len(row["responses"]) for row in rows)
    result["prompts"] = len(rows)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
