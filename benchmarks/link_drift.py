"""How far a model's link states (what each decoder reads) moved from a reference model's, per
link family, on the same world prompts.

Each sample of the decoder tasks goes through both models with its answer (teacher forcing, as
in training); the drift is the squared distance between the two models' states at the super-link
queries over the squared size of the reference's, per family and over all links (the quantity a
``keep_links`` stage holds down: ``visionllm2.training.engine.link_drift``). 0 means every
decoder sees exactly the inputs it was trained on.

    python benchmarks/link_drift.py --model runs/<run>/final --reference tiny --per-task 16
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch

from visionllm2.evaluation.reliance import samples_by_task
from visionllm2.modeling.builder import from_pretrained
from visionllm2.training.data import world_dataset

TASKS = ("det", "inst_seg", "sem_seg", "grd", "ref_seg", "pose", "gen", "edit")


def states(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(batch, decoders=False, link_states=True).link_states.float()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="the model whose links moved (name or folder)")
    p.add_argument("--reference", default="tiny", help="the model it started from")
    p.add_argument("--per-task", type=int, default=16, help="samples per decoder task")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=999, help="world dataset seed (not a training seed)")
    args = p.parse_args()
    model = from_pretrained(args.model).eval()
    reference = from_pretrained(args.reference).eval()
    data = world_dataset(num=100_000, seed=args.seed, heldout_seed=0)
    picked = samples_by_task(data, TASKS, args.per_task, one_image=False)
    samples = [s for t in TASKS for s in picked[t]]
    moved: dict[str, float] = defaultdict(float)
    size: dict[str, float] = defaultdict(float)
    for i in range(0, len(samples), args.batch_size):
        batch = reference.processor(samples[i : i + args.batch_size])
        new, ref = states(model, batch), states(reference, batch)
        names = [reference.super_link.family_names[int(f)] for f in batch.link_family]
        for name, a, b in zip(names, new, ref):
            for key in (name, "all"):
                moved[key] += float((a - b).pow(2).sum())
                size[key] += float(b.pow(2).sum())
    print(f"{args.model} against {args.reference}: {len(samples)} world samples (seed {args.seed})\n")
    print("| link family | drift |\n|---|---|")
    for key in sorted(size, key=lambda k: (k == "all", k)):
        print(f"| {key} | {moved[key] / max(size[key], 1e-12):.4f} |")


if __name__ == "__main__":
    main()
