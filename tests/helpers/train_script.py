"""Runs a tiny training recipe for the training tests (one process, or one torchrun rank).

usage: train_script.py OUT_DIR [--resume] [--kill-at STAGE:STEP] [key=value ...]
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from conftest import ProbeDecoder  # noqa: E402,F401  (registers the "probe" decoder)
from visionllm2.data.sample import LinkTarget, Sample, Turn  # noqa: E402
from visionllm2.training import checkpoint as ckpt_mod  # noqa: E402
from visionllm2.training import engine as engine_mod  # noqa: E402
from visionllm2.training.config import load_train_config  # noqa: E402
from visionllm2.training.data import register_dataset  # noqa: E402

RECIPE = Path(__file__).with_name("tiny_recipe.yaml")


def toy_samples(n: int = 12, seed: int = 0) -> list[Sample]:
    """Coloured squares; the answer names the colour and links a box."""
    rng = np.random.default_rng(seed)
    colours = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}
    out = []
    for i in range(n):
        name = list(colours)[i % 3]
        img = np.zeros((32, 32, 3), np.uint8)
        x, y = rng.integers(0, 16, 2)
        img[y : y + 12, x : x + 12] = colours[name]
        box = np.array([[x, y, x + 12, y + 12]], np.float32)
        task = "det" if i % 2 else "vqa"
        if task == "det":
            conv = [Turn("user", "<image>\nFind the square."), Turn("assistant", f"{name} square[DET]")]
            targets = [LinkTarget(boxes=box)]
        else:
            conv = [Turn("user", "<image>\nWhat colour?"), Turn("assistant", name)]
            targets = []
        out.append(Sample(images=[Image.fromarray(img)], conversation=conv, targets=targets, task=task))
    return out


register_dataset("toy", toy_samples)


def main(argv: list[str]) -> None:
    out, rest = argv[0], argv[1:]
    resume = "--resume" in rest
    kill_at = None
    if "--kill-at" in rest:
        i = rest.index("--kill-at")
        kill_at = tuple(int(x) for x in rest[i + 1].split(":"))
        rest = rest[:i] + rest[i + 2 :]
    overrides = [o for o in rest if "=" in o] + [f"out_dir={out}"]
    if kill_at is not None:
        real_save = ckpt_mod.save_checkpoint

        def save_then_die(run_dir, model, opt, sched, position, keep=2):
            path = real_save(run_dir, model, opt, sched, position, keep=keep)
            if (position.stage, position.step) >= kill_at:
                os.kill(os.getpid(), signal.SIGKILL)  # a hard kill: no cleanup runs
            return path

        engine_mod.save_checkpoint = save_then_die
    cfg = load_train_config(RECIPE, overrides)
    engine_mod.Trainer(cfg, resume=resume, progress=False).run()


if __name__ == "__main__":
    main(sys.argv[1:])
