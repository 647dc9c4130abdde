"""The shared column contract (DESIGN.md): names used by every step, in one place."""

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
SCREENED_OUT = "screened_out"  # per row: the responses screening removed, [{index, generator, reason, chars}]

# per-prompt N x N matrices written by the pair-metrics step (row i = chosen candidate, column j = rejected)
EDIT_DISTANCE_MATRIX = "edit_distance_matrix"
LOGP_DIFF_MATRIX = "logp_diff_matrix"
REWARD_MARGIN_MATRIX = "reward_margin_matrix"
DCRM_MATRIX = "dcrm_matrix"
EDIT_DISTANCE_UNIT = "edit_distance_unit"  # "word" or "token:<tokenizer>@<revision>"

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
DROP_REASON = "drop_reason"

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
)

# written by IFEvalVerifier: per row, "<instruction id>.<argument>" for each argument lm-eval's check drew at
# random because the row's kwargs left it out or gave an invalid value (e.g. a non-letter ``letter``)
IFEVAL_INVENTED_ARGS = "ifeval_invented_args"

# the release config that holds the annotated candidates (every other config holds pairs)
CANDIDATES_CONFIG = "candidates"
