"""FLIPNET: the add-on structure (BoostHub, LoRA, mode embedding, face tokens) on tiny random priors of
both backbones, the sampler wiring, adapters files, and the staged training on a few LFW faces."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from bfr.errors import InputError, WeightsUnavailableError
from bfr.methods.flipnet import FLIPNET, attach_adapters
from bfr.nets import UNetModel
from bfr.nets.face_embed import pooled, two_way_contrastive
from bfr.nets.flipnet import FlipNet
from bfr.training.common import export_weights

TINY_PRIOR = dict(image_size=16, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1,
                  attention_resolutions=(8,), channel_mult=(1, 2), num_head_channels=32, use_scale_shift_norm=True)
TINY_FLIP = dict(lora_rank=4, context_dim=32, embed=dict(image_size=16, grid=4, dim=32, base_channels=16))


def tiny_prior(seed=0):
    """Non-zero random weights everywhere (the UNet zero-initialises its output conv)."""
    torch.manual_seed(seed)
    net = UNetModel(**TINY_PRIOR)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return net


def randomize(module, seed=1, std=0.05):
    g = torch.Generator().manual_seed(seed)
    for p in module.parameters():
        if p.requires_grad:
            p.data = torch.randn(p.shape, generator=g) * std


def frozen_copy(prior):
    copy = UNetModel(**TINY_PRIOR)
    copy.load_state_dict(prior.state_dict())
    return copy.eval()


X = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(3)) * 2 - 1
COND = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4)) * 2 - 1
T = torch.tensor([20, 700])


def run(net, mode="restore", phi=1.0, cond=COND):
    with torch.no_grad():
        return net(X, T, net.condition(cond, cond, mode), phi=phi)


def test_fresh_flipnet_is_exactly_the_frozen_prior():
    prior = tiny_prior()
    reference = frozen_copy(prior)
    net = FlipNet(prior, TINY_FLIP)
    with torch.no_grad():
        expected = reference(X, T)
    for mode in ("restore", "degrade"):
        for phi in (0.0, 1.0, 2.0):
            torch.testing.assert_close(run(net, mode, phi), expected, rtol=0, atol=0)


def test_boosthub_is_a_true_add_on():
    prior = tiny_prior()
    reference = frozen_copy(prior)
    net = FlipNet(prior, TINY_FLIP)
    randomize(net.boost)  # only BoostHub trained: φ = 0 must give back the frozen prior exactly
    with torch.no_grad():
        torch.testing.assert_close(run(net, phi=0.0), reference(X, T), rtol=0, atol=0)
    assert (run(net, phi=1.0) - run(net, phi=0.0)).abs().max() > 1e-4

    randomize(net, seed=2)  # everything trained: φ = 0 equals the network with BoostHub's output removed
    at_zero = run(net, phi=0.0)
    for hub in net.boost:
        torch.nn.init.zeros_(hub.to_out.weight)
        torch.nn.init.zeros_(hub.to_out.bias)
    torch.testing.assert_close(run(net, phi=1.0), at_zero, rtol=0, atol=0)


def test_phi_scales_the_boosthub_branch_linearly():
    net = FlipNet(tiny_prior(), TINY_FLIP)
    randomize(net.boost, std=0.02)
    base, one, two = run(net, phi=0.0), run(net, phi=1.0), run(net, phi=2.0)
    assert (one - base).abs().max() > 1e-5
    # first order in φ: the effect of φ=2 is about twice that of φ=1 for a small branch
    ratio = (two - base).norm() / (one - base).norm()
    assert 1.7 < ratio < 2.3


def test_the_mode_switch_changes_the_output():
    net = FlipNet(tiny_prior(), TINY_FLIP)
    randomize(net.mode_embedding)
    assert (run(net, "restore") - run(net, "degrade")).abs().mean() > 1e-4
    with pytest.raises(ValueError, match="mode"):
        net.mode_ids("sideways", 1, torch.device("cpu"))


def test_the_condition_steers_the_output_through_boosthub():
    net = FlipNet(tiny_prior(), TINY_FLIP)
    randomize(net.boost, std=0.2)
    other = torch.flip(COND, dims=[-1])
    base = run(net, cond=COND, phi=0.0)
    mine, theirs = run(net, cond=COND) - base, run(net, cond=other) - base
    assert mine.norm() > 1e-3 and (mine - theirs).norm() > 0.05 * mine.norm()
    torch.testing.assert_close(run(net, cond=COND, phi=0.0), run(net, cond=other, phi=0.0), rtol=0, atol=0)


def test_the_condition_pass_stops_after_the_last_self_attention():
    net = FlipNet(tiny_prior(), TINY_FLIP)
    calls = []
    net.prior.out.register_forward_hook(lambda *_: calls.append(1))
    cond = net.condition(COND, COND, "restore")
    assert calls == [] and len(cond.features) == len(net.sites) == 4
    assert [f.shape[-1] for f in cond.features] == [64] * 4  # tokens of width 64 at 8×8 = 64 tokens
    net(X, T, cond)
    assert calls == [1]


def test_only_the_adapters_train_and_the_prior_stays_frozen():
    net = FlipNet(tiny_prior(), TINY_FLIP)
    names = {n for n, p in net.named_parameters() if p.requires_grad}
    assert names and all(("lora_" in n) if n.startswith("prior.") else not n.startswith("embedder.") for n in names)
    assert any(n.startswith("boost.") for n in names) and any(n.startswith("tau.") for n in names)
    assert "mode_embedding.weight" in names
    before = {n: p.detach().clone() for n, p in net.named_parameters()}
    opt = torch.optim.SGD(net.trainable_parameters(), lr=0.1)
    cond = net.condition(COND, COND, "restore")
    net(X, T, cond).pow(2).mean().backward()
    opt.step()
    changed = {n for n, p in net.named_parameters() if not torch.equal(p, before[n])}
    assert changed <= names
    assert any("lora_B" in n for n in changed)  # LoRA B starts at zero and receives gradient
    assert not any(n.startswith("prior.") and "lora_" not in n for n in changed)


def test_state_dict_leaves_out_the_frozen_prior():
    net = FlipNet(tiny_prior(), TINY_FLIP)
    keys = set(net.state_dict())
    assert not any(k.startswith("prior.") and "lora_" not in k for k in keys)
    assert any("lora_A" in k for k in keys)
    assert not any(k.startswith("embedder.decoders.") for k in net.adapter_state_dict())


def test_ema_copy_has_its_own_hooks():
    from bfr.training.ema import EMA

    net = FlipNet(tiny_prior(), TINY_FLIP)
    ema = EMA(net)
    randomize(net)
    assert (run(net) - run(ema.model)).abs().max() > 1e-4  # the copy still is the fresh (prior-equal) network
    # Given the same weights, the copy computes the same output: its hooks read its own context and
    # weights (hooks still bound to the original would see no context and drop BoostHub, face
    # attention and the mode embedding, leaving only the copy's LoRA).
    ema.model.load_state_dict(net.state_dict())
    for mode in ("restore", "degrade"):
        torch.testing.assert_close(run(ema.model, mode), run(net, mode))
    assert (run(ema.model, phi=0.0) - run(ema.model)).abs().max() > 1e-4  # BoostHub acts in the copy


def test_contrastive_loss_rewards_matched_pairs_both_ways():
    g = torch.Generator().manual_seed(0)
    a = pooled(torch.randn(8, 5, 16, generator=g))
    scale = torch.tensor(2.0)
    matched = two_way_contrastive(a, a, scale)
    shuffled = two_way_contrastive(a, a.roll(1, dims=0), scale)
    assert matched < shuffled
    b = pooled(torch.randn(8, 5, 16, generator=g))
    torch.testing.assert_close(two_way_contrastive(a, b, scale), two_way_contrastive(b, a, scale))


# ---------------------------------------------------------------------------- the method


def method(net=None):
    return FLIPNET(net or FlipNet(tiny_prior(), TINY_FLIP), resolution=16, framing="lfw", tier="compact",
                   device=torch.device("cpu"))


def test_keeps_the_ddim_eps_of_its_measurements(monkeypatch):
    """FLIPNET samples with guided-diffusion's DDIM step (ε from the clipped x̂0): with the network's own ε
    the compact adapters collapsed at η = 0 (see DDIM_EPS in bfr.methods.flipnet)."""
    import bfr.methods.flipnet as flipnet_module

    seen = []
    monkeypatch.setattr(flipnet_module, "sample", lambda *a, **kw: seen.append(kw["ddim_eps"]) or a[2])
    method().restore(torch.rand(1, 3, 16, 16), steps=2)
    assert seen == ["clipped"]


def test_restore_and_degrade_shapes_ranges_and_seeds():
    net = FlipNet(tiny_prior(), TINY_FLIP)
    randomize(net)
    m = method(net)
    lq = torch.rand(2, 3, 20, 24)
    out = m.restore(lq, steps=5, seed=1)
    assert out.shape == (2, 3, 20, 24) and 0 <= out.min() and out.max() <= 1
    torch.testing.assert_close(m.restore(lq, steps=5, seed=1), out)
    assert (m.restore(lq, steps=5, seed=2) - out).abs().mean() > 1e-3
    variants = m.degrade(lq[:1], variants=3, steps=5, seed=0)
    assert variants.shape == (1, 3, 3, 20, 24)
    assert (variants[0, 0] - variants[0, 1]).abs().mean() > 1e-3


def test_match_color_undoes_a_per_channel_affine_change():
    from bfr.methods.base import match_color

    g = torch.Generator().manual_seed(0)
    ref = 0.3 + 0.4 * torch.rand(2, 3, 12, 12, generator=g)
    gain, shift = torch.tensor([0.5, 1.5, 0.8]).view(1, 3, 1, 1), torch.tensor([0.1, -0.2, 0.05]).view(1, 3, 1, 1)
    torch.testing.assert_close(match_color(ref * gain + shift, ref), ref, atol=1e-4, rtol=0)  # eps 1e-5 in 1/std
    # any sizes: the statistics of a larger reference
    big = F.interpolate(ref, size=24, mode="nearest")
    out = match_color(torch.rand(2, 3, 8, 8, generator=g), big)
    torch.testing.assert_close(out.mean((2, 3)), big.mean((2, 3)), atol=1e-5, rtol=0)


def test_color_fix_gives_each_sample_its_condition_faces_channel_statistics():
    net = FlipNet(tiny_prior(), TINY_FLIP)
    randomize(net)
    m = method(net)
    g = torch.Generator().manual_seed(3)
    cond = 0.25 + 0.5 * torch.rand(2, 3, 16, 16, generator=g)  # away from 0 and 1: no clamping
    raw = m.restore(cond, steps=4, seed=0, color_fix=False)
    fixed = m.restore(cond, steps=4, seed=0)
    torch.testing.assert_close(fixed.mean((2, 3)), cond.mean((2, 3)), atol=2e-3, rtol=0)
    torch.testing.assert_close(fixed.std((2, 3)), cond.std((2, 3)), atol=2e-2, rtol=0)
    assert (raw.mean((2, 3)) - cond.mean((2, 3))).abs().max() > 0.02
    variants = m.degrade(cond, variants=2, steps=4, seed=0)  # (B, K, 3, H, W): variant k of face b → face b
    torch.testing.assert_close(variants.mean((3, 4)), cond.mean((2, 3))[:, None].expand(2, 2, 3), atol=2e-3, rtol=0)


def test_each_variant_of_a_batch_is_degraded_from_its_own_face():
    """Variant k of face b is conditioned on face b: with η 0 only the starting noise is random, so the first
    face of a batch gets exactly the variants it gets alone (a tiled condition would hand it face 2's)."""
    net = FlipNet(tiny_prior(), TINY_FLIP)
    randomize(net)
    m = method(net)
    faces = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    both = m.degrade(faces, variants=2, steps=4, eta=0.0, color_fix=False, seed=0)
    alone = m.degrade(faces[:1], variants=2, steps=4, eta=0.0, color_fix=False, seed=0)
    torch.testing.assert_close(both[:1], alone, atol=1e-5, rtol=0)
    assert (both[1] - alone[0]).abs().mean() > 1e-3


def test_degradation_mode_refuses_an_aligned_crop_it_would_squash():
    from bfr.api import Restorer

    restorer = Restorer(method())
    with pytest.raises(InputError, match="an aligned face crop is square.*pass aligned=False .command line: --photo. "
                                         "to degrade its largest face"):
        restorer.degrade(np.full((64, 80, 3), 0.5, np.float32), variants=1, steps=2)
    assert restorer.degrade(np.full((16, 16, 3), 0.5, np.float32), variants=1, steps=2)[0].shape == (16, 16, 3)


def test_a_gray_face_gets_gray_variants_as_restore_keeps_gray_photos_gray():
    from bfr.api import Restorer

    net = FlipNet(tiny_prior(), TINY_FLIP)
    randomize(net)
    restorer = Restorer(method(net))
    face = np.random.default_rng(0).uniform(0.2, 0.8, (16, 16, 3)).astype(np.float32)
    colour = restorer.degrade(face, variants=2, steps=3, seed=0)  # the random adapters tint a colour face
    assert max(np.abs(v - v.mean(2, keepdims=True)).max() for v in colour) > 0.01
    gray = restorer.degrade(np.repeat(face.mean(2, keepdims=True), 3, axis=2), variants=2, steps=3, seed=0)
    for v in gray:
        assert v.shape == (16, 16, 3) and np.abs(v - v[..., :1]).max() < 1e-6 and v.std() > 0.01


def test_progress_reports_every_step():
    seen = []
    method().restore(torch.rand(1, 3, 16, 16), steps=4, progress=lambda d, t: seen.append((d, t)))
    assert seen == [(1, 4), (2, 4), (3, 4), (4, 4)]


@pytest.mark.parametrize("kwargs", [dict(steps=0), dict(steps=1), dict(phi=-1.0), dict(eta=2.0)])
def test_rejects_bad_knobs(kwargs):
    with pytest.raises(InputError):
        method().restore(torch.rand(1, 3, 16, 16), **kwargs)


def test_rejects_bad_variants_and_inputs():
    with pytest.raises(InputError, match="variants"):
        method().degrade(torch.rand(1, 3, 16, 16), variants=0)
    with pytest.raises(InputError):
        method().restore(torch.rand(1, 1, 16, 16))


def save_adapters(net, path, prior_sha):
    tensors = {k: v.contiguous() for k, v in net.adapter_state_dict().items()}
    save_file(tensors, str(path), metadata={"kind": "flipnet", "config": json.dumps(net.config.to_dict()),
                                            "prior_sha256": json.dumps(prior_sha), "resolution": "16"})


def test_adapters_file_round_trip_and_prior_check(tmp_path):
    from bfr.api import load_net
    from bfr.weights.hub import sha256_of

    prior_path = export_weights(tiny_prior(), TINY_PRIOR, tmp_path / "prior.safetensors", kind="prior")
    net = FlipNet(load_net("prior64", prior_path), TINY_FLIP)
    randomize(net)
    save_adapters(net, tmp_path / "flip.safetensors", sha256_of(prior_path))
    loaded = attach_adapters(load_net("prior64", prior_path), tmp_path / "flip.safetensors", prior_path)
    torch.testing.assert_close(run(loaded), run(net))

    other = export_weights(tiny_prior(seed=9), TINY_PRIOR, tmp_path / "other.safetensors", kind="prior")
    with pytest.raises(WeightsUnavailableError, match="different prior"):
        attach_adapters(load_net("prior64", other), tmp_path / "flip.safetensors", other)
    with pytest.raises(WeightsUnavailableError, match="not a bfr FLIPNET"):
        attach_adapters(load_net("prior64", prior_path), prior_path, prior_path)


# ---------------------------------------------------------------------------- paper tier (diffusers)


TINY_SD_UNET = dict(sample_size=4, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(32, 64),
                    down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32, attention_head_dim=8,
                    norm_num_groups=8)
TINY_SD_VAE = dict(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                   up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(16, 32), layers_per_block=1,
                   latent_channels=4, norm_num_groups=8)
TINY_SD_FLIP = dict(backbone="sd", lora_rank=4, embed=dict(image_size=32, grid=4, dim=32, base_channels=16))


def tiny_sd():
    from diffusers import AutoencoderKL, UNet2DConditionModel

    torch.manual_seed(0)
    return UNet2DConditionModel(**TINY_SD_UNET), AutoencoderKL(**TINY_SD_VAE)


def test_paper_tier_code_path_runs_on_a_tiny_stable_diffusion_unet():
    unet, vae = tiny_sd()
    net = FlipNet(unet, TINY_SD_FLIP)
    # LoRA on the four projections of every self- and cross-attention
    lora = {n.split(".lora_A")[0] for n, _ in net.prior.named_parameters() if "lora_A" in n}
    assert len(lora) == 8 * len(net.sites) and all(("attn1" in n) or ("attn2" in n) for n in lora)
    randomize(net)
    m = FLIPNET(net, resolution=32, framing="ffhq", tier="paper", device=torch.device("cpu"), vae=vae,
                vae_scale=0.18215, schedule="scaled_linear", learn_sigma=False)
    out = m.restore(torch.rand(1, 3, 40, 40), steps=4, seed=0)
    assert out.shape == (1, 3, 40, 40) and torch.isfinite(out).all()
    variants = m.degrade(torch.rand(1, 3, 32, 32), variants=2, steps=4, seed=0)
    assert variants.shape == (1, 2, 3, 32, 32)
    torch.testing.assert_close(m.restore(torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(0)),
                                         steps=4, seed=0),
                               m.restore(torch.rand(1, 3, 40, 40, generator=torch.Generator().manual_seed(0)),
                                         steps=4, seed=0))


