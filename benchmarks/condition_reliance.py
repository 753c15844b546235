"""Does a diffusion decoder use its condition? Denoising error with each sample's own condition,
another sample's, and the learned empty condition, by noise level.

The world samples of one task (``gen`` or ``edit``) go through the model as in training; the
decoder's targets and conditions (the mapper's output from the LLM's link states) are captured,
and its denoising error is measured at fixed noise and timesteps with the conditions as they are,
rotated by one sample, or replaced by the null condition used for guidance. A decoder that draws
what it is asked has a clearly higher error with another sample's condition, most at the noisy
steps that decide the layout; one that ignores the condition has the same error either way.

    python benchmarks/condition_reliance.py --model tiny --task gen --samples 32
"""

from __future__ import annotations

import argparse

import torch

from visionllm2.modeling.builder import from_pretrained
from visionllm2.training.data import world_dataset

BINS = ((0, 200), (200, 500), (500, 800), (800, 1000))
ONE_SHAPE = {"min_shapes": 1, "max_shapes": 1, "p_person": 0.0, "p_dog": 0.0, "p_word": 0.0}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--task", default="gen", choices=["gen", "edit"])
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--draws", type=int, default=4, help="noise draws per timestep bin")
    p.add_argument("--one-shape", action="store_true", help="scenes of one shape, no figures or words")
    p.add_argument("--seed", type=int, default=123, help="world dataset seed (not the training seed 0)")
    args = p.parse_args()
    model = from_pretrained(args.model).eval()
    dec = model.decoders[model.config.families[args.task].decoder]
    data = world_dataset(
        num=100_000,
        seed=args.seed,
        heldout_seed=0,
        weights={args.task: 1.0},
        config=ONE_SHAPE if args.one_shape else None,
    )
    captured: dict[str, torch.Tensor | None] = {}

    def capture(x0, cond, source=None):
        captured.update(x0=x0, cond=cond, source=source)
        return x0.sum() * 0.0

    dec.diffusion_loss = capture  # the forward pass up to the decoder, as in training
    with torch.no_grad():
        model(model.processor([data[i] for i in range(args.samples)]))
    x0, cond, source = captured["x0"], captured["cond"], captured["source"]
    conditions = {
        "own condition": cond,
        "another sample's": cond.roll(1, dims=0),
        "empty (null) condition": dec.null_context(cond),
    }
    print(f"model {args.model}, task {args.task}, {x0.shape[0]} samples, {args.draws} noise draws per bin")
    print("\n| timesteps | " + " | ".join(conditions) + " | another - own |\n|---|---|---|---|---|")
    gen = torch.Generator().manual_seed(0)
    for lo, hi in BINS:
        errors = dict.fromkeys(conditions, 0.0)
        for _ in range(args.draws):
            noise = torch.randn(x0.shape, generator=gen).to(x0)
            t = torch.randint(lo, hi, (x0.shape[0],), generator=gen).to(x0.device)
            with torch.no_grad():
                for name, c in conditions.items():
                    errors[name] += float(dec.denoising_error(x0, c, t, noise, source).mean()) / args.draws
        own, other = errors["own condition"], errors["another sample's"]
        cells = " | ".join(f"{v:.4f}" for v in errors.values())
        print(f"| {lo}-{hi - 1} | {cells} | {other - own:+.4f} |", flush=True)


if __name__ == "__main__":
    main()
