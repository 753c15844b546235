"""Which referring phrases does a model ground? From the predictions of a world grounding evaluation
(`visionllm2 eval --benchmark world --tasks grd --out DIR`), Acc@0.5 per kind of phrase in the
world's grammar: a relation to a landmark ("the red diamond above the person"), a superlative
("the largest green shape"), a position in the image ("the purple shape at the top"), or
attributes alone ("the dotted blue shape"). A second table says where the missed relation phrases'
boxes went: onto the landmark, onto another object the words before the relation fit, onto an
object they do not fit (split by whether it stands where the relation says), or onto no object;
and how often those words alone single out the target (when they do, the relation is redundant).

    visionllm2 eval --model tiny --benchmark world --tasks grd --limit 200 --out /tmp/ev_grd
    python benchmarks/grounding_phrases.py /tmp/ev_grd --limit 200
"""

from __future__ import annotations

from collections import Counter, defaultdict

import numpy as np
import torch

from pose_ranking import world_task_records
from visionllm2.data.synthetic.tasks import (
    RELATIONS,
    Desc,
    _matches_simple,
    _relation,
    _resolve,
    scene_things,
)
from visionllm2.data.synthetic.world import COLOURS, POSITIONS, position_phrase
from visionllm2.evaluation.grounding import rec_accuracy
from visionllm2.evaluation.world import WorldSuite
from visionllm2.ops.boxes import box_iou

KINDS = ("relation", "superlative", "position", "attributes")
POSITION_PHRASES = tuple(position_phrase(p) for p in POSITIONS)  # "at the top left", "in the center"...


def phrase_kind(expression: str) -> str:
    if any(f" {r} " in f" {expression} " for r in RELATIONS):
        return "relation"
    if "largest" in expression or "smallest" in expression:
        return "superlative"
    if expression.endswith(POSITION_PHRASES):
        return "position"
    return "attributes"


MISSES = (
    "landmark",
    "fits the words",
    "other, relation holds",
    "other, relation fails",
    "no object",
)


def simple_desc(words: str) -> Desc:
    """ "the [colour] kind|shape" (the two halves of a relation phrase) -> its Desc."""
    w = words.split()
    return Desc(None if w[-1] == "shape" else w[-1], next((x for x in w if x in COLOURS), None))


def relation_miss(box, case, scene, rendered) -> tuple[str | None, bool]:
    """A relation phrase's predicted box (xyxy or None) -> where it went (one of ``MISSES``, None
    when it is right), and whether the words before the relation single out one object."""
    things = scene_things(scene, rendered)
    expression = case.ref["expression"]
    rel = next(r for r in RELATIONS if f" {r} " in f" {expression} ")
    base, mark = (simple_desc(half) for half in expression.split(f" {rel} "))
    fits = [t for t in things if _matches_simple(base, t, things)]
    if rec_accuracy([box], [case.ref["box"]]) == 1.0:
        return None, len(fits) == 1
    if box is None:
        return "no object", len(fits) == 1
    objects = torch.tensor(np.array([rendered.objects[t.obj].box for t in things]), dtype=torch.float32)
    iou = box_iou(torch.tensor([box], dtype=torch.float32), objects)[0][0]
    hit = [t for t, v in zip(things, iou.tolist(), strict=True) if v >= 0.5]
    if not hit:
        return "no object", len(fits) == 1
    margin = 0.06 * max(scene.width, scene.height)  # the grammar's own margin
    marks = _resolve(mark, things, margin) or []
    if hit[0] in marks:
        return "landmark", len(fits) == 1
    if hit[0] in fits:
        return "fits the words", len(fits) == 1
    holds = bool(marks) and _relation(rel, hit[0], marks[0], margin)
    return ("other, relation holds" if holds else "other, relation fails"), len(fits) == 1


def main() -> None:
    splits = world_task_records(__doc__, "grd")
    print("| split | " + " | ".join(KINDS) + " | all |")
    print("|---" * (len(KINDS) + 2) + "|")
    for split, pairs in splits:
        groups: dict[str, tuple[list, list]] = defaultdict(lambda: ([], []))
        for rec, case in pairs:
            for key in (phrase_kind(case.ref["expression"]), "all"):
                groups[key][0].append(rec["box"])
                groups[key][1].append(case.ref["box"])
        cells = [
            f"{100 * rec_accuracy(*groups[k]):.1f} ({len(groups[k][0])})" if k in groups else "-"
            for k in (*KINDS, "all")
        ]
        print(f"| {split} | " + " | ".join(cells) + " |")
    suite = WorldSuite(limit=len(splits[0][1]), tasks="grd", splits=",".join(s for s, _ in splits))
    print("\nMissed relation phrases, where the box went (share of the misses), and the share of relation")
    print("phrases whose words before the relation fit one object alone:\n")
    print("| split | misses | " + " | ".join(MISSES) + " | words alone suffice |")
    print("|---" * (len(MISSES) + 3) + "|")
    for split, pairs in splits:
        where, alone, n = Counter(), 0, 0
        for rec, case in pairs:
            if phrase_kind(case.ref["expression"]) != "relation":
                continue
            miss, single = relation_miss(
                rec["box"], case, *suite.scene(split, int(rec["uid"].rsplit("/", 1)[1]))
            )
            n, alone = n + 1, alone + single
            if miss is not None:
                where[miss] += 1
        total = sum(where.values())
        cells = [f"{100 * where[k] / max(total, 1):.0f}%" for k in MISSES]
        print(f"| {split} | {total} of {n} | " + " | ".join(cells) + f" | {100 * alone / max(n, 1):.0f}% |")


if __name__ == "__main__":
    main()
