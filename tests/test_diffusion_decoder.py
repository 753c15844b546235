"""Tests of the [GEN]/[EDIT] diffusion decoder on tiny configs and tiny random diffusers parts."""

from __future__ import annotations

import json
import string
from pathlib import Path

import numpy as np
import pytest
import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from PIL import Image

from conftest import TINY_UNET
from visionllm2.data.sample import LinkTarget
from visionllm2.decoders import Links, decoder_class
from visionllm2.decoders.diffusion import DiffusionDecoder
from visionllm2.inference.results import GeneratedImage

LINK_DIM = 24
K = 4  # queries per link in these tests


def tiny(**overrides) -> dict:
    """Constructor kwargs of the tiny pixel-space decoder, with overrides."""
    return {**TINY_UNET, **overrides}


def make_links(states: torch.Tensor, sample: list[int], family: str, **extras) -> Links:
    n = states.shape[0]
    return Links(
        states=states,
        sample=torch.tensor(sample, device=states.device),
        batch_index=torch.tensor(sample),
        families=[family] * n,
        names=[f"prompt {i}" for i in range(n)],
        num_samples=max(sample) + 1,
        extras=extras,
    )


def square(color: tuple[int, int, int], x: int, y: int, size: int = 16, side: int = 6) -> Image.Image:
    a = np.zeros((size, size, 3), np.uint8)
    a[y : y + side, x : x + side] = color
    return Image.fromarray(a)


def random_image(size: int, seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def assert_grads_reach_all(module: torch.nn.Module) -> None:
    missing = [
        n for n, p in module.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())
    ]
    assert not missing, f"no gradient reached: {missing[:10]}"
    for name, p in module.named_parameters():
        if p.grad is not None:
            assert torch.isfinite(p.grad).all(), name


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.one_thread


# ---------------------------------------------------------------------------- construction / registry


def test_registered_and_built_from_json_kwargs():
    kwargs = json.loads(json.dumps(tiny(mode="edit")))  # the model builds decoders from config.json
    dec = decoder_class("diffusion")(link_dim=LINK_DIM, **kwargs)
    assert isinstance(dec, DiffusionDecoder)
    assert dec.families == ("edit",)
    assert dec.pixel_size == 16 and dec.pixel_mean == (0.5, 0.5, 0.5) and dec.pixel_std == (0.5, 0.5, 0.5)
    gen = DiffusionDecoder(link_dim=LINK_DIM, **tiny())
    assert gen.families == ("gen",) and gen.pixel_size is None


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="mode"):
        DiffusionDecoder(link_dim=LINK_DIM, mode="inpaint", **tiny())
    with pytest.raises(ValueError, match="sampler"):
        DiffusionDecoder(link_dim=LINK_DIM, sampler="euler", **tiny())
    with pytest.raises(ValueError, match="cond_drop_prob"):
        DiffusionDecoder(link_dim=LINK_DIM, mode="edit", cond_drop_prob=0.5, **tiny())
    with pytest.raises(FileNotFoundError, match="never downloaded"):
        DiffusionDecoder(link_dim=LINK_DIM, pretrained="/no/such/folder")
    with pytest.raises(ValueError, match="align_weight"):
        DiffusionDecoder(link_dim=LINK_DIM, align_weight=1.0, **tiny())
    dec = DiffusionDecoder(link_dim=LINK_DIM, mode="edit", **tiny())
    links = make_links(torch.randn(1, K, LINK_DIM), [0], "edit")
    with pytest.raises(ValueError, match="pixels"):
        dec(links, None, [LinkTarget(image=random_image(16, 0))])
    with pytest.raises(ValueError, match="targets"):
        dec(links, torch.zeros(1, 3, 16, 16), [])
    with pytest.raises(ValueError, match=r"\(S, 3, 16, 16\)"):
        dec(links, torch.zeros(1, 3, 8, 8), [LinkTarget(image=random_image(16, 0))])


# ---------------------------------------------------------------------------- training forward


