"""The synthetic-world suite: every world task on held-out test scenes generated deterministically by seed.

Three splits, each scored task by task:

* ``test``: new scenes (a seed stream training never draws from) asked with the training phrasings;
* ``heldout_phrasing``: new scenes asked with the phrasings kept out of training
  (:data:`visionllm2.data.templates.HELDOUT_QUESTIONS`): instruction following, not memorised sentences;
* ``compositional``: scenes that each contain a (kind, colour) pair held out of training
  (:func:`visionllm2.data.synthetic.world.heldout_pairs` of the training seed).

Tasks and metrics: ``vqa`` (exact match after VQA normalisation, per question type; also the share of
answers of the asked kind, right or wrong), ``pope`` (accuracy,
precision, recall, F1, yes-ratio), ``mc`` (option-letter accuracy), ``det`` (box AP / AP50), ``inst_seg``
(box and mask AP), ``sem_seg`` (mIoU over the world's categories, background ignored), ``grd`` (REC
Acc@0.5), ``ref_seg`` (Acc@0.5, cIoU, gIoU), ``region_recog`` (accuracy), ``pose`` (keypoint OKS AP),
``gen`` and ``edit`` (verifier accuracy: the shapes recovered from the produced image against the expected
ones; an edit counts only when the requested change is found in it; a generation also reports the
share of requested shapes whose colour, colour and kind, and colour in its grid cell it holds). A task
whose decoder (or region encoder) the model lacks is reported as ``"not available (…)"``.
"""

from __future__ import annotations

import dataclasses
import re
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from visionllm2.config import ROUTING_TOKENS
from visionllm2.data import builders as B
from visionllm2.data import templates as T
from visionllm2.data.formats.benchmarks import CHOICE_ANSWER, SHORT_ANSWER
from visionllm2.data.formats.common import atomic_save_image, read_json
from visionllm2.data.processor import link_name
from visionllm2.data.sample import Sample
from visionllm2.data.synthetic.tasks import MC_TYPES, REGION_KINDS, VQA_TYPES, TaskNotApplicable, build_task
from visionllm2.data.synthetic.verifier import (
    RECALL_PARTS,
    attribute_recall,
    edit_change_found,
    expected_shapes,
    find_shapes,
    match_shapes,
)
from visionllm2.data.synthetic.world import (
    CATEGORIES,
    COLOURS,
    EDIT_OPS,
    FIGURES,
    KINDS,
    POSITIONS,
    WORDS,
    Rendered,
    Scene,
    WorldConfig,
    generate_scene,
    heldout_pairs,
    render,
)
from visionllm2.evaluation.choice import extract_choice
from visionllm2.evaluation.detection import coco_evaluate, ground_truth_from_targets
from visionllm2.evaluation.grounding import rec_accuracy, referring_segmentation_scores
from visionllm2.evaluation.pope import pope_scores
from visionllm2.evaluation.runner import Benchmark, EvalItem
from visionllm2.evaluation.segmentation import confusion_matrix
from visionllm2.evaluation.suites import (
    LINK_MODES,
    clean_answer,
    count_links,
    detection_from_record,
    detection_records,
    miou_scores,
    semantic_from_record,
    semantic_record,
    through_last_link,
)
from visionllm2.evaluation.vqa import normalize_answer
from visionllm2.inference.results import Detection, GeneratedImage, Result
from visionllm2.modeling.model import VisionLLM2Model

__all__ = [
    "WORLD_TASKS",
    "WORLD_SPLITS",
    "DEFAULT_NUM",
    "WorldSuite",
    "link_names",
    "label_in_answer",
    "answer_of_kind",
    "semantic_confusion",
]

