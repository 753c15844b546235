"""How much of a clipped update the LM loss gets: gradient norms of a trained model.

For a few mixed world batches: the norm of the LM loss's gradient on the LLM, of the decoders'
summed losses' gradient on the LLM, and of the total loss's gradient on every parameter (what
gradient clipping divides by).

    python benchmarks/grad_share.py --model tiny --batches 4 --batch-size 16
"""

from __future__ import annotations

import argparse

import torch

from visionllm2.modeling.builder import from_pretrained
from visionllm2.training.data import world_dataset


def norm(grads) -> float:
    return float(torch.sqrt(sum((g.float() ** 2).sum() for g in grads if g is not None)))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny")
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=7, help="world dataset seed of the batches")
    args = p.parse_args()
    torch.manual_seed(0)
    model = from_pretrained(args.model).train()
    data = world_dataset(num=args.batches * args.batch_size, seed=args.seed, heldout_seed=0)
    llm = list(model.llm.parameters())
    every = [q for q in model.parameters() if q.requires_grad]
    print("| batch | LM loss | decoder losses | LM grad on LLM | decoder grad on LLM | total grad (all) |")
    print("|---|---|---|---|---|---|")
    for k in range(args.batches):
        batch = model.processor([data[k * args.batch_size + i] for i in range(args.batch_size)])
        out = model(batch)
        decoders = sum(out.losses.values())
        g_lm = torch.autograd.grad(out.lm_loss, llm, retain_graph=True, allow_unused=True)
        g_dec = torch.autograd.grad(decoders, llm, retain_graph=True, allow_unused=True)
        g_all = torch.autograd.grad(out.loss, every, allow_unused=True)
        print(
            f"| {k} | {float(out.lm_loss):.3f} | {float(decoders):.1f} | {norm(g_lm):.3f} | "
            f"{norm(g_dec):.3f} | {norm(g_all):.2f} |"
        )


if __name__ == "__main__":
    main()
