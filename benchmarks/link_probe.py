"""What of a text-to-image prompt reaches the diffusion decoder? Linear probes along the path.

One-shape world prompts ("Draw a small dotted red square at the top left.") go through the
model as in training. At each stage of the path to the UNet, a multinomial logistic regression
(L2, LBFGS) learns the shape's colour, kind and grid cell from 3/4 of the prompts and is scored
on the rest:

- the LLM's hidden states at the [GEN] link queries (before the super-link projection),
- the link states the decoder receives (after it), and their mean over the K links,
- the mapper's output, which is the UNet's cross-attention context.

A stage that loses what the one before it held is where the prompt gets lost.

    python benchmarks/link_probe.py --model tiny --samples 1024
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from condition_reliance import ONE_SHAPE
from visionllm2.data.synthetic.verifier import shape_entry
from visionllm2.data.synthetic.world import COLOURS, KINDS, POSITIONS, WorldConfig, generate_scene
from visionllm2.modeling.builder import from_pretrained
from visionllm2.training.data import world_dataset

ATTRIBUTES = ("colour", "kind", "grid cell")


def labels_of(scene_seed: int, config: WorldConfig) -> tuple[int, int, int]:
    scene = generate_scene(scene_seed, config)
    shape = shape_entry(scene.shapes[0], scene.width, scene.height)
    return (
        list(COLOURS).index(shape["colour"]),
        KINDS.index(shape["kind"]),
        list(POSITIONS).index(shape["position"]),
    )


def probe_accuracy(x: torch.Tensor, y: torch.Tensor, train: int, l2: float = 1e-3) -> float:
    """Held-out accuracy of a linear classifier trained on the first ``train`` rows."""
    x = x.flatten(1).double()
    mean, std = x[:train].mean(0), x[:train].std(0) + 1e-6
    x = (x - mean) / std
    classes = int(y.max()) + 1
    w = torch.zeros(x.shape[1], classes, dtype=x.dtype, requires_grad=True)
    b = torch.zeros(classes, dtype=x.dtype, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=300)

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(x[:train] @ w + b, y[:train]) + l2 * w.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        return float(((x[train:] @ w + b).argmax(1) == y[train:]).double().mean())


def probe_args(doc: str, samples: int) -> argparse.Namespace:
    """The command line of a link-probe benchmark: --model, --samples, --batch, --seed."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--samples", type=int, default=samples, help="prompts (3/4 train the probes)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=123, help="world dataset seed (not a training seed)")
    return p.parse_args()


def main() -> None:
    args = probe_args(__doc__, 1024)
    torch.manual_seed(0)
    model = from_pretrained(args.model).eval()
    name = model.config.families["gen"].decoder
    dec = model.decoders[name]
    config = WorldConfig(**ONE_SHAPE)
    data = world_dataset(num=100_000, seed=args.seed, heldout_seed=0, weights={"gen": 1.0}, config=ONE_SHAPE)

    captured: dict[str, list[torch.Tensor]] = {"hidden": [], "states": [], "context": []}
    project, mapper = model.super_link.project, dec.mapper.forward

    def capture_project(decoder: str, states: torch.Tensor) -> torch.Tensor:
        if decoder == name:
            captured["hidden"].append(states.detach().clone())
        return project(decoder, states)

    def capture_mapper(states: torch.Tensor) -> torch.Tensor:
        out = mapper(states)
        captured["states"].append(states.detach().clone())
        captured["context"].append(out.detach().clone())
        return out

    model.super_link.project = capture_project
    dec.mapper.forward = capture_mapper
    dec.diffusion_loss = lambda x0, cond, source=None: x0.sum() * 0.0  # the path, not the UNet
    labels = []
    with torch.no_grad():
        for start in range(0, args.samples, args.batch):
            samples = [data[i] for i in range(start, min(start + args.batch, args.samples))]
            labels += [labels_of(s.meta["scene_seed"], config) for s in samples]
            model(model.processor(samples))
    y = torch.tensor(labels)
    stages = {
        "LLM hidden states at the links": torch.cat(captured["hidden"]),
        "link states (decoder input)": torch.cat(captured["states"]),
        "mean of the link states": torch.cat(captured["states"]).mean(1),
        "mapper output (UNet context)": torch.cat(captured["context"]),
    }
    train = len(y) * 3 // 4
    majority = [float(torch.bincount(y[train:, j]).max()) / (len(y) - train) for j in range(3)]
    scored = len(y) - train
    print(f"model {args.model}: {len(y)} one-shape prompts, probes trained on {train}, scored on {scored}")
    print("\n| stage | shape (per prompt) | " + " | ".join(ATTRIBUTES) + " |\n|---|---|---|---|---|")
    print("| majority class | | " + " | ".join(f"{100 * m:.1f}" for m in majority) + " |")
    for stage, x in stages.items():
        cells = " | ".join(f"{100 * probe_accuracy(x, y[:, j], train):.1f}" for j in range(3))
        print(f"| {stage} | {tuple(x.shape[1:])} | {cells} |", flush=True)


if __name__ == "__main__":
    main()