@pytest.mark.parametrize("link_tokens", [False, True])
def test_generation_loss_is_finite_and_reaches_every_parameter(link_tokens):
    torch.manual_seed(0)
    dec = DiffusionDecoder(link_dim=LINK_DIM, link_tokens=link_tokens, **tiny())
    states = torch.randn(3, K, LINK_DIM, requires_grad=True)
    links = make_links(states, [0, 1, 1], "gen")
    # A link without a target (e.g. a chat sample) is skipped, not an error.
    targets = [LinkTarget(image=random_image(20, 0)), None, LinkTarget(image=random_image(12, 1))]
    total = 0.0
    for p in (0.0, 1.0):  # conditioned pass reaches the mapper; dropped pass the null condition
        dec.cond_drop_prob = p
        losses = dec(links, None, targets)
        assert set(losses) == {"loss_gen"} and losses["loss_gen"].ndim == 0
        assert torch.isfinite(losses["loss_gen"])
        total = total + losses["loss_gen"]
    total.backward()
    assert_grads_reach_all(dec)
    assert states.grad is not None and states.grad[[0, 2]].any() and not states.grad[1].any()


def test_denoising_error_is_the_training_loss_per_sample():
    """The per-sample error that benchmarks/condition_reliance.py compares across conditions is
    what training averages: same noise and timesteps, no condition dropout -> the same loss."""
    torch.manual_seed(0)
    dec = DiffusionDecoder(link_dim=LINK_DIM, cond_drop_prob=0.0, snr_gamma=5.0, **tiny())
    x0 = torch.rand(3, 3, dec.image_size, dec.image_size) * 2 - 1
    cond = torch.randn(3, *dec.null_cond.shape)
    with torch.no_grad():
        torch.manual_seed(1)
        loss = dec.diffusion_loss(x0, cond)
        torch.manual_seed(1)
        noise = torch.randn_like(x0)
        t = torch.randint(0, dec.noise_scheduler.config.num_train_timesteps, (3,))
        per_sample = dec.denoising_error(x0, cond, t, noise)
        other = dec.denoising_error(x0, cond.roll(1, dims=0), t, noise)
    assert per_sample.shape == (3,)
    torch.testing.assert_close(per_sample.mean(), loss)
    assert not torch.equal(other, per_sample)  # a random decoder already reads its condition a little


def test_no_targets_gives_a_connected_zero_loss():
    dec = DiffusionDecoder(link_dim=LINK_DIM, **tiny())
    states = torch.randn(2, K, LINK_DIM, requires_grad=True)
    losses = dec(make_links(states, [0, 1], "gen"), None, [None, LinkTarget()])
    assert losses["loss_gen"].item() == 0.0
    losses["loss_gen"].backward()  # part of the graph, so DDP sees the same parameters on every rank
    assert states.grad is not None


def test_edit_input_has_the_source_channels():
    torch.manual_seed(0)
    dec = DiffusionDecoder(link_dim=LINK_DIM, mode="edit", cond_drop_prob=0.0, **tiny())
    assert dec.unet.config.in_channels == 6 and dec.unet.conv_in.in_channels == 6
    pixels = torch.rand(2, 3, 16, 16) * 2 - 1
    seen = {}
    original = dec.unet.forward

    def spy(sample, timestep, encoder_hidden_states, **kw):
        seen["input"] = sample.detach().clone()
        return original(sample, timestep, encoder_hidden_states, **kw)

    dec.unet.forward = spy
    links = make_links(torch.randn(3, K, LINK_DIM), [1, 0, 1], "edit")
    targets = [LinkTarget(image=random_image(16, i)) for i in range(3)]
    dec(links, pixels, targets)
    x = seen["input"]
    assert x.shape == (3, 6, 16, 16)
    # Channels 3..5 are each link's own source image (its sample's row of `pixels`).
    torch.testing.assert_close(x[:, 3:], pixels[[1, 0, 1]])


