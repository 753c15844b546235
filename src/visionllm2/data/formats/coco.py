"""COCO: read instances / person-keypoints / captions JSON into Samples, and write that format.

Reads the real schema (cocodataset.org/#format-data): ``images`` (id, file_name, width,
height), ``annotations`` (id, image_id, category_id, bbox [x, y, w, h], iscrowd, segmentation as
polygons or RLE — compressed string or uncompressed counts list —, keypoints [x, y, v] * P,
num_keypoints) or caption annotations (id, image_id, caption), and ``categories`` (id, name,
supercategory, keypoints, skeleton with 1-based indices). Crowd regions are skipped as targets.
Extra annotation fields (e.g. ``attributes`` or ``text`` of the synthetic world) are kept in
:attr:`ObjectAnn.attributes`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from visionllm2.data import builders as B
from visionllm2.data.formats.common import (
    FormatError,
    atomic_write_json,
    is_number,
    open_image,
    read_json,
    record_name,
    require,
)
from visionllm2.data.sample import Sample
from visionllm2.data.templates import Phrasing
from visionllm2.ops.masks import mask_to_rle, rle_to_mask

_STANDARD_ANN_KEYS = {
    "id", "image_id", "category_id", "bbox", "area", "iscrowd", "segmentation", "keypoints", "num_keypoints",
}  # fmt: skip
COCO_TASKS = ("det", "inst_seg", "pose", "caption", "gen")


@dataclass
class CocoImage:
    id: int
    file_name: str
    width: int
    height: int


@dataclass
class CocoAnnotation:
    id: int
    image_id: int
    category_id: int
    bbox: tuple[float, float, float, float]  # x, y, w, h
    iscrowd: int
    segmentation: Any  # polygons, RLE dict or None
    keypoints: np.ndarray | None  # (P, 3)
    extra: dict[str, Any] = field(default_factory=dict)
    where: str = ""


class CocoFile:
    """A parsed, validated COCO annotation file (instances, keypoints or captions)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        data = read_json(self.path)
        if not isinstance(data, dict):
            raise FormatError(self.path, f"expected a JSON object at the top, got {type(data).__name__}")
        images = require(data, "images", list, path=self.path, where="top level")
        anns = require(data, "annotations", list, path=self.path, where="top level")
        self.is_captions = bool(anns) and isinstance(anns[0], dict) and "caption" in anns[0]
        cats = require(data, "categories", list, path=self.path, where="top level", optional=self.is_captions)
        self.images: dict[int, CocoImage] = {}
        for i, rec in enumerate(images):
            where = record_name(i, rec, section="images")
            img = CocoImage(
                require(rec, "id", int, path=self.path, where=where),
                require(rec, "file_name", str, path=self.path, where=where),
                require(rec, "width", int, path=self.path, where=where),
                require(rec, "height", int, path=self.path, where=where),
            )
            if img.width <= 0 or img.height <= 0:
                raise FormatError(
                    self.path, f"image size must be positive, got {img.width}x{img.height}", record=where
                )
            if img.id in self.images:
                raise FormatError(self.path, f"duplicate image id {img.id}", record=where, field="id")
            self.images[img.id] = img
        self.image_ids = list(self.images)
        self.categories: dict[int, dict[str, Any]] = {}
        for i, rec in enumerate(cats or []):
            where = record_name(i, rec, section="categories")
            cid = require(rec, "id", int, path=self.path, where=where)
            require(rec, "name", str, path=self.path, where=where)
            kps = require(rec, "keypoints", list, path=self.path, where=where, optional=True)
            if kps is not None and not all(isinstance(k, str) for k in kps):
                raise FormatError(
                    self.path, "keypoint names must be strings", record=where, field="keypoints"
                )
            skel = require(rec, "skeleton", list, path=self.path, where=where, optional=True)
            if skel is not None:
                n = len(kps or [])
                for pair in skel:
                    ok = isinstance(pair, list) and len(pair) == 2 and all(isinstance(v, int) for v in pair)
                    if not ok or not all(1 <= v <= n for v in pair):
                        raise FormatError(
                            self.path,
                            f"skeleton pairs must be [a, b], 1-based indices up to {n}, got {pair!r}",
                            record=where,
                            field="skeleton",
                        )
            if cid in self.categories:
                raise FormatError(self.path, f"duplicate category id {cid}", record=where, field="id")
            self.categories[cid] = rec
        self.annotations: dict[int, list[CocoAnnotation]] = {i: [] for i in self.images}
        self.captions: list[tuple[int, str, int]] = []  # (image_id, caption, annotation id)
        for i, rec in enumerate(anns):
            where = record_name(i, rec, section="annotations")
            if self.is_captions:
                self._caption(rec, where)
            else:
                ann = self._annotation(rec, where)
                self.annotations[ann.image_id].append(ann)

    # -- validation ------------------------------------------------------------------------
    def _image_of(self, rec: dict[str, Any], where: str) -> CocoImage:
        image_id = require(rec, "image_id", int, path=self.path, where=where)
        if image_id not in self.images:
            raise FormatError(
                self.path, f"image_id {image_id} is not in 'images'", record=where, field="image_id"
            )
        return self.images[image_id]

    def _caption(self, rec: dict[str, Any], where: str) -> None:
        img = self._image_of(rec, where)
        text = require(rec, "caption", str, path=self.path, where=where)
        self.captions.append((img.id, text.strip(), require(rec, "id", int, path=self.path, where=where)))

    def _annotation(self, rec: dict[str, Any], where: str) -> CocoAnnotation:
        p = self.path
        aid = require(rec, "id", int, path=p, where=where)
        img = self._image_of(rec, where)
        cid = require(rec, "category_id", int, path=p, where=where)
        if cid not in self.categories:
            raise FormatError(
                p, f"category_id {cid} is not in 'categories'", record=where, field="category_id"
            )
        bbox = require(rec, "bbox", list, path=p, where=where)
        if len(bbox) != 4 or not all(is_number(v) for v in bbox) or bbox[2] < 0 or bbox[3] < 0:
            raise FormatError(
                p, f"expected [x, y, w, h] with w, h >= 0, got {bbox!r}", record=where, field="bbox"
            )
        iscrowd = rec.get("iscrowd", 0)
        if iscrowd not in (0, 1):
            raise FormatError(p, f"expected 0 or 1, got {iscrowd!r}", record=where, field="iscrowd")
        seg = rec.get("segmentation")
        if seg is not None and seg != []:
            self._check_segmentation(seg, img, where)
        kps = None
        if rec.get("keypoints") is not None:
            names = self.categories[cid].get("keypoints")
            if not names:
                raise FormatError(
                    p,
                    f"category {cid} declares no keypoint names but the annotation has keypoints",
                    record=where,
                    field="keypoints",
                )
            raw = rec["keypoints"]
            if not isinstance(raw, list) or len(raw) != 3 * len(names) or not all(is_number(v) for v in raw):
                raise FormatError(
                    p,
                    f"expected {3 * len(names)} numbers (x, y, v for {len(names)} keypoints), "
                    f"got {len(raw) if isinstance(raw, list) else type(raw).__name__}",
                    record=where,
                    field="keypoints",
                )
            kps = np.asarray(raw, np.float32).reshape(len(names), 3)  # (P, 3)
            if not np.isin(kps[:, 2], (0, 1, 2)).all():
                raise FormatError(p, "visibility flags must be 0, 1 or 2", record=where, field="keypoints")
        extra = {k: v for k, v in rec.items() if k not in _STANDARD_ANN_KEYS}
        return CocoAnnotation(
            aid, img.id, cid, tuple(float(v) for v in bbox), iscrowd, seg, kps, extra, where
        )  # type: ignore[arg-type]

    def _check_segmentation(self, seg: Any, img: CocoImage, where: str) -> None:
        p = self.path
        if isinstance(seg, list):
            for k, poly in enumerate(seg):
                if (
                    not isinstance(poly, list)
                    or len(poly) < 6
                    or len(poly) % 2
                    or not all(is_number(v) for v in poly)
                ):
                    raise FormatError(
                        p,
                        f"polygon {k} must be a flat list of at least 3 (x, y) pairs",
                        record=where,
                        field="segmentation",
                    )
        elif isinstance(seg, dict):
            size, counts = seg.get("size"), seg.get("counts")
            if size != [img.height, img.width]:
                raise FormatError(
                    p,
                    f"RLE size {size!r} differs from the image's [height, width] {[img.height, img.width]}",
                    record=where,
                    field="segmentation",
                )
            if not (
                isinstance(counts, str)
                or (isinstance(counts, list) and all(isinstance(c, int) for c in counts))
            ):
                raise FormatError(
                    p,
                    "RLE counts must be a string (compressed) or a list of ints",
                    record=where,
                    field="segmentation",
                )
            if isinstance(counts, list) and sum(counts) != img.height * img.width:
                raise FormatError(
                    p,
                    f"RLE counts sum to {sum(counts)}, not height*width = {img.height * img.width}",
                    record=where,
                    field="segmentation",
                )
        else:
            raise FormatError(
                p, "expected polygons (list) or RLE (object)", record=where, field="segmentation"
            )

    # -- access ----------------------------------------------------------------------------
    def category_name(self, cid: int) -> str:
        return self.categories[cid]["name"]

    def keypoint_categories(self) -> list[int]:
        return [cid for cid, c in self.categories.items() if c.get("keypoints")]

    def mask(self, ann: CocoAnnotation) -> np.ndarray | None:
        """(H, W) bool mask of an annotation, or None without segmentation."""
        img = self.images[ann.image_id]
        seg = ann.segmentation
        if seg is None or seg == []:
            return None
        try:
            if isinstance(seg, list):
                return mask_utils.decode(
                    mask_utils.merge(mask_utils.frPyObjects(seg, img.height, img.width))
                ).astype(bool)
            return rle_to_mask(seg)
        except Exception as e:  # pycocotools raises bare exceptions on corrupt strings
            raise FormatError(
                self.path, f"cannot decode RLE: {e}", record=ann.where, field="segmentation"
            ) from e

    def objects(
        self, image_id: int, *, with_masks: bool = False, categories: set[int] | None = None
    ) -> list[B.ObjectAnn]:
        """Non-crowd annotations of an image as :class:`ObjectAnn` (box xyxy)."""
        out = []
        for a in self.annotations[image_id]:
            if a.iscrowd or (categories is not None and a.category_id not in categories):
                continue
            x, y, w, h = a.bbox
            m = self.mask(a) if with_masks else None
            if with_masks and m is None:
                raise FormatError(
                    self.path, "an instance mask is needed but missing", record=a.where, field="segmentation"
                )
            out.append(
                B.ObjectAnn(
                    self.category_name(a.category_id),
                    np.array([x, y, x + w, y + h], np.float32),
                    m,
                    a.keypoints,
                    {"id": a.id, **a.extra},
                )
            )
        return out


