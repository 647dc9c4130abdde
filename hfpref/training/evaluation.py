"""Evaluate trained policies: IFEval accuracy and reward-model win rate against a baseline.

* ``evaluate_ifeval(model)`` answers IFEval's prompts with one greedy response each (``ResponseSampler``,
  n = 1, temperature 0) and scores them with the ``ifeval_accuracy`` metric module
  (``evaluate.load(IFEVAL_METRIC_PATH)``): prompt- and instruction-level accuracy, strict and loose.
* ``win_rate(model, baseline, reward_model)`` answers a prompt set with both models and lets a reward
  model judge each pair: the DCRM paper's WR_ref (win rate of the trained policy over π_ref) with a
  reward model in place of AlpacaEval's LLM judge. A higher reward wins; equal rewards, or identical
  responses, tie and count half.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from hfpref.core import columns as C
from hfpref.metrics import metric_path
from hfpref.pipeline.default_data import PROMPTS_FILE, data_dir
from hfpref.steps.sampling import ResponseSampler, SamplerConfig

IFEVAL_METRIC_PATH = metric_path("ifeval_accuracy")
IFEVAL_METRICS = (
    "prompt_level_strict_acc",
    "inst_level_strict_acc",
    "prompt_level_loose_acc",
    "inst_level_loose_acc",
)


def ifeval_prompts(limit: int | None = None) -> list[dict[str, Any]]:
    """IFEval's prompts (embedded copy, in file order): ``key``, ``prompt``, ``instruction_id_list``, ``kwargs``."""
    with (data_dir() / PROMPTS_FILE).open(encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle if line.strip()]
    return rows if limit is None else rows[:limit]


