"""``visionllm2 chat`` (one image, one question) and ``visionllm2 predict`` (a folder -> COCO results)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from visionllm2.cli import CLIError, add_model_arguments

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif")
DEMO_TASKS = ("caption", "vqa", "det", "grd", "inst_seg", "sem_seg", "region_caption", "pose", "gen", "edit")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "chat",
        help="ask one question about an image",
        description="Ask a question about an image. Prints the answer, saves the result drawn on the image "
        "as a PNG and, with --json, the structured outputs (boxes, RLE masks, keypoints, images).",
    )
    p.add_argument("prompt", help='the question or instruction, e.g. "Detect the circles and squares."')
    p.add_argument("--image", help="input image (omit for text-only prompts such as image generation)")
    add_model_arguments(p)
    g = p.add_argument_group(
        "visual prompt (pixels of the image; the prompt gets a <region>, see VisionLLM2.chat)"
    )
    g.add_argument("--point", type=_floats(2), metavar="X,Y")
    g.add_argument("--box", type=_floats(4), metavar="X0,Y0,X1,Y1")
    g.add_argument("--scribble", type=_points, metavar="X,Y;X,Y;...")
    g.add_argument("--mask", metavar="PNG", help="a mask image the size of the input (non-zero = inside)")
    p.add_argument("--out", help="rendered PNG path (default: <image stem>_result.png in the current folder)")
    p.add_argument("--no-draw", action="store_true", help="do not save the rendered PNG")
    p.add_argument(
        "--json",
        nargs="?",
        const="-",
        metavar="PATH",
        help="write the result as JSON to PATH (or stdout without PATH)",
    )
    _add_generation_arguments(p)
    p.set_defaults(func=run_chat)

    q = subparsers.add_parser(
        "predict",
        help="run one prompt over a folder of images, write COCO-format results",
        description="Run one prompt over every image of a folder and write COCO results (a loadRes-ready "
        "list "
        "of {image_id, category_id, bbox, score, segmentation, keypoints}) plus an index file with the image "
        "and category ids and every answer's text.",
    )
    q.add_argument("--images", required=True, help="folder of images (png, jpg, webp, bmp, gif)")
    q.add_argument("--prompt", required=True, help='e.g. "Detect the circles and squares."')
    add_model_arguments(q)
    q.add_argument("--output", default="results.json", help="COCO results file (default: results.json)")
    q.add_argument(
        "--annotations",
        help="COCO ground truth whose image ids (by file_name) and category ids (by name) to use",
    )
    q.add_argument("--recursive", action="store_true", help="also read images in sub-folders")
    q.add_argument("--batch-size", type=int, default=4, help="images per generate call (default 4)")
    q.add_argument("--render-dir", help="also save every rendered result here")
    q.add_argument(
        "--skip-unreadable", action="store_true", help="skip unreadable images instead of stopping"
    )
    q.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _add_generation_arguments(q)
    q.set_defaults(func=run_predict)

    d = subparsers.add_parser(
        "demo",
        help="run several tasks on a built-in synthetic scene, write the rendered results",
        description="Render a scene of the synthetic world (no files needed), ask the model one question "
        f"per task ({', '.join(DEMO_TASKS)}) in a single batch, and write each result drawn as a PNG, the "
        "ground truth drawn next to it, and results.json with questions, answers and references.",
    )
    add_model_arguments(d)
    d.add_argument("--out", default="visionllm2_demo", help="output folder (default: visionllm2_demo)")
    d.add_argument("--tasks", default=",".join(DEMO_TASKS), help="comma-separated subset of the tasks")
    d.add_argument("--seed", type=int, default=0, help="which scene (default 0)")
    d.add_argument("--max-new-tokens", type=int, default=96)
    d.set_defaults(func=run_demo)


def _add_generation_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples")
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)


def _generation(args: argparse.Namespace) -> dict[str, Any]:
    if args.max_new_tokens < 1:
        raise CLIError(f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    if args.temperature < 0:
        raise CLIError(f"--temperature must be >= 0, got {args.temperature}")
    out: dict[str, Any] = {"max_new_tokens": args.max_new_tokens, "top_p": args.top_p, "seed": args.seed}
    out["do_sample"] = args.temperature > 0
    if args.temperature > 0:
        out["temperature"] = args.temperature
    return out


def _floats(n: int):
    def parse(text: str) -> tuple[float, ...]:
        try:
            values = tuple(float(v) for v in text.split(","))
        except ValueError:
            values = ()
        if len(values) != n:
            raise argparse.ArgumentTypeError(f"expected {n} comma-separated numbers, got {text!r}")
        return values

    return parse


def _points(text: str) -> list[tuple[float, float]]:
    parse = _floats(2)
    return [parse(p) for p in text.split(";") if p.strip()]


def _load_model(args: argparse.Namespace):
    from visionllm2.inference.predictor import VisionLLM2

    return VisionLLM2.from_pretrained(args.model, device=args.device)


# -- chat -------------------------------------------------------------------------------------
def run_chat(args: argparse.Namespace) -> int:
    import numpy as np

    from visionllm2.inference.predictor import load_image

    image = load_image(args.image) if args.image else None  # fail on a bad image before loading the model
    mask = None
    if args.mask:
        mask = np.asarray(load_image(args.mask).convert("L")) > 0
    generation = _generation(args)
    model = _load_model(args)
    result = model.chat(
        image, args.prompt, point=args.point, box=args.box, scribble=args.scribble, mask=mask, **generation
    )
    if args.json == "-":
        print(result.to_json())
    else:
        print(result.text)
        if args.json:
            _write_text(Path(args.json), result.to_json())
            print(f"wrote {args.json}", file=sys.stderr)
    if not args.no_draw and result.drawable:
        out = (
            Path(args.out)
            if args.out
            else Path(f"{Path(args.image).stem if args.image else 'chat'}_result.png")
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        result.draw().save(out)
        print(f"saved {out}", file=sys.stderr)
    return 0


def _write_text(path: Path, text: str) -> None:
    from visionllm2.config import atomic_write_text

    atomic_write_text(path, text if text.endswith("\n") else text + "\n")


# -- predict ----------------------------------------------------------------------------------
def _list_images(folder: Path, recursive: bool) -> list[Path]:
    if not folder.is_dir():
        raise CLIError(f"--images {str(folder)!r} is not a folder")
    paths = folder.rglob("*") if recursive else folder.iterdir()
    images = sorted(p for p in paths if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise CLIError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {str(folder)!r}")
    return images


def _unreadable(paths: list[Path]) -> dict[Path, str]:
    """Header check of every image (cheap), so a bad file stops the run before the model loads."""
    from PIL import Image

    from visionllm2.inference.predictor import IMAGE_FORMATS

    bad = {}
    for p in paths:
        try:
            with Image.open(p, formats=IMAGE_FORMATS) as im:
                im.size  # noqa: B018 - the header parsed
        except (OSError, ValueError, SyntaxError) as e:
            bad[p] = str(e)
    return bad


class _Ids:
    """Image and category ids: from a COCO ground-truth file when given, else numbered here."""

    def __init__(self, annotations: str | None) -> None:
        self.images: dict[str, int] = {}
        self.categories: dict[str, dict[str, Any]] = {}  # lower-case name -> category record
        self.fixed = annotations is not None
        if annotations:
            try:
                gt = json.loads(Path(annotations).read_text())
                self.images = {Path(im["file_name"]).as_posix(): int(im["id"]) for im in gt["images"]}
                self.categories = {c["name"].lower(): dict(c) for c in gt["categories"]}
            except (OSError, json.JSONDecodeError, KeyError, TypeError) as e:
                raise CLIError(f"--annotations {annotations!r} is not a COCO ground-truth file: {e}") from e

    def image_id(self, rel: str, index: int) -> int | None:
        if not self.fixed:
            return index + 1
        # COCO file_names are usually bare names; also accept the path relative to the folder.
        return self.images.get(rel, self.images.get(Path(rel).name))

    def category(self, label: str, keypoints: list[str] | None) -> dict[str, Any] | None:
        key = label.strip().lower()
        if key not in self.categories and not self.fixed:
            self.categories[key] = {"id": len(self.categories) + 1, "name": label.strip()}
        cat = self.categories.get(key)
        if cat is not None and keypoints and "keypoints" not in cat:
            cat["keypoints"] = list(keypoints)
        return cat


def coco_records(result: Any, image_id: int, ids: _Ids) -> tuple[list[dict[str, Any]], int]:
    """One ChatResult's detections -> COCO result records; also counts labels without a category."""
    records, unknown = [], 0
    for d in result.detections:
        cat = ids.category(d.label, list(d.keypoints) if d.keypoints else None)
        if cat is None:
            unknown += 1
            continue
        x0, y0, x1, y1 = (float(v) for v in d.box)
        rec: dict[str, Any] = {
            "image_id": image_id,
            "category_id": cat["id"],
            "bbox": [x0, y0, x1 - x0, y1 - y0],
            "score": float(d.score),
        }
        if d.mask is not None:
            rec["segmentation"] = d.mask
        if d.keypoints:
            order = cat.get("keypoints") or list(d.keypoints)
            flat: list[float] = []
            for name in order:
                x, y, s = d.keypoints.get(name, (0.0, 0.0, 0.0))
                flat += [float(x), float(y), float(s)]
            rec["keypoints"] = flat
        records.append(rec)
    return records, unknown