class CocoDataset:
    """COCO images as Samples of one task: ``det`` / ``inst_seg`` (class names of the image
    plus absent ones), ``pose`` (keypoint categories), ``caption`` / ``gen`` (one sample per
    caption annotation). Images are opened lazily, on indexing."""

    def __init__(
        self,
        *,
        annotation_file: str | os.PathLike,
        image_root: str | os.PathLike,
        task: str = "det",
        seed: int = 0,
        phrasing: Phrasing = "train",
        max_names: int = 8,
    ) -> None:
        if task not in COCO_TASKS:
            raise ValueError(f"unknown COCO task {task!r}; choose one of {COCO_TASKS}")
        self.coco = CocoFile(annotation_file)
        self.image_root = Path(image_root)
        self.task, self.seed, self.phrasing, self.max_names = task, seed, phrasing, max_names
        if task in ("caption", "gen") and not self.coco.is_captions:
            raise ValueError(f"task {task!r} needs a captions file, {annotation_file} holds instances")
        if task not in ("caption", "gen") and self.coco.is_captions:
            raise ValueError(
                f"task {task!r} needs an instances/keypoints file, {annotation_file} holds captions"
            )
        if task == "pose" and not self.coco.keypoint_categories():
            raise ValueError(
                f"{annotation_file} has no category with keypoints; pose needs one (e.g. person)"
            )
        self.names = sorted({c["name"] for c in self.coco.categories.values()})

    def __len__(self) -> int:
        return len(self.coco.captions) if self.task in ("caption", "gen") else len(self.coco.image_ids)

    def _image(self, image_id: int):
        img = self.coco.images[image_id]
        image = open_image(
            self.image_root / img.file_name,
            source=self.coco.path,
            record=f"image id {image_id}",
            field="file_name",
        )
        if image.size != (img.width, img.height):
            raise FormatError(
                self.coco.path,
                f"{img.file_name} is {image.size[0]}x{image.size[1]}, the file says {img.width}x{img.height}",
                record=f"image id {image_id}",
                field="width/height",
            )
        return image

    def __getitem__(self, index: int) -> Sample:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        rng = np.random.default_rng([self.seed, index])
        meta: dict[str, Any] = {"source": "coco", "file": str(self.coco.path)}
        if self.task in ("caption", "gen"):
            image_id, text, ann_id = self.coco.captions[index]
            meta.update(image_id=image_id, annotation_id=ann_id)
            image = self._image(image_id)
            if self.task == "caption":
                return B.caption_sample(image, text, rng, phrasing=self.phrasing, meta=meta)
            return B.generation_sample(text, image, rng, phrasing=self.phrasing, meta=meta)
        image_id = self.coco.image_ids[index]
        meta["image_id"] = image_id
        image = self._image(image_id)
        if self.task == "pose":
            cats = self.coco.keypoint_categories()
            objs = self.coco.objects(image_id, categories=set(cats))
            present = {o.label for o in objs}
            names = B.sample_class_names(
                present, [self.coco.category_name(c) for c in cats], rng, max_names=2
            )
            by_name = {self.coco.category_name(c): c for c in cats}
            groups = []
            for n in names:
                kp_names = tuple(self.coco.categories[by_name[n]]["keypoints"])
                members = [o for o in objs if o.label == n]
                for o in members:
                    if o.keypoints is None:  # an instance without keypoint labels: all v = 0
                        o.keypoints = np.zeros((len(kp_names), 3), np.float32)
                groups.append((n, kp_names, members))
            return B.pose_sample(image, groups, rng, phrasing=self.phrasing, meta=meta)
        segment = self.task == "inst_seg"
        objs = self.coco.objects(image_id, with_masks=segment)
        names = B.sample_class_names({o.label for o in objs}, self.names, rng, max_names=self.max_names)
        groups = [(n, [o for o in objs if o.label == n]) for n in names]
        return B.detection_sample(image, groups, rng, phrasing=self.phrasing, segment=segment, meta=meta)


