"""Test helper: tiny shape scenes (boxes, masks, named keypoints) and decoder inputs built from them."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image, ImageDraw

from visionllm2.data.sample import LinkTarget
from visionllm2.decoders import Links

# Keypoint names per shape: each category its own skeleton.
SKELETONS: dict[str, tuple[str, ...]] = {
    "square": ("top_left", "top_right", "bottom_right", "bottom_left"),
    "triangle": ("apex", "bottom_left", "bottom_right"),
    "circle": ("top", "right", "bottom", "left"),
}


def _shape_keypoints(kind: str, x0: int, y0: int, s: int) -> list[tuple[float, float]]:
    x1, y1 = x0 + s, y0 + s
    if kind == "square":
        return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]
    if kind == "triangle":
        return [((x0 + x1) / 2, y0), (x0, y1), (x1, y1)]
    return [((x0 + x1) / 2, y0), (x1, (y0 + y1) / 2), ((x0 + x1) / 2, y1), (x0, (y0 + y1) / 2)]


def shapes_scene(
    rng: np.random.Generator,
    classes: tuple[str, ...],
    *,
    size: tuple[int, int] = (160, 128),
    max_objects: int = 3,
    side: tuple[int, int] = (26, 56),
) -> tuple[Image.Image, dict[str, list[dict[str, np.ndarray]]]]:
    """A dark image with 1..max_objects non-overlapping shapes of random colour.

    Returns the image and, per class, its instances: ``box`` (4,) xyxy pixels, ``mask`` (H, W)
    bool, ``keypoints`` (P, 3) with v=2."""
    w, h = size
    img = Image.new("RGB", size, tuple(int(v) for v in rng.integers(0, 60, 3)))
    draw = ImageDraw.Draw(img)
    objects: dict[str, list[dict[str, np.ndarray]]] = {c: [] for c in classes}
    placed: list[tuple[int, int, int, int]] = []
    for _ in range(int(rng.integers(1, max_objects + 1))):
        kind = classes[int(rng.integers(0, len(classes)))]
        for _try in range(50):
            s = int(rng.integers(side[0], side[1]))
            x0, y0 = int(rng.integers(0, w - s)), int(rng.integers(0, h - s))
            box = (x0, y0, x0 + s, y0 + s)
            if all(box[2] <= b[0] or b[2] <= box[0] or box[3] <= b[1] or b[3] <= box[1] for b in placed):
                break
        else:
            continue
        placed.append(box)
        colour = tuple(int(v) for v in rng.integers(130, 256, 3))
        mask_img = Image.new("L", size, 0)
        mdraw = ImageDraw.Draw(mask_img)
        corners = [x0, y0, x0 + s - 1, y0 + s - 1]
        if kind == "circle":
            draw.ellipse(corners, fill=colour)
            mdraw.ellipse(corners, fill=1)
        elif kind == "square":
            draw.rectangle(corners, fill=colour)
            mdraw.rectangle(corners, fill=1)
        else:
            tri = [((x0 + x0 + s - 1) / 2, y0), (x0, y0 + s - 1), (x0 + s - 1, y0 + s - 1)]
            draw.polygon(tri, fill=colour)
            mdraw.polygon(tri, fill=1)
        kps = np.array([(x, y, 2.0) for x, y in _shape_keypoints(kind, x0, y0, s)], dtype=np.float32)
        objects[kind].append(
            {
                "box": np.array(box, dtype=np.float32),
                "mask": np.asarray(mask_img, dtype=bool),
                "keypoints": kps,
            }
        )
    return img, objects


def to_pixels(
    images: list[Image.Image], size: int, mean: tuple[float, ...], std: tuple[float, ...]
) -> torch.Tensor:
    """Squash-resize and normalise like the model does for a decoder -> (S, 3, size, size)."""
    m = torch.tensor(mean)[:, None, None]
    sd = torch.tensor(std)[:, None, None]
    arrays = [np.array(im.convert("RGB").resize((size, size), Image.BILINEAR)) for im in images]
    return torch.stack([(torch.from_numpy(a).permute(2, 0, 1).float() / 255 - m) / sd for a in arrays])


def detection_inputs(
    scenes: list[tuple[Image.Image, dict[str, list[dict[str, np.ndarray]]]]],
    classes: tuple[str, ...],
    class_states: torch.Tensor,
    *,
    family: str = "det",
    with_masks: bool = True,
) -> tuple[Links, list[LinkTarget]]:
    """One link per class per scene (fixed states per class), with that class's instances."""
    s = len(scenes)
    c = len(classes)
    sample = torch.arange(s).repeat_interleave(c)
    links = Links(
        states=class_states.repeat(s, 1, 1),
        sample=sample,
        batch_index=sample.clone(),
        families=[family] * (s * c),
        names=list(classes) * s,
        num_samples=s,
        image_sizes=torch.tensor([list(im.size) for im, _ in scenes]),
    )
    targets = []
    for im, objects in scenes:
        w, h = im.size
        for cls in classes:
            inst = objects[cls]
            boxes = np.array([o["box"] for o in inst], dtype=np.float32).reshape(-1, 4)
            masks = np.array([o["mask"] for o in inst], dtype=bool).reshape(-1, h, w) if with_masks else None
            targets.append(LinkTarget(boxes=boxes, masks=masks))
    return links, targets


def pose_inputs(
    scenes: list[tuple[Image.Image, dict[str, list[dict[str, np.ndarray]]]]],
    classes: tuple[str, ...],
    name_states: dict[str, torch.Tensor],
) -> tuple[Links, list[LinkTarget | None]]:
    """Per scene, for each class: a category link then its keypoint-name links."""
    states, sample, names, targets = [], [], [], []
    for b, (_, objects) in enumerate(scenes):
        for cls in classes:
            kp_names = SKELETONS[cls]
            inst = objects[cls]
            for i, name in enumerate((cls, *kp_names)):
                states.append(name_states[name])
                sample.append(b)
                names.append(name)
                if i == 0:
                    boxes = np.array([o["box"] for o in inst], dtype=np.float32).reshape(-1, 4)
                    kps = np.array([o["keypoints"] for o in inst], dtype=np.float32).reshape(
                        -1, len(kp_names), 3
                    )
                    targets.append(LinkTarget(boxes=boxes, keypoints=kps))
                else:
                    targets.append(None)
    sample_t = torch.tensor(sample)
    links = Links(
        states=torch.stack(states),
        sample=sample_t,
        batch_index=sample_t.clone(),
        families=["pose"] * len(names),
        names=names,
        num_samples=len(scenes),
        image_sizes=torch.tensor([list(im.size) for im, _ in scenes]),
    )
    return links, targets


def overfit_decoder(dec, links: Links, pixels: torch.Tensor, targets: list, *, lr: float, steps: int = 200):
    """Train a decoder alone on one fixed batch, then return its predictions. A final phase at
    a tenth of the rate settles the set matching (DETR-style schedules drop the rate late)."""
    opt = torch.optim.AdamW(dec.parameters(), lr=lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, [int(0.8 * steps)], 0.1)
    dec.train()
    for _ in range(steps):
        loss = sum(dec(links, pixels, targets).values())
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(dec.parameters(), 0.1)
        opt.step()
        sched.step()
    dec.eval()
    with torch.no_grad():
        return dec(links, pixels)
