"""Release folders: write (``write_release``), read (``load_release``, ``read_manifest``) and push them.

Modules by purpose: ``writer`` (the locked, atomic write), ``manifest`` (build the manifest), ``card``
(render the card), ``folder`` (file names, lock, hashes, recovery), ``load``, ``push``, ``version``,
``content`` (``ReleaseContent``: what a result must offer), ``summary`` and ``plots``. The names below import
lazily, so importing this package loads none of them.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "ReleaseContent": "hfpref.release.content",
    "ReleaseError": "hfpref.release.folder",
    "ReleaseLockedError": "hfpref.release.folder",
    "MANIFEST_FILE": "hfpref.release.folder",
    "CARD_FILE": "hfpref.release.folder",
    "DATA_FILE": "hfpref.release.folder",
    "DATA_GLOB": "hfpref.release.folder",
    "read_manifest": "hfpref.release.folder",
    "release_lock": "hfpref.release.folder",
    "write_parquet": "hfpref.release.folder",
    "build_manifest": "hfpref.release.manifest",
    "model_references": "hfpref.release.manifest",
    "package_versions": "hfpref.release.manifest",
    "render_card": "hfpref.release.card",
    "write_manifest_and_card": "hfpref.release.card",
    "load_release": "hfpref.release.load",
    "verify_release": "hfpref.release.load",
    "ReleaseExistsError": "hfpref.release.push",
    "push_release": "hfpref.release.push",
    "set_release_version": "hfpref.release.push",
    "check_version": "hfpref.release.version",
    "write_release": "hfpref.release.writer",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'hfpref.release' has no attribute {name!r}")
