"""Release versions: what a version may look like (it becomes the Git tag ``v{version}`` on the Hub).

The recipe layer checks ``output.version`` with the same rule (``hfpref.pipeline.recipe`` passes its own
error class), so a recipe, ``hfpref push --version`` and an iterate round's version agree.
"""

from __future__ import annotations

import re

from hfpref.release.folder import ReleaseError

VERSION_PATTERN = re.compile(r"^[0-9]+(\.[0-9]+)*([-+][0-9A-Za-z.]+)?$")


def check_version(version: str, where: str = "version", error: type[Exception] = ReleaseError) -> str:
    """``version`` when it is like 0.1.0 (optionally with a ``-suffix`` or ``+suffix``); else ``error``."""
    if not VERSION_PATTERN.match(version):
        raise error(f"{where}: {version!r} is not a version like 0.1.0 (it becomes the tag v{version})")
    return version
