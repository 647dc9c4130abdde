"""Release folders: write (``write_release``), read (``load_release``, ``read_manifest``) and push them.

Modules by purpose: ``writer`` (the locked, atomic write), ``manifest`` (build the manifest), ``card``
(render the card), ``folder`` (file names such as ``MANIFEST_FILE`` and ``DATA_GLOB``, lock, hashes,
recovery), ``load``, ``push``, ``version``, ``content`` (``ReleaseContent``: what a result must offer),
``summary``, ``plots`` and ``delta_plots``. None of them imports a heavy library (datasets, matplotlib,
jinja2, huggingface_hub) before a function needs it, so importing this package stays cheap.
"""

from __future__ import annotations

from hfpref.release.card import write_manifest_and_card
from hfpref.release.content import ReleaseContent
from hfpref.release.folder import ReleaseError, read_manifest
from hfpref.release.load import load_release, verify_release
from hfpref.release.manifest import build_manifest
from hfpref.release.push import push_release, set_release_version
from hfpref.release.version import check_version
from hfpref.release.writer import write_release

__all__ = [
    "ReleaseContent",
    "ReleaseError",
    "build_manifest",
    "check_version",
    "load_release",
    "push_release",
    "read_manifest",
    "set_release_version",
    "verify_release",
    "write_manifest_and_card",
    "write_release",
]
