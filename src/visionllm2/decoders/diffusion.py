"""Diffusion decoder for [GEN] text-to-image and [EDIT] instruction editing driven by super links."""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    UNet2DConditionModel,
)
from diffusers.training_utils import compute_snr
from diffusers.utils.torch_utils import randn_tensor
from PIL import Image
from torch import nn

from visionllm2.decoders import LinkDecoder, Links
from visionllm2.inference.results import GeneratedImage

Mode = Literal["generate", "edit"]
SAMPLERS = ("ddim", "dpm")
_FAMILY = {"generate": "gen", "edit": "edit"}


class ConditionMapper(nn.Module):
    """Link states -> MLP -> small transformer with learned queries -> conditioning sequence.

    This replaces the CLIP text encoder of Stable Diffusion (ARCHITECTURE.md §2: 64 super-link
    states -> 77 conditioning tokens at full scale): the learned queries read the K link states
    by cross-attention, so the UNet always sees a fixed-length context whatever K is.

    ``normalize_input`` brings each link state to zero mean and unit variance before the MLP (a
    LayerNorm without weights: the MLP's first layer is affine anyway, and models saved before it
    existed still load). Link states arrive at the scale the super-link projection gives (~0.2 per
    element at its default init); a text-to-image decoder, for which the links are the only input,
    barely tells prompts apart at that scale (its outputs differed 1-4% between prompts in the
    through-the-links overfit test). An editing decoder also sees the source image, and there the
    norm made the same test worse, so it is off for editing.

    ``keep_links`` appends each link state, after the MLP and a linear map, to the learned
    queries' output, so the sequence is C + K long. Without it the UNet sees only what the
    queries read, and a freshly initialised query transformer reads little more than the mean of
    the K states, which the diffusion loss alone did not change: after 1600 steps of one-shape
    text-to-image training, a linear probe recovered a shape's grid cell from the link states in
    84% of held-out prompts, from their mean in 51% and from the mapper's output in 38%; with
    ``keep_links``, 88% from the output (benchmarks/README.md, "What of the prompt reaches the
    diffusion decoder?").
    """

    def __init__(
        self,
        *,
        link_dim: int,
        width: int,
        out_dim: int,
        num_queries: int,
        num_layers: int,
        num_heads: int,
        normalize_input: bool = False,
        keep_links: bool = False,
    ) -> None:
        super().__init__()
        if width % num_heads:
            raise ValueError(f"mapper_dim={width} must be divisible by mapper_heads={num_heads}")
        self.norm = nn.LayerNorm(link_dim, elementwise_affine=False) if normalize_input else nn.Identity()
        self.mlp = nn.Sequential(nn.Linear(link_dim, width), nn.GELU(), nn.Linear(width, width))
        self.queries = nn.Parameter(torch.randn(num_queries, width) * 0.02)
        layer = nn.TransformerDecoderLayer(
            d_model=width,
            nhead=num_heads,
            dim_feedforward=4 * width,
            dropout=0.0,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.transformer = nn.TransformerDecoder(layer, num_layers=num_layers, norm=nn.LayerNorm(width))
        self.out = nn.Linear(width, out_dim)
        self.link_out = nn.Linear(width, out_dim) if keep_links else None

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        """states (L, K, D) -> conditioning (L, C, D_cross) with C = number of learned queries,
        or (L, C + K, D_cross) with ``keep_links``."""
        memory = self.mlp(self.norm(states))  # (L, K, W)
        queries = self.queries.unsqueeze(0).expand(states.shape[0], -1, -1)  # (L, C, W)
        read = self.out(self.transformer(queries, memory))  # (L, C, D_cross)
        if self.link_out is None:
            return read
        return torch.cat([read, self.link_out(memory)], dim=1)  # (L, C + K, D_cross)


def _link_seeds(seed: int | Sequence[int], sample: list[int], num_samples: int) -> list[int]:
    """One seed per link (``sample``: each link's sample): ``seed + i`` for link i, or
    ``seed[s] + j`` for the j-th link of sample s."""
    if isinstance(seed, (int, np.integer)):
        return [int(seed) + i for i in range(len(sample))]
    if len(seed) != num_samples:
        raise ValueError(f"seed gives {len(seed)} per-sample seeds for {num_samples} samples: one per sample")
    taken: Counter[int] = Counter()
    out = []
    for s in sample:
        out.append(int(seed[s]) + taken[s])
        taken[s] += 1
    return out


class DiffusionDecoder(LinkDecoder):
    """UNet diffusion decoder conditioned on super links; one class for generation and editing.

    ``mode="generate"`` serves ``[GEN]`` links: the mapper's output is the UNet's cross-attention
    context. ``mode="edit"`` serves ``[EDIT]`` links InstructPix2Pix-style (Brooks et al. 2023):
    the source image (pixel space) or its VAE latent (latent space) is concatenated to the noisy
    input along channels, and sampling uses separate text and image guidance scales.

    The denoiser is built from scratch (pixel space, tiny world) unless ``pretrained`` names a
    local diffusers folder (Stable Diffusion 1.5 / InstructPix2Pix layout: ``unet/``, ``vae/``,
    ``scheduler/``, and for the optional alignment loss ``text_encoder/`` + ``tokenizer/``); a VAE
    puts the diffusion in latent space. Training uses the DDPM forward process; the objective is
    the scheduler config's ``prediction_type``: epsilon for the SD-1.5 / InstructPix2Pix weights
    (their config says so), v for a denoiser trained from scratch by default, because with an
    epsilon target the image is recovered as (x_t - sigma * eps) / alpha, which amplifies errors
    by 1 / alpha at the noisy steps where sampling fixes the layout (overfitting four 32 px
    prompt images, epsilon models still sampled wrong images after 1000 steps, whatever the beta
    schedule, while v models sampled the right ones after ~600). Sampling uses DDIM or
    DPM-Solver++ schedulers made from the same config, kept apart from the denoiser as diffusers
    does.

    Forward-time overrides for sampling may be passed in ``links.extras``: ``sampler``,
    ``num_inference_steps``, ``guidance_scale``, ``image_guidance_scale``, ``seed`` (link i of
    the call draws its initial noise from ``torch.Generator().manual_seed(seed + i)``; a sequence
    gives one seed per sample, and the j-th link of sample s draws from ``seed[s] + j``, so its
    image does not depend on the batch it came in) or ``generator`` (a ``torch.Generator`` or one
    per link).
    """

    def __init__(
        self,
        *,
        link_dim: int,
        mode: Mode = "generate",
        # conditioning mapper
        cond_len: int = 8,
        link_tokens: bool = False,
        mapper_dim: int = 64,
        mapper_layers: int = 2,
        mapper_heads: int = 4,
        # denoiser built from scratch (ignored for the parts loaded from ``pretrained``)
        image_size: int | None = None,
        block_out_channels: tuple[int, ...] | list[int] = (32, 64),
        layers_per_block: int = 1,
        attention_head_dim: int = 8,
        cross_attention_dim: int = 64,
        norm_num_groups: int = 32,
        unet_config: dict[str, Any] | None = None,
        num_train_timesteps: int = 1000,
        beta_schedule: str = "squaredcos_cap_v2",
        prediction_type: str = "v_prediction",
        # real scale: local diffusers folders only, never downloads
        pretrained: str | None = None,
        vae_path: str | None = None,
        text_encoder_path: str | None = None,
        tokenizer_path: str | None = None,
        freeze_unet: bool = False,
        gradient_checkpointing: bool = False,
        # training
        cond_drop_prob: float | None = None,
        loss_weight: float = 1.0,
        snr_gamma: float | None = None,
        align_weight: float = 0.0,
        # sampling defaults
        sampler: str = "dpm",
        num_inference_steps: int = 25,
        guidance_scale: float | None = None,
        image_guidance_scale: float = 1.5,
        seed: int | None = None,
    ) -> None:
        super().__init__(link_dim=link_dim)
        if mode not in _FAMILY:
            raise ValueError(f"mode must be 'generate' or 'edit', got {mode!r}")
        self.mode = mode
        self.family = _FAMILY[mode]
        self.families = (self.family,)

        # --- denoiser, autoencoder and noise schedule ---------------------------------------
        if pretrained is not None:
            _require_dir(pretrained, "pretrained")
        self.vae: AutoencoderKL | None = None
        vae_dir = vae_path or (_subdir(pretrained, "vae") if pretrained else None)
        if vae_dir is not None:
            self.vae = AutoencoderKL.from_pretrained(_require_dir(vae_dir, "vae_path"), local_files_only=True)
            self.vae.requires_grad_(False)  # the autoencoder is a fixed codec, as in SD fine-tuning
            self.vae.eval()
        latent_channels = self.vae.config.latent_channels if self.vae is not None else 3
        self.vae_scale = 2 ** (len(self.vae.config.block_out_channels) - 1) if self.vae is not None else 1
        wanted_in = 2 * latent_channels if mode == "edit" else latent_channels

        if pretrained is not None:
            self.unet = UNet2DConditionModel.from_pretrained(
                _require_dir(_subdir(pretrained, "unet"), "pretrained/unet"), local_files_only=True
            )
            self._adapt_input_channels(wanted_in, latent_channels)
            # Keep the folder's whole config (SD ships a PNDM one): its sampler-only keys, such as
            # set_alpha_to_one, then reach the DDIM / DPM-Solver schedulers made from it.
            self.scheduler_config = dict(
                DDPMScheduler.load_config(
                    _require_dir(_subdir(pretrained, "scheduler"), "pretrained/scheduler")
                )
            )
            self.noise_scheduler = DDPMScheduler.from_config(self.scheduler_config)
        else:
            size = image_size or 32
            if size % self.vae_scale:
                raise ValueError(
                    f"image_size={size} must be a multiple of the VAE downscale {self.vae_scale}"
                )
            coarse = len(block_out_channels) - 1
            config: dict[str, Any] = {
                "sample_size": size // self.vae_scale,
                "in_channels": wanted_in,
                "out_channels": latent_channels,
                "block_out_channels": tuple(block_out_channels),
                "layers_per_block": layers_per_block,
                # Self-attention costs (H*W)^2: keep it off the full-resolution level and put
                # cross-attention on the coarser ones, where the conditioning acts on layout.
                "down_block_types": ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * coarse,
                "up_block_types": ("CrossAttnUpBlock2D",) * coarse + ("UpBlock2D",),
                "cross_attention_dim": cross_attention_dim,
                "attention_head_dim": attention_head_dim,
                "norm_num_groups": norm_num_groups,
            }
            config.update(unet_config or {})
            self.unet = UNet2DConditionModel(**config)
            self.noise_scheduler = DDPMScheduler(
                num_train_timesteps=num_train_timesteps,
                beta_schedule=beta_schedule,
                prediction_type=prediction_type,
                # Pixels live in [-1, 1]; clipping the predicted x0 keeps few-step samples in range.
                clip_sample=self.vae is None,
                # "trailing" starts sampling at the last training step, which matters at 10 steps.
                timestep_spacing="trailing",
            )
            self.scheduler_config = dict(self.noise_scheduler.config)
        if freeze_unet:
            self.unet.requires_grad_(False)
        if gradient_checkpointing:
            self.unet.enable_gradient_checkpointing()
        self.latent_channels = latent_channels
        self.image_size = self.unet.config.sample_size * self.vae_scale
        if image_size is not None and pretrained is not None:
            if image_size % (self.vae_scale * 2 ** (len(self.unet.config.block_out_channels) - 1)):
                raise ValueError(f"image_size={image_size} is not divisible by the UNet's total downscale")
            self.image_size = image_size
        # The decoder's own pixel input: editing needs the source image in [-1, 1].
        self.pixel_size = self.image_size if mode == "edit" else None
        self.pixel_mean = (0.5, 0.5, 0.5)
        self.pixel_std = (0.5, 0.5, 0.5)

        # --- conditioning ------------------------------------------------------------------
        context_dim = self.unet.config.cross_attention_dim
        self.mapper = ConditionMapper(
            link_dim=link_dim,
            width=mapper_dim,
            out_dim=context_dim,
            num_queries=cond_len,
            num_layers=mapper_layers,
            num_heads=mapper_heads,
            normalize_input=mode == "generate",
            keep_links=link_tokens,
        )
        # The "empty prompt" for classifier-free guidance: a learned sequence (zeros at start, or
        # CLIP's encoding of "" when a text encoder is loaded, matching what SD was trained with),
        # and with ``link_tokens`` one learned token standing in for every link state.
        self.null_cond = nn.Parameter(torch.zeros(cond_len, context_dim))
        self.null_link = nn.Parameter(torch.zeros(context_dim)) if link_tokens else None

        self.text_encoder: nn.Module | None = None
        self.tokenizer: Any = None
        self.align_weight = align_weight
        te_dir = text_encoder_path or (_subdir(pretrained, "text_encoder") if pretrained else None)
        tok_dir = tokenizer_path or (_subdir(pretrained, "tokenizer") if pretrained else None)
        if align_weight > 0:
            if te_dir is None or tok_dir is None:
                raise ValueError(
                    "align_weight > 0 needs a CLIP text encoder and tokenizer: pass pretrained=<SD folder> "
                    "or text_encoder_path= and tokenizer_path="
                )
            self._load_text_encoder(
                _require_dir(te_dir, "text_encoder_path"), _require_dir(tok_dir, "tokenizer")
            )

        # --- training / sampling settings --------------------------------------------------
        default_drop = 0.1 if mode == "generate" else 0.05
        self.cond_drop_prob = default_drop if cond_drop_prob is None else cond_drop_prob
        events = 3 if mode == "edit" else 1  # edit drops text, image, or both, each with this prob
        if not 0.0 <= self.cond_drop_prob * events <= 1.0:
            raise ValueError(f"cond_drop_prob={self.cond_drop_prob} must lie in [0, {1 / events:.3f}]")
        self.loss_weight = loss_weight
        self.snr_gamma = snr_gamma
        self.sampler = _check_sampler(sampler)
        self.num_inference_steps = num_inference_steps
        # Editing defaults are InstructPix2Pix's (text 7.5, image 1.5); generation uses a milder
        # scale, as pixel-space samples with clipped x0 saturate under strong guidance.
        self.guidance_scale = (7.5 if mode == "edit" else 2.0) if guidance_scale is None else guidance_scale
        self.image_guidance_scale = image_guidance_scale
        self.seed = seed

    # ------------------------------------------------------------------ construction helpers
    def _adapt_input_channels(self, wanted: int, latent_channels: int) -> None:
        """Make a loaded UNet take ``wanted`` input channels.

        An SD-1.5 UNet (4 channels) used for editing gets zero-initialised extra input weights
        for the source latent, so it starts out as the text-to-image model (InstructPix2Pix §3.2).
        """
        have = self.unet.config.in_channels
        if have == wanted:
            return
        if not (have == latent_channels and wanted == 2 * latent_channels):
            raise ValueError(
                f"the pretrained UNet takes {have} input channels but mode={self.mode!r} needs {wanted}; "
                "use a text-to-image UNet for 'generate', a text-to-image or InstructPix2Pix one for 'edit'"
            )
        old = self.unet.conv_in
        new = nn.Conv2d(wanted, old.out_channels, old.kernel_size, old.stride, old.padding)
        with torch.no_grad():
            new.weight.zero_()
            new.weight[:, :have] = old.weight
            new.bias.copy_(old.bias)
        self.unet.conv_in = new
        self.unet.register_to_config(in_channels=wanted)

    def _load_text_encoder(self, te_dir: str, tok_dir: str) -> None:
        from transformers import AutoTokenizer, CLIPTextModel  # only needed for the alignment loss

        self.tokenizer = AutoTokenizer.from_pretrained(tok_dir, local_files_only=True)
        self.text_encoder = CLIPTextModel.from_pretrained(te_dir, local_files_only=True)
        self.text_encoder.requires_grad_(False)
        self.text_encoder.eval()
        cond_len, context_dim = self.null_cond.shape
        if self.tokenizer.model_max_length != cond_len or self.text_encoder.config.hidden_size != context_dim:
            raise ValueError(
                f"the alignment loss compares the mapper output ({cond_len} x {context_dim}) with CLIP text "
                f"features ({self.tokenizer.model_max_length} x {self.text_encoder.config.hidden_size}); "
                "set cond_len to the tokenizer's model_max_length (77 for SD-1.5)"
            )
        with torch.no_grad():
            self.null_cond.copy_(self.text_features([""])[0])

    # ------------------------------------------------------------------ encoding helpers
    @property
    def latent_size(self) -> int:
        return self.image_size // self.vae_scale

    def images_to_tensor(self, images: list[Image.Image]) -> torch.Tensor:
        """PIL images -> (B, 3, S, S) in [-1, 1], squashed to the decoder's square size like its
        pixel input, so source and target pixels line up."""
        size = self.image_size
        arrays = [np.asarray(im.convert("RGB").resize((size, size), Image.BICUBIC)) for im in images]
        x = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)  # (B, 3, S, S) uint8
        return x.to(device=self.null_cond.device, dtype=self.unet.dtype) / 127.5 - 1.0

    def encode_target(self, x: torch.Tensor) -> torch.Tensor:
        """Target images (B, 3, S, S) in [-1, 1] -> the space diffusion runs in (x0)."""
        if self.vae is None:
            return x
        with torch.no_grad():
            return self.vae.encode(x).latent_dist.sample() * self.vae.config.scaling_factor

    def encode_source(self, x: torch.Tensor) -> torch.Tensor:
        """Source images (B, 3, S, S) in [-1, 1] -> the editing condition concatenated to the UNet
        input. Like InstructPix2Pix, the source latent is the posterior mode, *unscaled*, so its
        released weights work unchanged."""
        if self.vae is None:
            return x
        with torch.no_grad():
            return self.vae.encode(x).latent_dist.mode()

    def decode(self, x0: torch.Tensor) -> torch.Tensor:
        """Diffusion-space samples -> images (B, 3, S, S) in [0, 1]."""
        if self.vae is not None:
            x0 = self.vae.decode(x0 / self.vae.config.scaling_factor).sample
        return ((x0.float() + 1.0) / 2.0).clamp(0.0, 1.0)

    def text_features(self, captions: list[str]) -> torch.Tensor:
        """CLIP text features (B, 77, D) of captions, the target of the alignment loss."""
        if self.text_encoder is None:
            raise RuntimeError("no CLIP text encoder loaded: construct with align_weight > 0")
        tokens = self.tokenizer(
            captions,
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        )
        with torch.no_grad():
            return self.text_encoder(tokens.input_ids.to(self.null_cond.device)).last_hidden_state

    # ------------------------------------------------------------------ training
    def forward(
        self, links: Links, pixels: torch.Tensor | None, targets: list[Any] | None = None
    ) -> dict[str, torch.Tensor] | list[torch.Tensor]:
        """Diffusion loss for the links' target images, or sampled images.

        links:   L links with states (L, K, D); each link is one image to generate / edit.
        pixels:  (S, 3, S_px, S_px) source images in [-1, 1] for ``mode="edit"``; unused for
                 ``mode="generate"``.
        targets: ``None`` to sample, else L :class:`LinkTarget` (or ``None``) with ``.image``.
        returns: ``{"loss_gen"|"loss_edit": ..., ["loss_align_gen"|...]}`` with targets, else a
                 list of S tensors (n_s, 3, H, W) in [0, 1], one image per link of sample s.
        """
        if self.mode == "edit" and pixels is None and len(links):
            raise ValueError("the edit decoder needs the source images as `pixels` (got None)")
        if targets is None:
            return self._predict(links, pixels)
        if len(targets) != len(links):
            raise ValueError(
                f"got {len(targets)} targets for {len(links)} links; pass one (or None) per link"
            )

        keep = [i for i, t in enumerate(targets) if t is not None and getattr(t, "image", None) is not None]
        name = f"loss_{self.family}"
        if not keep:
            # Still touch the states so every rank's graph has the same parameters (DDP).
            return {name: links.states.sum() * 0.0}
        idx = torch.tensor(keep, device=links.states.device)
        cond = self.mapper(links.states[idx])  # (B, C, D_cross)
        x0 = self.encode_target(self.images_to_tensor([targets[i].image for i in keep]))
        source = (
            self.encode_source(self._source_pixels(pixels)[links.sample[idx]])
            if self.mode == "edit"
            else None
        )

        losses = {name: self.loss_weight * self.diffusion_loss(x0, cond, source)}
        if self.align_weight > 0:
            captions = [links.names[i] for i in keep]
            read = cond[:, : self.null_cond.shape[0]]  # the queries' part, not the link tokens
            losses[f"loss_align_{self.family}"] = self.align_weight * F.mse_loss(
                read.float(), self.text_features(captions).float()
            )
        return losses

    def _source_pixels(self, pixels: torch.Tensor) -> torch.Tensor:
        if (
            pixels.ndim != 4
            or pixels.shape[1] != 3
            or pixels.shape[-2:] != (self.image_size, self.image_size)
        ):
            raise ValueError(
                f"edit source pixels must be (S, 3, {self.image_size}, {self.image_size}) in [-1, 1] "
                f"(pixel_size / pixel_mean / pixel_std of this decoder), got {tuple(pixels.shape)}"
            )
        return pixels.to(self.unet.dtype)

    def drop_conditions(
        self, cond: torch.Tensor, source: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Condition dropout that teaches the unconditional predictions used by guidance.

        Generation replaces the text condition by the null one with probability p. Editing
        follows InstructPix2Pix's three-way dropout from one uniform draw: text only, both, or
        image only, each with probability p (the null image is an all-zero source).
        """
        p = self.cond_drop_prob
        if p <= 0:
            return cond, source
        r = torch.rand(cond.shape[0], device=cond.device)
        drop_text = r < 2 * p if source is not None else r < p
        cond = torch.where(drop_text[:, None, None], self.null_context(cond), cond)
        if source is not None:
            drop_image = (r >= p) & (r < 3 * p)
            source = source * (~drop_image).to(source.dtype)[:, None, None, None]
        return cond, source

    def null_context(self, cond: torch.Tensor) -> torch.Tensor:
        """The null condition shaped like ``cond`` (B, C_len [+ K], D_cross)."""
        null = self.null_cond.to(cond.dtype)
        if self.null_link is not None:
            links = cond.shape[1] - null.shape[0]
            null = torch.cat([null, self.null_link.to(cond.dtype).expand(links, -1)])
        return null.unsqueeze(0).expand_as(cond)

    def diffusion_loss(
        self, x0: torch.Tensor, cond: torch.Tensor, source: torch.Tensor | None = None
    ) -> torch.Tensor:
        """DDPM training objective on clean samples x0 (B, C, h, w) given conditioning
        (B, C_len, D_cross) and, for editing, the source (B, C, h, w)."""
        cond, source = self.drop_conditions(cond, source)
        noise = torch.randn_like(x0)
        t = torch.randint(
            0, self.noise_scheduler.config.num_train_timesteps, (x0.shape[0],), device=x0.device
        )
        return self.denoising_error(x0, cond, t, noise, source).mean()

    def denoising_error(
        self,
        x0: torch.Tensor,
        cond: torch.Tensor,
        t: torch.Tensor,
        noise: torch.Tensor,
        source: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """(B,) weighted denoising error of x0 noised with ``noise`` at timesteps ``t``, given
        ``cond`` as it is (no condition dropout): the training loss per sample."""
        x_t = self.noise_scheduler.add_noise(x0, noise, t)
        inputs = torch.cat([x_t, source], dim=1) if source is not None else x_t  # (B, C_in, h, w)
        pred = self.unet(inputs, t, encoder_hidden_states=cond).sample
        kind = self.noise_scheduler.config.prediction_type
        snr = compute_snr(self.noise_scheduler, t)  # (B,) alpha_bar / (1 - alpha_bar)
        if kind == "epsilon":
            target, snr_to_weight = noise, snr
        elif kind == "v_prediction":
            target, snr_to_weight = self.noise_scheduler.get_velocity(x0, noise, t), snr + 1
        elif kind == "sample":
            target, snr_to_weight = x0, torch.ones_like(snr)
        else:
            raise ValueError(f"unsupported prediction_type {kind!r}")
        per_sample = (pred.float() - target.float()).pow(2).mean(dim=(1, 2, 3))  # (B,)
        if self.snr_gamma is not None:
            # Min-SNR-gamma (Hang et al. 2023): as an x0 loss the epsilon loss is weighted by SNR,
            # so nearly clean steps dominate; capping the weight at gamma moves the effort to the
            # noisy steps that decide the layout, which is what sampling from the condition needs.
            per_sample = per_sample * snr.clamp(max=self.snr_gamma) / snr_to_weight
        return per_sample

    # ------------------------------------------------------------------ sampling
    def make_scheduler(self, sampler: str, num_inference_steps: int) -> Any:
        """A fresh sampling scheduler (stateful, so one per call) sharing the training schedule."""
        config = self.scheduler_config
        if _check_sampler(sampler) == "ddim":
            scheduler = DDIMScheduler.from_config(config)
        else:
            overrides: dict[str, Any] = {}
            if config.get("beta_schedule") == "squaredcos_cap_v2":
                # The cosine schedule's last steps have alpha ~ 0, where DPM-Solver's x0 estimate
                # divides by alpha and explodes; diffusers advises clipping lambda there.
                overrides["lambda_min_clipped"] = -5.1
            if self.vae is None and config.get("clip_sample", False):
                # Pixel space: DPM-Solver++ has no x0 clipping, dynamic thresholding plays that role.
                overrides["thresholding"] = True
            scheduler = DPMSolverMultistepScheduler.from_config(config, **overrides)
        scheduler.set_timesteps(num_inference_steps, device=self.null_cond.device)
        return scheduler

    def predict_noise(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor | int,
        cond: torch.Tensor,
        source: torch.Tensor | None = None,
        *,
        guidance_scale: float,
        image_guidance_scale: float = 1.0,
    ) -> torch.Tensor:
        """The guided model output at x_t (B, C, h, w).

        Generation: ``u + s (c - u)`` (classifier-free guidance). Editing (InstructPix2Pix eq. 3):
        ``u + s_I (i - u) + s_T (ti - i)`` with u = no condition, i = image only, ti = both. At
        scale(s) 1 the formula is the conditional prediction, which is computed alone (exactly,
        and at a third/half of the cost).
        """
        null = self.null_context(cond)
        if source is None:
            if guidance_scale == 1.0:
                return self.unet(x_t, t, encoder_hidden_states=cond).sample
            both = self.unet(torch.cat([x_t, x_t]), t, encoder_hidden_states=torch.cat([cond, null])).sample
            c, u = both.chunk(2)
            return u + guidance_scale * (c - u)
        if guidance_scale == 1.0 and image_guidance_scale == 1.0:
            return self.unet(torch.cat([x_t, source], dim=1), t, encoder_hidden_states=cond).sample
        inputs = torch.cat(
            [
                torch.cat([x_t, source], dim=1),
                torch.cat([x_t, source], dim=1),
                torch.cat([x_t, torch.zeros_like(source)], dim=1),
            ]
        )  # (3B, 2C, h, w)
        out = self.unet(inputs, t, encoder_hidden_states=torch.cat([cond, null, null])).sample
        ti, i, u = out.chunk(3)
        return u + image_guidance_scale * (i - u) + guidance_scale * (ti - i)

    @torch.no_grad()
    def generate(
        self,
        cond: torch.Tensor,
        source: torch.Tensor | None = None,
        *,
        sampler: str | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        image_guidance_scale: float | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
    ) -> torch.Tensor:
        """Sample images from conditioning (B, C_len, D_cross) and, for editing, encoded sources
        (B, C, h, w). Returns (B, 3, H, W) in [0, 1]. Deterministic given ``generator``: the
        initial noise is the only randomness (DDIM with eta 0, DPM-Solver++ multistep)."""
        if self.mode == "edit" and source is None:
            raise ValueError("editing needs the encoded source image; see encode_source()")
        scheduler = self.make_scheduler(
            sampler or self.sampler, num_inference_steps or self.num_inference_steps
        )
        gs = self.guidance_scale if guidance_scale is None else guidance_scale
        igs = self.image_guidance_scale if image_guidance_scale is None else image_guidance_scale
        shape = (cond.shape[0], self.latent_channels, self.latent_size, self.latent_size)
        x = randn_tensor(shape, generator=generator, device=cond.device, dtype=self.unet.dtype)
        x = x * scheduler.init_noise_sigma
        for t in scheduler.timesteps:
            model_in = scheduler.scale_model_input(x, t)
            eps = self.predict_noise(model_in, t, cond, source, guidance_scale=gs, image_guidance_scale=igs)
            x = scheduler.step(eps, t, x).prev_sample
        return self.decode(x)

    def _predict(self, links: Links, pixels: torch.Tensor | None) -> list[torch.Tensor]:
        num_samples = links.num_samples or (int(links.sample.max()) + 1 if len(links) else 0)
        h = w = self.image_size
        if not len(links):
            return [torch.zeros(0, 3, h, w) for _ in range(num_samples)]
        extras = links.extras
        generator = extras.get("generator")
        seed = extras.get("seed", self.seed)
        if generator is None and seed is not None:
            seeds = _link_seeds(seed, links.sample.tolist(), num_samples)
            generator = [torch.Generator().manual_seed(s) for s in seeds]
        cond = self.mapper(links.states)  # (L, C, D_cross)
        source = (
            self.encode_source(self._source_pixels(pixels)[links.sample]) if self.mode == "edit" else None
        )
        images = self.generate(
            cond,
            source,
            sampler=extras.get("sampler"),
            num_inference_steps=extras.get("num_inference_steps"),
            guidance_scale=extras.get("guidance_scale"),
            image_guidance_scale=extras.get("image_guidance_scale"),
            generator=generator,
        )  # (L, 3, H, W)
        return [images[links.of_sample(s)] for s in range(num_samples)]

    def postprocess(
        self, output: Any, *, names: list[str], families: list[str], image_size: tuple[int, int] | None
    ) -> list[Any]:
        """(n, 3, H, W) in [0, 1] -> n :class:`GeneratedImage`. Edited images are resized back to
        the source's original (width, height); generated ones keep the decoder's resolution."""
        if output.shape[0] != len(families):
            raise ValueError(f"got {output.shape[0]} images for {len(families)} links")
        arrays = (output.detach().float().cpu().permute(0, 2, 3, 1).numpy() * 255.0).round().astype(np.uint8)
        results = []
        for array, family in zip(arrays, families, strict=True):
            image = Image.fromarray(array)
            if family == "edit" and image_size is not None and tuple(image_size) != image.size:
                image = image.resize(tuple(int(v) for v in image_size), Image.BICUBIC)
            results.append(GeneratedImage(image=image, family=family))
        return results


def _check_sampler(name: str) -> str:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {SAMPLERS}")
    return name


def _subdir(root: str | None, name: str) -> str | None:
    return None if root is None else os.path.join(root, name)


def _require_dir(path: str | None, what: str) -> str:
    # A missing local folder would otherwise be read as a Hub repo id by from_pretrained.
    if path is None or not os.path.isdir(path):
        raise FileNotFoundError(f"{what}: local folder {path!r} not found (weights are never downloaded)")
    return path


__all__ = ["SAMPLERS", "ConditionMapper", "DiffusionDecoder"]
