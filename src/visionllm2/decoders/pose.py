"""Pose decoder (UniPose family) for [POSE] links: instances plus named keypoints, any skeleton.

VisionLLM v2 (§3.3) prompts pose as class links followed by one link per keypoint name, e.g.
``person[POSE] nose[POSE] left_eye[POSE] ...``. Like UniPose, both the category and the
keypoint names are prompts, so any skeleton works and each category brings its own keypoints.

Architecture (on top of :class:`~visionllm2.decoders.grounding.GroundingDecoder`'s backbone,
fusion encoder, query selection and instance decoder, without masks or denoising):

1. the fusion encoder sees every pose link (categories and keypoint names);
2. instance queries are selected and decoded against the category links only (class logits
   are dot products with category embeddings; keypoint-name columns are masked);
3. a keypoint stage builds, for every instance query and every skeleton (group) of the sample,
   one keypoint query per keypoint name: content = keypoint-link embedding (minus its category's
   mean link) + a learned slot embedding for its place in the skeleton + instance query,
   initial position = instance box centre + a learned offset inside the box;
4. keypoint layers: self-attention among an instance's keypoints (and its instance query),
   cross-attention to the image tokens (the query carries the keypoint's position), FFN; each
   layer refines the positions in logit space and predicts a visibility logit (the keypoint's
   score). UniPose reads the image at the keypoint through deformable attention; standard
   attention over all image tokens does not find the keypoint's neighbourhood by itself, so
   ``keypoint_sample_grid`` k > 0 adds what the image holds on a k x k grid around it
   (:class:`KeypointDecoderLayer`). Off by default, as in models saved before it existed.

Losses (:mod:`visionllm2.losses.pose`): focal class, L1 + GIoU boxes, keypoint L1 and OKS. The
last instance layer is matched to the targets on class, box and keypoints (UniPose's matcher);
``match_keypoints=False`` matches it on class and box only, like the earlier layers, so a figure's
positive query is the one its class score can single out (``configs/tiny_stage6.yaml``).

Grouping rule (which pose links are categories, which are keypoints). Training: a link whose
target is not ``None`` is a category; the ``None``-target links that follow it, up to the next
category, are its keypoints (there must be as many as its target has keypoints). A sample whose
pose links all have ``None`` targets is unannotated: it is grouped as at inference and adds no
loss. Inference has no targets and the decoder knows no skeletons, so the rule reads names and
order: the first pose link of a sample is a category and every other link is a keypoint of the
current category, except that a link whose name is in the ``category_names`` config list (case
and "_"/"-"/" " insensitive) starts a new category. With no ``category_names``, a sample therefore holds one
category; list the categories to prompt several in one sample.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from visionllm2.data.sample import LinkTarget
from visionllm2.decoders import Links
from visionllm2.decoders.grounding import MLP, GroundingDecoder, _safe_padding, _sine
from visionllm2.inference.results import Detection
from visionllm2.losses.matcher import HungarianMatcher
from visionllm2.losses.pose import PoseCriterion
from visionllm2.ops.boxes import (
    box_area,
    box_cxcywh_to_xyxy,
    denormalize_boxes,
    inverse_sigmoid,
    normalize_boxes,
)
from visionllm2.ops.keypoints import canonical_keypoint_name, keypoint_sigmas
from visionllm2.ops.masks import point_sample

Group = tuple[int, list[int]]  # (category column, keypoint columns) within one sample's links


def group_pose_links(
    names: list[str], targets: list[LinkTarget | None] | None = None, category_names: list[str] | None = None
) -> list[Group]:
    """Split one sample's pose links into (category, keypoints) groups; see the module docstring."""
    if not names:
        return []
    groups: list[Group] = []
    if targets is not None and any(t is not None for t in targets):
        if len(targets) != len(names):
            raise ValueError(f"{len(targets)} targets for {len(names)} pose links")
        if targets[0] is None:
            raise ValueError(
                f"the first pose link {names[0]!r} has no target; a pose run starts with a category link "
                "whose target holds the boxes and keypoints"
            )
        for i, tgt in enumerate(targets):
            if tgt is not None:
                groups.append((i, []))
            else:
                groups[-1][1].append(i)
        for cat, kps in groups:
            keypoints = targets[cat].keypoints  # type: ignore[union-attr]
            if keypoints is not None and np.asarray(keypoints).shape[1:] != (len(kps), 3):
                raise ValueError(
                    f"pose link {names[cat]!r} is followed by {len(kps)} keypoint links "
                    "but its target keypoints "
                    f"have shape {np.asarray(keypoints).shape}; expected (n, {len(kps)}, 3)"
                )
        return groups
    known = {canonical_keypoint_name(n) for n in (category_names or [])}
    for i, name in enumerate(names):
        if i == 0 or canonical_keypoint_name(name) in known:
            groups.append((i, []))
        else:
            groups[-1][1].append(i)
    return groups


