"""Visualisation: boxes, masks, keypoint skeletons, labels and region prompts land where they should."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from visionllm2.data.sample import RegionPrompt
from visionllm2.data.synthetic.tasks import build_task
from visionllm2.data.synthetic.world import PERSON_SKELETON, WorldConfig, generate_scene, render
from visionllm2.inference.results import Detection, Result, SemanticMap
from visionllm2.ops.masks import mask_to_rle
from visionllm2.visualize import draw_annotations, draw_region, draw_result, draw_sample, label_colour


def _grey(w=64, h=48):
    return Image.new("RGB", (w, h), (128, 128, 128))


def _changed(a: Image.Image, b: Image.Image) -> np.ndarray:
    return (np.asarray(a) != np.asarray(b)).any(-1)


def test_boxes_masks_and_labels_are_drawn_in_place():
    img = _grey()
    mask = np.zeros((48, 64), bool)
    mask[20:30, 30:40] = True
    out = draw_annotations(img, boxes=[[10, 10, 20, 20]], labels=["circle"], masks=mask[None])
    assert out.size == img.size and np.asarray(img).max() == 128  # input untouched
    diff = _changed(img, out)
    assert diff[10, 10:20].all() and diff[19, 10:20].all()  # box outline
    assert not diff[14, 14]  # box interior stays
    assert diff[mask].all()  # mask tinted
    assert diff[:10].any()  # label above the box
    assert not diff[40:, :].any()
    assert label_colour("circle") == label_colour("circle") != label_colour("square")


def test_keypoint_skeleton_is_drawn_only_for_labelled_points():
    img = _grey(100, 100)
    kp = np.zeros((1, 17, 3), np.float32)
    kp[0, 5] = (30, 30, 2)  # left_shoulder
    kp[0, 7] = (30, 70, 2)  # left_elbow (bone 5-7)
    kp[0, 9] = (80, 80, 0)  # unlabelled wrist: no point, no bone
    out = draw_annotations(img, keypoints=kp, skeleton=PERSON_SKELETON)
    diff = _changed(img, out)
    assert diff[50, 30] and diff[30, 30] and diff[70, 30]
    assert not diff[75:85, 75:85].any()


def test_mismatched_inputs_raise():
    with pytest.raises(ValueError, match="one per object"):
        draw_annotations(_grey(), boxes=[[0, 0, 5, 5]], labels=["a", "b"])
    with pytest.raises(ValueError, match="image is"):
        draw_annotations(_grey(), masks=np.zeros((1, 5, 5), bool))


@pytest.mark.parametrize(
    "region",
    [
        RegionPrompt("point", (20.5, 20.5)),
        RegionPrompt("box", (10, 10, 30, 30)),
        RegionPrompt("scribble", np.array([[10, 10], [30, 20]], np.float32)),
        RegionPrompt("mask", np.pad(np.ones((4, 4), bool), ((18, 26), (18, 42)))),
    ],
)
def test_region_prompts_are_drawn(region):
    img = _grey()
    diff = _changed(img, draw_region(img, region))
    ys, xs = np.nonzero(diff)
    assert len(xs) and 8 <= xs.mean() <= 32 and 8 <= ys.mean() <= 32


def test_draw_sample_draws_every_target():
    scene = generate_scene(3, WorldConfig(p_person=1.0))
    r = render(scene)
    for task in ("det", "inst_seg", "pose", "ref_seg", "region_recog", "sem_seg"):
        s = build_task(task, scene, np.random.default_rng(0), rendered=r)
        out = draw_sample(s)
        assert out.size == r.image.size
        has_target = any(t is not None and t.boxes is not None and len(t.boxes) for t in s.targets)
        if has_target or s.regions:
            assert _changed(r.image, out).any(), task
    gen = build_task("gen", scene, np.random.default_rng(0), rendered=r)
    assert np.array_equal(np.asarray(draw_sample(gen)), np.asarray(r.image))


def test_draw_result_decodes_rle_and_named_keypoints():
    img = _grey(64, 64)
    mask = np.zeros((64, 64), bool)
    mask[40:50, 40:50] = True
    det = Detection(
        label="person",
        score=0.9,
        box=[5.0, 5.0, 30.0, 30.0],
        mask=mask_to_rle(mask),
        keypoints={"left_shoulder": (10.0, 10.0, 0.9), "left_elbow": (10.0, 25.0, 0.8)},
    )
    sem = SemanticMap(
        labels=["sky"], classes=np.where(np.arange(64)[:, None] < 3, 0, -1) * np.ones((1, 64), int)
    )
    out = draw_result(img, Result(text="person[DET]", items=[det, sem]))
    diff = _changed(img, out)
    assert diff[mask].all() and diff[17, 10] and diff[:3].all()
