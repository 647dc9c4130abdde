"""The embedded default input: IFEval's 541 prompts with GPT-4's and text-bison's published responses.

``load_ifeval_candidates()`` returns one candidates row per prompt with the columns
``key``, ``prompt``, ``instruction_id_list``, ``kwargs``, ``responses`` and ``generators``
(GPT-4's response first, then text-bison's; a generator without a response for a prompt is skipped,
so key 2785, revised after GPT-4's responses were published, has N = 1).

The rows are built with ``datasets`` (Arrow cache files), so the steps mapped over them later
are cache hits on a rerun. Arrow stores ``kwargs`` (a list of dicts with different keys) as a list
of structs with every key, the missing ones ``None``.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

from hfpref import columns as C

# bumped whenever the rows built from the files change shape, so old cache files are not reused
LOADER_VERSION = "1"

PROMPTS_FILE = "prompts.jsonl"
# order matters: responses are listed in this order within each row (the stronger generator first)
RESPONSE_FILES = ("responses_gpt-4.jsonl", "responses_text-bison.jsonl")
PROVENANCE_FILE = "PROVENANCE.md"

DEFAULT_INPUT_NAME = "ifeval"
LICENSE = "apache-2.0"
SOURCE = (
    "IFEval (Zhou et al. 2023, arXiv:2311.07911), google-research repository, "
    "folder instruction_following_eval/data/"
)


def data_dir() -> Path:
    """The folder of the embedded IFEval files inside the installed package."""
    return Path(str(resources.files("hfpref") / "data" / "ifeval"))


def file_sha256() -> dict[str, str]:
    """sha256 of each embedded data file: the revision of the default input, for cards and manifests."""
    hashes = {}
    for name in (PROMPTS_FILE, *RESPONSE_FILES):
        hashes[name] = hashlib.sha256((data_dir() / name).read_bytes()).hexdigest()
    return hashes


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def _responses_by_key() -> list[dict[int, tuple[str, str]]]:
    """For each response file (in RESPONSE_FILES order): key -> (generator, response)."""
    tables = []
    for name in RESPONSE_FILES:
        table: dict[int, tuple[str, str]] = {}
        for row in _read_jsonl(data_dir() / name):
            if row["key"] in table:
                raise ValueError(f"{name}: key {row['key']!r} appears twice")
            table[row["key"]] = (row["generator"], row["response"])
        tables.append(table)
    return tables


def generator_names() -> list[str]:
    """The generators of the embedded responses, strongest first (GPT-4, then text-bison)."""
    names = []
    for table in _responses_by_key():
        found = sorted({generator for generator, _ in table.values()})
        if len(found) != 1:
            raise ValueError(f"expected one generator per response file, found {found}")
        names.append(found[0])
    return names


class _AttachResponses:
    """``Dataset.map`` function joining each prompt row to its responses by ``key``.

    Written by hand because ``datasets`` has no keyed join; the tables are small (541 rows).
    """

    def __init__(self) -> None:
        self.tables = _responses_by_key()

    def __call__(self, batch: dict[str, list]) -> dict[str, list]:
        responses, generators = [], []
        for key in batch["key"]:
            found = [table[key] for table in self.tables if key in table]
            responses.append([response for _, response in found])
            generators.append([generator for generator, _ in found])
        return {C.RESPONSES: responses, C.GENERATORS: generators}


def load_ifeval_candidates(cache_dir: str | Path | None = None):
    """IFEval's prompts with both generators' responses, as a cached ``datasets.Dataset``.

    Output columns: ``key`` (int), ``prompt`` (str), ``instruction_id_list`` (list[str]),
    ``kwargs`` (list of structs), ``responses`` (list[str]), ``generators`` (list[str]).
    ``cache_dir`` is where ``datasets`` keeps the Arrow files (its default cache when None).
    """
    import datasets

    prompts = datasets.load_dataset(
        "json",
        data_files=str(data_dir() / PROMPTS_FILE),
        split="train",
        cache_dir=str(cache_dir) if cache_dir is not None else None,
    )
    hashes = file_sha256()
    fingerprint = hashlib.sha256(
        json.dumps({"loader": LOADER_VERSION, "files": hashes}, sort_keys=True).encode()
    ).hexdigest()[:32]
    return prompts.map(
        _AttachResponses(),
        batched=True,
        batch_size=1000,
        new_fingerprint=fingerprint,
        desc="Joining IFEval responses",
    )


def input_description() -> dict[str, Any]:
    """What a card or manifest says about the default input: source, license, file hashes, generators."""
    return {
        "kind": "default",
        "name": DEFAULT_INPUT_NAME,
        "source": SOURCE,
        "license": LICENSE,
        "revision": None,
        "files_sha256": file_sha256(),
        "generators": generator_names(),
        "provenance": (data_dir() / PROVENANCE_FILE).read_text(encoding="utf-8"),
    }
