"""Parity with the authors' code: bfr's UNetModel and SwinIR, given the same weights and inputs, give the
outputs that DifFace's own networks (github.com/zsyOAOA/DifFace) gave, and bfr's DifFace loop, given the same
prior, estimate and noise, gives what the authors' sampler gave.

The key layouts are checked in test_unet.py / test_swinir.py; this checks the arithmetic (timestep
embedding order, scale-shift norm, attention head order, shifted-window masks, padding). The
golden files in tests/golden/ were made by running the authors' modules, unchanged, on tiny
versions of DIFFACE_UNET_512, COMPACT_PRIOR_64 and DIFFACE_SWINIR_512 whose weights come from
``redraw`` below (so the files hold only inputs and outputs). At those sizes the two
implementations agreed to 1.5e-6; breaking one thing (sin-first embedding, another attention
order, no shift mask) moves the outputs by 0.05 to 1.7.

The DifFace goldens come from the authors' restoration sampler (sampler.py, sample_func_ir_aligned with
inference_difface.py's arguments: "ddim{steps}", η 0.5, γ 0, x̂0 clipped) driving the tiny prior, its
backbone an identity, every Gaussian draw recorded in call order (n0: the diffusion of x̂0 to index N;
n1…nN: one per DDIM step, the last one drawn but unused). Measured: ≤ 5.8e-6 (the UNet's rounding; bfr's
loop driven by the authors' net was bit-identical); each loop change tried (ε from the clipped x̂0, no
clipping, first call at N instead of N − 1, diffusing to N − 1) moved the output by 0.05 or more.

The Kuai et al. goldens come from the authors' pseudo-target generation (SamsungLabs/DT-BFR @ec3d404:
sampler.py DifIRSampler.sample_func_ir_aligned with generate_pseudo_targets.py's low-pass set-up and
resizer.py's Resizer, configs/targets/iddpm_ffhq512_general.yaml) on the tiny prior, scaled to 16 px:
the reference diffused to the start index, ancestral steps with the learned variance, and after each step
with index ≥ the floor the low band replaced by the reference's, diffused to the next level with fresh
noise. They found bfr's low-pass treating borders unlike the authors' mirror (0.35 apart); aligned, bfr
agrees to ≤ 1e-6, and each loop change tried (no hook, floor ± 1, the reference diffused to i instead of
i − 1, one fixed reference noise, hook before the step) moves the output by 0.016 or more.
"""

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

import bfr.diffusion.gaussian
import bfr.diffusion.samplers
from bfr.methods.difface import DifFace
from bfr.methods.unsupervised import pseudo_targets
from bfr.nets.swinir import SwinIR
from bfr.nets.unet import UNetModel

GOLDEN = Path(__file__).parent / "golden"


def redraw(net: torch.nn.Module, seed: int) -> None:
    """Every parameter re-drawn from (seed, sorted name, shape) only, so two implementations with the same
    keys get the same weights. Non-trivial everywhere (the ADM UNet zero-initialises its output convs):
    1-D weights (norms) 1 + N(0, 0.1²), biases N(0, 0.1²), Swin's relative-position tables N(0, 0.5²),
    other weights N(0, 1/fan_in)."""
    g = torch.Generator().manual_seed(seed)
    params = dict(net.named_parameters())
    with torch.no_grad():
        for name in sorted(params):
            p = params[name]
            n = torch.randn(p.shape, generator=g)
            if name.endswith("relative_position_bias_table"):
                p.copy_(0.5 * n)
            elif p.dim() > 1:
                p.copy_(n / math.sqrt(p[0].numel()))
            elif name.endswith("weight"):
                p.copy_(1 + 0.1 * n)
            else:
                p.copy_(0.1 * n)


def golden(name: str):
    path = GOLDEN / f"{name}.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return load_file(str(path)), json.loads(meta["config"]), int(meta["seed"])


