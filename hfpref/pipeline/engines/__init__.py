"""Engines: where a recipe's steps run. The steps and the recipe are the same on every engine.

=========  ==========================================================================================
``local``  ``Dataset.map`` in this process; with ``gpus=k``, model steps in k worker processes, one per
           GPU (``hfpref.pipeline.engines.local``)
``ray``    Ray Data on a local or remote Ray cluster: model steps as actor pools with ``num_gpus`` per
           actor, pure-CPU steps and pair selection as tasks (``hfpref.pipeline.engines.ray_engine``)
=========  ==========================================================================================

An engine offers ``map_step(step, dataset, batch_size=, num_proc=)`` (the step's output over a
``datasets.Dataset``, cached and resumable), ``select_pairs(selectors, candidates, batch_size=, num_proc=)``
(yields ``(strategy, pairs with drop_reason)``) and ``close()``; ``select_pairs`` and ``close`` come from
``hfpref.pipeline.engines.base.Engine``, an engine saying only where the selectors run. Both engines return
the same rows, written to the same ``datasets`` cache under the same fingerprints.
"""

from __future__ import annotations

from typing import Any

ENGINES = ("local", "ray")


class EngineError(RuntimeError):
    """An engine that cannot run as configured (Ray missing, more GPUs asked for than the cluster has)."""


def is_model_step(step: Any) -> bool:
    """Whether ``step`` runs a model (``Step.uses_model``): one accelerator per worker."""
    return bool(getattr(step, "uses_model", False))


def make_engine(name: str = "local", **options: Any) -> Any:
    """The engine called ``name`` (one of ``ENGINES``), built with its options."""
    if name == "local":
        from hfpref.pipeline.engines.local import LocalEngine

        return LocalEngine(**options)
    if name == "ray":
        from hfpref.pipeline.engines.ray_engine import RayEngine

        return RayEngine(**options)
    raise ValueError(f"unknown engine {name!r}; choose one of {list(ENGINES)}")


__all__ = ["ENGINES", "EngineError", "is_model_step", "make_engine"]
