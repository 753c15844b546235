"""Training stages (paper §3.4): which parameter groups train, at what learning rate."""

from __future__ import annotations

import math

import torch
from torch import nn

from visionllm2.training.config import GROUPS, StageSpec

# Paper recipe. Stage 1: LLaVA-style MLLM training (projector + LLM; text answers and routing
# tokens). Stage 2: decoders and super-link queries join, the LLM at a low multiplier.
# Stage 3: everything but the frozen vision tower, end to end.
DEFAULT_MULTS: dict[str, dict[str, float]] = {
    "stage1": {"vision": 0, "projector": 1, "llm": 1, "links": 0, "region": 1, "backbone": 0, "decoders": 0},
    "stage2": {
        "vision": 0,
        "projector": 0.1,
        "llm": 0.1,
        "links": 1,
        "region": 1,
        "backbone": 1,
        "decoders": 1,
    },
    "stage3": {"vision": 0, "projector": 1, "llm": 1, "links": 1, "region": 1, "backbone": 1, "decoders": 1},
}


def group_of(name: str) -> str:
    """Parameter name -> group. Decoder backbones (``decoders.<d>.backbone.*``) are their
    own group so pretrained pixel backbones can take a lower rate."""
    if name.startswith("vision."):
        return "vision"
    if name.startswith("projector."):
        return "projector"
    if name.startswith("llm."):
        return "llm"
    if name.startswith("super_link."):
        return "links"
    if name.startswith("region_encoder."):
        return "region"
    if name.startswith("decoders."):
        return "backbone" if ".backbone." in name else "decoders"
    raise ValueError(f"parameter {name!r} belongs to no training group; add it to training.stages.group_of")


def stage_multipliers(stage: StageSpec) -> dict[str, float]:
    mults = dict(DEFAULT_MULTS.get(stage.name, DEFAULT_MULTS["stage3"]))
    mults.update(stage.lr_mult)
    return mults


def param_groups(model: nn.Module, stage: StageSpec, weight_decay: float) -> list[dict]:
    """Set ``requires_grad`` by the stage's multipliers (0 = frozen) and return optimizer
    groups; biases and norms take no weight decay."""
    mults = stage_multipliers(stage)
    buckets: dict[tuple[str, bool], list[nn.Parameter]] = {}
    vision_frozen = getattr(getattr(model, "vision", None), "frozen", False)
    for name, p in model.named_parameters():
        g = group_of(name)
        train = mults[g] > 0 and not (g == "vision" and vision_frozen)
        p.requires_grad_(train)
        if train:
            buckets.setdefault((g, p.ndim >= 2), []).append(p)
    groups = []
    for (g, decay), params in sorted(buckets.items()):
        groups.append(
            {
                "params": params,
                "lr": stage.lr * mults[g],
                "lr_mult": mults[g],
                "weight_decay": weight_decay if decay else 0.0,
                "group": g,
            }
        )
    if not groups:
        raise ValueError(f"stage {stage.name!r} trains nothing: every group in {list(GROUPS)} has lr_mult 0")
    return groups


def cosine_with_warmup(stage: StageSpec):
    """LR factor for step s of a stage: linear warm-up, then cosine to ``min_lr_ratio``."""

    def factor(step: int) -> float:
        if step < stage.warmup_steps:
            return (step + 1) / stage.warmup_steps
        span = max(1, stage.steps - stage.warmup_steps)
        progress = min(1.0, (step - stage.warmup_steps) / span)
        return stage.min_lr_ratio + (1 - stage.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def build_optimizer(model: nn.Module, stage: StageSpec, *, weight_decay: float, betas: tuple[float, float]):
    opt = torch.optim.AdamW(param_groups(model, stage, weight_decay), lr=stage.lr, betas=betas)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine_with_warmup(stage))
    return opt, sched
