"""Process-group set-up for torchrun, and model wrapping for DDP, FSDP or DeepSpeed."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    owns_group: bool = False  # init_distributed created the process group (so it ends it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Read torchrun's environment; one process needs none. NCCL on GPUs, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(f"cuda:{local}" if device == "cuda" else device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    owns = world > 1 and not dist.is_initialized()
    if owns:
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
    return DistInfo(rank=rank, world=world, local_rank=local, device=dev, owns_group=owns)


def finish_distributed(info: DistInfo) -> None:
    """Wait for every rank, then end the process group ``init_distributed`` created, rather than
    leave each rank to exit with its group alive while rank 0 still writes the final files (the
    two-rank gloo test once failed with a rank aborting at exit, "terminate called without an
    active exception"; this is PyTorch's documented shutdown, the cause was not proven)."""
    if not info.enabled:
        return
    dist.barrier()
    if info.owns_group:
        dist.destroy_process_group()


def wrap_model(model: nn.Module, info: DistInfo, strategy: str) -> nn.Module:
    """DDP (``find_unused_parameters``: a mixed batch may leave a decoder idle) or FSDP
    sharding each LLM decoder layer. DeepSpeed wraps in :func:`deepspeed_engine` instead."""
    if not info.enabled:
        return model
    if strategy == "ddp":
        ids = [info.device.index] if info.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
    if strategy == "fsdp":
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP
        from torch.distributed.fsdp.wrap import ModuleWrapPolicy

        layer_types = {type(layer) for layer in model.llm.get_decoder().layers}
        return FSDP(
            model, auto_wrap_policy=ModuleWrapPolicy(layer_types), use_orig_params=True, device_id=info.device
        )
    raise ValueError(f"wrap_model does not handle strategy {strategy!r}")


def deepspeed_engine(
    model: nn.Module, optimizer, scheduler, config_path: str | None, *, micro_batch: int, grad_accum: int
):
    """DeepSpeed ZeRO (configs/deepspeed/zero2.json for the full recipe). Batch sizes marked
    "auto" in the JSON are filled from the recipe."""
    try:
        import deepspeed
    except ImportError as e:
        raise ImportError("strategy 'deepspeed' needs `pip install deepspeed` (GPU machines)") from e
    if config_path is None:
        raise ValueError("strategy 'deepspeed' needs deepspeed_config: path to a DeepSpeed JSON config")
    ds = json.loads(Path(config_path).read_text())
    for key, value in (
        ("train_micro_batch_size_per_gpu", micro_batch),
        ("gradient_accumulation_steps", grad_accum),
    ):
        if ds.get(key, "auto") == "auto":
            ds[key] = value
    engine, optimizer, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds
    )
    return engine, optimizer, scheduler


def gather_windows(window: dict[str, list[float]], info: DistInfo) -> dict[str, list[float]]:
    """Merge every process's logged values. Keys differ between ranks (a rank may see no
    detection sample), so tensors cannot be all-reduced key by key."""
    if not info.enabled:
        return window
    parts: list[dict[str, list[float]] | None] = [None] * info.world
    dist.all_gather_object(parts, dict(window))
    merged: dict[str, list[float]] = {}
    for part in parts:
        for k, v in part.items():
            merged.setdefault(k, []).extend(v)
    return merged
