"""The errors of the iterate loop: a recipe or folder that cannot run, and a round waiting for people."""

from __future__ import annotations

from hfpref.pipeline.validate import RecipeError


class IterateError(RecipeError):
    """An iterate recipe or output folder that cannot run as it is."""


class LabelsPendingError(IterateError):
    """A round's pairs are in Label Studio and some are not annotated yet: annotate them, then rerun."""

    def __init__(self, message: str, *, round_number: int, project: str, pending: int) -> None:
        super().__init__(message)
        self.round_number, self.project, self.pending = round_number, project, pending
