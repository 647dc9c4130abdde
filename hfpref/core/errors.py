"""The one base class of mistakes a user can fix.

``hfpref.cli.main`` prints any ``UserError`` as one line, ``hfpref <command>: error: <message>``, and exits 2
(the traceback only with ``--debug``), so the message must say what is wrong, where, and how to fix it.
Every module raises its own subclass (``RecipeError``, ``ReleaseError``, ``RowError`` ...), so callers of the
Python API can catch either the specific error or all of them.
"""

from __future__ import annotations


class UserError(ValueError):
    """A mistake in the user's input, recipe, options or environment; the message names what, where and the fix."""
