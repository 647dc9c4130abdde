"""Loading and running Hugging Face models for the model steps (imports only ``hfpref.core``).

* ``hub``: local folder or Hub id, and the exact revision (commit or content hash) a step names;
* ``loading``: devices, dtypes, loading a config / tokenizer / model at that revision, context limits;
* ``step``: ``ModelStepConfig`` and ``ModelStep``, the base of every step that runs one model;
* ``packing``: which sequences share a forward pass within a token budget;
* ``attention``: the packed attention kernels (registered with transformers on first use);
* ``runner``: ``HiddenStateRunner``, final hidden states at chosen positions, tree-packed or padded.

Import the module you need; this package imports none of them (importing it loads no torch).
"""
