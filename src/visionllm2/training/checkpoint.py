"""Atomic training checkpoints: model folder + optimizer/scheduler/RNG state, and resume."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_model

from visionllm2.modeling.builder import WEIGHTS_NAME

STATE_NAME = "trainer_state.pt"
META_NAME = "trainer.json"


@dataclass
class TrainPosition:
    stage: int  # index into the recipe's stages
    step: int  # optimizer steps done in that stage


def save_checkpoint(
    run_dir: Path, model, optimizer, scheduler, position: TrainPosition, *, keep: int = 2
) -> Path:
    """Write ``checkpoints/stage{i}-step{n}`` under a temporary name and rename it when
    complete, so a killed run never leaves a checkpoint that looks whole but is not."""
    ckpt_root = run_dir / "checkpoints"
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / f"stage{position.stage}-step{position.step:07d}"
    tmp = ckpt_root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "torch_rng": torch.get_rng_state(),
        },
        tmp / STATE_NAME,
    )
    (tmp / META_NAME).write_text(json.dumps({"stage": position.stage, "step": position.step}))
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    for old in sorted(p for p in ckpt_root.iterdir() if p.is_dir() and not p.name.startswith("."))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(run_dir: Path) -> Path | None:
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return None
    done = sorted(
        p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / META_NAME).is_file()
    )
    return done[-1] if done else None


def load_position(ckpt: Path) -> TrainPosition:
    meta = json.loads((ckpt / META_NAME).read_text())
    return TrainPosition(stage=int(meta["stage"]), step=int(meta["step"]))


def load_checkpoint(ckpt: Path, model, optimizer, scheduler) -> dict[str, Any]:
    """Restore weights, optimizer, scheduler and RNG. Optimizer state is read with
    ``weights_only=True``: a checkpoint cannot run code on load."""
    load_model(model, ckpt / WEIGHTS_NAME, strict=True, device=str(next(model.parameters()).device))
    state = torch.load(ckpt / STATE_NAME, map_location="cpu", weights_only=True)
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["torch_rng"])
    return state
