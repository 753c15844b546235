"""Pose through the LLM links: one global gradient-clipping norm against the decoder clipped apart.

A tiny model (``tiny_config`` + a small pose decoder) on four world scenes of persons (17 COCO
keypoints, so each answer carries 18 [POSE] links). Stage 1: the LM alone learns the answers
(AdamW 6e-3, 200 steps). Stage 2: LLM and projector frozen; the link tables stay in the optimizer
at a ~0 rate (multiplier 1e-9), so their gradient enters the clipping norm but they do not move;
decoder rate 3e-4 for 300 steps, tenfold lower for the last fifth. The two runs differ only in
``training.stages.clip_sets``: one norm of 0.1 over decoder and links, or the decoder clipped on
its own at 0.1. Then the model *generates* its answers and the keypoints are scored (COCO AP).

    python benchmarks/pose_clipping.py --seeds 0 1
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench_decoders import SIZES
from visionllm2.config import DecoderConfig, tiny_config
from visionllm2.data.sample import Sample
from visionllm2.data.synthetic.tasks import build_task
from visionllm2.data.synthetic.world import WorldConfig, generate_scene
from visionllm2.evaluation.detection import coco_evaluate, ground_truth_from_targets
from visionllm2.modeling.builder import build_model
from visionllm2.training.config import StageSpec
from visionllm2.training.stages import clip_gradients, clip_sets, param_groups

# The decoders' unit-test size (bench_decoders.py) with a keypoint stage.
POSE = {
    **SIZES["tiny"],
    "pixel_size": 128,
    "num_keypoint_layers": 2,
    "num_queries": 30,
    "category_names": ["person", "dog"],
    "score_threshold": 0.0,
}


def run(seed: int, decoder_grad_clip: float | None) -> dict[str, float]:
    world = WorldConfig(min_shapes=1, max_shapes=2, p_person=1, p_dog=0, p_word=0, textures=False)
    rng = np.random.default_rng(seed)
    samples = [build_task("pose", generate_scene(rng, world), rng, config=world) for _ in range(4)]
    torch.manual_seed(0)
    cfg = tiny_config(pose=DecoderConfig(type="pose", link_dim=32, kwargs=POSE))
    cfg.families["pose"].decoder = "pose"
    model = build_model(cfg)
    batch = model.processor(samples)
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=6e-3, weight_decay=0.0)
    for _ in range(200):
        loss = model(batch, decoders=False).lm_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    stage = StageSpec(name="stage2", steps=300, lr=3e-4, lr_mult={"llm": 0, "projector": 0, "links": 1e-9})
    opt = torch.optim.AdamW(param_groups(model, stage, weight_decay=1e-4), lr=stage.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(stage.steps * 0.8)], 0.1)
    params = [p for g in opt.param_groups for p in g["params"]]
    clips = clip_sets(model, params, 0.1, decoder_grad_clip)
    for _ in range(stage.steps):
        out = model(batch)
        opt.zero_grad()
        out.loss.backward()
        clip_gradients(clips)
        opt.step()
        sched.step()
    model.eval()
    prompts = [Sample(images=s.images, conversation=s.conversation[:1]) for s in samples]
    results = model.generate(model.processor(prompts, add_generation_prompt=True), max_new_tokens=1000)
    preds, gts, exact, named = [], [], 0, 0
    for s, r in zip(samples, results):
        exact += r.text == s.conversation[1].content
        named += bool(r.items) and all(len(d.keypoints or {}) == 17 for d in r.items)
        want = model.processor([s])
        fams = [model.processor.family_names[f] for f in want.link_family.tolist()]
        preds.append(r.items)
        gts.append(ground_truth_from_targets(want.link_names, fams, s.targets))
    scores = coco_evaluate(preds, gts, [s.images[0].size for s in samples], iou_types=("bbox", "keypoints"))
    return {**scores, "exact_answers": exact, "answers_with_named_keypoints": named}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="world seeds of the four scenes")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    print("| seed | clipping | answers exact | box AP | box AP50 | keypoint AP | keypoint AP50 | s |")
    print("|---|---|---|---|---|---|---|---|")
    for seed in args.seeds:
        for name, dec_clip in (("one norm (decoder + links)", None), ("decoder apart", 0.1)):
            t = time.perf_counter()
            r = run(seed, dec_clip)
            print(
                f"| {seed} | {name} | {r['exact_answers']}/4 | {100 * r['bbox/AP']:.1f} | "
                f"{100 * r['bbox/AP50']:.1f} | {100 * r['keypoints/AP']:.1f} | "
                f"{100 * r['keypoints/AP50']:.1f} | {time.perf_counter() - t:.0f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
