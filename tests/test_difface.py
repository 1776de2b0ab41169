"""DifFace: the authors' procedure on tiny random networks, and its wiring checked with an oracle prior."""

import numpy as np
import pytest
import torch

from bfr.diffusion import GaussianDiffusion, ddim_respacing
from bfr.errors import InputError
from bfr.methods.difface import COMPACT_START_STEP, PAPER_START_STEP, DifFace
from bfr.nets import SwinIR, UNetModel


def tiny_prior(size=16):
    torch.manual_seed(0)
    net = UNetModel(image_size=size, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1,
                    attention_resolutions=(size // 2,), channel_mult=(1, 2), num_head_channels=32,
                    use_scale_shift_norm=True)
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.02)
    return net


def tiny_backbone(size=16):
    torch.manual_seed(1)
    return SwinIR(img_size=size // 2, in_chans=3, embed_dim=16, depths=(2,), num_heads=(2,), window_size=4,
                  mlp_ratio=2, sf=2, upsampler="nearest+conv", unshuffle=True, unshuffle_scale=2, num_feat=16)


def make(prior=None, size=16):
    return DifFace(prior or tiny_prior(size), tiny_backbone(size), resolution=size, framing="ffhq", tier="paper",
                   device=torch.device("cpu"))


def test_restore_shape_range_and_resize_back():
    model = make()
    lq = torch.rand(2, 3, 24, 24)
    out = model.restore(lq, steps=20, start_step=8, seed=0)
    assert out.shape == (2, 3, 24, 24)
    assert out.min() >= 0 and out.max() <= 1


def test_the_backbone_sees_the_resized_input_unclamped():
    """As in the authors' sampler: the LQ is resized (antialiased bicubic) to the model size and given to the
    backbone as it is, the cubic kernel's overshoot at sharp edges included; only its estimate is clamped."""
    seen = []
    model = make()
    model.backbone = torch.nn.Identity()
    model.backbone.register_forward_hook(lambda module, args, out: seen.append(args[0].clone()))
    edges = torch.zeros(1, 3, 24, 24)
    edges[..., 11:] = 1  # a step: the cubic kernel's negative lobes overshoot on both sides of it
    model.estimate(edges)
    want = torch.nn.functional.interpolate(edges, size=(16, 16), mode="bicubic", antialias=True, align_corners=False)
    assert want.min() < -0.01 and want.max() > 1.01
    torch.testing.assert_close(seen[0], want)


def test_seed_reproducible_and_matters():
    model = make()
    lq = torch.rand(1, 3, 16, 16)
    a = model.restore(lq, steps=20, start_step=8, eta=0.5, seed=3)
    b = model.restore(lq, steps=20, start_step=8, eta=0.5, seed=3)
    c = model.restore(lq, steps=20, start_step=8, eta=0.5, seed=4)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_matches_the_published_procedure_step_by_step():
    """Same weights, input and noise: an explicit re-statement of DifFace's loop (its current code: the
    DDIM step keeps the network's ε even where x̂0 is clipped) gives the same numbers."""
    model = make()
    lq = torch.rand(1, 3, 16, 16)
    steps, n, eta, seed = 25, 10, 0.5, 7
    ours = model.restore(lq, steps=steps, start_step=n, eta=eta, seed=seed)

    d = GaussianDiffusion.create(1000, respacing=f"ddim{steps}")
    ab = d.alphas_cumprod
    g = torch.Generator().manual_seed(seed)
    clipped = 0
    with torch.no_grad():
        x0 = model.backbone(lq).clamp(0, 1) * 2 - 1
        x = np.sqrt(ab[n]) * x0 + np.sqrt(1 - ab[n]) * torch.randn(x0.shape, generator=g)
        for i in range(n - 1, -1, -1):  # the authors' off-by-one: first call at N-1
            eps = model.prior(x, torch.tensor([d.timestep_map[i]]))[:, :3]
            raw = (x - np.sqrt(1 - ab[i]) * eps) / np.sqrt(ab[i])
            clipped += int((raw.abs() > 1).sum())
            pred = raw.clamp(-1, 1)
            ab_prev = ab[i - 1] if i > 0 else 1.0
            sigma = eta * np.sqrt((1 - ab_prev) / (1 - ab[i])) * np.sqrt(1 - ab[i] / ab_prev)
            z = torch.randn(x.shape, generator=g)
            x = np.sqrt(ab_prev) * pred + np.sqrt(1 - ab_prev - sigma ** 2) * eps + (sigma * z if i > 0 else 0)
    assert clipped > 0  # the case where re-deriving ε from the clipped x̂0 (guided-diffusion) would differ
    torch.testing.assert_close(ours, (x * 0.5 + 0.5).clamp(0, 1), atol=1e-4, rtol=0)


