"""Dataset-card templates, installed as the ``hfpref.cards`` package (see pyproject's package-dir)."""
