"""The standard benchmarks the runner drives (VQAv2 … MME, COCO, RefCOCO/+/g, ADE20K) and the registry
behind ``visionllm2 eval --benchmark NAME``.

Prompts follow the paper's (LLaVA-1.5) conventions: the text benchmarks use the readers' prompts
(:mod:`visionllm2.data.formats.benchmarks`: short-answer suffix, lettered options); the perception
benchmarks ask with the first (canonical) training phrasing of their task and, by default, force the
answer's link list (``links="forced"``): ``"person[DET], bicycle[DET], …"`` for every class of the
benchmark, ``"OK, {expression} is [GRD]"`` for a referring expression. That is the official protocol
(the decoders see every class, whatever the LLM would have listed); ``links="generated"`` lets the model
write its own answer instead, which tests the whole pipeline end to end.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from visionllm2.config import IMAGE_TOKEN, ROUTING_TOKENS
from visionllm2.data import templates as T
from visionllm2.data.formats.ade20k import (
    IMAGE_SUFFIXES,
    read_class_file,
    read_semantic_png,
    write_semantic_png,
)
from visionllm2.data.formats.benchmarks import BENCHMARK_READERS, BenchmarkItem, read_benchmark
from visionllm2.data.formats.coco import CocoFile
from visionllm2.data.formats.common import FormatError, atomic_write_json, open_image, read_json
from visionllm2.data.formats.refcoco import RefCocoDataset
from visionllm2.data.sample import Sample, Turn
from visionllm2.evaluation.detection import GroundTruth, coco_evaluate
from visionllm2.evaluation.grounding import rec_accuracy, referring_segmentation_scores
from visionllm2.evaluation.runner import Benchmark, EvalItem
from visionllm2.evaluation.segmentation import confusion_matrix, scores_from_confusion
from visionllm2.evaluation.submission import score_benchmark, write_submission
from visionllm2.inference.results import Detection, Result, SemanticMap
from visionllm2.modeling.model import VisionLLM2Model
from visionllm2.ops.masks import mask_to_rle, rle_to_mask

__all__ = [
    "clean_answer",
    "through_last_link",
    "count_links",
    "require_decoder",
    "detection_records",
    "detection_from_record",
    "semantic_record",
    "semantic_from_record",
    "TextBenchmark",
    "CocoBenchmark",
    "RefCocoBenchmark",
    "Ade20kBenchmark",
    "BENCHMARKS",
    "benchmark_options",
    "make_benchmark",
]

LINK_MODES = ("forced", "generated")
# Strings that end a turn in the supported templates; generate() drops the end token itself, but a model
# may spell the marker out as ordinary text.
_END_MARKERS = ("</s>", "<|im_end|>", "<|endoftext|>")
_ROUTING_RE = re.compile("|".join(re.escape(t) for t in ROUTING_TOKENS.values()))


# --------------------------------------------------------------------------- answer extraction


def clean_answer(text: str) -> str:
    """The answer a text benchmark scores, from the raw generated text.

    Routing tokens (``[DET]`` …) and spelled-out end-of-turn markers are removed, and only the first
    non-empty line is kept, stripped: a short-answer prompt wants one line, and whatever a model adds
    after a line break (an explanation, a new turn) is not part of its answer. Benchmark-specific
    extraction runs on this string afterwards: VQA normalisation, the POPE / MME yes-no rules, option
    letters (see ``docs/evaluation.md``).
    """
    for marker in _END_MARKERS:
        text = text.split(marker)[0]
    text = _ROUTING_RE.sub("", text)
    return next((line.strip() for line in text.splitlines() if line.strip()), "")


def through_last_link(text: str) -> str:
    """``"OK, the cat is [GRD]."`` -> ``"OK, the cat is [GRD]"``: an answer cut after its last routing
    token, which is what a forced answer contains (the model writes the rest)."""
    ends = [m.end() for m in _ROUTING_RE.finditer(text)]
    if not ends:
        raise ValueError(f"answer {text!r} has no routing token to force")
    return text[: ends[-1]]


def count_links(text: str) -> int:
    return len(_ROUTING_RE.findall(text))


def require_decoder(model: VisionLLM2Model, family: str, benchmark: str) -> None:
    """A clear error when the model cannot serve a benchmark's links."""
    fam = model.config.families.get(family)
    if fam is None or fam.decoder is None:
        raise ValueError(
            f"benchmark {benchmark!r} needs a decoder for {ROUTING_TOKENS.get(family, family)} links, but "
            f"this model has none (config.families.{family}.decoder is null); evaluate a model with "
            "perception decoders, or a text benchmark"
        )


