"""Vision encoder: a transformers CLIP / SigLIP vision tower, features from one hidden layer."""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel


class VisionEncoder(nn.Module):
    """Wraps a transformers vision tower and returns patch features of one layer.

    The paper takes CLIP ViT-L/14 features from the penultimate layer with the CLS token
    dropped, and keeps the tower frozen.

    ``cnn_branch`` (stage widths) adds a small CNN beside the tower, the grounding decoder's kind
    (:class:`~visionllm2.decoders.grounding.SmallCNNBackbone`), whose last map has one cell per
    patch: each cell, through a linear map started at zero, is added to its patch's feature, so
    a model gaining the branch computes what it did before its first step. A 16-px ViT trained
    from scratch on the world says a shape's colour and not its kind; the grounding backbone's
    stride-16 map says its kind (``benchmarks/README.md``, "What the vision tower says of a
    shape"), and the branch's layers carry its names, so ``model.copy`` can start them from it.
    ``freeze`` freezes the tower, not the branch (training gives it its own group, ``branch``).
    ``cnn_branch_gain`` multiplies the map's output: beside a trained tower whose features are far
    larger than the cells, a gain lets the map reach their size at the rate the rest trains at.
    ``cnn_branch_zero_init=False`` starts the map at a linear layer's random init instead of zero.
    ``cnn_branch_only`` makes the cells alone the features: the tower is not run. A fresh LLM
    learns to name a kind from the cells alone and not beside a ViT (``benchmarks/README.md``,
    "What stops it").
    """

    def __init__(
        self,
        *,
        model: PreTrainedModel,
        feature_layer: int = -2,
        drop_cls: bool = True,
        freeze: bool = True,
        cnn_branch: list[int] | None = None,
        cnn_branch_gain: float = 1.0,
        cnn_branch_zero_init: bool = True,
        cnn_branch_only: bool = False,
    ):
        super().__init__()
        self.model = model
        self.feature_layer = feature_layer
        self.drop_cls = drop_cls
        self.frozen = freeze
        if freeze:
            self.model.requires_grad_(False)
            self.model.eval()
        self.cnn: nn.Module | None = None
        self.cnn_gain = cnn_branch_gain
        self.branch_only = cnn_branch_only
        if cnn_branch is not None:
            from visionllm2.decoders.grounding import SmallCNNBackbone

            self.cnn = SmallCNNBackbone(channels=cnn_branch)
            self.cnn_proj = nn.Linear(cnn_branch[-1], self.hidden_size)
            if cnn_branch_zero_init:
                nn.init.zeros_(self.cnn_proj.weight)
                nn.init.zeros_(self.cnn_proj.bias)

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
        if self.branch_only:
            return self._cells(pixels)
        with torch.set_grad_enabled(torch.is_grad_enabled() and not self.frozen):
            out = self.model(pixel_values=pixels, output_hidden_states=True)
            feats = out.hidden_states[self.feature_layer]  # (I, N[+1], Dv)
        if self.cnn is not None:
            cells = self._cells(pixels)
            n = cells.shape[1]  # the patches are the last n tokens, after a CLS if any
            feats = torch.cat([feats[:, :-n], feats[:, -n:] + cells], dim=1)
        return feats[:, 1:] if self.drop_cls else feats

    def _cells(self, pixels: torch.Tensor) -> torch.Tensor:
        """The branch's last map, one cell per patch, through its projection: (I, N, Dv)."""
        return self.cnn_gain * self.cnn_proj(self.cnn(pixels)[-1].flatten(2).transpose(1, 2))
