"""The manifest of a release (``hfpref_manifest.json``): the recipe as run, models, versions, statistics.

Built from a ``ReleaseContent`` (``build_manifest``); deterministic except ``created_at``. The card is
rendered from the manifest alone (``hfpref.release.card``), so the manifest holds every number it shows.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Mapping, Sequence
from importlib import metadata
from typing import Any

from hfpref.core import columns as C
from hfpref.core.columns import CANDIDATES_CONFIG
from hfpref.release.content import ReleaseContent, ReleaseRecipe
from hfpref.release.folder import DATA_GLOB
from hfpref.release.plots import PLOT_FILE
from hfpref.release.summary import (
    candidates_summary,
    column_batches,
    pair_agreement,
    reference_config,
    strategy_summary,
)

MANIFEST_FORMAT = "hfpref-release/1"
PACKAGES = (
    "hfpref",
    "datasets",
    "transformers",
    "trl",
    "lm-eval",
    "rapidfuzz",
    "torch",
    "huggingface_hub",
    "pyarrow",
)
MATRIX_COLUMNS = (C.EDIT_DISTANCE_MATRIX, C.LOGP_DIFF_MATRIX, C.REWARD_MARGIN_MATRIX, C.DCRM_MATRIX)
# config fields that name a model or tokenizer; their resolved commits go on the card
MODEL_FIELDS = ("model", "tokenizer", "reward_model", "ref_model", "policy_model", "judge_model")


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def model_references(described_steps: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Every model or tokenizer a step's config names, with the commit the step resolved it to."""
    refs = []
    for described in described_steps:
        config = described.get("config") or {}
        for field in MODEL_FIELDS:
            value = config.get(field)
            if isinstance(value, str) and value:
                refs.append(
                    {
                        "step": described["step"],
                        "field": field,
                        "id": value,
                        "requested_revision": config.get(f"{field}_revision", config.get("revision")),
                        "revision": described.get("revision"),
                    }
                )
    return refs


def _edit_distance_unit(result: ReleaseContent) -> str | None:
    unit = result.edit_distance_unit()
    if unit is not None:
        return unit
    for step in result.steps:  # the pair-metrics step may expose it without writing a column
        unit = getattr(step, "edit_distance_unit", None)
        if isinstance(unit, str):
            return unit
    return None


def build_manifest(
    result: ReleaseContent, *, version: str, repo_id: str | None = None, created_at: str | None = None
) -> dict[str, Any]:
    """The machine-readable record of a release; deterministic except ``created_at``."""
    recipe = result.recipe
    steps = [
        {**described, **rows}
        for described, rows in zip(
            (s.describe() for s in result.steps), result.step_rows or [{}] * len(result.steps), strict=True
        )
    ]
    selection = {strategy: selector.describe() for strategy, selector in result.selectors.items()}
    origins = config_origins(recipe)
    agreement = pair_agreement(result.pairs)
    configs = _pairs_configs(result, origins, agreement)
    configs[CANDIDATES_CONFIG] = _candidates_config(result)
    input_info = dict(result.input_info)
    ranking = result.generator_ranking
    return {
        "format": MANIFEST_FORMAT,
        "name": recipe.output.name,
        "version": version,
        "repo_id": repo_id,
        "description": recipe.description,
        "license": recipe.output.license or input_info.get("license") or "other",
        "created_at": created_at or _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        **_recipe_as_run(result, origins, version),
        "input": input_info,
        "steps": steps,
        "pair_selection": selection,
        "skipped_strategies": dict(result.skipped_strategies),
        "models": model_references([*steps, *selection.values()]),
        "edit_distance_unit": _edit_distance_unit(result),
        "has_logp": any(
            (c["stats"] or {}).get(C.LOGP_DIFF) for c in configs.values() if c["kind"] == "pairs"
        ),
        "generator_ranking": list(ranking) if ranking else None,
        "generator_ranking_source": result.ranking_source,  # "measured", "given" or None
        "generator_accuracy": result.generator_accuracy,  # hfpref.steps.capabilities, when measured
        "pair_agreement": {a: {b: v["fraction"] for b, v in row.items()} for a, row in agreement.items()},
        "candidates_summary": candidates_summary(result.candidates),
        # generator capabilities as the generator-delta tags use them: the measured accuracies above
        # (prompt-level, the ranking's numbers) or a sweep's table; "given" when the recipe typed them
        "generator_capabilities": _generator_capabilities(result),
        "delta_sweeps": dict(result.sweeps),
        "sample_delta_filters": dict(result.filters),
        "packages": package_versions(),
        "default_config": next(iter(result.pairs), CANDIDATES_CONFIG),
        "configs": configs,
        "plot": PLOT_FILE,
    }


def _recipe_as_run(result: ReleaseContent, origins: Mapping[str, Any], version: str) -> dict[str, Any]:
    """The manifest's ``recipe`` (as a dict) and ``recipe_yaml``: the recipe with "all" strategies resolved
    to those that ran (makers and mixes have their own lists) and the version written."""
    recipe_as_run = result.recipe.to_dict()
    recipe_as_run["pairs"]["strategies"] = [name for name in result.pairs if name not in origins]
    recipe_as_run["output"]["version"] = version
    return {"recipe": recipe_as_run, "recipe_yaml": recipe_yaml(recipe_as_run)}


