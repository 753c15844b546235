"""Does a freshly built default-size model learn to read world images? A stage-1-style run on
one kind of question (the colour of the only shape in a world scene), then the answers' LM loss
with each scene's own image against another scene's: a gap above 0 means the answers come from
the image.

The knobs are what decides it on these runs (README, "Reading the image"): the shapes' size
against the vision tower's patch, and a curriculum that starts from large shapes.

    python benchmarks/image_reading.py                                  # 16-38 px shapes, patch 16
    python benchmarks/image_reading.py --min-size 0.3 --max-size 0.45   # 39-57 px shapes
    python benchmarks/image_reading.py --patch 8
    python benchmarks/image_reading.py --big-first 250 --steps 650      # curriculum
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from visionllm2.data.synthetic.tasks import TaskNotApplicable, build_task
from visionllm2.data.synthetic.world import WorldConfig, generate_scene, render
from visionllm2.modeling.builder import build_model
from visionllm2.training.config import load_model_config, load_train_config

BIG = {"min_size": 0.3, "max_size": 0.45}


def colour_question(seed: int, config: WorldConfig):
    """A world colour question about the scene's only shape (the next seed if none applies)."""
    while True:
        scene = generate_scene(seed, config)
        try:
            rng = np.random.default_rng(seed)
            return build_task("vqa", scene, rng, rendered=render(scene), config=config, vqa_type="colour")
        except TaskNotApplicable:
            seed += 7919


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="configs/tiny.yaml", help="the model comes from this recipe")
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--min-size", type=float, default=WorldConfig.min_size)
    p.add_argument("--max-size", type=float, default=WorldConfig.max_size)
    p.add_argument("--patch", type=int, default=None, help="vision patch size (default: the recipe's)")
    p.add_argument("--big-first", type=int, default=0, help="first N steps on 39-57 px shapes")
    p.add_argument("--test", type=int, default=32, help="held-out questions")
    args = p.parse_args()

    one = {"min_shapes": 1, "max_shapes": 1, "p_person": 0.0, "p_dog": 0.0, "p_word": 0.0}
    world = WorldConfig(**one, min_size=args.min_size, max_size=args.max_size)
    big = WorldConfig(**one, **BIG)
    spec = load_train_config(args.recipe).model
    if args.patch is not None:
        spec.overrides["vision.patch_size"] = args.patch
    torch.manual_seed(0)
    model = build_model(load_model_config(spec)).train()
    opt = torch.optim.AdamW([q for q in model.parameters() if q.requires_grad], lr=args.lr, weight_decay=0.0)
    start = time.perf_counter()
    for step in range(args.steps):
        config = big if step < args.big_first else world
        seeds = range(step * args.batch, (step + 1) * args.batch)
        loss = model(model.processor([colour_question(s, config) for s in seeds]), decoders=False).lm_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    batch = model.processor([colour_question(10**7 + i, world) for i in range(args.test)])
    with torch.no_grad():
        own = float(model(batch, decoders=False).lm_loss)
        batch.pixel_values = batch.pixel_values.roll(1, dims=0)
        other = float(model(batch, decoders=False).lm_loss)
    print(
        f"shapes {world.min_px}-{world.max_px} px, patch {model.vision.model.config.patch_size}, "
        f"{args.big_first} big-shape steps, {args.steps} steps: LM loss own image {own:.3f}, "
        f"another image {other:.3f}, gap {other - own:+.3f} ({time.perf_counter() - start:.0f} s)"
    )


if __name__ == "__main__":
    main()