def test_edit_loss_reaches_every_parameter():
    torch.manual_seed(0)
    dec = DiffusionDecoder(link_dim=LINK_DIM, mode="edit", **tiny())
    links = make_links(torch.randn(6, K, LINK_DIM), [0, 0, 1, 1, 2, 2], "edit")
    pixels = torch.rand(3, 3, 16, 16) * 2 - 1
    targets = [LinkTarget(image=random_image(16, i)) for i in range(6)]
    total = 0.0
    for p in (0.0, 1 / 3):  # 1/3: every link drops text, image or both
        dec.cond_drop_prob = p
        total = total + dec(links, pixels, targets)["loss_edit"]
    total.backward()
    assert_grads_reach_all(dec)


def test_condition_dropout_rates():
    torch.manual_seed(0)
    dec = DiffusionDecoder(link_dim=LINK_DIM, mode="edit", cond_drop_prob=0.2, **tiny())
    with torch.no_grad():
        dec.null_cond.fill_(7.0)
    n = 6000
    cond = torch.zeros(n, *dec.null_cond.shape)
    source = torch.ones(n, 3, 2, 2)
    c, s = dec.drop_conditions(cond, source)
    text_dropped = c[:, 0, 0] == 7.0
    image_dropped = s[:, 0, 0, 0] == 0.0
    # InstructPix2Pix: text only, image only, both: each p; kept: 1 - 3p.
    for frac, want in [
        ((text_dropped & ~image_dropped).float().mean(), 0.2),
        ((~text_dropped & image_dropped).float().mean(), 0.2),
        ((text_dropped & image_dropped).float().mean(), 0.2),
        ((~text_dropped & ~image_dropped).float().mean(), 0.4),
    ]:
        assert abs(frac.item() - want) < 0.03
    gen = DiffusionDecoder(link_dim=LINK_DIM, cond_drop_prob=1.0, **tiny())
    c, s = gen.drop_conditions(torch.randn(4, *gen.null_cond.shape), None)
    assert s is None and torch.equal(c, gen.null_cond.expand_as(c))


# ---------------------------------------------------------------------------- sampling


@pytest.mark.parametrize("sampler", ["ddim", "dpm"])
def test_sampling_is_reproducible_with_a_seed(sampler):
    torch.manual_seed(0)
    dec = DiffusionDecoder(link_dim=LINK_DIM, **tiny()).eval()
    states = torch.randn(3, K, LINK_DIM)

    def run(seed):
        links = make_links(states, [0, 1, 1], "gen", seed=seed, sampler=sampler, num_inference_steps=4)
        return dec(links, None)

    a, b, c = run(3), run(3), run(4)
    assert len(a) == 2 and a[0].shape == (1, 3, 16, 16) and a[1].shape == (2, 3, 16, 16)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x, y)
        assert x.min() >= 0 and x.max() <= 1
    assert not torch.equal(a[1], c[1])
    # Link i draws from seed + i, so an image does not depend on what else is in the batch (up to
    # the batch-size-dependent rounding of the conv kernels).
    alone = dec(make_links(states[:1], [0], "gen", seed=3, sampler=sampler, num_inference_steps=4), None)
    torch.testing.assert_close(alone[0], a[0], atol=1e-4, rtol=0)
    # One seed per sample: the j-th link of sample s draws from seed[s] + j, whatever its place.
    per = dec(make_links(states, [0, 1, 1], "gen", seed=[7, 3], sampler=sampler, num_inference_steps=4), None)
    swapped = dec(
        make_links(states[[1, 2, 0]], [0, 0, 1], "gen", seed=[3, 7], sampler=sampler, num_inference_steps=4),
        None,
    )
    torch.testing.assert_close(per[1], swapped[0], atol=1e-4, rtol=0)
    torch.testing.assert_close(per[0], swapped[1], atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="one per sample"):
        dec(make_links(states, [0, 1, 1], "gen", seed=[7], num_inference_steps=4), None)


