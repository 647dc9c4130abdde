"""IFEval accuracy as an ``evaluate`` metric, graded by hfpref's IFEvalVerifier (lm-eval's checks)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import datasets
import evaluate

from hfpref.steps.ifeval import IFEvalConfig, IFEvalVerifier

_DESCRIPTION = """\
IFEval (Zhou et al. 2023) checks whether a response follows verifiable instructions ("answer in fewer
than 100 words", "do not use commas"). Each prompt carries one or more instructions. The metric reports
four accuracies, IFEval's own: prompt-level (every instruction of the prompt followed) and
instruction-level (fraction of all instructions followed), each strict (the response as it is) and
loose (also accepting the response with its first or last line, or its asterisks, removed). Verdicts
come from hfpref.steps.ifeval.IFEvalVerifier, which runs lm-eval's implementation of the 25 checks with
seeded randomness, so repeated runs agree.
"""

_KWARGS_DESCRIPTION = """\
Args:
    predictions (`list[str]`): one response per prompt.
    references (`list[dict]`): one per prompt, with `prompt` (str), `instruction_id_list` (list[str],
        e.g. "punctuation:no_comma"), `kwargs` (list of dicts, one per instruction; None values mean
        "not given") and optionally `key` (used in error messages).
    details (`bool`, default False): also return the per-prompt verdicts (`strict`, `loose`: one list
        of booleans per prompt, one boolean per instruction).
Returns:
    prompt_level_strict_acc, inst_level_strict_acc, prompt_level_loose_acc, inst_level_loose_acc:
    fractions in [0, 1].
Examples:
    >>> metric = evaluate.load(hfpref.training.evaluation.IFEVAL_METRIC_PATH)
    >>> metric.compute(
    ...     predictions=["hello world"],
    ...     references=[{"prompt": "Say hello without commas.", "instruction_id_list":
    ...                  ["punctuation:no_comma"], "kwargs": [{}]}],
    ... )["prompt_level_strict_acc"]
    1.0
"""

_CITATION = """\
@article{zhou2023instruction,
  title={Instruction-Following Evaluation for Large Language Models},
  author={Zhou, Jeffrey and Lu, Tianjian and Mishra, Swaroop and Brahma, Siddhartha and Basu, Sujoy and
          Luan, Yi and Zhou, Denny and Hou, Le},
  journal={arXiv preprint arXiv:2311.07911},
  year={2023}
}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class IfevalAccuracy(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            # Json: each prompt's kwargs dicts have different keys, which no fixed Arrow struct holds
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Json()}
            ),
            reference_urls=["https://arxiv.org/abs/2311.07911"],
        )

    def _compute(
        self, predictions: Sequence[str], references: Sequence[Mapping[str, Any]], details: bool = False
    ) -> dict[str, Any]:
        if not predictions:
            raise ValueError("ifeval_accuracy needs at least one prediction")
        batch: dict[str, list] = {"prompt": [], "responses": [], "instruction_id_list": [], "kwargs": []}
        keys = []
        for i, (prediction, reference) in enumerate(zip(predictions, references, strict=True)):
            missing = [f for f in ("prompt", "instruction_id_list", "kwargs") if f not in reference]
            if missing:
                raise ValueError(f"references[{i}] lacks {missing}; it has {sorted(reference)}")
            batch["prompt"].append(reference["prompt"])
            batch["responses"].append([prediction])
            batch["instruction_id_list"].append(reference["instruction_id_list"])
            batch["kwargs"].append(reference["kwargs"])
            keys.append(reference.get("key", i))
        batch["key"] = keys  # names rows in the verifier's error messages
        graded = IFEvalVerifier(IFEvalConfig(reward=None))(batch)
        strict = [row[0] for row in graded["ifeval_strict"]]  # one response per prompt
        loose = [row[0] for row in graded["ifeval_loose"]]
        result: dict[str, Any] = {
            "prompt_level_strict_acc": _prompt_level(strict),
            "inst_level_strict_acc": _instruction_level(strict),
            "prompt_level_loose_acc": _prompt_level(loose),
            "inst_level_loose_acc": _instruction_level(loose),
        }
        if details:
            result["strict"] = strict
            result["loose"] = loose
        return result


def _prompt_level(verdicts: Sequence[Sequence[bool]]) -> float:
    return sum(all(row) for row in verdicts) / len(verdicts)


def _instruction_level(verdicts: Sequence[Sequence[bool]]) -> float:
    return sum(sum(row) for row in verdicts) / sum(len(row) for row in verdicts)
