"""Weighted mixed-task sampling, deterministic by step so a resumed run sees the same data."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence

import numpy as np
import torch

from visionllm2.data.processor import Batch, VisionLLM2Processor
from visionllm2.data.sample import Sample
from visionllm2.training.config import DatasetSpec

# type -> "module:function" building a Sequence[Sample] from the spec's args.
_DATASETS: dict[str, str | Callable[..., Sequence[Sample]]] = {}


def register_dataset(name: str, factory: str | Callable[..., Sequence[Sample]]) -> None:
    """Make a dataset type nameable in training configs (``type: name``)."""
    _DATASETS[name] = factory


def build_dataset(spec: DatasetSpec) -> Sequence[Sample]:
    if spec.type not in _DATASETS:
        raise ValueError(
            f"dataset {spec.name!r} has unknown type {spec.type!r}; known types: {sorted(_DATASETS)}"
        )
    factory = _DATASETS[spec.type]
    if isinstance(factory, str):
        module, fn = factory.split(":")
        factory = getattr(importlib.import_module(module), fn)
    ds = factory(**spec.args)
    if len(ds) == 0:
        raise ValueError(f"dataset {spec.name!r} ({spec.type}) is empty")
    return ds


class Mixture:
    """Draws each global batch from several datasets by weight. Batch ``step`` depends only on
    (seed, stage, step), so resuming at a step needs no sampler state; every sample of a batch
    is drawn independently, so one batch mixes tasks."""

    def __init__(
        self, datasets: dict[str, Sequence[Sample]], weights: dict[str, float], *, seed: int, stage: int
    ):
        active = {k: w for k, w in weights.items() if w > 0}
        if not active:
            raise ValueError("every dataset has weight 0 in this stage")
        self.datasets = datasets
        self.names = list(active)
        p = np.array([active[k] for k in self.names], dtype=np.float64)
        self.probs = p / p.sum()
        self.seed = seed
        self.stage = stage

    def draw(self, step: int, batch_size: int) -> list[tuple[str, int]]:
        rng = np.random.default_rng([self.seed, self.stage, step])
        which = rng.choice(len(self.names), size=batch_size, p=self.probs)
        out = []
        for w in which:
            name = self.names[w]
            out.append((name, int(rng.integers(len(self.datasets[name])))))
        return out


class StepBatches(torch.utils.data.Dataset):
    """Item ``step`` = this process's share of global batch ``step``, processed into a Batch.
    Run under a DataLoader with workers it prefetches; the order is still fixed by step."""

    def __init__(
        self,
        mixture: Mixture,
        processor: VisionLLM2Processor,
        *,
        batch_size: int,
        steps: int,
        rank: int = 0,
        world: int = 1,
        micro_batches: int = 1,
        max_tokens: int | None = None,
    ):
        if batch_size % (world * micro_batches):
            raise ValueError(
                f"global batch_size {batch_size} must be divisible by processes x grad_accum "
                f"= {world * micro_batches}"
            )
        self.mixture = mixture
        self.processor = processor
        self.batch_size = batch_size
        self.steps = steps
        self.rank = rank
        self.world = world
        self.micro_batches = micro_batches
        self.max_tokens = max_tokens

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, step: int) -> list[Batch]:
        draws = self.mixture.draw(step, self.batch_size)
        # Contiguous shares: rank r's share equals micro-batch r of a one-process run with
        # grad_accum = world, which is what makes the two updates identical.
        share = self.batch_size // self.world
        mine = draws[self.rank * share : (self.rank + 1) * share]
        samples = [self.mixture.datasets[name][i] for name, i in mine]
        if self.max_tokens is not None:
            return [self.processor(group) for group in self._by_length(samples)]
        per = len(samples) // self.micro_batches
        return [self.processor(samples[i * per : (i + 1) * per]) for i in range(self.micro_batches)]

    def _by_length(self, samples: list[Sample]) -> list[list[Sample]]:
        """Longest first, greedily: a group grows while (size x its longest) <= max_tokens."""
        lengths = [self.processor([s]).input_ids.shape[1] for s in samples]
        order = sorted(range(len(samples)), key=lambda i: -lengths[i])
        groups: list[list[int]] = []
        for i in order:
            if groups and (len(groups[-1]) + 1) * lengths[groups[-1][0]] <= self.max_tokens:
                groups[-1].append(i)
            else:
                groups.append([i])
        return [[samples[i] for i in g] for g in groups]


def task_of(sample: Sample) -> str:
    return sample.task or "chat"


def world_dataset(
    *, num: int, seed: int = 0, heldout_seed: int | None = None, config: dict | None = None, **kwargs
) -> Sequence[Sample]:
    """The synthetic world from YAML arguments: ``config`` is a WorldConfig as a dict, and
    ``heldout_seed`` keeps that seed's held-out colour-shape pairs out (compositional split)."""
    from visionllm2.data.synthetic.tasks import SyntheticTaskDataset
    from visionllm2.data.synthetic.world import WorldConfig, heldout_pairs

    if heldout_seed is not None:
        kwargs["exclude_pairs"] = heldout_pairs(heldout_seed)
    return SyntheticTaskDataset(num=num, seed=seed, config=WorldConfig(**(config or {})), **kwargs)


register_dataset("world", world_dataset)
register_dataset("coco", "visionllm2.data.formats.coco:CocoDataset")
register_dataset("refcoco", "visionllm2.data.formats.refcoco:RefCocoDataset")
register_dataset("ade20k", "visionllm2.data.formats.ade20k:Ade20kDataset")
register_dataset("llava", "visionllm2.data.formats.llava:LlavaDataset")
register_dataset("captions", "visionllm2.data.formats.pairs:CaptionPairs")
register_dataset("edits", "visionllm2.data.formats.pairs:EditPairs")