WORLD_TASKS: tuple[str, ...] = (
    "vqa", "pope", "mc", "det", "inst_seg", "sem_seg", "grd", "ref_seg", "region_recog", "pose", "gen",
    "edit",
)  # fmt: skip
WORLD_SPLITS: tuple[str, ...] = ("test", "heldout_phrasing", "compositional")
DEFAULT_NUM = 50  # items per task and split
# Which routing family each perception task needs a decoder for.
TASK_FAMILY = {
    "det": "det", "inst_seg": "seg", "sem_seg": "seg", "grd": "grd", "ref_seg": "grd",
    "pose": "pose", "gen": "gen", "edit": "edit",
}  # fmt: skip
TEXT_TASKS = ("vqa", "pope", "mc", "region_recog")
# The number summary.md shows per task.
HEADLINE = {
    "vqa": "accuracy", "pope": "f1", "mc": "accuracy", "det": "box_AP", "inst_seg": "mask_AP",
    "sem_seg": "mIoU", "grd": "accuracy", "ref_seg": "cIoU", "region_recog": "accuracy",
    "pose": "keypoint_AP", "gen": "verifier_accuracy", "edit": "verifier_accuracy",
}  # fmt: skip
# Every figure's keypoint names, the order pose AP is computed in: not only those of the ground truth
# present, since a batch of scenes without figures still has to place the predicted keypoints.
POSE_KEYPOINT_NAMES: tuple[str, ...] = tuple(dict.fromkeys(n for kps, _ in FIGURES.values() for n in kps))
# A separate seed stream: training draws scene i from SeedSequence([seed, i]), so these never coincide.
_EVAL_STREAM = 0x5EEDE7A1
# Room for a whole answer sentence under a byte-level tokenizer ("The correct option is C." is 24
# tokens): a short answer that is cut off scores as wrong.
_SHORT_TOKENS = 48
_MAX_TRIES = 40  # scenes tried per item before giving up on a task that rarely applies
_ROUTING_RE = re.compile("|".join(re.escape(t) for t in ROUTING_TOKENS.values()))
_FAMILY_OF_TOKEN = {t: f for f, t in ROUTING_TOKENS.items()}
# The values each VQA question type is answered with (after VQA normalisation; counts are digits).
_VQA_ANSWER_VALUES: dict[str, frozenset[str]] = {
    "colour": frozenset(COLOURS),
    "shape": frozenset(KINDS),
    "position": frozenset(POSITIONS),
    "relation": frozenset({"yes", "no"}),
    "text": frozenset(WORDS),
}


def answer_of_kind(vqa_type: str, answer: str) -> bool:
    """Whether ``answer`` is a value of the kind ``vqa_type`` asks for (a colour for a colour
    question, a number for a count), right or wrong: an answer of the wrong kind shows the question
    itself was not followed, whatever the image."""
    a = normalize_answer(answer)
    if vqa_type == "count":
        return a.isdigit()
    return a in _VQA_ANSWER_VALUES[vqa_type]


def link_names(answer: str) -> list[tuple[str, str]]:
    """(family, name) of every routing token of an answer, named as the processor names them."""
    out, start = [], 0
    for m in _ROUTING_RE.finditer(answer):
        out.append((_FAMILY_OF_TOKEN[m.group(0)], link_name(answer[start : m.start()])))
        start = m.end()
    return out


def label_in_answer(label: str, answer: str) -> bool:
    """Region recognition: the label's words appear, in order and as whole words, in the answer (both
    VQA-normalised), so "It is a circle." names "circle"; "circles" does not."""
    want, have = normalize_answer(label), normalize_answer(answer)
    return bool(want) and f" {want} " in f" {have} "


def _pct(x: float) -> float:
    return 100.0 * float(x)


def _unavailable(why: str) -> str:
    return f"not available ({why})"


@dataclasses.dataclass
class _Case:
    """One built world item: the question sample and what scoring needs."""

    split: str
    task: str
    sample: Sample
    forced: str
    ref: dict[str, Any]


def _outside_error(image: Any, target: Any, shapes: list[dict[str, Any] | None], margin: int = 3) -> float:
    """Mean absolute pixel error (0-1) between an edited image and its target outside the edited
    shape's boxes before and after the edit (grown by ``margin`` px): what the edit should keep."""
    a = np.asarray(image.convert("RGB"), np.float32) / 255.0
    b = np.asarray(target.convert("RGB"), np.float32) / 255.0
    keep = np.ones(a.shape[:2], bool)
    for e in shapes:
        if e is not None:
            (cx, cy), half = e["centre"], e["size"] / 2 + margin
            keep[
                max(0, int(cy - half)) : int(np.ceil(cy + half)),
                max(0, int(cx - half)) : int(np.ceil(cx + half)),
            ] = False
    return float(np.abs(a - b)[keep].mean())


