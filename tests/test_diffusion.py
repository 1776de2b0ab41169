"""The diffusion core: schedules, respacing, q_sample/posterior identities and exact samplers."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bfr.diffusion import GaussianDiffusion, get_named_beta_schedule, noise_like, sample, space_timesteps
from bfr.errors import InputError


def test_linear_schedule_matches_ddpm():
    betas = get_named_beta_schedule("linear", 1000)
    assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
    assert np.all(np.diff(betas) > 0)


def test_cosine_schedule_is_bounded_and_monotone_alpha_bar():
    d = GaussianDiffusion(get_named_beta_schedule("cosine", 1000))
    assert d.betas.max() <= 0.999
    assert np.all(np.diff(d.alphas_cumprod) < 0)


def test_ddim_striding_matches_difface():
    steps = space_timesteps(1000, "ddim250")
    assert steps[:4] == [0, 4, 8, 12] and steps[-1] == 996 and len(steps) == 250
    d = GaussianDiffusion.create(1000, respacing="ddim250")
    assert d.num_timesteps == 250
    assert d.original_timestep(torch.tensor([100])).item() == 400  # DifFace's default started step


def test_section_respacing_250_maps_back_like_improved_ddpm():
    steps = space_timesteps(1000, "250")
    assert len(steps) == 250 and steps[0] == 0 and steps[-1] == 999
    # Kuai et al.: re-spaced index k <-> original round(k * 999 / 249)
    for k in (0, 90, 149, 150, 249):
        assert steps[k] == round(k * 999 / 249)
    assert space_timesteps(1000, "10,15") == sorted(set(space_timesteps(1000, "10,15")))
    with pytest.raises(ValueError):
        space_timesteps(1000, "ddim999")


def test_respaced_chain_keeps_alpha_bar():
    base = GaussianDiffusion.create(1000)
    sub = base.respace([0, 10, 500, 999])
    np.testing.assert_allclose(sub.alphas_cumprod, base.alphas_cumprod[[0, 10, 500, 999]], rtol=1e-12)


def test_matched_index_keeps_the_face_level_snr_across_resolutions():
    d = GaussianDiffusion.create(1000, "linear", respacing="250")
    assert all(d.matched_index(i, 512) == i for i in range(d.num_timesteps))  # same size: same index
    # the authors' 512-px indices at 64 px: Kuai's start 150 / low-pass floor 90, DifFace's N = 100
    assert (d.matched_index(150, 64), d.matched_index(90, 64), d.matched_index(100, 64)) == (53, 15, 19)
    matched = [d.matched_index(i, 64) for i in range(d.num_timesteps)]
    assert matched == sorted(matched) and matched[-1] < d.num_timesteps - 1
    assert d.matched_index(150, 128) > d.matched_index(150, 64)  # the smaller the face, the less noise
    # what "as much damage" means, measured: 512-px noise seen at 64 px (8×8 means) has 1/64 of its variance,
    # so 512-px index 150 leaves the 64-px picture the SNR that index 53 gives a 64-px image
    noise = torch.randn(1, 1, 512, 512, generator=torch.Generator().manual_seed(0))
    pooled_var = F.avg_pool2d(noise, 8).var().item()
    assert pooled_var == pytest.approx(1 / 64, rel=0.05)
    ab = d.alphas_cumprod
    seen_at_64 = ab[150] / ((1 - ab[150]) * pooled_var)
    snr = ab / (1 - ab)
    assert snr[53] / seen_at_64 == pytest.approx(1, rel=0.1)
    assert abs(np.log(snr[53] / seen_at_64)) < min(abs(np.log(snr[52] / seen_at_64)), abs(np.log(snr[54] / seen_at_64)))
    with pytest.raises(ValueError):
        d.matched_index(250, 64)
    ddim = GaussianDiffusion.create(1000, "linear", respacing="ddim250")  # DifFace's chain: paper N = 100 ≈ 19 at 64 px
    assert ddim.matched_index(100, 64) == 19 and ddim.matched_index(71, 64) == 10


def test_q_sample_statistics():
    d = GaussianDiffusion.create(1000)
    x0 = torch.full((4000, 1, 1, 1), 0.5)
    xt = d.q_sample(x0, 400, generator=torch.Generator().manual_seed(0))
    ab = d.alphas_cumprod[400]
    assert xt.mean().item() == pytest.approx(np.sqrt(ab) * 0.5, abs=0.03)
    assert xt.std().item() == pytest.approx(np.sqrt(1 - ab), abs=0.03)


def test_posterior_mean_is_consistent():
    # q(x_{t-1}|x_t,x_0) mean must equal x_0 when x_t = sqrt(ab) x_0 noise-free at t=0 limit.
    d = GaussianDiffusion.create(1000)
    x0 = torch.randn(2, 3, 4, 4)
    t = torch.zeros(2, dtype=torch.long)
    xt = d.q_sample(x0, t, noise=torch.zeros_like(x0))
    mean, var, _ = d.q_posterior_mean_variance(x0, xt, t)
    torch.testing.assert_close(mean, x0, atol=1e-5, rtol=0)
    assert var.abs().max() < 1e-12


@pytest.mark.parametrize("respacing", [None, "ddim250", "25"])
def test_posterior_is_bayes_rule_at_every_level(respacing):
    """q(x_{t-1} | x_t, x0) written out as the product of the one-step forward Gaussian and the marginal at t-1
    (with the chain's own α_t = ᾱ_t / ᾱ_{t-1} on a re-spaced chain): the ancestral sampler, Kuai's
    pseudo-targets and the prior's variance loss all stand on it."""
    d = GaussianDiffusion.create(1000, respacing=respacing)
    g = torch.Generator().manual_seed(0)
    x0, xt = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    for i in (1, d.num_timesteps // 3, d.num_timesteps - 1):
        ab, ab_prev = d.alphas_cumprod[i], d.alphas_cumprod[i - 1]
        a = ab / ab_prev
        precision = a / (1 - a) + 1 / (1 - ab_prev)
        var = 1 / precision
        mean = var * (np.sqrt(a) / (1 - a) * xt + np.sqrt(ab_prev) / (1 - ab_prev) * x0)
        got_mean, got_var, _ = d.q_posterior_mean_variance(x0, xt, torch.full((2,), i))
        torch.testing.assert_close(got_mean, mean.float(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got_var, torch.full_like(got_var, var), atol=0, rtol=1e-5)


class Oracle(torch.nn.Module):
    """An ε-model that knows x0: returns the exact noise for whatever level it is asked about."""

    def __init__(self, diffusion, x0, learn_sigma=True):
        super().__init__()
        self.d, self.x0, self.learn_sigma = diffusion, x0, learn_sigma
        self.calls = []

    def forward(self, x, t_orig):
        idx = torch.as_tensor([int(np.where(self.d.timestep_map == int(t))[0][0]) for t in t_orig])
        self.calls.append(int(t_orig[0]))
        ab = torch.from_numpy(self.d.alphas_cumprod)[idx].float().view(-1, 1, 1, 1)
        eps = (x - ab.sqrt() * self.x0) / (1 - ab).sqrt()
        if self.d.prediction == "v":
            eps = ab.sqrt() * eps - (1 - ab).sqrt() * self.x0
        return torch.cat([eps, torch.zeros_like(eps)], 1) if self.learn_sigma else eps


@pytest.mark.parametrize("sampler,eta", [("ddim", 0.0), ("ddim", 0.5), ("ddim", 1.0), ("ancestral", 0.0)])
@pytest.mark.parametrize("start", [None, 100])
@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_oracle_recovers_x0(sampler, eta, start, prediction):
    d = GaussianDiffusion.create(1000, respacing="ddim250", prediction=prediction)
    assert d.prediction == prediction  # kept through the respacing
    x0 = torch.rand(2, 3, 8, 8) * 1.8 - 0.9
    g = torch.Generator().manual_seed(0)
    x = noise_like(x0.shape, g) if start is None else d.q_sample(x0, start, generator=g)
    model = Oracle(d, x0)
    out = sample(d, model, x, start=start, sampler=sampler, eta=eta, generator=g)
    torch.testing.assert_close(out, x0, atol=2e-5, rtol=0)
    n = 250 if start is None else start
    assert len(model.calls) == n


def test_difface_off_by_one_convention():
    """Noised at re-spaced index N, the first network call is at index N-1 (original 4(N-1))."""
    d = GaussianDiffusion.create(1000, respacing="ddim250")
    x0 = torch.zeros(1, 3, 4, 4)
    model = Oracle(d, x0)
    sample(d, model, d.q_sample(x0, 100), start=100)
    assert model.calls[0] == 396 and model.calls[-1] == 0


def test_hook_runs_after_each_step_and_can_edit():
    d = GaussianDiffusion.create(1000, respacing=20)
    x0 = torch.zeros(1, 3, 4, 4)
    seen = []

    def hook(x, i, out):
        seen.append(i)
        return x

    sample(d, Oracle(d, x0), noise_like((1, 3, 4, 4)), hook=hook, sampler="ancestral")
    assert seen == list(range(19, -1, -1))


def test_seeded_sampling_is_reproducible_and_seed_dependent():
    d = GaussianDiffusion.create(1000, respacing=10)
    model = lambda x, t: torch.cat([0.1 * x, torch.zeros_like(x)], 1)  # noqa: E731
    runs = [sample(d, model, noise_like((1, 3, 4, 4), torch.Generator().manual_seed(s)), eta=1.0,
                   generator=torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    torch.testing.assert_close(runs[0], runs[1])
    assert not torch.allclose(runs[0], runs[2])


@pytest.mark.parametrize("clip", [False, True])
def test_ddim_step_matches_diffusers_scheduler(clip):
    """Our DDIM update gives the same numbers as diffusers' DDIMScheduler on the same grid; with
    x̂0 clipped, both keep the network's own ε (as DifFace's current code does)."""
    from diffusers import DDIMScheduler

    d = GaussianDiffusion.create(1000, respacing="ddim50")
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", beta_start=1e-4, beta_end=0.02,
                          clip_sample=clip, set_alpha_to_one=True, steps_offset=0, timestep_spacing="leading")
    sched.set_timesteps(50)
    assert list(sched.timesteps.numpy()[::-1]) == list(d.timestep_map)
    x = 3 * torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))  # x̂0 leaves [-1, 1]
    eps = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    nl = GaussianDiffusion(d.betas, d.timestep_map, learn_sigma=False)
    for i in (49, 20, 1):
        t = torch.tensor([i])
        out = nl.p_mean_variance(lambda *_: eps, x, t, clip_denoised=clip)
        assert clip == bool((out["pred_xstart"].abs() == 1).any())
        ours = nl.ddim_step(out, x, t, eta=0.0, noise=torch.zeros_like(x))
        theirs = sched.step(eps, int(d.timestep_map[i]), x, eta=0.0).prev_sample
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)


def test_ddim_step_can_take_eps_from_the_clipped_x0():
    """guided-diffusion's step (IDM's and FLIPNET's choice): ε re-derived from the clipped x̂0, so the
    update is consistent with x̂0; it differs from the network's own ε only where x̂0 was clipped."""
    d = GaussianDiffusion(GaussianDiffusion.create(1000, respacing="ddim50").betas, list(range(0, 1000, 20)),
                          learn_sigma=False)
    x = 3 * torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    eps = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([30])
    out = d.p_mean_variance(lambda *_: eps, x, t, clip_denoised=True)
    ab, ab_prev = float(d.alphas_cumprod[30]), float(d.alphas_cumprod_prev[30])
    rederived = (x - ab ** 0.5 * out["pred_xstart"]) / (1 - ab) ** 0.5
    expected = ab_prev ** 0.5 * out["pred_xstart"] + (1 - ab_prev) ** 0.5 * rederived
    zero = torch.zeros_like(x)
    torch.testing.assert_close(d.ddim_step(out, x, t, 0.0, zero, eps="clipped"), expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(d.ddim_step(out, x, t, 0.0, zero), expected, atol=1e-3)
    unclipped = d.p_mean_variance(lambda *_: eps, x, t, clip_denoised=False)
    torch.testing.assert_close(d.ddim_step(unclipped, x, t, 0.0, zero, eps="clipped"),
                               d.ddim_step(unclipped, x, t, 0.0, zero), atol=1e-5, rtol=1e-5)
    with pytest.raises(InputError, match="ddim_eps"):
        sample(d, lambda *_: eps, x, ddim_eps="raw")


def test_learned_range_variance_interpolates_between_bounds():
    d = GaussianDiffusion.create(1000, respacing="250")
    x = torch.zeros(1, 3, 2, 2)
    t = torch.tensor([100])
    lo = d.p_mean_variance(lambda *_: torch.cat([x, -torch.ones_like(x)], 1), x, t)["log_variance"]
    hi = d.p_mean_variance(lambda *_: torch.cat([x, torch.ones_like(x)], 1), x, t)["log_variance"]
    assert lo.flatten()[0].item() == pytest.approx(d.posterior_log_variance_clipped[100], rel=1e-5)
    assert hi.flatten()[0].item() == pytest.approx(np.log(d.betas[100]), rel=1e-5)


def test_training_losses_hybrid_and_min_snr():
    d = GaussianDiffusion.create(1000)
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1
    t = torch.tensor([0, 10, 500, 999])
    model = lambda x, tt: torch.zeros(x.shape[0], 6, *x.shape[2:])  # noqa: E731
    losses = d.training_losses(model, x0, t, noise=torch.ones_like(x0))
    assert set(losses) == {"mse", "vb", "loss", "pred_xstart"}
    torch.testing.assert_close(losses["mse"], torch.ones(4))
    torch.testing.assert_close(losses["loss"], losses["mse"] + losses["vb"])
    # ε predicted as 0, so x̂0 = x_t / sqrt(ᾱ) = x0 + sqrt((1 − ᾱ) / ᾱ)·ε
    ab = torch.from_numpy(d.alphas_cumprod[t.numpy()]).float().view(-1, 1, 1, 1)
    torch.testing.assert_close(losses["pred_xstart"], x0 + ((1 - ab) / ab).sqrt(), rtol=1e-4, atol=1e-4)
    weighted = d.training_losses(model, x0, t, noise=torch.ones_like(x0), min_snr_gamma=5.0)["mse"]
    snr = d.alphas_cumprod[t.numpy()] / (1 - d.alphas_cumprod[t.numpy()])
    np.testing.assert_allclose(weighted.numpy(), np.minimum(snr, 5.0) / snr, rtol=1e-5)
    np.testing.assert_allclose(d.snr(t).numpy(), snr, rtol=1e-5)
    spaced = GaussianDiffusion.create(1000, respacing="ddim10")  # index 9 of 10 is timestep 900
    np.testing.assert_allclose(spaced.snr(torch.tensor([9])).numpy(), d.snr(torch.tensor([900])).numpy(), rtol=1e-5)


def test_v_and_eps_parameterisations_agree():
    d = GaussianDiffusion.create(1000, prediction="v")
    g = torch.Generator().manual_seed(0)
    x0, noise = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1, torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([0, 10, 500, 999])
    x_t = d.q_sample(x0, t, noise)
    eps, x0_hat = d.eps_and_xstart(x_t, t, d.v_target(x0, t, noise))
    torch.testing.assert_close(eps, noise, atol=1e-4, rtol=0)
    torch.testing.assert_close(x0_hat, x0, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="prediction"):
        GaussianDiffusion.create(1000, prediction="x0")


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_min_snr_weights_both_parameterisations_to_the_same_x0_loss(prediction):
    """min-SNR-γ: weighted ε- or v-MSE = min(SNR, γ) · x0-MSE, whatever the network outputs."""
    d = GaussianDiffusion.create(1000, learn_sigma=False, prediction=prediction)
    g = torch.Generator().manual_seed(1)
    x0, noise = torch.rand(4, 3, 8, 8, generator=g) * 2 - 1, torch.randn(4, 3, 8, 8, generator=g)
    out = torch.randn(4, 3, 8, 8, generator=g)
    t = torch.tensor([3, 100, 500, 990])
    losses = d.training_losses(lambda x, tt: out, x0, t, noise=noise, min_snr_gamma=5.0)
    snr = torch.from_numpy(d.alphas_cumprod[t.numpy()] / (1 - d.alphas_cumprod[t.numpy()])).float()
    x0_mse = (losses["pred_xstart"] - x0).pow(2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(losses["mse"], snr.clamp(max=5.0) * x0_mse, rtol=1e-3, atol=1e-6)


def test_sampler_rejects_bad_arguments():
    d = GaussianDiffusion.create(1000, respacing=10)
    x = torch.zeros(1, 3, 2, 2)
    with pytest.raises(ValueError):
        sample(d, lambda *a: x, x, start=11)
    with pytest.raises(ValueError):
        sample(d, lambda *a: x, x, eta=1.5)
    with pytest.raises(ValueError):
        sample(d, lambda *a: x, x, sampler="euler")
