"""Checks run before the first step of a run, so a mistake fails in a second instead of after hours of compute.

* ``check_input_file``: a JSONL (or JSON) input read line by line: every line UTF-8, valid JSON, an object;
  prompts all plain text or all chat messages. ``datasets`` reports these as an Arrow error without the
  file's line number, or not at all until a step trips over the mixed rows; here the message names the
  file, the line and the fix.
* ``check_output_folder``: the release folder is not a file and its parent is a writable folder (the
  release is built in a temporary folder beside the target and swapped in, so the parent must be writable).
* ``check_hub_reachable``: the Hugging Face Hub answers within a few seconds, or ``HF_HUB_OFFLINE`` is off,
  instead of a command waiting on network timeouts before it fails.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from hfpref.core.errors import UserError

JSON_SUFFIXES = (".jsonl", ".json")
HUB_PROBE_TIMEOUT_S = 3.0


class InputFileError(UserError):
    """An input file that cannot be read as candidates rows; the message names file and line."""


class OutputFolderError(UserError):
    """An output folder that cannot be written."""


class HubUnreachableError(UserError):
    """The Hugging Face Hub cannot be reached (offline, or ``HF_HUB_OFFLINE`` set) for a command that needs it."""


def _prompt_kind(value: object) -> str | None:
    if isinstance(value, str):
        return "plain text (a string)"
    if isinstance(value, list):
        return "chat messages (a list of {role, content})"
    return None


def _json_files(path: Path) -> Iterator[Path]:
    if path.is_dir():
        yield from sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in JSON_SUFFIXES)
    elif path.suffix.lower() in JSON_SUFFIXES:
        yield path


def _rows(file: Path) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) of every non-blank line of a JSONL file, or of each row of a JSON array
    file (with the line it starts on)."""
    data = file.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise InputFileError(
            f"{file}:{line}: not UTF-8 text (byte {data[err.start : err.start + 1]!r} at offset {err.start}); "
            "save the file as UTF-8, e.g. `iconv -f latin1 -t utf-8 IN > OUT`"
        ) from None
    stripped = text.lstrip()
    if file.suffix.lower() == ".json" and stripped.startswith(("[", "{")):
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = None  # maybe JSON lines in a .json file: read it line by line below
        else:
            if isinstance(value, list):
                yield from ((1, row) for row in value)
                return
            if isinstance(value, dict) and not any(isinstance(v, list) for v in value.values()):
                yield 1, value
                return
            if isinstance(value, dict):
                return  # a {column: [values]} or {"data": [...]} file: datasets reads it, nothing to check here
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield number, json.loads(line)
        except json.JSONDecodeError as err:
            raise InputFileError(
                f"{file}:{number}: not valid JSON ({err.msg} at column {err.colno}): {line[:80]!r}; each line "
                "of a JSON Lines file must be one complete JSON object"
            ) from None


def check_input_file(path: str | Path, prompt_column: str = "prompt", one_prompt_form: bool = True) -> int:
    """Check a JSON Lines / JSON input file (or every such file in a folder) line by line; return the rows.

    Raises ``InputFileError`` naming the file and line for a line that is not UTF-8, not JSON or not an
    object, and for prompts that mix plain text and chat messages (which a step would otherwise treat
    differently, or fail on, hours into a run; ``one_prompt_form=False`` allows both, for readers that take
    rows one by one). Other file types are left to ``datasets``.
    """
    rows = 0
    for file in _json_files(Path(path)):
        first: tuple[str, int] | None = None  # (kind of the first prompt, its line)
        for number, row in _rows(file):
            rows += 1
            if not isinstance(row, dict):
                raise InputFileError(
                    f"{file}:{number}: expected a JSON object (one row, {{column: value}}), got "
                    f"{type(row).__name__} {str(row)[:80]}"
                )
            kind = _prompt_kind(row.get(prompt_column))
            if kind is None or not one_prompt_form:
                continue
            if first is None:
                first = (kind, number)
            elif kind != first[0]:
                raise InputFileError(
                    f"{file}:{number}: column {prompt_column!r} is {kind}, but line {first[1]} has {first[0]}; "
                    "use one form for every row (e.g. turn a plain prompt into "
                    '[{"role": "user", "content": PROMPT}])'
                )
    return rows


def check_output_folder(folder: str | Path, where: str = "output folder") -> None:
    """Raise ``OutputFolderError`` unless ``folder`` is (or can be created as) a folder whose parent is writable."""
    target = Path(folder).expanduser().absolute()
    if target.exists() and not target.is_dir():
        raise OutputFolderError(
            f"{where} {str(folder)!r} is a file, not a folder; choose another output folder or move the file"
        )
    parent = target.parent
    while not parent.exists():  # the first ancestor that exists is where the folders get created
        parent = parent.parent
    if not parent.is_dir():
        raise OutputFolderError(
            f"{where} {str(folder)!r}: {parent} is a file, so no folder can be created under it; choose "
            "another output folder"
        )
    try:  # os.access is not enough: it ignores read-only mounts and says yes to root
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as err:
        raise OutputFolderError(
            f"{where} {str(folder)!r}: cannot write in {parent} ({err.strerror}); the release is built beside "
            "the target folder, so its parent must be writable: choose another output folder or fix the "
            "permissions"
        ) from None


def check_hub_reachable(what: str, timeout: float = HUB_PROBE_TIMEOUT_S) -> None:
    """Raise ``HubUnreachableError`` at once when ``HF_HUB_OFFLINE`` is set or the Hub does not answer
    within ``timeout`` seconds, instead of a command waiting on the libraries' network retries."""
    from huggingface_hub import constants

    endpoint = constants.ENDPOINT
    if constants.HF_HUB_OFFLINE:
        raise HubUnreachableError(
            f"{what} needs the Hugging Face Hub, and HF_HUB_OFFLINE is set; unset it to go online"
        )
    import requests

    try:  # any answer, even an error status, means the Hub is reachable (proxies from the environment apply)
        requests.head(endpoint, timeout=timeout, allow_redirects=False)
    except requests.RequestException as err:
        text = str(err).lower()
        reason = (
            f"no answer in {timeout:g} s"
            if isinstance(err, requests.Timeout)
            else "its host name does not resolve"
            if "resolve" in text or "name or service" in text
            else "connection refused"
            if "refused" in text
            else type(err).__name__
        )
        raise HubUnreachableError(
            f"{what} needs the Hugging Face Hub, and {endpoint} cannot be reached ({reason}): this machine seems "
            "to be offline. Check the network (or proxy); to use only models and datasets already in the local "
            "cache, set HF_HUB_OFFLINE=1"
        ) from None


def hub_offline_allowed() -> bool:
    """Whether ``HF_HUB_OFFLINE`` is set (then the local cache serves Hub ids and no probe is made)."""
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE) or os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true")
