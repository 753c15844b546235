"""Task builders and instruction templates: every task, link conventions, correct answers."""

from __future__ import annotations

import contextlib
import re
import sys
from pathlib import Path

import numpy as np
import pytest

from visionllm2.config import REGION_TOKEN, ROUTING_TOKENS, FamilyConfig
from visionllm2.data import builders as B
from visionllm2.data import templates as T
from visionllm2.data.processor import PixelSpec, VisionLLM2Processor, link_name
from visionllm2.data.sample import LinkTarget
from visionllm2.data.synthetic.tasks import (
    POPE_VOCABULARY,
    TASKS,
    Desc,
    SyntheticTaskDataset,
    TaskNotApplicable,
    _count_target,
    _Ctx,
    _resolve,
    build_task,
    referring_expressions,
    region_prompt,
    scene_things,
)
from visionllm2.data.synthetic.world import (
    CATEGORIES,
    FIGURES,
    Background,
    Scene,
    Shape,
    WorldConfig,
    generate_scene,
    heldout_pairs,
    render,
)

_LINK_RE = re.compile("|".join(re.escape(t) for t in ROUTING_TOKENS.values()))
CONFIG = WorldConfig(p_person=0.6, p_dog=0.5, p_word=0.6)


@pytest.fixture(scope="module")
def scenes():
    return [(s, render(s)) for s in (generate_scene(300 + i, CONFIG) for i in range(12))]


@pytest.fixture(scope="module")
def stats():
    return B.ObjectStats.from_sets(
        [{f"{s.colour} {s.kind}" for s in generate_scene(i).shapes} for i in range(40)]
    )


def _links(sample):
    """(token, name) of every routing token, named as the processor names them."""
    out = []
    for turn in sample.conversation:
        last = 0
        for m in _LINK_RE.finditer(turn.content):
            out.append((m.group(0), link_name(turn.content[last : m.start()])))
            last = m.end()
    return out


# -- templates -----------------------------------------------------------------------------------


def test_templates_have_eight_paraphrases_and_disjoint_heldout_ones():
    for table, held in ((T.QUESTIONS, T.HELDOUT_QUESTIONS), (T.ANSWERS, T.HELDOUT_ANSWERS)):
        for key, options in table.items():
            assert len(set(options)) >= 8, key
            assert len(held[key]) >= 2, key
            assert not set(held[key]) & set(options), key
        assert set(held) == set(table)
    with pytest.raises(ValueError, match="needs field"):
        T.question("vqa_colour", np.random.default_rng(0))
    with pytest.raises(ValueError, match="phrasing"):
        T.question("caption", np.random.default_rng(0), phrasing="test")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "key,token", [("det", "[DET]"), ("inst_seg", "[SEG]"), ("sem_seg", "[SEG]"), ("pose", "[POSE]")]
)
def test_every_answer_template_names_links_by_their_class(key, token):
    names = ["red circle", "person", "left_eye"]
    links = T.link_list(names, token)
    for table in (T.ANSWERS, T.HELDOUT_ANSWERS):
        for template in table[key]:
            text = template.format(links=links)
            got = [link_name(text[: m.start()].split(token)[-1]) for m in re.finditer(re.escape(token), text)]
            assert got == names, template


@pytest.mark.parametrize("key", ["grd", "ref_seg"])
def test_grounding_answers_name_the_expression(key):
    expr = "the red circle to the left of the square"
    for table in (T.ANSWERS, T.HELDOUT_ANSWERS):
        for template in table[key]:
            text = T._fill(template, key, {"expr": expr})
            assert text.count("[GRD]") == 1
            assert expr in link_name(text[: text.index("[GRD]")]).lower(), template


# -- every task --------------------------------------------------------------------------------


@pytest.mark.parametrize("phrasing", ["train", "heldout"])
def test_every_task_builds_consistent_samples(scenes, stats, phrasing):
    built = {t: 0 for t in TASKS}
    for i, (scene, r) in enumerate(scenes):
        for task in TASKS:
            try:
                s = build_task(
                    task, scene, np.random.default_rng(i), rendered=r, phrasing=phrasing, stats=stats
                )
            except TaskNotApplicable:
                continue
            built[task] += 1
            roles = [t.role for t in s.conversation]
            assert roles[0] == "user" and roles[1] == "assistant"
            first = s.conversation[0].content
            if task == "gen":
                assert s.images == [] and "<image>" not in first
            else:
                assert len(s.images) == 1 and first.startswith("<image>\n")
                assert sum(t.content.count("<image>") for t in s.conversation) == 1
            assert sum(t.content.count(REGION_TOKEN) for t in s.conversation) == len(s.regions)
            links = _links(s)
            assert len(links) == len(s.targets), (task, s.conversation)
            _check_targets(task, s, links, scene)
    for task, n in built.items():
        assert n >= (3 if task == "vqa" else 8), (task, n)


