"""Nested, typed model configuration that round-trips through ``config.json``."""

from __future__ import annotations

import dataclasses
import json
import os
import tempfile
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROUTING_TOKENS: dict[str, str] = {
    "det": "[DET]",
    "seg": "[SEG]",
    "grd": "[GRD]",
    "pose": "[POSE]",
    "gen": "[GEN]",
    "edit": "[EDIT]",
}
IMAGE_TOKEN = "<image>"
REGION_TOKEN = "<region>"


class ConfigError(ValueError):
    """A config value is unknown or invalid."""


@dataclass
class VisionConfig:
    """Vision tower: a transformers CLIP or SigLIP vision model.

    With ``path`` set the tower is loaded from that local folder; otherwise it is built from
    the sizes below (tiny models, tests). ``hf_config`` holds the transformers config once the
    model was built, so a saved model reloads without the original folder.
    """

    type: str = "clip"  # "clip" | "siglip"
    path: str | None = None
    image_size: int = 224
    patch_size: int = 14
    hidden_size: int = 1024
    num_layers: int = 24
    num_heads: int = 16
    intermediate_size: int = 4096
    feature_layer: int = -2  # paper: penultimate layer
    drop_cls: bool = True  # CLIP's CLS token is dropped; SigLIP has none
    freeze: bool = True  # paper: the vision encoder is frozen
    pixel_mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    pixel_std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    hf_config: dict[str, Any] | None = None
    # A CNN beside the tower (VisionEncoder): its stage widths, strides 4, 8, ... down to patch_size.
    cnn_branch: list[int] | None = None
    # A fixed factor on the branch's map (the shipped tower's features are ~26x the grounding CNN's cells).
    cnn_branch_gain: float = 1.0
    # The map starts at zero (a model gaining the branch computes what it did), or at a linear
    # layer's usual random start (false): from zero, a trained LLM may never pull on it.
    cnn_branch_zero_init: bool = True
    # The branch's cells alone are the visual tokens: the tower is not run (its weights stay).
    cnn_branch_only: bool = False


@dataclass
class ProjectorConfig:
    type: str = "mlp2x_gelu"


@dataclass
class LLMConfig:
    """Causal LM: built from the sizes below (a tiny Llama) or loaded from ``path``."""

    path: str | None = None
    tokenizer: str = "byte"  # "byte" (built-in byte-level), "world" (built-in BPE) or a local folder
    template: str = "plain"  # conversation template name (see data/templates... processor)
    hidden_size: int = 4096
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int | None = None
    intermediate_size: int = 11008
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = False
    hf_config: dict[str, Any] | None = None


@dataclass
class FamilyConfig:
    """One super-link family: the routing token, its K queries and the decoder it drives."""

    token: str
    num_queries: int
    decoder: str | None  # name of an entry of ModelConfig.decoders; None = text only


@dataclass
class DecoderConfig:
    """One decoder instance: a registered ``type`` and its constructor kwargs."""

    type: str
    link_dim: int = 256
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class RegionConfig:
    enabled: bool = True
    stem_channels: int = 64


def _default_families() -> dict[str, FamilyConfig]:
    # Paper: 4 queries per link for det/seg/grd and pose, 64 for gen and edit.
    k = {"det": 4, "seg": 4, "grd": 4, "pose": 4, "gen": 64, "edit": 64}
    return {f: FamilyConfig(token=t, num_queries=k[f], decoder=None) for f, t in ROUTING_TOKENS.items()}


