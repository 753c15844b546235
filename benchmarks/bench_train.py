"""Training throughput (samples/s) and model FLOPs utilisation against the measured matmul peak.

FLOPs per step are counted by torch's FlopCounterMode on one real forward + backward (so
they include the frozen vision tower's forward and every matmul/attention), and the peak is
the best of several large fp32 matrix products on the same device and thread count.

    .venv/bin/python benchmarks/bench_train.py --sizes tiny 100m --batch 8
    .venv/bin/python benchmarks/bench_train.py --recipe configs/tiny_stage16.yaml --steps 20

``--sizes`` times a stage-1 step (LM loss on fixed captions) of freshly built models.
``--recipe`` times the trainer's step of one stage of a recipe, decoders included when the stage
runs them: the recipe's data, batch, micro-batching, learning-rate groups and gradient clipping,
on a trained model (``--model``, the shipped one by default, so the matcher and losses see
realistic predictions). FLOPs are counted on every timed step (in a second pass over the same
batches), and the world's rendering and batching is timed apart from the model's step.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from bench_generate import SIZES
from visionllm2 import Sample, Turn, build_model
from visionllm2.modeling.builder import from_pretrained
from visionllm2.training.config import StageSpec, load_train_config
from visionllm2.training.data import Mixture, StepBatches, build_dataset
from visionllm2.training.stages import build_optimizer, clip_gradients, clip_sets


def _cpu_attention_flops(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_attention_backward_flops(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return 2 * sdpa_flop_count(query, key, value)


CPU_ATTENTION_FLOPS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_attention_backward_flops,
}


def flop_counter() -> FlopCounterMode:
    """torch's FLOP counter, counting the CPU's fused attention kernel too (module docstring)."""
    return FlopCounterMode(display=False, custom_mapping=CPU_ATTENTION_FLOPS)


def attention_share(counter: FlopCounterMode) -> float:
    """The CPU fused attention's share of the counted FLOPs (what torch's counter alone would miss)."""
    counts = counter.get_flop_counts()["Global"]
    return sum(counts.get(op, 0) for op in CPU_ATTENTION_FLOPS) / max(counter.get_total_flops(), 1)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_peak(device: str, n: int, dtype: torch.dtype) -> float:
    """Best FLOP/s of an n x n matmul."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = 0.0
    for _ in range(5):
        sync(device)
        t0 = time.perf_counter()
        for _ in range(3):
            a @ b
        sync(device)
        best = max(best, 3 * 2 * n**3 / (time.perf_counter() - t0))
    return best


def samples(batch: int) -> list[Sample]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(batch):
        img = Image.fromarray(rng.integers(0, 255, (128, 128, 3), dtype=np.uint8))
        answer = "There are three shapes: a red circle, a blue square and a green star. " * (1 + i % 2)
        out.append(
            Sample(
                images=[img],
                conversation=[Turn("user", "<image>\nDescribe the image."), Turn("assistant", answer)],
            )
        )
    return out


def run(size: str, batch: int, steps: int, device: str, dtype: str) -> dict:
    torch.manual_seed(0)
    model = build_model(SIZES[size]()).to(device).train()
    opt, _ = build_optimizer(
        model, StageSpec(name="stage1", steps=steps, lr=1e-4), weight_decay=0.0, betas=(0.9, 0.999)
    )
    b = model.processor(samples(batch)).to(device)
    autocast = torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16, enabled=dtype == "bf16")

    def step() -> None:
        with autocast:
            loss = model(b).loss
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    counter = flop_counter()
    with counter:
        step()
    flops = counter.get_total_flops()
    attention = attention_share(counter)
    step()  # warm-up
    times = []
    for _ in range(steps):
        sync(device)
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
    dt = statistics.median(times)
    n_params = sum(p.numel() for p in model.parameters())
    return dict(
        size=size,
        params=n_params,
        tokens=int(b.attention_mask.sum()),
        sps=batch / dt,
        flops=flops / dt,
        attention=attention,
    )