@pytest.mark.parametrize("link_tokens", [False, True])
def test_guidance_scale_one_is_the_conditional_prediction(link_tokens):
    torch.manual_seed(0)
    dec = DiffusionDecoder(link_dim=LINK_DIM, link_tokens=link_tokens, **tiny()).eval()
    with torch.no_grad():
        dec.null_cond.normal_()  # a null condition that differs from the real one
        if link_tokens:
            dec.null_link.normal_()
            null = torch.cat([dec.null_cond, dec.null_link.expand(K, -1)]).expand(2, -1, -1)
        else:
            null = dec.null_cond.expand(2, -1, -1)
        cond = dec.mapper(torch.randn(2, K, LINK_DIM))
        assert cond.shape == null.shape
        x = torch.randn(2, 3, 16, 16)
        t = torch.tensor(500)
        conditional = dec.unet(x, t, encoder_hidden_states=cond).sample
        assert torch.equal(dec.predict_noise(x, t, cond, guidance_scale=1.0), conditional)
        unconditional = dec.unet(x, t, encoder_hidden_states=null).sample
        guided = dec.predict_noise(x, t, cond, guidance_scale=3.0)
        torch.testing.assert_close(guided, unconditional + 3.0 * (conditional - unconditional))

        # The whole sampling loop at scale 1 is the conditional model's loop.
        for sampler in ("ddim", "dpm"):
            out = dec.generate(
                cond,
                sampler=sampler,
                guidance_scale=1.0,
                num_inference_steps=3,
                generator=torch.Generator().manual_seed(1),
            )
            scheduler = dec.make_scheduler(sampler, 3)
            z = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
            for step in scheduler.timesteps:
                z = scheduler.step(dec.unet(z, step, encoder_hidden_states=cond).sample, step, z).prev_sample
            assert torch.equal(out, dec.decode(z))
            guided = dec.generate(
                cond,
                sampler=sampler,
                guidance_scale=3.0,
                num_inference_steps=3,
                generator=torch.Generator().manual_seed(1),
            )
            assert not torch.equal(out, guided)


def test_link_tokens_carry_each_link_state():
    torch.manual_seed(0)
    plain = DiffusionDecoder(link_dim=LINK_DIM, **tiny()).eval()
    dec = DiffusionDecoder(link_dim=LINK_DIM, link_tokens=True, **tiny()).eval()
    dec.mapper.load_state_dict(plain.mapper.state_dict(), strict=False)  # the same queries' part
    C = dec.null_cond.shape[0]
    states = torch.randn(3, K, LINK_DIM)
    with torch.no_grad():
        cond = dec.mapper(states)
        assert cond.shape == (3, C + K, dec.null_cond.shape[1])
        assert torch.equal(cond[:, :C], plain.mapper(states))
        # One link state changed: its own token changes, the other links' tokens do not.
        changed = states.clone()
        changed[:, 1] = torch.randn(3, LINK_DIM)
        moved = (dec.mapper(changed)[:, C:] - cond[:, C:]).abs().amax(dim=(0, 2))
        assert moved[1] > 0.01 and torch.equal(moved[[0, 2, 3]], torch.zeros(3))
        # Dropped conditions become the null context: the null queries and one null link token.
        dec.null_cond.normal_()
        dec.null_link.normal_()
        dec.cond_drop_prob = 1.0
        dropped, _ = dec.drop_conditions(cond, None)
        assert torch.equal(dropped[:, :C], dec.null_cond.expand(3, -1, -1))
        assert torch.equal(dropped[:, C:], dec.null_link.expand(3, K, -1))


def test_edit_guidance_scales():
    torch.manual_seed(0)
    dec = DiffusionDecoder(link_dim=LINK_DIM, mode="edit", **tiny()).eval()
    with torch.no_grad():
        dec.null_cond.normal_()
        cond = dec.mapper(torch.randn(2, K, LINK_DIM))
        x, src = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
        t = torch.tensor(300)

        def unet(image, c):
            return dec.unet(torch.cat([x, image], 1), t, encoder_hidden_states=c).sample

        null = dec.null_cond.expand_as(cond)
        both, image_only, none = unet(src, cond), unet(src, null), unet(torch.zeros_like(src), null)
        one = dec.predict_noise(x, t, cond, src, guidance_scale=1.0, image_guidance_scale=1.0)
        assert torch.equal(one, both)
        guided = dec.predict_noise(x, t, cond, src, guidance_scale=5.0, image_guidance_scale=1.5)
        want = none + 1.5 * (image_only - none) + 5.0 * (both - image_only)
        torch.testing.assert_close(guided, want)


