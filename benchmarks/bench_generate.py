"""Generated tokens/s of visionllm2's generation loop against transformers' Llava generate().

Both models get the same sizes (vision tower, projector, Llama LLM) and the same prompt
(image + question); each run generates ``--new-tokens`` tokens greedily. The two are timed
side by side in one process, alternating, and the median of ``--repeats`` runs is reported.

    .venv/bin/python benchmarks/bench_generate.py --sizes tiny 100m --batches 1 8
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch
from PIL import Image
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration

from visionllm2 import Sample, Turn, build_model
from visionllm2.config import LLMConfig, ModelConfig, VisionConfig, tiny_config
from visionllm2.inference.generate import GenerationConfig, generate
from visionllm2.modeling.builder import resolve_model_path

SIZES = {
    "tiny": tiny_config,
    # The shipped default model's sizes (visionllm2-tiny's config.json; freshly initialised).
    "default": lambda: ModelConfig.load(resolve_model_path("tiny") / "config.json"),
    # ~100M parameters: a 12-layer 768-wide Llama and a small CLIP tower (196 patches).
    "100m": lambda: ModelConfig(
        vision=VisionConfig(
            image_size=224, patch_size=16, hidden_size=384, num_layers=6, num_heads=6, intermediate_size=1536
        ),
        llm=LLMConfig(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=2048),
    ),
}


def llava_twin(model) -> LlavaForConditionalGeneration:
    """A Llava with the same vision tower, projector and LLM sizes (and weights)."""
    v, t = model.vision.model.config, model.llm.config
    cfg = LlavaConfig(
        vision_config=CLIPVisionConfig(**v.to_diff_dict()),
        text_config=LlamaConfig(**t.to_diff_dict()),
        image_token_index=model.processor.image_token_id,
        image_seq_length=model.vision.num_patches,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
    )
    llava = LlavaForConditionalGeneration(cfg).eval()
    llava.model.vision_tower.load_state_dict(model.vision.model.state_dict())
    llava.model.language_model.load_state_dict(model.llm.get_decoder().state_dict())
    llava.lm_head.load_state_dict(model.llm.get_output_embeddings().state_dict())
    p = model.projector
    llava.model.multi_modal_projector.linear_1.load_state_dict(p.fc1.state_dict())
    llava.model.multi_modal_projector.linear_2.load_state_dict(p.fc2.state_dict())
    return llava


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run(
    size: str, batch_size: int, new_tokens: int, repeats: int, device: str, caches: tuple[bool, ...]
) -> list[dict]:
    torch.manual_seed(0)
    model = build_model(SIZES[size]()).eval()
    llava = llava_twin(model).to(device)
    model.to(device)
    n_params = sum(p.numel() for p in model.parameters())
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (96, 96, 3), dtype=np.uint8)) for _ in range(batch_size)]
    samples = [
        Sample(images=[im], conversation=[Turn("user", "<image>\nDescribe the picture.")]) for im in images
    ]
    batch = model.processor(samples, add_generation_prompt=True).to(device)
    rows = []
    for cache in caches:
        ours, theirs = [], []
        for _ in range(repeats):
            sync(device)
            t0 = time.perf_counter()
            out = generate(
                model,
                batch,
                GenerationConfig(
                    max_new_tokens=new_tokens, min_new_tokens=new_tokens, use_cache=cache, run_decoders=False
                ),
            )
            sync(device)
            ours.append(time.perf_counter() - t0)
            assert all(len(r.token_ids) == new_tokens for r in out)
            t0 = time.perf_counter()
            with torch.no_grad():
                seq = llava.generate(
                    input_ids=batch.input_ids,
                    attention_mask=batch.attention_mask,
                    pixel_values=batch.pixel_values,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                    do_sample=False,
                    use_cache=cache,
                    pad_token_id=model.processor.pad_token_id,
                )
            sync(device)
            theirs.append(time.perf_counter() - t0)
            assert seq.shape[1] - batch.input_ids.shape[1] == new_tokens
        tokens = batch_size * new_tokens
        a, b = statistics.median(ours), statistics.median(theirs)
        rows.append(
            dict(size=size, params=n_params, batch=batch_size, cache=cache, ours=tokens / a, llava=tokens / b)
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["tiny", "100m"], choices=list(SIZES))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cache", choices=["both", "yes", "no"], default="both", help="KV cache settings")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    cpu = platform.processor() or platform.machine()
    print(f"# {cpu}, torch {torch.__version__}, {torch.get_num_threads()} threads, {dev}")
    print("| config | params | batch | KV cache | visionllm2 tok/s | Llava generate tok/s | ratio |")
    print("|---|---|---|---|---|---|---|")
    for size in args.sizes:
        for bs in args.batches:
            caches = {"both": (True, False), "yes": (True,), "no": (False,)}[args.cache]
            for r in run(size, bs, args.new_tokens, args.repeats, args.device, caches):
                cache = "yes" if r["cache"] else "no"
                print(
                    f"| {r['size']} | {r['params'] / 1e6:.1f}M | {r['batch']} | {cache} "
                    f"| {r['ours']:.1f} | {r['llava']:.1f} | {r['ours'] / r['llava']:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
