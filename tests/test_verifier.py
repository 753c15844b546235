"""World verifier: recovers kind, colour and position of rendered shapes from pixels alone."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageFilter

from visionllm2.data.synthetic.verifier import (
    BACKGROUND,
    DARK,
    FoundShape,
    attribute_recall,
    classify_pixels,
    edit_change_found,
    expected_shapes,
    find_shapes,
    match_shapes,
    shape_entry,
)
from visionllm2.data.synthetic.world import (
    COLOURS,
    WorldConfig,
    edit_scene,
    generate_scene,
    render,
    shape_mask,
)


def _accuracy(scenes, transform=lambda im: im):
    matched = total = 0
    for s in scenes:
        res = match_shapes(
            find_shapes(transform(render(s).image)), expected_shapes(s), width=s.width, height=s.height
        )
        matched += res["matched"]
        total += len(s.shapes) + len(res["extra"])
    return matched / total, total


def test_recovers_rendered_scenes_with_at_least_98_percent_accuracy():
    # Default scenes: up to 5 shapes with occlusion, textures, figures, words, noisy backgrounds.
    scenes = [generate_scene(10_000 + i) for i in range(60)]
    acc, total = _accuracy(scenes)
    assert total >= 150
    assert acc >= 0.98, acc


def test_recovers_crowded_scenes_and_other_sizes():
    crowded = [generate_scene(20_000 + i, WorldConfig(min_shapes=5, max_shapes=6)) for i in range(10)]
    acc, _ = _accuracy(crowded)
    assert acc >= 0.98, acc
    big = [generate_scene(30_000 + i, WorldConfig(width=192, height=160)) for i in range(8)]
    acc, _ = _accuracy(big)
    assert acc >= 0.98, acc


def test_robust_to_blur_and_noise():
    scenes = [generate_scene(40_000 + i) for i in range(20)]
    acc, _ = _accuracy(scenes, lambda im: im.filter(ImageFilter.GaussianBlur(1)))
    assert acc >= 0.9, acc
    rng = np.random.default_rng(0)

    def noisy(im: Image.Image) -> Image.Image:
        a = np.asarray(im).astype(np.float32) + rng.normal(0, 10, (im.height, im.width, 3))
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))

    acc, _ = _accuracy(scenes, noisy)
    assert acc >= 0.95, acc


def test_scores_edits():
    # An editing model can be scored by comparing the verifier's reading with the target scene.
    for i in range(6):
        scene = generate_scene(50_000 + i)
        edit = edit_scene(scene, "recolour", np.random.default_rng(i))
        assert edit is not None
        target = render(edit.target).image
        ok = match_shapes(find_shapes(target), expected_shapes(edit.target), width=128, height=128)
        assert ok["accuracy"] == 1.0
        # The unedited source does not pass as the target.
        wrong = match_shapes(
            find_shapes(render(scene).image), expected_shapes(edit.target), width=128, height=128
        )
        assert wrong["accuracy"] < 1.0 and wrong["missed"]


def test_pixel_classes_separate_shapes_from_everything_else():
    for i in range(10):
        scene = generate_scene(60_000 + i, WorldConfig(p_person=0.8, p_dog=0.8, p_word=1.0))
        r = render(scene)
        labels = classify_pixels(r.image)
        shapes = np.zeros(labels.shape, bool)
        for s in scene.shapes:
            shapes |= shape_mask(s, scene.width, scene.height)
        assert (labels[~shapes] < 0).all(), "no background/figure/word pixel may look like a shape colour"
        others = r.semantic > 0
        others &= ~shapes
        assert (labels[others] == DARK).all()
        names = list(COLOURS)
        for o in r.objects:
            if o.attributes["source"] == "shape":
                assert (labels[o.mask] == names.index(o.attributes["colour"])).all()
    assert BACKGROUND != DARK


def test_match_counts_missed_and_extra():
    exp = [{"kind": "circle", "colour": "red", "centre": (20.0, 20.0), "position": "top left"}]
    hit = FoundShape("circle", "red", (10, 10, 30, 30), "top left", 1.0, 300)
    wrong_colour = FoundShape("circle", "blue", (10, 10, 30, 30), "top left", 1.0, 300)
    far = FoundShape("circle", "red", (90, 90, 110, 110), "bottom right", 1.0, 300)
    assert match_shapes([hit], exp, width=128, height=128)["accuracy"] == 1.0
    res = match_shapes([wrong_colour, hit], exp, width=128, height=128)
    assert res["matched"] == 1 and len(res["extra"]) == 1 and res["accuracy"] == 0.5
    res = match_shapes([far], exp, width=128, height=128)
    assert res["matched"] == 0 and res["missed"] == exp
    assert match_shapes([far], exp, width=128, height=128, check_position=False)["matched"] == 1
    assert match_shapes([], [], width=128, height=128)["accuracy"] == 1.0


def test_attribute_recall_gives_partial_credit_one_to_one():
    exp = [
        {"kind": "circle", "colour": "red", "position": "top left"},
        {"kind": "square", "colour": "red", "position": "bottom right"},
        {"kind": "star", "colour": "blue", "position": "centre"},
    ]
    # One red square in the wrong cell: a colour for one of the two reds, the right kind for the
    # square, no colour in its cell; blue is missing.
    red_square = {"kind": "square", "colour": "red", "position": "top left"}
    got = attribute_recall([red_square], exp)
    assert got == pytest.approx({"colour": 1 / 3, "colour_kind": 1 / 3, "colour_cell": 1 / 3})
    # The same found shape cannot stand for both reds; a second one can.
    red_circle = {"kind": "circle", "colour": "red", "position": "bottom right"}
    got = attribute_recall([red_square, red_circle], exp)
    assert got == pytest.approx({"colour": 2 / 3, "colour_kind": 2 / 3, "colour_cell": 2 / 3})
    assert attribute_recall([], exp) == {"colour": 0.0, "colour_kind": 0.0, "colour_cell": 0.0}
    assert attribute_recall([red_square], []) == {"colour": 1.0, "colour_kind": 1.0, "colour_cell": 1.0}


def test_rejects_non_rgb_arrays():
    with pytest.raises(ValueError, match="RGB"):
        classify_pixels(np.zeros((8, 8), np.uint8))
    # Grey images and PIL modes other than RGB are fine.
    assert find_shapes(Image.new("L", (64, 64), 128)) == []


@pytest.mark.parametrize("op", ["recolour", "move", "add", "remove", "resize"])
def test_edit_change_is_found_in_the_target_and_not_in_the_source(op):
    checked = 0
    for i in range(12):
        scene = generate_scene(70_000 + i)
        edit = edit_scene(scene, op, np.random.default_rng(i))
        if edit is None:
            continue
        before = None if op == "add" else shape_entry(scene.shapes[edit.index], 128, 128)
        after = None if op == "remove" else shape_entry(edit.target.shapes[edit.index], 128, 128)

        def changed(image: Image.Image, before=before, after=after) -> bool:
            return edit_change_found(find_shapes(image), op, before, after, width=128, height=128)

        assert changed(render(edit.target).image), (op, i)
        assert not changed(render(scene).image), (op, i)  # returning the source changes nothing
        checked += 1
    assert checked >= 8
    with pytest.raises(ValueError, match="needs the shape's entry"):
        edit_change_found([], op, None, None, width=128, height=128)
    with pytest.raises(ValueError, match="unknown edit"):
        edit_change_found([], "rotate", before, after, width=128, height=128)