def load_prompts(source: str | Path | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Prompts for a win-rate run: IFEval's prompts by default, else a JSON/JSONL/CSV/Parquet file.

    The file needs a ``prompt`` column (a string or a list of messages); every other column is kept
    and reported with the per-prompt records.
    """
    if source is None or str(source) == "default":
        return [{"key": r["key"], C.PROMPT: r[C.PROMPT]} for r in ifeval_prompts(limit)]
    import datasets

    path = Path(source)
    builders = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet"}
    if path.suffix not in builders:
        raise ValueError(f"prompts file {str(path)!r}: expected one of {sorted(builders)}, or 'default'")
    rows = datasets.load_dataset(builders[path.suffix], data_files=str(path), split="train")
    if C.PROMPT not in rows.column_names:
        raise ValueError(f"prompts file {str(path)!r} has no 'prompt' column; columns: {rows.column_names}")
    if limit is not None:
        rows = rows.select(range(min(limit, rows.num_rows)))
    return rows.to_list()


def sample_responses(prompts: Sequence[Mapping[str, Any]], sampler: ResponseSampler) -> list[str]:
    """One response per prompt row (the sampler's ``n`` must be 1), in order."""
    if sampler.config.n != 1:
        raise ValueError(f"evaluation samples one response per prompt; got n={sampler.config.n}")
    out = sampler({C.PROMPT: [row[C.PROMPT] for row in prompts]})
    return [responses[0] for responses in out[C.RESPONSES]]


def evaluate_ifeval(
    model: str,
    *,
    limit: int | None = None,
    max_new_tokens: int = 1024,
    **sampler_options: Any,
) -> dict[str, Any]:
    """Greedy IFEval run of ``model``; returns the four accuracies, settings and per-prompt records.

    ``sampler_options``: further ``SamplerConfig`` fields (``revision``, ``dtype``, ``device``,
    ``token_budget``, ``backend``).
    """
    import evaluate

    prompts = ifeval_prompts(limit)
    sampler = ResponseSampler(
        SamplerConfig(model=model, n=1, temperature=0.0, max_new_tokens=max_new_tokens, **sampler_options)
    )
    responses = sample_responses(prompts, sampler)
    metric = evaluate.load(IFEVAL_METRIC_PATH)
    scores = metric.compute(predictions=responses, references=prompts, details=True)
    records = [
        {
            "key": row["key"],
            "prompt": row[C.PROMPT],
            "instruction_id_list": row[C.INSTRUCTION_ID_LIST],
            "response": response,
            "strict": strict,
            "loose": loose,
        }
        for row, response, strict, loose in zip(
            prompts, responses, scores["strict"], scores["loose"], strict=True
        )
    ]
    return {
        "benchmark": "ifeval",
        "model": model,
        "model_revision": sampler.resolved_revision(),
        "num_prompts": len(prompts),
        "sampling": sampling_settings(sampler),
        "metrics": {name: scores[name] for name in IFEVAL_METRICS},
        "records": records,
    }


def win_rate(
    model: str,
    baseline: str,
    reward_model: str,
    *,
    prompts: str | Path | None = None,
    limit: int | None = None,
    max_new_tokens: int = 512,
    temperature: float = 0.0,
    seed: int = 0,
    reward_revision: str | None = None,
    reward_dtype: str = "auto",
    reward_trust_remote_code: bool = False,
    **sampler_options: Any,
) -> dict[str, Any]:
    """Win rate of ``model`` over ``baseline`` with ``reward_model`` as the judge; ties count half.

    Both models answer every prompt with the same sampling settings and seed; the reward model scores
    the two answers (with its own chat template). Returns the win rate, win/tie/loss counts, the
    settings and per-prompt records (both responses, both rewards, the outcome).
    ``reward_trust_remote_code`` runs a custom-code reward model's own modeling file (e.g. ArmoRM).
    """
    rows = load_prompts(prompts, limit)
    if not rows:
        raise ValueError("win rate needs at least one prompt")
    annotator = _reward_judge(reward_model, reward_revision, reward_dtype, reward_trust_remote_code)
    options = dict(n=1, temperature=temperature, max_new_tokens=max_new_tokens, seed=seed, **sampler_options)
    model_sampler = ResponseSampler(SamplerConfig(model=model, **options))
    baseline_sampler = ResponseSampler(SamplerConfig(model=baseline, **options))
    model_answers = sample_responses(rows, model_sampler)
    baseline_answers = sample_responses(rows, baseline_sampler)
    scored = annotator(
        {
            C.PROMPT: [row[C.PROMPT] for row in rows],
            C.RESPONSES: [[a, b] for a, b in zip(model_answers, baseline_answers, strict=True)],
        }
    )
    records = _records(rows, model_answers, baseline_answers, scored[C.REWARDS])
    counts = {outcome: sum(r["outcome"] == outcome for r in records) for outcome in ("win", "tie", "loss")}
    return {
        "benchmark": "winrate",
        "model": model,
        "model_revision": model_sampler.resolved_revision(),
        "baseline": baseline,
        "baseline_revision": baseline_sampler.resolved_revision(),
        "reward_model": reward_model,
        "reward_source": scored[C.REWARD_SOURCE][0],
        "prompts": "default (IFEval prompts)" if prompts is None else str(prompts),
        "num_prompts": len(records),
        "sampling": sampling_settings(model_sampler),
        "win_rate": (counts["win"] + 0.5 * counts["tie"]) / len(records),
        **counts,
        "records": records,
    }


def _records(
    rows: Sequence[Mapping[str, Any]],
    answers: list[str],
    baseline_answers: list[str],
    rewards: list[list[float]],
) -> list[dict[str, Any]]:
    """One record per prompt: both responses, both rewards and the outcome (``judge``)."""
    return [
        {
            **row,
            "response_model": a,
            "response_baseline": b,
            "reward_model": pair[0],
            "reward_baseline": pair[1],
            "outcome": judge(a, b, pair[0], pair[1]),
        }
        for row, a, b, pair in zip(rows, answers, baseline_answers, rewards, strict=True)
    ]


def _reward_judge(model: str, revision: str | None, dtype: str, trust_remote_code: bool) -> Any:
    """The reward model that judges the win rate, checked before any policy samples: a custom-code judge that
    is not trusted fails now, with the flag or keyword that trusts it."""
    from hfpref.steps.rewards import RewardAnnotator, RewardConfig, RewardModelError

    annotator = RewardAnnotator(
        RewardConfig(model=model, revision=revision, dtype=dtype, trust_remote_code=trust_remote_code)
    )
    try:
        annotator.head()
    except RewardModelError as err:
        raise RewardModelError(
            f"{err} (`hfpref eval winrate`: pass --trust-remote-code; `win_rate`: reward_trust_remote_code=True)"
        ) from None
    return annotator


def judge(response: str, baseline_response: str, reward: float, baseline_reward: float) -> str:
    """``"win"``, ``"tie"`` or ``"loss"`` for ``response`` against ``baseline_response``.

    Identical texts tie whatever their rewards: batching can perturb a reward in its last bits, and the
    same text must never beat itself.
    """
    if response == baseline_response or reward == baseline_reward:
        return "tie"
    return "win" if reward > baseline_reward else "loss"


def sampling_settings(sampler: ResponseSampler) -> dict[str, Any]:
    """The decoding settings a result depends on (the backend resolved, not "auto")."""
    keep = ("n", "temperature", "top_p", "max_new_tokens", "seed", "dtype")
    return {**{name: getattr(sampler.config, name) for name in keep}, "backend": sampler.backend}


def write_json(result: Mapping[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
