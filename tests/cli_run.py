"""Running the ``hfpref`` CLI in-process with its output captured, for tests that check what it prints."""

from __future__ import annotations

import contextlib
import io

from hfpref.cli.main import main


def run_cli(argv: list[str]) -> tuple[int, str, str]:
    """``hfpref ARGV`` in this process: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()