def _prompt(text: str) -> str:
    return f"{IMAGE_TOKEN}\n{text}"


def _question(key: str, **fields: str) -> str:
    """The canonical (first) training phrasing of a task: deterministic and in-distribution."""
    return T.QUESTIONS[key][0].format(**fields)


def _check_links_mode(links: str) -> str:
    if links not in LINK_MODES:
        raise ValueError(f"links must be one of {LINK_MODES}, got {links!r}")
    return links


# --------------------------------------------------------------------------- record helpers


def detection_records(result: Result, max_link: int | None) -> list[dict[str, Any]]:
    """The result's detections as dicts; with ``max_link`` only those of the first ``max_link`` links
    (the forced ones: links the model added after them are not part of the question)."""
    dets = [i for i in result.items if isinstance(i, Detection)]
    if max_link is not None:
        dets = [d for d in dets if 0 <= d.link < max_link]
    return [d.to_dict() for d in dets]


def detection_from_record(d: Mapping[str, Any]) -> Detection:
    kps = d.get("keypoints")
    return Detection(
        label=str(d["label"]),
        score=float(d["score"]),
        box=[float(v) for v in d["box"]],
        mask=d.get("mask"),
        keypoints=None if kps is None else {k: tuple(float(x) for x in v) for k, v in kps.items()},
    )


def semantic_record(result: Result) -> dict[str, Any] | None:
    """The first semantic map of a result as ``{"size": [w, h], "masks": [{"label", "mask": RLE}]}``."""
    sm = next((i for i in result.items if isinstance(i, SemanticMap)), None)
    if sm is None:
        return None
    h, w = sm.classes.shape
    masks = [
        {"label": label, "mask": mask_to_rle(sm.classes == k)}
        for k, label in enumerate(sm.labels)
        if (sm.classes == k).any()
    ]
    return {"size": [int(w), int(h)], "masks": masks}


def semantic_from_record(
    rec: Mapping[str, Any] | None, classes: Sequence[str], size: tuple[int, int]
) -> np.ndarray:
    """(H, W) int64 class indices into ``classes``; ``len(classes)`` where nothing (or an unknown label)
    was predicted. ``size`` is the ground truth's (width, height)."""
    w, h = size
    none = len(classes)
    out = np.full((h, w), none, dtype=np.int64)
    if rec is None:
        return out
    if tuple(rec["size"]) != (w, h):
        raise ValueError(
            f"predicted semantic map is {tuple(rec['size'])} (w, h) but the ground truth is {(w, h)}"
        )
    index = {}
    for k, name in enumerate(classes):
        index.setdefault(name, k)
    for m in rec["masks"]:
        k = index.get(m["label"])
        if k is not None:
            out[rle_to_mask(m["mask"])] = k
    return out


