"""Do a model's keypoint layers refine the first guess, and can they learn to?

For a few batches of world pose scenes, with the model's training loss (teacher forcing): the
keypoint L1 of the first guess and after each keypoint layer; the gradient norm that loss sends to
the keypoint layers and to the delta head; and how many of the delta head's hidden units are above
zero (alive, for a ReLU head) on the keypoints that are scored (matched to a figure), against all
keypoint queries. A ReLU head whose hidden units are all dead there passes no gradient on: its last
bias is all that trains, and the keypoint layers before it get none.

    python benchmarks/keypoint_refinement.py --model tiny --batches 4
"""

from __future__ import annotations

import argparse

import torch

from grad_share import norm
from visionllm2.losses.matcher import flatten_matches
from visionllm2.modeling.builder import from_pretrained
from visionllm2.training.data import world_dataset


def live(pre: torch.Tensor) -> float:
    """% of the head's hidden pre-activations above zero."""
    return float((pre > 0).float().mean()) * 100


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=11, help="world dataset seed of the batches")
    args = p.parse_args()
    torch.manual_seed(0)
    model = from_pretrained(args.model).train()
    dec = model.decoders["pose"]
    hidden: list[torch.Tensor] = []  # delta-head pre-activations, one (S, Q, G, P, H) per layer call
    dec.kp_delta_head.layers[0].register_forward_hook(lambda m, i, o: hidden.append(o.detach()))
    matches: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []  # (sample, query, group)
    match = dec.criterion.match

    def record(outputs, padded):  # the final layer's assignment, which every keypoint layer is scored by
        indices = match(outputs, padded)
        if "keypoint_aux" in outputs:
            b, q, t = flatten_matches(indices)
            matches.append((b, q, padded.group[b, t]))
        return indices

    dec.criterion.match = record
    data = world_dataset(
        num=args.batches * args.batch_size, seed=args.seed, heldout_seed=0, weights={"pose": 1.0}
    )
    print(
        "| batch | keypoint L1: first guess | "
        + " | ".join(f"layer {i + 1}" for i in range(len(dec.kp_layers)))
        + " | grad on keypoint layers | grad on delta head"
        + " | delta units above zero, scored keypoints | all keypoints |"
    )
    print("|---" * (6 + len(dec.kp_layers)) + "|")
    for k in range(args.batches):
        hidden.clear()
        matches.clear()
        model.zero_grad(set_to_none=True)
        batch = model.processor([data[k * args.batch_size + i] for i in range(args.batch_size)])
        out = model(batch)
        steps = [out.losses[f"pose.loss_keypoints_kp{i}"] for i in range(len(dec.kp_layers))]
        steps.append(out.losses["pose.loss_keypoints"])
        sum(steps).backward()
        b, q, g = matches[0]
        scored = torch.cat([h[b, q, g].reshape(-1, h.shape[-1]) for h in hidden])
        every = torch.cat([h.reshape(-1, h.shape[-1]) for h in hidden])
        print(
            f"| {k} | "
            + " | ".join(f"{float(v.detach()):.3f}" for v in steps)
            + f" | {norm(p.grad for p in dec.kp_layers.parameters()):.2e}"
            + f" | {norm(p.grad for p in dec.kp_delta_head.parameters()):.2e}"
            + f" | {live(scored):.1f}% | {live(every):.1f}% |"
        )


if __name__ == "__main__":
    main()
