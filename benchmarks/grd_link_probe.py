"""Does the [GRD] link carry the referring phrase's own words? Linear probes on what the grounding
decoder reads.

World grounding prompts go through the model as in training, and the link states the grounding
decoder receives (after the super-link projection) are captured with the phrase each link names.
A multinomial logistic regression (`link_probe.probe_accuracy`) learns, from 3/4 of the links, the
colour of the object the phrase names: for relation phrases ("the red shape above the person") the
colour of the words before the relation, and the landmark's kind; for attribute phrases ("the dotted
red shape") the colour. It is scored on the rest. A colour the probe cannot read from a relation
link's mean state is a colour the decoder's one class embedding for that phrase does not carry.

    python benchmarks/grd_link_probe.py --model tiny --samples 4096
"""

from __future__ import annotations

import torch

from grounding_phrases import phrase_kind, simple_desc
from link_probe import probe_accuracy, probe_args
from visionllm2.data.synthetic.tasks import RELATIONS
from visionllm2.data.synthetic.world import COLOURS, FIGURES, KINDS
from visionllm2.modeling.builder import from_pretrained
from visionllm2.training.data import world_dataset

NOUNS = (*KINDS, *FIGURES)


def targets(phrase: str) -> dict[str, int]:
    """The probe labels a phrase gives: {"colour", "landmark"} for a relation, {"colour"} for attributes."""
    kind = phrase_kind(phrase)
    if kind == "relation":
        rel = next(r for r in RELATIONS if f" {r} " in f" {phrase} ")
        base, mark = (simple_desc(half) for half in phrase.split(f" {rel} "))
        out = {"landmark": NOUNS.index(mark.noun)} if mark.noun in NOUNS else {}
        if base.colour:
            out["colour"] = list(COLOURS).index(base.colour)
        return out
    if kind == "attributes":
        colour = next((w for w in phrase.split() if w in COLOURS), None)
        return {"colour": list(COLOURS).index(colour)} if colour else {}
    return {}


def main() -> None:
    args = probe_args(__doc__, 4096)
    torch.manual_seed(0)
    model = from_pretrained(args.model).eval()
    name = model.config.families["grd"].decoder
    data = world_dataset(num=100_000, seed=args.seed, heldout_seed=0, weights={"grd": 1.0})
    links_of = model.decoder_links
    states: list[torch.Tensor] = []

    def capture(*a, **kw):
        groups = links_of(*a, **kw)
        states.append(groups[name][0].states.detach().clone())
        return groups

    model.decoder_links = capture
    model.decoders[name].forward = lambda links, pixels, targets=None: {"loss": links.states.sum() * 0.0}
    phrases: list[str] = []
    with torch.no_grad():
        for start in range(0, args.samples, args.batch):
            samples = [data[i] for i in range(start, min(start + args.batch, args.samples))]
            model(model.processor(samples))
            if states[-1].shape[0] != len(samples):
                raise RuntimeError("expected one [GRD] link per grounding sample")
            phrases += [s.meta["expression"] for s in samples]
    captured = list(zip(phrases, torch.cat(states), strict=True))
    print(f"model {args.model}: {len(captured)} [GRD] links from {args.samples} world grounding prompts")
    print("\n| phrases | label | links | majority class | mean of the link states | the K link states |")
    print("|---|---|---|---|---|---|")
    for kind, label in (("attributes", "colour"), ("relation", "colour"), ("relation", "landmark")):
        rows = [
            (t[label], s)
            for phrase, s in captured
            if phrase_kind(phrase) == kind
            for t in [targets(phrase)]
            if label in t
        ]
        y = torch.tensor([r[0] for r in rows])
        x = torch.stack([r[1] for r in rows])
        train = len(y) * 3 // 4
        majority = float(torch.bincount(y[train:]).max()) / (len(y) - train)
        mean_acc, all_acc = probe_accuracy(x.mean(1), y, train), probe_accuracy(x, y, train)
        cells = f"{100 * majority:.1f} | {100 * mean_acc:.1f} | {100 * all_acc:.1f}"
        print(f"| {kind} | {label} | {len(y)} | {cells} |")


if __name__ == "__main__":
    main()