class KeypointDecoderLayer(nn.Module):
    """Keypoint layer: self-attention within an instance (its keypoints + its instance query),
    cross-attention of all keypoint queries to the image tokens, FFN; post-norm.

    With ``sample_grid`` k > 0 each keypoint query also reads the image around where it stands:
    a k x k grid of points centred on the keypoint, one cell of the finest memory level apart,
    each bilinearly sampled from every level (summed), the k*k vectors projected together so
    their layout is kept (which side of the keypoint the figure is on). Global attention alone
    has to learn locality from position embeddings, which a keypoint needs at pixel precision.
    """

    def __init__(self, *, dim: int, heads: int, ffn_dim: int, dropout: float, sample_grid: int = 0) -> None:
        super().__init__()
        self.self_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.img_attn = nn.MultiheadAttention(dim, heads, dropout=dropout, batch_first=True)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.ReLU(inplace=True), nn.Linear(ffn_dim, dim))
        self.norms = nn.ModuleList(nn.LayerNorm(dim) for _ in range(4 if sample_grid else 3))
        self.sample_grid = sample_grid
        self.point_proj = nn.Linear(sample_grid * sample_grid * dim, dim) if sample_grid else None
        self.dropout = nn.Dropout(dropout)

    def forward(
        self,
        kps: torch.Tensor,
        kp_pos: torch.Tensor,
        instance: torch.Tensor,
        kp_pad: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        xy: torch.Tensor | None = None,
        levels: list[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """kps/kp_pos (S, Q, G, P, D); instance (S, Q, D); kp_pad (S, G, P) True = no such
        keypoint; memory/memory_pos (S, N, D); with ``sample_grid``, xy (S, Q, G, P, 2) the
        keypoints' normalised positions and levels the memory as (S, D, h, w) maps
        -> (S, Q, G, P, D)."""
        s, q, g, p, d = kps.shape
        flat = kps.reshape(s * q * g, p, d)  # (S*Q*G, P, D)
        flat_pos = kp_pos.reshape(s * q * g, p, d)
        inst = instance[:, :, None, None].expand(-1, -1, g, 1, -1).reshape(s * q * g, 1, d)  # (S*Q*G, 1, D)
        keys = torch.cat([inst, flat + flat_pos], dim=1)
        values = torch.cat([inst, flat], dim=1)
        pad = kp_pad[:, None].expand(-1, q, -1, -1).reshape(s * q * g, p)
        pad = torch.cat([torch.zeros_like(pad[:, :1]), pad], dim=1)  # the instance token is always visible
        x = self.self_attn(flat + flat_pos, keys, values, key_padding_mask=pad, need_weights=False)[0]
        flat = self.norms[0](flat + self.dropout(x))
        tokens = flat.reshape(s, q * g * p, d)  # (S, Q*G*P, D)
        tokens_pos = flat_pos.reshape(s, q * g * p, d)
        x = self.img_attn(tokens + tokens_pos, memory + memory_pos, memory, need_weights=False)[0]
        tokens = self.norms[1](tokens + self.dropout(x))
        if self.point_proj is not None:
            if xy is None or levels is None:
                raise ValueError("a sampling keypoint layer needs the keypoints' xy and the memory levels")
            k = self.sample_grid
            h, w = levels[0].shape[-2:]
            steps = torch.arange(k, device=xy.device, dtype=xy.dtype) - (k - 1) / 2
            dy, dx = torch.meshgrid(steps / h, steps / w, indexing="ij")
            offsets = torch.stack([dx.flatten(), dy.flatten()], dim=-1)  # (k*k, 2)
            grid = (xy.reshape(s, q * g * p, 1, 2) + offsets).reshape(s, q * g * p * k * k, 2)
            local = sum(point_sample(level, grid) for level in levels)  # (S, D, Q*G*P*k*k)
            local = local.reshape(s, d, q * g * p, k * k).permute(0, 2, 3, 1).reshape(s, q * g * p, -1)
            tokens = self.norms[3](tokens + self.dropout(self.point_proj(local)))
        tokens = self.norms[2](tokens + self.dropout(self.ffn(tokens)))
        return tokens.reshape(s, q, g, p, d)


class PoseDecoder(GroundingDecoder):
    """Multi-category, any-skeleton pose estimator driven by [POSE] links.

    ``forward(links, pixels, targets=None)``
        links:   L pose links over S samples (categories and keypoint names, grouped as in the
                 module docstring).
        pixels:  (S, 3, H, W) normalised, squashed to ``pixel_size``.
        targets: None, or L targets: a category link's :class:`LinkTarget` (``boxes`` (n, 4),
                 ``keypoints`` (n, P, 3) in pixels), ``None`` for keypoint links.
        returns: weighted losses with targets; else S dicts with ``logits`` (Q, C_s) (non-category
                 columns -inf), ``boxes`` (Q, 4) normalised cxcywh, ``keypoints`` / ``visibility``
                 lists of (Q, P_g, 2) / (Q, P_g) per group, and ``groups``.

    ``postprocess`` -> Detections with ``keypoints`` {name: (x, y, score)} in original pixels.
    """

    families = ("pose",)

    def __init__(
        self,
        *,
        link_dim: int,
        num_keypoint_layers: int = 2,
        category_names: list[str] | None = None,
        loss_weights: dict[str, float] | None = None,
        focal_alpha: float = 0.25,
        default_sigma: float = 0.05,
        max_keypoints: int = 64,
        keypoint_sample_grid: int = 0,
        match_keypoints: bool = True,
        keypoint_delta_activation: str = "relu",
        **kwargs: Any,
    ) -> None:
        for key in ("mask_on", "dn_number", "seg_outputs"):
            if key in kwargs:
                raise ValueError(
                    f"the pose decoder does not take {key!r} (it has no masks or denoising queries)"
                )
        super().__init__(link_dim=link_dim, mask_on=False, dn_number=0, focal_alpha=focal_alpha, **kwargs)
        self.category_names = list(category_names or [])
        self.default_sigma = default_sigma
        d = self.hidden_dim
        heads = self.decoder[0].self_attn.num_heads if len(self.decoder) else 8
        ffn_dim = self.decoder[0].ffn[0].out_features if len(self.decoder) else 4 * d
        dropout = self.decoder[0].dropout.p if len(self.decoder) else 0.0
        self.kp_content = nn.Linear(d, d)
        # Slot j = the j-th keypoint link of its category. Keypoint links then differ from the
        # first step on, whatever the LLM makes of their names (an LLM trained from scratch
        # gives them nearly the same state); the link adds what the name means.
        self.max_keypoints = max_keypoints
        self.kp_slot = nn.Embedding(max_keypoints, d)
        self.kp_init_head = MLP(in_dim=2 * d, hidden_dim=d, out_dim=2, num_layers=2)
        self.kp_pos_head = MLP(in_dim=d, hidden_dim=d, out_dim=d, num_layers=2)
        self.kp_layers = nn.ModuleList(
            KeypointDecoderLayer(
                dim=d, heads=heads, ffn_dim=ffn_dim, dropout=dropout, sample_grid=keypoint_sample_grid
            )
            for _ in range(num_keypoint_layers)
        )
        self.kp_norm = nn.LayerNorm(d)
        # ReLU in the delta head can die: every hidden unit off on the scored keypoints, so the
        # head passes no gradient back and the keypoint layers stop learning (benchmarks/README.md,
        # "a dead delta head"). GELU still passes a gradient through units a little below zero.
        self.kp_delta_head = MLP(
            in_dim=d, hidden_dim=d, out_dim=2, num_layers=2, activation=keypoint_delta_activation
        )
        self.kp_vis_head = nn.Linear(d, 1)
        # Zero deltas: keypoints start where the initialisation put them.
        nn.init.zeros_(self.kp_delta_head.layers[-1].weight)
        nn.init.zeros_(self.kp_delta_head.layers[-1].bias)
        self.criterion = PoseCriterion(
            matcher=HungarianMatcher(focal_alpha=focal_alpha),
            weights=loss_weights,
            focal_alpha=focal_alpha,
            match_keypoints=match_keypoints,
        )

    # --- inputs ---------------------------------------------------------------------------
    def layout(
        self, links: Links, per_sample: list[list[int]], targets: list[LinkTarget | None] | None, width: int
    ) -> tuple[list[list[Group]], torch.Tensor, torch.Tensor, torch.Tensor, int, int]:
        """Groups per sample, the (S, C) category mask, (S, G, P) keypoint column index and
        (S, G, P) padding mask, and G, P (at least 1 so tensors keep their rank)."""
        groups = []
        for ids in per_sample:
            names = [links.names[i] for i in ids]
            tgts = None if targets is None else [targets[i] for i in ids]
            groups.append(group_pose_links(names, tgts, self.category_names))
        s = len(per_sample)
        g_max = max([len(gs) for gs in groups] + [1])
        p_max = max([len(kps) for gs in groups for _, kps in gs] + [1])
        if p_max > self.max_keypoints:
            raise ValueError(
                f"a pose category has {p_max} keypoint links but the decoder was built with "
                f"max_keypoints={self.max_keypoints}; build it with a larger max_keypoints"
            )
        device = links.states.device
        class_valid = torch.zeros(s, width, dtype=torch.bool, device=device)
        kp_cols = torch.zeros(s, g_max, p_max, dtype=torch.long, device=device)
        kp_pad = torch.ones(s, g_max, p_max, dtype=torch.bool, device=device)
        for b, gs in enumerate(groups):
            for gi, (cat, kps) in enumerate(gs):
                class_valid[b, cat] = True
                if kps:
                    kp_cols[b, gi, : len(kps)] = torch.tensor(kps, device=device)
                    kp_pad[b, gi, : len(kps)] = False
        return groups, class_valid, kp_cols, kp_pad, g_max, p_max

    def build_pose_targets(
        self,
        links: Links,
        targets: list[LinkTarget | None],
        per_sample: list[list[int]],
        groups: list[list[Group]],
        p_max: int,
        device: torch.device,
    ) -> list[dict[str, torch.Tensor]]:
        """Category-link targets -> per-sample normalised targets (labels = category columns)."""
        if links.image_sizes is None:
            raise ValueError("training the pose decoder needs links.image_sizes (original (w, h) per sample)")
        out = []
        for b, (ids, gs) in enumerate(zip(per_sample, groups, strict=True)):
            wh = links.image_sizes[b].tolist()
            labels, boxes, kps, group, sigmas, valid = [], [], [], [], [], []
            for gi, (cat, kp_cols) in enumerate(gs):
                tgt = targets[ids[cat]]
                if tgt is None:  # an unannotated sample: no instances, and no class loss either
                    continue
                n_boxes = 0 if tgt.boxes is None else np.asarray(tgt.boxes).reshape(-1, 4).shape[0]
                if n_boxes == 0:
                    continue
                box = torch.as_tensor(np.asarray(tgt.boxes), dtype=torch.float32).reshape(-1, 4)
                p = len(kp_cols)
                kp = torch.zeros(n_boxes, p_max, 3)
                if tgt.keypoints is not None and p:
                    raw = torch.as_tensor(np.asarray(tgt.keypoints), dtype=torch.float32)
                    if raw.shape[0] != n_boxes:
                        raise ValueError(
                            f"pose link {links.names[ids[cat]]!r}: {n_boxes} boxes "
                            f"but {raw.shape[0]} keypoint sets"
                        )
                    kp[:, :p, 0] = raw[..., 0] / wh[0]
                    kp[:, :p, 1] = raw[..., 1] / wh[1]
                    kp[:, :p, 2] = raw[..., 2]
                sig = torch.full((p_max,), self.default_sigma)
                sig[:p] = keypoint_sigmas([links.names[ids[c]] for c in kp_cols], default=self.default_sigma)
                val = torch.zeros(p_max, dtype=torch.bool)
                val[:p] = True
                labels.append(torch.full((n_boxes,), cat, dtype=torch.long))
                boxes.append(normalize_boxes(box, wh))
                kps.append(kp)
                group.append(torch.full((n_boxes,), gi, dtype=torch.long))
                sigmas.append(sig[None].expand(n_boxes, -1))
                valid.append(val[None].expand(n_boxes, -1))
            if labels:
                box_t = torch.cat(boxes)
                out.append(
                    {
                        "labels": torch.cat(labels).to(device),
                        "boxes": box_t.to(device),
                        "keypoints": torch.cat(kps).to(device),
                        "group": torch.cat(group).to(device),
                        "areas": box_area(box_cxcywh_to_xyxy(box_t)).to(device),
                        "sigmas": torch.cat(sigmas).to(device),
                        "keypoint_valid": torch.cat(valid).to(device),
                    }
                )
            else:
                out.append(
                    {
                        "labels": torch.zeros(0, dtype=torch.long, device=device),
                        "boxes": torch.zeros(0, 4, device=device),
                        "keypoints": torch.zeros(0, p_max, 3, device=device),
                        "group": torch.zeros(0, dtype=torch.long, device=device),
                        "areas": torch.zeros(0, device=device),
                        "sigmas": torch.zeros(0, p_max, device=device),
                        "keypoint_valid": torch.zeros(0, p_max, dtype=torch.bool, device=device),
                    }
                )
        return out

    # --- network --------------------------------------------------------------------------
    def keypoint_stage(
        self,
        hs: torch.Tensor,
        boxes: torch.Tensor,
        kp_text: torch.Tensor,
        kp_pad: torch.Tensor,
        memory: torch.Tensor,
        memory_pos: torch.Tensor,
        shapes: list[tuple[int, int]],
    ) -> list[dict[str, torch.Tensor]]:
        """hs (S, Q, D) instance queries, boxes (S, Q, 4), kp_text (S, G, P, D) keypoint-link
        embeddings, memory (S, N, D) over levels of ``shapes`` -> ``keypoints`` (S, Q, G, P, 2)
        and ``visibility`` (S, Q, G, P) of the initial guess and of every keypoint layer (the
        last entry is the prediction)."""
        s, q, d = hs.shape
        levels = None  # the memory as (S, D, h, w) maps, for layers that sample the image
        if any(layer.sample_grid for layer in self.kp_layers):
            levels = [
                level.transpose(1, 2).reshape(s, d, h, w)
                for level, (h, w) in zip(memory.split([h * w for h, w in shapes], dim=1), shapes, strict=True)
            ]
        g, p = kp_text.shape[1:3]
        # What tells keypoints apart is what their links do not share: remove the category's
        # mean link. From an LLM early in training the shared part is nearly all of each state
        # (cosine ~0.99 between keypoint links), which otherwise leaves one query for all.
        real = (~kp_pad)[..., None].to(kp_text.dtype)  # (S, G, P, 1)
        mean = (kp_text * real).sum(2, keepdim=True) / real.sum(2, keepdim=True).clamp(min=1)
        kp_text = F.layer_norm(kp_text - mean, kp_text.shape[-1:]) + self.kp_slot.weight[:p]  # (S, G, P, D)
        inst = hs[:, :, None, None].expand(-1, -1, g, p, -1)  # (S, Q, G, P, D)
        text = self.kp_content(kp_text)[:, None].expand(-1, q, -1, -1, -1)  # (S, Q, G, P, D)
        queries = inst + text
        # Initial position: inside the (detached) instance box, at a learned per-keypoint offset.
        box = boxes.detach()[:, :, None, None]  # (S, Q, 1, 1, 4)
        offset = torch.tanh(self.kp_init_head(torch.cat([inst, text], dim=-1)))  # (S, Q, G, P, 2)
        xy = (box[..., :2] + offset * box[..., 2:] / 2).clamp(1e-4, 1 - 1e-4)
        # The initial guess is scored too (the first auxiliary keypoint loss): later layers
        # start from it detached, so this is what trains the offset head.
        layers = [{"keypoints": xy, "visibility": self.kp_vis_head(self.kp_norm(queries))[..., 0]}]
        for layer in self.kp_layers:
            pos = self.kp_pos_head(_sine(xy.detach(), d // 2).to(queries.dtype))
            queries = layer(queries, pos, hs, kp_pad, memory, memory_pos, xy.detach(), levels)
            out = self.kp_norm(queries)
            xy_new = (self.kp_delta_head(out) + inverse_sigmoid(xy.detach())).sigmoid()
            layers.append({"keypoints": xy_new, "visibility": self.kp_vis_head(out)[..., 0]})
            xy = xy_new
        return layers

    def forward(
        self, links: Links, pixels: torch.Tensor, targets: list[LinkTarget | None] | None = None
    ) -> dict[str, torch.Tensor] | list[dict[str, Any]]:
        """links: L pose links over S samples, pixels (S, 3, H, W) -> losses or S raw outputs."""
        if pixels is None or pixels.dim() != 4:
            raise ValueError("the pose decoder needs pixels of shape (S, 3, H, W)")
        s = pixels.shape[0]
        if len(links) and int(links.sample.max()) >= s:
            raise ValueError(f"links refer to sample {int(links.sample.max())} but pixels has only {s} rows")
        if targets is not None and len(targets) != len(links):
            raise ValueError(
                f"got {len(targets)} targets for {len(links)} links; pass one (or None) per link"
            )
        text, link_valid, per_sample = self.gather_links(links, s)
        groups, class_valid, kp_cols, kp_pad, _, p_max = self.layout(
            links, per_sample, targets, text.shape[1]
        )
        text_pad = _safe_padding(~link_valid)

        feats = self.backbone(pixels)
        memory, memory_pos, shapes, text = self.encode(feats[1:], text, text_pad)
        content, ref, enc_out = self.select_queries(memory, shapes, text, class_valid)
        layers, hs = self.run_decoder(
            content, ref, text, text_pad, class_valid, memory, memory_pos, None, None
        )
        kp_text = torch.gather(
            text[:, None].expand(-1, kp_cols.shape[1], -1, -1),
            2,
            kp_cols[..., None].expand(-1, -1, -1, text.shape[-1]),
        )  # (S, G, P, D)
        kp_layers = self.keypoint_stage(hs, layers[-1]["boxes"], kp_text, kp_pad, memory, memory_pos, shapes)

        if targets is None:
            last, kp_last = layers[-1], kp_layers[-1]
            outs = []
            for b in range(s):
                width = len(per_sample[b])
                outs.append(
                    {
                        "logits": last["logits"][b, :, :width].detach(),
                        "boxes": last["boxes"][b].detach(),
                        "keypoints": [
                            kp_last["keypoints"][b, :, gi, : len(k)].detach()
                            for gi, (_, k) in enumerate(groups[b])
                        ],
                        "visibility": [
                            kp_last["visibility"][b, :, gi, : len(k)].detach()
                            for gi, (_, k) in enumerate(groups[b])
                        ],
                        "groups": groups[b],
                    }
                )
            return outs
        tgt = self.build_pose_targets(links, targets, per_sample, groups, p_max, pixels.device)
        outputs = {
            **layers[-1],
            **kp_layers[-1],
            "aux": layers[:-1],
            "enc": enc_out,
            "keypoint_aux": kp_layers[:-1],
        }
        supervised = class_valid.clone()
        for b, ids in enumerate(per_sample):
            for cat, _ in groups[b]:
                supervised[b, cat] = targets[ids[cat]] is not None
        return self.criterion(outputs, tgt, supervised)

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
        if len(names) != logits.shape[1]:
            raise ValueError(f"postprocess got {len(names)} names for {logits.shape[1]} pose links")
        w, h = image_size if image_size is not None else (self.pixel_size, self.pixel_size)
        boxes = denormalize_boxes(output["boxes"].float(), (w, h))
        groups = output["groups"]
        if not groups:
            return []
        cats = torch.tensor([cat for cat, _ in groups], dtype=torch.long)
        scores = logits[:, cats].sigmoid()  # (Q, G)
        flat = scores.flatten()
        top = flat.topk(min(self.max_detections, flat.numel()))
        items = []
        for score, idx in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            if score < self.score_threshold:
                break
            q, gi = divmod(idx, len(groups))
            cat, kp_cols = groups[gi]
            xy = output["keypoints"][gi][q].float()  # (P, 2) normalised
            vis = output["visibility"][gi][q].float().sigmoid()
            keypoints = {
                names[c]: (float(xy[k, 0]) * w, float(xy[k, 1]) * h, float(vis[k]))
                for k, c in enumerate(kp_cols)
            }
            items.append(
                Detection(
                    label=names[cat],
                    score=score,
                    box=[float(v) for v in boxes[q]],
                    keypoints=keypoints,
                    link=cat,
                )
            )
        return items
