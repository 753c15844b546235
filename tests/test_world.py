"""Synthetic world: determinism by seed, exact and consistent ground truth, figures, edits."""

from __future__ import annotations

import numpy as np
import pytest

from visionllm2.data.synthetic.world import (
    CATEGORIES,
    COLOURS,
    DOG_KEYPOINTS,
    KINDS,
    PERSON_KEYPOINTS,
    WorldConfig,
    caption,
    edit_scene,
    generate_scene,
    grid_position,
    heldout_pairs,
    render,
    shape_mask,
    shape_phrase,
    shape_template,
    validate_scene,
)

CONFIG = WorldConfig()
FIG_CONFIG = WorldConfig(p_person=1.0, p_dog=1.0, p_word=1.0)


@pytest.fixture(scope="module")
def scenes():
    return [(s, render(s)) for s in (generate_scene(i, CONFIG) for i in range(24))]


@pytest.fixture(scope="module")
def figure_scenes():
    return [(s, render(s)) for s in (generate_scene(100 + i, FIG_CONFIG) for i in range(12))]


def test_same_seed_same_scene_and_pixels():
    a, b = render(generate_scene(7)), render(generate_scene(7))
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    assert np.array_equal(a.semantic, b.semantic)
    assert [o.label for o in a.objects] == [o.label for o in b.objects]
    assert all(np.array_equal(x.box, y.box) for x, y in zip(a.objects, b.objects, strict=True))
    c = render(generate_scene(8))
    assert not np.array_equal(np.asarray(a.image), np.asarray(c.image))


def test_world_has_the_promised_variety():
    assert len(KINDS) >= 6 and len(COLOURS) >= 8
    seen_kinds, seen_colours, patterns, n_shapes = set(), set(), set(), set()
    for i in range(60):
        s = generate_scene(i)
        seen_kinds |= {x.kind for x in s.shapes}
        seen_colours |= {x.colour for x in s.shapes}
        patterns.add(s.background.pattern)
        n_shapes.add(len(s.shapes))
    assert seen_kinds == set(KINDS) and seen_colours == set(COLOURS)
    assert len(patterns) >= 4 and len(n_shapes) >= 4


def test_templates_fill_their_box():
    for kind in KINDS:
        for size in (10, 15, 23, 40):
            t = shape_template(kind, size)
            assert t.shape == (size, size)
            assert t[0].any() and t[-1].any() and t[:, 0].any() and t[:, -1].any(), (kind, size)
    # Distinct kinds give distinct pixel sets, even at the smallest size.
    small = {k: shape_template(k, 15).tobytes() for k in KINDS}
    assert len(set(small.values())) == len(KINDS)


def test_annotations_are_exact_and_consistent(scenes):
    for scene, r in scenes:
        assert validate_scene(scene, CONFIG) == []
        H, W = r.semantic.shape
        img = np.asarray(r.image)
        union = np.zeros((H, W), bool)
        for o in r.objects:
            assert o.mask.shape == (H, W) and o.mask.any()
            x0, y0, x1, y1 = o.box.astype(int)
            ys, xs = np.nonzero(o.mask)
            # Mask inside its box, and the box tight around the mask.
            assert xs.min() == x0 and xs.max() == x1 - 1 and ys.min() == y0 and ys.max() == y1 - 1
            assert not (o.mask & union).any(), "visible masks must not overlap"
            union |= o.mask
            assert (r.semantic[o.mask] == CATEGORIES.index(o.label) + 1).all()
        assert np.array_equal(union, r.semantic > 0)
        for o in r.objects:
            if o.attributes["source"] != "shape":
                continue
            shape = scene.shapes[o.attributes["index"]]
            amodal = shape_mask(shape, W, H)
            assert not (o.mask & ~amodal).any()
            assert o.attributes["visible_fraction"] >= 1 - CONFIG.max_occlusion
            assert o.attributes["position"] == grid_position(*shape.centre, W, H)
            # Painted pixels carry the shape's colour (or its darker texture tone).
            base = np.asarray(shape.colour_rgb, np.float32)
            px = img[o.mask].astype(np.float32)
            ok = (np.abs(px - base).max(1) <= 1) | (np.abs(px - base * 0.6).max(1) <= 1)
            assert ok.all()


def test_keypoints_lie_on_the_figure(figure_scenes):
    n_people = n_dogs = hidden = 0
    for _, r in figure_scenes:
        for o in r.objects:
            if o.attributes["source"] != "figure":
                continue
            names = PERSON_KEYPOINTS if o.label == "person" else DOG_KEYPOINTS
            assert o.keypoints.shape == (len(names), 3) == (17, 3)
            amodal = o.attributes["amodal_mask"]
            for x, y, v in o.keypoints:
                assert v in (1, 2)
                xi, yi = int(round(float(x))), int(round(float(y)))
                assert amodal[yi, xi], (o.label, x, y)
                if v == 2:
                    assert o.mask[yi, xi], "a visible keypoint must be on visible pixels"
            hidden += int((o.keypoints[:, 2] == 1).sum())
            n_people += o.label == "person"
            n_dogs += o.label == "dog"
    assert n_people >= 6 and n_dogs >= 4 and hidden > 0