def _check_targets(task, s, links, scene):
    H, W = scene.height, scene.width
    if task in ("det", "inst_seg", "sem_seg"):
        for (tok, _), t in zip(links, s.targets, strict=True):
            assert tok == ("[DET]" if task == "det" else "[SEG]")
            assert t.boxes.ndim == 2 and t.boxes.shape[1] == 4
            if task != "det":
                assert t.masks.shape == (len(t.boxes), H, W)
                assert t.semantic == (task == "sem_seg")
    elif task in ("grd", "ref_seg"):
        (tok, _), t = links[0], s.targets[0]
        assert tok == "[GRD]" and t.boxes.shape == (1, 4)
        if task == "ref_seg":
            assert t.masks.shape == (1, H, W)
    elif task == "pose":
        i = 0
        while i < len(links):
            cat = links[i][1]
            names = FIGURES[cat][0]
            t = s.targets[i]
            assert t.keypoints.shape == (len(t.boxes), len(names), 3)
            assert [n for _, n in links[i + 1 : i + 1 + len(names)]] == list(names)
            assert s.targets[i + 1 : i + 1 + len(names)] == [None] * len(names)
            assert len(t.boxes) == sum(f.category == cat for f in scene.figures)
            i += 1 + len(names)
    elif task in ("gen", "edit"):
        assert links[0][0] == ("[GEN]" if task == "gen" else "[EDIT]")
        assert s.targets[0].image.size == (W, H)
    else:
        assert links == [] and s.targets == []


def _pattern(template: str) -> re.Pattern:
    """A template as a regex: its fields match any text."""
    parts = re.split(r"\{[^}]*\}", template)
    return re.compile("(?s)" + ".+".join(re.escape(p) for p in parts))


def test_semantic_questions_ask_for_the_label_set_the_suite_scores(scenes):
    """Half the semantic questions name every category in the fixed order the world suite asks for
    (its mIoU covers the whole label set); the others name every present class and some absent ones."""
    whole, subsets = 0, 0
    for i, (scene, rendered) in enumerate(scenes * 4):
        s = build_task("sem_seg", scene, np.random.default_rng(i), rendered=rendered)
        names = [n for _, n in _links(s)]
        present = {CATEGORIES[v - 1] for v in np.unique(rendered.semantic) if v > 0}
        assert present <= set(names) and len(set(names)) == len(names)
        for name, t in zip(names, s.targets, strict=True):
            assert (len(t.masks) == 1 and t.masks[0].any()) if name in present else len(t.masks) == 0
        if names == list(CATEGORIES):
            whole += 1
        else:
            subsets += 1
    assert whole >= 12 and subsets >= 12, (whole, subsets)


def test_heldout_phrasing_never_uses_training_questions(scenes):
    scene, r = scenes[0]
    for task in ("caption", "det", "grd", "pose", "gen", "region_recog"):
        for i in range(5):
            for phrasing, mine, other in (
                ("heldout", T.HELDOUT_QUESTIONS, T.QUESTIONS),
                ("train", T.QUESTIONS, T.HELDOUT_QUESTIONS),
            ):
                s = build_task(task, scene, np.random.default_rng(i), rendered=r, phrasing=phrasing)
                q = s.conversation[0].content.removeprefix("<image>\n")
                assert any(_pattern(t).fullmatch(q) for t in mine[task]), (phrasing, q)
                assert not any(_pattern(t).fullmatch(q) for t in other[task]), (phrasing, q)


# -- correctness of answers ---------------------------------------------------------------------


def _scene(*shapes, figures=()):
    bg = Background((180, 180, 180), "plain", 8, 0.0, 0.0, 1.0, 0)
    return Scene(128, 128, bg, list(shapes), list(figures))


def test_referring_expressions_pick_out_exactly_one_object(scenes):
    n = 0
    for scene, r in scenes:
        things = scene_things(scene, r)
        for t in things:
            for d in referring_expressions(things, t, side=128):
                got = _resolve(d, things, 0.06 * 128)
                assert got is not None and got == [t], d.phrase()
                n += 1
    assert n > 50


