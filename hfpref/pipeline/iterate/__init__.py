"""Iterative preference learning with annotation by implicit-margin selection (arXiv 2406.17312).

Each round r = 1..R is a curate recipe run by the recipe runner (``rounds``), then training (``loop``):

1. sample N responses per prompt from the current policy π_r (``ResponseSampler``);
2. score them under π_r and under its DPO reference (``LogProbAnnotator``, ``output_prefix`` "policy" and
   "ref"), and compute the implicit rewards and the margins of all pairs (``ImplicitMargins``);
3. select the pairs to annotate under the round's budget (``AnnotationSelector``), annotate them with
   the recipe's annotator (``AnnotateSelected``) and make TRL preference rows (the pair maker
   ``AnnotatedPairs``);
4. write the round's release (``round-r/release``, with its card; its "recipe as run" reruns with
   ``hfpref curate``);
5. train π_{r+1} from π_r with DPO on that release (``hfpref.training.dpo.train_dpo``: ``round-r/policy``).

The first round. If the policy *is* its reference every margin is exactly 0 (the policy log-probs are
copied from the reference's, so they are equal to the bit), and smallest, largest and random selection
pick the same pairs. The margin comparison of arXiv 2406.17312 needs a policy that already differs from
its reference, so the loop offers two starts, and refuses the degenerate one (``IterateError`` naming the
round) unless ``selection.on_equal_margins: random`` asks for the random fallback, which the card reports:

* ``policy: {model: DPO_CHECKPOINT}`` with ``reference: {model: SFT_MODEL}``: a policy already DPO-trained
  from the reference (e.g. on a seed set of preferences) ranks round 1's pairs by real margins;
* ``warmup: {fraction: 0.1}``: a round 0 annotates that share of the total budget at random, trains π_1
  from the initial policy, and the margin rounds start from there (round 1: π_1 against the initial policy).

Modules: ``spec`` (the recipe), ``checks`` (validation, prompt format), ``budget`` (schedules), ``rounds``
(a round as a recipe, and its release), ``record`` (the manifest's iteration record and card section),
``human`` (Label Studio as the annotator), ``state`` (``iterate_state.json``, resuming), ``loop``
(``run_iterations``). Resuming: finished rounds are skipped, a round whose release exists only retrains,
and a round killed mid-step reruns from its last finished shard in the ``datasets`` cache under ``cache/``.
"""

from __future__ import annotations

from hfpref.pipeline.iterate.budget import SCHEDULES, BudgetSpec, schedule_weights
from hfpref.pipeline.iterate.checks import load_prompts
from hfpref.pipeline.iterate.errors import IterateError, LabelsPendingError
from hfpref.pipeline.iterate.human import LabelStudioLabels, human_pairs
from hfpref.pipeline.iterate.loop import RoundResult, models_of_round, run_iterations
from hfpref.pipeline.iterate.record import iteration_card_section, iteration_record
from hfpref.pipeline.iterate.rounds import (
    checkpoint_dir,
    release_dir,
    round_recipe,
    round_step_specs,
    round_steps,
    round_version,
)
from hfpref.pipeline.iterate.spec import CHAT_FORMATS, TRAINING_DEFAULTS, IterateRecipe, ModelRef
from hfpref.pipeline.iterate.state import STATE_FILE, STATE_FORMAT, LoopState

__all__ = [
    "CHAT_FORMATS",
    "SCHEDULES",
    "STATE_FILE",
    "STATE_FORMAT",
    "TRAINING_DEFAULTS",
    "BudgetSpec",
    "IterateError",
    "IterateRecipe",
    "LabelStudioLabels",
    "LabelsPendingError",
    "LoopState",
    "ModelRef",
    "RoundResult",
    "checkpoint_dir",
    "human_pairs",
    "iteration_card_section",
    "iteration_record",
    "load_prompts",
    "models_of_round",
    "release_dir",
    "round_recipe",
    "round_step_specs",
    "round_steps",
    "round_version",
    "run_iterations",
    "schedule_weights",
]
