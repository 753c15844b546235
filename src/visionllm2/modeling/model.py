"""VisionLLM v2: vision encoder + projector + causal LLM + super links routing to decoders."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel

from visionllm2.config import ModelConfig
from visionllm2.data.processor import IGNORE_INDEX, Batch, VisionLLM2Processor
from visionllm2.decoders import LinkDecoder, Links
from visionllm2.modeling.projector import Projector
from visionllm2.modeling.region import RegionEncoder
from visionllm2.modeling.superlink import SuperLink
from visionllm2.modeling.vision import VisionEncoder

if TYPE_CHECKING:
    from visionllm2.inference.generate import GenerationConfig
    from visionllm2.inference.results import Result


@dataclass
class ModelOutput:
    loss: torch.Tensor  # lm_loss_weight * lm_loss + sum of decoder losses
    lm_loss: torch.Tensor | None
    losses: dict[str, torch.Tensor] = field(default_factory=dict)  # "decoder.name" -> weighted loss
    lm_loss_per_sample: torch.Tensor | None = None  # (B,) detached; NaN where nothing is trained
    link_states: torch.Tensor | None = None  # (L, K_max, D), when asked for and the batch has links


class VisionLLM2Model(nn.Module):
    """The generalist model. Built by injection (see :func:`visionllm2.modeling.builder.build_model`).

    Forward (training, teacher forcing): image slots get projected vision features, query
    slots after each routing token get the family's learned queries, ``<region>`` gets the
    region embedding; the LLM runs once; the LM loss covers answer tokens (routing tokens
    included, queries excluded); each link's last-layer states at its K queries are projected
    and handed to its family's decoder, each decoder running once on the samples that use it.
    """

    def __init__(
        self,
        *,
        config: ModelConfig,
        vision: VisionEncoder,
        projector: Projector,
        llm: PreTrainedModel,
        super_link: SuperLink,
        decoders: dict[str, LinkDecoder],
        region_encoder: RegionEncoder | None,
        processor: VisionLLM2Processor,
    ):
        super().__init__()
        self.config = config
        self.vision = vision
        self.projector = projector
        self.llm = llm
        self.super_link = super_link
        self.decoders = nn.ModuleDict(decoders)
        self.region_encoder = region_encoder
        self.processor = processor

    # -- inputs ----------------------------------------------------------------------------
    def embed(self, batch: Batch, vision_features: torch.Tensor | None = None) -> torch.Tensor:
        """Input embeddings (B, T, D) with image, region and query slots filled in.

        ``vision_features`` (I, N, Dv): the vision tower's output for ``batch.pixel_values``,
        when the caller already has it (a predictor caching an image across turns)."""
        ids = batch.input_ids
        embeds = self.llm.get_input_embeddings()(ids)  # (B, T, D)
        B, T, D = embeds.shape
        image_slots = ids == self.processor.image_token_id
        n_slots = int(image_slots.sum())
        feats = None
        if batch.pixel_values is not None:
            feats = vision_features if vision_features is not None else self.vision(batch.pixel_values)
            if feats.shape[0] != batch.pixel_values.shape[0]:
                raise ValueError(f"{feats.shape[0]} vision features for {batch.pixel_values.shape[0]} images")
            per_sample = torch.bincount(batch.image_sample, minlength=B) * feats.shape[1]
            if not torch.equal(per_sample.to(ids.device), image_slots.sum(1)):
                raise ValueError(
                    f"image features and <image> slots disagree: features per sample {per_sample.tolist()} "
                    f"vs slots {image_slots.sum(1).tolist()}; build batches with the model's processor"
                )
            visual = self.projector(feats).to(embeds.dtype)  # (I, N, D)
            embeds = embeds.masked_scatter(image_slots[..., None], visual.reshape(-1, D))
        elif n_slots:
            raise ValueError(f"the batch has {n_slots} image slots but no pixel_values")

        region_slots = ids == self.processor.region_token_id
        if region_slots.any():
            if self.region_encoder is None or batch.region_masks is None or feats is None:
                raise ValueError(
                    "<region> in the text needs region prompts, an image and an enabled region encoder"
                )
            first_image = torch.searchsorted(
                batch.image_sample, batch.region_sample
            )  # each sample's first image
            regions = self.region_encoder(
                batch.pixel_values[first_image], batch.region_masks, feats[first_image]
            ).to(embeds.dtype)  # (R, D)
            if regions.shape[0] != int(region_slots.sum()):
                raise ValueError(
                    f"{int(region_slots.sum())} <region> tokens but {regions.shape[0]} region prompts"
                )
            embeds = embeds.masked_scatter(region_slots[..., None], regions)

        if batch.link_family.numel():
            rows, cols = self.super_link.query_positions(batch.link_sample, batch.link_pos, batch.link_family)
            queries = self.super_link.query_embeds(batch.link_family).to(embeds.dtype)
            embeds = embeds.index_put((rows, cols), queries)
        return embeds

    # -- LLM -------------------------------------------------------------------------------
    def run_llm(
        self,
        embeds: torch.Tensor,
        attention_mask: torch.Tensor,
        position_ids: torch.Tensor | None = None,
        cache: Any = None,
    ) -> torch.Tensor:
        """Last-layer (final-norm) hidden states (B, T, D). Position ids count only attended
        positions, so left padding and padding inside a sequence do not shift them."""
        if position_ids is None:
            position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        out = self.llm.get_decoder()(
            inputs_embeds=embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            use_cache=cache is not None,
        )
        return out.last_hidden_state

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """hidden (..., D) -> vocabulary logits (..., V)."""
        return self.llm.get_output_embeddings()(hidden)

    # -- links -----------------------------------------------------------------------------
    def decoder_links(
        self,
        states: torch.Tensor,
        sample: torch.Tensor,
        family: torch.Tensor,
        names: list[str],
        image_sizes: torch.Tensor | None,
    ) -> dict[str, tuple[Links, list[int], torch.Tensor]]:
        """Group raw link states (one (K_l, D) per link, padded to (L, K, D)) by decoder.

        Returns name -> (Links with projected states, indices of those links, batch samples).
        """
        groups: dict[str, tuple[Links, list[int], torch.Tensor]] = {}
        for dec in self.decoders:
            idx = [i for i, f in enumerate(family.tolist()) if self.super_link.family_decoder[f] == dec]
            if not idx:
                continue  # samples without links for this decoder cost it nothing
            sel = torch.tensor(idx, device=sample.device)
            k = self.super_link.num_queries[int(family[idx[0]])]
            batch_index = sample[sel]
            samples, local = torch.unique(batch_index, return_inverse=True)
            links = Links(
                states=self.super_link.project(dec, states[sel, :k]),
                sample=local,
                batch_index=batch_index,
                families=[self.super_link.family_names[int(family[i])] for i in idx],
                names=[names[i] for i in idx],
                num_samples=len(samples),
                image_sizes=None if image_sizes is None else image_sizes[samples],
            )
            groups[dec] = (links, idx, samples)
        return groups

    def link_states(self, hidden: torch.Tensor, batch: Batch) -> torch.Tensor:
        """Hidden states at every link's queries, (L, K_max, D) zero-padded."""
        L = batch.link_family.numel()
        ks = [self.super_link.num_queries[f] for f in batch.link_family.tolist()]
        out = hidden.new_zeros(L, max(ks, default=1), hidden.shape[-1])
        rows, cols = self.super_link.query_positions(batch.link_sample, batch.link_pos, batch.link_family)
        flat = hidden[rows, cols]  # (sum K_l, D)
        for i, chunk in enumerate(flat.split(ks)):
            out[i, : ks[i]] = chunk
        return out

    # -- training forward ------------------------------------------------------------------
    def forward(self, batch: Batch, decoders: bool = True, link_states: bool = False) -> ModelOutput:
        """Training forward: LM loss plus, with ``decoders``, every linked decoder's losses
        (``decoders=False`` is the MLLM-only stage: link tokens are trained as text only).
        ``link_states``: also return the states at every link's queries (:meth:`link_states`)."""
        embeds = self.embed(batch)
        hidden = self.run_llm(embeds, batch.attention_mask)  # (B, T, D)

        lm_loss = per_sample = None
        if batch.labels is not None:
            # Only positions whose next token is trained need logits.
            targets = batch.labels[:, 1:]
            keep = targets != IGNORE_INDEX
            if keep.any():
                logits = self.logits(hidden[:, :-1][keep]).float()  # (n, V)
                ce = F.cross_entropy(logits, targets[keep], reduction="none")  # (n,)
                lm_loss = ce.mean()
                rows = keep.nonzero()[:, 0]
                sums = ce.detach().new_zeros(keep.shape[0]).index_add(0, rows, ce.detach())
                per_sample = sums / keep.sum(1).clamp(min=1)
                per_sample[keep.sum(1) == 0] = float("nan")
        total = (lm_loss * self.config.lm_loss_weight) if lm_loss is not None else hidden.new_zeros(())
        losses: dict[str, torch.Tensor] = {}
        states = None
        if batch.link_family.numel() and (link_states or (decoders and batch.link_targets is not None)):
            states = self.link_states(hidden, batch)
        if decoders and batch.link_targets is not None and states is not None:
            groups = self.decoder_links(
                states, batch.link_sample, batch.link_family, batch.link_names, batch.image_sizes
            )
            for dec, (links, idx, samples) in groups.items():
                targets = [batch.link_targets[i] for i in idx]
                if all(t is None for t in targets):
                    continue
                pixels = batch.decoder_pixels.get(dec)
                out = self.decoders[dec](links, None if pixels is None else pixels[samples], targets)
                for name, value in out.items():
                    losses[f"{dec}.{name}"] = value
                    total = total + value
        return ModelOutput(
            loss=total,
            lm_loss=lm_loss,
            losses=losses,
            lm_loss_per_sample=per_sample,
            link_states=states if link_states else None,
        )

    # -- inference -------------------------------------------------------------------------
    def generate(
        self, batch: Batch, generation: GenerationConfig | None = None, **kwargs: Any
    ) -> list[Result]:
        """End-to-end inference: see :func:`visionllm2.inference.generate.generate`."""
        from visionllm2.inference.generate import generate

        return generate(self, batch, generation, **kwargs)

    # -- persistence -----------------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> None:
        from visionllm2.modeling.builder import save_pretrained

        save_pretrained(self, path)

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> VisionLLM2Model:
        from visionllm2.modeling.builder import from_pretrained

        return from_pretrained(path, **kwargs)