def test_grounding_phrases_benchmark_tells_the_grammar_kinds_apart(scenes):
    """benchmarks/grounding_phrases.py sorts the suite's expressions by text alone; every phrase the
    grammar writes must land in the kind of the description it came from, and a relation's two halves
    must read back as the base and landmark descriptions it was written from."""
    sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
    from grounding_phrases import phrase_kind, simple_desc

    seen = set()
    for scene, r in scenes:
        things = scene_things(scene, r)
        for t in things:
            for d in referring_expressions(things, t, side=128):
                parts = {"relation": d.relation, "superlative": d.superlative, "position": d.position}
                kind = next((k for k, v in parts.items() if v), "attributes")
                assert phrase_kind(d.phrase()) == kind, d.phrase()
                seen.add(kind)
                if d.relation:
                    base, mark = d.phrase().split(f" {d.relation} ")
                    assert simple_desc(base) == Desc(d.noun, d.colour), d.phrase()
                    assert simple_desc(mark) == Desc(d.landmark.noun, d.landmark.colour), d.phrase()
    assert seen == {"relation", "superlative", "position", "attributes"}


def test_ambiguous_descriptions_are_never_offered():
    a = Shape("circle", "red", 10, 10, 20)
    b = Shape("circle", "red", 90, 10, 20)
    c = Shape("square", "blue", 50, 90, 20)
    scene = _scene(a, b, c)
    things = scene_things(scene, render(scene))
    phrases = {d.phrase() for d in referring_expressions(things, things[0], side=128)}
    assert "the red circle" not in phrases and "the circle" not in phrases
    assert "the red circle at the top left" in phrases
    # Only the first red circle is left of the square, but both are above it.
    assert "the red circle to the left of the square" in phrases
    assert not any("above" in p for p in phrases)
    # The blue square is unique by kind or by colour.
    sq = {d.phrase() for d in referring_expressions(things, things[2], side=128)}
    assert {"the square", "the blue square", "the blue shape"} <= sq


def test_counts_and_pope_answers_match_the_scene(stats):
    scene = _scene(
        Shape("circle", "red", 10, 10, 20),
        Shape("circle", "blue", 90, 10, 20),
        Shape("star", "red", 50, 90, 20),
    )
    r = render(scene)
    ctx = _Ctx(scene, r, np.random.default_rng(0), "train", None, WorldConfig(), frozenset())
    truth = {
        "circles": 2,
        "stars": 1,
        "squares": 0,
        "red shapes": 2,
        "blue shapes": 1,
        "shapes": 3,
        "people": 0,
    }
    seen = set()
    for i in range(80):
        ctx.rng = np.random.default_rng(i)
        what, n = _count_target(ctx)
        if what in truth:
            assert n == truth[what], what
            seen.add(what)
    assert len(seen) >= 5
    present = {"red circle", "blue circle", "red star"}
    for i in range(30):
        for kind in ("random", "popular", "adversarial"):
            s = build_task("pope", scene, np.random.default_rng(i), rendered=r, stats=stats, pope_type=kind)
            obj, ans = s.meta["object"], s.meta["answer"]
            assert (obj in present) == (ans == "yes")
            assert s.conversation[1].content.lower().startswith(ans)
            if ans == "no":
                assert obj in POPE_VOCABULARY
                if kind == "adversarial":
                    c, k = obj.split()
                    assert any(c == p.split()[0] or k == p.split()[1] for p in present)


def test_popular_negatives_follow_dataset_frequency():
    stats = B.ObjectStats.from_sets([{"a"}, {"a", "b"}, {"a", "b"}, {"c"}, {"d"}])
    vocab = ["a", "b", "c", "d"]
    got = {
        B.pope_negative("popular", set(), vocab, np.random.default_rng(i), stats=stats, top_k=1)
        for i in range(9)
    }
    assert got == {"a"}
    co = {
        B.pope_negative("adversarial", {"b"}, vocab, np.random.default_rng(i), stats=stats, top_k=1)
        for i in range(9)
    }
    assert co == {"a"}
    with pytest.raises(ValueError, match="statistics"):
        B.pope_negative("popular", set(), ["a"], np.random.default_rng(0))
    assert B.pope_negative("random", {"a"}, ["a"], np.random.default_rng(0)) is None
    assert B.ObjectStats.from_dict(stats.to_dict()) == stats