def test_postprocess_returns_images():
    dec = DiffusionDecoder(link_dim=LINK_DIM, mode="edit", **tiny())
    out = torch.rand(2, 3, 16, 16)
    items = dec.postprocess(out, names=["a", "b"], families=["edit", "edit"], image_size=(40, 30))
    assert all(isinstance(i, GeneratedImage) and i.family == "edit" for i in items)
    assert items[0].image.size == (40, 30)  # back at the source image's size
    gen = DiffusionDecoder(link_dim=LINK_DIM, **tiny())
    item = gen.postprocess(out[:1], names=["a"], families=["gen"], image_size=None)[0]
    assert item.image.size == (16, 16)
    np.testing.assert_allclose(np.asarray(item.image) / 255.0, out[0].permute(1, 2, 0).numpy(), atol=1 / 255)
    with pytest.raises(ValueError, match="links"):
        gen.postprocess(out, names=["a"], families=["gen"], image_size=None)


# ---------------------------------------------------------------------------- real-scale loading


def save_tiny_sd(root: Path, *, unet_in_channels: int = 4) -> None:
    """A Stable-Diffusion-layout folder with tiny random parts (UNet, VAE, scheduler)."""
    UNet2DConditionModel(
        sample_size=8,
        in_channels=unet_in_channels,
        out_channels=4,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    ).save_pretrained(root / "unet")
    AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 16),
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    ).save_pretrained(root / "vae")
    DDPMScheduler(
        beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, prediction_type="epsilon"
    ).save_pretrained(root / "scheduler")


def save_tiny_clip(root: Path, *, max_length: int, hidden: int) -> None:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase + string.digits:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length).save_pretrained(root / "tokenizer")
    config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=max_length,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )
    CLIPTextModel(config).save_pretrained(root / "text_encoder")


def test_loads_stable_diffusion_layout_for_generation(tmp_path):
    torch.manual_seed(0)
    save_tiny_sd(tmp_path)
    dec = DiffusionDecoder(link_dim=LINK_DIM, pretrained=str(tmp_path), cond_len=6)
    saved = UNet2DConditionModel.from_pretrained(tmp_path / "unet")
    for (name, p), q in zip(dec.unet.state_dict().items(), saved.state_dict().values(), strict=True):
        assert torch.equal(p, q), name
    # Latent space: 8 latent px x VAE downscale 2; objective from the scheduler config.
    assert dec.vae is not None and dec.image_size == 16 and dec.latent_size == 8
    assert dec.noise_scheduler.config.prediction_type == "epsilon"
    assert dec.mapper.out.out_features == 32  # the UNet's cross_attention_dim
    assert not any(p.requires_grad for p in dec.vae.parameters())

    links = make_links(torch.randn(2, K, LINK_DIM), [0, 1], "gen")
    targets = [LinkTarget(image=random_image(24, i)) for i in range(2)]
    total = 0.0
    for p in (0.0, 1.0):
        dec.cond_drop_prob = p
        total = total + dec(links, None, targets)["loss_gen"]
    total.backward()
    assert_grads_reach_all(dec)
    out = dec.eval()(
        make_links(links.states, [0, 1], "gen", seed=0, num_inference_steps=2, sampler="dpm"), None
    )
    assert out[0].shape == (1, 3, 16, 16) and torch.isfinite(out[0]).all()