def test_boosthub_starts_with_the_sites_own_attention_projections():
    """Q, K, V of every BoostHub equal the prior's self-attention projections, head by head (both backbones)."""
    prior = tiny_prior()
    reference = frozen_copy(prior)
    net = FlipNet(prior, TINY_FLIP)
    sites = [m for m in reference.modules() if type(m).__name__ == "AttentionBlock"]
    assert len(sites) == len(net.boost) > 0
    for site, hub in zip(sites, net.boost, strict=True):
        c, heads = site.qkv.in_channels, site.num_heads
        z = torch.randn(2, c, 5)
        with torch.no_grad():  # the prior's own split of its 1×1 qkv conv (bias left out: BoostHub has none)
            qkv = (site.qkv(z) - site.qkv.bias.view(1, -1, 1)).reshape(2 * heads, 3 * (c // heads), 5)
            for part, linear in zip(qkv.split(c // heads, dim=1), (hub.to_q, hub.to_k, hub.to_v), strict=True):
                torch.testing.assert_close(linear(z.transpose(1, 2)).transpose(1, 2), part.reshape(2, c, 5))
        assert hub.heads == heads

    unet, _ = tiny_sd()
    sd = FlipNet(unet, dict(backbone="sd", lora_rank=4, embed=dict(image_size=32, grid=4, dim=32, base_channels=16)))
    for site, hub in zip(sd.sites, sd.boost, strict=True):
        assert hub.heads == site.heads
        for name in ("to_q", "to_k", "to_v"):
            torch.testing.assert_close(getattr(hub, name).weight, getattr(site, name).base_layer.weight)


def test_paper_tier_without_adapters_says_what_is_missing(monkeypatch, tmp_path):
    from bfr.methods.flipnet import paper_networks

    monkeypatch.setenv("BFR_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("BFR_CACHE", str(tmp_path / "cache"))
    with pytest.raises(WeightsUnavailableError, match="neither code nor weights"):
        paper_networks()


# ---------------------------------------------------------------------------- training


def test_restoration_training_lowers_the_loss_on_its_pairs():
    """A few adapter steps on four pairs lower their ε-MSE at fixed timesteps and noise (prior frozen)."""
    from bfr.diffusion import GaussianDiffusion
    from bfr.training.flipnet import FlipNetTrainConfig, diffusion_loss

    torch.manual_seed(0)
    net = FlipNet(tiny_prior(), TINY_FLIP)
    diffusion = GaussianDiffusion.create(1000, "linear", learn_sigma=True)
    hq = torch.rand(4, 3, 16, 16)
    lq = (hq + 0.2 * torch.randn_like(hq)).clamp(0, 1)
    noise = torch.randn(hq.shape, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([100, 300, 500, 800])

    def mse() -> float:
        with torch.no_grad():
            c = net.condition(lq * 2 - 1, lq * 2 - 1, "restore")
            return diffusion.training_losses(lambda x, tt: net(x, tt, c), hq * 2 - 1, t, noise)["mse"].mean().item()

    before = mse()
    opt = torch.optim.AdamW(net.trainable_parameters(), lr=1e-2)
    cfg = FlipNetTrainConfig(x0_weight=0.0, min_snr_gamma=0.0)
    for _ in range(120):
        loss, _ = diffusion_loss(net, diffusion, hq, lq, "restore", cfg)
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert mse() < 0.985 * before  # measured 0.97 × (a random prior leaves the adapters little to work with)



def test_held_out_loss_is_the_eps_mse_without_the_vlb_term():
    """The memorisation check scores ε only: fresh, it is the frozen prior's ε-MSE at the same t and noise."""
    from bfr.diffusion import GaussianDiffusion
    from bfr.training.flipnet import held_out_loss

    prior = tiny_prior()
    reference = frozen_copy(prior)
    net = FlipNet(prior, TINY_FLIP)
    diffusion = GaussianDiffusion.create(1000, "linear", learn_sigma=True)
    hq, lq = torch.rand(4, 3, 16, 16), torch.rand(4, 3, 16, 16)
    t = torch.linspace(0, 999, 4).round().long()
    noise = torch.randn(hq.shape, generator=torch.Generator().manual_seed(1234))
    with torch.no_grad():
        losses = diffusion.training_losses(reference, hq * 2 - 1, t, noise)
    got = held_out_loss(net, diffusion, hq, lq, "restore")
    assert got == pytest.approx(losses["mse"].mean().item(), rel=1e-5)
    assert abs(got - losses["loss"].mean().item()) > 1e-3  # the hybrid loss would have differed


@pytest.mark.slow
def test_a_refit_starts_from_other_adapters_around_a_new_prior(tmp_path):
    """--init-from: the adapters of one prior re-fitted around another, keeping their face embedding."""
    from safetensors.torch import load_file

    from bfr.training.flipnet import FlipNetTrainConfig, train_flipnet, write_flipnet_card
    from bfr.weights import read_metadata

    small = dict(flip=TINY_FLIP, resolution=16, batch_size=4, offline_faces=4, eval_every=2, eval_steps=2,
                 save_every=2, train_images=24, mixed_precision="no")
    old_prior = export_weights(tiny_prior(), TINY_PRIOR, tmp_path / "old.safetensors", kind="prior")
    new_prior = export_weights(tiny_prior(seed=3), TINY_PRIOR, tmp_path / "new.safetensors", kind="prior")
    first = train_flipnet(FlipNetTrainConfig(out_dir=str(tmp_path / "a"), prior=str(old_prior), embed_steps=2,
                                             degrade_steps=2, restore_steps=2, **small))
    given = tmp_path / "given.safetensors"
    given.write_bytes(first.read_bytes())
    cfg = FlipNetTrainConfig(out_dir=str(tmp_path / "b"), prior=str(new_prior), init_from=str(given),
                             degrade_steps=2, restore_steps=2, max_steps=2, **small)
    assert cfg.embed_steps == 0
    with pytest.raises(InputError, match="--embed-steps does not apply"):  # not silently dropped
        FlipNetTrainConfig(out_dir=str(tmp_path / "x"), init_from=str(given), embed_steps=5)
    train_flipnet(cfg)  # stops after the degradation stage
    given.unlink()  # a resume needs only the run folder
    cfg.max_steps = None
    refit = train_flipnet(cfg)
    log = [json.loads(line) for line in (tmp_path / "b" / "log.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in log] == ["degrade", "restore"]  # no embedding stage
    a, b = load_file(str(first)), load_file(str(refit))
    encoders = [k for k in a if k.startswith("embedder.")]
    assert encoders and all(torch.equal(a[k], b[k]) for k in encoders)  # the face embedding was kept
    assert any(not torch.equal(a[k], b[k]) for k in a if "lora_" in k or k.startswith("boost."))  # re-fitted
    assert json.loads(read_metadata(refit)["steps"]) == 4
    with pytest.raises(WeightsUnavailableError, match="different prior"):
        attach_adapters(UNetModel(**TINY_PRIOR), refit, old_prior)
    net = attach_adapters(tiny_prior(seed=3), refit, new_prior)
    assert method(net).restore(torch.rand(1, 3, 16, 16), steps=2).shape == (1, 3, 16, 16)
    with pytest.raises(InputError, match="did not start from other adapters"):  # a run is not turned into a re-fit
        train_flipnet(FlipNetTrainConfig(out_dir=str(tmp_path / "a"), prior=str(old_prior), init_from=str(refit),
                                         **small))
    text = write_flipnet_card(tmp_path / "b", n_test=4).read_text()
    assert "Kept from `given.safetensors` (this run had no embedding stage" in text
    assert f"--init-from given.safetensors --prior {new_prior}`" in text  # the reproduce line re-fits too
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "started_from.json").write_text((tmp_path / "b" / "started_from.json").read_text())
    fresh = train_flipnet(FlipNetTrainConfig(out_dir=str(tmp_path / "c"), prior=str(old_prior), embed_steps=1,
                                             degrade_steps=1, restore_steps=1, max_steps=1, **small))
    assert not (tmp_path / "c" / "started_from.json").exists()  # a stale record of another run is not kept
    assert "started_from" not in read_metadata(fresh)
    from bfr.weights.hub import sha256_of

    assert f"started from the adapters `given.safetensors` (sha256 {sha256_of(first)[:12]}…; 6 steps, trained " \
           f"around the prior {sha256_of(old_prior)[:12]}…)" in text


@pytest.mark.slow
def test_training_runs_every_stage_and_resumes(tmp_path):
    from bfr.training.flipnet import FlipNetTrainConfig, train_flipnet, write_flipnet_card
    from bfr.weights import read_metadata

    prior_path = export_weights(tiny_prior(), TINY_PRIOR, tmp_path / "prior.safetensors", kind="prior")
    cfg = FlipNetTrainConfig(out_dir=str(tmp_path / "run"), prior=str(prior_path), flip=TINY_FLIP, resolution=16,
                             batch_size=4, embed_steps=4, degrade_steps=4, restore_steps=4, offline_faces=4,
                             offline_variants=2, eval_every=4, eval_steps=2, save_every=4, train_images=24,
                             mixed_precision="no")
    path = train_flipnet(cfg)
    meta = read_metadata(path)
    assert json.loads(meta["steps"]) == 12 and json.loads(meta["finished"]) is True
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in log] == ["embed", "degrade", "restore"]
    assert "val_retrieval_top1" in log[0] and "val_psnr" in log[-1]
    offline = np.load(tmp_path / "run" / "offline_lq.npz")  # 4 faces × 2 variants, each pair with its own HQ
    assert offline["hq"].shape == offline["lq"].shape == (8, 3, 16, 16) and int(offline["variants"]) == 2
    assert (offline["hq"][0::2] == offline["hq"][1::2]).all() and len({f.tobytes() for f in offline["hq"]}) == 4
    assert (offline["lq"][0::2] != offline["lq"][1::2]).any()  # two different degradations of one face

    cfg.restore_steps = 6  # a longer plan resumes where the run stopped
    path = train_flipnet(cfg)
    assert json.loads(read_metadata(path)["steps"]) == 14
    card = write_flipnet_card(tmp_path / "run", dest=tmp_path / "bundle", n_test=4)
    text = card.read_text()
    assert "PSNR" in text and "steps: 14 of 14" in text and "without the colour fix" in text
    assert "from 4 train faces × 2 offline LQ variants" in text
    assert "in both modes: the degradation mode's variants keep the clean face's global colour" in text
    assert "HQ and LQ autoencoders on faces resized to 16 px" in text and "no adversarial term" in text
    assert "this prior's attention layers are 64 wide)" in text  # read from the tiny prior, not written in
    log_rows = [line for line in text.splitlines() if line.startswith(("| degrade |", "| restore |"))]
    assert log_rows and len(log_rows) == len(set(log_rows))  # the last logged step shown once
    metrics = json.loads((tmp_path / "run" / "test_metrics.json").read_text())
    assert {"psnr", "psnr_no_color_fix", "ssim_no_color_fix", "psnr_input"} <= set(metrics)
    assert (tmp_path / "bundle" / "flipnet64.safetensors").is_file()
    # the exported adapters load around the same prior and restore
    net = attach_adapters(UNetModel(**TINY_PRIOR), tmp_path / "bundle" / "flipnet64.safetensors")
    assert method(net).restore(torch.rand(1, 3, 16, 16), steps=2).shape == (1, 3, 16, 16)


@pytest.mark.slow
def test_paper_tier_training_runs_every_stage_in_latents(tmp_path):
    """`train flipnet --tier paper` on a tiny Stable Diffusion: SD latents (scaled-linear, ε), clean faces from a
    folder with the first files held out, adapters tied to the UNet file, a card, and the adapters restore."""
    from bfr.imageio import save_image
    from bfr.training.flipnet import FlipNetTrainConfig, train_flipnet, write_flipnet_card
    from bfr.weights import read_metadata

    unet, vae = tiny_sd()
    save_file(unet.state_dict(), str(tmp_path / "unet.safetensors"))
    save_file(vae.state_dict(), str(tmp_path / "vae.safetensors"))
    clean = tmp_path / "ffhq"
    g = torch.Generator().manual_seed(0)
    for i in range(10):
        face = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=48, mode="bicubic")
        save_image(face.clamp(0, 1), clean / f"{i:05d}.png")  # read and resized to 32 px
    run = tmp_path / "run"
    cfg = FlipNetTrainConfig(out_dir=str(run), tier="paper", unet=str(tmp_path / "unet.safetensors"),
                             vae=str(tmp_path / "vae.safetensors"), clean_dir=str(clean), val_faces=4,
                             paper_unet=TINY_SD_UNET, paper_vae=TINY_SD_VAE, resolution=32,
                             flip={**TINY_SD_FLIP, "embed": dict(image_size=16, grid=4, dim=32, base_channels=16)},
                             batch_size=2, embed_steps=2, degrade_steps=2, restore_steps=2, offline_faces=2,
                             eval_every=2, eval_steps=2, save_every=2, mixed_precision="no")
    path = train_flipnet(cfg)
    assert path.name == "flipnet_sd21.safetensors"
    meta = read_metadata(path)
    assert json.loads(meta["tier"]) == "paper" and json.loads(meta["resolution"]) == 32
    assert json.loads(meta["steps"]) == 6 and json.loads(meta["finished"]) is True
    assert "none in latents" in json.loads(meta["losses"])
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in log] == ["embed", "degrade", "restore"] and "val_psnr" in log[-1]
    offline = np.load(run / "offline_lq.npz")
    assert offline["hq"].shape == offline["lq"].shape == (2, 3, 32, 32)
    config = json.loads((run / "config.json").read_text())
    assert config["flip"]["backbone"] == "sd" and config["tier"] == "paper"

    card = write_flipnet_card(run, dest=tmp_path / "bundle", n_test=4)
    text = card.read_text()
    assert text.startswith("# FLIPNET, paper tier (flipnet_sd21)") and "4 seeded" in text and "held-out" in text
    assert f"--tier paper --clean-dir {clean}" in text  # the reproduce line works as printed
    assert (tmp_path / "bundle" / "flipnet_sd21.safetensors").is_file()

    from diffusers import UNet2DConditionModel

    fresh = UNet2DConditionModel(**TINY_SD_UNET)
    fresh.load_state_dict(unet.state_dict())
    net = attach_adapters(fresh, path, tmp_path / "unet.safetensors")
    assert any(h.to_out.weight.abs().sum() > 0 for h in net.boost)  # BoostHub learned (W_O started at zero)
    m = FLIPNET(net, resolution=32, framing="ffhq", tier="paper", device=torch.device("cpu"), vae=vae,
                vae_scale=0.18215, schedule="scaled_linear", learn_sigma=False)
    assert m.restore(torch.rand(1, 3, 32, 32), steps=2).shape == (1, 3, 32, 32)
    with pytest.raises(WeightsUnavailableError, match="paper tier"):  # SD adapters on the compact prior
        attach_adapters(UNetModel(**TINY_PRIOR), path)

    cfg.restore_steps = 3  # a longer plan resumes where the run stopped
    assert json.loads(read_metadata(train_flipnet(cfg))["steps"]) == 7
    with pytest.raises(InputError, match="paper-tier FLIPNET run"):  # the run folder keeps its tier
        train_flipnet(FlipNetTrainConfig(out_dir=str(run), mixed_precision="no"))
    with pytest.raises(InputError, match="clean_dir"):
        FlipNetTrainConfig(tier="paper")
    assert FlipNetTrainConfig(tier="paper", clean_dir=str(clean)).out_dir == "runs/flipnet_sd21"
    gone = tmp_path / "no_such_run"
    with pytest.raises(InputError, match="is not a folder of images"):  # said first, and no run folder is left
        train_flipnet(FlipNetTrainConfig(tier="paper", clean_dir=str(tmp_path / "nowhere"), out_dir=str(gone)))
    assert not gone.exists()


def test_a_resumed_run_keeps_its_recorded_settings(tmp_path):
    from dataclasses import asdict

    from bfr.training.flipnet import run_config

    run = tmp_path / "run"
    cfg, changed = run_config(str(run), {"lr": 1e-3, "offline_faces": 256, "restore_steps": 2700, "card_faces": 4})
    assert changed is None and cfg.lr == 1e-3 and cfg.out_dir == str(run)
    run.mkdir()
    (run / "config.json").write_text(json.dumps(asdict(cfg)))
    assert run_config(str(run), {})[0].lr == 1e-4  # no state yet: a new run, the defaults
    (run / "state.safetensors").write_bytes(b"")  # a state to resume (its contents are not read here)
    again, changed = run_config(str(run), {"restore_steps": 3200, "batch_size": 16}, max_minutes=5)
    assert (again.lr, again.offline_faces, again.restore_steps, again.max_minutes) == (1e-3, 256, 3200, 5)
    assert again.card_faces == 4  # a quick run's resume measures its card as quickly
    assert changed == ["restore_steps 2700 → 3200"]  # the batch size was the run's own
    with pytest.raises(InputError, match="compact-tier FLIPNET run"):
        run_config(str(run), {"tier": "paper", "clean_dir": str(tmp_path)})


def test_cli_train_rejects_tier_mixups(tmp_path, capsys):
    from bfr.cli import main

    assert main(["train", "prior", "--tier", "paper", "-o", str(tmp_path / "p")]) == 2
    assert "--tier paper is for `train flipnet`" in capsys.readouterr().err
    assert main(["train", "flipnet", "--tier", "paper", "-o", str(tmp_path / "f")]) == 2
    assert "clean" in capsys.readouterr().err
    assert main(["train", "flipnet", "--tier", "paper", "--prior", "x", "--clean-dir", str(tmp_path)]) == 2
    assert "--unet" in capsys.readouterr().err
    assert main(["train", "flipnet", "--clean-dir", str(tmp_path), "-o", str(tmp_path / "c")]) == 2
    assert "--tier paper" in capsys.readouterr().err


# ---------------------------------------------------------------------------- API and command line


def test_cli_degrade_and_restore_with_flipnet_weights(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from bfr.api import load_net
    from bfr.cli import main
    from bfr.weights.hub import sha256_of

    prior_path = export_weights(tiny_prior(), TINY_PRIOR, tmp_path / "prior.safetensors", kind="prior")
    net = FlipNet(load_net("prior64", prior_path), TINY_FLIP)
    randomize(net)
    save_adapters(net, tmp_path / "flip.safetensors", sha256_of(prior_path))
    face = tmp_path / "face.png"
    pixels = 64 + np.random.default_rng(0).random((24, 24, 3)) * 128  # mid-range: the colour fix never clamps
    Image.fromarray(pixels.astype(np.uint8)).save(face)
    weights = ["--weights", f"prior64={prior_path}", "--weights", f"flipnet64={tmp_path / 'flip.safetensors'}"]

    assert main(["degrade", str(face), "-o", str(tmp_path / "deg"), "--method", "flipnet", "--variants", "2",
                 *weights]) == 0
    variants = [np.asarray(Image.open(p), dtype=np.float32) for p in sorted((tmp_path / "deg").glob("*.png"))]
    assert len(variants) == 2 and variants[0].shape == (24, 24, 3)
    assert np.abs(variants[0] - variants[1]).mean() > 0.5  # different noise, different degradations
    assert "`restore --aligned --framing lfw` takes it" in capsys.readouterr().out
    variant = sorted((tmp_path / "deg").glob("*.png"))[0]
    assert main(["restore", str(variant), "-o", str(tmp_path / "back"), "--method", "flipnet", "--aligned",
                 "--framing", "lfw", "--steps", "3", *weights]) == 0
    assert "one LFW-aligned face" in capsys.readouterr().out

    assert main(["restore", str(face), "-o", str(tmp_path / "out"), "--method", "flipnet", "--aligned",
                 "--steps", "3", "--phi", "0.5", "--save-faces", *weights]) == 0
    assert (tmp_path / "out" / "face_flipnet.png").is_file()
    assert main(["restore", str(face), "-o", str(tmp_path / "raw"), "--method", "flipnet", "--aligned",
                 "--steps", "3", "--phi", "0.5", "--no-color-fix", "--save-faces", *weights]) == 0

    def crop(run, which):
        return np.asarray(Image.open(tmp_path / run / "faces" / f"face_flipnet_00_{which}.png"), dtype=np.float32)

    # the colour fix gives the restored crop its input crop's channel means; without it they drift
    src = crop("out", "input")
    assert np.abs(crop("out", "restored").mean((0, 1)) - src.mean((0, 1))).max() < 1.0
    assert np.abs(crop("raw", "restored").mean((0, 1)) - src.mean((0, 1))).max() > 1.0
    assert main(["restore", str(face), "-o", str(tmp_path / "x"), "--method", "difface", "--phi", "1"]) == 2
    assert "--phi does not apply" in capsys.readouterr().err
    assert main(["restore", str(face), "-o", str(tmp_path / "x"), "--method", "difface", "--no-color-fix"]) == 2
    assert "--no-color-fix does not apply" in capsys.readouterr().err


def test_methods_reports_flipnet_paper_tier_as_needing_adapters(monkeypatch, tmp_path):
    from bfr.api import method_status

    monkeypatch.setenv("BFR_WEIGHTS_DIR", str(tmp_path))
    ok, why = method_status("flipnet", "paper")
    assert not ok and "flipnet_sd21" in why


@pytest.mark.slow
def test_cli_train_flipnet_stops_after_the_embedding_stage_without_a_card(tmp_path, capsys):
    from bfr.cli import main
    from bfr.paths import data_dir
    from bfr.training.flipnet import saved_progress

    if not (data_dir() / "lfw150").is_dir():
        pytest.skip("../shared/data (LFW) is not here")
    out = tmp_path / "run"
    assert main(["train", "flipnet", "-o", str(out), "--steps", "2", "--embed-steps", "2", "--batch-size", "4",
                 "--precision", "no"]) == 0  # one AcceleratorState per process: as the other tests
    assert "stopped in the embedding stage" in capsys.readouterr().out
    state = saved_progress(out)
    assert state["stage"] == "degrade" and state["step"] == 2  # the next call resumes with the adapters
    assert not (out / "flipnet64.md").exists()
    # resuming with fewer flags keeps the run's own settings; a flag given says what it changes
    assert main(["train", "flipnet", "-o", str(out), "--steps", "2", "--lr", "5e-4"]) == 0
    assert "with the settings it recorded; changed here: lr 0.0001 → 0.0005" in capsys.readouterr().out
    config = json.loads((out / "config.json").read_text())
    assert (config["embed_steps"], config["batch_size"], config["mixed_precision"], config["lr"]) == (2, 4, "no", 5e-4)
