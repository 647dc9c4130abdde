"""The shared column contract (DESIGN.md): each column name one module writes and another reads, in one place.

Steps import their column names from here, never from each other, so a reader finds the whole row schema
in this file, and who writes each column in the comment beside it. Names a single step both writes and
reads alone may stay in that step's module.
"""

from __future__ import annotations

# candidates rows: one prompt with N responses; per-response columns are lists aligned with RESPONSES
PROMPT = "prompt"
RESPONSES = "responses"
GENERATORS = "generators"
REF_LOGPS = "ref_logps"
REF_TOKEN_COUNTS = "ref_token_counts"
POLICY_LOGPS = "policy_logps"
REWARDS = "rewards"
REWARD_SOURCE = "reward_source"
# list[list[float]]: a multi-objective reward model's per-objective rewards of each response
REWARD_OBJECTIVES = "reward_objectives"
IFEVAL_STRICT = "ifeval_strict"
IFEVAL_LOOSE = "ifeval_loose"
CORRECTNESS = "correctness"
INSTRUCTION_ID_LIST = "instruction_id_list"
KWARGS = "kwargs"
PROMPTS_SEEN = "prompts_seen"  # per response: the prompt text its generator answered (embedded IFEval data)
RESPONSE_FLAGS = (
    "response_flags"  # per response: why screening flagged it (None = kept), hfpref.steps.screening
)
# ResponseSampler: per response, the generated token ids (no prompt, no special tokens: no EOS, no padding),
# the response in the unit RESPONSE_TOKEN_UNIT names; None for a response from elsewhere. A cache artifact:
# PairMetrics counts e_Δ on them instead of tokenizing again; the release leaves both columns out
RESPONSE_TOKEN_IDS = "response_token_ids"
# ResponseSampler: per row, the unit label of RESPONSE_TOKEN_IDS, "token:<model>@<revision>"
# (hfpref.models.hub.model_token_unit), comparable with a PairMetrics step's declared edit_distance_unit
RESPONSE_TOKEN_UNIT = "response_token_unit"
SCREENED_OUT = "screened_out"  # per row: the responses screening removed, [{index, generator, reason, chars}]

# per-prompt N x N matrices written by the pair-metrics step (row i = chosen candidate, column j = rejected)
EDIT_DISTANCE_MATRIX = "edit_distance_matrix"
LOGP_DIFF_MATRIX = "logp_diff_matrix"
REWARD_MARGIN_MATRIX = "reward_margin_matrix"
DCRM_MATRIX = "dcrm_matrix"
EDIT_DISTANCE_UNIT = "edit_distance_unit"  # "word" or "token:<tokenizer>@<revision>"
MATRIX_COLUMNS = (EDIT_DISTANCE_MATRIX, LOGP_DIFF_MATRIX, REWARD_MARGIN_MATRIX, DCRM_MATRIX)

# pairs rows: TRL's preference format plus metadata
CHOSEN = "chosen"
REJECTED = "rejected"
CHOSEN_INDEX = "chosen_index"
REJECTED_INDEX = "rejected_index"
CHOSEN_GENERATOR = "chosen_generator"
REJECTED_GENERATOR = "rejected_generator"
REWARD_CHOSEN = "reward_chosen"
REWARD_REJECTED = "reward_rejected"
REWARD_MARGIN = "reward_margin"
EDIT_DISTANCE = "edit_distance"
LOGP_DIFF = "logp_diff"
DCRM = "dcrm"
PAIR_STRATEGY = "pair_strategy"
DROP_REASON = "drop_reason"  # why a row made no pair (pair makers), or "row_error" (a row a step dropped)
# hfpref.core.step: the RowError message of a row a step dropped (on_row_error="drop"), else None; the
# pipeline counts them
ROW_ERROR = "row_error"

# the pair columns, in this order, that every pair maker writes (PairSelector, ContrastPairs, AnnotatedPairs,
# MCTSPairGenerator, the delta sweeps), None in a dropped row; ``steps.pair_rows.pairs_features`` types them
PAIR_COLUMNS = (
    CHOSEN,
    REJECTED,
    CHOSEN_INDEX,
    REJECTED_INDEX,
    CHOSEN_GENERATOR,
    REJECTED_GENERATOR,
    REWARD_CHOSEN,
    REWARD_REJECTED,
    REWARD_MARGIN,
    EDIT_DISTANCE,
    LOGP_DIFF,
    DCRM,
)

PER_RESPONSE_COLUMNS = (
    RESPONSES,
    GENERATORS,
    REF_LOGPS,
    REF_TOKEN_COUNTS,
    POLICY_LOGPS,
    REWARDS,
    REWARD_OBJECTIVES,
    IFEVAL_STRICT,
    IFEVAL_LOOSE,
    CORRECTNESS,
    PROMPTS_SEEN,
    RESPONSE_FLAGS,
    RESPONSE_TOKEN_IDS,
)
# the token-id cache a model step leaves for later steps: no pair row or release file carries it
TOKEN_CACHE_COLUMNS = (RESPONSE_TOKEN_IDS, RESPONSE_TOKEN_UNIT)

