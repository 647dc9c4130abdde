"""Contrast pairs (arXiv 2412.15282): RS preference pairs tagged with their correctness gap, and mixes of
high- and low-contrast pairs.

``pairs``: the ``ContrastPairs`` step (candidates rows -> pairs rows with ``contrast`` and
``contrast_level``); ``mix``: ``mix_contrast``, a fixed-size dataset drawn from both levels in a ratio.
Every public name of both is importable from here (``hfpref.steps.contrast:ContrastPairs`` is the step's
registry target).
"""

from __future__ import annotations

from hfpref.steps.contrast.mix import MixError, largest_mix_size, largest_remainder, mix_contrast, mix_counts
from hfpref.steps.contrast.pairs import (
    CHOSEN_CORRECTNESS,
    CONTRAST,
    CONTRAST_FLOAT_COLUMNS,
    CONTRAST_LEVEL,
    LEVELS,
    MODES,
    PAIR_STRATEGIES,
    REJECTED_CORRECTNESS,
    ContrastConfig,
    ContrastPairs,
    contrast_level,
)

__all__ = [
    "CHOSEN_CORRECTNESS",
    "CONTRAST",
    "CONTRAST_FLOAT_COLUMNS",
    "CONTRAST_LEVEL",
    "LEVELS",
    "MODES",
    "PAIR_STRATEGIES",
    "REJECTED_CORRECTNESS",
    "ContrastConfig",
    "ContrastPairs",
    "MixError",
    "contrast_level",
    "largest_mix_size",
    "largest_remainder",
    "mix_contrast",
    "mix_counts",
]
