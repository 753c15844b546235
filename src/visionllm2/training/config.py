"""Training recipe: YAML file -> typed config, with ``key=value`` overrides from the CLI."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from visionllm2.config import ConfigError, apply_overrides, build_dataclass

# Parameter groups, by what the parameters belong to (see stages.py). ``branch`` is the vision
# tower's CNN branch (``vision.cnn_branch``); a stage that does not name it gives it ``vision``'s.
GROUPS = ("vision", "branch", "projector", "llm", "links", "region", "backbone", "decoders")


@dataclass
class DatasetSpec:
    """One training source: a registered dataset ``type`` and its arguments."""

    name: str
    type: str
    weight: float = 1.0
    args: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageSpec:
    """A training stage. ``lr_mult`` scales ``lr`` per parameter group; 0 freezes a group.
    ``weights`` overrides dataset weights for this stage (0 leaves a dataset out).
    ``decoders``: whether the task decoders run and add their losses; left unset it is off in
    ``stage1`` (the paper's MLLM stage learns text answers and routing tokens only) and on in
    every other stage.
    ``keep_links``: weight of a term that holds the link states (the LLM's last-layer states at
    every link's queries, what the decoders read) to those of the model as it was when the run's
    first ``keep_links`` stage began (or, with the run's ``keep_links_to: init``, of the
    ``model.init`` model as saved; with ``keep_links_to: <name or folder>``, of that model): their
    squared distance over the squared size of the starting ones. A stage that trains the LLM for
    its text answers can then leave the decoders' inputs where they were, and several such stages
    do not add their drifts up.
    ``keep_links_families``: the link families (``det``, ``grd``…) that ``keep_links`` holds;
    empty holds every family. A stage that trains the LLM for one family's links (say ``grd``)
    can then hold the others."""

    name: str
    steps: int
    lr: float = 1e-4
    warmup_steps: int = 0
    min_lr_ratio: float = 0.0
    lr_mult: dict[str, float] = field(default_factory=dict)
    weights: dict[str, float] = field(default_factory=dict)
    decoders: bool | None = None
    keep_links: float = 0.0
    keep_links_families: list[str] = field(default_factory=list)

    @property
    def runs_decoders(self) -> bool:
        return self.decoders if self.decoders is not None else self.name != "stage1"


@dataclass
class ModelSpec:
    """Where the model comes from: a model config file (JSON/YAML) or a preset ("tiny"),
    with overrides, or an existing model folder to continue from (``init``). With ``init``,
    ``overrides`` change that model's config, ``reinit`` lists the prefixes of the tensors
    that start as built instead of from its weights, and ``copy`` starts the tensors under a
    prefix from the same-named ones under another (see ``modeling.builder.adapt_pretrained``)."""

    config: str = "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)
    init: str | None = None
    reinit: list[str] = field(default_factory=list)
    copy: dict[str, str] = field(default_factory=dict)


@dataclass
class TrainConfig:
    model: ModelSpec = field(default_factory=ModelSpec)
    data: list[DatasetSpec] = field(default_factory=list)
    stages: list[StageSpec] = field(default_factory=list)
    batch_size: int = 8  # global batch (all processes together)
    grad_accum: int = 1
    # Split each process's share of a step into micro-batches of similar-length samples holding
    # at most this many padded tokens (instead of grad_accum equal parts): one long sample no
    # longer pads the whole batch. Each micro-batch's loss counts by its number of samples.
    micro_batch_tokens: int | None = None
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    # Clip each decoder's gradient on its own at this norm (DETR-family decoders use 0.1) and the
    # rest at grad_clip; unset = one global norm over everything (see training.stages.clip_sets).
    decoder_grad_clip: float | None = None
    precision: str = "fp32"  # "fp32" | "bf16"
    seed: int = 0
    out_dir: str = "runs/default"
    log_every: int = 10
    ckpt_every: int = 100
    keep_checkpoints: int = 2
    strategy: str = "ddp"  # "ddp" | "fsdp" | "deepspeed" (multi-process only)
    deepspeed_config: str | None = None
    device: str = "auto"
    # What keep_links holds the link states to: "first_stage", the model as the run's first
    # keep_links stage began; "init", the model.init model as saved, before reinit / overrides /
    # copy: its decoders were trained on its link states, not on those of its partly fresh copy;
    # or another model's name or folder (say "tiny", when model.init is a descendant of it whose
    # link states moved away from those its decoders were trained on).
    keep_links_to: str = "first_stage"

    def __post_init__(self) -> None:
        if self.precision not in ("fp32", "bf16"):
            raise ConfigError(f"precision must be 'fp32' or 'bf16', got {self.precision!r}")
        if self.strategy not in ("ddp", "fsdp", "deepspeed"):
            raise ConfigError(f"strategy must be ddp, fsdp or deepspeed, got {self.strategy!r}")
        if self.batch_size < 1 or self.grad_accum < 1:
            raise ConfigError("batch_size and grad_accum must be >= 1")
        if self.micro_batch_tokens is not None:
            if self.micro_batch_tokens < 1:
                raise ConfigError("micro_batch_tokens must be >= 1 (or unset)")
            if self.strategy == "deepspeed" or self.grad_accum != 1:
                raise ConfigError(
                    "micro_batch_tokens sizes micro-batches by length; it cannot be combined with "
                    "grad_accum > 1 or the deepspeed strategy (fixed micro-batch size): unset one"
                )
        if self.decoder_grad_clip is not None:
            if self.decoder_grad_clip <= 0:
                raise ConfigError(f"decoder_grad_clip must be > 0 (or unset), got {self.decoder_grad_clip}")
            if self.strategy == "deepspeed":
                raise ConfigError(
                    "decoder_grad_clip clips the decoders apart from the LLM; DeepSpeed clips inside its "
                    "engine (gradient_clipping in its JSON config): unset decoder_grad_clip"
                )
        if not self.stages:
            raise ConfigError("the recipe needs at least one entry under 'stages'")
        if (self.model.reinit or self.model.copy) and self.model.init is None:
            raise ConfigError(
                "model.reinit and model.copy change how the model of model.init starts, but model.init "
                "is unset: set it, or drop them (a model built from model.config starts fresh anyway)"
            )
        if not self.keep_links_to:
            raise ConfigError("keep_links_to must be 'first_stage', 'init' or a model's name or folder")
        if self.keep_links_to == "init" and self.model.init is None:
            raise ConfigError(
                "keep_links_to: init holds the link states to the model.init model, but model.init is "
                "unset: set it, or use keep_links_to: first_stage"
            )
        names = [d.name for d in self.data]
        if len(set(names)) != len(names):
            raise ConfigError(f"dataset names must be unique, got {names}")
        for st in self.stages:
            bad = sorted(set(st.lr_mult) - set(GROUPS))
            if bad:
                raise ConfigError(
                    f"stage {st.name!r}: unknown lr_mult group(s) {bad}; groups are {list(GROUPS)}"
                )
            unknown = sorted(set(st.weights) - set(names))
            if unknown:
                raise ConfigError(f"stage {st.name!r}: weights name unknown dataset(s) {unknown}")
            if st.steps < 1:
                raise ConfigError(f"stage {st.name!r}: steps must be >= 1")
            if st.keep_links < 0:
                raise ConfigError(f"stage {st.name!r}: keep_links must be >= 0, got {st.keep_links}")
            if st.keep_links_families and not st.keep_links:
                raise ConfigError(
                    f"stage {st.name!r}: keep_links_families {st.keep_links_families} has no effect "
                    "with keep_links 0; set keep_links (e.g. 20) or drop keep_links_families"
                )
            if st.keep_links and self.strategy != "ddp":
                raise ConfigError(
                    f"stage {st.name!r}: keep_links runs a frozen copy of the model beside the "
                    f"trained one, which the {self.strategy} strategy does not shard; use strategy "
                    "ddp (or one process), or set keep_links to 0"
                )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def parse_override(text: str) -> tuple[str, Any]:
    """``"stages.0.steps=20"`` -> (key, value); the value is parsed as YAML (numbers, lists…)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value")
    key, value = text.split("=", 1)
    return key.strip(), yaml.safe_load(value)


def load_train_config(path: str | Path, overrides: list[str] = ()) -> TrainConfig:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training config {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path} is not valid YAML: {e}") from e
    # Lists (stages, data) are addressed by index: stages.0.steps=5; model config keys keep
    # their dots: model.overrides.llm.num_layers=2.
    prefix = "model.overrides."
    for key, value in (parse_override(o) for o in overrides):
        if key.startswith(prefix):
            data.setdefault("model", {}).setdefault("overrides", {})[key[len(prefix) :]] = value
            continue
        node: Any = data
        parts = key.split(".")
        try:
            for p in parts[:-1]:
                node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
            if isinstance(node, list):
                node[int(parts[-1])] = value
            else:
                node[parts[-1]] = value
        except (ValueError, IndexError, TypeError) as e:
            raise ConfigError(f"override {key!r} does not address a config entry ({e})") from e
    return build_dataclass(TrainConfig, data, str(path))


def load_model_config(spec: ModelSpec):
    """The ModelConfig a recipe names (preset or file), with its overrides."""
    from visionllm2.config import ModelConfig, tiny_config

    if spec.config == "tiny":
        base = tiny_config()
    else:
        p = Path(spec.config)
        if not p.is_file():
            raise FileNotFoundError(f"model config {p} does not exist (or use the preset 'tiny')")
        raw = yaml.safe_load(p.read_text()) if p.suffix in (".yaml", ".yml") else json.loads(p.read_text())
        base = ModelConfig.from_dict(raw)
    return ModelConfig.from_dict(apply_overrides(base.to_dict(), spec.overrides)) if spec.overrides else base
