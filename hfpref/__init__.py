"""hfpref: curate preference datasets as reproducible chains of Hugging Face ``datasets`` transforms."""

from hfpref.transform import MissingColumnError, RowError, Step, StepConfig

__version__ = "0.1.0"

__all__ = ["MissingColumnError", "RowError", "Step", "StepConfig", "__version__"]
