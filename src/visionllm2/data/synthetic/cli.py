"""``visionllm2 data synth``: write the synthetic world to disk in the formats users already have.

Layout under ``--out`` (image paths in every file are relative to ``images/``, except COCO's
``file_name``, relative to ``images/<split>/`` as in real COCO)::

    images/<split>/<split>_000000.png          the rendered scenes
    images/edited/<split>/<split>_000000.png   edit targets
    coco/instances_<split>.json                 COCO instances + keypoints (RLE masks)
    coco/captions_<split>.json                  COCO captions
    refcoco/instances.json, refcoco/refs.json   RefCOCO layout (refs in the refer toolkit's schema)
    ade/objectInfo.txt, ade/annotations/<split>/<split>_000000.png   ADE20K-style semantic PNGs
    llava/<split>.json                          LLaVA conversations (caption, VQA, POPE, MC)
    pairs/captions_<split>.jsonl                caption pairs (imagefolder metadata schema)
    pairs/edits_<split>.jsonl                   InstructPix2Pix-style edit pairs
    manifest.json                               written last: the run is complete when it exists

Splits: train / val / test, plus ``heldout``, whose scenes each contain a (kind, colour) pair
never seen in the others (compositional generalisation). The test split uses the held-out
instruction phrasings. Every file is written atomically.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from visionllm2.data import builders as B
from visionllm2.data.formats.ade20k import write_class_file, write_semantic_png
from visionllm2.data.formats.coco import CocoWriter
from visionllm2.data.formats.common import atomic_save_image, atomic_write_json
from visionllm2.data.formats.llava import sample_to_llava, write_llava
from visionllm2.data.formats.pairs import caption_record, edit_record, write_pairs
from visionllm2.data.formats.refcoco import make_ref, write_refs
from visionllm2.data.synthetic.tasks import (
    TaskNotApplicable,
    build_task,
    referring_expressions,
    scene_seed,
    scene_things,
)
from visionllm2.data.synthetic.world import (
    CATEGORIES,
    FIGURES,
    KINDS,
    Rendered,
    Scene,
    WorldConfig,
    caption,
    generate_scene,
    heldout_pairs,
    render,
)

SPLITS = ("train", "val", "test", "heldout")
MANIFEST_VERSION = 1


def world_categories() -> list[dict[str, Any]]:
    """COCO categories of the world (ids 1..), keypoint names and 1-based skeletons included."""
    cats: list[dict[str, Any]] = []
    for i, name in enumerate(CATEGORIES, start=1):
        cat: dict[str, Any] = {"id": i, "name": name, "supercategory": "shape" if name in KINDS else name}
        if name in FIGURES:
            names, skeleton = FIGURES[name]
            cat["supercategory"] = "person" if name == "person" else "animal"
            cat["keypoints"] = list(names)
            cat["skeleton"] = [[a + 1, b + 1] for a, b in skeleton]
        cats.append(cat)
    return cats


def split_sizes(num: int, heldout_num: int) -> dict[str, int]:
    """train / val / test from ``num`` (10% each for val and test), plus the held-out split."""
    if num < 1:
        raise ValueError(f"--num must be at least 1, got {num}")
    if heldout_num < 0:
        raise ValueError(f"--heldout-num must be >= 0, got {heldout_num}")
    n_eval = max(1, num // 10) if num >= 3 else 0
    return {"train": num - 2 * n_eval, "val": n_eval, "test": n_eval, "heldout": heldout_num}


def _annotation_extra(obj: B.ObjectAnn) -> dict[str, Any]:
    a = obj.attributes
    if a["source"] == "shape":
        return {"attributes": {k: a[k] for k in ("colour", "texture", "size", "position")}}
    if a["source"] == "figure":
        return {"attributes": {"facing": a["facing"], "position": a["position"]}}
    return {"text": a["text"], "attributes": {"position": a["position"]}}


def _refs_for_scene(
    scene: Scene, rendered: Rendered, rng: np.random.Generator, ann_ids: list[int], *, per_scene: int = 2
) -> list[tuple[int, list[str]]]:
    """(annotation id, 1-2 distinct unique expressions) for up to ``per_scene`` objects."""
    side = min(scene.width, scene.height)
    things = scene_things(scene, rendered)
    out = []
    for i in rng.permutation(len(things)):
        t = things[int(i)]
        descs = referring_expressions(things, t, side=side)
        if not descs:
            continue
        phrases = sorted({d.phrase() for d in descs})
        k = min(len(phrases), int(rng.integers(1, 3)))
        chosen = [phrases[int(j)] for j in rng.choice(len(phrases), k, replace=False)]
        out.append((ann_ids[t.obj], chosen))
        if len(out) == per_scene:
            break
    return out


def synthesize(
    *,
    out: str | os.PathLike,
    num: int,
    seed: int = 0,
    image_size: int = 128,
    heldout_num: int | None = None,
    num_heldout_pairs: int = 6,
    progress: bool = True,
) -> dict[str, Any]:
    """Generate and write the dataset; returns the manifest."""
    out = Path(out)
    heldout_num = max(1, num // 10) if heldout_num is None else heldout_num
    sizes = split_sizes(num, heldout_num)
    config = WorldConfig(width=image_size, height=image_size)
    held = heldout_pairs(seed, num_heldout_pairs)
    if sizes["heldout"] and not held:
        raise ValueError("a held-out split needs at least one held-out pair (--heldout-pairs > 0)")
    held_list = sorted(held)

    # Pass 1: scenes (cheap), so POPE statistics come from the training split before writing.
    scenes: dict[str, list[Scene]] = {s: [] for s in SPLITS}
    index = 0
    for split in SPLITS:
        for k in range(sizes[split]):
            if split == "heldout":
                pair = held_list[k % len(held_list)]
                scene = generate_scene(scene_seed(seed, index), config, require_pairs=(pair,))
            else:
                scene = generate_scene(scene_seed(seed, index), config, exclude_pairs=held)
            scenes[split].append(scene)
            index += 1
    stats = B.ObjectStats.from_sets(
        [
            {f"{s.colour} {s.kind}" for s in sc.shapes} | {f.category for f in sc.figures}
            for sc in scenes["train"]
        ]
    )

    # Pass 2: render and write.
    categories = world_categories()
    ref_writer = CocoWriter(
        categories=categories, info={"description": "visionllm2 synthetic world (RefCOCO)"}
    )
    refs: list[dict[str, Any]] = []
    image_id = ann_id = sent_id = 0
    counts: dict[str, int] = {}
    bar = tqdm(total=sum(sizes.values()), desc="synth", unit="scene", disable=not progress, file=sys.stderr)
    for split in SPLITS:
        if not sizes[split]:
            continue
        phrasing = "heldout" if split == "test" else "train"
        exclude = frozenset() if split == "heldout" else held
        writer = CocoWriter(
            categories=categories, info={"description": f"visionllm2 synthetic world ({split})"}
        )
        llava, cap_pairs, edit_pairs = [], [], []
        for k, scene in enumerate(scenes[split]):
            rng = np.random.default_rng([seed, image_id, 1])
            image_id += 1
            name = f"{split}_{k:06d}.png"
            rendered = render(scene)
            atomic_save_image(out / "images" / split / name, rendered.image)
            w, h = rendered.image.size
            writer.add_image(file_name=name, width=w, height=h, image_id=image_id)
            ref_writer.add_image(file_name=f"{split}/{name}", width=w, height=h, image_id=image_id)
            ids = []
            for obj in rendered.objects:
                ann_id += 1
                writer.add_object(image_id, obj, extra=_annotation_extra(obj), ann_id=ann_id)
                ref_writer.add_object(image_id, obj, ann_id=ann_id)
                ids.append(ann_id)
            text = caption(scene)
            writer.add_caption(image_id, text)
            for a_id, sentences in _refs_for_scene(scene, rendered, rng, ids):
                cat = next(
                    c["id"] for c in categories if c["name"] == rendered.objects[ids.index(a_id)].label
                )
                refs.append(
                    make_ref(
                        ref_id=len(refs),
                        ann_id=a_id,
                        image_id=image_id,
                        category_id=cat,
                        split=split,
                        sentences=sentences,
                        first_sent_id=sent_id,
                        file_name=name,
                    )
                )
                sent_id += len(sentences)
            write_semantic_png(out / "ade" / "annotations" / split / name, rendered.semantic)
            chat = build_task("chat", scene, rng, rendered=rendered, phrasing=phrasing, stats=stats)
            llava.append(sample_to_llava(chat, record_id=f"{split}_{k:06d}", image=f"{split}/{name}"))
            cap_pairs.append(caption_record(f"{split}/{name}", text))
            try:
                edit = build_task(
                    "edit",
                    scene,
                    rng,
                    rendered=rendered,
                    phrasing=phrasing,
                    config=config,
                    exclude_pairs=exclude,
                )
            except TaskNotApplicable:
                edit = None
            if edit is not None:
                target = edit.targets[0]
                assert target is not None and target.image is not None
                atomic_save_image(out / "images" / "edited" / split / name, target.image)
                edit_pairs.append(
                    edit_record(
                        f"{split}/{name}",
                        edit.meta["instruction"],
                        f"edited/{split}/{name}",
                        original_prompt=text,
                        edited_prompt=edit.meta["target_caption"],
                    )
                )
            bar.update(1)
        writer.write_instances(out / "coco" / f"instances_{split}.json")
        writer.write_captions(out / "coco" / f"captions_{split}.json")
        write_llava(out / "llava" / f"{split}.json", llava)
        write_pairs(out / "pairs" / f"captions_{split}.jsonl", cap_pairs)
        write_pairs(out / "pairs" / f"edits_{split}.jsonl", edit_pairs)
        counts[split] = sizes[split]
    bar.close()
    ref_writer.write_instances(out / "refcoco" / "instances.json")
    write_refs(out / "refcoco" / "refs.json", refs)
    write_class_file(out / "ade" / "objectInfo.txt", list(CATEGORIES))
    manifest = {
        "version": MANIFEST_VERSION,
        "seed": seed,
        "num": num,
        "image_size": image_size,
        "splits": counts,
        "heldout_pairs": [list(p) for p in held_list],
        "phrasing": {s: ("heldout" if s == "test" else "train") for s in counts},
        "categories": list(CATEGORIES),
        "pope_stats": stats.to_dict(),
        "layout": {
            "images": "images/<split>/",
            "coco": "coco/instances_<split>.json, coco/captions_<split>.json (image_root images/<split>)",
            "refcoco": "refcoco/instances.json + refcoco/refs.json (image_root images)",
            "ade20k": "ade/annotations/<split>/ + ade/objectInfo.txt (image_dir images/<split>)",
            "llava": "llava/<split>.json (image_root images)",
            "pairs": "pairs/captions_<split>.jsonl, pairs/edits_<split>.jsonl (image_root images)",
        },
    }
    atomic_write_json(out / "manifest.json", manifest, indent=1)
    return manifest


def run_synth(args: argparse.Namespace) -> int:
    manifest = synthesize(
        out=args.out,
        num=args.num,
        seed=args.seed,
        image_size=args.image_size,
        heldout_num=args.heldout_num,
        num_heldout_pairs=args.heldout_pairs,
        progress=not args.no_progress,
    )
    print(f"wrote {sum(manifest['splits'].values())} scenes {manifest['splits']} to {args.out}")
    return 0


def _data_subparsers(data: argparse.ArgumentParser) -> argparse._SubParsersAction:
    """The ``data`` command's sub-command table, created on first use (several modules may
    register ``data ...`` sub-commands)."""
    for action in data._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    return data.add_subparsers(dest="data_command", required=True, metavar="{synth,...}")


def register(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add ``data synth`` to the top-level CLI's sub-commands; the parsed args carry
    ``func(args) -> int``."""
    data = subparsers.choices.get("data") or subparsers.add_parser("data", help="dataset tools")
    p = _data_subparsers(data).add_parser(
        "synth",
        help="generate the synthetic multi-task world",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--num", type=int, required=True, help="scenes in train + val + test")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--image-size", type=int, default=128, help="square image side in pixels")
    p.add_argument(
        "--heldout-num", type=int, default=None, help="scenes in the held-out split (default num/10)"
    )
    p.add_argument("--heldout-pairs", type=int, default=6, help="(kind, colour) pairs held out of training")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run_synth)
    return p
