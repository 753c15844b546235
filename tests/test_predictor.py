"""Python API: VisionLLM2.chat on images/paths/arrays, regions, history, batches, feature cache."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from surface_models import det_model, shapes_image
from visionllm2 import Detection, VisionLLM2
from visionllm2.inference.predictor import ChatResult, load_image, place_regions

REGION = "<region>"


@pytest.fixture(scope="module")
def model():
    return det_model(seed=0)


@pytest.fixture()
def predictor(model):
    return VisionLLM2(model=model)


@pytest.fixture(scope="module")
def image():
    return shapes_image()


def _boxes(result: ChatResult) -> np.ndarray:
    return np.array([d.box for d in result.detections])


def test_chat_returns_typed_detections_json_and_drawing(predictor, image):
    r = predictor.chat(image, "Detect the circles and squares.", max_new_tokens=3)
    assert r.text == "[DET]" * 3 and r.plain_text == ""
    assert [link["family"] for link in r.links] == ["det"] * 3
    assert len(r.detections) == 3 and all(isinstance(d, Detection) for d in r.detections)
    boxes = _boxes(r)
    assert (
        (boxes >= 0).all()
        and (boxes[:, [0, 2]] <= image.width).all()
        and (boxes[:, [1, 3]] <= image.height).all()
    )
    assert r.finish_reason == "length" and r.completion_tokens == 3 and r.prompt_tokens > 16
    assert [t.role for t in r.conversation] == ["user", "assistant"]
    assert r.conversation[0].content.startswith("<image>\n")

    drawn = r.draw()
    assert drawn.size == image.size
    assert np.abs(np.asarray(drawn, dtype=int) - np.asarray(image, dtype=int)).sum() > 0  # boxes drawn

    data = json.loads(r.to_json())
    assert data["text"] == r.text and data["finish_reason"] == "length"
    assert [d["box"] for d in data["detections"]] == [d.box for d in r.detections]
    assert data["usage"] == {"prompt_tokens": r.prompt_tokens, "completion_tokens": 3}


def test_image_sources_agree_and_bad_images_are_clear(predictor, image, tmp_path):
    path = tmp_path / "shapes.png"
    image.save(path)
    arr = np.asarray(image)
    sources = [image, path, str(path), arr, arr.astype(np.float32) / 255.0, path.read_bytes()]
    results = [predictor.chat(src, "Detect.", max_new_tokens=2) for src in sources]
    for r in results[1:]:
        assert r.text == results[0].text
        np.testing.assert_allclose(_boxes(r), _boxes(results[0]), atol=1e-4)

    with pytest.raises(FileNotFoundError, match="does not exist"):
        predictor.chat(tmp_path / "missing.png", "Detect.")
    (tmp_path / "bad.png").write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match="not a readable image"):
        load_image(tmp_path / "bad.png")
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        load_image(np.zeros((4, 4, 2), np.uint8))
    with pytest.raises(TypeError, match="cannot read an image"):
        load_image(42)
    with pytest.raises(ValueError, match="non-empty"):
        predictor.chat(image, "  ")


def test_region_rewrite_rule():
    assert place_regions("What is this object?", 1) == f"What is {REGION}?"
    assert place_regions("Describe the region briefly.", 1) == f"Describe {REGION} briefly."
    assert place_regions("Detect the objects.", 1) == f"Regarding {REGION}: Detect the objects."
    assert place_regions("Compare them.", 2) == f"Regarding {REGION} and {REGION}: Compare them."
    assert place_regions(f"What is {REGION}?", 1) == f"What is {REGION}?"  # explicit token wins
    assert place_regions("What is this?", 0) == "What is this?"


def test_region_prompts_reach_the_region_encoder(predictor, image):
    seen = []
    hook = predictor.model.region_encoder.register_forward_hook(
        lambda m, args, out: seen.append(args[1].clone())
    )
    try:
        r = predictor.chat(image, "What is this object?", point=(10, 60), max_new_tokens=1)
        predictor.chat(image, "Name it.", box=(48, 0, 96, 36), max_new_tokens=1)
        predictor.chat(image, "Name it.", scribble=[(5, 5), (40, 5)], max_new_tokens=1)
        predictor.chat(image, "Name it.", mask=np.asarray(image)[..., 0] > 200, max_new_tokens=1)
    finally:
        hook.remove()
    assert r.conversation[0].content == f"<image>\nWhat is {REGION}?" and r.regions[0].kind == "point"
    assert len(seen) == 4
    s = seen[0].shape[-1]  # region masks come at the vision input size
    point_mask = seen[0][0]
    ys, xs = torch.nonzero(point_mask, as_tuple=True)
    # The point (10, 60) of the 96x72 image lands near (10/96, 60/72) of the mask.
    assert abs(xs.float().mean() / s - 10 / 96) < 0.08 and abs(ys.float().mean() / s - 60 / 72) < 0.08
    box_mask = seen[1][0]
    assert box_mask[: s // 3, s // 2 + 1 :].all() and not box_mask[s // 2 + 2 :, :].any()

    with pytest.raises(ValueError, match="box must be"):
        predictor.chat(image, "What is it?", box=(10, 10, 5, 20))
    with pytest.raises(ValueError, match="needs an image"):
        predictor.chat(None, "What is it?", point=(1, 1))
    with pytest.raises(ValueError, match="mask prompt is"):
        predictor.chat(image, "What is it?", mask=np.ones((5, 5), bool))
    with pytest.raises(ValueError, match="1 <region> token"):
        predictor.chat(image, f"Is {REGION} red?")


def test_history_replays_without_links_and_reuses_image_features(model, image):
    predictor = VisionLLM2(model=model)
    calls = []
    hook = model.vision.register_forward_hook(lambda *a: calls.append(1))
    try:
        r1 = predictor.chat(image, "Detect the circles.", max_new_tokens=2)
        r2 = predictor.chat(None, "And the squares?", history=r1, max_new_tokens=2)
        r3 = predictor.chat(image.copy(), "Once more?", history=r2, max_new_tokens=2)  # same pixels: fine
    finally:
        hook.remove()
    assert len(calls) == 1  # one vision pass for three turns
    assert (predictor.cache_hits, predictor.cache_misses) == (2, 1)
    assert [t.role for t in r3.conversation] == ["user", "assistant"] * 3
    assert r2.conversation[1].content == "[DET][DET]"  # raw history keeps what the model said
    # ...but the replayed history has no routing tokens, so earlier links are not decoded again:
    sample, *_ = predictor.build_sample(None, "next?", history=r2)
    assert all("[DET]" not in t.content for t in sample.conversation)
    assert len(r2.detections) == 2 and r2.image is r1.image

    uncached = VisionLLM2(model=model, feature_cache_size=0).chat(
        None, "And the squares?", history=r1, max_new_tokens=2
    )
    assert uncached.text == r2.text
    np.testing.assert_allclose(_boxes(uncached), _boxes(r2), atol=1e-5)

    with pytest.raises(ValueError, match="one image"):
        predictor.chat(shapes_image(seed=3), "Other picture?", history=r1)


def test_batch_matches_single_calls(predictor, image):
    other = shapes_image(80, 80, seed=1)
    batch = predictor.chat([image, other], ["Detect the circles.", "Find squares please."], max_new_tokens=2)
    singles = [
        predictor.chat(image, "Detect the circles.", max_new_tokens=2),
        predictor.chat(other, "Find squares please.", max_new_tokens=2),
    ]
    for b, s in zip(batch, singles):
        assert b.text == s.text and b.image.size == s.image.size
        np.testing.assert_allclose(_boxes(b), _boxes(s), atol=1e-4)

    shared = predictor.chat(
        image, ["Detect.", "What is this object?"], point=[None, (20, 30)], max_new_tokens=1
    )
    assert shared[0].regions == [] and shared[1].regions[0].data == (20.0, 30.0)
    with pytest.raises(ValueError, match="2 entries but the batch has 3"):
        predictor.chat([image] * 3, ["a", "b"])
    with pytest.raises(ValueError, match="one entry"):
        predictor.chat([image, image], "Detect.", point=(1, 2))


def test_stop_strings_finish_reason_and_options(predictor, image):
    r = predictor.chat(image, "Detect.", max_new_tokens=5, stop_strings=("[DET]",))
    assert r.finish_reason == "stop" and r.completion_tokens == 1 and r.text == ""
    with pytest.raises(ValueError, match="unknown generation option"):
        predictor.chat(image, "Detect.", max_tokens=5)


def test_from_pretrained_folder_and_unknown_name(tmp_path, image):
    det_model(seed=2).save_pretrained(tmp_path / "m")
    m = VisionLLM2.from_pretrained(tmp_path / "m", device="cpu")
    assert m.device.type == "cpu" and "parameters" in repr(m)
    assert len(m.chat(image, "Detect.", max_new_tokens=1).detections) == 1
    with pytest.raises(FileNotFoundError, match="unknown model 'no-such-model'"):
        VisionLLM2.from_pretrained("no-such-model")
    with pytest.raises(FileNotFoundError, match="not a visionllm2 model folder"):
        VisionLLM2.from_pretrained(tmp_path)


def test_generated_images_are_drawn_and_serialised(image):
    from visionllm2.inference.results import GeneratedImage

    gen = Image.new("RGB", (40, 30), (0, 200, 0))
    r = ChatResult(text="[GEN]", items=[GeneratedImage(image=gen, family="gen")], image=image)
    drawn = r.draw()
    assert drawn.size == (image.width + 40, image.height)
    assert drawn.getpixel((image.width + 5, 5)) == (0, 200, 0)
    only = ChatResult(text="[GEN]", items=[GeneratedImage(image=gen, family="gen")])
    assert only.draw().size == (40, 30)
    data = only.to_dict()
    assert data["images"][0]["size"] == [40, 30]
    import base64
    import io

    decoded = Image.open(io.BytesIO(base64.b64decode(data["images"][0]["png_base64"])))
    assert decoded.size == (40, 30)
    with pytest.raises(ValueError, match="nothing to draw"):
        ChatResult(text="hi").draw()


def test_semantic_maps_serialise_as_one_rle_per_present_label(image):
    from visionllm2.inference.results import SemanticMap
    from visionllm2.ops.masks import rle_to_mask

    classes = np.full((72, 96), -1, np.int32)
    classes[10:30, 5:50] = 0
    classes[40:60, 60:90] = 2
    r = ChatResult(
        text="circle[SEG]",
        items=[SemanticMap(labels=["circle", "square", "star"], classes=classes)],
        image=image,
    )
    (sm,) = r.to_dict()["semantic_maps"]
    assert sm["labels"] == ["circle", "square", "star"] and sm["size"] == [96, 72]
    assert [m["label"] for m in sm["masks"]] == ["circle", "star"]  # absent labels are skipped
    np.testing.assert_array_equal(rle_to_mask(sm["masks"][1]["mask"]), classes == 2)
    drawn = np.asarray(r.draw(), dtype=int)
    assert np.abs(drawn - np.asarray(image, dtype=int))[40:60, 60:90].sum() > 0  # the map is painted
