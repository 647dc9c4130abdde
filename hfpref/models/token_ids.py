"""Token ids a model step generated, as later steps reuse them: which ids a response's text leaves out.

``ResponseSampler`` writes each response's generated ids (``columns.RESPONSE_TOKEN_IDS``) next to its
text, so a ``PairMetrics`` step counting e_Δ in the same tokenizer need not tokenize the text again. The
ids written are those the text was decoded from, less the ones ``decode(skip_special_tokens=True)``
drops (EOS, padding, a chat template's role markers): the text is exactly ``decode`` of the ids written.
Nothing here imports torch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from hfpref.core import columns as C


def skipped_token_ids(tokenizer: Any) -> frozenset[int]:
    """The ids ``decode(skip_special_tokens=True)`` drops: the named special tokens (EOS, padding) and every
    added token marked special (e.g. a chat template's role markers, which ``all_special_ids`` leaves out)."""
    added = getattr(tokenizer, "added_tokens_decoder", {})
    return frozenset(tokenizer.all_special_ids) | {i for i, token in added.items() if token.special}


def response_ids(ids: Iterable[int], skipped: frozenset[int]) -> np.ndarray:
    """One response's generated ids as written: int32 (half of int64's cache bytes; vocabularies fit in
    31 bits), without the ids in ``skipped`` (``skipped_token_ids``)."""
    return np.array([t for t in ids if t not in skipped], dtype=np.int32)


def reusable_token_ids(batch: dict[str, list], declared_unit: str) -> list[Any]:
    """The sampler's ``response_token_ids`` of every response of a batch, flattened in row order, where the
    row's ``response_token_unit`` is ``declared_unit``, else None: a row in another unit, a row or a
    response without ids (a response from elsewhere), a row whose ids do not align with its responses.
    A missing response (None) gets ``[]``, the placeholder its blanked cells are computed from."""
    responses_column = batch[C.RESPONSES]
    units = batch.get(C.RESPONSE_TOKEN_UNIT) or [None] * len(responses_column)
    tokens: list[Any] = []
    for responses, ids, unit in zip(responses_column, batch[C.RESPONSE_TOKEN_IDS], units, strict=True):
        n = len(responses or [])
        if unit != declared_unit or ids is None or len(ids) != n:
            ids = [None] * n
        tokens += [
            [] if text is None else row_ids for text, row_ids in zip(responses or [], ids, strict=True)
        ]
    return tokens
