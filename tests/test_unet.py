"""The ADM UNet: the authors' key layout, the attention orderings, fp16 body, extra input channels."""

from pathlib import Path

import pytest
import torch

from bfr.nets.configs import COMPACT_PRIOR_64, DIFFACE_UNET_512, IDM_UNET_512
from bfr.nets.unet import AttentionBlock, UNetModel

SPEC = Path(__file__).resolve().parents[2] / "shared" / "spec" / "difface_unet_ffhq512.keys.tsv"


def tiny(**over):
    cfg = dict(image_size=16, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1,
               attention_resolutions=(8,), channel_mult=(1, 2), num_head_channels=16, use_scale_shift_norm=True)
    cfg.update(over)
    return UNetModel(**cfg)


@pytest.mark.skipif(not SPEC.exists(), reason="../shared/spec is not beside this checkout")
def test_difface_512_state_dict_matches_authors_layout():
    with torch.device("meta"):
        model = UNetModel(**DIFFACE_UNET_512)
    ours = {k: "x".join(map(str, v.shape)) for k, v in model.state_dict().items()}
    rows = [line.split("\t") for line in SPEC.read_text().splitlines()[1:]]
    theirs = {k: shape for k, shape, _ in rows}
    assert ours == theirs


def test_idm_variant_takes_the_lq_as_extra_channels():
    with torch.device("meta"):
        model = UNetModel(**IDM_UNET_512)
    assert model.input_blocks[0][0].weight.shape[1] == 6
    small = tiny(in_channels=6, out_channels=3)
    x, lq = torch.randn(2, 3, 16, 16), torch.randn(2, 3, 16, 16)
    out = small(x, torch.tensor([10, 500]), lq=lq)
    assert out.shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="input channels"):
        small(x, torch.tensor([10, 500]))


def reference_legacy_attention(qkv, heads):
    """The authors' einsum formulation, for comparison with the fused kernel."""
    bs, width, length = qkv.shape
    ch = width // (3 * heads)
    q, k, v = qkv.reshape(bs * heads, ch * 3, length).split(ch, dim=1)
    scale = 1 / ch ** 0.25
    w = torch.einsum("bct,bcs->bts", q * scale, k * scale).softmax(-1)
    return torch.einsum("bts,bcs->bct", w, v).reshape(bs, -1, length)


def test_legacy_attention_matches_reference_einsum():
    torch.manual_seed(0)
    block = AttentionBlock(64, num_head_channels=32)
    torch.nn.init.normal_(block.proj_out.weight)
    x = torch.randn(2, 64, 4, 4)
    qkv = block.qkv(block.norm(x.reshape(2, 64, -1)))
    expected = x.reshape(2, 64, -1) + block.proj_out(reference_legacy_attention(qkv, 2))
    torch.testing.assert_close(block(x).reshape(2, 64, -1), expected, atol=1e-5, rtol=1e-5)


def test_new_attention_order_differs_from_legacy_for_several_heads():
    torch.manual_seed(0)
    a = AttentionBlock(64, num_head_channels=32)
    b = AttentionBlock(64, num_head_channels=32, use_new_attention_order=True)
    b.load_state_dict(a.state_dict())
    torch.nn.init.normal_(a.proj_out.weight)
    b.proj_out.weight.data.copy_(a.proj_out.weight)
    x = torch.randn(1, 64, 4, 4)
    assert not torch.allclose(a(x), b(x))


def test_forward_shape_timestep_dependence_and_determinism():
    torch.manual_seed(0)
    model = tiny().eval()
    for p in model.parameters():  # zero-initialised heads would make the output constant
        torch.nn.init.normal_(p, std=0.05)
    x = torch.randn(2, 3, 16, 16)
    out = model(x, torch.tensor([0, 0]))
    assert out.shape == (2, 6, 16, 16)
    torch.testing.assert_close(out, model(x, torch.tensor([0, 0])))
    assert not torch.allclose(out, model(x, torch.tensor([999, 999])))


def test_per_level_res_blocks_and_resblock_updown():
    model = tiny(num_res_blocks=(1, 2), resblock_updown=True)
    assert model(torch.randn(1, 3, 16, 16), torch.tensor([3])).shape == (1, 6, 16, 16)
    with pytest.raises(ValueError):
        tiny(num_res_blocks=(1, 2, 3))


def test_fp16_body_keeps_float32_norms_and_head():
    model = tiny(use_fp16=True)
    assert model.input_blocks[1][0].in_layers[2].weight.dtype == torch.float16
    assert model.out[2].weight.dtype == torch.float32
    assert model.input_blocks[1][0].in_layers[0].weight.dtype == torch.float32


def test_compact_prior_config_builds_with_learned_variance():
    with torch.device("meta"):
        model = UNetModel(**COMPACT_PRIOR_64)
    assert model.out_channels == 6
    assert 10e6 < sum(p.numel() for p in model.parameters()) < 25e6
