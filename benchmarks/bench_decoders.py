"""Latency and peak memory of the grounding and pose decoders against classes named and object queries.

The class embeddings only enter the fusion encoder, the decoder's text cross-attention and the
dot-product class head, so cost should grow gently with the number of classes (1 -> 80), and
roughly linearly with object queries. Each configuration runs inference (no targets, eval mode)
on a batch of images with random link embeddings; ``--train`` also times a training step
(forward with targets + backward, denoising queries included).

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` above what was allocated before the
call; on CPU the profiler's allocation timeline (bytes PyTorch ops hold at once, summed over
alloc/free events in order: an estimate that ignores allocator caching).

    .venv/bin/python benchmarks/bench_decoders.py --classes 1 10 80 --queries 30 100 --repeats 3
    .venv/bin/python benchmarks/bench_decoders.py --decoder pose --classes 1 4 --keypoints 17
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from torch.profiler import ProfilerActivity, profile

from visionllm2.data.sample import LinkTarget
from visionllm2.decoders import Links, decoder_class

SIZES = {
    # the unit-test configuration
    "tiny": {
        "backbone": {"type": "cnn", "channels": [16, 32, 48, 64]},
        "hidden_dim": 64,
        "num_heads": 4,
        "ffn_dim": 128,
        "num_encoder_layers": 2,
        "num_decoder_layers": 2,
    },
    # Grounding-DINO-T's widths and depths on the MobileNetV2 backbone (random init here)
    "base": {
        "backbone": {"type": "mobilenet_v2", "pretrained": False},
        "hidden_dim": 256,
        "num_heads": 8,
        "ffn_dim": 1024,
        "num_encoder_layers": 6,
        "num_decoder_layers": 6,
    },
}


def make_inputs(
    decoder: str,
    classes: int,
    keypoints: int,
    batch: int,
    link_dim: int,
    pixel_size: int,
    device: torch.device,
) -> tuple[Links, torch.Tensor, list[LinkTarget | None]]:
    """``classes`` det links per image (or, for pose, ``classes`` categories each followed by
    ``keypoints`` keypoint links), two instances per class, and random pixels."""
    rng = np.random.default_rng(0)
    per_image: list[tuple[str, LinkTarget | None]] = []
    for c in range(classes):
        boxes = np.array([[10, 10, 60, 50], [70, 40, 120, 110]], np.float32)
        if decoder == "pose":
            kps = np.concatenate(
                [rng.uniform(10, 110, (2, keypoints, 2)), np.full((2, keypoints, 1), 2.0)], axis=-1
            )
            per_image.append((f"category {c}", LinkTarget(boxes=boxes, keypoints=kps.astype(np.float32))))
            per_image += [(f"keypoint {k}", None) for k in range(keypoints)]
        else:
            per_image.append((f"class {c}", LinkTarget(boxes=boxes)))
    n = len(per_image)
    sample = torch.arange(batch, device=device).repeat_interleave(n)
    links = Links(
        states=torch.randn(batch * n, 4, link_dim, device=device),
        sample=sample,
        batch_index=sample.clone(),
        families=[decoder if decoder == "pose" else "det"] * (batch * n),
        names=[name for _ in range(batch) for name, _ in per_image],
        num_samples=batch,
        image_sizes=torch.tensor([[128, 128]] * batch, device=device),
    )
    targets = [t for _ in range(batch) for _, t in per_image]
    return links, torch.randn(batch, 3, pixel_size, pixel_size, device=device), targets


def cpu_peak_bytes(fn: Callable[[], object]) -> int:
    """Peak of the bytes PyTorch ops hold at once while ``fn`` runs (profiler timeline)."""
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.time_range.start, e.self_cpu_memory_usage if e.name != "[memory]" else e.cpu_memory_usage)
        for e in prof.events()
    )
    held = peak = 0
    for _, delta in events:
        held += delta
        peak = max(peak, held)
    return peak


def measure(fn: Callable[[], object], device: torch.device, repeats: int) -> tuple[float, float]:
    """(median ms, peak MiB) of ``fn`` after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1000)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = cpu_peak_bytes(fn)
    return statistics.median(times), peak / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decoder", choices=["grounding", "pose"], default="grounding")
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--classes", type=int, nargs="+", default=[1, 5, 20, 80])
    parser.add_argument("--queries", type=int, nargs="+", default=[30, 100, 300])
    parser.add_argument("--keypoints", type=int, default=17, help="keypoint links per pose category")
    parser.add_argument("--pixel-size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--train", action="store_true", help="also time a training step (forward + backward)")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: leave as is)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    link_dim = 32
    cls = decoder_class(args.decoder)

    where = (
        torch.cuda.get_device_name(device) if device.type == "cuda" else f"{platform.processor() or 'cpu'}"
    )
    print(
        f"# {args.decoder} decoder, size {args.size}, pixel {args.pixel_size}, batch {args.batch}, "
        f"{where}, torch {torch.__version__}, {torch.get_num_threads()} threads"
    )
    header = "| classes | queries | infer ms | infer peak MiB |"
    if args.train:
        header += " train ms | train peak MiB |"
    print(header)
    print("|" + "|".join("---" for _ in header.split("|")[1:-1]) + "|")
    for q in args.queries:
        torch.manual_seed(0)
        kwargs = {**SIZES[args.size], "pixel_size": args.pixel_size, "num_queries": q, "max_classes": 1000}
        dec = cls(link_dim=link_dim, **kwargs).to(device)
        for c in args.classes:
            links, pixels, targets = make_inputs(
                args.decoder, c, args.keypoints, args.batch, link_dim, args.pixel_size, device
            )
            dec.eval()

            def infer(dec=dec, links=links, pixels=pixels) -> object:
                with torch.no_grad():
                    return dec(links, pixels)

            row = (
                f"| {c} | {q} | "
                + " | ".join(f"{v:.1f}" for v in measure(infer, device, args.repeats))
                + " |"
            )
            if args.train:
                dec.train()

                def step(dec=dec, links=links, pixels=pixels, targets=targets) -> object:
                    dec.zero_grad(set_to_none=True)
                    loss = sum(dec(links, pixels, targets).values())
                    loss.backward()
                    return loss

                row += " " + " | ".join(f"{v:.1f}" for v in measure(step, device, args.repeats)) + " |"
            print(row, flush=True)


if __name__ == "__main__":
    main()
