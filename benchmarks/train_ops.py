"""How many tensor ops one training step dispatches, and from where: the count that makes a small
model launch-bound on a GPU (each op costs microseconds of Python and kernel launch whatever its
size). Runs on the CPU; ops are counted at the dispatcher, attributed to the innermost
``visionllm2`` function on the stack (backward ops, run by the autograd engine, have none).

    python benchmarks/train_ops.py --recipe configs/tiny_gpu.yaml                 # decoders on
    python benchmarks/train_ops.py --recipe configs/tiny_gpu.yaml --no-decoders   # stage 1
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from visionllm2.modeling.builder import build_model
from visionllm2.training.config import load_model_config, load_train_config
from visionllm2.training.data import Mixture, StepBatches, build_dataset


class OpCounter(TorchDispatchMode):
    """Counts every dispatched op by the innermost visionllm2 function that issued it."""

    def __init__(self) -> None:
        super().__init__()
        self.by_function: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        frame, where = sys._getframe(1), "(backward / no visionllm2 frame)"
        while frame is not None:
            path = frame.f_code.co_filename
            if "/visionllm2/" in path and "/benchmarks/" not in path:
                where = f"{path.split('/visionllm2/')[-1]}:{frame.f_code.co_name}"
                break
            frame = frame.f_back
        self.by_function[where] += 1
        return func(*args, **(kwargs or {}))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="configs/tiny_gpu.yaml")
    p.add_argument("--batch", type=int, default=None, help="default: the recipe's batch_size")
    p.add_argument("--micro-batch-tokens", type=int, default=None, help="default: the recipe's")
    p.add_argument("--no-decoders", action="store_true", help="a stage-1 step (LM only)")
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args()
    cfg = load_train_config(args.recipe)
    torch.manual_seed(0)
    model = build_model(load_model_config(cfg.model)).train()
    datasets = {d.name: build_dataset(d) for d in cfg.data}
    mixture = Mixture(datasets, {d.name: d.weight for d in cfg.data}, seed=0, stage=1)
    batch = args.batch or cfg.batch_size
    steps = StepBatches(
        mixture,
        model.processor,
        batch_size=batch,
        steps=2,
        max_tokens=args.micro_batch_tokens or cfg.micro_batch_tokens,
    )
    decoders = not args.no_decoders
    for b in steps[0]:  # warm-up step, not counted
        model(b, decoders=decoders).loss.backward()
    micro = steps[1]
    counter = OpCounter()
    with counter:
        for b in micro:
            model(b, decoders=decoders).loss.backward()
    total = sum(counter.by_function.values())
    state = "on" if decoders else "off"
    print(
        f"{args.recipe}: batch {batch} in {len(micro)} micro-batch(es), decoders {state}: "
        f"{total} ops per step ({total / batch:.0f} per sample)\n"
    )
    print("| ops | where |\n|---|---|")
    for where, n in counter.by_function.most_common(args.top):
        print(f"| {n} | {where} |")


if __name__ == "__main__":
    main()