def miou_scores(confusion: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Percent mIoU / mAcc / aAcc from a (C+1, C+1) confusion matrix whose last column counts pixels
    left without a class: they are misses for their true class but nobody's false positive."""
    s = scores_from_confusion(confusion)
    c = len(classes)
    iou = np.asarray(s["IoU"][:c], dtype=np.float64)
    acc = np.asarray(s["Acc"][:c], dtype=np.float64)

    def pct(x: float) -> float | None:
        return None if not np.isfinite(x) else 100.0 * float(x)

    return {
        "mIoU": pct(np.nanmean(iou)) if np.isfinite(iou).any() else None,
        "mAcc": pct(np.nanmean(acc)) if np.isfinite(acc).any() else None,
        "aAcc": pct(s["aAcc"]),
        "per_class_IoU": {n: pct(v) for n, v in zip(classes, iou) if np.isfinite(v)},
    }


# --------------------------------------------------------------------------- text benchmarks

# Generous for one-word answers; a model that stops early costs nothing more.
TEXT_MAX_NEW_TOKENS = {
    "vqav2": 32,
    "textvqa": 32,
    "vizwiz": 32,
    "gqa": 32,
    "pope": 16,
    "mme": 16,
    "scienceqa": 16,
    "mmbench": 16,
}


class TextBenchmark(Benchmark):
    """A text benchmark read by :func:`~visionllm2.data.formats.benchmarks.read_benchmark`, scored by
    :func:`~visionllm2.evaluation.submission.score_benchmark` on :func:`clean_answer` of each answer."""

    OPTIONS = ("split", "image_root", "circular")

    def __init__(self, *, name: str, data: str | Path, limit: int | None = None, **options: Any) -> None:
        if name not in BENCHMARK_READERS:
            raise ValueError(f"unknown text benchmark {name!r}; known: {sorted(BENCHMARK_READERS)}")
        accepted = set(inspect.signature(BENCHMARK_READERS[name]).parameters)
        wrong = sorted(k for k in options if k not in accepted)
        if wrong:
            raise ValueError(f"benchmark {name!r} takes no option(s) {wrong}")
        self.name, self.data, self.limit, self.options = name, Path(data), limit, options
        self.max_new_tokens = TEXT_MAX_NEW_TOKENS[name]

    def settings(self) -> dict[str, Any]:
        return {k: str(v) if isinstance(v, Path) else v for k, v in self.options.items()}

    def items(self, model: VisionLLM2Model) -> list[EvalItem]:
        bench = read_benchmark(self.name, self.data, limit=self.limit, **self.options)
        return [
            EvalItem(
                uid=b.uid, sample=b.to_sample, max_new_tokens=self.max_new_tokens, run_decoders=False, ref=b
            )
            for b in bench
        ]

    def record(self, item: EvalItem, result: Result, *, out_dir: Path) -> dict[str, Any]:
        return {"text": result.text, "answer": clean_answer(result.text)}

    def _answers(self, items: Sequence[EvalItem], records: Mapping[str, dict[str, Any]]) -> dict[str, str]:
        return {it.uid: records[it.uid]["answer"] for it in items}

    def score(self, items: Sequence[EvalItem], records: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
        refs: list[BenchmarkItem] = [it.ref for it in items]
        return score_benchmark(self.name, refs, self._answers(items, records))

    def write_submission(
        self, items: Sequence[EvalItem], records: Mapping[str, dict[str, Any]], out_dir: Path
    ) -> list[Path]:
        return write_submission(self.name, [it.ref for it in items], self._answers(items, records), out_dir)


# --------------------------------------------------------------------------- COCO

_COCO_KINDS = {
    # kind: (annotation file stem, routing family, question key, iou types)
    "det": ("instances", "det", "det", ("bbox",)),
    "seg": ("instances", "seg", "inst_seg", ("bbox", "segm")),
    "keypoints": ("person_keypoints", "pose", "pose", ("keypoints",)),
}


def _find(candidates: Sequence[Path], what: str, *, folder: bool = False) -> Path:
    for p in candidates:
        if p.is_dir() if folder else p.is_file():
            return p
    raise FileNotFoundError(f"{what} not found; looked for: " + ", ".join(str(p) for p in candidates))


def _pct_or_none(v: float) -> float | None:
    return None if v < 0 else 100.0 * v  # COCO's -1 means "undefined: no ground truth"


class CocoBenchmark(Benchmark):
    """COCO detection (box AP), instance segmentation (box and mask AP) or keypoints (OKS AP), scored
    with pycocotools (:func:`~visionllm2.evaluation.detection.coco_evaluate`).

    Layout as released: ``annotations/instances_{split}.json`` (or ``person_keypoints_{split}.json``)
    and the images in ``{split}/``. One item per image; the question names every category (keypoints:
    every category with keypoint names, with one link per keypoint name after its class link).
    """

    OPTIONS = ("split", "image_root", "links")

    def __init__(
        self,
        *,
        name: str,
        data: str | Path,
        kind: str,
        split: str = "val2017",
        image_root: str | Path | None = None,
        links: str = "forced",
        limit: int | None = None,
    ) -> None:
        if kind not in _COCO_KINDS:
            raise ValueError(f"COCO kind must be one of {sorted(_COCO_KINDS)}, got {kind!r}")
        self.name, self.kind, self.split, self.limit = name, kind, split, limit
        self.links = _check_links_mode(links)
        stem, self.family, self.question_key, self.iou_types = _COCO_KINDS[kind]
        data = Path(data)
        self.ann_file = _find(
            [data / "annotations" / f"{stem}_{split}.json", data / f"{stem}_{split}.json"],
            f"COCO {stem}_{split}.json",
        )
        self.image_root = (
            Path(image_root)
            if image_root is not None
            else _find(
                [data / split, data / "images" / split, data / "images"],
                f"COCO {split} images folder",
                folder=True,
            )
        )
        self._coco: CocoFile | None = None

    def settings(self) -> dict[str, Any]:
        return {"split": self.split, "links": self.links}

    @property
    def coco(self) -> CocoFile:
        if self._coco is None:
            self._coco = CocoFile(self.ann_file)
        return self._coco

    def category_ids(self) -> list[int]:
        ids = sorted(self.coco.categories)
        if self.kind == "keypoints":
            ids = [c for c in ids if self.coco.categories[c].get("keypoints")]
            if not ids:
                raise ValueError(f"{self.ann_file} has no category with keypoint names")
        return ids

    def _forced_and_question(self) -> tuple[str, str]:
        cats = [self.coco.categories[c] for c in self.category_ids()]
        names = [c["name"] for c in cats]
        token = ROUTING_TOKENS[self.family]
        if self.kind == "keypoints":
            forced = ", ".join(
                " ".join([f"{c['name']}{token}"] + [f"{k}{token}" for k in c["keypoints"]]) for c in cats
            )
        else:
            forced = T.link_list(names, token)
        return forced, _prompt(_question(self.question_key, names=T.join_names(names)))

    def items(self, model: VisionLLM2Model) -> list[EvalItem]:
        require_decoder(model, self.family, self.name)
        forced, prompt = self._forced_and_question()
        ids = self.coco.image_ids if self.limit is None else self.coco.image_ids[: self.limit]
        out = []
        for image_id in ids:
            img = self.coco.images[image_id]
            out.append(
                EvalItem(
                    uid=str(image_id),
                    sample=functools.partial(self._sample, img.file_name, image_id, prompt),
                    forced=forced if self.links == "forced" else "",
                    max_new_tokens=8 if self.links == "forced" else 1024,
                    ref=image_id,
                )
            )
        return out

    def _sample(self, file_name: str, image_id: int, prompt: str) -> Sample:
        image = open_image(
            self.image_root / file_name,
            source=self.ann_file,
            record=f"image id {image_id}",
            field="file_name",
        )
        return Sample([image], [Turn("user", prompt)], task=self.question_key, meta={"image_id": image_id})

    def record(self, item: EvalItem, result: Result, *, out_dir: Path) -> dict[str, Any]:
        max_link = count_links(item.forced) if item.forced else None
        return {"text": result.text, "detections": detection_records(result, max_link)}

    def _ground_truth(self, image_id: int) -> list[GroundTruth]:
        keep = set(self.category_ids())
        out = []
        for a in self.coco.annotations[image_id]:
            if a.category_id not in keep:
                continue
            x, y, w, h = a.bbox
            kps = None
            if self.kind == "keypoints":
                names = self.coco.categories[a.category_id]["keypoints"]
                raw = a.keypoints if a.keypoints is not None else np.zeros((len(names), 3), np.float32)
                kps = {n: tuple(float(v) for v in raw[k]) for k, n in enumerate(names)}
            out.append(
                GroundTruth(
                    label=self.coco.category_name(a.category_id),
                    box=[x, y, x + w, y + h],
                    mask=self.coco.mask(a) if "segm" in self.iou_types else None,
                    keypoints=kps,
                    iscrowd=bool(a.iscrowd),
                )
            )
        return out

    def score(self, items: Sequence[EvalItem], records: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
        preds = [[detection_from_record(d) for d in records[it.uid]["detections"]] for it in items]
        gts = [self._ground_truth(it.ref) for it in items]
        sizes = [(self.coco.images[it.ref].width, self.coco.images[it.ref].height) for it in items]
        kp_names = None
        if self.kind == "keypoints":
            kp_names = list(
                dict.fromkeys(k for c in self.category_ids() for k in self.coco.categories[c]["keypoints"])
            )
        raw = coco_evaluate(preds, gts, sizes, iou_types=self.iou_types, keypoint_names=kp_names)
        scores: dict[str, Any] = {k: _pct_or_none(v) for k, v in raw.items()}
        scores["num_images"] = len(items)
        scores["num_detections"] = sum(len(p) for p in preds)
        return scores

    def write_submission(
        self, items: Sequence[EvalItem], records: Mapping[str, dict[str, Any]], out_dir: Path
    ) -> list[Path]:
        """COCO results (``loadRes`` / evaluation-server format): ``image_id``, ``category_id``, ``bbox``
        [x, y, w, h], ``score``, and ``segmentation`` (RLE) or ``keypoints`` [x, y, score] * P."""
        by_name = {self.coco.category_name(c): c for c in self.category_ids()}
        rows = []
        for it in items:
            for d in records[it.uid]["detections"]:
                cid = by_name.get(d["label"])
                if cid is None:
                    continue  # a class the model named itself (links="generated"), not a COCO category
                x0, y0, x1, y1 = d["box"]
                row: dict[str, Any] = {
                    "image_id": it.ref,
                    "category_id": cid,
                    "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                    "score": round(float(d["score"]), 5),
                }
                if self.kind == "seg" and d.get("mask") is not None:
                    row["segmentation"] = d["mask"]
                if self.kind == "keypoints":
                    kps = d.get("keypoints") or {}
                    flat: list[float] = []
                    for n in self.coco.categories[cid]["keypoints"]:
                        x, y, s = kps.get(n, (0.0, 0.0, 0.0))
                        flat += [round(float(x), 2), round(float(y), 2), round(float(s), 4)]
                    row["keypoints"] = flat
                rows.append(row)
        stem = "person_keypoints" if self.kind == "keypoints" else "detections"
        path = out_dir / f"{stem}_{self.split}_visionllm2_results.json"
        atomic_write_json(path, rows)
        return [path]


# --------------------------------------------------------------------------- RefCOCO / RefCOCO+ / RefCOCOg


class RefCocoBenchmark(Benchmark):
    """Referring expression comprehension: Acc@0.5 of the box the [GRD] link gets, per expression; with
    mask-producing decoders also referring-segmentation cIoU / gIoU.

    Layout: ``refs.json`` (the refer toolkit's ``refs(*).p`` converted to JSON, see
    :mod:`visionllm2.data.formats.refcoco`) and ``instances.json`` in ``data``; COCO train2014 images in
    ``images/train2014`` (or pass ``image_root``). One item per (ref, sentence) of ``split``.
    """

    OPTIONS = ("split", "image_root", "links")

    def __init__(
        self,
        *,
        name: str,
        data: str | Path,
        split: str = "val",
        image_root: str | Path | None = None,
        links: str = "forced",
        limit: int | None = None,
    ) -> None:
        data = Path(data)
        self.name, self.split, self.limit = name, split, limit
        self.links = _check_links_mode(links)
        self.refs_file = _find([data / "refs.json"], "RefCOCO refs.json (convert refs(*).p once, see docs)")
        self.instances_file = _find([data / "instances.json"], "RefCOCO instances.json")
        self.image_root = (
            Path(image_root)
            if image_root is not None
            else _find(
                [
                    data / "images" / "train2014",
                    data / "images" / "mscoco" / "images" / "train2014",
                    data / "train2014",
                ]
                + [data / "images"],
                "COCO train2014 images folder",
                folder=True,
            )
        )
        self._dataset: RefCocoDataset | None = None

    def settings(self) -> dict[str, Any]:
        return {"split": self.split, "links": self.links}

    @property
    def dataset(self) -> RefCocoDataset:
        if self._dataset is None:
            # Validates every ref against instances.json (ids, images, sentences) with clear errors.
            self._dataset = RefCocoDataset(
                refs_file=self.refs_file,
                instances_file=self.instances_file,
                image_root=self.image_root,
                split=self.split,
            )
        return self._dataset

    def items(self, model: VisionLLM2Model) -> list[EvalItem]:
        require_decoder(model, "grd", self.name)
        ds = self.dataset
        anns = {a.id: a for lst in ds.coco.annotations.values() for a in lst}
        out: list[EvalItem] = []
        for ref in read_json(self.refs_file):
            if ref["split"] != self.split:
                continue
            for sent in ref["sentences"]:
                if self.limit is not None and len(out) >= self.limit:
                    return out
                text = sent["sent"].strip()
                ann = anns[ref["ann_id"]]
                ref_info = {
                    "ref_id": ref["ref_id"],
                    "sent_id": sent.get("sent_id", len(out)),
                    "sentence": text,
                    "ann_id": ann.id,
                    "image_id": ann.image_id,
                }
                forced = through_last_link(T.ANSWERS["grd"][0].format(expr=text))
                out.append(
                    EvalItem(
                        uid=f"{ref_info['ref_id']}/{ref_info['sent_id']}",
                        sample=functools.partial(
                            self._sample, ann.image_id, _prompt(_question("grd", expr=text))
                        ),
                        forced=forced if self.links == "forced" else "",
                        max_new_tokens=8 if self.links == "forced" else 64,
                        ref=ref_info,
                    )
                )
        return out

    def _sample(self, image_id: int, prompt: str) -> Sample:
        img = self.dataset.coco.images[image_id]
        image = open_image(
            self.image_root / img.file_name,
            source=self.instances_file,
            record=f"image id {image_id}",
            field="file_name",
        )
        return Sample([image], [Turn("user", prompt)], task="grd", meta={"image_id": image_id})

    def record(self, item: EvalItem, result: Result, *, out_dir: Path) -> dict[str, Any]:
        # The referred object is the [GRD] link's own detection: the decoder returns its best query.
        dets = [i for i in result.items if isinstance(i, Detection) and i.link == 0]
        best = max(dets, key=lambda d: d.score, default=None)
        return {
            "text": result.text,
            "box": None if best is None else [float(v) for v in best.box],
            "score": None if best is None else float(best.score),
            "mask": None if best is None else best.mask,
        }

    def score(self, items: Sequence[EvalItem], records: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
        coco = self.dataset.coco
        anns = {a.id: a for lst in coco.annotations.values() for a in lst}
        gt_boxes = []
        for it in items:
            x, y, w, h = anns[it.ref["ann_id"]].bbox
            gt_boxes.append([x, y, x + w, y + h])
        boxes = [records[it.uid]["box"] for it in items]
        scores: dict[str, Any] = {
            "accuracy": 100.0 * rec_accuracy(boxes, gt_boxes),  # Acc@0.5, the paper's REC number
            "num_scored": len(items),
        }
        masks = [records[it.uid].get("mask") for it in items]
        gt_masks = [coco.mask(anns[it.ref["ann_id"]]) for it in items]
        if all(m is not None for m in masks) and all(m is not None for m in gt_masks):
            seg = referring_segmentation_scores(masks, gt_masks)
            scores.update({k: 100.0 * v for k, v in seg.items()})
        return scores

    def write_submission(
        self, items: Sequence[EvalItem], records: Mapping[str, dict[str, Any]], out_dir: Path
    ) -> list[Path]:
        rows = []
        for it in items:
            rec = records[it.uid]
            box = rec["box"]
            rows.append(
                {
                    "ref_id": it.ref["ref_id"],
                    "sent_id": it.ref["sent_id"],
                    "sentence": it.ref["sentence"],
                    "bbox": None if box is None else [box[0], box[1], box[2] - box[0], box[3] - box[1]],
                    "score": rec["score"],
                }
            )
        path = out_dir / f"{self.name}_{self.split}_results.json"
        atomic_write_json(path, rows)
        return [path]


# --------------------------------------------------------------------------- ADE20K


class Ade20kBenchmark(Benchmark):
    """ADE20K semantic segmentation: mIoU over the 150 classes (label 0 "other" ignored), from the
    semantic map the [SEG] links of every class produce.

    Layout as released: ``ADEChallengeData2016/images/{split}/*.jpg``, ``annotations/{split}/*.png`` and
    ``objectInfo150.txt`` (or CSAIL's ``object150_info.csv``); ``data`` may be the folder itself or its
    parent. Pixels the model leaves without a class count as misses.
    """

    OPTIONS = ("split", "links")

    def __init__(
        self,
        *,
        name: str = "ade20k",
        data: str | Path,
        split: str = "validation",
        links: str = "forced",
        limit: int | None = None,
    ) -> None:
        data = Path(data)
        self.name, self.split, self.limit = name, split, limit
        self.links = _check_links_mode(links)
        self.base = _find([data / "ADEChallengeData2016", data], "ADE20K folder", folder=True)
        self.image_dir = _find([self.base / "images" / split], f"ADE20K images/{split}", folder=True)
        self.ann_dir = _find([self.base / "annotations" / split], f"ADE20K annotations/{split}", folder=True)
        names = ("objectInfo150.txt", "object150_info.csv", "objectInfo.txt")
        self.class_file = _find([d / n for d in (self.base, data) for n in names], "ADE20K class list")
        self.classes = read_class_file(self.class_file)

    def settings(self) -> dict[str, Any]:
        return {"split": self.split, "links": self.links}

    def items(self, model: VisionLLM2Model) -> list[EvalItem]:
        require_decoder(model, "seg", self.name)
        files = sorted(p for p in self.image_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if self.limit is not None:
            files = files[: self.limit]
        prompt = _prompt(_question("sem_seg", names=T.join_names(self.classes)))
        forced = T.link_list(self.classes, ROUTING_TOKENS["seg"])
        out = []
        for p in files:
            ann = self.ann_dir / f"{p.stem}.png"
            if not ann.is_file():
                raise FormatError(p, f"no annotation {ann} for this image")
            out.append(
                EvalItem(
                    uid=p.stem,
                    sample=functools.partial(self._sample, p, prompt),
                    forced=forced if self.links == "forced" else "",
                    max_new_tokens=8 if self.links == "forced" else 2048,
                    ref=ann,
                )
            )
        return out

    def _sample(self, path: Path, prompt: str) -> Sample:
        image = open_image(path, source=path, record=path.name, field="image")
        return Sample([image], [Turn("user", prompt)], task="sem_seg", meta={"file": str(path)})

    def record(self, item: EvalItem, result: Result, *, out_dir: Path) -> dict[str, Any]:
        return {"text": result.text, "semantic": semantic_record(result)}

    def _prediction(self, it: EvalItem, rec: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
        gt = read_semantic_png(it.ref, len(self.classes))
        pred = semantic_from_record(rec["semantic"], self.classes, (gt.shape[1], gt.shape[0]))
        return pred, gt

    def score(self, items: Sequence[EvalItem], records: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
        c = len(self.classes)
        # One extra class for "no class predicted"; ground truth never has it (see miou_scores).
        cm = np.zeros((c + 1, c + 1), dtype=np.int64)
        for it in items:
            pred, gt = self._prediction(it, records[it.uid])
            cm += confusion_matrix(pred, gt, num_classes=c + 1, reduce_zero=True)
        return {**miou_scores(cm, self.classes), "num_images": len(items)}

    def write_submission(
        self, items: Sequence[EvalItem], records: Mapping[str, dict[str, Any]], out_dir: Path
    ) -> list[Path]:
        """One PNG per image as the SceneParsing server takes them: class index + 1, 0 = no class."""
        folder = out_dir / "ade20k"
        for it in items:
            pred, _ = self._prediction(it, records[it.uid])
            write_semantic_png(folder / f"{it.uid}.png", np.where(pred == len(self.classes), 0, pred + 1))
        return [folder]


# --------------------------------------------------------------------------- registry


def _world(**kwargs: Any) -> Benchmark:
    from visionllm2.evaluation.world import WorldSuite

    return WorldSuite(**kwargs)


BENCHMARKS: dict[str, Callable[..., Benchmark]] = {
    **{name: functools.partial(TextBenchmark, name=name) for name in BENCHMARK_READERS},
    "coco_det": functools.partial(CocoBenchmark, name="coco_det", kind="det"),
    "coco_seg": functools.partial(CocoBenchmark, name="coco_seg", kind="seg"),
    "coco_keypoints": functools.partial(CocoBenchmark, name="coco_keypoints", kind="keypoints"),
    "refcoco": functools.partial(RefCocoBenchmark, name="refcoco"),
    "refcoco+": functools.partial(RefCocoBenchmark, name="refcoco+"),
    "refcocog": functools.partial(RefCocoBenchmark, name="refcocog"),
    "ade20k": Ade20kBenchmark,
    "world": _world,
}

_OPTIONS: dict[str, tuple[str, ...]] = {
    **{
        name: tuple(p for p in TextBenchmark.OPTIONS if p in inspect.signature(r).parameters)
        for name, r in BENCHMARK_READERS.items()
    },
    "coco_det": CocoBenchmark.OPTIONS,
    "coco_seg": CocoBenchmark.OPTIONS,
    "coco_keypoints": CocoBenchmark.OPTIONS,
    "refcoco": RefCocoBenchmark.OPTIONS,
    "refcoco+": RefCocoBenchmark.OPTIONS,
    "refcocog": RefCocoBenchmark.OPTIONS,
    "ade20k": Ade20kBenchmark.OPTIONS,
    "world": ("links", "seed", "tasks", "splits"),
}


def benchmark_options(name: str) -> tuple[str, ...]:
    """The options benchmark ``name`` accepts (``--split``, ``--links`` …)."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; available: {', '.join(sorted(BENCHMARKS))}")
    return _OPTIONS[name]


def make_benchmark(
    name: str, *, data: str | Path | None, limit: int | None = None, **options: Any
) -> Benchmark:
    """Benchmark ``name`` reading ``data`` (its released layout); ``limit`` keeps the first N items
    (world: N per task and split). Options a benchmark does not take are an error, not ignored."""
    allowed = benchmark_options(name)
    wrong = sorted(k for k, v in options.items() if v is not None and k not in allowed)
    if wrong:
        raise ValueError(
            f"benchmark {name!r} takes no option(s) {', '.join(wrong)}; "
            f"it takes: {', '.join(allowed) or 'none'}"
        )
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    kwargs = {k: v for k, v in options.items() if v is not None}
    if name != "world":
        if data is None:
            raise ValueError(
                f"benchmark {name!r} needs --data: the folder laid out as the benchmark is released"
            )
        if not Path(data).exists():
            raise FileNotFoundError(f"--data {data} does not exist")
    return BENCHMARKS[name](data=data, limit=limit, **kwargs)
