"""Tiny random models for the user-surface tests (API, CLI, server, web demo) that can be saved.

``conftest._routing_happy``-style biasing swaps in an LM head *with* a bias, which a saved
model cannot reload. Here the bias rides on one residual dimension instead: every input
embedding gets a large constant there, so after the final norm that dimension is a steady
positive feature, and the head's column for it acts as a per-token bias. Plain weights only,
so the model survives save_pretrained / from_pretrained.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from conftest import make_tiny
from visionllm2.modeling.model import VisionLLM2Model

BIAS_DIM = 0  # residual dimension carrying the constant
BIAS_SHIFT = 30.0  # large next to the random layers' contributions, so its sign never flips


@torch.no_grad()
def family_biased(model: VisionLLM2Model, family: str = "det", boost: float = 0.5) -> VisionLLM2Model:
    """Make greedy decoding emit ``family``'s routing token at every step and never end."""
    proc = model.processor
    j = BIAS_DIM
    model.llm.get_input_embeddings().weight[:, j] += BIAS_SHIFT
    model.projector.fc2.bias[j] += BIAS_SHIFT
    for q in model.super_link.queries.values():
        q[:, j] += BIAS_SHIFT
    if model.region_encoder is not None:
        model.region_encoder.out[-1].bias[j] += BIAS_SHIFT
    head = model.llm.get_output_embeddings().weight
    head[:, j] = 0.0
    for tid, f in proc.routing_ids.items():
        head[tid, j] = boost if proc.family_names[f] == family else -boost * 10
    head[proc.tokenizer.eos_token_id, j] = -boost * 10
    return model


def det_model(seed: int = 0) -> VisionLLM2Model:
    """A tiny model whose answers are ``[DET]`` links decoded by the probe decoder."""
    return family_biased(make_tiny(seed)).eval()


def save_det_model(path: Path, seed: int = 0) -> Path:
    det_model(seed).save_pretrained(path)
    return path


def shapes_image(w: int = 96, h: int = 72, seed: int = 0) -> Image.Image:
    """A small picture with a filled circle and square on noise."""
    rng = np.random.default_rng(seed)
    a = (rng.random((h, w, 3)) * 80).astype(np.uint8)
    yy, xx = np.mgrid[:h, :w]
    a[(xx - w // 4) ** 2 + (yy - h // 2) ** 2 < (h // 5) ** 2] = (230, 40, 40)
    a[h // 3 : h // 3 + h // 3, w // 2 + 5 : w // 2 + 5 + h // 3] = (40, 80, 230)
    return Image.fromarray(a)