def test_edit_from_text_to_image_unet_adds_zeroed_source_channels(tmp_path):
    torch.manual_seed(0)
    save_tiny_sd(tmp_path)
    edit = DiffusionDecoder(link_dim=LINK_DIM, mode="edit", pretrained=str(tmp_path), cond_len=6)
    gen = DiffusionDecoder(link_dim=LINK_DIM, pretrained=str(tmp_path), cond_len=6)
    assert edit.unet.config.in_channels == 8 and edit.pixel_size == 16
    assert not edit.unet.conv_in.weight[:, 4:].any()
    # With zero source weights the editing UNet starts as the text-to-image one (InstructPix2Pix).
    x, cond, t = torch.randn(1, 4, 8, 8), torch.randn(1, 6, 32), torch.tensor(10)
    with torch.no_grad():
        a = edit.unet(torch.cat([x, torch.randn_like(x)], 1), t, encoder_hidden_states=cond).sample
        b = gen.unet(x, t, encoder_hidden_states=cond).sample
    torch.testing.assert_close(a, b)
    # The source latent is the unscaled posterior mode, as InstructPix2Pix's pipeline feeds it.
    pixels = torch.rand(1, 3, 16, 16) * 2 - 1
    torch.testing.assert_close(edit.encode_source(pixels), edit.vae.encode(pixels).latent_dist.mode())
    # And the config round-trips: saving the adapted UNet and loading it for editing works as is.
    edit.unet.save_pretrained(tmp_path / "ip2p" / "unet")
    for sub in ("vae", "scheduler"):
        (tmp_path / "ip2p" / sub).symlink_to(tmp_path / sub)
    again = DiffusionDecoder(link_dim=LINK_DIM, mode="edit", pretrained=str(tmp_path / "ip2p"), cond_len=6)
    assert torch.equal(again.unet.conv_in.weight, edit.unet.conv_in.weight)
    with pytest.raises(ValueError, match="input channels"):
        DiffusionDecoder(link_dim=LINK_DIM, mode="generate", pretrained=str(tmp_path / "ip2p"), cond_len=6)

    links = make_links(torch.randn(1, K, LINK_DIM), [0], "edit", seed=0, num_inference_steps=2)
    out = edit.eval()(links, pixels, None)
    assert out[0].shape == (1, 3, 16, 16)


def test_clip_feature_alignment_loss(tmp_path):
    torch.manual_seed(0)
    save_tiny_sd(tmp_path)
    save_tiny_clip(tmp_path, max_length=6, hidden=32)
    dec = DiffusionDecoder(link_dim=LINK_DIM, pretrained=str(tmp_path), cond_len=6, align_weight=0.5)
    # The null condition starts as CLIP's features of the empty prompt, what SD was trained with.
    torch.testing.assert_close(dec.null_cond.data, dec.text_features([""])[0])
    assert not any(p.requires_grad for p in dec.text_encoder.parameters())
    links = make_links(torch.randn(2, K, LINK_DIM), [0, 1], "gen")
    links.names = ["a red square", "two blue circles"]
    dec.cond_drop_prob = 0.0
    losses = dec(links, None, [LinkTarget(image=random_image(16, i)) for i in range(2)])
    assert set(losses) == {"loss_gen", "loss_align_gen"}
    cond = dec.mapper(links.states)
    want = 0.5 * torch.nn.functional.mse_loss(cond, dec.text_features(links.names))
    torch.testing.assert_close(losses["loss_align_gen"], want)
    with pytest.raises(ValueError, match="model_max_length"):
        DiffusionDecoder(link_dim=LINK_DIM, pretrained=str(tmp_path), cond_len=5, align_weight=0.5)


# ---------------------------------------------------------------------------- overfitting


