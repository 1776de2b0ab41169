"""The bundled compact weights on real faces: restoration gets closer to the ground truth than the input.

DifFace: eight held-out LFW test faces (never seen in training) under a strong degradation
(blur σ 12, ×32 downsampling, noise 10, JPEG 40 at 512-px scale = σ 1.5, ×4 at 64 px).
IDM: the first held-out faces of its own test slice (the `gfpgan` ranges it was trained on).
FLIPNET: DifFace's eight faces, in both modes. Fixed seeds throughout.
"""

import numpy as np
import pytest
import torch

from bfr.api import method_status
from bfr.degradations import DegradationParams, degrade
from bfr.metrics import niqe, psnr, ssim
from bfr.paths import data_dir

pytestmark = pytest.mark.skipif(not (data_dir() / "lfw150").is_dir(), reason="../shared/data (LFW) is not here")
needs_difface = pytest.mark.skipif(not method_status("difface", "compact")[0],
                                   reason="compact DifFace weights are not bundled")
needs_idm = pytest.mark.skipif(not method_status("idm", "compact")[0], reason="compact IDM weights are not bundled")
needs_flipnet = pytest.mark.skipif(not method_status("flipnet", "compact")[0],
                                   reason="compact FLIPNET weights are not bundled")


@pytest.fixture(scope="module")
def faces():
    """Eight held-out test faces and their strongly degraded versions."""
    from bfr.training.data import load_faces, split_files

    hq = load_faces(split_files("test")[::95][:8], 64).float() / 255
    params = DegradationParams(sigma_x=1.5, sigma_y=1.5, scale=4.0, noise=10.0, jpeg_quality=40)
    lq = torch.stack([torch.from_numpy(degrade(x.permute(1, 2, 0).numpy(), params, seed=i)[0]).permute(2, 0, 1)
                      for i, x in enumerate(hq)])
    return hq, lq


@pytest.fixture(scope="module")
def case(faces):
    import bfr

    return bfr.load("difface", tier="compact", device="cpu").model, *faces


@needs_difface
def test_backbone_beats_the_degraded_input(case):
    model, hq, lq = case
    x0 = model.estimate(lq)
    assert psnr(x0, hq).mean() > psnr(lq, hq).mean()
    assert ssim(x0, hq).mean() > ssim(lq, hq).mean()


@needs_difface
def test_difface_at_its_compact_default_beats_the_input(case):
    """What a user gets without touching a knob: the compact tier's own started step."""
    from bfr.methods.difface import COMPACT_START_STEP

    model, hq, lq = case
    assert model.defaults["start_step"] == COMPACT_START_STEP
    out = model.restore(lq, seed=0)
    assert psnr(out, hq).mean() > psnr(lq, hq).mean()
    assert ssim(out, hq).mean() > ssim(lq, hq).mean()



@needs_difface
def test_a_crop_in_the_compact_framing_restores_as_aligned_input(faces):
    """What `degrade` and `demo-set` write (LFW-framed crops) goes back in with ``framing="lfw"``: the model
    sees the crop as it is, and the result is closer to the ground truth than the input and than the same crop
    read as FFHQ-aligned (the face then reaches the model shrunk into its frame, and is pasted back)."""
    import bfr

    hq, lq = faces
    restorer = bfr.load("difface", tier="compact", device="cpu")
    assert restorer.framing == "lfw"
    own, as_ffhq = [], []
    for x in lq[:3]:
        img = x.permute(1, 2, 0).numpy()
        result = restorer.restore(img, aligned=True, framing="lfw", seed=0)
        np.testing.assert_allclose(result.faces[0][0], img, atol=1e-6)  # a 64-px LFW crop is the model's input
        own.append(torch.from_numpy(result.image))
        as_ffhq.append(torch.from_numpy(restorer.restore(img, aligned=True, framing="ffhq", seed=0).image))
    own, as_ffhq = (torch.stack(o).permute(0, 3, 1, 2) for o in (own, as_ffhq))
    assert own.shape == lq[:3].shape
    assert psnr(own, hq[:3]).mean() > psnr(lq[:3], hq[:3]).mean()
    assert (psnr(own, hq[:3]) > psnr(as_ffhq, hq[:3]) + 0.2).all()  # measured: +0.36 to +0.80 dB


@needs_difface
def test_larger_started_step_trades_fidelity_for_realism(case):
    """DifFace's knob: the farther the chain starts, the less the output is tied to the input, and the more
    natural it looks (NIQE falls)."""
    model, hq, lq = case
    near, far = model.restore(lq, start_step=10, seed=0), model.restore(lq, start_step=100, seed=0)
    assert psnr(far, hq).mean() < psnr(near, hq).mean()
    assert niqe(far).mean() < niqe(near).mean()


# ---------------------------------------------------------------------------------- IDM


@pytest.fixture(scope="module")
def idm_case():
    import bfr
    from bfr.training.backbone import validation_set

    hq, lq = validation_set(64, "gfpgan", n=8)  # the card's test slice, first 8 faces
    return bfr.load("idm", tier="compact", device="cpu").model, hq, lq


