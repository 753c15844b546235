"""benchmarks/bench_train.py's FLOP counter: the CPU's fused attention counts as the matmuls it does."""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))


def test_fused_cpu_attention_counts_as_its_matmuls() -> None:
    from bench_train import flop_counter

    q, k, v = (torch.randn(2, 4, 48, 16, requires_grad=True) for _ in range(3))
    mask = torch.rand(2, 1, 48, 48) > 0.2
    mask[..., 0] = True  # every query sees one key

    fused = flop_counter()
    with fused:
        F.scaled_dot_product_attention(q, k, v, attn_mask=mask).sum().backward()
    explicit = flop_counter()
    with explicit:
        scores = (q @ k.transpose(-1, -2) / 4.0).masked_fill(~mask, float("-inf"))
        (scores.softmax(-1) @ v).sum().backward()

    # Forward: Q K^T and P V, 2 * 2 * (2 * 4) * 48 * 48 * 16 each; backward: twice the forward.
    assert explicit.get_total_flops() == 3 * 2 * 2 * 8 * 48 * 48 * 16
    assert fused.get_total_flops() == explicit.get_total_flops()