def _pairs_configs(
    result: ReleaseContent, origins: Mapping[str, Any], agreement: Mapping[str, Mapping[str, Any]]
) -> dict[str, Any]:
    """The manifest entry of each pairs config: files, digest, columns, summary, what made it, and how
    often it chose the same pair as the reference config (``agreement``: ``summary.pair_agreement``)."""
    ranking = result.generator_ranking
    configs: dict[str, Any] = {}
    first_with_digest: dict[str, str] = {}
    for strategy, pairs in result.pairs.items():
        digest = pairs_digest(pairs)
        configs[strategy] = {
            "kind": "pairs",
            "data_files": DATA_GLOB.format(config=strategy),
            "pairs_sha256": digest,
            "same_pairs_as": first_with_digest.get(digest),
            "columns": [c for c in pairs.column_names if c != C.DROP_REASON],
            **strategy_summary(pairs, result.dropped[strategy], ranking),
        }
        if strategy in origins:  # only makers and mixes: a strategy's entry stays as it always was
            configs[strategy]["made_by"] = origins[strategy]
        first_with_digest.setdefault(digest, strategy)
    # how the strategies differ: same pair as the reference strategy, per prompt both kept
    reference = reference_config(list(result.pairs))
    for strategy in result.pairs:
        configs[strategy]["same_pair_as_reference"] = {
            "reference": reference,
            **agreement[strategy][reference],
        }
    return configs


def _candidates_config(result: ReleaseContent) -> dict[str, Any]:
    kept, dropped = candidate_columns(result)
    return {
        "kind": "candidates",
        "data_files": DATA_GLOB.format(config=CANDIDATES_CONFIG),
        "rows": len(result.candidates),
        "columns": kept,
        "dropped_columns": dropped,
    }


def _generator_capabilities(result: ReleaseContent) -> dict[str, Any] | None:
    """The capability table of the release: a sweep's (all sweeps of a run measure the same way unless one is
    given), else the measured generator accuracy's prompt-level values with their Wilson intervals."""
    for sweep in result.sweeps.values():
        return sweep["capabilities"]
    if result.generator_accuracy:
        return {
            "source": "measured",
            "measure": "ifeval_prompt_level",
            "capability_name": "ifeval_prompt_level_strict_accuracy",
            "confidence": result.generator_accuracy[0]["confidence"],
            "capabilities": {a["generator"]: a["prompt_level"] for a in result.generator_accuracy},
            "intervals": {a["generator"]: list(a["prompt_level_ci"]) for a in result.generator_accuracy},
            "responses": {a["generator"]: a["responses"] for a in result.generator_accuracy},
        }
    return None


def config_origins(recipe: ReleaseRecipe) -> dict[str, dict[str, Any]]:
    """config -> what made it, for the configs of pair makers and mixes (strategies are not listed)."""
    origins: dict[str, dict[str, Any]] = {}
    for maker in recipe.pairs.makers:
        origins[maker.name] = {"kind": "maker", "step": maker.step, "source": maker.source}
    for mix in recipe.pairs.mixes:
        origins[mix.name] = {"kind": "mix", "from": list(mix.from_)}
    for sweep in recipe.pairs.sweeps:
        for level, rejected in zip(sweep.level_names(), sweep.rejected, strict=True):
            origins[level] = {
                "kind": "sweep",
                "sweep": sweep.name,
                "chosen": sweep.chosen,
                "rejected": rejected,
            }
    for spec in recipe.pairs.filters:
        origins[spec.name] = {"kind": "filter", "from": spec.from_}
    return origins


def recipe_yaml(recipe: Mapping[str, Any]) -> str:
    """A recipe dict as the YAML ``hfpref curate`` reads (the card shows it)."""
    import yaml

    return yaml.safe_dump(dict(recipe), sort_keys=False, allow_unicode=True, width=100)


def pairs_digest(pairs) -> str:
    """sha256 over the (prompt, chosen, rejected) rows of a pairs dataset, in order: equal digests mean
    two strategies picked exactly the same pairs (common with few candidates per prompt)."""
    digest = hashlib.sha256()
    # batch by batch: three whole text columns of a large config as Python strings would be gigabytes
    for batch in column_batches(pairs, [C.PROMPT, C.CHOSEN, C.REJECTED]):
        for prompt, chosen, rejected in zip(batch[C.PROMPT], batch[C.CHOSEN], batch[C.REJECTED], strict=True):
            digest.update(json.dumps([prompt, chosen, rejected], ensure_ascii=False).encode())
            digest.update(b"\n")
    return digest.hexdigest()


def strategy_groups(configs: Mapping[str, Mapping[str, Any]]) -> dict[str, list[str]]:
    """first strategy -> every pairs config holding exactly its pairs (itself first), in manifest order."""
    groups: dict[str, list[str]] = {}
    for name, config in configs.items():
        if config.get("kind") != "pairs":
            continue
        groups.setdefault(config.get("same_pairs_as") or name, []).append(name)
    return groups


def candidate_columns(result: ReleaseContent) -> tuple[list[str], list[str]]:
    """The candidates' columns the release keeps, and those it drops (the N x N matrices, unless asked, and
    always the sampler's token-id cache: ids that re-tokenizing ``responses`` recovers, mostly, at 4 bytes a
    token, which would be most of the candidates file, see ``hfpref.steps.sampling``)."""
    names = result.candidates.column_names
    dropped = [] if result.recipe.output.candidate_matrices else [c for c in MATRIX_COLUMNS if c in names]
    dropped += [c for c in C.TOKEN_CACHE_COLUMNS if c in names]
    return [c for c in names if c not in dropped], dropped