def test_any_chain_length_and_started_step_below_it():
    """N < steps as the authors assert (the image is diffused to index N); chain lengths no integer
    stride gives (300) are spaced evenly instead of failing."""
    assert ddim_respacing(250) == "ddim250" and ddim_respacing(334) == "ddim334" and ddim_respacing(300) == 300
    assert len(GaussianDiffusion.create(1000, respacing=ddim_respacing(300)).timestep_map) == 300
    model = make()
    assert model.restore(torch.rand(1, 3, 16, 16), steps=300, start_step=5).shape == (1, 3, 16, 16)
    assert model.restore(torch.rand(1, 3, 16, 16), steps=20, start_step=19).shape == (1, 3, 16, 16)
    for kwargs in (dict(steps=20, start_step=20), dict(steps=1, start_step=1), dict(steps=1001, start_step=5)):
        with pytest.raises(InputError, match="must lie in"):
            model.restore(torch.rand(1, 3, 16, 16), **kwargs)
    with pytest.raises(InputError, match="too short for this tier's started step"):
        model.restore(torch.rand(1, 3, 16, 16), steps=model.defaults["start_step"])


class OraclePrior(torch.nn.Module):
    """A prior that knows the true face: every step predicts it exactly."""

    def __init__(self, target, diffusion):
        super().__init__()
        self.target, self.d = target * 2 - 1, diffusion

    def forward(self, x, t):
        idx = int(np.searchsorted(self.d.timestep_map, int(t[0])))
        ab = float(self.d.alphas_cumprod[idx])
        eps = (x - ab ** 0.5 * self.target) / (1 - ab) ** 0.5
        return torch.cat([eps, torch.zeros_like(eps)], 1)


def test_oracle_prior_contracts_any_backbone_error_to_the_truth():
    truth = torch.rand(1, 3, 16, 16)
    model = make(OraclePrior(truth, GaussianDiffusion.create(1000, respacing="ddim50")))
    out = model.restore(torch.rand(1, 3, 16, 16), steps=50, start_step=20, eta=0.5, seed=0)
    torch.testing.assert_close(out, truth, atol=1e-4, rtol=0)


def test_rejects_bad_inputs_and_knobs():
    model = make()
    with pytest.raises(InputError):
        model.restore(torch.rand(1, 3, 16, 16), steps=20, start_step=21)
    with pytest.raises(InputError):
        model.restore(torch.rand(3, 16, 16))
    with pytest.raises(InputError):
        model.restore(torch.rand(1, 3, 16, 16) * 255)


def test_progress_reports_every_network_call():
    calls = []
    make().restore(torch.rand(1, 3, 16, 16), steps=20, start_step=6, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(i, 6) for i in range(1, 7)]


def test_each_tier_has_its_own_started_step():
    """The paper tier keeps the authors' N = 100; the compact tier its measured one (and the API says so)."""
    from bfr.api import METHODS

    paper = make()
    compact = DifFace(tiny_prior(), tiny_backbone(), resolution=16, framing="lfw", tier="compact",
                      device=torch.device("cpu"))
    assert paper.defaults["start_step"] == PAPER_START_STEP == 100 == DifFace.defaults["start_step"]
    assert compact.defaults["start_step"] == COMPACT_START_STEP < PAPER_START_STEP
    assert METHODS["difface"].defaults("compact")["start_step"] == COMPACT_START_STEP
    assert METHODS["difface"].defaults("paper")["start_step"] == PAPER_START_STEP
    lq = torch.rand(1, 3, 16, 16)
    for model in (compact, paper):
        calls = []
        out = model.restore(lq, steps=250, seed=2, progress=lambda done, total, c=calls: c.append(done))
        assert len(calls) == model.defaults["start_step"]  # N denoising steps, from N down to 0
        torch.testing.assert_close(out, model.restore(lq, steps=250, start_step=model.defaults["start_step"], seed=2))
