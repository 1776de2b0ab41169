"""SwinIR: the authors' key layout, any input size, the mean/range handling, determinism."""

from pathlib import Path

import pytest
import torch

from bfr.errors import InputError
from bfr.nets.configs import COMPACT_SWINIR_64, DIFFACE_SWINIR_512
from bfr.nets.swinir import RGB_MEAN, SwinIR, shifted_window_mask

SPEC = Path(__file__).resolve().parents[2] / "shared" / "spec" / "difface_swinir512.keys.tsv"


def tiny(**over) -> SwinIR:
    cfg = dict(
        img_size=8,
        in_chans=3,
        embed_dim=16,
        depths=(2, 2),
        num_heads=(2, 2),
        window_size=4,
        mlp_ratio=2,
        sf=2,
        upsampler="nearest+conv",
        unshuffle=True,
        unshuffle_scale=2,
        num_feat=8,
    )
    cfg.update(over)
    torch.manual_seed(0)
    return SwinIR(**cfg).eval()


@pytest.mark.skipif(not SPEC.exists(), reason="../shared/spec is not beside this checkout")
def test_difface_512_state_dict_matches_authors_layout():
    with torch.device("meta"):
        model = SwinIR(**DIFFACE_SWINIR_512)
    sd = model.state_dict()
    ours = [(k, "x".join(map(str, v.shape)), str(v.dtype).removeprefix("torch.")) for k, v in sd.items()]
    theirs = [tuple(line.split("\t")) for line in SPEC.read_text().splitlines()[1:]]
    assert ours == theirs  # same keys, shapes, dtypes, and order


def test_difface_config_layout_details():
    with torch.device("meta"):
        model = SwinIR(**DIFFACE_SWINIR_512)
    assert isinstance(model.conv_first[0], torch.nn.PixelUnshuffle) and model.conv_first[0].downscale_factor == 8
    assert [hasattr(model, f"conv_up{i}") for i in (1, 2, 3, 4)] == [True, True, True, False]
    assert model.pad_multiple == 64


@pytest.mark.parametrize(
    "over, size, out",
    [
        ({}, (40, 52), (40, 52)),  # unshuffle 2, up 2: same size, padded to 16 inside
        ({"sf": 4}, (40, 52), (80, 104)),  # net ×2
        ({"upsampler": "", "sf": 1, "unshuffle": False}, (13, 22), (13, 22)),
        ({"upsampler": "pixelshuffle", "sf": 2, "unshuffle": False}, (10, 9), (20, 18)),
        ({"upsampler": "pixelshuffledirect", "sf": 2, "unshuffle": False}, (10, 9), (20, 18)),
    ],
)
def test_output_size_for_odd_inputs(over, size, out):
    model = tiny(**over)
    with torch.no_grad():
        y = model(torch.rand(2, 3, *size))
    assert y.shape == (2, 3, *out)
    assert torch.isfinite(y).all()


def test_mask_for_other_sizes_is_computed_not_the_stored_one():
    model = tiny()
    block = model.layers[0].residual_group.blocks[1]
    assert block.shift_size == 2 and block.attn_mask.shape == (4, 16, 16)  # 8×8 grid, window 4
    assert torch.equal(block._mask(8, 8, torch.device("cpu")), block.attn_mask)
    assert block._mask(12, 16, torch.device("cpu")).shape == (12, 16, 16)
    # No window without a seam sees a masked pair; windows on the seam do.
    m = shifted_window_mask(8, 8, 4, 2)
    assert (m[0] == 0).all() and (m[-1] < 0).any()


def test_mean_and_range_round_trip():
    # With the last conv zeroed, a nearest+conv model outputs exactly the mean colour…
    model = tiny(img_range=255.0)
    with torch.no_grad():
        model.conv_last.weight.zero_()
        model.conv_last.bias.zero_()
        y = model(torch.rand(1, 3, 24, 20))
    assert torch.allclose(y, torch.tensor(RGB_MEAN).view(1, 3, 1, 1).expand_as(y))
    # …and a same-grid model (residual on the image) is the identity, whatever img_range is.
    ident = tiny(upsampler="", sf=1, unshuffle=False, img_range=255.0)
    with torch.no_grad():
        ident.conv_last.weight.zero_()
        ident.conv_last.bias.zero_()
        x = torch.rand(1, 3, 11, 14)
        assert torch.allclose(ident(x), x, atol=1e-6)
    # One channel: no mean to subtract.
    gray = tiny(in_chans=1)
    assert gray.mean.shape == (1, 1, 1, 1) and gray.mean.item() == 0.0
    assert "mean" not in gray.state_dict()


def test_deterministic_and_batch_independent():
    a, b = tiny(), tiny()
    x = torch.rand(3, 3, 32, 24)
    with torch.no_grad():
        ya, yb = a(x), b(x)
        y1 = a(x[1:2])
    assert torch.equal(ya, yb)
    assert torch.allclose(ya[1:2], y1, atol=1e-5)


def test_bf16_autocast_close_to_fp32():
    model = tiny()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(x)
    assert (low.float() - ref).abs().max() < 0.05


def test_trains_one_step():
    model = tiny().train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-2)
    x = torch.rand(2, 3, 16, 16)
    loss = (model(x) - x).abs().mean()
    loss.backward()
    opt.step()
    assert all(p.grad is not None for p in model.parameters())


def test_compact_config_builds_and_keeps_size():
    torch.manual_seed(0)
    model = SwinIR(**COMPACT_SWINIR_64).eval()
    with torch.no_grad():
        y = model(torch.rand(1, 3, 64, 64))
    assert y.shape == (1, 3, 64, 64)


def test_bad_input_and_config_are_refused():
    model = tiny()
    with pytest.raises(InputError, match="expects"):
        model(torch.rand(1, 4, 16, 16))
    with pytest.raises(ValueError, match="upsampler"):
        tiny(upsampler="bicubic")
    with pytest.raises(ValueError, match="sf=1"):
        tiny(upsampler="", sf=2)