def run_recipe(recipe: str, stage_index: int, model_name: str, steps: int) -> dict:
    """Time the trainer's step of one recipe stage (see the module docstring)."""
    cfg = load_train_config(recipe)
    if not 0 <= stage_index < len(cfg.stages):
        raise SystemExit(f"--stage {stage_index}: {recipe} has stages 0-{len(cfg.stages) - 1}")
    stage = cfg.stages[stage_index]
    torch.manual_seed(cfg.seed)
    model = from_pretrained(model_name).train()
    opt, _ = build_optimizer(model, stage, weight_decay=cfg.weight_decay, betas=cfg.betas)
    params = [p for g in opt.param_groups for p in g["params"]]
    clips = clip_sets(model, params, cfg.grad_clip, cfg.decoder_grad_clip)
    datasets = {d.name: build_dataset(d) for d in cfg.data}
    weights = {d.name: stage.weights.get(d.name, d.weight) for d in cfg.data}
    batches = StepBatches(
        Mixture(datasets, weights, seed=cfg.seed, stage=stage_index),
        model.processor,
        batch_size=cfg.batch_size,
        steps=steps + 1,
        micro_batches=cfg.grad_accum,
        max_tokens=cfg.micro_batch_tokens,
    )

    def step(micro) -> None:
        share = sum(b.input_ids.shape[0] for b in micro)
        for b in micro:
            loss = model(b, decoders=stage.runs_decoders).loss
            (loss * (b.input_ids.shape[0] / share)).backward()
        clip_gradients(clips)
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(batches[0])  # warm-up
    data_s, step_s, timed = [], [], []
    for i in range(1, steps + 1):
        t0 = time.perf_counter()
        micro = batches[i]
        t1 = time.perf_counter()
        step(micro)
        data_s.append(t1 - t0)
        step_s.append(time.perf_counter() - t1)
        timed.append(micro)
    counter = flop_counter()
    with counter:
        for micro in timed:
            step(micro)
    n_micro = sum(len(m) for m in timed) / steps
    return dict(
        size=f"{Path(recipe).stem} stage {stage_index} ({stage.name})",
        params=sum(p.numel() for p in model.parameters()),
        batch=cfg.batch_size,
        micro=n_micro,
        sps=cfg.batch_size * steps / sum(step_s),
        sps_data=cfg.batch_size * steps / (sum(step_s) + sum(data_s)),
        flops=counter.get_total_flops() / sum(step_s),
        attention=attention_share(counter),
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["tiny", "100m"], choices=list(SIZES))
    ap.add_argument("--recipe", help="time a training recipe's stage instead of --sizes (CPU, fp32)")
    ap.add_argument("--stage", type=int, default=0, help="with --recipe: the stage's index")
    ap.add_argument("--model", default="tiny", help="with --recipe: the model the step trains")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"])
    ap.add_argument("--peak-n", type=int, default=2048)
    args = ap.parse_args()
    tdtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    if args.device.startswith("cuda") and args.dtype == "fp32":
        torch.backends.cuda.matmul.allow_tf32 = False  # count fp32 honestly on GPUs
    peak = matmul_peak(args.device, args.peak_n, tdtype)
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else platform.machine()
    print(f"# {dev}, torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}")
    print(f"# measured matmul peak ({args.peak_n}^3): {peak / 1e9:.1f} GFLOP/s")
    if args.recipe:
        r = run_recipe(args.recipe, args.stage, args.model, args.steps)
        print(
            "| recipe stage | params | batch | micro-batches | samples/s (step) | samples/s (with data) "
            "| achieved GFLOP/s | of which attention | MFU |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        print(
            f"| {r['size']} | {r['params'] / 1e6:.1f}M | {r['batch']} | {r['micro']:.1f} | {r['sps']:.2f} "
            f"| {r['sps_data']:.2f} | {r['flops'] / 1e9:.1f} | {100 * r['attention']:.0f}% "
            f"| {100 * r['flops'] / peak:.1f}% |"
        )
        return
    print(
        "| config | params | batch | tokens/batch | samples/s | achieved GFLOP/s | of which attention | MFU |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for size in args.sizes:
        r = run(size, args.batch, args.steps, args.device, args.dtype)
        print(
            f"| {r['size']} | {r['params'] / 1e6:.1f}M | {args.batch} | {r['tokens']} | {r['sps']:.2f} "
            f"| {r['flops'] / 1e9:.1f} | {100 * r['attention']:.0f}% | {100 * r['flops'] / peak:.1f}% |",
            flush=True,
        )


if __name__ == "__main__":
    main()