def test_figure_visibility_flags():
    from visionllm2.data.synthetic.world import make_dog, make_person

    rng = np.random.default_rng(0)
    back = make_person(rng, cx=60, top=10, height=80, facing="back")
    hidden = {n for n, h in zip(PERSON_KEYPOINTS, back.hidden, strict=True) if h}
    assert hidden == {"nose", "left_eye", "right_eye"}
    front = make_person(rng, cx=60, top=10, height=80, facing="front")
    assert not any(front.hidden)
    # Facing the viewer, the person's left eye is on the image's right.
    assert (
        front.keypoints[PERSON_KEYPOINTS.index("left_eye"), 0]
        > front.keypoints[PERSON_KEYPOINTS.index("right_eye"), 0]
    )
    dog = make_dog(rng, cx=64, back_y=50, length=45, facing="right")
    flags = dict(zip(DOG_KEYPOINTS, dog.hidden, strict=True))
    assert flags["right_eye"] and not flags["left_eye"]  # walking right shows the left side
    with pytest.raises(ValueError, match="faces"):
        make_dog(rng, cx=64, back_y=50, length=45, facing="up")


def test_words_are_rendered_and_annotated(figure_scenes):
    words = [(s, o) for s, r in figure_scenes for o in r.objects if o.label == "text"]
    assert words
    for scene, o in words:
        assert o.attributes["text"] in {w.text for w in scene.words}
        assert 5 <= o.mask.sum() < 0.2 * o.mask.size


def test_compositional_split_pairs():
    held = heldout_pairs(3, 6)
    assert len(held) == 6
    assert len({k for k, _ in held}) == 6 and len({c for _, c in held}) == 6
    assert heldout_pairs(3, 6) == held and heldout_pairs(4, 6) != held
    for i in range(15):
        assert not generate_scene(i, exclude_pairs=held).pairs() & held
        pair = sorted(held)[i % 6]
        assert pair in generate_scene(i, require_pairs=(pair,)).pairs()
    with pytest.raises(ValueError, match="both required and excluded"):
        generate_scene(0, exclude_pairs=held, require_pairs=(sorted(held)[0],))


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="min_shapes"):
        WorldConfig(min_shapes=3, max_shapes=2)
    with pytest.raises(ValueError, match="too small"):
        WorldConfig(width=48, height=48, min_size=0.1)
    with pytest.raises(ValueError, match="max_occlusion"):
        WorldConfig(max_occlusion=1.5)


def test_caption_names_every_object(scenes):
    for scene, _ in scenes[:8]:
        text = caption(scene)
        assert text[0].isupper() and text.endswith(".")
        for s in scene.shapes:
            assert shape_phrase(s, 128) in text
        for f in scene.figures:
            assert f"a {f.category}" in text


@pytest.mark.parametrize("op", ["recolour", "move", "add", "remove", "resize"])
def test_edits_give_exact_valid_targets(op):
    done = 0
    for i in range(12):
        scene = generate_scene(200 + i)
        edit = edit_scene(scene, op, np.random.default_rng(i))
        if edit is None:
            continue
        done += 1
        assert validate_scene(edit.target, CONFIG) == []
        src, dst = render(scene), render(edit.target)
        a, b = np.asarray(src.image), np.asarray(dst.image)
        changed = (a != b).any(-1)
        assert changed.any()
        W, H = scene.width, scene.height
        if op == "add":
            new = edit.target.shapes[edit.index]
            assert len(edit.target.shapes) == len(scene.shapes) + 1
            assert grid_position(*new.centre, W, H) == edit.params["position"]
            region = shape_mask(new, W, H)
        else:
            old = scene.shapes[edit.index]
            region = shape_mask(old, W, H)
            if op == "remove":
                assert len(edit.target.shapes) == len(scene.shapes) - 1
            else:
                new = edit.target.shapes[edit.index]
                region = region | shape_mask(new, W, H)
                if op == "recolour":
                    assert new.colour == edit.params["colour"] != old.colour
                    assert (new.kind, new.box) == (old.kind, old.box)
                elif op == "move":
                    assert grid_position(*new.centre, W, H) == edit.params["position"]
                    assert grid_position(*old.centre, W, H) != edit.params["position"]
                    assert new.size == old.size
                else:
                    assert (new.size > old.size) == (edit.params["bigger"] == "bigger")
        # The background and every other object are untouched: pixels change only where the edit acts.
        assert not (changed & ~region).any()
    assert done >= 6


def test_edits_respect_excluded_pairs():
    held = heldout_pairs(0, 6)
    for i in range(10):
        scene = generate_scene(i, exclude_pairs=held)
        for op in ("recolour", "add"):
            edit = edit_scene(scene, op, np.random.default_rng(i), exclude_pairs=held)
            if edit is not None:
                assert not edit.target.pairs() & held