@dataclass
class ModelConfig:
    vision: VisionConfig = field(default_factory=VisionConfig)
    projector: ProjectorConfig = field(default_factory=ProjectorConfig)
    llm: LLMConfig = field(default_factory=LLMConfig)
    families: dict[str, FamilyConfig] = field(default_factory=_default_families)
    decoders: dict[str, DecoderConfig] = field(default_factory=dict)
    region: RegionConfig = field(default_factory=RegionConfig)
    lm_loss_weight: float = 1.0
    dtype: str = "float32"

    def __post_init__(self) -> None:
        self.validate()

    # -- validation -----------------------------------------------------------------------
    def validate(self) -> None:
        v = self.vision
        if v.type not in ("clip", "siglip"):
            raise ConfigError(f"vision.type must be 'clip' or 'siglip', got {v.type!r}")
        if v.path is None and v.image_size % v.patch_size:
            raise ConfigError(
                f"vision.image_size ({v.image_size}) must be a multiple of vision.patch_size ({v.patch_size})"
            )
        if v.cnn_branch is not None and (
            not 2 <= len(v.cnn_branch) <= 4 or 2 ** (len(v.cnn_branch) + 1) != v.patch_size
        ):
            raise ConfigError(
                f"vision.cnn_branch {v.cnn_branch} needs 2-4 widths whose last stride (4, 8, 16 or 32) is "
                f"vision.patch_size ({v.patch_size}): one map cell per patch"
            )
        if v.cnn_branch_only and v.cnn_branch is None:
            raise ConfigError(
                "vision.cnn_branch_only needs a CNN branch: set vision.cnn_branch (e.g. [32, 64, 96])"
            )
        if not v.cnn_branch_gain > 0:
            raise ConfigError(f"vision.cnn_branch_gain must be > 0, got {v.cnn_branch_gain}")
        if v.type == "siglip" and v.drop_cls:
            raise ConfigError("SigLIP has no CLS token: set vision.drop_cls to false")
        if self.projector.type != "mlp2x_gelu":
            raise ConfigError(f"projector.type must be 'mlp2x_gelu', got {self.projector.type!r}")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ConfigError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        tokens = [f.token for f in self.families.values()]
        if len(set(tokens)) != len(tokens):
            raise ConfigError(f"routing tokens must be distinct, got {tokens}")
        k_by_decoder: dict[str, int] = {}
        for name, fam in self.families.items():
            if fam.num_queries < 1:
                raise ConfigError(f"families.{name}.num_queries must be >= 1, got {fam.num_queries}")
            if fam.decoder is None:
                continue
            if fam.decoder not in self.decoders:
                known = sorted(self.decoders)
                raise ConfigError(f"families.{name}.decoder is {fam.decoder!r} but decoders only has {known}")
            # A decoder receives one (L, K, D) tensor, so all its families share K.
            k = k_by_decoder.setdefault(fam.decoder, fam.num_queries)
            if k != fam.num_queries:
                raise ConfigError(
                    f"families routed to decoder {fam.decoder!r} must share num_queries; got {k} and "
                    f"{fam.num_queries} (families.{name})"
                )

    # -- (de)serialisation ----------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        return build_dataclass(cls, data, "config")

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> ModelConfig:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON: {e}") from e
        return cls.from_dict(data)

    def with_overrides(self, overrides: dict[str, Any]) -> ModelConfig:
        """A copy with dotted-key overrides applied, e.g. ``{"llm.num_layers": 2}``."""
        return ModelConfig.from_dict(apply_overrides(self.to_dict(), overrides))


def apply_overrides(data: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys (``"llm.num_layers"``) in nested dicts; unknown keys are an error, except
    in a decoder's ``kwargs``, which may gain any argument (its constructor checks them)."""
    for key, value in overrides.items():
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            if not isinstance(node, dict) or p not in node or not isinstance(node[p], dict):
                raise ConfigError(f"unknown config key {key!r}")
            node = node[p]
        if parts[-1] not in node and (len(parts) < 2 or parts[-2] != "kwargs"):
            raise ConfigError(f"unknown config key {key!r}")
        node[parts[-1]] = value
    return data


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and ``os.replace``:
    a killed run leaves the old file or a stray ``.tmp`` file, never a truncated file under the
    final name. The file gets the usual 0644 mode (mkstemp's own is 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def build_dataclass(tp: Any, data: Any, where: str) -> Any:
    """Build a value of (dataclass) type ``tp`` from JSON ``data``, checking every key and
    type and naming the offending key on any error."""
    origin = typing.get_origin(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(data, dict):
            raise ConfigError(f"{where} must be an object, got {type(data).__name__}")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ConfigError(f"unknown key(s) {unknown} in {where}; known keys: {sorted(names)}")
        kwargs = {k: build_dataclass(hints[k], v, f"{where}.{k}") for k, v in data.items()}
        try:
            return tp(**kwargs)
        except TypeError as e:
            raise ConfigError(f"{where}: {e}") from e
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if data is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return build_dataclass(a, data, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: invalid value {data!r}")
    if origin is dict:
        kt, vt = typing.get_args(tp)
        if not isinstance(data, dict):
            raise ConfigError(f"{where} must be an object, got {type(data).__name__}")
        return {k: build_dataclass(vt, v, f"{where}.{k}") for k, v in data.items()}
    if origin is list:
        (it,) = typing.get_args(tp)
        if not isinstance(data, (list, tuple)):
            raise ConfigError(f"{where} must be a list, got {data!r}")
        return [build_dataclass(it, v, f"{where}[{i}]") for i, v in enumerate(data)]
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(data, (list, tuple)) or len(data) != len(args):
            raise ConfigError(f"{where} must be a list of {len(args)} values, got {data!r}")
        return tuple(build_dataclass(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, data)))
    if tp is Any:
        return data
    if tp is float and isinstance(data, int) and not isinstance(data, bool):
        return float(data)
    if tp in (int, float, str, bool):
        if not isinstance(data, tp) or (tp is int and isinstance(data, bool)):
            raise ConfigError(f"{where} must be {tp.__name__}, got {data!r}")
        return data
    raise ConfigError(f"{where}: unsupported config type {tp}")


def tiny_config(**decoders: DecoderConfig) -> ModelConfig:
    """The tiny test-scale model: hidden 32-64, 2 layers, 32-pixel images."""
    return ModelConfig(
        vision=VisionConfig(
            image_size=32, patch_size=8, hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64
        ),
        llm=LLMConfig(
            hidden_size=64, num_layers=2, num_heads=4, intermediate_size=128, max_position_embeddings=1024
        ),
        families={
            f: FamilyConfig(token=t, num_queries=8 if f in ("gen", "edit") else 4, decoder=None)
            for f, t in ROUTING_TOKENS.items()
        },
        decoders=dict(decoders),
    )
