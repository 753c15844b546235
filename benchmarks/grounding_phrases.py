"""Which referring phrases does a model ground? From the predictions of a world grounding evaluation
(`visionllm2 eval --benchmark world --tasks grd --out DIR`), Acc@0.5 per kind of phrase in the
world's grammar: a relation to a landmark ("the red diamond above the person"), a superlative
("the largest green shape"), a position in the image ("the purple shape at the top"), or
attributes alone ("the dotted blue shape").

    visionllm2 eval --model tiny --benchmark world --tasks grd --limit 200 --out /tmp/ev_grd
    python benchmarks/grounding_phrases.py /tmp/ev_grd --limit 200
"""

from __future__ import annotations

from collections import defaultdict

from pose_ranking import world_task_records
from visionllm2.data.synthetic.tasks import RELATIONS
from visionllm2.data.synthetic.world import POSITIONS, position_phrase
from visionllm2.evaluation.grounding import rec_accuracy

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


if __name__ == "__main__":
    main()
