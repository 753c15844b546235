"""Runs a model over a benchmark: batched greedy inference, resumable predictions, torchrun shards, summaries.

Output folder layout (``--out``)::

    run.json                     what produced the predictions (benchmark, model and a digest of its
                                 weights, settings); a rerun with a different model, other weights at the
                                 same path included, or different settings into the same folder is refused
    predictions.jsonl            one JSON line per item, ``{"uid": ..., **record}``, in benchmark order
    predictions.part-*.jsonl     lines appended while a run is in progress (one file per process and run);
                                 merged into predictions.jsonl and removed at the end
    submission/                  the benchmark's own submission file(s)
    summary.json, summary.md     scores and run statistics (written atomically)

Resuming: every process reads the uids already present in ``predictions.jsonl`` and in any part file
(a run killed half way leaves its part files behind; a torn last line is ignored) and skips them.

Sharding under ``torchrun``: the pending items are cut into batches in benchmark order and process ``r``
takes batches ``r, r + W, r + 2W, …``. Every batch therefore holds exactly the items it would hold in a
one-process run, so the predictions are the same as with one process. Process 0 waits for the others (a
gloo barrier with a long timeout, so a slow shard never times the others out), merges the part files,
scores, and writes the submission and the summaries.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import os
import time
import uuid
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from tqdm import tqdm

from visionllm2.config import atomic_write_text
from visionllm2.data.formats.common import atomic_write_json
from visionllm2.data.processor import Batch, VisionLLM2Processor
from visionllm2.data.sample import Sample, Turn
from visionllm2.inference.results import Result
from visionllm2.modeling.model import VisionLLM2Model

__all__ = [
    "EvalItem",
    "Benchmark",
    "build_batch",
    "plan_batches",
    "read_predictions",
    "evaluate",
    "summary_markdown",
]

PREDICTIONS = "predictions.jsonl"
RUN_FILE = "run.json"
SUMMARY_JSON = "summary.json"
SUMMARY_MD = "summary.md"
SUBMISSION_DIR = "submission"
_PART_GLOB = "predictions.part-*.jsonl"


@dataclass
class EvalItem:
    """One model call of a benchmark.

    ``sample()`` builds the question (the conversation ends with the user's turn; images are loaded on
    call, so listing a benchmark stays cheap). ``forced`` is text the answer is made to start with: the
    perception benchmarks put the link list there (``"circle[DET], square[DET]"``), so the decoders are
    asked for exactly the benchmark's classes, as the official evaluation does (teacher-forced links);
    ``""`` lets the model answer freely. ``ref`` is whatever the benchmark needs to record and score it.
    """

    uid: str
    sample: Callable[[], Sample]
    forced: str = ""
    max_new_tokens: int = 32
    run_decoders: bool = True
    ref: Any = None


class Benchmark(ABC):
    """A benchmark the runner can drive: items, one prediction record per item, scores, submission."""

    name: str = ""

    def settings(self) -> dict[str, Any]:
        """What changes the predictions (split, prompt mode, …): recorded in ``run.json`` and compared on
        resume, so predictions made under other settings are never mixed in."""
        return {}

    @abstractmethod
    def items(self, model: VisionLLM2Model) -> list[EvalItem]:
        """Every item, in benchmark order (deterministic: every process must list the same items)."""

    @abstractmethod
    def record(self, item: EvalItem, result: Result, *, out_dir: Path) -> dict[str, Any]:
        """The JSON-serialisable prediction of one item (without its uid)."""

    @abstractmethod
    def score(self, items: Sequence[EvalItem], records: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
        """Scores from the records of ``items`` (JSON-serialisable; accuracies in percent)."""

    def write_submission(
        self, items: Sequence[EvalItem], records: Mapping[str, dict[str, Any]], out_dir: Path
    ) -> list[Path]:
        """Write the benchmark's own submission file(s) into ``out_dir``; returns the paths."""
        return []

    def markdown(self, scores: Mapping[str, Any]) -> str | None:
        """A custom markdown table of the scores for ``summary.md``; ``None``: one row per scalar."""
        return None