@needs_idm
def test_idm_beats_the_degraded_input(idm_case):
    model, hq, lq = idm_case
    out = model.restore(lq, seed=0)  # the tier's default chain (10 steps)
    assert psnr(out, hq).mean() > psnr(lq, hq).mean()
    assert ssim(out, hq).mean() > ssim(lq, hq).mean()


@needs_idm
def test_idm_follows_its_own_lq(idm_case):
    """Conditioning matters with the trained weights: each output is nearest its own face."""
    model, hq, lq = idm_case
    out = model.restore(lq[:4], steps=10, seed=0)
    distance = ((out[:, None] - hq[None, :4]) ** 2).mean((2, 3, 4))  # restored i × ground truth j
    assert torch.equal(distance.argmin(1), torch.arange(4))


@needs_idm
def test_idm_shortest_chain_restores_the_face_not_the_starting_noise(idm_case):
    """Two steps (the fewest allowed; one would sample at t = 0 only) still end near the face."""
    model, hq, lq = idm_case
    out, hq, lq = model.restore(lq[:4], steps=2, seed=0), hq[:4], lq[:4]
    assert psnr(out, hq).min() > 20
    assert psnr(out, hq).mean() > psnr(lq, hq).mean() - 3


# ------------------------------------------------------------------------------ FLIPNET


@pytest.fixture(scope="module")
def flipnet_case(faces):
    import bfr

    return bfr.load("flipnet", tier="compact", device="cpu").model, *faces


@needs_flipnet
def test_flipnet_restores_from_the_condition_toward_realism(flipnet_case):
    """Restoration mode at its defaults (pure noise, 50 DDIM steps, η = 1, φ = 1, colour fix): more realistic than
    the input (NIQE), and the LQ face steers it through BoostHub: φ = 1 is closer to the truth than φ = 0, which
    keeps only the face tokens and the colour fix. The default η = 1 beats deterministic DDIM (η = 0) on
    fidelity and realism."""
    model, hq, lq = flipnet_case
    out = model.restore(lq, seed=0)
    assert niqe(out).mean() < niqe(lq).mean()
    without = model.restore(lq, seed=0, phi=0.0)
    assert psnr(out, hq).mean() > psnr(without, hq).mean() + 1.0
    assert ssim(out, hq).mean() > ssim(without, hq).mean()
    deterministic = model.restore(lq, seed=0, eta=0.0)
    assert psnr(out, hq).mean() > psnr(deterministic, hq).mean() + 0.5
    assert niqe(out).mean() < niqe(deterministic).mean()


@needs_flipnet
def test_flipnet_degradation_mode_makes_different_degraded_versions_of_the_face(flipnet_case):
    model, hq, _ = flipnet_case
    hq = hq[:3]
    variants = model.degrade(hq, variants=2, steps=25, seed=0)  # (3, 2, 3, 64, 64)
    a, b = variants[:, 0], variants[:, 1]
    assert (a - b).abs().mean() > 0.01  # another seed, another degradation
    assert (psnr(a, hq) < 35).all()  # degraded, not a copy
    unsteered = model.degrade(hq, variants=1, steps=25, seed=0, phi=0.0)[:, 0]
    assert psnr(a, hq).mean() > psnr(unsteered, hq).mean() + 1.0  # a version of this face


@pytest.mark.skipif(not method_status("unsupervised", "compact")[0], reason="swinir64_adapted is not bundled")
def test_the_adapted_restorer_is_more_natural_than_the_one_it_started_from(tmp_path):
    """Kuai et al.'s claim on the bundled run's own unseen degradation (camera-lowres; held-out people):
    above the input's fidelity, and more natural (NIQE) than swinir64, which it was adapted from."""
    from bfr.api import load_net
    from bfr.training.adapt import evaluate_holdout, make_demo_set

    make_demo_set(tmp_path)  # the bundled run's own split (seed 0): its held-out people were never adapted on
    adapted = evaluate_holdout(load_net("swinir64_adapted"), tmp_path)
    start = evaluate_holdout(load_net("swinir64"), tmp_path)
    assert adapted["n"] == 151
    assert adapted["psnr_after"] > adapted["psnr_before"] + 0.5 and adapted["ssim_after"] > adapted["ssim_before"]
    assert adapted["niqe_after"] < start["niqe_after"] - 0.2


@needs_flipnet
@pytest.mark.skipif(not (data_dir() / "real-lq").is_dir(), reason="../shared/data (real-lq) is not here")
def test_flipnet_degradation_mode_on_a_photo_takes_its_largest_face():
    import bfr
    from bfr.imageio import load_image

    photo = load_image(data_dir() / "real-lq" / "whole_imgs" / "00.jpg")
    restorer = bfr.load("flipnet", device="cpu")
    got = restorer.degrade(photo, variants=1, aligned=False, steps=5, seed=0)
    crops = restorer.face_pipeline().crops(photo)
    assert len(crops) == 2 and len(got) == 1 and got[0].shape == (64, 64, 3)
    largest = max(crops, key=lambda f: f.face.eye_distance).crop
    np.testing.assert_array_equal(got[0], restorer.degrade(largest, variants=1, steps=5, seed=0)[0])
    smallest = min(crops, key=lambda f: f.face.eye_distance).crop
    assert np.abs(got[0] - restorer.degrade(smallest, variants=1, steps=5, seed=0)[0]).mean() > 0.02
