"""Where a model comes from: local folders versus Hub ids, and the exact version a step names.

``resolve_revision`` gives a Hub commit hash, or a content hash of a local folder, so a step's
fingerprint changes when the weights do. ``check_model_path`` turns a mistyped folder into a clear
"no such folder" instead of the Hub's "invalid repo id" or a network wait. Nothing here imports torch.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from hfpref.core.errors import UserError

_COMMIT_HASH = re.compile(r"^[0-9a-f]{40}$")
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


class ModelNotFoundError(UserError):
    """A model that is neither an existing local folder nor a Hub id that resolves."""


def is_local_model(model: str) -> bool:
    return Path(model).expanduser().is_dir()


def looks_like_local_path(model: str) -> bool:
    """Whether ``model`` was meant as a folder: it starts with ``/``, ``.``, ``~``, has more than one ``/``,
    names an existing file, or its parent folder exists here (``runs/policy`` beside ``runs/``). A Hub id is
    ``NAME`` or ``OWNER/NAME`` and cannot start with ``.`` or ``/``."""
    path = Path(model).expanduser()
    if model.startswith(("/", ".", "~")) or model.count("/") > 1 or "\\" in model or path.is_file():
        return True
    return "/" in model and path.parent.is_dir() and str(path.parent) not in ("", ".")


def check_model_path(model: str, where: str = "model") -> None:
    """Raise ``ModelNotFoundError`` ("no such folder") for a model meant as a local folder that does not
    exist, instead of the Hub's "invalid repo id" or a network wait."""
    if is_local_model(model) or not looks_like_local_path(model):
        return
    path = Path(model).expanduser()
    if path.is_file():
        raise ModelNotFoundError(
            f"{where} {model!r} is a file; give the model's folder (with config.json) or a Hub id OWNER/NAME"
        )
    raise ModelNotFoundError(
        f"{where} {model!r}: no such folder (looked in {path.absolute()}); check the path, or give a Hub id "
        "as OWNER/NAME"
    )


def content_hash(folder: str | Path) -> str:
    """``sha256:<hex>`` of every file under ``folder`` (relative path and bytes), hidden folders excluded."""
    root = Path(folder).expanduser()
    digest = hashlib.sha256()
    files = sorted(
        path
        for path in root.rglob("*")
        if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)
    )
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        digest.update(b"\0")
    return "sha256:" + digest.hexdigest()


def resolve_revision(model: str, revision: str | None = None, cache_dir: str | Path | None = None) -> str:
    """The exact version of ``model``: a content hash for a local folder, a commit hash for a Hub id.

    A Hub id's branch or tag (``revision``, default ``"main"``) is resolved on the Hub, or offline
    (``HF_HUB_OFFLINE=1``, or the Hub unreachable) from the local cache's refs. Raises ``ValueError``
    when neither works.
    """
    check_model_path(model)
    if is_local_model(model):
        if revision is not None:
            raise ModelNotFoundError(
                f"model {model!r} is a local folder; revision={revision!r} applies to Hub ids only"
            )
        return content_hash(model)
    if revision is not None and _COMMIT_HASH.match(revision):
        return revision
    import huggingface_hub
    from huggingface_hub import HfApi, try_to_load_from_cache

    ref = revision or "main"
    problems = []
    if huggingface_hub.constants.HF_HUB_OFFLINE:
        problems.append("the Hub was not asked (HF_HUB_OFFLINE is set)")
    else:
        try:
            return HfApi().model_info(model, revision=ref).sha
        except Exception as error:  # network, auth or missing repo: the cache may still know the commit
            problems.append(f"the Hub said {type(error).__name__}: {error}")
    cached = try_to_load_from_cache(model, "config.json", cache_dir=cache_dir, revision=ref)
    if isinstance(cached, str):
        return Path(cached).parent.name  # .../snapshots/<commit>/config.json
    problems.append("the local Hugging Face cache has no snapshot for it")
    raise ModelNotFoundError(
        f"cannot resolve model {model!r} at revision {ref!r}: it is not a local folder, "
        + "; ".join(problems)
        + ". Pass a local path, a 40-character commit hash, or download the model first."
    )


# ---- token units: which tokenizer, at which version, token ids are counted in ---------------------------
# Here, below both the model steps that make token ids (ResponseSampler) and the pair metrics that count
# e_Δ in them, so both spell a unit label the same way.
def token_unit(tokenizer: str, resolved_revision: str) -> str:
    """The ``edit_distance_unit`` label of token ids from ``tokenizer`` at its resolved revision."""
    return f"token:{tokenizer}@{resolved_revision}"


def tokenizer_content_hash(folder: str | Path) -> str:
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


def model_token_unit(model: str, resolved_revision: str) -> str:
    """The unit label of token ids from ``model``'s own tokenizer: the label a ``PairMetrics`` step whose
    ``edit_distance_unit`` is ``model`` declares (a local folder is versioned by its tokenizer files alone,
    a Hub id by the commit ``resolved_revision``)."""
    return token_unit(model, tokenizer_content_hash(model) if is_local_model(model) else resolved_revision)
