"""Region encoder for visual prompts (point, box, scribble, mask) -> one LLM embedding."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import nn

from visionllm2.data.sample import RegionPrompt


def rasterize_region(prompt: RegionPrompt, *, image_size: tuple[int, int], out_size: int) -> torch.Tensor:
    """Draw a visual prompt given in pixels of an image of ``image_size`` (w, h) as a
    (out_size, out_size) float mask in {0, 1} (the paper rasterises every prompt to a mask)."""
    w, h = image_size
    sx, sy = out_size / w, out_size / h
    canvas = Image.new("L", (out_size, out_size), 0)
    draw = ImageDraw.Draw(canvas)
    # Points and scribbles get a width so they cover at least one patch of the vision grid.
    radius = max(1.0, out_size / 32)
    if prompt.kind == "point":
        x, y = np.asarray(prompt.data, dtype=float).reshape(2)
        draw.ellipse([x * sx - radius, y * sy - radius, x * sx + radius, y * sy + radius], fill=1)
    elif prompt.kind == "box":
        x0, y0, x1, y1 = np.asarray(prompt.data, dtype=float).reshape(4)
        if x1 <= x0 or y1 <= y0:
            raise ValueError(f"box prompt must be x0 < x1 and y0 < y1 (xyxy pixels), got {prompt.data}")
        draw.rectangle([x0 * sx, y0 * sy, x1 * sx, y1 * sy], fill=1)
    elif prompt.kind == "scribble":
        pts = np.asarray(prompt.data, dtype=float)
        if pts.ndim != 2 or pts.shape[1] != 2 or len(pts) < 1:
            raise ValueError(f"scribble prompt must be an (n, 2) array of points, got shape {pts.shape}")
        scaled = [(x * sx, y * sy) for x, y in pts]
        draw.line(scaled, fill=1, width=int(2 * radius))
        for x, y in scaled:
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=1)
    elif prompt.kind == "mask":
        m = np.asarray(prompt.data)
        if m.shape != (h, w):
            raise ValueError(f"mask prompt must have the image's shape (h, w) = {(h, w)}, got {m.shape}")
        canvas = Image.fromarray((m > 0).astype(np.uint8) * 255).resize((out_size, out_size), Image.NEAREST)
        return torch.from_numpy(np.asarray(canvas) > 0).float()
    else:
        raise ValueError(f"unknown region prompt kind {prompt.kind!r}; use point, box, scribble or mask")
    out = torch.from_numpy(np.asarray(canvas, dtype=np.float32))
    if out.sum() == 0:
        raise ValueError(f"{prompt.kind} prompt {prompt.data} falls outside the image {image_size}")
    return out


class RegionEncoder(nn.Module):
    """Conv stem on image + prompt mask, added to the vision features on the patch grid and
    mask-pooled to one embedding that replaces ``<region>``."""

    def __init__(self, *, vision_dim: int, out_dim: int, grid: int, stem_channels: int = 64):
        super().__init__()
        self.grid = grid
        self.stem = nn.Sequential(
            nn.Conv2d(4, stem_channels, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(stem_channels, stem_channels, 3, stride=2, padding=1),
            nn.GELU(),
            nn.Conv2d(stem_channels, vision_dim, 1),
        )
        self.out = nn.Sequential(nn.Linear(vision_dim, out_dim), nn.GELU(), nn.Linear(out_dim, out_dim))

    def forward(self, pixels: torch.Tensor, masks: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """pixels (R, 3, H, W) the prompted images, masks (R, H, W), feats (R, N, Dv) their
        vision features with N = grid**2 -> region embeddings (R, D)."""
        R, N, Dv = feats.shape
        if self.grid**2 != N:
            raise ValueError(f"region encoder expects {self.grid**2} patch features, got {N}")
        x = self.stem(torch.cat([pixels, masks[:, None]], dim=1))
        x = F.adaptive_avg_pool2d(x, self.grid)  # (R, Dv, g, g)
        x = x + feats.transpose(1, 2).reshape(R, Dv, self.grid, self.grid)
        m = F.adaptive_avg_pool2d(masks[:, None], self.grid)  # (R, 1, g, g) coverage per patch
        pooled = (x * m).sum(dim=(2, 3)) / m.sum(dim=(2, 3)).clamp(min=1e-6)  # (R, Dv)
        return self.out(pooled)
