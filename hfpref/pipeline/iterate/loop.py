"""The iterate loop: for each round, its release through the recipe runner (``rounds``), then DPO training of
the next policy on it; resumable from ``iterate_state.json`` (``state``).

The reference. ``train_dpo`` trains with TRL's default reference, a frozen copy of the model it starts
from, so π_{r+1} is DPO-trained against π_r. The implicit reward of π_r is therefore measured against
the policy it was trained from: the reference of round r is π_{r−1} (round-(r−2)'s checkpoint). The first
round's reference is the recipe's ``reference`` (default: the policy itself).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
from pathlib import Path
from typing import Any

from hfpref.pipeline.iterate.checks import check_input, wants_messages
from hfpref.pipeline.iterate.errors import IterateError, LabelsPendingError
from hfpref.pipeline.iterate.rounds import build_round, checkpoint_dir, release_dir
from hfpref.pipeline.iterate.spec import IterateRecipe, ModelRef
from hfpref.pipeline.iterate.state import LoopState
from hfpref.pipeline.resume import DEFAULT_SHARD_ROWS
from hfpref.pipeline.runner import datasets_progress_off
from hfpref.training.dpo import train_dpo

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class RoundResult:
    round: int
    policy: ModelRef  # the policy that sampled (π_r)
    reference: ModelRef  # its DPO reference
    release: Path
    checkpoint: Path  # π_{r+1}
    config_name: str
    pairs: int
    reused: bool  # True when the round was finished before this run


def models_of_round(recipe: IterateRecipe, folder: Path, round_number: int) -> tuple[ModelRef, ModelRef]:
    """(π_r, its reference). The first round (0 with a warm-up, else 1) samples from the initial policy
    against the recipe's reference (default: the policy); π_r = round r−1's checkpoint, whose reference is
    π_{r−1}, the policy it was DPO-trained from."""
    first = recipe.first_round

    def policy(r: int) -> ModelRef:
        return recipe.policy if r <= first else ModelRef(str(checkpoint_dir(folder, r - 1)))

    if round_number <= first:
        return recipe.policy, recipe.initial_reference()
    return policy(round_number), policy(round_number - 1)


def run_iterations(
    recipe: IterateRecipe,
    *,
    cache_dir: str | Path | None = None,
    batch_size: int = 64,
    num_proc: int | None = None,
    progress: bool = True,
    gpus: int | None = None,
    engine: Any = None,
    shard_rows: int | None = DEFAULT_SHARD_ROWS,
) -> list[RoundResult]:
    """Run (or resume) every round of ``recipe``; returns what each round produced.

    Each round's steps run through ``Recipe.run`` on ``engine`` ("local", "ray" or an engine object, as for
    ``Recipe.run``; a named one is built with ``gpus`` and ``shard_rows`` and closed at the end), so a round
    killed mid-step resumes from its last finished shard (``shard_rows`` rows each)."""
    import datasets

    folder = Path(recipe.output.folder)
    state = LoopState(folder, recipe)
    state.save()
    cache = Path(cache_dir) if cache_dir is not None else folder / "cache"
    runner, owned = _engine(engine, gpus, shard_rows, progress)
    options = {"cache_dir": cache, "batch_size": batch_size, "num_proc": num_proc, "progress": progress}
    messages: bool | None = None  # whether prompts become chat messages: decided once, when a round runs
    results = []
    try:
        with contextlib.nullcontext() if progress else datasets_progress_off(datasets):
            for r in recipe.round_numbers():
                if messages is None and not state.release_ready(r) and not state.finished(r):
                    check_input(recipe, cache)
                    messages = wants_messages(recipe)
                results.append(_run_round(recipe, r, state, bool(messages), {**options, "engine": runner}))
    finally:
        if owned:
            runner.close()
    return results


def _engine(engine: Any, gpus: int | None, shard_rows: int | None, progress: bool) -> tuple[Any, bool]:
    """(the engine every round runs on, whether the loop built it and closes it)."""
    if engine is not None and not isinstance(engine, str):
        return engine, False
    from hfpref.pipeline.engines import make_engine

    name = engine or "local"
    options: dict[str, Any] = {"gpus": gpus, "shard_rows": shard_rows}
    if name == "ray":
        options["progress"] = progress
    return make_engine(name, **options), True


def _run_round(
    recipe: IterateRecipe, r: int, state: LoopState, messages: bool, run_options: dict[str, Any]
) -> RoundResult:
    """Round ``r``: reused when finished; else its release (unless written before), then training."""
    folder = state.folder
    policy, reference = models_of_round(recipe, folder, r)
    config_name = recipe.selection_config(r).name
    reused = state.finished(r)
    entry = state.round(r)
    if reused:
        logger.info("round %d: finished before, reusing %s", r, entry["release"])
    else:
        if not state.release_ready(r):
            labels = {"policy": policy.label(), "reference": reference.label()}
            try:
                pairs = build_round(recipe, r, (policy, reference), folder, messages, run_options)
            except LabelsPendingError as err:
                # recorded, so a look at the state says what the loop waits for; a rerun resumes
                entry.update(status="awaiting_labels", project=err.project, pending=err.pending, **labels)
                state.save()
                raise
            release = str(release_dir(folder, r).relative_to(folder))
            entry.update(release=release, config=config_name, pairs=pairs, **labels, status="released")
            state.save()
        _train_round(recipe, r, policy, folder, folder / entry["release"], config_name, entry["pairs"])
        entry.update(checkpoint=str(checkpoint_dir(folder, r).relative_to(folder)), status="finished")
        state.save()
    release, checkpoint = folder / entry["release"], folder / entry["checkpoint"]
    return RoundResult(r, policy, reference, release, checkpoint, config_name, entry["pairs"], reused)


def _train_round(
    recipe: IterateRecipe, r: int, policy: ModelRef, folder: Path, release: Path, config_name: str, pairs: int
) -> None:
    """DPO from π_r on round r's release into ``round-r/policy`` (TRL's reference: a frozen π_r)."""
    _free_memory()
    if not pairs:
        raise IterateError(
            f"round {r}: no annotated pair to train on (see {release}/hfpref_manifest.json for the drop "
            "reasons); raise the budget or sample more diverse responses"
        )
    train_dpo(
        str(release),
        policy.model,
        checkpoint_dir(folder, r),
        config=config_name,
        model_revision=policy.revision,
        **recipe.training_overrides(),
    )
    _free_memory()


def _free_memory() -> None:
    gc.collect()
    with contextlib.suppress(Exception):
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
