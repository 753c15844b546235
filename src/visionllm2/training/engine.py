"""The training loop: stages, mixed-task batches, accumulation, clipping, logging, checkpoints."""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
import yaml
from tqdm.auto import tqdm

from visionllm2.config import atomic_write_text
from visionllm2.modeling.builder import adapt_pretrained, build_model, from_pretrained, model_folder
from visionllm2.training.checkpoint import (
    TrainPosition,
    latest_checkpoint,
    load_checkpoint,
    load_position,
    save_checkpoint,
)
from visionllm2.training.config import ConfigError, TrainConfig, load_model_config
from visionllm2.training.data import Mixture, StepBatches, build_dataset, task_of
from visionllm2.training.distributed import (
    DistInfo,
    deepspeed_engine,
    finish_distributed,
    gather_windows,
    init_distributed,
    wrap_model,
)
from visionllm2.training.stages import build_optimizer, clip_gradients, clip_sets

log = logging.getLogger("visionllm2.train")


class Trainer:
    """Runs a :class:`TrainConfig` recipe. ``run()`` returns the final losses."""

    def __init__(
        self, cfg: TrainConfig, *, resume: bool = False, num_workers: int = 0, progress: bool = True
    ):
        self.cfg = cfg
        self.resume = resume
        self.num_workers = num_workers
        self.progress = progress
        self.dist: DistInfo = init_distributed(cfg.device)
        self.out = Path(cfg.out_dir)
        torch.manual_seed(cfg.seed)
        spec = cfg.model
        if spec.init is not None:
            self.model = adapt_pretrained(
                spec.init, overrides=spec.overrides, reinit=spec.reinit, copy=spec.copy
            )
        else:
            self.model = build_model(load_model_config(cfg.model))
        self.model.to(self.dist.device).train()
        self.datasets = {d.name: build_dataset(d) for d in cfg.data}
        if not self.datasets:
            raise ValueError("the recipe names no datasets under 'data'")
        self.history: list[dict[str, Any]] = []
        self.writer = None
        self.log_file: logging.FileHandler | None = None

    # -- logging ---------------------------------------------------------------------------
    def _setup_logging(self) -> None:
        if not self.dist.is_main:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        (self.out / "config.yaml").write_text(yaml.safe_dump(self.cfg.to_dict(), sort_keys=False))
        self.log_file = logging.FileHandler(self.out / "train.log")
        self.log_file.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        log.addHandler(self.log_file)
        log.setLevel(logging.INFO)
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(self.out / "tensorboard"))

    def _record(self, global_step: int, stage: str, values: dict[str, float]) -> None:
        if not self.dist.is_main:
            return
        self.history.append({"step": global_step, "stage": stage, **values})
        for k, v in values.items():
            self.writer.add_scalar(k, v, global_step)
        log.info("%s step %d %s", stage, global_step, json.dumps({k: round(v, 5) for k, v in values.items()}))

    def _close_logging(self) -> None:
        """Detach this run's log file (the logger is the module's: a later run in the same
        process must not write into this run's train.log) and close its TensorBoard writer."""
        if self.log_file is not None:
            log.removeHandler(self.log_file)
            self.log_file.close()
            self.log_file = None
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    # -- link anchor -----------------------------------------------------------------------
    def _link_anchor(self, si: int, stage, first: int):
        """For a stage with ``keep_links``: the model as it was when the run's first such stage
        began, frozen. Every later ``keep_links`` stage holds the link states to that same model
        (anchoring each stage to its own start would let the drift add up stage by stage). It is
        saved in the run folder (``link_anchor/<i>-<stage>`` of that first stage) so that a
        resumed run holds the link states to the same model, not to the one it resumes from.
        With ``keep_links_to: init`` the anchor is the ``model.init`` model as saved instead (the
        one whose link states its decoders were trained on, before reinit or overrides); with a
        model's name or folder, that model."""
        if not stage.keep_links:
            return None
        fi = next(i for i, s in enumerate(self.cfg.stages) if s.keep_links)
        path = self.out / "link_anchor" / f"{fi}-{self.cfg.stages[fi].name}"
        if si == fi and first == 0 and self.dist.is_main:
            source = self._anchor_source()
            start = self.model if source is None else from_pretrained(source)
            start.save_pretrained(path)
        if self.dist.enabled:
            torch.distributed.barrier()
        if not (path / "model.safetensors").is_file():
            raise FileNotFoundError(
                f"stage {stage.name!r} holds its link states to the model it began with, saved in "
                f"{path}, which is missing: restart the stage (without --resume) to save it again"
            )
        anchor = from_pretrained(path).to(self.dist.device).eval()
        anchor.requires_grad_(False)
        return anchor

    def _anchor_source(self) -> str | None:
        """The model ``keep_links_to`` names (None: the model as the first such stage began)."""
        to = self.cfg.keep_links_to
        return None if to == "first_stage" else self.cfg.model.init if to == "init" else to

    def _held_families(self, stage) -> list[int] | None:
        """Indices of the link families ``stage.keep_links_families`` names (None: every family)."""
        if not stage.keep_links_families:
            return None
        names = self.model.super_link.family_names
        unknown = sorted(set(stage.keep_links_families) - set(names))
        if unknown:
            raise ConfigError(
                f"stage {stage.name!r}: keep_links_families names {unknown}, which this model does not "
                f"have; its link families are {names}"
            )
        return [names.index(f) for f in stage.keep_links_families]

    # -- main loop -------------------------------------------------------------------------
    def run(self) -> dict[str, float]:
        self._setup_logging()
        try:
            return self._run()
        finally:
            self._close_logging()

    def _run(self) -> dict[str, float]:
        cfg = self.cfg
        held = [self._held_families(stage) for stage in cfg.stages]  # a misspelt family fails here
        source = self._anchor_source()
        if source is not None and any(s.keep_links for s in cfg.stages):
            try:
                model_folder(source)  # a missing anchor fails here, not stages later
            except FileNotFoundError as e:
                raise ConfigError(f"keep_links_to: {e}") from None
        start = TrainPosition(stage=0, step=0)
        ckpt = latest_checkpoint(self.out) if self.resume else None
        if self.resume and ckpt is None and self.dist.is_main:
            log.info("--resume: no checkpoint in %s, starting from scratch", self.out)
        if ckpt is not None:
            start = load_position(ckpt)
            if (self.out / "history.json").is_file():
                self.history = json.loads((self.out / "history.json").read_text())
        global_step = sum(s.steps for s in cfg.stages[: start.stage]) + start.step
        self.history = [h for h in self.history if h["step"] <= global_step]
        last: dict[str, float] = {}
        for si, stage in enumerate(cfg.stages):
            if si < start.stage:
                continue
            opt, sched = build_optimizer(self.model, stage, weight_decay=cfg.weight_decay, betas=cfg.betas)
            first = 0
            if ckpt is not None and si == start.stage:
                load_checkpoint(ckpt, self.model, opt, sched)
                first = start.step
            if first >= stage.steps:
                continue
            last = self._run_stage(si, stage, opt, sched, first, global_step, held[si])
            global_step += stage.steps - first
        if self.dist.is_main:
            self.model.save_pretrained(self.out / "final")
            atomic_write_text(self.out / "history.json", json.dumps(self.history))
            from visionllm2.training.curves import plot_learning_curves

            plot_learning_curves(self.history, self.out / "curves")
        finish_distributed(self.dist)
        return last

    def _run_stage(
        self, si: int, stage, opt, sched, first: int, global_step: int, held_families: list[int] | None
    ) -> dict[str, float]:
        cfg, info = self.cfg, self.dist
        weights = {d.name: stage.weights.get(d.name, d.weight) for d in cfg.data}
        mixture = Mixture(self.datasets, weights, seed=cfg.seed, stage=si)
        steps = StepBatches(
            mixture,
            self.model.processor,
            batch_size=cfg.batch_size,
            steps=stage.steps,
            rank=info.rank,
            world=info.world,
            micro_batches=cfg.grad_accum,
            max_tokens=cfg.micro_batch_tokens,
        )
        loader = torch.utils.data.DataLoader(
            steps,
            batch_size=None,
            sampler=range(first, stage.steps),
            num_workers=self.num_workers,
            collate_fn=lambda x: x,
            persistent_workers=False,
        )
        model = self.model
        engine = None
        if cfg.strategy == "deepspeed" and info.enabled:
            engine, opt, sched = deepspeed_engine(
                model,
                opt,
                sched,
                cfg.deepspeed_config,
                micro_batch=cfg.batch_size // (info.world * cfg.grad_accum),
                grad_accum=cfg.grad_accum,
            )
            wrapped = engine
        else:
            wrapped = wrap_model(model, info, cfg.strategy)
        params = [p for g in opt.param_groups for p in g["params"]]
        clips = clip_sets(model, params, cfg.grad_clip, cfg.decoder_grad_clip)
        bar = tqdm(
            total=stage.steps,
            initial=first,
            desc=stage.name,
            disable=not (self.progress and info.is_main),
            leave=True,
        )
        autocast = (
            torch.autocast(device_type=info.device.type, dtype=torch.bfloat16)
            if cfg.precision == "bf16"
            else contextlib.nullcontext()
        )
        anchor = self._link_anchor(si, stage, first)
        held_seen = 0  # links keep_links held so far in this stage (this rank)
        window: dict[str, list[float]] = defaultdict(list)
        last: dict[str, float] = {}
        t0 = time.perf_counter()
        for step, micro in zip(range(first, stage.steps), loader):
            share = sum(b.input_ids.shape[0] for b in micro)
            for mi, batch in enumerate(micro):
                batch = batch.to(info.device)
                sync = contextlib.nullcontext()
                if info.enabled and engine is None and mi < len(micro) - 1 and hasattr(wrapped, "no_sync"):
                    sync = wrapped.no_sync()  # accumulate locally, all-reduce once per step
                with sync:
                    with autocast:
                        out = wrapped(batch, decoders=stage.runs_decoders, link_states=anchor is not None)
                        loss = out.loss
                        if anchor is not None and out.link_states is not None:
                            held = link_drift(anchor, batch, out.link_states, held_families)
                            held_seen += int(held_links(batch, held_families).sum())
                            window["keep_links"].append(float(held.detach()))
                            loss = loss + stage.keep_links * held
                    if engine is not None:
                        engine.backward(loss)  # DeepSpeed scales by its accumulation steps
                        engine.step()  # it only updates at the accumulation boundary
                    else:
                        (loss * (batch.input_ids.shape[0] / share)).backward()
                self._collect(window, out, batch)
            if engine is None:
                for key, norm in clip_gradients(clips).items():
                    window[key].append(norm)
                opt.step()
                sched.step()
                opt.zero_grad(set_to_none=True)
            done = step + 1
            if anchor is not None and done == min(first + cfg.log_every, stage.steps) and not held_seen:
                log.warning(
                    "stage %r: keep_links holds %s, but none of its first %d steps' batches had such a "
                    "link, so it holds nothing and those link states are free to drift; give the stage "
                    "some samples of those tasks (a small weight) or drop keep_links",
                    stage.name,
                    stage.keep_links_families or "every link family",
                    done - first,
                )
            if done % cfg.log_every == 0 or done == stage.steps:
                dt = time.perf_counter() - t0
                merged = gather_windows(window, info)  # ranks may hold different tasks
                values = {k: sum(v) / len(v) for k, v in merged.items() if v}
                n_steps = (
                    cfg.log_every
                    if done % cfg.log_every == 0
                    else (done - first) % cfg.log_every or cfg.log_every
                )
                values["samples_per_s"] = cfg.batch_size * n_steps / dt
                values["lr"] = opt.param_groups[0]["lr"]
                self._record(global_step + done - first, stage.name, values)
                bar.set_postfix(
                    loss=f"{values.get('loss', math.nan):.4f}", sps=f"{values['samples_per_s']:.1f}"
                )
                last = values
                window.clear()
                t0 = time.perf_counter()
            bar.update(1)
            if info.is_main and (done % cfg.ckpt_every == 0 or done == stage.steps):
                # History first: on resume, entries past the checkpoint are dropped.
                atomic_write_text(self.out / "history.json", json.dumps(self.history))
                save_checkpoint(
                    self.out, model, opt, sched, TrainPosition(si, done), keep=cfg.keep_checkpoints
                )
            if info.enabled:
                torch.distributed.barrier()
        bar.close()
        return last

    @staticmethod
    def _collect(window: dict[str, list[float]], out, batch) -> None:
        """Loss terms, and the LM loss per task (from each sample's own loss)."""
        window["loss"].append(float(out.loss.detach()))
        if out.lm_loss is not None:
            window["lm_loss"].append(float(out.lm_loss.detach()))
        for k, v in out.losses.items():
            window[k].append(float(v.detach()))
        if out.lm_loss_per_sample is not None and batch.samples is not None:
            for s, v in zip(batch.samples, out.lm_loss_per_sample.tolist()):
                if not math.isnan(v):
                    window[f"task/{task_of(s)}/lm_loss"].append(v)


def link_drift(anchor, batch, states: torch.Tensor, families: list[int] | None = None) -> torch.Tensor:
    """How far ``states`` (a batch's link states) moved from the frozen ``anchor`` model's on the
    same batch: their squared distance over the squared size of the anchor's (zero padding adds
    nothing to either). ``families`` (indices into the model's link families) keeps only the
    links of those families; a batch without any measures 0."""
    with torch.no_grad():
        ref = anchor.link_states(anchor.run_llm(anchor.embed(batch), batch.attention_mask), batch)
    if families is not None:
        keep = held_links(batch, families).to(states.device)
        states, ref = states[keep], ref[keep]
    return (states.float() - ref.float()).pow(2).sum() / ref.float().pow(2).sum().clamp_min(1e-12)


def held_links(batch, families: list[int] | None) -> torch.Tensor:
    """(L,) bool: which of the batch's links ``keep_links`` holds (``families`` None: all)."""
    fam = batch.link_family
    if families is None:
        return torch.ones_like(fam, dtype=torch.bool)
    return torch.isin(fam, torch.tensor(families, device=fam.device))
