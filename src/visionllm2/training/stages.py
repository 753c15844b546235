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
    own group so pretrained pixel backbones can take a lower rate, and so is the vision tower's
    CNN branch (``vision.cnn.*``, ``vision.cnn_proj.*``), which can train beside a frozen tower."""
    if name.startswith(("vision.cnn.", "vision.cnn_proj.")):
        return "branch"
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
    mults.setdefault("branch", mults["vision"])
    return mults


def param_groups(model: nn.Module, stage: StageSpec, weight_decay: float) -> list[dict]:
    """Set ``requires_grad`` by the stage's multipliers (0 = frozen) and return optimizer
    groups; biases and norms take no weight decay. A frozen tower (``vision.freeze``) stays
    frozen whatever ``vision``'s multiplier; its CNN branch follows ``branch``'s."""
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


def clip_sets(
    model: nn.Module, params: list[nn.Parameter], grad_clip: float, decoder_grad_clip: float | None = None
) -> list[tuple[str, list[nn.Parameter], float]]:
    """Gradient-clipping sets: (log name, parameters, max norm).

    With ``decoder_grad_clip`` unset, one set: every trained parameter clipped together at
    ``grad_clip``. Set, each decoder (``decoders.<name>.*``) is clipped on its own at that norm
    (0.1 in DETR and Grounding-DINO) and the rest (LLM, links, projector, vision, region) at
    ``grad_clip``. Why: under one global norm the decoders' step shrinks whenever the LLM's or
    the links' gradient grows, so their effective rate swings from step to step
    (``benchmarks/pose_clipping.py``: pose through the links, keypoint AP 6-18 under one norm,
    100 with the decoder clipped apart).
    """
    if decoder_grad_clip is None:
        return [("grad_norm", list(params), grad_clip)]
    trained = {id(p) for p in params}
    sets: dict[str, list[nn.Parameter]] = {"grad_norm": []}
    for name, p in model.named_parameters():
        if id(p) in trained:
            key = f"grad_norm/{name.split('.')[1]}" if name.startswith("decoders.") else "grad_norm"
            sets.setdefault(key, []).append(p)
    if sum(len(ps) for ps in sets.values()) != len(trained):
        raise ValueError(
            "decoder_grad_clip: some optimised parameters are not the model's own (a wrapper "
            "replaced them?); clip with grad_clip alone for this set-up"
        )
    return [(k, ps, grad_clip if k == "grad_norm" else decoder_grad_clip) for k, ps in sets.items() if ps]


def clip_gradients(sets: list[tuple[str, list[nn.Parameter], float]]) -> dict[str, float]:
    """Clip each set to its max norm; returns each set's norm before clipping."""
    return {k: float(torch.nn.utils.clip_grad_norm_(ps, max_norm)) for k, ps, max_norm in sets}


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