@pytest.mark.parametrize("name", ["unet_difface512_tiny", "unet_prior64_tiny"])
def test_unet_forward_matches_the_authors(name):
    tensors, config, seed = golden(name)
    net = UNetModel(**config).eval()
    redraw(net, seed)
    with torch.no_grad():
        y = net(tensors["x"].float(), tensors["t"])
    assert tensors["y"].std() > 0.1  # the weights make the whole network matter
    torch.testing.assert_close(y, tensors["y"], atol=1e-5, rtol=0)


def test_swinir_forward_matches_the_authors_including_padding():
    tensors, config, seed = golden("swinir_difface512_tiny")
    net = SwinIR(**config).eval()
    redraw(net, seed)
    with torch.no_grad():
        y, y_pad = net(tensors["x"].float()), net(tensors["x_pad"].float())
    assert tensors["y"].std() > 0.1
    torch.testing.assert_close(y, tensors["y"], atol=1e-5, rtol=0)
    # 61×122 is no multiple of window × unshuffle (64): padded, restored, cropped back to the input size
    torch.testing.assert_close(y_pad, tensors["y_pad"], atol=1e-5, rtol=0)


class Tape:
    """bfr's randn_like(x, generator), replaced by the authors' recorded draws in call order."""

    def __init__(self, draws: list[torch.Tensor]):
        self.draws, self.used = draws, 0

    def __call__(self, x: torch.Tensor, generator=None) -> torch.Tensor:
        z = self.draws[self.used]
        assert z.shape == x.shape
        self.used += 1
        return z.clone()


def sampling_golden(name: str, monkeypatch) -> tuple[dict, dict, Tape, UNetModel, list[int]]:
    """A sampling golden's tensors and metadata; bfr's noise replaced by its recorded draws; its prior, and the
    timesteps that prior is called with."""
    path = GOLDEN / f"{name}.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    tape = Tape([tensors[f"n{i}"] for i in range(int(meta["num_noise"]))])
    monkeypatch.setattr(bfr.diffusion.gaussian, "randn_like", tape)
    monkeypatch.setattr(bfr.diffusion.samplers, "randn_like", tape)
    prior = UNetModel(**json.loads(meta["config"])).eval()
    redraw(prior, int(meta["redraw_seed"]))
    seen: list[int] = []
    prior.register_forward_pre_hook(lambda module, args: seen.append(int(args[1][0])))
    return tensors, meta, tape, prior, seen


@pytest.mark.parametrize("name", ["difface_ddim25_n10", "difface_ddim250_n12"])
def test_difface_restore_matches_the_authors_sampler(name, monkeypatch):
    golden_, meta, tape, prior, seen = sampling_golden(name, monkeypatch)
    steps, n, eta = int(meta["steps"]), int(meta["N"]), float(meta["eta"])
    model = DifFace(prior, torch.nn.Identity(), resolution=golden_["y0"].shape[-1], framing="ffhq", tier="paper",
                    device=torch.device("cpu"))
    out = model.restore(golden_["y0"], steps=steps, start_step=n, eta=eta, seed=0)  # the backbone's x̂0 is y0
    assert tape.used == n + 1 and seen == golden_["t_seen"].tolist()  # first call at index N − 1, as theirs
    torch.testing.assert_close(out, golden_["image"], atol=5e-5, rtol=0)


@pytest.mark.parametrize("name", ["kuai_r250_s14_f7_d2", "kuai_r25_s15_f9_d4", "kuai_r250_s8_f1_d2"])
def test_kuai_pseudo_targets_match_the_authors(name, monkeypatch):
    golden_, meta, tape, prior, seen = sampling_golden(name, monkeypatch)
    out = pseudo_targets(prior, golden_["ref"], start=int(meta["start"]), respacing=meta["chain"],
                         min_index=int(meta["floor"]), factor=int(meta["factor"]), seed=0)
    assert tape.used == len(tape.draws) and seen == golden_["t_seen"].tolist()
    torch.testing.assert_close(out, golden_["image"], atol=1e-5, rtol=0)
