"""Task builders for the synthetic world: one scene -> one :class:`Sample` of any task.

Every task of VisionLLM v2 is covered: caption, VQA (colour, shape, count, position, relation,
text reading), POPE-style existence (random / popular / adversarial negatives), multiple choice,
detection, referring grounding, instance / semantic / referring segmentation, region captioning
and recognition from point / box / scribble / mask prompts, pose, generation and editing.
Referring expressions are built from the scene and checked to pick out exactly one object.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from visionllm2.data import builders as B
from visionllm2.data import templates as T
from visionllm2.data.sample import RegionPrompt, Sample, Turn
from visionllm2.data.synthetic.verifier import shape_entry
from visionllm2.data.synthetic.world import (
    CATEGORIES,
    COLOURS,
    EDIT_OPS,
    FIGURES,
    KINDS,
    Rendered,
    Scene,
    WorldConfig,
    caption,
    edit_scene,
    generate_scene,
    plural,
    position_phrase,
    render,
    shape_phrase,
)

TASKS: tuple[str, ...] = (
    "caption",
    "vqa",
    "pope",
    "mc",
    "chat",
    "det",
    "grd",
    "inst_seg",
    "sem_seg",
    "ref_seg",
    "region_caption",
    "region_recog",
    "pose",
    "gen",
    "edit",
)
VQA_TYPES: tuple[str, ...] = ("colour", "shape", "count", "position", "relation", "text")
MC_TYPES: tuple[str, ...] = ("colour", "shape", "count")
REGION_KINDS: tuple[str, ...] = ("point", "box", "scribble", "mask")
RELATIONS: tuple[str, ...] = ("to the left of", "to the right of", "above", "below")
# Objects POPE asks about: every (colour, kind) phrase plus the figures.
POPE_VOCABULARY: tuple[str, ...] = tuple(f"{c} {k}" for k in KINDS for c in COLOURS) + tuple(FIGURES)


class TaskNotApplicable(ValueError):
    """The scene cannot give this task (e.g. text reading in a scene without words)."""


# -- referable things and referring expressions --------------------------------------------------


@dataclass(frozen=True)
class Thing:
    """An object that expressions can refer to: a shape or a figure of a rendered scene."""

    obj: int  # index into Rendered.objects
    category: str
    is_shape: bool
    colour: str | None
    texture: str | None
    size: float
    cx: float
    cy: float
    position: str


def scene_things(scene: Scene, rendered: Rendered) -> list[Thing]:
    things = []
    for j, o in enumerate(rendered.objects):
        a = o.attributes
        if a["source"] == "shape":
            s = scene.shapes[a["index"]]
            things.append(
                Thing(j, s.kind, True, s.colour, s.texture, float(s.size), *s.centre, a["position"])
            )
        elif a["source"] == "figure":
            x0, y0, x1, y1 = o.box
            size = float(max(x1 - x0, y1 - y0))
            things.append(
                Thing(j, o.label, False, None, None, size, (x0 + x1) / 2, (y0 + y1) / 2, a["position"])
            )
    return things


@dataclass(frozen=True)
class Desc:
    """A description: noun (category, or None = "shape"), attributes, optional relation."""

    noun: str | None
    colour: str | None = None
    texture: str | None = None
    position: str | None = None
    superlative: str | None = None  # "largest" / "smallest"
    relation: str | None = None
    landmark: Desc | None = None

    def phrase(self) -> str:
        words = ["the"]
        if self.superlative:
            words.append(self.superlative)
        if self.texture:
            words.append(self.texture)
        if self.colour:
            words.append(self.colour)
        words.append(self.noun or "shape")
        text = " ".join(words)
        if self.position:
            text += " " + position_phrase(self.position)
        if self.relation:
            assert self.landmark is not None
            text += f" {self.relation} {self.landmark.phrase()}"
        return text


def _relation(rel: str, a: Thing, b: Thing, margin: float) -> bool | None:
    """True / False when clear, None when too close to call."""
    if rel in ("to the left of", "to the right of"):
        d = b.cx - a.cx if rel == "to the left of" else a.cx - b.cx
    else:
        d = b.cy - a.cy if rel == "above" else a.cy - b.cy
    if d > margin:
        return True
    if d < -margin:
        return False
    return None


def _matches_simple(d: Desc, t: Thing, things: list[Thing]) -> bool:
    if d.noun is None:
        if not t.is_shape:
            return False
    elif t.category != d.noun:
        return False
    if d.colour and t.colour != d.colour:
        return False
    if d.texture and t.texture != d.texture:
        return False
    if d.position and t.position != d.position:
        return False
    if d.superlative:
        peers = [u for u in things if _matches_simple(Desc(d.noun, d.colour, d.texture), u, things)]
        others = [u.size for u in peers if u is not t]
        if not others:
            return False
        if d.superlative == "largest":
            return t.size >= 1.25 * max(others)
        return t.size * 1.25 <= min(others)
    return True


def _resolve(d: Desc, things: list[Thing], margin: float) -> list[Thing] | None:
    """The things ``d`` denotes; None if any is ambiguous (a relation too close to call)."""
    base = [t for t in things if _matches_simple(d, t, things)]
    if d.relation is None:
        return base
    assert d.landmark is not None
    marks = _resolve(d.landmark, things, margin)
    if marks is None or len(marks) != 1:
        return None
    out = []
    for t in base:
        if t is marks[0]:
            continue
        r = _relation(d.relation, t, marks[0], margin)
        if r is None:
            return None
        if r:
            out.append(t)
    return out


def referring_expressions(
    things: list[Thing], target: Thing, *, side: int, avoid: frozenset[str] = frozenset()
) -> list[Desc]:
    """Every description (from a fixed grammar) that denotes exactly ``target``.

    ``avoid`` drops attributes the question asks about: "colour", "kind", "position" (also
    drops relations, which give position away).
    """
    margin = 0.06 * side
    nouns: list[str | None] = []
    if target.is_shape:
        if "kind" not in avoid:
            nouns.append(target.category)
        nouns.append(None)
    elif "kind" not in avoid:
        nouns.append(target.category)
    colours = [None] + ([target.colour] if target.colour and "colour" not in avoid else [])
    out: list[Desc] = []
    simple: list[Desc] = []
    for noun in nouns:
        for colour in colours:
            if noun is None and colour is None:
                continue  # "the shape" alone never helps
            textures = [None] + ([target.texture] if colour and target.texture not in (None, "solid") else [])
            for texture in textures:
                simple.append(Desc(noun, colour, texture))
                if "position" not in avoid:
                    simple.append(Desc(noun, colour, texture, position=target.position))
                for sup in ("largest", "smallest"):
                    simple.append(Desc(noun, colour, texture, superlative=sup))
    for d in simple:
        r = _resolve(d, things, margin)
        if r is not None and len(r) == 1 and r[0] is target:
            out.append(d)
    if "position" in avoid:
        return out
    # Relations: a plain base plus a landmark that a simple description singles out.
    landmark_descs: list[tuple[Thing, Desc]] = []
    for t in things:
        if t is target:
            continue
        for d in (Desc(t.category), Desc(t.category, t.colour)) if t.is_shape else (Desc(t.category),):
            r = _resolve(d, things, margin)
            if r is not None and len(r) == 1 and r[0] is t:
                landmark_descs.append((t, d))
                break
    bases = [Desc(n, c) for n in nouns for c in colours if not (n is None and c is None)]
    for base in bases:
        for mark, md in landmark_descs:
            if _matches_simple(base, mark, things) and base.noun == mark.category:
                continue  # "the circle left of the circle" reads badly
            for rel in RELATIONS:
                d = Desc(base.noun, base.colour, relation=rel, landmark=md)
                r = _resolve(d, things, margin)
                if r is not None and len(r) == 1 and r[0] is target:
                    out.append(d)
    return out


def _pick_expression(
    things: list[Thing],
    target: Thing,
    rng: np.random.Generator,
    *,
    side: int,
    avoid: frozenset[str] = frozenset(),
) -> Desc | None:
    descs = referring_expressions(things, target, side=side, avoid=avoid)
    if not descs:
        return None
    # Half the time use a relation when one exists, so relational language is well represented.
    rel = [d for d in descs if d.relation]
    pool = rel if rel and rng.random() < 0.5 else descs
    return pool[int(rng.integers(len(pool)))]


def _pick_target(
    things: list[Thing],
    rng: np.random.Generator,
    *,
    side: int,
    avoid: frozenset[str] = frozenset(),
    shapes_only: bool = False,
) -> tuple[Thing, Desc]:
    pool = [t for t in things if t.is_shape or not shapes_only]
    for i in rng.permutation(len(pool)):
        d = _pick_expression(things, pool[int(i)], rng, side=side, avoid=avoid)
        if d is not None:
            return pool[int(i)], d
    raise TaskNotApplicable("no object in the scene can be referred to uniquely")


# -- task builders ---------------------------------------------------------------------------------


@dataclass
class _Ctx:
    scene: Scene
    rendered: Rendered
    rng: np.random.Generator
    phrasing: T.Phrasing
    stats: B.ObjectStats | None
    config: WorldConfig
    exclude_pairs: frozenset[tuple[str, str]]

    @property
    def side(self) -> int:
        return min(self.scene.width, self.scene.height)

    @property
    def things(self) -> list[Thing]:
        return scene_things(self.scene, self.rendered)

    def meta(self, **extra: Any) -> dict[str, Any]:
        return {"source": "synthetic", "scene_seed": self.scene.seed, "phrasing": self.phrasing, **extra}


def _short_suffix(ctx: _Ctx, p: float = 0.3) -> str | None:
    """A short-answer instruction with probability ``p`` (then the answer is the bare word), else None."""
    if ctx.rng.random() < p:
        suffixes = T.SHORT_ANSWER_SUFFIXES
        return suffixes[int(ctx.rng.integers(len(suffixes)))]
    return None


def _vqa_question(ctx: _Ctx, kind: str) -> tuple[str, str, dict[str, Any]]:
    """(question, answer word, answer-template fields) of one VQA type."""
    rng, things = ctx.rng, ctx.things
    if kind == "colour":
        t, d = _pick_target(things, rng, side=ctx.side, avoid=frozenset({"colour"}), shapes_only=True)
        ref = d.phrase()
        return T.question("vqa_colour", rng, phrasing=ctx.phrasing, ref=ref), str(t.colour), {"ref": ref}
    if kind == "shape":
        t, d = _pick_target(things, rng, side=ctx.side, avoid=frozenset({"kind"}), shapes_only=True)
        ref = d.phrase()
        fields = {"ref": ref, "a_answer": T.article(t.category)}
        return T.question("vqa_shape", rng, phrasing=ctx.phrasing, ref=ref), t.category, fields
    if kind == "count":
        what, n = _count_target(ctx)
        n_word = str(n)
        fields = {"are": "is" if n == 1 else "are"}
        return T.question("vqa_count", rng, phrasing=ctx.phrasing, things=what), n_word, fields
    if kind == "position":
        t, d = _pick_target(things, rng, side=ctx.side, avoid=frozenset({"position"}))
        ref = d.phrase()
        fields = {"ref": ref, "position_phrase": position_phrase(t.position)}
        return T.question("vqa_position", rng, phrasing=ctx.phrasing, ref=ref), t.position, fields
    if kind == "relation":
        return _relation_question(ctx)
    if kind == "text":
        if len(ctx.scene.words) != 1:
            raise TaskNotApplicable("text reading needs exactly one word in the scene")
        word = ctx.scene.words[0].text
        return T.question("vqa_text", rng, phrasing=ctx.phrasing), word, {}
    raise ValueError(f"unknown VQA type {kind!r}; choose one of {VQA_TYPES}")


def _count_target(ctx: _Ctx) -> tuple[str, int]:
    """(plural noun phrase, count): a kind, a colour, all shapes or a figure category."""
    rng, shapes = ctx.rng, ctx.scene.shapes
    mode = int(rng.integers(4))
    if mode == 0:
        kind = KINDS[int(rng.integers(len(KINDS)))]
        return plural(kind), sum(s.kind == kind for s in shapes)
    if mode == 1:
        colour = list(COLOURS)[int(rng.integers(len(COLOURS)))]
        return f"{colour} shapes", sum(s.colour == colour for s in shapes)
    if mode == 2:
        return "shapes", len(shapes)
    category = list(FIGURES)[int(rng.integers(len(FIGURES)))]
    return plural(category), sum(f.category == category for f in ctx.scene.figures)


def _relation_question(ctx: _Ctx) -> tuple[str, str, dict[str, Any]]:
    rng, things, margin = ctx.rng, ctx.things, 0.06 * ctx.side
    if len(things) < 2:
        raise TaskNotApplicable("a relation question needs two objects")
    for _ in range(10):
        i, j = rng.choice(len(things), 2, replace=False)
        a, b = things[int(i)], things[int(j)]
        da = _pick_expression(things, a, rng, side=ctx.side, avoid=frozenset({"position"}))
        db = _pick_expression(things, b, rng, side=ctx.side, avoid=frozenset({"position"}))
        if da is None or db is None:
            continue
        clear = [(r, v) for r in RELATIONS if (v := _relation(r, a, b, margin)) is not None]
        if not clear:
            continue
        truths = [c for c in clear if c[1]]
        falses = [c for c in clear if not c[1]]
        want_yes = bool(rng.random() < 0.5)
        pool = truths if (want_yes and truths) or not falses else falses
        rel, truth = pool[int(rng.integers(len(pool)))]
        q = T.question("vqa_relation", rng, phrasing=ctx.phrasing, a=da.phrase(), b=db.phrase(), rel=rel)
        return q, "yes" if truth else "no", {}
    raise TaskNotApplicable("no pair of objects with a clear relation and unique descriptions")


def build_vqa(ctx: _Ctx, *, vqa_type: str | None = None, short_answers: float = 0.3) -> Sample:
    """``short_answers``: the share of questions that ask for one word or phrase (whose answer
    is then the bare word): a one-token-per-letter answer puts the whole LM loss on the value."""
    if not 0.0 <= short_answers <= 1.0:
        raise ValueError(f"vqa short_answers is a probability in [0, 1], got {short_answers}")
    kind = vqa_type or VQA_TYPES[int(ctx.rng.integers(len(VQA_TYPES)))]
    q, ans, fields = _vqa_question(ctx, kind)
    short = _short_suffix(ctx, short_answers)
    if short:
        q, a = f"{q} {short}", ans
    elif kind == "relation":
        a = T.answer(ans, ctx.rng, phrasing=ctx.phrasing)
    else:
        a = T.answer(f"vqa_{kind}", ctx.rng, phrasing=ctx.phrasing, answer=ans, **fields)
    return B.qa_sample(ctx.rendered.image, q, a, task="vqa", meta=ctx.meta(vqa_type=kind, answer=ans))


def build_caption(ctx: _Ctx) -> Sample:
    return B.caption_sample(
        ctx.rendered.image, caption(ctx.scene), ctx.rng, phrasing=ctx.phrasing, meta=ctx.meta()
    )


def _object_names(scene: Scene) -> set[str]:
    return {f"{s.colour} {s.kind}" for s in scene.shapes} | {f.category for f in scene.figures}


def _related(a: str, b: str) -> bool:
    """Two POPE object names look alike: same colour or same kind (adversarial negatives)."""
    wa, wb = a.split(), b.split()
    return len(wa) == 2 and len(wb) == 2 and (wa[0] == wb[0] or wa[1] == wb[1])


def build_pope(ctx: _Ctx, *, pope_type: str | None = None, present: bool | None = None) -> Sample:
    rng = ctx.rng
    kind = pope_type or B.POPE_TYPES[int(rng.integers(len(B.POPE_TYPES)))]
    names = _object_names(ctx.scene)
    want_present = bool(rng.random() < 0.5) if present is None else present
    if want_present:
        if not names:
            raise TaskNotApplicable("no object to ask about")
        obj = sorted(names)[int(rng.integers(len(names)))]
    else:
        stats = ctx.stats
        if stats is None and kind == "popular":
            raise TaskNotApplicable("POPE 'popular' negatives need ObjectStats of the dataset")
        neg = B.pope_negative(kind, names, POPE_VOCABULARY, rng, stats=stats, related=_related)
        if neg is None:
            raise TaskNotApplicable("every object is present")
        obj = neg
    return B.pope_sample(
        ctx.rendered.image,
        obj,
        want_present,
        rng,
        phrasing=ctx.phrasing,
        meta=ctx.meta(pope_type=kind),
        short_suffix=_short_suffix(ctx),
    )


def build_mc(ctx: _Ctx, *, mc_type: str | None = None) -> Sample:
    rng = ctx.rng
    kind = mc_type or MC_TYPES[int(rng.integers(len(MC_TYPES)))]
    q, ans, _ = _vqa_question(ctx, kind)
    if kind == "colour":
        pool = [c for c in COLOURS if c != ans]
    elif kind == "shape":
        pool = [k for k in KINDS if k != ans]
    else:
        pool = [str(n) for n in range(0, 7) if str(n) != ans]
    wrong = [pool[int(i)] for i in rng.choice(len(pool), 3, replace=False)]
    options = [ans, *wrong]
    order = rng.permutation(4)
    options = [options[int(i)] for i in order]
    correct = int(np.nonzero(order == 0)[0][0])
    return B.multiple_choice_sample(
        ctx.rendered.image, q, options, correct, rng, phrasing=ctx.phrasing, meta=ctx.meta(mc_type=kind)
    )


def build_chat(ctx: _Ctx, *, turns: int | None = None) -> Sample:
    """A multi-turn conversation of text tasks about one image (LLaVA-style)."""
    rng = ctx.rng
    n = turns or int(rng.integers(2, 4))
    conv: list[Turn] = []
    answers = []
    builders = (build_vqa, build_vqa, build_pope, build_mc, build_caption)
    tries = 0
    while len(conv) < 2 * n and tries < 5 * n:
        tries += 1
        try:
            s = builders[int(rng.integers(len(builders)))](ctx)
        except TaskNotApplicable:
            continue
        user, assistant = s.conversation
        content = user.content if not conv else user.content.removeprefix(B.IMAGE_PREFIX)
        conv += [Turn("user", content), assistant]
        answers.append(s.meta.get("answer"))
    if not conv:
        raise TaskNotApplicable("no text task fits the scene")
    return Sample([ctx.rendered.image], conv, task="chat", meta=ctx.meta(answers=answers))


def _groups(ctx: _Ctx) -> list[tuple[str, list[B.ObjectAnn]]]:
    objs = ctx.rendered.objects
    rng = ctx.rng
    if rng.random() < 0.3 and ctx.scene.shapes:
        # Colour-qualified classes ("red circle"): open-vocabulary phrases, not just kinds.
        vocab = [f"{c} {k}" for k in KINDS for c in COLOURS]
        present = {f"{o.attributes['colour']} {o.label}" for o in objs if o.attributes["source"] == "shape"}
        names = B.sample_class_names(present, vocab, rng, max_names=4)

        def members(name: str) -> list[B.ObjectAnn]:
            return [
                o
                for o in objs
                if o.attributes["source"] == "shape" and f"{o.attributes['colour']} {o.label}" == name
            ]
    else:
        present = {o.label for o in objs}
        names = B.sample_class_names(present, CATEGORIES, rng, max_names=5)

        def members(name: str) -> list[B.ObjectAnn]:
            return [o for o in objs if o.label == name]

    return [(n, members(n)) for n in names]


def build_det(ctx: _Ctx) -> Sample:
    return B.detection_sample(
        ctx.rendered.image, _groups(ctx), ctx.rng, phrasing=ctx.phrasing, meta=ctx.meta()
    )


def build_inst_seg(ctx: _Ctx) -> Sample:
    return B.detection_sample(
        ctx.rendered.image,
        _groups(ctx),
        ctx.rng,
        phrasing=ctx.phrasing,
        segment=True,
        meta=ctx.meta(),
    )


def build_sem_seg(ctx: _Ctx) -> Sample:
    """Half the questions ask for the whole label set in its fixed order, as semantic segmentation is
    used (and as the world suite scores it); the others for the present classes and some absent ones."""
    sem = ctx.rendered.semantic
    if ctx.rng.random() < 0.5:
        names = list(CATEGORIES)
    else:
        present = {CATEGORIES[v - 1] for v in np.unique(sem) if v > 0}
        names = B.sample_class_names(present, CATEGORIES, ctx.rng, max_names=len(CATEGORIES))
    classes = [(n, sem == CATEGORIES.index(n) + 1) for n in names]
    return B.semantic_sample(ctx.rendered.image, classes, ctx.rng, phrasing=ctx.phrasing, meta=ctx.meta())


def _grounding(ctx: _Ctx, *, segment: bool) -> Sample:
    t, d = _pick_target(ctx.things, ctx.rng, side=ctx.side)
    return B.grounding_sample(
        ctx.rendered.image,
        d.phrase(),
        ctx.rendered.objects[t.obj],
        ctx.rng,
        phrasing=ctx.phrasing,
        segment=segment,
        meta=ctx.meta(),
    )


def build_grd(ctx: _Ctx) -> Sample:
    return _grounding(ctx, segment=False)


def build_ref_seg(ctx: _Ctx) -> Sample:
    return _grounding(ctx, segment=True)


def region_prompt(mask: np.ndarray, kind: str, rng: np.random.Generator) -> RegionPrompt:
    """A visual prompt of ``kind`` (point, box, scribble, mask) for the object with ``mask``,
    in pixel coordinates; points and scribbles lie inside the object."""
    if not mask.any():
        raise ValueError("cannot prompt an object with an empty mask")
    inner = ndimage.binary_erosion(mask)
    pts_mask = inner if inner.any() else mask
    ys, xs = np.nonzero(pts_mask)
    if kind == "point":
        i = int(rng.integers(len(xs)))
        return RegionPrompt("point", (float(xs[i]) + 0.5, float(ys[i]) + 0.5))
    if kind == "box":
        H, W = mask.shape
        my, mx = np.nonzero(mask)
        j = rng.integers(-1, 2, 4)
        box = (
            float(np.clip(mx.min() + j[0], 0, W - 1)),
            float(np.clip(my.min() + j[1], 0, H - 1)),
            float(np.clip(mx.max() + 1 + j[2], 1, W)),
            float(np.clip(my.max() + 1 + j[3], 1, H)),
        )
        return RegionPrompt("box", box)
    if kind == "scribble":
        k = min(len(xs), int(rng.integers(3, 6)))
        idx = rng.choice(len(xs), k, replace=False)
        pts = np.stack([xs[idx], ys[idx]], 1).astype(np.float32) + 0.5  # (k, 2)
        axis = 0 if np.ptp(xs) >= np.ptp(ys) else 1
        return RegionPrompt("scribble", pts[np.argsort(pts[:, axis])])
    if kind == "mask":
        return RegionPrompt("mask", mask.copy())
    raise ValueError(f"unknown region prompt kind {kind!r}; choose one of {REGION_KINDS}")


def _region_target(ctx: _Ctx) -> tuple[B.ObjectAnn, str]:
    objs = [o for o in ctx.rendered.objects if o.attributes["source"] in ("shape", "figure") and o.mask.any()]
    if not objs:
        raise TaskNotApplicable("no object to prompt")
    o = objs[int(ctx.rng.integers(len(objs)))]
    if o.attributes["source"] == "shape":
        phrase = "a " + shape_phrase(ctx.scene.shapes[o.attributes["index"]], ctx.side)
    else:
        phrase = T.article(o.label)
    return o, phrase


def build_region(ctx: _Ctx, *, recognise: bool, region_kind: str | None = None) -> Sample:
    o, phrase = _region_target(ctx)
    kind = region_kind or REGION_KINDS[int(ctx.rng.integers(len(REGION_KINDS)))]
    prompt = region_prompt(o.mask, kind, ctx.rng)
    return B.region_sample(
        ctx.rendered.image,
        prompt,
        ctx.rng,
        label=o.label if recognise else None,
        caption=None if recognise else phrase,
        phrasing=ctx.phrasing,
        meta=ctx.meta(),
    )


def build_pose(ctx: _Ctx) -> Sample:
    rng = ctx.rng
    present = sorted({f.category for f in ctx.scene.figures})
    absent = [c for c in FIGURES if c not in present]
    cats = list(present)
    if absent and (not cats or rng.random() < 0.3):
        cats.append(absent[int(rng.integers(len(absent)))])
    order = rng.permutation(len(cats))
    groups = []
    for i in order:
        c = cats[int(i)]
        objs = [o for o in ctx.rendered.objects if o.attributes["source"] == "figure" and o.label == c]
        groups.append((c, FIGURES[c][0], objs))
    return B.pose_sample(ctx.rendered.image, groups, rng, phrasing=ctx.phrasing, meta=ctx.meta())


def build_gen(ctx: _Ctx) -> Sample:
    return B.generation_sample(
        caption(ctx.scene), ctx.rendered.image, ctx.rng, phrasing=ctx.phrasing, meta=ctx.meta()
    )


def build_edit(ctx: _Ctx, *, op: str | None = None) -> Sample:
    """An editing sample whose target is the exact re-rendering of the edited scene."""
    rng, scene = ctx.rng, ctx.scene
    ops = [op] if op else [EDIT_OPS[int(i)] for i in rng.permutation(len(EDIT_OPS))]
    things = ctx.things
    for name in ops:
        ref = None
        index = None
        if name != "add":
            shapes = [t for t in things if t.is_shape]
            if not shapes:
                continue
            t = shapes[int(rng.integers(len(shapes)))]
            d = _pick_expression(things, t, rng, side=ctx.side)
            if d is None:
                continue
            ref = d.phrase()
            index = ctx.rendered.objects[t.obj].attributes["index"]
        edit = edit_scene(scene, name, rng, config=ctx.config, index=index, exclude_pairs=ctx.exclude_pairs)
        if edit is None:
            continue
        fields: dict[str, Any] = {"ref": ref} if ref else {}
        if name == "recolour":
            fields["colour"] = edit.params["colour"]
        elif name == "move":
            fields["position"] = edit.params["position"]
        elif name == "resize":
            fields["bigger"] = edit.params["bigger"]
        elif name == "add":
            new = edit.target.shapes[edit.index]
            fields["a_obj"] = T.article(shape_phrase(new, ctx.side))
            fields["position"] = edit.params["position"]
        instruction = T.question(f"edit_{name}", rng, phrasing=ctx.phrasing, **fields)
        target = render(edit.target)
        W, H = scene.width, scene.height
        return B.edit_sample(
            ctx.rendered.image,
            instruction,
            target.image,
            rng,
            phrasing=ctx.phrasing,
            meta=ctx.meta(
                op=name,
                params=edit.params,
                target_caption=caption(edit.target),
                # The edited shape as the verifier checks it, in the source and in the target.
                before=None if name == "add" else shape_entry(scene.shapes[edit.index], W, H),
                after=None if name == "remove" else shape_entry(edit.target.shapes[edit.index], W, H),
            ),
        )
    raise TaskNotApplicable("no valid edit for this scene")


_BUILDERS = {
    "caption": build_caption,
    "vqa": build_vqa,
    "pope": build_pope,
    "mc": build_mc,
    "chat": build_chat,
    "det": build_det,
    "grd": build_grd,
    "inst_seg": build_inst_seg,
    "sem_seg": build_sem_seg,
    "ref_seg": build_ref_seg,
    "region_caption": lambda ctx, **kw: build_region(ctx, recognise=False, **kw),
    "region_recog": lambda ctx, **kw: build_region(ctx, recognise=True, **kw),
    "pose": build_pose,
    "gen": build_gen,
    "edit": build_edit,
}


def build_task(
    task: str,
    scene: Scene,
    rng: np.random.Generator,
    *,
    rendered: Rendered | None = None,
    phrasing: T.Phrasing = "train",
    stats: B.ObjectStats | None = None,
    config: WorldConfig | None = None,
    exclude_pairs: frozenset[tuple[str, str]] | set[tuple[str, str]] = frozenset(),
    **options: Any,
) -> Sample:
    """One sample of ``task`` about ``scene``. Options: ``vqa_type``, ``short_answers`` (vqa), ``pope_type``,
    ``present``, ``mc_type``, ``turns`` (chat), ``region_kind``, ``op`` (edit).
    Raises :class:`TaskNotApplicable` when the scene cannot give that task."""
    if task not in _BUILDERS:
        raise ValueError(f"unknown task {task!r}; choose one of {TASKS}")
    if phrasing not in ("train", "heldout"):
        raise ValueError(f"phrasing must be 'train' or 'heldout', got {phrasing!r}")
    ctx = _Ctx(
        scene=scene,
        rendered=rendered or render(scene),
        rng=rng,
        phrasing=phrasing,
        stats=stats,
        config=config or WorldConfig(width=scene.width, height=scene.height),
        exclude_pairs=frozenset(exclude_pairs),
    )
    sample = _BUILDERS[task](ctx, **options)
    sample.meta.setdefault("task", task)
    return sample


def scene_seed(seed: int, index: int) -> int:
    """Seed of scene ``index`` of a dataset with ``seed`` (independent streams per index)."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


