"""End to end through the LLM links: a tiny model overfits a few world scenes for detection and
instance segmentation, and for pose, then *generates* its answers (links included) and its
decoder's detections are scored with COCO AP."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from test_grounding_decoder import TINY
from visionllm2.config import DecoderConfig, tiny_config
from visionllm2.data.sample import Sample
from visionllm2.data.synthetic.tasks import build_task
from visionllm2.data.synthetic.world import WorldConfig, generate_scene
from visionllm2.evaluation.detection import coco_evaluate, ground_truth_from_targets
from visionllm2.modeling.builder import build_model

# The grounding decoder's own tiny test size, without its training knobs (set per test here).
TRUNK = {k: v for k, v in TINY.items() if k not in ("link_dim", "mask_points", "matcher_points", "dn_number")}
TRUNK["score_threshold"] = 0.0


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def tiny_model(family: str, decoder: str, kwargs: dict):
    torch.manual_seed(0)
    cfg = tiny_config(**{decoder: DecoderConfig(type=decoder, link_dim=32, kwargs=kwargs)})
    for fam in ["det", "seg", "grd"] if decoder == "grounding" else [family]:
        cfg.families[fam].decoder = decoder
    return build_model(cfg)


def world_samples(task: str, n: int, world: WorldConfig, seed: int = 0) -> list[Sample]:
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        scene = generate_scene(rng, world)
        out.append(build_task(task, scene, rng, config=world))
    return out


def overfit(model, samples: list[Sample], steps: int, lr: float) -> None:
    params = [p for p in model.parameters() if p.requires_grad]
    # The LM memorises its answers faster at a higher rate than the decoder tolerates.
    decoder = {id(p) for p in model.decoders.parameters()}
    opt = torch.optim.AdamW(
        [
            {"params": [p for p in params if id(p) in decoder], "lr": lr},
            {"params": [p for p in params if id(p) not in decoder], "lr": 3 * lr},
        ],
        weight_decay=1e-4,
    )
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(steps * 0.8)], 0.1)
    batch = model.processor(samples)
    model.train()
    for _ in range(steps):
        loss = model(batch).loss
        opt.zero_grad()
        loss.backward()
        # The decoder clipped apart from the LM (as decoder_grad_clip does in training): under
        # one norm its large gradient shrinks the LM's step, and whether the LM then memorises
        # every answer by the last step depends on the random stream.
        torch.nn.utils.clip_grad_norm_([p for p in params if id(p) in decoder], 0.5)
        torch.nn.utils.clip_grad_norm_([p for p in params if id(p) not in decoder], 0.5)
        opt.step()
        sched.step()
    model.eval()


def generate_and_score(model, samples: list[Sample], iou_types, keypoint_names=None) -> dict[str, float]:
    prompts = [Sample(images=s.images, conversation=s.conversation[:1]) for s in samples]
    results = model.generate(model.processor(prompts, add_generation_prompt=True), max_new_tokens=400)
    preds, gts = [], []
    for s, r in zip(samples, results):
        assert r.text == s.conversation[1].content  # the LM learned its answers (links included)
        want = model.processor([s])
        names = want.link_names
        fams = [model.processor.family_names[f] for f in want.link_family.tolist()]
        preds.append(r.items)
        gts.append(ground_truth_from_targets(names, fams, s.targets))
    return coco_evaluate(
        preds, gts, [s.images[0].size for s in samples], iou_types=iou_types, keypoint_names=keypoint_names
    )


@pytest.mark.slow
def test_detection_and_instance_masks_through_links():
    world = WorldConfig(min_shapes=2, max_shapes=3, p_person=0, p_dog=0, p_word=0, textures=False)
    samples = world_samples("inst_seg", 4, world)
    model = tiny_model("seg", "grounding", {**TRUNK, "mask_points": 512, "dn_number": 20})
    start = time.time()
    overfit(model, samples, steps=260, lr=2e-3)
    r = generate_and_score(model, samples, ("bbox", "segm"))
    assert r["bbox/AP50"] >= 0.8 and r["bbox/AP"] >= 0.5 and r["segm/AP"] >= 0.4, (r, time.time() - start)


@pytest.mark.slow
def test_pose_keypoints_through_links():
    """Persons with the 17 COCO keypoints (18 [POSE] links per answer), trained as the paper's
    stages 1 and 2 with the pose decoder clipped apart: the procedure of
    benchmarks/pose_clipping.py, which also shows that one global clipping norm fails here."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from pose_clipping import run

    r = run(seed=1, decoder_grad_clip=0.1)
    assert r["exact_answers"] >= 3, r  # the long person + dog answer may slip by a word
    # Every answer's links reach the pose decoder and come back as figures with all 17 keypoints
    # by name, and some of them are found. How well this four-scene overfit scores depends on the
    # float path of the CPU's kernels: world seed 1 reached box AP50 100 on two of this project's
    # machines and 6-28 on the AVX-512 one of 2026-12-02 under five settings (seed 0: 9-100 under three), so
    # the quality of pose through the links is checked on the shipped model instead
    # (tests/test_default_model.py, keypoint AP >= 45 on 24 world test items).
    assert r["answers_with_named_keypoints"] == 4, r
    assert r["bbox/AP50"] > 0.0 and r["keypoints/AP"] > 0.0, r
