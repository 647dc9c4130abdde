"""Pairwise human preference labels through a Label Studio server, and back as TRL preference rows.

The round trip:

1. ``pair_tasks_from_release`` / ``pair_tasks_from_rows`` / ``selected_pair_tasks`` turn a release's pairs
   (or the pairs an iterate round selected for annotation) into ``PairTask``\\ s. A pair's two responses
   are put in a canonical order (``response_1`` < ``response_2`` as JSON), so the same unordered pair
   always has the same ``pair_id`` (sha256 of prompt and both responses) whatever machine label it had.
2. ``push_pairs`` creates (or reuses) a project with the pairwise interface ``LABEL_CONFIG`` (prompt,
   responses A and B side by side, A / B / tie / skip, optional comment) and imports only the pairs whose
   ``pair_id`` the project does not hold yet: a second push is a no-op. Which response is shown as A is
   drawn per pair from ``seed`` and the ``pair_id`` (position bias is real, so it is randomised) and is
   recorded in the task itself (``shown_first``), so the server holds everything a pull needs.
3. People annotate in Label Studio's web UI.
4. ``pull_labels`` exports the project and ``collect_labels`` maps every vote back through the recorded
   order (a vote "A" is for the response that was shown as A), reduces several annotators' votes per pair
   by a declared rule (``majority`` or ``unanimous``), computes their agreement, counts ties and skips with
   their reasons (the comment), and reports pairs nobody finished as pending, never guessing them.
5. ``write_labels_release`` writes the result as a release folder (``load_release`` / ``train_dpo`` read
   it): config ``human`` (TRL rows, ``label_source = human:<annotator ids>``), ``pairs`` (every pushed
   pair once, with its outcome) and ``annotations`` (every vote), a manifest and a card with the counts.

Modules: ``client`` (the REST calls and the API key, from ``LABEL_STUDIO_API_KEY`` only), ``tasks``
(step 1), ``rounds`` (steps 2 and 4, and one iterate round), ``labels`` (votes to rows) and ``release``
(step 5). The names below are importable from this package.
"""

from hfpref.human.labelstudio.client import (
    API_KEY_ENV,
    DEFAULT_URL,
    LABEL_CONFIG,
    URL_ENV,
    LabelStudioClient,
    LabelStudioError,
    api_key_from_env,
    project_url,
)
from hfpref.human.labelstudio.labels import (
    ANNOTATORS,
    CHOICES,
    CHOSEN_SHOWN_FIRST,
    LABEL_SOURCE,
    OUTCOME,
    PAIR_ID,
    RULES,
    TIME_SPENT_S,
    PullResult,
    Vote,
    agreement,
    collect_labels,
    labels_dataset,
    parse_vote,
    reduce_votes,
)
from hfpref.human.labelstudio.release import (
    ANNOTATIONS_CONFIG,
    CARD_TEMPLATE,
    HUMAN_CONFIG,
    MANIFEST_FORMAT,
    PAIRS_CONFIG,
    build_manifest,
    render_card,
    write_labels_release,
)
from hfpref.human.labelstudio.rounds import (
    PushResult,
    RoundLabels,
    annotation_status,
    label_round,
    pull_labels,
    push_pairs,
)
from hfpref.human.labelstudio.tasks import (
    PairTask,
    make_pair_id,
    pair_tasks_from_release,
    pair_tasks_from_rows,
    selected_pair_tasks,
    shown_first,
)

__all__ = [
    "ANNOTATIONS_CONFIG",
    "ANNOTATORS",
    "API_KEY_ENV",
    "CARD_TEMPLATE",
    "CHOICES",
    "CHOSEN_SHOWN_FIRST",
    "DEFAULT_URL",
    "HUMAN_CONFIG",
    "LABEL_CONFIG",
    "LABEL_SOURCE",
    "LabelStudioClient",
    "LabelStudioError",
    "MANIFEST_FORMAT",
    "OUTCOME",
    "PAIRS_CONFIG",
    "PAIR_ID",
    "PairTask",
    "PullResult",
    "PushResult",
    "RULES",
    "RoundLabels",
    "TIME_SPENT_S",
    "URL_ENV",
    "Vote",
    "agreement",
    "annotation_status",
    "api_key_from_env",
    "build_manifest",
    "collect_labels",
    "label_round",
    "labels_dataset",
    "make_pair_id",
    "pair_tasks_from_release",
    "pair_tasks_from_rows",
    "parse_vote",
    "project_url",
    "pull_labels",
    "push_pairs",
    "reduce_votes",
    "render_card",
    "selected_pair_tasks",
    "shown_first",
    "write_labels_release",
]
