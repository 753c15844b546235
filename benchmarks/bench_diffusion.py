"""Images per second of the diffusion decoder's sampling: image size x steps x sampler (DDIM, DPM-Solver).

Runs the tiny UNet config (random weights: speed does not depend on them) on CPU by default:

    python benchmarks/bench_diffusion.py --sizes 64 128 --steps 10 25 50 --threads 2

Guidance is on (scale 3, so two UNet passes per step), as at inference.
"""

from __future__ import annotations

import argparse
import time

import torch

from visionllm2.decoders.diffusion import SAMPLERS, DiffusionDecoder

TINY = dict(
    block_out_channels=[32, 64],
    layers_per_block=1,
    attention_head_dim=8,
    cross_attention_dim=64,
    mapper_dim=64,
    cond_len=8,
)


def bench(
    *,
    size: int,
    steps: int,
    sampler: str,
    batch: int,
    guidance: float,
    device: str,
    repeats: int,
    link_dim: int,
) -> float:
    """Seconds per call of ``generate`` for ``batch`` images (best of ``repeats``)."""
    torch.manual_seed(0)
    dec = DiffusionDecoder(link_dim=link_dim, image_size=size, **TINY).to(device).eval()
    with torch.no_grad():
        cond = dec.mapper(torch.randn(batch, 8, link_dim, device=device))  # (B, C, D)
    best = float("inf")
    for _ in range(repeats):
        gen = torch.Generator().manual_seed(0)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        dec.generate(cond, sampler=sampler, num_inference_steps=steps, guidance_scale=guidance, generator=gen)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--steps", type=int, nargs="+", default=[10, 25, 50])
    parser.add_argument("--samplers", nargs="+", default=list(SAMPLERS), choices=SAMPLERS)
    parser.add_argument("--batch", type=int, default=1, help="images per generate() call")
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    # Warm-up (allocator, kernels' first calls) so the first row is not penalised.
    bench(
        size=32,
        steps=2,
        sampler="ddim",
        batch=1,
        guidance=args.guidance,
        device=args.device,
        repeats=1,
        link_dim=32,
    )
    print(
        f"device={args.device} threads={torch.get_num_threads()} batch={args.batch} "
        f"guidance={args.guidance} unet={TINY['block_out_channels']}"
    )
    print("| size | steps | " + " | ".join(f"{s} img/s" for s in args.samplers) + " |")
    print("|---|---|" + "---|" * len(args.samplers))
    for size in args.sizes:
        for steps in args.steps:
            cells = []
            for sampler in args.samplers:
                seconds = bench(
                    size=size,
                    steps=steps,
                    sampler=sampler,
                    batch=args.batch,
                    guidance=args.guidance,
                    device=args.device,
                    repeats=args.repeats,
                    link_dim=32,
                )
                cells.append(f"{args.batch / seconds:.3f}")
            print(f"| {size} | {steps} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
