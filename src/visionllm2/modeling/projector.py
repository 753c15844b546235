"""Projector from vision features to LLM embeddings ("mlp2x_gelu", as LLaVA and the paper)."""

from __future__ import annotations

import torch
from torch import nn


class Projector(nn.Module):
    """Linear -> GELU -> Linear."""

    def __init__(self, *, in_dim: int, out_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(in_dim, out_dim)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(out_dim, out_dim)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        """feats (I, N, Dv) -> (I, N, D)."""
        return self.fc2(self.act(self.fc1(feats)))
