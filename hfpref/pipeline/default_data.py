"""The embedded default input: IFEval's 541 prompts with eight real generators' published responses.

``load_ifeval_candidates(generators=None)`` returns one candidates row per prompt with the columns
``key``, ``prompt``, ``instruction_id_list``, ``kwargs``, ``responses``, ``generators`` and
``prompts_seen`` (per response, the prompt text its generator answered; ``hfpref.steps.screening`` compares it
with today's prompt). Responses are listed in ``GENERATORS`` order (or the order asked for); a generator
without a response for a prompt is skipped (GPT-4 has none for key 2785, revised after GPT-4's responses
were published, so that row has N = 7), and a ``null`` response (a failed API call) stays ``None``: it
is not a candidate, and the steps count it as missing instead of grading an empty string.

The responses live in one Parquet file (``responses.parquet``: ``key, generator, prompt_seen,
response``, zstd), the prompts in IFEval's own ``prompts.jsonl``; ``PROVENANCE.md`` says where each
generator's responses come from and under which license they are redistributed.

The rows are built with ``datasets`` (Arrow cache files), so the steps mapped over them later
are cache hits on a rerun. Arrow stores ``kwargs`` (a list of dicts with different keys) as a list
of structs with every key, the missing ones ``None``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

from hfpref.core import columns as C
from hfpref.core.errors import UserError

# bumped whenever the rows built from the files change shape, so old cache files are not reused
LOADER_VERSION = "2"

PROMPTS_FILE = "prompts.jsonl"
RESPONSES_FILE = "responses.parquet"
PROVENANCE_FILE = "PROVENANCE.md"
LICENSE_FILES = ("LICENSE.M-IFEval.txt",)
PROMPTS_SEEN = C.PROMPTS_SEEN

# every generator in responses.parquet, in the order a row lists them (the default: all eight)
GENERATORS = (
    "gpt-4-20231107",
    "text-bison-001",
    "qwen2.5-0.5b-instruct",
    "qwen2.5-1.5b-instruct",
    "qwen2.5-7b-instruct",
    "qwen2.5-14b-instruct",
    "qwen2.5-32b-instruct",
    "mistral-7b-instruct-v0.3",
)
# the named embedded inputs a recipe's ``input: {default: NAME}`` accepts, and their generators
NAMED_INPUTS: dict[str, tuple[str, ...]] = {
    "ifeval": GENERATORS,
    "ifeval-2": ("gpt-4-20231107", "text-bison-001"),  # the first default: IFEval's own two generators
}
DEFAULT_INPUT_NAME = "ifeval"
LICENSE = "apache-2.0"
SOURCE = (
    "IFEval (Zhou et al. 2023, arXiv:2311.07911; google-research, instruction_following_eval/data/): "
    "prompts, GPT-4 and text-bison responses; M-IFEval (Dussolle et al. 2025, arXiv:2502.04688; "
    "github lightblue-tech/M-IFEval @ 0bc3143a): Qwen2.5-{0.5B,1.5B,7B,14B,32B}-Instruct and "
    "Mistral-7B-Instruct-v0.3 responses to the same prompts"
)


class DefaultDataError(UserError):
    """An embedded input asked for in a way the packaged files cannot serve."""


def data_dir() -> Path:
    """The folder of the embedded IFEval files inside the installed package."""
    return Path(str(resources.files("hfpref") / "data" / "ifeval"))


def file_sha256() -> dict[str, str]:
    """sha256 of each embedded data file: the revision of the default input, for cards and manifests."""
    return {
        name: hashlib.sha256((data_dir() / name).read_bytes()).hexdigest()
        for name in (PROMPTS_FILE, RESPONSES_FILE)
    }


def resolve_generators(name: str = DEFAULT_INPUT_NAME, generators: Sequence[str] | None = None) -> list[str]:
    """The generators of embedded input ``name``, or ``generators`` after checking each is packaged."""
    if name not in NAMED_INPUTS:
        raise DefaultDataError(f"unknown embedded input {name!r}; known: {sorted(NAMED_INPUTS)}")
    if generators is None:
        return list(NAMED_INPUTS[name])
    unknown = [g for g in generators if g not in GENERATORS]
    if unknown or not generators or len(set(generators)) != len(generators):
        raise DefaultDataError(
            f"input.generators: {list(generators)!r} must name distinct packaged generators, at least one; "
            f"unknown: {unknown}; packaged: {list(GENERATORS)}"
        )
    return list(generators)


def _responses_table():
    import pyarrow.parquet as pq

    return pq.read_table(data_dir() / RESPONSES_FILE)


# the source file each generator's responses came from (responses_<stem>.jsonl in the IFEval / M-IFEval
# copies), so code that knew the files by these names can ask for a generator by them
SOURCE_STEMS = {
    "gpt-4": "gpt-4-20231107",
    "text-bison": "text-bison-001",
    **{g: g for g in GENERATORS if g not in ("gpt-4-20231107", "text-bison-001")},
}


def response_records(generator: str) -> list[dict[str, Any]]:
    """One generator's rows of ``responses.parquet`` (``key``, ``generator``, ``prompt_seen``,
    ``response``; None kept), in file order; ``generator`` is its name or its source file stem."""
    name = SOURCE_STEMS.get(generator, generator)
    if name not in GENERATORS:
        raise DefaultDataError(f"no packaged responses of {generator!r}; packaged: {list(GENERATORS)}")
    return [row for row in _responses_table().to_pylist() if row["generator"] == name]


def generator_names() -> list[str]:
    """The generators of the packaged responses, in file order."""
    table = _responses_table()
    return list(dict.fromkeys(table.column("generator").to_pylist()))


class _AttachResponses:
    """``Dataset.map`` function joining each prompt row to its responses by ``key``.

    Written by hand because ``datasets`` has no keyed join; the tables are small (8 x 541 rows).
    """

    def __init__(self, generators: Sequence[str]) -> None:
        self.generators = list(generators)
        self.table: dict[tuple[int, str], tuple[str, str | None]] = {}
        for row in _responses_table().to_pylist():
            index = (row["key"], row["generator"])
            if index in self.table:
                raise DefaultDataError(
                    f"{RESPONSES_FILE}: key {row['key']} of {row['generator']} appears twice"
                )
            self.table[index] = (row["prompt_seen"], row["response"])

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        responses, generators, seen = [], [], []
        for key in batch["key"]:
            found = [(g, self.table[key, g]) for g in self.generators if (key, g) in self.table]
            # a null response stays None (never ""): it is a failed generation, not an empty answer
            responses.append([response for _, (_, response) in found])
            generators.append([g for g, _ in found])
            seen.append([prompt for _, (prompt, _) in found])
        return {C.RESPONSES: responses, C.GENERATORS: generators, PROMPTS_SEEN: seen}


def load_ifeval_candidates(
    cache_dir: str | Path | None = None,
    generators: Sequence[str] | None = None,
    name: str = DEFAULT_INPUT_NAME,
):
    """IFEval's prompts with the generators' responses, as a cached ``datasets.Dataset``.

    Output columns: ``key`` (int), ``prompt`` (str), ``instruction_id_list`` (list[str]),
    ``kwargs`` (list of structs), ``responses`` (list[str | None]), ``generators`` (list[str]),
    ``prompts_seen`` (list[str]). ``generators``: which packaged generators, in this order (default: those
    of the named input ``name``). ``cache_dir`` is where ``datasets`` keeps the Arrow files.
    """
    import datasets

    chosen = resolve_generators(name, generators)
    prompts = datasets.load_dataset(
        "json",
        data_files=str(data_dir() / PROMPTS_FILE),
        split="train",
        cache_dir=str(cache_dir) if cache_dir is not None else None,
    )
    fingerprint = hashlib.sha256(
        json.dumps(
            {"loader": LOADER_VERSION, "files": file_sha256(), "generators": chosen}, sort_keys=True
        ).encode()
    ).hexdigest()[:32]
    return prompts.map(
        _AttachResponses(chosen),
        batched=True,
        batch_size=1000,
        new_fingerprint=fingerprint,
        desc="Joining IFEval responses",
    )


def input_description(
    name: str = DEFAULT_INPUT_NAME, generators: Sequence[str] | None = None
) -> dict[str, Any]:
    """What a card or manifest says about an embedded input: source, license, file hashes, generators."""
    return {
        "kind": "default",
        "name": name,
        "source": SOURCE,
        "license": LICENSE,
        "revision": None,
        "files_sha256": file_sha256(),
        "generators": resolve_generators(name, generators),
        "provenance": (data_dir() / PROVENANCE_FILE).read_text(encoding="utf-8"),
    }
