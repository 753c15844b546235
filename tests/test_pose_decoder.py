"""Tests of the pose decoder: link grouping, losses, gradients, outputs by keypoint name, overfitting."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from perception_scenes import SKELETONS, overfit_decoder, pose_inputs, shapes_scene, to_pixels
from visionllm2.data.sample import LinkTarget
from visionllm2.decoders import Links, decoder_class
from visionllm2.decoders.pose import KeypointDecoderLayer, PoseDecoder, group_pose_links
from visionllm2.evaluation.detection import coco_evaluate, ground_truth_from_targets
from visionllm2.inference.results import Detection

TINY = {
    "link_dim": 32,
    "pixel_size": 128,
    "backbone": {"type": "cnn", "channels": [16, 32, 48, 64]},
    "hidden_dim": 64,
    "num_heads": 4,
    "ffn_dim": 128,
    "num_encoder_layers": 2,
    "num_decoder_layers": 2,
    "num_keypoint_layers": 2,
    "num_queries": 30,
    "category_names": ["square", "triangle"],
}


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def _batch() -> tuple[Links, torch.Tensor, list[LinkTarget | None]]:
    """Sample 0: a square (4 keypoints, one unlabelled) and two triangles (3 keypoints, another
    skeleton); sample 1: a square prompt with no instance."""
    torch.manual_seed(0)
    names = [
        "square",
        *SKELETONS["square"],
        "triangle",
        *SKELETONS["triangle"],
        "square",
        *SKELETONS["square"],
    ]
    sample = torch.tensor([0] * 9 + [1] * 5)
    links = Links(
        states=torch.randn(len(names), 4, 32, requires_grad=True),
        sample=sample,
        batch_index=sample.clone(),
        families=["pose"] * len(names),
        names=names,
        num_samples=2,
        image_sizes=torch.tensor([[200, 100], [64, 64]]),
    )
    square = LinkTarget(
        boxes=np.array([[20, 10, 60, 40]], np.float32),
        keypoints=np.array([[[20, 10, 2], [60, 10, 2], [60, 40, 1], [20, 40, 0]]], np.float32),
    )
    triangles = LinkTarget(
        boxes=np.array([[100, 50, 180, 90], [10, 50, 30, 70]], np.float32),
        keypoints=np.array(
            [[[140, 50, 2], [100, 90, 2], [180, 90, 2]], [[20, 50, 2], [10, 70, 2], [30, 70, 2]]], np.float32
        ),
    )
    empty = LinkTarget(boxes=np.zeros((0, 4), np.float32), keypoints=np.zeros((0, 4, 3), np.float32))
    targets = [square, None, None, None, None, triangles, None, None, None, empty, None, None, None, None]
    return links, torch.randn(2, 3, 128, 128), targets


def test_registered_and_config_is_json():
    assert decoder_class("pose") is PoseDecoder
    json.dumps(TINY)
    assert PoseDecoder(**TINY).families == ("pose",)
    assert PoseDecoder(**TINY).criterion.match_keypoints  # UniPose's matcher unless told otherwise
    assert not PoseDecoder(**TINY, match_keypoints=False).criterion.match_keypoints
    with pytest.raises(ValueError, match="mask_on"):
        PoseDecoder(**TINY, mask_on=True)
    with pytest.raises(ValueError, match="unknown MLP activation 'tanh'"):
        PoseDecoder(**TINY, keypoint_delta_activation="tanh")


def test_grouping_rule():
    names = ["square", "top_left", "top_right", "Triangle", "apex"]
    # Inference, no category list: the first link is the category, the rest its keypoints.
    assert group_pose_links(names) == [(0, [1, 2, 3, 4])]
    # With the category list (case-insensitive), "Triangle" starts a new group.
    assert group_pose_links(names, category_names=["square", "triangle"]) == [(0, [1, 2]), (3, [4])]
    # Training: targets decide, whatever the names say.
    t2 = LinkTarget(boxes=np.zeros((0, 4), np.float32), keypoints=np.zeros((0, 2, 3), np.float32))
    t1 = LinkTarget(boxes=np.zeros((0, 4), np.float32), keypoints=np.zeros((0, 1, 3), np.float32))
    assert group_pose_links(names, [t2, None, None, t1, None]) == [(0, [1, 2]), (3, [4])]
    with pytest.raises(ValueError, match="followed by 2 keypoint links"):
        group_pose_links(names, [t1, None, None, t1, None])
    with pytest.raises(ValueError, match="starts with a category"):
        group_pose_links(names, [None, None, None, t1, None])
    assert group_pose_links([]) == []


@pytest.mark.parametrize("grid", [0, 3])
def test_training_losses_are_finite_and_reach_every_parameter_and_the_links(grid):
    links, pixels, targets = _batch()
    dec = PoseDecoder(**TINY, keypoint_sample_grid=grid).train()
    assert (dec.kp_layers[0].point_proj is not None) == (grid > 0)
    losses = dec(links, pixels, targets)
    for k in ("class", "bbox", "giou", "keypoints", "oks", "visibility"):
        assert f"loss_{k}" in losses
    for k in ("keypoints_kp0", "keypoints_kp1", "class_0", "bbox_enc"):
        assert f"loss_{k}" in losses
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    missing = [n for n, p in dec.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient reaches {missing}"
    zero = [n for n, p in dec.named_parameters() if not p.grad.abs().sum() > 0]
    zero_init_heads = (
        "box_head.layers.0",
        "box_head.layers.1",
        "enc_box_head.layers.0",
        "enc_box_head.layers.1",
    )
    assert all(n.startswith((*zero_init_heads, "kp_delta_head.layers.0")) for n in zero), zero
    assert links.states.grad is not None and links.states.grad.abs().sum() > 0


@pytest.mark.parametrize("activation", ["relu", "gelu"])
def test_a_delta_head_with_every_unit_below_zero_passes_a_gradient_only_with_gelu(activation):
    """The shipped model's ReLU delta head died (every hidden unit off on the scored keypoints),
    which cut the keypoint layers off from the loss; GELU keeps a path back to them."""
    links, pixels, targets = _batch()
    dec = PoseDecoder(**TINY, keypoint_delta_activation=activation).train()
    head = dec.kp_delta_head
    with torch.no_grad():
        head.layers[0].bias.fill_(-5.0)  # every hidden unit below zero on layer-normed inputs
        head.layers[-1].weight.normal_(std=0.1)
    losses = dec(links, pixels, targets)
    # The position losses (keypoint L1 and OKS of every layer); visibility reaches the layers anyway.
    sum(v for k, v in losses.items() if k.startswith(("loss_keypoints", "loss_oks"))).backward()
    grad = sum(float(p.grad.abs().sum()) for p in dec.kp_layers.parameters() if p.grad is not None)
    if activation == "relu":
        assert grad == 0.0
    else:
        assert grad > 0.0


def test_inference_outputs_and_keypoints_by_name():
    links, pixels, _ = _batch()
    dec = PoseDecoder(**TINY, score_threshold=0.0, max_detections=5).eval()
    with torch.no_grad():
        outs = dec(links, pixels)
    assert outs[0]["groups"] == [(0, [1, 2, 3, 4]), (5, [6, 7, 8])] and outs[1]["groups"] == [
        (0, [1, 2, 3, 4])
    ]
    assert [k.shape for k in outs[0]["keypoints"]] == [(30, 4, 2), (30, 3, 2)]
    assert outs[0]["logits"].shape == (30, 9)
    assert torch.isinf(outs[0]["logits"][:, 1]).all()  # keypoint-name columns are never classes
    items = dec.postprocess(outs[0], names=links.names[:9], families=["pose"] * 9, image_size=(200, 100))
    assert len(items) == 5
    for d in items:
        assert isinstance(d, Detection) and d.label in ("square", "triangle")
        assert set(d.keypoints) == set(SKELETONS[d.label])
        for x, y, score in d.keypoints.values():
            assert 0 <= x <= 200 and 0 <= y <= 100 and 0 <= score <= 1
        json.dumps(d.to_dict())
    with pytest.raises(ValueError, match="pose links"):
        dec.postprocess(outs[0], names=["square"], families=["pose"], image_size=(200, 100))


@pytest.mark.slow
def test_overfits_a_few_shape_scenes_to_high_keypoint_ap():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    classes = ("square", "triangle")
    scenes = [shapes_scene(rng, classes) for _ in range(4)]
    vocab = sorted({n for c in classes for n in (c, *SKELETONS[c])})
    links, targets = pose_inputs(scenes, classes, {n: torch.randn(4, 32) for n in vocab})
    dec = PoseDecoder(**TINY, score_threshold=0.0)
    pixels = to_pixels([im for im, _ in scenes], dec.pixel_size, dec.pixel_mean, dec.pixel_std)
    start = time.time()
    outs = overfit_decoder(dec, links, pixels, targets, lr=1e-3)
    preds, gts = [], []
    for b, (im, _) in enumerate(scenes):
        ids = links.of_sample(b)
        names = [links.names[i] for i in ids]
        preds.append(dec.postprocess(outs[b], names=names, families=["pose"] * len(ids), image_size=im.size))
        gts.append(ground_truth_from_targets(names, ["pose"] * len(ids), [targets[i] for i in ids]))
    r = coco_evaluate(preds, gts, [im.size for im, _ in scenes], iou_types=("bbox", "keypoints"))
    assert r["bbox/AP50"] >= 0.9 and r["keypoints/AP"] >= 0.7, (r, time.time() - start)


def test_unannotated_samples_add_no_loss():
    links, pixels, targets = _batch()
    dec = PoseDecoder(**TINY).train()
    losses = dec(links, pixels, [None] * len(targets))
    assert losses and all(float(v) == 0.0 for v in losses.values())
    # Sample 1 unannotated, sample 0 annotated: trains on sample 0 only, no grouping error.
    partial = targets[:9] + [None] * 5
    losses = dec(links, pixels, partial)
    assert float(losses["loss_keypoints"]) > 0


def test_keypoint_layer_samples_a_grid_around_each_keypoint():
    # One level, 8x8 cells, a single lit cell at row 2, column 5; a keypoint at that cell's centre
    # must see it in the middle of its 3x3 grid, and each neighbour one cell away in its place.
    layer = KeypointDecoderLayer(dim=4, heads=1, ffn_dim=8, dropout=0.0, sample_grid=3)
    level = torch.zeros(1, 4, 8, 8)
    level[0, 0, 2, 5] = 1.0
    level[0, 1, 2, 6] = 1.0  # the cell to its right
    level[0, 2, 1, 5] = 1.0  # the cell above
    seen = {}
    layer.point_proj.register_forward_hook(lambda mod, inp, out: seen.update(local=inp[0]))
    xy = torch.tensor([(5 + 0.5) / 8, (2 + 0.5) / 8]).view(1, 1, 1, 1, 2)
    kps = torch.zeros(1, 1, 1, 1, 4)
    # queries and their positions, the instance query, no padding, memory and its positions
    inputs = (kps, kps, torch.zeros(1, 1, 4), torch.zeros(1, 1, 1, dtype=torch.bool), torch.zeros(1, 64, 4))
    layer(*inputs, torch.zeros(1, 64, 4), xy, [level])
    grid = seen["local"].view(3, 3, 4)  # (row, column, channel)
    assert grid[1, 1, 0] == 1 and grid[1, 2, 1] == 1 and grid[0, 1, 2] == 1
    assert grid.sum() == 3
    with pytest.raises(ValueError, match="xy and the memory levels"):
        layer(*inputs, torch.zeros(1, 64, 4))
