"""Options more than one command takes, declared once so that every command spells them the same way.

``RunOptions``: how a recipe's steps run (``curate`` and ``iterate``): engine, GPUs, shards, cache, batches,
progress. ``HubOptions``: how a release is pushed to the Hub (``curate --push-to-hub`` and ``push``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from hfpref.cli.parsing import option, switch
from hfpref.core.errors import UserError
from hfpref.pipeline.resume import DEFAULT_SHARD_ROWS


class OptionError(UserError):
    """Command-line options that cannot work together."""


@dataclass(kw_only=True)
class RunOptions:
    """Where and how the steps of a recipe run."""

    engine: Literal["local", "ray"] = option(
        "where steps run: 'local' (datasets, this machine) or 'ray' (Ray Data; pip install 'hfpref[ray]')",
        default="local",
    )
    gpus: int | None = option(
        "GPUs for each model step: K worker processes with ranks 0..K-1 (local engine), or K actors with "
        "one GPU each (Ray engine); pure-CPU steps are not affected",
        metavar="K",
    )
    shard_rows: int = option(
        "rows per resumable shard of a step: a killed run resumes from its last finished shard "
        f"(default: {DEFAULT_SHARD_ROWS}, rounded up to a multiple of --batch-size; 0: cache whole steps only)",
        default=DEFAULT_SHARD_ROWS,
        metavar="N",
    )
    address: str | None = option(
        "Ray cluster to join, e.g. 'auto' or 'ray://HEAD:10001' (default: start a local one); with --engine ray",
        metavar="ADDR",
    )
    concurrency: int | None = option(
        "actors per model step (default: --gpus, else the cluster's GPUs, else its CPUs); with --engine ray",
        metavar="N",
    )
    cache_dir: str | None = option(
        "where datasets keeps the cached step outputs (default: curate: datasets' cache, "
        "~/.cache/huggingface/datasets; iterate: FOLDER/cache)",
        metavar="DIR",
    )
    batch_size: int = option("rows per batch of each step", default=64)
    num_proc: int | None = option(
        "worker processes per step, local engine (model steps take --gpus instead when it is given)"
    )
    no_progress: bool = switch("no progress bars (the global --quiet is the same)")

    def __post_init__(self) -> None:
        if self.gpus is not None and self.gpus < 1:
            raise OptionError(f"--gpus must be at least 1, got {self.gpus}")
        if self.shard_rows < 0:
            raise OptionError(f"--shard-rows must be 0 or more, got {self.shard_rows}")
        if self.engine == "local":
            for flag, value in (("--address", self.address), ("--concurrency", self.concurrency)):
                if value is not None:
                    raise OptionError(f"{flag} applies to --engine ray only")
        elif self.num_proc is not None:
            raise OptionError(
                "--num-proc applies to the local engine; with --engine ray use --concurrency or --gpus"
            )

    def build_engine(self) -> Any:
        """The engine these options ask for (``hfpref.pipeline.engines``); the caller closes it."""
        from hfpref.pipeline.engines import make_engine

        if self.engine == "local":
            return make_engine("local", gpus=self.gpus, shard_rows=self.shard_rows)
        return make_engine(
            "ray",
            address=self.address,
            gpus=self.gpus,
            concurrency=self.concurrency,
            shard_rows=self.shard_rows,
            progress=not self.no_progress,
        )


@dataclass(kw_only=True)
class HubOptions:
    """Where on the Hub a release goes and what may be replaced."""

    revision: str | None = option(
        "branch to push to (default: release-v<version>; 'main' is allowed)", metavar="BRANCH"
    )
    private: bool = switch("create the Hub repo as private (if it does not exist)")
    token: str | None = option("Hub token (default: HF_TOKEN or the saved login)", metavar="TOKEN")
    force: bool = switch(
        "move an existing v<version> tag to the new upload (refused otherwise); curate: also replace a release "
        "folder that holds a different release (another output.name)"
    )

    def push(self, folder: Any, repo_id: str, version: str) -> dict[str, Any]:
        """Push the release in ``folder`` to ``repo_id`` as ``version`` (``hfpref.release.push.push_release``)."""
        from hfpref.release import push_release

        return push_release(
            folder,
            repo_id,
            version,
            revision=self.revision,
            private=self.private,
            token=self.token,
            force=self.force,
        )
