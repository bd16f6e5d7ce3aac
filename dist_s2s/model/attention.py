"""Global attention on the top decoder layer (Luong, Pham & Manning 2015), the `general` score.

Each target position t looks at every source position s of its sentence: a_t = softmax_s(h_tᵀ W_a m_s) over
the top encoder layer's outputs m (the positions past the sentence's length masked out), the context
c_t = Σ_s a_ts m_s, and h̃_t = tanh(W_c [c_t; h_t]) is what the softmax reads instead of h_t. Without input
feeding (h̃_t is not fed to the next step), so the decoder's layers still run over a whole span of steps at
once and pipeline as before: the stage that holds the top LSTM layer holds this too.
"""

from __future__ import annotations

import torch
from torch import nn

from dist_s2s.model.layers import at_least_fp32


class GlobalAttention(nn.Module):
    def __init__(self, hidden_size: int):
        super().__init__()
        self.score = nn.Linear(hidden_size, hidden_size, bias=False)
        """W_a of the `general` score h_tᵀ W_a m_s."""
        self.combine = nn.Linear(2 * hidden_size, hidden_size, bias=False)
        """W_c of h̃_t = tanh(W_c [c_t; h_t])."""

    def forward(self, hidden: torch.Tensor, memory: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """hidden [B, T, H] (top decoder outputs), memory [B, S, H] (top encoder outputs), mask [B, S] (True at
        real source positions) → h̃ [B, T, H] and the attention weights [B, T, S] (fp32 or more). The query is
        W_aᵀ h_t, so a decoding step costs H² + S·H, not S·H² (W_a applied to every m_s)."""
        query = hidden @ self.score.weight  # (W_aᵀ h_t)ᵀ, one row a position
        scores = at_least_fp32(query @ memory.transpose(1, 2))  # the softmax over source positions in fp32
        weights = torch.softmax(scores.masked_fill(~mask[:, None, :], float("-inf")), dim=-1)
        context = weights.to(memory.dtype) @ memory
        return torch.tanh(self.combine(torch.cat([context, hidden], dim=-1))), weights
