"""Dataset-agnostic sample builders: annotated objects -> :class:`Sample` for every task.

The synthetic world and the real-format loaders (COCO, RefCOCO, ADE20K, pairs) share these,
so a detection sample from COCO and one from the world have the same text and targets.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image

from visionllm2.config import IMAGE_TOKEN, REGION_TOKEN, ROUTING_TOKENS
from visionllm2.data import templates as T
from visionllm2.data.sample import LinkTarget, RegionPrompt, Sample, Turn

IMAGE_PREFIX = f"{IMAGE_TOKEN}\n"
OPTION_LETTERS = ("A", "B", "C", "D")


@dataclass
class ObjectAnn:
    """One annotated object of an image, whatever dataset it came from.

    ``box`` is xyxy in pixels; ``mask`` the visible pixels; ``keypoints`` (P, 3) x, y, v with
    v = 0 not labelled, 1 labelled but hidden, 2 visible (COCO convention).
    """

    label: str
    box: np.ndarray  # (4,) float32 xyxy
    mask: np.ndarray | None = None  # (H, W) bool
    keypoints: np.ndarray | None = None  # (P, 3) float32
    attributes: dict[str, Any] = field(default_factory=dict)


def _boxes(objects: list[ObjectAnn]) -> np.ndarray:
    if not objects:
        return np.zeros((0, 4), dtype=np.float32)
    return np.stack([np.asarray(o.box, dtype=np.float32).reshape(4) for o in objects])  # (n, 4)


def _masks(objects: list[ObjectAnn], size: tuple[int, int]) -> np.ndarray:
    w, h = size
    if not objects:
        return np.zeros((0, h, w), dtype=bool)
    out = []
    for o in objects:
        if o.mask is None:
            raise ValueError(f"object {o.label!r} has no mask but a mask target was asked for")
        if o.mask.shape != (h, w):
            raise ValueError(f"mask of {o.label!r} has shape {o.mask.shape}, image is (h, w) = {(h, w)}")
        out.append(o.mask.astype(bool))
    return np.stack(out)  # (n, H, W)


def _conversation(question: str, answer: str, *, with_image: bool) -> list[Turn]:
    prefix = IMAGE_PREFIX if with_image else ""
    return [Turn("user", prefix + question), Turn("assistant", answer)]


def _lc(text: str) -> str:
    return text[:1].lower() + text[1:]


def request(caption: str) -> str:
    """A caption as a text-to-image answer restates it: ``"A red star."`` -> ``"a red star"``."""
    return _lc(caption.strip()).rstrip(".")


def qa_sample(
    image: Image.Image, question: str, answer: str, *, task: str = "vqa", meta: dict[str, Any] | None = None
) -> Sample:
    """A single-turn, text-answer sample."""
    return Sample([image], _conversation(question, answer, with_image=True), task=task, meta=dict(meta or {}))


def caption_sample(
    image: Image.Image,
    caption: str,
    rng: np.random.Generator,
    *,
    phrasing: T.Phrasing = "train",
    meta: dict[str, Any] | None = None,
) -> Sample:
    q = T.question("caption", rng, phrasing=phrasing)
    a = T.answer("caption", rng, phrasing=phrasing, caption=caption, caption_lc=_lc(caption))
    return qa_sample(image, q, a, task="caption", meta={"answer": caption, **(meta or {})})


def detection_sample(
    image: Image.Image,
    groups: list[tuple[str, list[ObjectAnn]]],
    rng: np.random.Generator,
    *,
    phrasing: T.Phrasing = "train",
    segment: bool = False,
    meta: dict[str, Any] | None = None,
) -> Sample:
    """Detection (``[DET]``, boxes) or instance segmentation (``[SEG]``, boxes + masks).

    ``groups`` is the asked class names, each with its objects (empty list: absent class);
    one link per name, in the given order.
    """
    if not groups:
        raise ValueError("detection_sample needs at least one class name")
    names = [n for n, _ in groups]
    task = "inst_seg" if segment else "det"
    token = ROUTING_TOKENS["seg" if segment else "det"]
    q = T.question(task, rng, phrasing=phrasing, names=T.join_names(names))
    a = T.answer(task, rng, phrasing=phrasing, links=T.link_list(names, token))
    targets: list[LinkTarget | None] = [
        LinkTarget(boxes=_boxes(objs), masks=_masks(objs, image.size) if segment else None)
        for _, objs in groups
    ]
    return Sample([image], _conversation(q, a, with_image=True), targets, task=task, meta=dict(meta or {}))


def semantic_sample(
    image: Image.Image,
    classes: list[tuple[str, np.ndarray]],
    rng: np.random.Generator,
    *,
    phrasing: T.Phrasing = "train",
    meta: dict[str, Any] | None = None,
) -> Sample:
    """Semantic segmentation: one ``[SEG]`` link per class with its class-wide (H, W) map.

    A present class gets ``masks`` (1, H, W) and its map's box (1, 4); an absent class gets
    (0, H, W) and (0, 4), like an absent detection class.
    """
    if not classes:
        raise ValueError("semantic_sample needs at least one class")
    w, h = image.size
    names = [n for n, _ in classes]
    q = T.question("sem_seg", rng, phrasing=phrasing, names=T.join_names(names))
    a = T.answer("sem_seg", rng, phrasing=phrasing, links=T.link_list(names, ROUTING_TOKENS["seg"]))
    targets: list[LinkTarget | None] = []
    for name, m in classes:
        m = np.asarray(m, dtype=bool)
        if m.shape != (h, w):
            raise ValueError(f"semantic map of {name!r} has shape {m.shape}, image is (h, w) = {(h, w)}")
        if m.any():
            ys, xs = np.nonzero(m)
            box = np.array([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=np.float32)
            targets.append(LinkTarget(boxes=box, masks=m[None], semantic=True))
        else:
            targets.append(
                LinkTarget(boxes=np.zeros((0, 4), np.float32), masks=np.zeros((0, h, w), bool), semantic=True)
            )
    return Sample(
        [image], _conversation(q, a, with_image=True), targets, task="sem_seg", meta=dict(meta or {})
    )


def grounding_sample(
    image: Image.Image,
    expression: str,
    obj: ObjectAnn,
    rng: np.random.Generator,
    *,
    phrasing: T.Phrasing = "train",
    segment: bool = False,
    meta: dict[str, Any] | None = None,
) -> Sample:
    """Referring expression -> box (``grd``) or -> mask (``ref_seg``), both through ``[GRD]``."""
    if any(tok in expression for tok in ROUTING_TOKENS.values()):
        raise ValueError(f"referring expression {expression!r} must not contain routing tokens")
    task = "ref_seg" if segment else "grd"
    q = T.question(task, rng, phrasing=phrasing, expr=expression)
    a = T.answer(task, rng, phrasing=phrasing, expr=expression)
    target = LinkTarget(boxes=_boxes([obj]), masks=_masks([obj], image.size) if segment else None)
    return Sample(
        [image],
        _conversation(q, a, with_image=True),
        [target],
        task=task,
        meta={"expression": expression, **(meta or {})},
    )


def pose_sample(
    image: Image.Image,
    groups: list[tuple[str, tuple[str, ...], list[ObjectAnn]]],
    rng: np.random.Generator,
    *,
    phrasing: T.Phrasing = "train",
    meta: dict[str, Any] | None = None,
) -> Sample:
    """Pose: per category one class link then one link per keypoint name
    (``person[POSE] nose[POSE] left_eye[POSE] ...``). The class link carries boxes and
    keypoints (n, P, 3) in keypoint-name order; the keypoint-name links carry ``None``."""
    if not groups:
        raise ValueError("pose_sample needs at least one category")
    token = ROUTING_TOKENS["pose"]
    parts, targets = [], []
    for category, kp_names, objs in groups:
        p = len(kp_names)
        kps = [np.asarray(o.keypoints, dtype=np.float32) for o in objs]
        for k in kps:
            if k.shape != (p, 3):
                raise ValueError(f"{category!r} object has keypoints of shape {k.shape}, expected ({p}, 3)")
        parts.append(" ".join([f"{category}{token}"] + [f"{n}{token}" for n in kp_names]))
        kp = np.stack(kps) if kps else np.zeros((0, p, 3), np.float32)  # (n, P, 3)
        targets.append(LinkTarget(boxes=_boxes(objs), keypoints=kp))
        targets.extend([None] * p)
    q = T.question("pose", rng, phrasing=phrasing, names=T.join_names([g[0] for g in groups]))
    a = T.answer("pose", rng, phrasing=phrasing, links=", ".join(parts))
    return Sample([image], _conversation(q, a, with_image=True), targets, task="pose", meta=dict(meta or {}))


def region_sample(
    image: Image.Image,
    region: RegionPrompt,
    rng: np.random.Generator,
    *,
    label: str | None = None,
    caption: str | None = None,
    phrasing: T.Phrasing = "train",
    meta: dict[str, Any] | None = None,
) -> Sample:
    """Region recognition (give ``label``) or region captioning (give ``caption``) from a
    visual prompt that replaces ``<region>``."""
    if (label is None) == (caption is None):
        raise ValueError("region_sample needs exactly one of label= (recognition) or caption= (captioning)")
    if label is not None:
        task = "region_recog"
        q = T.question(task, rng, phrasing=phrasing, region=REGION_TOKEN)
        a = T.answer(task, rng, phrasing=phrasing, answer=label, a_answer=T.article(label))
        expected = label
    else:
        assert caption is not None
        task = "region_caption"
        q = T.question(task, rng, phrasing=phrasing, region=REGION_TOKEN)
        a = T.answer(task, rng, phrasing=phrasing, caption=caption, caption_lc=_lc(caption))
        expected = caption
    return Sample(
        [image],
        _conversation(q, a, with_image=True),
        regions=[region],
        task=task,
        meta={"answer": expected, "region_kind": region.kind, **(meta or {})},
    )


def generation_sample(
    caption: str,
    image: Image.Image,
    rng: np.random.Generator,
    *,
    phrasing: T.Phrasing = "train",
    meta: dict[str, Any] | None = None,
) -> Sample:
    """Text -> image through ``[GEN]``; the sample has no input image."""
    q = T.question("gen", rng, phrasing=phrasing, caption=_lc(caption))
    a = T.answer("gen", rng, phrasing=phrasing, caption=request(caption))
    return Sample(
        [],
        _conversation(q, a, with_image=False),
        [LinkTarget(image=image)],
        task="gen",
        meta={"caption": caption, **(meta or {})},
    )


def edit_sample(
    source: Image.Image,
    instruction: str,
    target: Image.Image,
    rng: np.random.Generator,
    *,
    phrasing: T.Phrasing = "train",
    meta: dict[str, Any] | None = None,
) -> Sample:
    """Instruction + source image -> edited image through ``[EDIT]``."""
    if source.size != target.size:
        raise ValueError(f"edit source {source.size} and target {target.size} must have the same size")
    a = T.answer("edit", rng, phrasing=phrasing)
    return Sample(
        [source],
        _conversation(instruction, a, with_image=True),
        [LinkTarget(image=target)],
        task="edit",
        meta={"instruction": instruction, **(meta or {})},
    )


def pope_sample(
    image: Image.Image,
    obj: str,
    present: bool,
    rng: np.random.Generator,
    *,
    phrasing: T.Phrasing = "train",
    meta: dict[str, Any] | None = None,
    short_suffix: str | None = None,
) -> Sample:
    """POPE-style existence question; ``meta['answer']`` is ``"yes"`` or ``"no"``. With
    ``short_suffix`` (a short-answer instruction) the question ends with it and the answer is the
    bare word, as POPE asks at evaluation."""
    word = "yes" if present else "no"
    q = T.question("pope", rng, phrasing=phrasing, obj=obj, a_obj=T.article(obj))
    if short_suffix:
        q, a = f"{q} {short_suffix}", word
    else:
        a = T.answer(word, rng, phrasing=phrasing)
    return qa_sample(image, q, a, task="pope", meta={"answer": word, "object": obj, **(meta or {})})


def multiple_choice_sample(
    image: Image.Image,
    question: str,
    options: list[str],
    correct: int,
    rng: np.random.Generator,
    *,
    phrasing: T.Phrasing = "train",
    meta: dict[str, Any] | None = None,
) -> Sample:
    """Multiple choice with lettered options (A-D); ``meta['answer']`` is the letter."""
    if not 2 <= len(options) <= len(OPTION_LETTERS):
        raise ValueError(f"multiple choice needs 2 to {len(OPTION_LETTERS)} options, got {len(options)}")
    if len(set(options)) != len(options):
        raise ValueError(f"multiple-choice options must be distinct, got {options}")
    if not 0 <= correct < len(options):
        raise ValueError(f"correct option index {correct} is out of range for {len(options)} options")
    lines = "\n".join(f"{OPTION_LETTERS[i]}. {o}" for i, o in enumerate(options))
    q = T.question("mc", rng, phrasing=phrasing, question=question, options=lines)
    letter = OPTION_LETTERS[correct]
    a = T.answer("mc", rng, phrasing=phrasing, letter=letter, option=options[correct])
    return qa_sample(
        image, q, a, task="mc", meta={"answer": letter, "options": list(options), **(meta or {})}
    )


def sample_class_names(
    present: Iterable[str],
    vocabulary: Iterable[str],
    rng: np.random.Generator,
    *,
    max_names: int = 8,
    num_absent: int | None = None,
) -> list[str]:
    """Names to ask for in a detection-style question: present classes (up to ``max_names``)
    plus absent ones, shuffled, so the model learns to answer an empty link."""
    present = sorted(set(present))
    absent = sorted(set(vocabulary) - set(present))
    rng.shuffle(present)
    keep = present[:max_names]
    if num_absent is None:
        room = max(0, max_names - len(keep))
        num_absent = int(rng.integers(0, min(room, len(absent)) + 1)) if room and absent else 0
        if not keep and absent and num_absent == 0:
            num_absent = 1  # never ask for nothing
    chosen = keep + [absent[i] for i in rng.permutation(len(absent))[:num_absent]]
    rng.shuffle(chosen)
    if not chosen:
        raise ValueError("no class names to ask for: the vocabulary is empty")
    return chosen


@dataclass
class ObjectStats:
    """How often each object name occurs in a dataset and with which others (POPE's
    "popular" and "adversarial" negatives are ranked by these)."""

    counts: Counter[str] = field(default_factory=Counter)
    cooccur: Counter[tuple[str, str]] = field(default_factory=Counter)

    @classmethod
    def from_sets(cls, sets: Iterable[Iterable[str]]) -> ObjectStats:
        stats = cls()
        for names in sets:
            names = sorted(set(names))
            stats.counts.update(names)
            stats.cooccur.update((a, b) for a in names for b in names if a != b)
        return stats

    def to_dict(self) -> dict[str, Any]:
        return {
            "counts": dict(self.counts),
            "cooccur": [[a, b, n] for (a, b), n in sorted(self.cooccur.items())],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ObjectStats:
        return cls(Counter(d["counts"]), Counter({(a, b): n for a, b, n in d["cooccur"]}))


POPE_TYPES = ("random", "popular", "adversarial")


def pope_negative(
    kind: str,
    present: Iterable[str],
    vocabulary: Iterable[str],
    rng: np.random.Generator,
    *,
    stats: ObjectStats | None = None,
    related: Callable[[str, str], bool] | None = None,
    top_k: int = 3,
) -> str | None:
    """An absent object name for a POPE negative (Li et al., 2023):

    - random: uniform over absent names;
    - popular: among the ``top_k`` most frequent absent names (needs ``stats``);
    - adversarial: among the ``top_k`` absent names that co-occur most with the present ones
      (``stats``); ``related(absent, present)`` adds names that look alike (e.g. same shape,
      other colour), ranked first.

    Returns ``None`` when nothing is absent.
    """
    present = set(present)
    absent = sorted(set(vocabulary) - present)
    if not absent:
        return None
    if kind == "random":
        return absent[int(rng.integers(len(absent)))]
    if kind not in POPE_TYPES:
        raise ValueError(f"unknown POPE negative type {kind!r}; use one of {POPE_TYPES}")
    if stats is None and (kind == "popular" or related is None):
        raise ValueError(f"POPE {kind!r} negatives need dataset statistics (ObjectStats)")
    # Random tie-breaking, so equal scores do not always give the alphabetically first name.
    jitter = {name: float(rng.random()) for name in absent}
    if kind == "popular":
        assert stats is not None
        scores = {name: float(stats.counts[name]) for name in absent}
    else:
        scores = {}
        for name in absent:
            co = sum(stats.cooccur[(name, p)] for p in present) if stats is not None else 0.0
            rel = sum(1 for p in present if related is not None and related(name, p))
            scores[name] = rel * 1e9 + co
    ranked = sorted(absent, key=lambda n: (-scores[n], jitter[n]))
    top = ranked[: max(1, top_k)]
    return top[int(rng.integers(len(top)))]
