"""Offline NLTK data: the English Punkt tables shipped inside the package.

IFEval's sentence counts depend on NLTK's Punkt tokenizer, and lm-eval tries ``nltk.download`` at import
when it cannot find the data. Putting the packaged copy first on ``nltk.data.path`` makes every machine
(offline ones, first use included) count sentences with the same tables and never attempt a download.
"""

from __future__ import annotations

from pathlib import Path

PACKAGED_NLTK_DATA = Path(__file__).resolve().parents[1] / "nltk_data"


def use_packaged_nltk_data() -> str:
    """Put the packaged NLTK data folder first on ``nltk.data.path`` (idempotent); return its path."""
    import nltk

    folder = str(PACKAGED_NLTK_DATA)
    if folder in nltk.data.path:
        nltk.data.path.remove(folder)
    # first, not appended: a user's own (possibly different) Punkt version must not change verdicts
    nltk.data.path.insert(0, folder)
    return folder