def test_multiple_choice_has_four_options_and_the_right_letter(scenes):
    for i, (scene, r) in enumerate(scenes):
        s = build_task("mc", scene, np.random.default_rng(i), rendered=r, mc_type="colour")
        opts, letter = s.meta["options"], s.meta["answer"]
        assert len(opts) == 4 == len(set(opts)) and letter in "ABCD"
        q = s.conversation[0].content
        for k, o in enumerate(opts):
            assert f"{'ABCD'[k]}. {o}" in q
        # The right option is the colour of a shape of the scene (the referred one).
        assert opts["ABCD".index(letter)] in {x.colour for x in scene.shapes}


def test_vqa_colour_answer_is_the_referred_shapes_colour():
    scene = _scene(Shape("circle", "red", 10, 10, 20), Shape("square", "blue", 90, 90, 20))
    r = render(scene)
    for i in range(20):
        s = build_task("vqa", scene, np.random.default_rng(i), rendered=r, vqa_type="colour")
        q = s.conversation[0].content
        # The head noun of the expression is the first kind named ("the square right of the circle").
        first = min((q.find(k), k) for k in ("circle", "square") if k in q)[1]
        want = "red" if first == "circle" else "blue"
        assert s.meta["answer"] == want
        assert want in s.conversation[1].content


def test_vqa_short_answers_sets_the_share_of_bare_word_answers():
    from visionllm2.data.templates import SHORT_ANSWER_SUFFIXES

    scene = _scene(Shape("circle", "red", 10, 10, 20), Shape("square", "blue", 90, 90, 20))
    r = render(scene)

    def ask(i, **options):
        s = build_task("vqa", scene, np.random.default_rng(i), rendered=r, vqa_type="shape", **options)
        return s.conversation[0].content, s.conversation[1].content, s.meta["answer"]

    for i in range(12):
        q, a, truth = ask(i, short_answers=1.0)
        assert a == truth and q.endswith(SHORT_ANSWER_SUFFIXES)
        q, a, truth = ask(i, short_answers=0.0)
        assert truth in a and not q.endswith(SHORT_ANSWER_SUFFIXES)
        assert ask(i) == ask(i, short_answers=0.3)  # the default keeps every dataset as it was
    asked = sum(ask(i)[0].endswith(SHORT_ANSWER_SUFFIXES) for i in range(200))
    assert 40 <= asked <= 80  # 30% by default
    with pytest.raises(ValueError, match="short_answers is a probability"):
        ask(0, short_answers=1.5)


@pytest.mark.parametrize("kind", ["point", "box", "scribble", "mask"])
def test_region_prompts_fall_on_the_object(kind):
    from visionllm2.modeling.region import rasterize_region

    scene = generate_scene(5)
    r = render(scene)
    for i, o in enumerate(r.objects[:3]):
        p = region_prompt(o.mask, kind, np.random.default_rng(i))
        assert p.kind == kind
        if kind == "point":
            x, y = p.data
            assert o.mask[int(y), int(x)]
        elif kind == "scribble":
            assert p.data.shape[1] == 2 and all(o.mask[int(y), int(x)] for x, y in p.data)
        elif kind == "box":
            x0, y0, x1, y1 = p.data
            box = o.box
            assert abs(x0 - box[0]) <= 1 and abs(y1 - box[3]) <= 1
        raster = rasterize_region(p, image_size=r.image.size, out_size=32)
        assert raster.sum() > 0


def test_edit_samples_carry_the_exact_target(scenes):
    for i, (scene, r) in enumerate(scenes[:6]):
        s = build_task("edit", scene, np.random.default_rng(i), rendered=r)
        assert s.meta["op"] in ("recolour", "move", "add", "remove", "resize")
        target = s.targets[0].image
        assert target.size == r.image.size
        assert not np.array_equal(np.asarray(target), np.asarray(r.image))
        if s.meta["op"] == "recolour":
            assert s.meta["params"]["colour"] in s.conversation[0].content


# -- dataset ------------------------------------------------------------------------------------