def run_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from visionllm2.inference.predictor import load_image

    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be >= 1, got {args.batch_size}")
    folder = Path(args.images)
    paths = _list_images(folder, args.recursive)
    bad = _unreadable(paths)
    if bad and not args.skip_unreadable:
        first, why = next(iter(bad.items()))
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise CLIError(f"unreadable image {str(first)!r}: {why}{more}; fix it or pass --skip-unreadable")
    for p in bad:
        print(f"visionllm2: skipping unreadable image {p}", file=sys.stderr)
    paths = [p for p in paths if p not in bad]
    ids = _Ids(args.annotations)
    generation = _generation(args)
    model = _load_model(args)
    render_dir = Path(args.render_dir) if args.render_dir else None
    if render_dir:
        render_dir.mkdir(parents=True, exist_ok=True)

    results: list[dict[str, Any]] = []
    index: list[dict[str, Any]] = []
    unmatched_images: list[str] = []
    unknown_labels = 0
    with tqdm(total=len(paths), unit="img", disable=args.no_progress, desc="predict") as bar:
        for start in range(0, len(paths), args.batch_size):
            chunk = paths[start : start + args.batch_size]
            images = [load_image(p) for p in chunk]
            answers = model.chat(images, args.prompt, **generation)
            for k, (path, image, answer) in enumerate(zip(chunk, images, answers)):
                rel = path.relative_to(folder).as_posix()
                image_id = ids.image_id(rel, start + k)
                if image_id is None:
                    unmatched_images.append(rel)
                    continue
                records, unknown = coco_records(answer, image_id, ids)
                results += records
                unknown_labels += unknown
                index.append(
                    {
                        "id": image_id,
                        "file_name": rel,
                        "width": image.width,
                        "height": image.height,
                        "text": answer.text,
                    }
                )
                if render_dir:
                    answer.draw().save(
                        render_dir / f"{Path(rel).with_suffix('').as_posix().replace('/', '__')}.png"
                    )
            bar.update(len(chunk))

    out = Path(args.output)
    _write_text(out, json.dumps(results))
    index_path = out.with_name(out.stem + ".index.json")
    _write_text(
        index_path, json.dumps({"images": index, "categories": list(ids.categories.values())}, indent=1)
    )
    print(f"wrote {len(results)} detections on {len(index)} images to {out} (ids and answers: {index_path})")
    if unmatched_images:
        print(
            f"visionllm2: {len(unmatched_images)} image(s) not in --annotations were left out, e.g. "
            f"{unmatched_images[0]}",
            file=sys.stderr,
        )
    if unknown_labels:
        print(
            f"visionllm2: {unknown_labels} detection(s) with labels not among --annotations categories were "
            "left out",
            file=sys.stderr,
        )
    return 0