def overfit(
    dec: DiffusionDecoder,
    states: torch.Tensor,
    targets: list[Image.Image],
    pixels: torch.Tensor | None,
    *,
    steps: int,
    lr: float,
    repeat: int = 2,
) -> torch.Tensor:
    """Train ``dec`` alone on fixed (link states -> target image) pairs, then sample them.
    Returns the generated images (n, 3, H, W) in [0, 1]."""
    n = states.shape[0]
    opt = torch.optim.AdamW([p for p in dec.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    # Linear decay to zero: the last, small steps settle the weights instead of bouncing.
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 - i / steps)
    links = make_links(states.repeat(repeat, 1, 1), list(range(n)) * repeat, dec.family)
    link_targets = [LinkTarget(image=im) for im in targets] * repeat
    dec.train()
    for _ in range(steps):
        loss = dec(links, pixels, link_targets)[f"loss_{dec.family}"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    dec.eval()
    extras = {"seed": 0, "sampler": "dpm", "num_inference_steps": 20, "guidance_scale": 1.0}
    return torch.cat(dec(make_links(states, list(range(n)), dec.family, **extras), pixels)).cpu()


def as_tensor(images: list[Image.Image]) -> torch.Tensor:
    return torch.from_numpy(np.stack([np.asarray(im) for im in images])).permute(0, 3, 1, 2) / 255.0


COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
PLACES = [(1, 1), (9, 1), (5, 9)]
OVERFIT_STEPS, OVERFIT_LR = 500, 3e-3


def generation_overfit(
    *, steps: int = OVERFIT_STEPS, lr: float = OVERFIT_LR, seed: int = 0, device: str = "cpu"
):
    """Three prompts (fixed random link states) -> three coloured squares on black, 16 px."""
    torch.manual_seed(seed)
    targets = [square(c, *xy) for c, xy in zip(COLORS, PLACES, strict=True)]
    states = torch.randn(len(targets), K, LINK_DIM, device=device)
    dec = DiffusionDecoder(link_dim=LINK_DIM, **tiny()).to(device)
    want = as_tensor(targets)
    probe = make_links(states, [0, 1, 2], "gen", seed=0, num_inference_steps=20)
    untrained = torch.cat(dec.eval()(probe, None)).cpu()
    gen = overfit(dec, states, targets, None, steps=steps, lr=lr)
    err = (gen[:, None] - want[None]).abs().mean(dim=(2, 3, 4))  # (generated, target) mean abs error
    between = (want[:, None] - want[None]).abs().mean(dim=(2, 3, 4))
    return {
        "own": err.diagonal(),
        "nearest": err.argmin(dim=1),
        # Baselines: answering with another prompt's image, and an untrained decoder.
        "other": between[~torch.eye(3, dtype=torch.bool)].min(),
        "untrained": (untrained - want).abs().mean(),
    }


def edit_overfit(*, steps: int = OVERFIT_STEPS, lr: float = OVERFIT_LR, seed: int = 0, device: str = "cpu"):
    """One instruction, "give the square the next colour", on three source images: the square keeps
    its place and changes colour. With the same link states for every source, the decoder can only
    get the answer from the source image concatenated to its input."""
    torch.manual_seed(seed)
    sources = [square(c, *xy) for c, xy in zip(COLORS, PLACES, strict=True)]
    targets = [square(COLORS[(i + 1) % 3], *xy) for i, xy in enumerate(PLACES)]
    states = torch.randn(1, K, LINK_DIM, device=device).expand(len(targets), -1, -1)
    dec = DiffusionDecoder(link_dim=LINK_DIM, mode="edit", **tiny()).to(device)
    pixels = (as_tensor(sources) * 2 - 1).to(device)  # the model normalises with mean = std = 0.5
    gen = overfit(dec, states, targets, pixels, steps=steps, lr=lr)
    want, source = as_tensor(targets), as_tensor(sources)
    outside = torch.ones(3, 16, 16, dtype=torch.bool)
    for i, (x, y) in enumerate(PLACES):
        outside[i, y : y + 6, x : x + 6] = False
    return {
        "own": (gen - want).abs().mean(dim=(1, 2, 3)),
        "unchanged": (source - want).abs().mean(dim=(1, 2, 3)),  # baseline: return the source as is
        "outside": gen.amax(dim=1)[outside].mean(),  # brightness where the image should stay black
    }


@pytest.mark.slow
def test_tiny_generation_decoder_overfits_prompts():
    m = generation_overfit()
    # Each prompt's image is nearest its own target, and far closer to it than another prompt's
    # target is (0.094 here) or an untrained decoder's sample (~0.5). After 500 steps own errors
    # were 0.03-0.05 over seeds; after 300 steps 0.06, which fails.
    assert (m["nearest"] == torch.arange(3)).all(), m
    assert (m["own"] < 0.6 * m["other"]).all(), m
    assert m["own"].mean() < 0.2 * m["untrained"], m


@pytest.mark.slow
def test_tiny_edit_decoder_overfits_instructions():
    m = edit_overfit()
    assert (m["own"] < 0.5 * m["unchanged"]).all(), m
    # Outside the square the image stays black up to faint speckle (0.04-0.06 after 500 steps); a
    # square drawn in the wrong place would leave ~0.16 there.
    assert m["outside"] < 0.1, m