def test_dataset_is_deterministic_and_respects_the_split():
    held = heldout_pairs(0)
    ds = SyntheticTaskDataset(num=12, seed=5, exclude_pairs=held)
    a, b = ds[3], ds[3]
    assert a.task == b.task and [t.content for t in a.conversation] == [t.content for t in b.conversation]
    assert len({ds[i].task for i in range(12)}) >= 4  # a task mix, not one task
    with pytest.raises(IndexError):
        ds[12]
    only = SyntheticTaskDataset(num=4, seed=0, weights={"det": 1.0, "pose": 0.0})
    assert {only[i].task for i in range(4)} == {"det"}
    with pytest.raises(ValueError, match="unknown task"):
        SyntheticTaskDataset(num=1, weights={"nope": 1.0})


def test_task_options_reach_the_builder_and_bad_ones_fail_early():
    ds = SyntheticTaskDataset(
        num=8, seed=0, weights={"vqa": 1.0}, task_options={"vqa": {"vqa_type": "count"}}
    )
    assert {ds[i].meta["vqa_type"] for i in range(8)} == {"count"}
    with pytest.raises(ValueError, match="unknown option"):
        SyntheticTaskDataset(num=1, weights={"vqa": 1.0}, task_options={"vqa": {"type": "count"}})
    with pytest.raises(ValueError, match="not drawn"):
        SyntheticTaskDataset(num=1, weights={"vqa": 1.0}, task_options={"pope": {"present": True}})


def test_samples_go_through_the_processor(scenes, stats):
    from visionllm2.data.conversation import get_template
    from visionllm2.data.tokenizer import add_visionllm2_tokens, byte_level_tokenizer

    tok = byte_level_tokenizer()
    add_visionllm2_tokens(tok, list(ROUTING_TOKENS.values()))
    families = {f: FamilyConfig(token=t, num_queries=2, decoder=None) for f, t in ROUTING_TOKENS.items()}
    proc = VisionLLM2Processor(
        tokenizer=tok,
        template=get_template("plain"),
        image=PixelSpec(32, (0.5,) * 3, (0.5,) * 3),
        num_image_tokens=4,
        families=families,
    )
    scene, r = scenes[1]
    samples = []
    for task in TASKS:
        with contextlib.suppress(TaskNotApplicable):
            samples.append(build_task(task, scene, np.random.default_rng(1), rendered=r, stats=stats))
    batch = proc(samples)
    assert batch.input_ids.shape[0] == len(samples)
    assert batch.labels.shape == batch.attention_mask.shape == batch.input_ids.shape
    n_images = sum(len(s.images) for s in samples)
    assert batch.pixel_values.shape == (n_images, 3, 32, 32)
    assert batch.image_sample.tolist() == [b for b, s in enumerate(samples) for _ in s.images]
    n_regions = sum(len(s.regions) for s in samples)
    assert n_regions and batch.region_masks.shape == (n_regions, 32, 32)
    n_links = sum(len(s.targets) for s in samples)
    assert len(batch.link_names) == n_links
    expected = [name for s in samples for _, name in _links(s)]
    assert batch.link_names == expected
    assert isinstance(next(t for t in batch.link_targets if t is not None), LinkTarget)


def test_one_task_dataset_skips_scenes_that_do_not_fit():
    """A one-task dataset yields that task for every item, deterministically, even where the
    item's first scene cannot give it (a POPE question needs a suitable negative object)."""
    from visionllm2.data.synthetic.tasks import scene_seed

    ds = SyntheticTaskDataset(num=40, seed=0, weights={"pope": 1.0})
    misfits = [i for i in range(40) if ds._sample(scene_seed(0, i)) is None]
    assert misfits  # the retry path is exercised
    items = [ds[i] for i in range(40)]
    assert {s.task for s in items} == {"pope"}
    again = SyntheticTaskDataset(num=40, seed=0, weights={"pope": 1.0})
    answers = [s.conversation[-1].content for s in items]
    assert answers == [again[i].conversation[-1].content for i in range(40)]


@pytest.mark.parametrize("phrasing", ["train", "heldout"])
def test_generation_answers_restate_the_request_before_the_link(phrasing):
    """The LM loss on the answer is what carries a request to the [GEN] link's positions."""
    from PIL import Image

    image = Image.new("RGB", (8, 8))
    caption = "A small striped red diamond at the top left."
    seen = set()
    for seed in range(40):
        s = B.generation_sample(caption, image, np.random.default_rng(seed), phrasing=phrasing)
        answer = s.conversation[1].content
        seen.add(answer)
        before = answer[: answer.index("[GEN]")]
        assert "small striped red diamond at the top left" in before.lower(), answer
    assert len(seen) > 1  # several phrasings, each restating
