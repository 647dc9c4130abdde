"""What a release is written from: the attributes ``write_release`` reads, as ``typing.Protocol``\\ s.

The release layer never imports the pipeline: ``hfpref.pipeline.recipe.RecipeResult`` (and an iterate
round's result) satisfy ``ReleaseContent`` by shape, and so can any object a test or another tool builds.
Datasets are ``datasets.Dataset`` objects (typed ``Any`` here so that this module imports nothing heavy).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Protocol

from hfpref.core.cache import reopened


class Describable(Protocol):
    """A step or pair selector: ``describe()`` is its entry in the manifest (name, config, revision)."""

    def describe(self) -> Mapping[str, Any]: ...


class PushTarget(Protocol):
    repo_id: str


class ReleaseOutput(Protocol):
    """The recipe's ``output`` section: where the release goes, its name, version and license."""

    folder: str
    name: str
    version: str
    license: str | None
    candidate_matrices: bool  # keep the N x N pair-metric matrices in the candidates config
    push_to_hub: PushTarget | None


class ReleasePairs(Protocol):
    """The recipe's ``pairs`` section: the configs made by pair makers, mixes, sweeps and filters.

    Items: makers (``name``, ``step``, ``source``), mixes (``name``, ``from_``), sweeps (``name``,
    ``chosen``, ``rejected``, ``level_names()``) and filters (``name``, ``from_``).
    """

    makers: Sequence[Any]
    mixes: Sequence[Any]
    sweeps: Sequence[Any]
    filters: Sequence[Any]


class ReleaseRecipe(Protocol):
    """The recipe as run: the card shows ``to_dict()`` as YAML (it must rerun as is)."""

    description: str | None
    output: ReleaseOutput
    pairs: ReleasePairs

    def to_dict(self) -> dict[str, Any]: ...


class ReleaseContent(Protocol):
    """Everything a release folder is written from (``hfpref.release.writer.write_release``)."""

    recipe: ReleaseRecipe
    candidates: Any  # datasets.Dataset: the annotated candidates (config "candidates")
    steps: Sequence[Describable]  # the steps run, in order (one may expose ``edit_distance_unit``)
    step_rows: Sequence[Mapping[str, int]]  # rows in / out of each step (may be empty)
    pairs: Mapping[str, Any]  # config (strategy, maker, mix, sweep level, filter) -> datasets.Dataset
    dropped: Mapping[str, Mapping[str, int]]  # config -> drop reason -> count
    selectors: Mapping[str, Describable]  # config -> what made it
    input_info: Mapping[str, Any]  # what was read, with hashes and license
    skipped_strategies: Mapping[str, str]  # strategy -> why it did not run
    generator_accuracy: list[dict[str, Any]] | None  # hfpref.steps.capabilities, when measured
    sweeps: Mapping[str, Mapping[str, Any]]  # delta sweep name -> its analysis (with "capabilities")
    filters: Mapping[str, Mapping[str, Any]]  # sample-delta filter name -> what it kept

    @property
    def generator_ranking(self) -> list[str] | None:
        """Generator names, strongest first, as the selectors used them (None without a ranking)."""

    @property
    def ranking_source(self) -> str | None:
        """ "measured", "given" or None."""

    def edit_distance_unit(self) -> str | None:
        """ "word" or "token:<id>@<rev>", as the pair-metrics step wrote it (None without that step)."""


class ReopenedPairs(Mapping):
    """``pairs`` whose every read is a fresh memory map of the dataset (``hfpref.core.cache.reopened``)."""

    def __init__(self, pairs: Mapping[str, Any]) -> None:
        self._pairs = pairs

    def __getitem__(self, name: str) -> Any:
        return reopened(self._pairs[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self._pairs)

    def __len__(self) -> int:
        return len(self._pairs)


class ReopenedContent:
    """``content`` as the writer reads it: each read of ``candidates`` or of a config of ``pairs`` is a fresh
    memory map of the same cache files, dropped when the read is done; every other attribute is
    ``content``'s own.

    A release reads every dataset whole (Parquet, summaries, agreement, plots); the pages of a memory map
    stay in the process's RSS while the map lives, so reading the result's own datasets would leave all of
    them resident at once by the end of the write (2.5 GB at 69k prompts). Fresh maps, one at a time, keep
    only the dataset being read resident; the bytes written are the same.
    """

    def __init__(self, content: ReleaseContent) -> None:
        self._content = content

    @property
    def candidates(self) -> Any:
        return reopened(self._content.candidates)

    @property
    def pairs(self) -> Mapping[str, Any]:
        return ReopenedPairs(self._content.pairs)

    def __getattr__(self, name: str) -> Any:
        if name == "_content":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self._content, name)
