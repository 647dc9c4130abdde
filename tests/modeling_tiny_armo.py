"""A tiny custom-code reward model with ArmoRM's output structure (for tests; loaded with trust_remote_code).

``RLHFlow/ArmoRM-Llama3-8B-v0.1`` ships ``modeling_custom.py`` with ``LlamaForRewardModelWithGating``, mapped
by ``auto_map`` in its config.json. Its forward reads the final hidden state at each sequence's last token
(the token before the first pad), regresses the per-objective ``rewards`` from it, weights them by a gating
network run on the hidden state at the last assistant-header token of the prompt, and returns a custom
output: ``score`` (one float per sequence, also in ``logits``), ``rewards`` [batch, objectives],
``gating_output`` and ``hidden_state``. This file reproduces that structure on a tiny Llama backbone; the
gating token is ``config.gating_token_id`` instead of ArmoRM's hard-coded Llama-3 header tokens. With
``config.armo_output`` false it returns only ``SequenceClassifierOutput(logits=score)``, 1-D logits; with
``config.pool_at_last_token`` it reads the last position even when that is padding (a head that cannot
be batched with right padding).
``tests.tiny_models.build_custom_reward_model`` saves it (``save_pretrained`` copies this file next to
the weights and writes ``auto_map``), so the folder loads as ArmoRM does: only with trust_remote_code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import LlamaModel, LlamaPreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.utils import ModelOutput


@dataclass
class TinyArmoOutput(ModelOutput):
    """ArmoRM's ``CustomOutput`` fields, in its order."""

    rewards: torch.FloatTensor | None = None
    hidden_state: torch.FloatTensor | None = None
    score: torch.FloatTensor | None = None
    gating_output: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None


class GatingNetwork(nn.Module):
    """A small MLP whose softmax (with temperature) weights the objectives, as ArmoRM's."""

    def __init__(self, hidden_size: int, objectives: int, temperature: float, hidden_dim: int) -> None:
        super().__init__()
        self.temperature = temperature
        self.layers = nn.ModuleList(
            [nn.Linear(hidden_size, hidden_dim), nn.Linear(hidden_dim, objectives, bias=False)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.layers[0](x))
        return torch.softmax(self.layers[1](x) / self.temperature, dim=1)


def last_gating_position(ids: list[int], token_id: int) -> int:
    """The last position holding the gating token (ArmoRM: the last assistant header); 0 when absent."""
    for position in range(len(ids) - 1, -1, -1):
        if ids[position] == token_id:
            return position
    return 0


class TinyArmoRewardModel(LlamaPreTrainedModel):
    def __init__(self, config) -> None:
        super().__init__(config)
        self.num_objectives = config.num_objectives
        self.model = LlamaModel(config)
        self.regression_layer = nn.Linear(config.hidden_size, self.num_objectives, bias=False)
        self.gating = GatingNetwork(
            config.hidden_size, self.num_objectives, config.gating_temperature, config.gating_hidden_dim
        )
        self.reward_transform_matrix = nn.Parameter(torch.eye(self.num_objectives), requires_grad=False)
        self.post_init()

    def forward(self, input_ids=None, attention_mask=None, **kwargs) -> TinyArmoOutput:
        hidden = self.model(input_ids, attention_mask=attention_mask).last_hidden_state
        batch = torch.arange(input_ids.shape[0], device=hidden.device)
        # as ArmoRM: the token before the first pad (modulo length: the last token when there is no pad)
        ends = (torch.eq(input_ids, self.config.pad_token_id).int().argmax(-1) - 1) % input_ids.shape[-1]
        if getattr(
            self.config, "pool_at_last_token", False
        ):  # a head that ignores padding (wrong when padded)
            ends = torch.full_like(ends, input_ids.shape[-1] - 1)
        pooled = hidden[batch, ends]
        rewards = self.regression_layer(pooled)
        gates = [last_gating_position(ids.tolist(), self.config.gating_token_id) for ids in input_ids]
        gating_output = self.gating(hidden[batch, gates])
        score = torch.sum(gating_output * (rewards @ self.reward_transform_matrix), dim=1)
        if not self.config.armo_output:  # a custom head that returns only 1-D logits (no `score` field)
            return SequenceClassifierOutput(logits=score)
        return TinyArmoOutput(
            rewards=rewards, hidden_state=pooled, score=score, gating_output=gating_output, logits=score
        )