def semantic_confusion(group: Sequence[tuple[Any, Mapping[str, Any]]]) -> np.ndarray:
    """(C+1, C+1) pixel counts over the categories, true class by predicted class (the last: no class),
    background ignored, from semantic items' cases and their records."""
    c = len(CATEGORIES)
    cm = np.zeros((c + 1, c + 1), dtype=np.int64)
    for case, rec in group:
        gt = case.ref["semantic"]
        pred = semantic_from_record(rec["semantic"], list(CATEGORIES), (gt.shape[1], gt.shape[0]))
        cm += confusion_matrix(pred, gt, num_classes=c + 1, reduce_zero=True)
    return cm


class WorldSuite(Benchmark):
    """Every world task on deterministic held-out scenes (see the module docs).

    ``data``: optional folder written by ``visionllm2 data synth``; its ``manifest.json`` gives the
    training seed (hence the held-out pairs) and the image size. Without it, ``seed`` (default 0) and
    128-pixel scenes. ``limit`` is the number of items per task and split (default 50).
    """

    def __init__(
        self,
        *,
        name: str = "world",
        data: str | Path | None = None,
        limit: int | None = None,
        links: str = "forced",
        seed: int | None = None,
        tasks: Sequence[str] | str | None = None,
        splits: Sequence[str] | str | None = None,
    ) -> None:
        if links not in LINK_MODES:
            raise ValueError(f"links must be one of {LINK_MODES}, got {links!r}")
        self.name, self.links = name, links
        self.num = DEFAULT_NUM if limit is None else limit
        if self.num < 1:
            raise ValueError(f"the world suite needs at least one item per task, got limit={limit}")
        image_size, held = 128, None
        if data is not None:
            manifest_path = Path(data) / "manifest.json"
            if not manifest_path.is_file():
                raise FileNotFoundError(
                    f"{manifest_path} not found: --data for the world suite is a folder written by "
                    "`visionllm2 data synth` (or leave --data out and pass --seed)"
                )
            manifest = read_json(manifest_path)
            if seed is not None and seed != manifest["seed"]:
                raise ValueError(
                    f"--seed {seed} contradicts the dataset's seed {manifest['seed']} ({manifest_path})"
                )
            seed = int(manifest["seed"])
            image_size = int(manifest["image_size"])
            held = frozenset(tuple(p) for p in manifest["heldout_pairs"])
        self.seed = 0 if seed is None else int(seed)
        self.held = held if held is not None else heldout_pairs(self.seed)
        self.config = WorldConfig(width=image_size, height=image_size)
        self.tasks = self._choose(tasks, WORLD_TASKS, "task")
        self.splits = self._choose(splits, WORLD_SPLITS, "split")
        if "compositional" in self.splits and not self.held:
            raise ValueError(
                "the compositional split needs held-out (kind, colour) pairs; the dataset has none"
            )
        self._scenes: dict[tuple[str, int], tuple[Scene, Rendered]] = {}
        self._stats: dict[str, B.ObjectStats] = {}
        self._cases: dict[str, _Case] = {}
        self._unavailable: dict[str, str] = {}

    @staticmethod
    def _choose(value: Sequence[str] | str | None, known: tuple[str, ...], what: str) -> tuple[str, ...]:
        if value is None:
            return known
        chosen = [v.strip() for v in value.split(",")] if isinstance(value, str) else list(value)
        wrong = [v for v in chosen if v not in known]
        if wrong or not chosen:
            raise ValueError(f"unknown world {what}(s) {wrong}; choose from {', '.join(known)}")
        return tuple(v for v in known if v in chosen)

    def settings(self) -> dict[str, Any]:
        # Not the number of items: a longer run extends a shorter one (item k never depends on it).
        return {
            "seed": self.seed,
            "image_size": self.config.width,
            "links": self.links,
            "tasks": ",".join(self.tasks),
            "splits": ",".join(self.splits),
        }

    # -- scenes -------------------------------------------------------------------------------
    def scene(self, split: str, j: int) -> tuple[Scene, Rendered]:
        key = (split, j)
        if key not in self._scenes:
            si = WORLD_SPLITS.index(split)
            seed = int(np.random.SeedSequence([self.seed, _EVAL_STREAM, si, j]).generate_state(1)[0])
            if split == "compositional":
                pairs = sorted(self.held)
                scene = generate_scene(seed, self.config, require_pairs=(pairs[j % len(pairs)],))
            else:
                scene = generate_scene(seed, self.config, exclude_pairs=self.held)
            self._scenes[key] = (scene, render(scene))
        return self._scenes[key]

    def pope_stats(self, split: str) -> B.ObjectStats:
        """Object frequencies of the split's scenes ("popular" negatives rank by these, as POPE ranks by
        the evaluated dataset's annotations)."""
        if split not in self._stats:
            sets = []
            for j in range(max(64, 2 * self.num)):
                scene, _ = self.scene(split, j)
                sets.append(
                    {f"{s.colour} {s.kind}" for s in scene.shapes} | {f.category for f in scene.figures}
                )
            self._stats[split] = B.ObjectStats.from_sets(sets)
        return self._stats[split]

    # -- items --------------------------------------------------------------------------------
    def _why_unavailable(self, model: VisionLLM2Model, task: str) -> str | None:
        fam = TASK_FAMILY.get(task)
        if fam is not None:
            fc = model.config.families.get(fam)
            if fc is None or fc.decoder is None:
                return f"model has no {fam} decoder"
        if task == "region_recog" and model.region_encoder is None:
            return "model has no region encoder"
        return None

    def items(self, model: VisionLLM2Model) -> list[EvalItem]:
        out: list[EvalItem] = []
        for split in self.splits:
            for task in self.tasks:
                why = self._why_unavailable(model, task)
                if why is not None:
                    self._unavailable[task] = _unavailable(why)
                    continue
                for case_uid, case in self._task_cases(split, task):
                    self._cases[case_uid] = case
                    generated = self.links == "generated" and task not in TEXT_TASKS
                    out.append(
                        EvalItem(
                            uid=case_uid,
                            sample=lambda c=case: c.sample,
                            forced="" if generated else case.forced,
                            max_new_tokens=_SHORT_TOKENS if task in TEXT_TASKS or not generated else 256,
                            run_decoders=task not in TEXT_TASKS,
                            ref=case,
                        )
                    )
        return out

    def _task_cases(self, split: str, task: str) -> list[tuple[str, _Case]]:
        """The first ``num`` items of a task: item k tries scenes from where item k-1 stopped, so the
        first n items are the same whatever ``num`` is (a longer run resumes a shorter one)."""
        phrasing = "heldout" if split == "heldout_phrasing" else "train"
        ti = WORLD_TASKS.index(task)
        out, j, misses = [], 0, 0
        while len(out) < self.num:
            scene, rendered = self.scene(split, j)
            rng = np.random.default_rng([int(scene.seed or 0), ti, 1])
            k = len(out)
            try:
                case = self._build(split, task, k, scene, rendered, rng, phrasing)
            except TaskNotApplicable:
                case = None
            if case is None:
                misses += 1
                if misses > _MAX_TRIES * self.num:
                    raise RuntimeError(f"world task {task!r} applies to too few {split} scenes")
            else:
                out.append((f"{split}/{task}/{j}", case))
            j += 1
        return out

    def _build(
        self,
        split: str,
        task: str,
        k: int,
        scene: Scene,
        rendered: Rendered,
        rng: np.random.Generator,
        phrasing: str,
    ) -> _Case:
        def make(t: str, **options: Any) -> Sample:
            return build_task(
                t,
                scene,
                rng,
                rendered=rendered,
                phrasing=phrasing,
                config=self.config,  # type: ignore[arg-type]
                exclude_pairs=self.held if split != "compositional" else frozenset(),
                **options,
            )

        def ask(s: Sample, suffix: str | None = None) -> Sample:
            """The question alone (the answer turn dropped), with the benchmark's answer instruction."""
            user = s.conversation[0]
            text = user.content
            if suffix and suffix not in text and not any(x in text for x in T.SHORT_ANSWER_SUFFIXES):
                text = f"{text} {suffix}"
            return dataclasses.replace(s, conversation=[dataclasses.replace(user, content=text)], targets=[])

        if task == "vqa":
            kind = VQA_TYPES[k % len(VQA_TYPES)]
            s = make("vqa", vqa_type=kind)
            return _Case(split, task, ask(s, SHORT_ANSWER), "", {"answer": s.meta["answer"], "type": kind})
        if task == "pope":
            pope_type = B.POPE_TYPES[(k // 2) % len(B.POPE_TYPES)]
            s = build_task(
                "pope",
                scene,
                rng,
                rendered=rendered,
                phrasing=phrasing,  # type: ignore[arg-type]
                stats=self.pope_stats(split),
                pope_type=pope_type,
                present=k % 2 == 0,
            )
            return _Case(
                split, task, ask(s, SHORT_ANSWER), "", {"label": s.meta["answer"], "type": pope_type}
            )
        if task == "mc":
            s = make("mc", mc_type=MC_TYPES[k % len(MC_TYPES)])
            letters = B.OPTION_LETTERS[: len(s.meta["options"])]
            ref = {"answer": s.meta["answer"], "options": dict(zip(letters, s.meta["options"]))}
            return _Case(split, task, ask(s, CHOICE_ANSWER), "", ref)
        if task == "region_recog":
            s = make("region_recog", region_kind=REGION_KINDS[k % len(REGION_KINDS)])
            return _Case(split, task, ask(s), "", {"answer": s.meta["answer"], "kind": s.meta["region_kind"]})
        if task in ("det", "inst_seg", "pose"):
            s = make(task)
            links = link_names(s.conversation[-1].content)
            names, families = [n for _, n in links], [f for f, _ in links]
            gts = ground_truth_from_targets(names, families, s.targets)
            token = ROUTING_TOKENS[families[0]]
            if task == "pose":
                # Class link then its keypoint links, one group per category (targets None = keypoint links).
                groups: list[list[str]] = []
                for name, tgt in zip(names, s.targets):
                    if tgt is not None:
                        groups.append([])
                    groups[-1].append(f"{name}{token}")
                forced = ", ".join(" ".join(g) for g in groups)
            else:
                forced = T.link_list(names, token)
            ref = {"names": names, "gt": gts, "size": rendered.image.size}
            return _Case(split, task, ask(s), forced, ref)
        if task == "sem_seg":
            names = self.semantic_classes(k, rendered)
            classes = [(c, rendered.semantic == CATEGORIES.index(c) + 1) for c in names]
            s = B.semantic_sample(rendered.image, classes, rng, phrasing=phrasing)  # type: ignore[arg-type]
            forced = T.link_list(list(names), ROUTING_TOKENS["seg"])
            return _Case(split, task, ask(s), forced, {"semantic": rendered.semantic})
        if task in ("grd", "ref_seg"):
            s = make(task)
            tgt = s.targets[0]
            assert tgt is not None and tgt.boxes is not None
            ref = {
                "box": [float(v) for v in tgt.boxes[0]],
                "mask": None if tgt.masks is None else tgt.masks[0],
                "expression": s.meta["expression"],
            }
            forced = through_last_link(T.ANSWERS[task][0].format(expr=s.meta["expression"]))
            return _Case(split, task, ask(s), forced, ref)
        if task == "gen":
            s = make("gen")
            ref = {"expected": expected_shapes(scene), "size": (scene.width, scene.height)}
            forced = through_last_link(T.ANSWERS["gen"][0].format(caption=B.request(s.meta["caption"])))
            return _Case(split, task, ask(s), forced, ref)
        if task == "edit":
            s = make("edit", op=EDIT_OPS[k % len(EDIT_OPS)])
            target = s.targets[0].image  # type: ignore[union-attr]
            # The expected shapes are what the verifier recovers from the exact target rendering, so an
            # output equal to the target scores exactly 1.
            expected = [
                {"kind": f.kind, "colour": f.colour, "centre": f.centre, "position": f.position}
                for f in find_shapes(target)
            ]
            ref = {
                "expected": expected,
                "size": target.size,
                "op": s.meta["op"],
                "before": s.meta["before"],
                "after": s.meta["after"],
                "target": target,
            }
            return _Case(split, task, ask(s), through_last_link(T.ANSWERS["edit"][0]), ref)
        raise ValueError(f"unknown world task {task!r}")

    def semantic_classes(self, k: int, rendered: Rendered) -> tuple[str, ...]:
        """The classes semantic item ``k`` asks for: every category, so mIoU covers the whole label set
        (background ignored). ``benchmarks/semantic_label_set.py`` asks for fewer."""
        return CATEGORIES

    # -- records ------------------------------------------------------------------------------
    def record(self, item: EvalItem, result: Result, *, out_dir: Path) -> dict[str, Any]:
        case: _Case = item.ref
        rec: dict[str, Any] = {"text": result.text}
        if case.task in TEXT_TASKS:
            rec["answer"] = clean_answer(result.text)
        elif case.task in ("det", "inst_seg", "pose"):
            rec["detections"] = detection_records(result, count_links(item.forced) if item.forced else None)
        elif case.task == "sem_seg":
            rec["semantic"] = semantic_record(result)
        elif case.task in ("grd", "ref_seg"):
            dets = [i for i in result.items if isinstance(i, Detection) and i.link == 0]
            best = max(dets, key=lambda d: d.score, default=None)
            rec["box"] = None if best is None else [float(v) for v in best.box]
            rec["mask"] = None if best is None else best.mask
        else:  # gen, edit: keep the image, score it now (the verifier needs the pixels)
            image = next((i.image for i in result.items if isinstance(i, GeneratedImage)), None)
            rec["image"] = None
            rec["verifier"] = None
            if image is not None:
                rel = Path("images") / f"{item.uid.replace('/', '__')}.png"
                atomic_save_image(out_dir / rel, image.convert("RGB"))
                rec["image"] = str(rel)
                rec["verifier"] = self._verify(case, image)
        return rec

    @staticmethod
    def _verify(case: _Case, image: Any) -> dict[str, Any]:
        """Verifier scores of one produced image, analysed at the world's resolution: a smaller image
        (a decoder that samples at 32 or 64 px) is upsampled bicubic first. Shapes of a few pixels
        defeat the template fit, so the exact target rendering shrunk to 32 px scores 32% as is and
        86% upsampled (``benchmarks/verifier_ceiling.py``); the score then measures the drawing,
        not the pixel count."""
        size = tuple(case.ref["size"])
        image = image.convert("RGB")
        if image.size != size:
            image = image.resize(size, Image.BICUBIC)
        # A caption fixes each shape's grid cell, not its exact centre; an edit must keep the layout.
        tolerance = 10.0 if case.task == "gen" else 0.1
        found = find_shapes(image, denoise=True)
        m = match_shapes(found, case.ref["expected"], width=size[0], height=size[1], tolerance=tolerance)
        out = {
            "accuracy": m["accuracy"],
            "matched": m["matched"],
            "missed": len(m["missed"]),
            "extra": len(m["extra"]),
        }
        if case.task == "gen":
            out["found"] = [{"kind": f.kind, "colour": f.colour, "position": f.position} for f in found]
        else:
            ref = case.ref
            out["changed"] = edit_change_found(
                found, ref["op"], ref["before"], ref["after"], width=size[0], height=size[1]
            )
            out["outside_error"] = _outside_error(image, ref["target"], [ref["before"], ref["after"]])
        return out

    # -- scores -------------------------------------------------------------------------------
    def markdown(self, scores: Mapping[str, Any]) -> str | None:
        """Tasks down, splits across, each cell the task's headline metric (in percent)."""
        lines = [
            "| task | metric | " + " | ".join(self.splits) + " |",
            "|---|---|" + "---|" * len(self.splits),
        ]
        for task in self.tasks:
            metric = HEADLINE[task]
            cells = []
            for split in self.splits:
                value = scores[split][task]
                if isinstance(value, str):
                    cells.append(value)
                else:
                    v = value.get(metric)
                    cells.append(v if isinstance(v, str) else "—" if v is None else f"{v:.1f}")
            lines.append(f"| {task} | {metric} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def score(self, items: Sequence[EvalItem], records: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
        by_group: dict[tuple[str, str], list[tuple[_Case, dict[str, Any]]]] = defaultdict(list)
        for it in items:
            case: _Case = it.ref
            by_group[(case.split, case.task)].append((case, records[it.uid]))
        scores: dict[str, Any] = {}
        for split in self.splits:
            per: dict[str, Any] = {}
            for task in self.tasks:
                if task in self._unavailable:
                    per[task] = self._unavailable[task]
                    continue
                group = by_group.get((split, task), [])
                per[task] = self._score_task(task, group) if group else _unavailable("no items")
            scores[split] = per
        return scores

    def _score_task(self, task: str, group: list[tuple[_Case, dict[str, Any]]]) -> dict[str, Any] | str:
        n = len(group)
        if task == "vqa":
            right: dict[str, list[bool]] = defaultdict(list)
            of_kind: dict[str, list[bool]] = defaultdict(list)
            for c, r in group:
                right[c.ref["type"]].append(
                    normalize_answer(r["answer"]) == normalize_answer(c.ref["answer"])
                )
                of_kind[c.ref["type"]].append(answer_of_kind(c.ref["type"], r["answer"]))
            flat = [v for vs in right.values() for v in vs]
            return {
                "accuracy": _pct(np.mean(flat)),
                "per_type": {t: _pct(np.mean(v)) for t, v in sorted(right.items())},
                # The share of answers of the asked kind, right or wrong (see answer_of_kind).
                "answer_of_kind": _pct(np.mean([v for vs in of_kind.values() for v in vs])),
                "per_type_answer_of_kind": {t: _pct(np.mean(v)) for t, v in sorted(of_kind.items())},
                "num": n,
            }
        if task == "pope":
            s = pope_scores([r["answer"] for _, r in group], [c.ref["label"] for c, _ in group])
            out: dict[str, Any] = {
                k: _pct(getattr(s, k)) for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")
            }
            by_type: dict[str, list[tuple[str, str]]] = defaultdict(list)
            for c, r in group:
                by_type[c.ref["type"]].append((r["answer"], c.ref["label"]))
            out["per_type_f1"] = {
                t: _pct(pope_scores([p for p, _ in v], [y for _, y in v]).f1)
                for t, v in sorted(by_type.items())
            }
            return {**out, "num": n}
        if task == "mc":
            ok = [extract_choice(r["answer"], c.ref["options"]) == c.ref["answer"] for c, r in group]
            return {"accuracy": _pct(np.mean(ok)), "num": n}
        if task == "region_recog":
            ok = [label_in_answer(c.ref["answer"], r["answer"]) for c, r in group]
            return {"accuracy": _pct(np.mean(ok)), "num": n}
        if task in ("det", "inst_seg", "pose"):
            return self._score_detection(task, group)
        if task == "sem_seg":
            if all(r["semantic"] is None for _, r in group):
                return _unavailable("the seg decoder returns no semantic maps")
            ms = miou_scores(semantic_confusion(group), list(CATEGORIES))
            return {"mIoU": ms["mIoU"], "mAcc": ms["mAcc"], "aAcc": ms["aAcc"], "num": n}
        if task in ("grd", "ref_seg"):
            out = {
                "accuracy": _pct(rec_accuracy([r["box"] for _, r in group], [c.ref["box"] for c, _ in group]))
            }
            if task == "ref_seg":
                masks = [r["mask"] for _, r in group]
                if all(m is None for m in masks):
                    out["masks"] = _unavailable("the grd decoder returns no masks")
                else:
                    seg = referring_segmentation_scores(masks, [c.ref["mask"] for c, _ in group])
                    out.update({k: _pct(v) for k, v in seg.items()})
            return {**out, "num": n}
        # gen / edit
        vs = [r["verifier"] for _, r in group]
        shape_acc = [0.0 if v is None else float(v["accuracy"]) for v in vs]
        # Records from an older visionllm2 lack what the scores below read.
        needs, lacks = ("found", "the shapes found") if task == "gen" else ("changed", "the change found")
        if any(v is not None and needs not in v for v in vs):
            raise ValueError(
                f"{task} records without {needs!r} come from an older visionllm2 that did not record "
                f"{lacks}; rerun the evaluation with --overwrite"
            )
        if task == "gen":
            accs = shape_acc
            # Partial credit: the share of requested shapes whose colour (colour and kind, colour in
            # its grid cell) the image holds; and the same images against the next item's request,
            # the level that a drawing which ignores its request reaches.
            requests = [c.ref["expected"] for c, _ in group]
            extra: dict[str, Any] = {}
            for suffix, asked in (("", requests), ("_other_request", requests[1:] + requests[:1])):
                recalls = [
                    dict.fromkeys(RECALL_PARTS, 0.0) if v is None else attribute_recall(v["found"], e)
                    for v, e in zip(vs, asked)
                ]
                for part in RECALL_PARTS:
                    extra[f"{part}_recall{suffix}"] = _pct(np.mean([r[part] for r in recalls]))
        else:
            # An edit scores its shape accuracy only when the requested change is found: an image
            # returned unchanged keeps most shapes (60% of them on the test split) and changes nothing.
            changed = [v is not None and bool(v["changed"]) for v in vs]
            accs = [a if c else 0.0 for a, c in zip(shape_acc, changed)]
            errors = [v["outside_error"] for v in vs if v is not None]
            extra = {
                "change_rate": _pct(np.mean(changed)),
                "shape_accuracy": _pct(np.mean(shape_acc)),
                "outside_error": float(np.mean(errors)) if errors else None,
            }
        return {
            "verifier_accuracy": _pct(np.mean(accs)),
            "exact": _pct(np.mean([a == 1.0 for a in accs])),
            **extra,
            "no_image": sum(v is None for v in vs),
            "num": n,
        }

    def _score_detection(self, task: str, group: list[tuple[_Case, dict[str, Any]]]) -> dict[str, Any] | str:
        preds = [[detection_from_record(d) for d in r["detections"]] for _, r in group]
        gts = [c.ref["gt"] for c, _ in group]
        sizes = [c.ref["size"] for c, _ in group]
        flat = [d for p in preds for d in p]
        out: dict[str, Any] = {}
        if task == "pose":
            if flat and any(d.keypoints is None for d in flat):
                return _unavailable("the pose decoder returns no keypoints")
            raw = coco_evaluate(
                preds, gts, sizes, iou_types=("keypoints",), keypoint_names=POSE_KEYPOINT_NAMES
            )
            out = {"keypoint_AP": raw["keypoints/AP"], "keypoint_AP50": raw["keypoints/AP50"]}
        else:
            raw = coco_evaluate(preds, gts, sizes, iou_types=("bbox",))
            out = {"box_AP": raw["bbox/AP"], "box_AP50": raw["bbox/AP50"]}
            if task == "inst_seg":
                if flat and any(d.mask is None for d in flat):
                    out["mask_AP"] = _unavailable("the seg decoder returns no masks")
                else:
                    segm = coco_evaluate(preds, gts, sizes, iou_types=("segm",))
                    out["mask_AP"], out["mask_AP50"] = segm["segm/AP"], segm["segm/AP50"]
        # coco_evaluate: fractions, -1 where undefined (no ground truth at all).
        out = {
            k: (None if isinstance(v, float) and v < 0 else _pct(v) if isinstance(v, float) else v)
            for k, v in out.items()
        }
        return {**out, "num": len(group), "num_detections": len(flat)}
