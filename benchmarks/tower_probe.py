"""What does the vision tower say about a shape? Linear probes on the feature that the LLM
gets for the patch at the centre of a scene's only shape (the tower's output, with its CNN
branch if it has one), and on the grounding decoder's backbone map at the same place (its
stride-16 map), for the shape's kind and its colour.

    python benchmarks/tower_probe.py --model tiny [--model runs/<run>/final ...] --samples 1200

Scenes of one shape, no figures or words, at two sizes: 39-57 px (the question curriculum's
``look`` stages) and the world's 16-38 px. A multinomial logistic regression learns from 3/4 of
the scenes and is scored (% right) on the rest; 7 kinds and 8 colours, so chance is 14 and 12.5.
"""

from __future__ import annotations

import argparse

import torch

from condition_reliance import ONE_SHAPE
from link_probe import probe_accuracy
from visionllm2.data.synthetic.world import WorldConfig, generate_scene, render
from visionllm2.modeling.builder import from_pretrained

SIZES = {"39-57 px": {"min_size": 0.3, "max_size": 0.45}, "16-38 px": {}}


def cell(grid: int, x: float, y: float) -> int:
    """Row-major index of the grid cell holding the point (x, y), both in [0, 1)."""
    return min(int(y * grid), grid - 1) * grid + min(int(x * grid), grid - 1)


def features(model, config: WorldConfig, samples: int, seed: int, batch: int):
    """Per scene: the tower's and the grounding backbone's feature at the shape's centre, and the
    shape's (kind, colour)."""
    tower, backbone, labels = [], [], []
    pixels = model.processor.image
    grounding = model.decoders["grounding"]
    spec = model.processor.decoder_pixels["grounding"]
    for start in range(0, samples, batch):
        scenes = [generate_scene(seed + i, config) for i in range(start, min(start + batch, samples))]
        images = [render(s).image for s in scenes]
        with torch.no_grad():
            t = model.vision(torch.stack([pixels(im) for im in images]))  # (B, N, D)
            b = grounding.backbone(torch.stack([spec(im) for im in images]))[2]  # stride 16: (B, C, h, w)
        for j, s in enumerate(scenes):
            sh = s.shapes[0]
            x, y = (sh.x + sh.size / 2) / s.width, (sh.y + sh.size / 2) / s.height
            tower.append(t[j, cell(model.vision.grid, x, y)])
            backbone.append(b[j].flatten(1)[:, cell(b.shape[-1], x, y)])
            labels.append((sh.kind, sh.colour))
    return torch.stack(tower), torch.stack(backbone), labels


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", action="append", help="bundled name or folder (repeatable; default tiny)")
    p.add_argument("--samples", type=int, default=1200, help="scenes per size (3/4 train the probes)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seed", type=int, default=10**6, help="world scene seed (not a training seed)")
    args = p.parse_args()
    train = args.samples * 3 // 4
    print("| model | shapes | probed | kind | colour |")
    print("|---|---|---|---|---|")
    for name in args.model or ["tiny"]:
        model = from_pretrained(name).eval()
        for size, extra in SIZES.items():
            config = WorldConfig(**ONE_SHAPE, **extra)
            tower, backbone, labels = features(model, config, args.samples, args.seed, args.batch)
            for what, x in (("LLM's visual feature", tower), ("grounding backbone, stride 16", backbone)):
                scores = []
                for k in range(2):
                    values = sorted({lab[k] for lab in labels})
                    y = torch.tensor([values.index(lab[k]) for lab in labels])
                    scores.append(100 * probe_accuracy(x, y, train))
                print(f"| {name} | {size} | {what} | {scores[0]:.1f} | {scores[1]:.1f} |", flush=True)


if __name__ == "__main__":
    main()