_SCENE_TRIES = 20  # scenes drawn for one item before giving up
DEFAULT_WEIGHTS: dict[str, float] = {
    "caption": 1.0,
    "vqa": 2.0,
    "pope": 1.0,
    "mc": 1.0,
    "chat": 0.5,
    "det": 2.0,
    "grd": 1.5,
    "inst_seg": 1.0,
    "sem_seg": 0.5,
    "ref_seg": 1.0,
    "region_caption": 0.5,
    "region_recog": 0.5,
    "pose": 1.0,
    "gen": 1.0,
    "edit": 1.0,
}


class SyntheticTaskDataset:
    """An endless-world dataset: item ``i`` is a fresh scene (seeded by ``seed`` and ``i``)
    with a task drawn by ``weights``; deterministic, so workers and epochs agree.

    ``exclude_pairs`` keeps (kind, colour) pairs out (training side of the compositional
    split); ``require_pairs`` puts one of them in every scene (held-out side).
    ``task_options`` passes options to one task's builder (see :func:`build_task`), e.g.
    ``{"vqa": {"vqa_type": "colour"}}`` for colour questions only.
    """

    def __init__(
        self,
        *,
        num: int,
        seed: int = 0,
        config: WorldConfig | None = None,
        weights: dict[str, float] | None = None,
        phrasing: T.Phrasing = "train",
        stats: B.ObjectStats | None = None,
        exclude_pairs: frozenset[tuple[str, str]] | set[tuple[str, str]] = frozenset(),
        require_pairs: tuple[tuple[str, str], ...] = (),
        task_options: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        if num < 1:
            raise ValueError(f"num must be at least 1, got {num}")
        weights = {k: v for k, v in (DEFAULT_WEIGHTS if weights is None else weights).items()}
        unknown = set(weights) - set(TASKS)
        if unknown:
            raise ValueError(f"unknown task(s) {sorted(unknown)} in weights; choose from {TASKS}")
        if not weights or min(weights.values()) < 0 or sum(weights.values()) <= 0:
            raise ValueError(f"weights must be non-negative with a positive sum, got {weights}")
        self.num, self.seed = num, seed
        self.config = config or WorldConfig()
        # Zero-weight tasks are dropped: they are never drawn, not even as a fallback.
        self.tasks = [t for t in weights if weights[t] > 0]
        p = np.asarray([weights[t] for t in self.tasks], dtype=np.float64)
        self.probs = p / p.sum()
        self.phrasing, self.stats = phrasing, stats
        self.exclude_pairs = frozenset(exclude_pairs)
        self.require_pairs = tuple(require_pairs)
        self.task_options = dict(task_options or {})
        stray = set(self.task_options) - set(self.tasks)
        if stray:
            raise ValueError(
                f"task_options name task(s) {sorted(stray)} that are not drawn (weights {weights})"
            )
        for task, opts in self.task_options.items():
            known = [k for k in inspect.signature(_BUILDERS[task]).parameters if k != "ctx"]
            unknown_opts = sorted(set(opts) - set(known))
            if unknown_opts:
                raise ValueError(f"task_options[{task!r}]: unknown option(s) {unknown_opts}; known: {known}")

    def __len__(self) -> int:
        return self.num

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < self.num:
            raise IndexError(f"index {index} out of range for {self.num} samples")
        # A scene that fits none of the tasks (e.g. a one-task dataset of text reading and a
        # scene without words) gives way to a fresh scene derived from the same index.
        seed = scene_seed(self.seed, index)
        for attempt in range(_SCENE_TRIES):
            sample = self._sample(seed if attempt == 0 else scene_seed(seed, attempt))
            if sample is not None:
                return sample
        raise RuntimeError(
            f"no task of {self.tasks} fits {_SCENE_TRIES} scenes drawn for item {index}; "
            "add more tasks to the weights"
        )

    def _sample(self, seed: int) -> Sample | None:
        # A stream apart from the scene generator's, so the task drawn does not depend on the scene.
        rng = np.random.default_rng([seed, 1])
        require = ()
        if self.require_pairs:
            require = (self.require_pairs[int(rng.integers(len(self.require_pairs)))],)
        scene = generate_scene(seed, self.config, exclude_pairs=self.exclude_pairs, require_pairs=require)
        rendered = render(scene)
        order = rng.choice(len(self.tasks), len(self.tasks), replace=False, p=self.probs)
        for i in order:
            try:
                return build_task(
                    self.tasks[int(i)],
                    scene,
                    rng,
                    rendered=rendered,
                    phrasing=self.phrasing,
                    stats=self.stats,
                    config=self.config,
                    exclude_pairs=self.exclude_pairs,
                    **self.task_options.get(self.tasks[int(i)], {}),
                )
            except TaskNotApplicable:
                continue
        return None
