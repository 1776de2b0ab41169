"""The bundled compact weights on real faces: restoration gets closer to the ground truth than the input.

Eight held-out LFW test faces (never seen in training) under a strong degradation (blur σ 12,
×32 downsampling, noise 10, JPEG 40 at 512-px scale = σ 1.5, ×4 at 64 px), fixed seeds.
"""

import pytest
import torch

from bfr.api import method_status
from bfr.degradations import DegradationParams, degrade
from bfr.metrics import psnr, ssim
from bfr.paths import data_dir

pytestmark = [
    pytest.mark.skipif(not method_status("difface", "compact")[0], reason="compact DifFace weights are not bundled"),
    pytest.mark.skipif(not (data_dir() / "lfw150").is_dir(), reason="../shared/data (LFW) is not here"),
]


@pytest.fixture(scope="module")
def case():
    import bfr
    from bfr.training.data import load_faces, split_files

    hq = load_faces(split_files("test")[::95][:8], 64).float() / 255
    params = DegradationParams(sigma_x=1.5, sigma_y=1.5, scale=4.0, noise=10.0, jpeg_quality=40)
    lq = torch.stack([torch.from_numpy(degrade(x.permute(1, 2, 0).numpy(), params, seed=i)[0]).permute(2, 0, 1)
                      for i, x in enumerate(hq)])
    return bfr.load("difface", tier="compact", device="cpu").model, hq, lq


def test_backbone_beats_the_degraded_input(case):
    model, hq, lq = case
    x0 = model.estimate(lq)
    assert psnr(x0, hq).mean() > psnr(lq, hq).mean()
    assert ssim(x0, hq).mean() > ssim(lq, hq).mean()


def test_difface_at_a_low_started_step_beats_the_input(case):
    model, hq, lq = case
    out = model.restore(lq, start_step=10, seed=0)
    assert psnr(out, hq).mean() > psnr(lq, hq).mean()
    assert ssim(out, hq).mean() > ssim(lq, hq).mean()


def test_larger_started_step_trades_fidelity_for_realism(case):
    """DifFace's knob: the farther the chain starts, the less the output is tied to the input."""
    model, hq, lq = case
    near = psnr(model.restore(lq, start_step=10, seed=0), hq).mean()
    far = psnr(model.restore(lq, start_step=100, seed=0), hq).mean()
    assert far < near
