"""Vision encoder: a transformers CLIP / SigLIP vision tower, features from one hidden layer."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel


class VisionEncoder(nn.Module):
    """Wraps a transformers vision tower and returns patch features of one layer.

    The paper takes CLIP ViT-L/14 features from the penultimate layer with the CLS token
    dropped, and keeps the tower frozen.
    """

    def __init__(
        self, *, model: PreTrainedModel, feature_layer: int = -2, drop_cls: bool = True, freeze: bool = True
    ):
        super().__init__()
        self.model = model
        self.feature_layer = feature_layer
        self.drop_cls = drop_cls
        self.frozen = freeze
        if freeze:
            self.model.requires_grad_(False)
            self.model.eval()

    @property
    def hidden_size(self) -> int:
        return self.model.config.hidden_size

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.model.config.image_size // self.model.config.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2

    def train(self, mode: bool = True) -> VisionEncoder:
        super().train(mode)
        if self.frozen:
            self.model.eval()  # a frozen tower stays deterministic
        return self

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """pixels (I, 3, H, W) -> features (I, N, Dv)."""
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            out = self.model(pixel_values=pixels, output_hidden_states=True)
        feats = out.hidden_states[self.feature_layer]  # (I, N[+1], Dv)
        return feats[:, 1:] if self.drop_cls else feats
