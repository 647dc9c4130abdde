"""Which files of a local tokenizer folder decide its token ids, and a content hash over them.

``PairMetrics`` (e_Δ counted in a tokenizer's tokens) names a local tokenizer folder in its fingerprint and
output column by this hash, so editing the folder's encoding files gives a new fingerprint.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

# files that decide how a local tokenizer folder encodes text (weights and chat templates do not)
_TOKENIZER_FILE_NAMES = {
    "special_tokens_map.json",
    "added_tokens.json",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
}


def tokenizer_content_hash(folder: str | os.PathLike) -> str:
    """sha256 over the names and bytes of a local tokenizer folder's encoding files."""
    digest = hashlib.sha256()
    folder = Path(folder)
    names = sorted(
        p.name
        for p in folder.iterdir()
        if p.is_file() and (p.name.startswith("tokenizer") or p.name in _TOKENIZER_FILE_NAMES)
    )
    if not names:
        raise FileNotFoundError(f"no tokenizer files in {str(folder)!r}")
    for name in names:
        digest.update(name.encode() + b"\0")
        digest.update((folder / name).read_bytes())
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()