# --------------------------------------------------------------------------- batches


def build_batch(processor: VisionLLM2Processor, samples: Sequence[Sample], forced: Sequence[str]) -> Batch:
    """A left-padded generation batch whose answers start with ``forced[i]`` (``""``: a plain generation
    prompt).

    The forced text is encoded as the assistant turn of a template without an end-of-turn string, so the
    model continues right after it, and routing tokens in it get their query slots and become links of
    the prompt (``generate`` captures their states and runs the decoders on them).
    """
    if len(samples) != len(forced):
        raise ValueError(f"{len(samples)} samples but {len(forced)} forced answers")
    proc = copy.copy(processor)
    proc.template = dataclasses.replace(processor.template, assistant_suffix="")
    prepared = []
    for s, text in zip(samples, forced):
        if not s.conversation or s.conversation[-1].role != "user":
            raise ValueError("an evaluation sample must end with the user's turn (the model answers it)")
        prepared.append(
            dataclasses.replace(s, conversation=[*s.conversation, Turn("assistant", text)], targets=[])
        )
    # An empty assistant turn encodes exactly like add_generation_prompt=True (the assistant prefix alone).
    return proc(prepared, add_generation_prompt=False, padding_side="left", with_targets=False)


def plan_batches(items: Sequence[EvalItem], batch_size: int) -> list[list[EvalItem]]:
    """Consecutive items with the same generation settings, at most ``batch_size`` per batch.

    The plan depends only on the item list, never on the number of processes (see the module docs)."""
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    batches: list[list[EvalItem]] = []
    for it in items:
        last = batches[-1] if batches else None
        if (
            last is not None
            and len(last) < batch_size
            and last[0].max_new_tokens == it.max_new_tokens
            and last[0].run_decoders == it.run_decoders
        ):
            last.append(it)
        else:
            batches.append([it])
    return batches


# --------------------------------------------------------------------------- prediction files


def _read_jsonl_records(path: Path) -> list[dict[str, Any]]:
    """Records of one predictions file. A torn line (a killed writer) is skipped: its item is redone."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(rec, dict) and isinstance(rec.get("uid"), str):
                out.append(rec)
    return out


def read_predictions(out_dir: str | os.PathLike) -> dict[str, dict[str, Any]]:
    """uid -> record from ``predictions.jsonl`` and any part files left by unfinished runs (first wins)."""
    out_dir = Path(out_dir)
    records: dict[str, dict[str, Any]] = {}
    paths = [out_dir / PREDICTIONS] + sorted(out_dir.glob(_PART_GLOB))
    for path in paths:
        if path.is_file():
            for rec in _read_jsonl_records(path):
                records.setdefault(rec["uid"], rec)
    return records


class _PartWriter:
    """Appends this process's records; each batch is flushed and fsynced, so a kill loses at most the
    batch being written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f = None

    def write(self, records: Iterable[dict[str, Any]]) -> None:
        if self._f is None:
            self._f = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (kept open across batches)
        self._f.write("".join(json.dumps(r) + "\n" for r in records))
        self._f.flush()
        os.fsync(self._f.fileno())

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


# --------------------------------------------------------------------------- processes


class _Processes:
    """Rank, world size and a barrier. Under torchrun the barrier runs on its own gloo group with a long
    timeout: one shard may take hours longer than another, and NCCL barriers would also occupy a GPU."""

    def __init__(self) -> None:
        self.enabled = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        self.rank = dist.get_rank() if self.enabled else 0
        self.world = dist.get_world_size() if self.enabled else 1
        self._group = dist.new_group(backend="gloo", timeout=timedelta(days=7)) if self.enabled else None

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier(group=self._group)

    def gather(self, value: Any) -> list[Any]:
        """Every process's ``value``, in rank order (also a barrier)."""
        if not self.enabled:
            return [value]
        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value, group=self._group)
        return values

    def all_ok(self, ok: bool) -> bool:
        """Whether every process reports ``ok`` (so all of them stop together on a bad set-up)."""
        return all(bool(f) for f in self.gather(ok))