# written by IFEvalVerifier: per row, "<instruction id>.<argument>" for each argument lm-eval's check drew at
# random because the row's kwargs left it out or gave an invalid value (e.g. a non-letter ``letter``)
IFEVAL_INVENTED_ARGS = "ifeval_invented_args"

# ---- per response, besides PER_RESPONSE_COLUMNS ------------------------------------------------------------
# LogProbAnnotator run under the policy (iterative DPO): token counts of policy_logps; read by ImplicitMargins
POLICY_TOKEN_COUNTS = "policy_token_counts"
# LogProbAnnotator / RewardAnnotator with overflow="truncate": tokens cut from each response
REF_TRUNCATED_TOKENS = "ref_truncated_tokens"
POLICY_TRUNCATED_TOKENS = "policy_truncated_tokens"
REWARD_TRUNCATED_TOKENS = "reward_truncated_tokens"
REWARD_OUTPUTS = "reward_outputs"  # RewardAnnotator: every output of the reward head, per response
# ImplicitMargins (hfpref.steps.margins): r̂ = β·(log π_θ − log π_ref) per response, None for a missing one;
# read by AnnotatedPairs and the iterative loop
IMPLICIT_REWARDS = "implicit_rewards"
# AnnotateSelected (hfpref.steps.annotate): list[bool], which responses the annotator scored; read by iterate
RESPONSE_ANNOTATED = "response_annotated"

# ---- per unordered pair (i, j), i < j, of a candidates row: lists aligned with PAIR_INDICES ----------------
PAIR_INDICES = "pair_indices"  # ImplicitMargins: list[[i, j]] in itertools.combinations order
IMPLICIT_MARGINS = "implicit_margins"  # ImplicitMargins: list[float], r̂_i − r̂_j
PAIR_EXCLUDED_REASON = "pair_excluded_reason"  # AnnotationSelector: list[str | None], why a pair cannot go
# AnnotationSelector: list[bool], the pairs that go to annotation; read by AnnotateSelected, AnnotatedPairs,
# PairwiseJudge and the Label Studio export (hfpref.human)
SELECTED_FOR_ANNOTATION = "selected_for_annotation"
PER_PAIR_COLUMNS = (PAIR_INDICES, IMPLICIT_MARGINS, PAIR_EXCLUDED_REASON, SELECTED_FOR_ANNOTATION)
# per row, AnnotationSelector: the selection that flagged the pairs; AnnotatedPairs names its pairs after it
SELECTION_STRATEGY = "selection_strategy"
SELECTION_LEVEL = "selection_level"
SELECTION_FRACTION = "selection_fraction"
SELECTION_COUNT = "selection_count"
SELECTION_COLUMNS = (SELECTION_STRATEGY, SELECTION_LEVEL, SELECTION_FRACTION, SELECTION_COUNT)

# ---- constrained prompts (ConstrainedPrompts, hfpref.steps.constraints) ------------------------------------
SEED_PROMPT = "seed_prompt"  # the prompt the constraints were added to
# k, the number of constraints; read by ContrastPairs and mix_contrast(stratify=...)
DIFFICULTY = "difficulty"

# ---- pairs rows, besides PAIR_COLUMNS ----------------------------------------------------------------------
# AnnotatedPairs: the pair's DPO implicit margin (TRL's rewards/margins) and implicit rewards
IMPLICIT_MARGIN = "implicit_margin"
IMPLICIT_REWARD_CHOSEN = "implicit_reward_chosen"
IMPLICIT_REWARD_REJECTED = "implicit_reward_rejected"
# ContrastPairs (hfpref.steps.contrast): the correctness gap, its level ("high", "mid", "low") and the two
# scores; mix_contrast and the recipe's contrast mixes read CONTRAST_LEVEL
CONTRAST = "contrast"
CONTRAST_LEVEL = "contrast_level"
CHOSEN_CORRECTNESS = "chosen_correctness"
REJECTED_CORRECTNESS = "rejected_correctness"
# GeneratorDeltaTagger (hfpref.steps.generator_delta) and the delta sweeps: the two generators' capabilities,
# their difference and whether both sides come from one generator; read by the sweeps and the release
SAME_SOURCE = "same_source"
GENERATOR_DELTA = "generator_delta"
CHOSEN_CAPABILITY = "chosen_capability"
REJECTED_CAPABILITY = "rejected_capability"

# ---- release configs (names of the datasets a release folder holds, besides one per strategy) --------------
# the annotated candidates rows, written by the pipeline; read by the release and hfpref.human
CANDIDATES_CONFIG = "candidates"