# -- writing -------------------------------------------------------------------------------------


class CocoWriter:
    """Accumulates images, objects and captions; writes instances and captions files."""

    def __init__(self, *, categories: list[dict[str, Any]], info: dict[str, Any] | None = None) -> None:
        ids = [c["id"] for c in categories]
        if len(set(ids)) != len(ids):
            raise ValueError(f"category ids must be unique, got {ids}")
        self.categories = categories
        self.by_name = {c["name"]: c for c in categories}
        self.info = info or {"description": "visionllm2 dataset"}
        self.images: list[dict[str, Any]] = []
        self.annotations: list[dict[str, Any]] = []
        self.captions: list[dict[str, Any]] = []

    def add_image(self, *, file_name: str, width: int, height: int, image_id: int | None = None) -> int:
        image_id = len(self.images) + 1 if image_id is None else image_id
        self.images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        return image_id

    def add_object(
        self,
        image_id: int,
        obj: B.ObjectAnn,
        *,
        extra: dict[str, Any] | None = None,
        ann_id: int | None = None,
    ) -> int:
        """Add one object (RLE mask when it has one, keypoints for keypoint categories)."""
        if obj.label not in self.by_name:
            raise ValueError(f"object label {obj.label!r} is not a category of this writer")
        cat = self.by_name[obj.label]
        x0, y0, x1, y1 = (float(v) for v in obj.box)
        ann: dict[str, Any] = {
            "id": len(self.annotations) + 1 if ann_id is None else ann_id,
            "image_id": image_id,
            "category_id": cat["id"],
            "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
            "iscrowd": 0,
        }
        if obj.mask is not None:
            ann["segmentation"] = mask_to_rle(np.asarray(obj.mask, dtype=bool))
            ann["area"] = int(obj.mask.sum())
        else:
            ann["area"] = round((x1 - x0) * (y1 - y0), 2)
        if cat.get("keypoints"):
            kp = np.zeros((len(cat["keypoints"]), 3), np.float32) if obj.keypoints is None else obj.keypoints
            if kp.shape != (len(cat["keypoints"]), 3):
                raise ValueError(
                    f"{obj.label!r} needs ({len(cat['keypoints'])}, 3) keypoints, got {kp.shape}"
                )
            flat = []
            for x, y, v in kp:
                flat += [round(float(x), 2), round(float(y), 2), int(v)] if v > 0 else [0, 0, 0]
            ann["keypoints"] = flat
            ann["num_keypoints"] = int((kp[:, 2] > 0).sum())
        ann.update(extra or {})
        self.annotations.append(ann)
        return ann["id"]

    def add_caption(self, image_id: int, caption: str) -> int:
        cid = len(self.captions) + 1
        self.captions.append({"id": cid, "image_id": image_id, "caption": caption})
        return cid

    def instances(self) -> dict[str, Any]:
        return {
            "info": self.info,
            "licenses": [],
            "images": self.images,
            "annotations": self.annotations,
            "categories": self.categories,
        }

    def write_instances(self, path: str | os.PathLike) -> None:
        atomic_write_json(path, self.instances())

    def write_captions(self, path: str | os.PathLike) -> None:
        atomic_write_json(
            path, {"info": self.info, "licenses": [], "images": self.images, "annotations": self.captions}
        )