# --------------------------------------------------------------------------- the run


def weights_digest(model: torch.nn.Module) -> str:
    """A short digest of a model's tensors (names, shapes, dtypes, and each tensor's sum and L2 norm
    to 10 significant digits): weights retrained or swapped under the same path give another digest,
    computed in one read of the tensors where they are."""
    h = hashlib.sha256()
    with torch.no_grad():
        for name, t in model.state_dict().items():
            h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
            if t.numel():
                x = t.detach() if t.is_floating_point() else t.detach().float()
                total = float(x.sum(dtype=torch.float64))
                norm = float(torch.linalg.vector_norm(x, dtype=torch.float64))
                # 10 significant digits: the reductions' order (threads, device) must not matter.
                h.update(f"{total:.10g}|{norm:.10g}|".encode())
    return h.hexdigest()[:16]


def _fingerprint(
    benchmark: Benchmark, model_name: str, weights: str, max_new_tokens: int | None
) -> dict[str, Any]:
    return {
        "benchmark": benchmark.name,
        "model": model_name,
        "weights": weights,
        "settings": benchmark.settings(),
        "max_new_tokens": max_new_tokens,
    }


def _prepare_folder(out_dir: Path, run_info: dict[str, Any], overwrite: bool) -> str | None:
    """Process 0's set-up; returns an error message instead of raising, so every process can stop."""
    run_path = out_dir / RUN_FILE
    if run_path.is_file() and not overwrite:
        try:
            previous = json.loads(run_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            previous = None
        if previous != run_info:
            return (
                f"{out_dir} holds predictions of another run ({run_path.name}: {json.dumps(previous)}); "
                "use a new --out folder, or --overwrite to discard them"
            )
    if overwrite:
        for p in [out_dir / PREDICTIONS, *out_dir.glob(_PART_GLOB)]:
            p.unlink(missing_ok=True)
    atomic_write_json(run_path, run_info, indent=1)
    return None


def evaluate(
    model: VisionLLM2Model,
    benchmark: Benchmark,
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 8,
    max_new_tokens: int | None = None,
    model_name: str = "model",
    progress: bool = True,
    overwrite: bool = False,
) -> dict[str, Any] | None:
    """Run ``model`` over ``benchmark`` into ``out_dir`` (see the module docs for the files and the
    resume / sharding rules). Greedy decoding; ``max_new_tokens`` overrides every item's own limit.

    Under torchrun (the default process group initialised), every process calls this; process 0 returns
    the summary, the others ``None``.
    """
    out_dir = Path(out_dir)
    procs = _Processes()
    started = time.time()
    model.eval()
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype

    run_info = _fingerprint(benchmark, model_name, weights_digest(model), max_new_tokens)
    error = None
    if procs.rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        error = _prepare_folder(out_dir, run_info, overwrite)
    if not procs.all_ok(error is None):
        raise ValueError(error or "process 0 refused the output folder (see its error)")

    items = benchmark.items(model)
    uids = [it.uid for it in items]
    if len(set(uids)) != len(uids):
        dup = next(u for u in uids if uids.count(u) > 1)
        raise ValueError(f"benchmark {benchmark.name!r} lists item uid {dup!r} more than once")
    done = read_predictions(out_dir)
    # Nobody may write before everyone has read the same set of finished items.
    procs.barrier()
    pending = [it for it in items if it.uid not in done]
    batches = plan_batches(pending, batch_size)
    mine = batches[procs.rank :: procs.world]

    writer = _PartWriter(out_dir / f"predictions.part-r{procs.rank}-{uuid.uuid4().hex[:8]}.jsonl")
    desc = benchmark.name if procs.world == 1 else f"{benchmark.name} [rank 0 of {procs.world}]"
    bar = tqdm(
        total=sum(len(b) for b in mine), desc=desc, unit="item", disable=not progress or procs.rank != 0
    )
    try:
        for group in mine:
            samples = [it.sample() for it in group]
            batch = build_batch(model.processor, samples, [it.forced for it in group]).to(device, dtype)
            # Decoders that sample (text-to-image, editing) draw each item's noise from its uid, so a
            # prediction does not depend on the batch, the tasks run before it or a resume.
            seeds = [zlib.crc32(it.uid.encode()) for it in group]
            results = model.generate(
                batch,
                max_new_tokens=max_new_tokens or group[0].max_new_tokens,
                do_sample=False,
                run_decoders=group[0].run_decoders,
                decoder_options={name: {"seed": seeds} for name in model.decoders},
            )
            records = [
                {"uid": it.uid, **benchmark.record(it, r, out_dir=out_dir)} for it, r in zip(group, results)
            ]
            writer.write(records)
            bar.update(len(group))
    finally:
        writer.close()
        bar.close()

    # Waits for every shard; the counts show how the work was split.
    per_process = procs.gather(sum(len(b) for b in mine))
    if procs.rank != 0:
        return None

    records = read_predictions(out_dir)
    missing = [u for u in uids if u not in records]
    if missing:
        raise RuntimeError(f"{len(missing)} item(s) have no prediction after the run, e.g. {missing[0]!r}")
    ordered = [records[u] for u in uids]
    listed = set(uids)
    extra = [r for u, r in records.items() if u not in listed]  # other --limit runs: kept, not scored
    atomic_write_text(out_dir / PREDICTIONS, "".join(json.dumps(r) + "\n" for r in ordered + extra))
    for p in out_dir.glob(_PART_GLOB):
        p.unlink()

    scores = benchmark.score(items, records)
    submission = benchmark.write_submission(items, records, out_dir / SUBMISSION_DIR)
    resumed = sum(1 for u in uids if u in done)
    summary = {
        "benchmark": benchmark.name,
        "model": model_name,
        "settings": benchmark.settings(),
        "num_items": len(items),
        "num_predicted": len(items) - resumed,
        "num_resumed": resumed,
        "processes": procs.world,
        "items_per_process": per_process,
        "batch_size": batch_size,
        "seconds": round(time.time() - started, 3),
        "predictions": PREDICTIONS,
        "submission": [str(p.relative_to(out_dir)) for p in submission],
        "scores": scores,
    }
    atomic_write_json(out_dir / SUMMARY_JSON, summary, indent=1)
    atomic_write_text(out_dir / SUMMARY_MD, summary_markdown(summary, benchmark.markdown(scores)))
    return summary


# --------------------------------------------------------------------------- markdown


def _flatten(prefix: str, value: Any, rows: list[tuple[str, str]]) -> None:
    if isinstance(value, Mapping):
        for k, v in value.items():
            _flatten(f"{prefix}.{k}" if prefix else str(k), v, rows)
    elif isinstance(value, bool) or value is None:
        rows.append((prefix, "—" if value is None else str(value)))
    elif isinstance(value, float):
        rows.append((prefix, "nan" if value != value else f"{value:.2f}"))
    elif isinstance(value, (int, str)):
        rows.append((prefix, str(value)))
    # Lists (per-class IoU arrays, missing-subtask lists) are left to summary.json.


def summary_markdown(summary: Mapping[str, Any], table: str | None = None) -> str:
    """A human-readable ``summary.md``: the run line, then ``table`` or one table row per scalar score."""
    lines = [
        f"# {summary['benchmark']}",
        "",
        f"Model: `{summary['model']}` · items: {summary['num_items']} "
        f"({summary['num_predicted']} predicted, {summary['num_resumed']} resumed) · "
        f"processes: {summary['processes']} · {summary['seconds']:.1f} s",
        "",
    ]
    if summary.get("settings"):
        lines += ["Settings: " + ", ".join(f"{k}={v}" for k, v in summary["settings"].items()), ""]
    if table is not None:
        lines += [table.rstrip("\n"), "", "All numbers: `summary.json`."]
    else:
        rows: list[tuple[str, str]] = []
        _flatten("", summary["scores"], rows)
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v.replace('|', '/')} |" for k, v in rows]
    if summary.get("submission"):
        lines += ["", "Submission: " + ", ".join(f"`{p}`" for p in summary["submission"])]
    return "\n".join(lines) + "\n"