# -- demo -------------------------------------------------------------------------------------
def _demo_scene(seed: int):
    """The first scene from ``seed`` on with shapes and a figure, so every demo task applies."""
    from visionllm2.data.synthetic.world import generate_scene, render

    for k in range(seed, seed + 100):
        scene = generate_scene(k)
        if len(scene.shapes) >= 2 and scene.figures:
            return scene, render(scene)
    raise CLIError(f"no scene with shapes and figures among seeds {seed}..{seed + 99}")


def run_demo(args: argparse.Namespace) -> int:
    import numpy as np

    from visionllm2.data.sample import Sample
    from visionllm2.data.synthetic.tasks import TaskNotApplicable, build_task
    from visionllm2.visualize import draw_sample

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = sorted(set(tasks) - set(DEMO_TASKS))
    if unknown or not tasks:
        raise CLIError(f"unknown demo task(s) {unknown}; choose from {', '.join(DEMO_TASKS)}")
    scene, rendered = _demo_scene(args.seed)
    questions, references = [], []
    for i, task in enumerate(tasks):
        try:
            ref = build_task(task, scene, np.random.default_rng([args.seed, i]), rendered=rendered)
        except TaskNotApplicable as e:
            print(f"visionllm2: skipping {task}: {e}", file=sys.stderr)
            continue
        # Ask the question only: the first user turn, with its image and visual prompts.
        questions.append(Sample(images=ref.images, conversation=ref.conversation[:1], regions=ref.regions))
        references.append((task, ref))
    model = _load_model(args)
    results = model.run(questions, {"max_new_tokens": args.max_new_tokens})

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rendered.image.save(out / "scene.png")
    report = []
    for (task, ref), question, result in zip(references, questions, results):
        entry = {"task": task, "question": question.conversation[0].content.replace("<image>\n", "")}
        entry |= {"answer": result.text, "reference": ref.conversation[1].content}
        entry |= {"outputs": result.to_dict(include_images=False)}
        if result.drawable:
            result.draw().save(out / f"{task}.png")
            entry["drawn"] = f"{task}.png"
        try:
            draw_sample(ref).save(out / f"{task}_truth.png")
            entry["truth"] = f"{task}_truth.png"
        except ValueError:  # nothing to draw for text-only references
            pass
        report.append(entry)
        items = f"{len(result.detections)} det, {len(result.semantic_maps)} sem, {len(result.images)} img"
        print(f"{task:>15} | {entry['question'][:48]:<48} | {result.text[:40]!r:<42} | {items}")
    _write_text(out / "results.json", json.dumps(report, indent=1))
    print(f"wrote {out}/ (scene.png, <task>.png, <task>_truth.png, results.json)")
    return 0
