"""Release folders: write (``write_release``), read (``load_release``, ``read_manifest``) and push them.

Modules by purpose: ``writer`` (the locked, atomic write), ``manifest`` (build the manifest), ``card``
(render the card), ``folder`` (file names, lock, hashes, recovery), ``load``, ``push``, ``version``,
``content`` (``ReleaseContent``: what a result must offer), ``summary`` and ``plots``. None of them imports
a heavy library (datasets, matplotlib, jinja2, huggingface_hub) before a function needs it, so importing
this package stays cheap.
"""

from __future__ import annotations

from hfpref.release.card import render_card, write_manifest_and_card
from hfpref.release.content import ReleaseContent
from hfpref.release.folder import (
    CARD_FILE,
    DATA_FILE,
    DATA_GLOB,
    MANIFEST_FILE,
    ReleaseError,
    ReleaseLockedError,
    read_manifest,
    release_lock,
    write_parquet,
)
from hfpref.release.load import load_release, verify_release
from hfpref.release.manifest import build_manifest, model_references, package_versions
from hfpref.release.push import ReleaseExistsError, push_release, set_release_version
from hfpref.release.version import check_version
from hfpref.release.writer import write_release

__all__ = [
    "CARD_FILE",
    "DATA_FILE",
    "DATA_GLOB",
    "MANIFEST_FILE",
    "ReleaseContent",
    "ReleaseError",
    "ReleaseExistsError",
    "ReleaseLockedError",
    "build_manifest",
    "check_version",
    "load_release",
    "model_references",
    "package_versions",
    "push_release",
    "read_manifest",
    "release_lock",
    "render_card",
    "set_release_version",
    "verify_release",
    "write_manifest_and_card",
    "write_parquet",
    "write_release",
]
