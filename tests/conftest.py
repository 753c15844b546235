"""Shared fixtures: tiny models with a test-only decoder, and real photos from scikit-image."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from visionllm2.config import DecoderConfig, tiny_config
from visionllm2.decoders import LinkDecoder, Links, register_decoder
from visionllm2.inference.results import Detection
from visionllm2.modeling.builder import build_model


class ProbeDecoder(LinkDecoder):
    """Test-only decoder: regresses one normalised box per link from the link embedding and
    the mean of its pixels, and counts its calls (to check routing)."""

    families = ("det", "seg", "grd")

    def __init__(self, *, link_dim: int, pixel_size: int = 16):
        super().__init__(link_dim=link_dim)
        self.pixel_size = pixel_size
        self.head = nn.Linear(link_dim + 3, 4)
        self.calls: list[int] = []  # num_samples of every call

    def forward(self, links: Links, pixels: torch.Tensor | None, targets=None):
        self.calls.append(links.num_samples)
        assert pixels is not None and pixels.shape[0] == links.num_samples
        feat = torch.cat([links.embeds, pixels.mean(dim=(2, 3))[links.sample]], dim=-1)
        cx, cy, w, h = self.head(feat).sigmoid().unbind(-1)  # a valid box whatever the weights
        boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=-1).clamp(0, 1)  # (L, 4)
        if targets is None:
            return [boxes[links.sample == s] for s in range(links.num_samples)]
        sizes = links.image_sizes[links.sample].float().repeat(1, 2)  # (L, 4) w h w h
        want = torch.stack([torch.as_tensor(t.boxes[0], dtype=torch.float32) for t in targets]) / sizes
        return {"l1": 5.0 * (boxes - want).abs().mean()}

    def postprocess(self, output, *, names, families, image_size):
        w, h = image_size or (1, 1)  # no image: boxes stay normalised
        scale = torch.tensor([w, h, w, h])
        return [
            Detection(label=n, score=1.0, box=(b * scale).tolist(), link=i)
            for i, (n, b) in enumerate(zip(names, output))
        ]


register_decoder("probe", ProbeDecoder)


# Constructor kwargs of a tiny pixel-space diffusion decoder (16 px, ~0.3 M parameters).
TINY_UNET = dict(
    image_size=16,
    block_out_channels=[16, 32],
    norm_num_groups=8,
    attention_head_dim=8,
    cross_attention_dim=32,
    mapper_dim=32,
    mapper_heads=4,
    cond_len=4,
)


def make_tiny(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    cfg = tiny_config(probe=DecoderConfig(type="probe", link_dim=16, kwargs={"pixel_size": 16}))
    for fam in ("det", "seg", "grd"):
        cfg.families[fam].decoder = "probe"
    if overrides:
        cfg = cfg.with_overrides(overrides)
    return build_model(cfg)


@pytest.fixture(scope="session")
def photos() -> list[Image.Image]:
    from skimage import data

    return [Image.fromarray(np.asarray(data.astronaut())), Image.fromarray(np.asarray(data.chelsea()))]


@pytest.fixture()
def one_thread():
    """One intra-op thread for tests of many tiny ops: on a 2-core machine shared with other
    jobs, torch's extra threads spin against them and make such tests many times slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def tiny():
    return make_tiny()
