"""Unsupervised BFR (Kuai et al.): the low-pass hook, pseudo-targets, the method, and adaptation on tiny random nets."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from bfr.diffusion import GaussianDiffusion, sample
from bfr.errors import InputError
from bfr.methods.unsupervised import Unsupervised, lowpass, lowpass_factor, lowpass_hook, pseudo_targets, recipe_indices
from bfr.nets import SwinIR, UNetModel
from bfr.paths import data_dir

HAVE_LFW = (data_dir() / "lfw150").is_dir()
needs_lfw = pytest.mark.skipif(not HAVE_LFW, reason="../shared/data (LFW) is not here")

TINY_UNET = dict(image_size=16, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1,
                 attention_resolutions=(), channel_mult=(1,), num_head_channels=32, use_scale_shift_norm=True)
TINY_SWINIR = dict(img_size=8, in_chans=3, embed_dim=16, depths=(2,), num_heads=(2,), window_size=4, mlp_ratio=2,
                   sf=2, upsampler="nearest+conv", unshuffle=True, unshuffle_scale=2, num_feat=16)


def tiny_prior():
    torch.manual_seed(0)
    net = UNetModel(**TINY_UNET)
    for p in net.parameters():  # ADM zero-initialises its output layer; random weights make ε non-trivial
        torch.nn.init.normal_(p, std=0.02)
    return net.eval()


def tiny_restorer(seed=1):
    torch.manual_seed(seed)
    return SwinIR(**TINY_SWINIR)


def smooth_images(n, size=16, seed=3):
    g = torch.Generator().manual_seed(seed)
    return F.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=(size, size), mode="bicubic").clamp(0, 1)


def down(x, factor):
    return F.interpolate(x, scale_factor=1 / factor, mode="bicubic", antialias=True)


# ---------------------------------------------------------------------------- the low-pass hook


def test_lowpass_sees_the_image_mirrored_beyond_its_borders_even_past_a_short_side():
    """The authors' resizer mirrors (half-sample symmetric) wherever its kernel runs off the image; bfr's low-pass
    equals its own result on the mirror-tiled image's middle copy, also when the margin (4·factor) is longer than a
    side (8 px here, factor 4) and on a non-square image."""
    x = torch.rand(1, 3, 8, 16, generator=torch.Generator().manual_seed(0))

    def mirror_tile(t, dim):
        f = t.flip(dim)
        return torch.cat([t, f, t, f, t], dim=dim)  # periodic: … x, flipped x, x …

    big = mirror_tile(mirror_tile(x, -2), -1)  # 40 × 80, x in the middle
    inner = lowpass(big, 4)[..., 16:24, 32:48]
    torch.testing.assert_close(lowpass(x, 4), inner, atol=1e-5, rtol=0)


def test_lowpass_factor_keeps_the_cutoff_relative_to_the_face():
    assert lowpass_factor(512, "swinir") == 16 and lowpass_factor(512, "general") == 8  # the authors' values
    assert lowpass_factor(256, "swinir") == 8 and lowpass_factor(256, "general") == 4
    assert lowpass_factor(64, "swinir") == 2 and lowpass_factor(64, "general") == 2  # never below 2
    with pytest.raises(InputError):
        lowpass_factor(64, "codeformer")


def test_hook_is_the_published_replacement_and_skips_low_indices():
    d = GaussianDiffusion.create(1000, "linear", respacing="250")
    ref, x = smooth_images(2) * 2 - 1, torch.randn(2, 3, 16, 16)
    hook = lowpass_hook(ref, d, 2, min_index=90, generator=torch.Generator().manual_seed(5))
    expected = x - lowpass(x, 2) + lowpass(d.q_sample(ref, 119, generator=torch.Generator().manual_seed(5)), 2)
    torch.testing.assert_close(hook(x, 120, {}), expected)
    assert hook(x, 89, {}) is x and hook(x, 0, {}) is x
    with pytest.raises(InputError):
        lowpass_hook(ref, d, 2, min_index=0)
    with pytest.raises(InputError):
        lowpass(torch.zeros(1, 3, 15, 15), 2)


def run_chain(ref, hook_factory, seed=0):
    """Sample from index 150 with ``hook_factory(generator)``; returns (final sample, the state after each step)."""
    d = GaussianDiffusion.create(1000, "linear", respacing="250")
    g = torch.Generator().manual_seed(seed)
    inner = hook_factory(d, g)
    states, changed = {}, {}

    def recording(x, i, out):
        new = inner(x, i, out)
        states[i], changed[i] = new, not torch.equal(new, x)
        return new

    out = sample(d, tiny_prior(), d.q_sample(ref, 150, generator=g), start=150, sampler="ancestral", generator=g,
                 hook=recording)
    return d, out, states, changed


def test_the_default_hook_touches_steps_150_to_90_and_pins_the_reference_low_frequencies():
    """After the last replaced step (sample at level 89), D(sample) follows the diffused reference's
    signal; without the hook the prior wanders off. Steps below 90 are left to the prior."""
    ref = smooth_images(2) * 2 - 1
    d, _, states, changed = run_chain(ref, lambda d, g: lowpass_hook(ref, d, 2, 90, generator=g))
    assert sorted(changed) == list(range(150))
    assert {i for i, c in changed.items() if c} == set(range(90, 150))
    _, _, free, _ = run_chain(ref, lambda d, g: (lambda x, i, o: x))
    signal = d.sqrt_alphas_cumprod[89]
    with_hook = (down(states[90], 2) / signal - down(ref, 2)).abs().mean()
    without = (down(free[90], 2) / signal - down(ref, 2)).abs().mean()
    assert with_hook < 0.7 * without, (with_hook, without)


def test_hook_run_to_the_end_keeps_the_reference_low_frequencies_in_the_sample():
    """With min_index=1 the final sample's low frequencies are the reference's; without the hook they are not."""
    ref = smooth_images(2) * 2 - 1
    _, out, _, _ = run_chain(ref, lambda d, g: lowpass_hook(ref, d, 2, 1, generator=g))
    _, free, _, _ = run_chain(ref, lambda d, g: (lambda x, i, o: x))
    with_hook, without = (down(out, 2) - down(ref, 2)).abs().mean(), (down(free, 2) - down(ref, 2)).abs().mean()
    assert with_hook < 0.1 * without, (with_hook, without)


# ---------------------------------------------------------------------------- pseudo-targets


class CountingPrior(torch.nn.Module):
    def __init__(self, net):
        super().__init__()
        self.net, self.image_size, self.calls = net, net.image_size, 0

    def forward(self, x, t):
        self.calls += 1
        return self.net(x, t)


def test_recipe_indices_are_the_authors_at_512_px_and_keep_the_face_level_noise_below():
    d = GaussianDiffusion.create(1000, "linear", respacing="250")
    assert recipe_indices(d, 512) == (150, 90)  # [code]
    assert recipe_indices(d, 64) == (53, 15)
    start16, min16 = recipe_indices(d, 16)
    assert 1 <= min16 < start16 < 53


def test_pseudo_targets_make_start_calls_per_batch_and_return_unit_range_images():
    prior = CountingPrior(tiny_prior())
    refs = smooth_images(2)
    seen = []
    out = pseudo_targets(prior, refs, seed=0, batch_size=2, progress=lambda d, t: seen.append((d, t)))
    start = recipe_indices(GaussianDiffusion.create(1000, "linear", respacing="250"), 16)[0]  # the 16-px default
    assert prior.calls == start and seen[-1] == (start, start)
    assert out.shape == (2, 3, 16, 16) and out.dtype == torch.float32 and out.device.type == "cpu"
    assert out.min() >= 0 and out.max() <= 1
    torch.testing.assert_close(pseudo_targets(prior, refs, seed=0, batch_size=2), out)
    assert (out - refs).abs().mean() < 0.5  # the low frequencies come from the reference

    prior.calls = 0
    bigger = pseudo_targets(prior, F.interpolate(refs, size=(24, 24), mode="bilinear"), seed=0, batch_size=1,
                            start=20, min_index=10)
    assert prior.calls == 2 * 20 and bigger.shape == (2, 3, 24, 24)  # resized to the prior's size and back
    with pytest.raises(InputError):
        pseudo_targets(prior, refs, start=20, min_index=30)
    with pytest.raises(InputError, match="respacing"):  # the default indices belong to the "250" chain
        pseudo_targets(prior, refs, respacing="100")
    with pytest.raises(InputError, match="start"):  # the reference is diffused to index start: at most 249
        pseudo_targets(prior, refs, start=250, min_index=90)


def test_pseudo_target_defaults_follow_the_prior_size_and_a_given_start_caps_the_floor(monkeypatch):
    """The recipe is the one of the prior's size (16 px: 14 / 3), whatever the references' size; the
    floor reaches the hook; a start below the default floor brings the floor down with it."""
    import bfr.methods.unsupervised as unsup

    floors = []
    hook = unsup.lowpass_hook
    monkeypatch.setattr(unsup, "lowpass_hook", lambda *a, **k: floors.append(a[3]) or hook(*a, **k))
    prior = CountingPrior(tiny_prior())
    refs = F.interpolate(smooth_images(1), size=(24, 24), mode="bilinear")
    out = pseudo_targets(prior, refs, seed=0, batch_size=1)
    assert (prior.calls, floors, out.shape[-1]) == (14, [3], 24)
    prior.calls, floors[:] = 0, []
    pseudo_targets(prior, refs, seed=0, batch_size=1, start=2)
    assert (prior.calls, floors) == (2, [2])


def test_adapt_indices_keep_a_resumed_runs_and_fail_early(tmp_path):
    from bfr.training.adapt import AdaptConfig, resolve_indices

    cfg = AdaptConfig(out_dir=str(tmp_path / "run"))
    assert (resolve_indices(cfg, 64).start, resolve_indices(cfg, 64).min_index) == (53, 15)
    assert (resolve_indices(cfg, 512).start, resolve_indices(cfg, 512).min_index) == (150, 90)
    capped = resolve_indices(AdaptConfig(out_dir=cfg.out_dir, start=10), 64)
    assert (capped.start, capped.min_index) == (10, 10)
    with pytest.raises(InputError, match="min_index"):
        resolve_indices(AdaptConfig(out_dir=cfg.out_dir, start=10, min_index=20), 64)
    run = tmp_path / "run"  # a run started before the compact recipe existed resumes with its own indices
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"start": 150, "min_index": 90}))
    (run / "state.safetensors").write_bytes(b"")
    resumed = resolve_indices(cfg, 64)
    assert (resumed.start, resumed.min_index) == (150, 90)


def test_method_is_one_forward_pass_of_the_restorer():
    restorer = tiny_restorer()
    model = Unsupervised(restorer, resolution=16, framing="lfw", tier="compact", device=torch.device("cpu"))
    lq = torch.rand(2, 3, 24, 24)
    calls = []
    out = model.restore(lq, seed=7, progress=lambda d, t: calls.append((d, t)))
    assert out.shape == (2, 3, 24, 24) and out.min() >= 0 and out.max() <= 1 and calls == [(1, 1)]
    lq16 = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(model.restore(lq16), restorer(lq16).clamp(0, 1))
    with pytest.raises(InputError, match="no options"):
        model.restore(lq, steps=10)
    assert Unsupervised.defaults == {}


# ---------------------------------------------------------------------------- adaptation


@pytest.fixture
def tiny_compact(tmp_path):
    """Tiny restorer and prior exported as bfr weights, and two degraded faces in a folder."""
    from bfr.imageio import save_image
    from bfr.training.common import export_weights

    restorer = export_weights(tiny_restorer(), TINY_SWINIR, tmp_path / "nets" / "r.safetensors", kind="swinir")
    prior = export_weights(tiny_prior(), TINY_UNET, tmp_path / "nets" / "p.safetensors", kind="prior")
    lq_dir = tmp_path / "lq"
    for i, img in enumerate(smooth_images(2, size=20, seed=11)):
        save_image(img[None], lq_dir / f"face_{i}.png")  # 20 px: read and resized to the prior's 16
    return dict(restorer=str(restorer), prior=str(prior), lq_dir=str(lq_dir))


@pytest.fixture
def count_prior_calls(monkeypatch):
    calls = []
    forward = UNetModel.forward

    def counting(self, x, t, *a, **k):
        calls.append(len(x))
        return forward(self, x, t, *a, **k)

    monkeypatch.setattr(UNetModel, "forward", counting)
    return calls


def read_log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


def test_adapt_lowers_the_l1_to_the_pseudo_targets(tmp_path, tiny_compact):
    """L1 only (no discriminator pulling elsewhere), fixed targets: the logged L1 of the exported
    (EMA) restorer to its pseudo-targets falls from the first evaluation to the last."""
    from bfr.training.adapt import AdaptConfig, adapt

    run = tmp_path / "l1"
    adapt(AdaptConfig(**tiny_compact, out_dir=str(run), batch_size=4, lr=5e-3, lr_min=5e-3, max_steps=15, flip=False,
                      gan_weight=0.0, eval_every=5, sample_every=100, save_every=100, ema_decay=0.5,
                      mixed_precision="no", gen_batch_size=2, start=20, min_index=10))
    l1 = [r["target_l1"] for r in read_log(run) if "target_l1" in r]
    assert len(l1) == 4 and l1[-1] < 0.9 * l1[0], l1


@needs_lfw
def test_adapt_with_gan_caches_targets_exports_and_resumes(tmp_path, tiny_compact, count_prior_calls):
    from safetensors.torch import load_file

    from bfr.api import load_net
    from bfr.training.adapt import AdaptConfig, adapt, write_card
    from bfr.training.common import export_weights
    from bfr.weights import read_metadata
    from bfr.weights.hub import sha256_of

    run = tmp_path / "run"
    cfg = AdaptConfig(**tiny_compact, out_dir=str(run), batch_size=4, lr=1e-3, max_steps=4, eval_every=2,
                      sample_every=2, save_every=2, clean_images=8, disc_feat=16, mixed_precision="no",
                      gen_batch_size=2, start=20, min_index=10)
    weights = adapt(cfg)
    assert sum(count_prior_calls) == 20 * 2  # one batch of two images, one call per step from index 20
    log = [r for r in read_log(run) if "target_l1" in r]
    assert [r["step"] for r in log] == [0, 2, 4]
    assert {"train_l1", "train_g_gan", "train_d_real", "train_d_fake"} <= set(log[-1])
    assert any("LPIPS not used" in r.get("note", "") for r in read_log(run)) or "train_lpips" in log[-1]
    targets = load_file(str(run / "pseudo_targets.safetensors"))
    assert sorted(targets) == ["face_0.png", "face_1.png"] and targets["face_0.png"].shape == (3, 16, 16)
    assert targets["face_0.png"].dtype == torch.uint8
    state = load_file(str(run / "state.safetensors"))
    assert any(k.startswith("model.disc.") for k in state) and any(k.startswith("ema.") for k in state)
    assert read_metadata(weights)["kind"] == "swinir" and json.loads(read_metadata(weights)["steps"]) == 4
    net = load_net("swinir64", weights)  # any swinir catalog name: the file carries its config
    assert net(torch.rand(1, 3, 16, 16)).shape == (1, 3, 16, 16)
    assert (run / "adapted.md").read_text().startswith("# Unsupervised BFR")
    assert (run / "samples_final.png").stat().st_size > 100 and (run / "samples_000002.png").exists()
    assert [r["generated"] for r in read_log(run) if r.get("event") == "pseudo_targets"] == [2]
    card = write_card(run, dest=tmp_path / "bundle", name="swinir64_adapted")
    assert card.name == "swinir64_adapted.md" and "swinir64_adapted_samples.png" in card.read_text()
    assert (tmp_path / "bundle" / "swinir64_adapted.safetensors").is_file()
    started = (f"started from the restorer `r.safetensors` (sha256 {sha256_of(tiny_compact['restorer'])[:12]}…); "
               f"pseudo-targets from the prior `p.safetensors` (sha256 {sha256_of(tiny_compact['prior'])[:12]}…)")
    assert started in card.read_text()

    count_prior_calls.clear()
    # the restorer's file changes before the resume: the card still names what the run started from
    export_weights(tiny_restorer(seed=5), TINY_SWINIR, Path(tiny_compact["restorer"]), kind="swinir")
    cfg.max_steps, cfg.gan_weight = 6, 0.05
    adapt(cfg)  # resumes at step 4 with the cached pseudo-targets: no prior call
    assert "GAN ×0.05" in (run / "adapted.md").read_text()
    assert "resumed (the values above are the last ones): at step 4: gan_weight 0.1 → 0.05" in \
        (run / "adapted.md").read_text()  # not max_steps: when to stop is not a setting of the weights
    assert count_prior_calls == []
    assert [r["step"] for r in read_log(run) if "target_l1" in r] == [0, 2, 4, 6]
    assert json.loads(read_metadata(run / "adapted.safetensors")["steps"]) == 6
    assert started in (run / "adapted.md").read_text()  # what the run started from, not today's file


def test_a_stop_during_generation_acts_after_one_batch_and_keeps_it(tmp_path, tiny_compact, count_prior_calls,
                                                                    monkeypatch):
    from safetensors.torch import load_file

    import bfr.training.adapt as adapt_module
    from bfr.imageio import save_image
    from bfr.training.adapt import AdaptConfig, adapt

    lq_dir = tmp_path / "lq5"
    for i, img in enumerate(smooth_images(5, size=16, seed=3)):
        save_image(img[None], lq_dir / f"face_{i}.png")
    armed = [True]

    class StopAfterFirstCall:  # as a SIGTERM that arrives while the first batch is being sampled
        def __init__(self, *_):
            pass

        def __bool__(self):
            return armed[0] and bool(count_prior_calls)

    monkeypatch.setattr(adapt_module, "StopSignal", StopAfterFirstCall)
    run = tmp_path / "run"
    cfg = AdaptConfig(**{**tiny_compact, "lq_dir": str(lq_dir)}, out_dir=str(run), batch_size=2, max_steps=2,
                      eval_every=100, sample_every=100, save_every=100, gan_weight=0.0, mixed_precision="no",
                      gen_batch_size=2, cache_every=100, start=6, min_index=3)
    assert adapt(cfg) is None
    assert count_prior_calls == [2] * 6  # one batch of two, not the whole cache chunk of 100
    assert sorted(load_file(str(run / "pseudo_targets.safetensors"))) == ["face_0.png", "face_1.png"]
    armed[0] = False
    assert adapt(cfg) is not None  # resumes: the other three are made (a batch of two, one of one), then it trains
    assert count_prior_calls == [2] * 6 + [2] * 6 + [1] * 6
    assert sorted(load_file(str(run / "pseudo_targets.safetensors"))) == [f"face_{i}.png" for i in range(5)]
    assert [r["generated"] for r in read_log(run) if r.get("event") == "pseudo_targets"] == [2, 3]
    # stopped between evaluations (every 100): the exported weights still get their own row
    assert [r["step"] for r in read_log(run) if "target_l1" in r] == [0, 2]


def test_adapt_regenerates_targets_with_the_improved_restorer(tmp_path, tiny_compact, count_prior_calls):
    from bfr.training.adapt import AdaptConfig, adapt
    from bfr.weights import read_metadata

    run = tmp_path / "regen"
    cfg = AdaptConfig(**tiny_compact, out_dir=str(run), batch_size=2, lr=1e-3, max_steps=5, regenerate_every=2,
                      eval_every=100, sample_every=100, save_every=100, gan_weight=0.0, mixed_precision="no",
                      gen_batch_size=2, start=20, min_index=10)
    adapt(cfg)
    assert sum(count_prior_calls) == 20 * 2 * 3  # rounds at steps 0, 2 and 4
    assert read_metadata(run / "pseudo_targets.safetensors")["round"] == "4"
    config = json.loads((run / "config.json").read_text())
    assert (config["start"], config["min_index"]) == (20, 10)  # given indices are kept


def test_adapt_defaults_to_the_recipe_matched_to_the_prior_size(tmp_path, tiny_compact, count_prior_calls):
    from bfr.training.adapt import AdaptConfig, adapt
    from bfr.weights import read_metadata

    run = tmp_path / "defaults"
    adapt(AdaptConfig(**tiny_compact, out_dir=str(run), batch_size=2, max_steps=0, eval_every=100, sample_every=100,
                      save_every=100, gan_weight=0.0, mixed_precision="no", gen_batch_size=2))
    start, min_index = recipe_indices(GaussianDiffusion.create(1000, "linear", respacing="250"), 16)
    assert sum(count_prior_calls) == start * 2
    config = json.loads((run / "config.json").read_text())
    assert (config["start"], config["min_index"]) == (start, min_index)
    settings = json.loads(read_metadata(run / "pseudo_targets.safetensors")["settings"])
    assert (settings["start"], settings["min_index"]) == (start, min_index)


def test_adapt_rejects_impossible_settings(tmp_path, tiny_compact):
    from bfr.training.adapt import AdaptConfig, adapt

    with pytest.raises(InputError, match="respacing"):  # default indices belong to the "250" chain
        adapt(AdaptConfig(**tiny_compact, out_dir=str(tmp_path / "r"), respacing="100", max_steps=0))
    with pytest.raises(InputError, match="regenerate"):
        adapt(AdaptConfig(**tiny_compact, out_dir=str(tmp_path / "x"), regenerate_every=2,
                          references_dir=tiny_compact["lq_dir"]))


def test_adapt_general_path_uses_fixed_references(tmp_path, tiny_compact, count_prior_calls):
    """References from another model (e.g. CodeFormer outputs) matched by file stem; general-path factor."""
    from bfr.imageio import save_image
    from bfr.training.adapt import AdaptConfig, adapt
    from bfr.weights import read_metadata

    for i, img in enumerate(smooth_images(2, size=16, seed=9)):
        save_image(img[None], tmp_path / "refs" / f"face_{i}.jpg")
    refs = str(tmp_path / "refs")
    weights = adapt(AdaptConfig(**tiny_compact, out_dir=str(tmp_path / "general"), references_dir=refs, batch_size=2,
                                max_steps=1, gan_weight=0.0, mixed_precision="no", start=10, min_index=5,
                                gen_batch_size=2))
    settings = json.loads(read_metadata(weights)["pseudo_targets"])
    assert settings["path"] == "general" and settings["factor"] == lowpass_factor(16, "general")
    assert sum(count_prior_calls) == 10 * 2
    # each pseudo-target is filed under its own input: its coarse layout is its own reference's, not the other's
    from safetensors.torch import load_file

    from bfr.imageio import load_image, to_tensor

    targets = load_file(str(tmp_path / "general" / "pseudo_targets.safetensors"))
    references = {f"face_{i}": to_tensor(load_image(tmp_path / "refs" / f"face_{i}.jpg")) for i in range(2)}
    assert len(targets) == 2
    for name, target in targets.items():
        coarse = lowpass(target[None].float() / 255, settings["factor"])
        nearest = min(references, key=lambda r: (coarse - lowpass(references[r], settings["factor"])).abs().mean())
        assert Path(name).stem == nearest, name
    (tmp_path / "refs" / "face_1.jpg").unlink()
    with pytest.raises(InputError, match="no reference"):
        adapt(AdaptConfig(**tiny_compact, out_dir=str(tmp_path / "g2"), references_dir=refs))


def test_adapt_paper_path_loads_third_party_checkpoints(tmp_path, tiny_compact):
    """The paper tier's code path (SwinIR-GAN .pth + DifFace prior .pth + a clean folder) on tiny nets."""
    from bfr.api import load_net
    from bfr.imageio import save_image
    from bfr.training.adapt import AdaptConfig, adapt

    restorer, prior = tiny_restorer(), tiny_prior()
    torch.save({"params": {f"module.{k}": v for k, v in restorer.state_dict().items()}}, tmp_path / "swinir_gan.pth")
    torch.save(prior.state_dict(), tmp_path / "iddpm.pth")
    for i, img in enumerate(smooth_images(2, size=16, seed=5)):
        save_image(img[None], tmp_path / "ffhq" / f"{i:05d}.png")
    base = dict(lq_dir=tiny_compact["lq_dir"], tier="paper", restorer=str(tmp_path / "swinir_gan.pth"),
                prior=str(tmp_path / "iddpm.pth"), paper_swinir=TINY_SWINIR, paper_unet=TINY_UNET, batch_size=2,
                max_steps=2, eval_every=100, sample_every=100, save_every=100, mixed_precision="no", start=10,
                min_index=5, disc_feat=16)
    with pytest.raises(InputError, match="clean"):
        adapt(AdaptConfig(**base, out_dir=str(tmp_path / "no_clean")))
    weights = adapt(AdaptConfig(**base, out_dir=str(tmp_path / "paper"), clean_dir=str(tmp_path / "ffhq")))
    net = load_net("swinir512_adapted", weights)
    assert isinstance(net, SwinIR) and net.embed_dim == 16
    import bfr

    restorer = bfr.load("unsupervised", tier="paper", device="cpu", weights={"swinir512_adapted": str(weights)})
    face = smooth_images(1, size=16, seed=2)[0].permute(1, 2, 0).numpy()
    out = restorer.restore(face, aligned=True)
    assert out.image.shape == face.shape and out.faces and restorer.model.resolution == 16
    with torch.no_grad():
        expected = net(torch.from_numpy(face).permute(2, 0, 1)[None]).clamp(0, 1)[0].permute(1, 2, 0).numpy()
    assert np.abs(out.faces[0][1] - expected).mean() < 0.02  # the adapted network's forward pass, nothing else


def test_the_paper_tier_runs_adapted_weights_only(tmp_path, tiny_compact, monkeypatch):
    """DT-BFR's SwinIR-GAN before adaptation is the method's starting point: never run under its name."""
    import bfr
    from bfr.errors import WeightsUnavailableError

    monkeypatch.setenv("BFR_WEIGHTS_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("BFR_CACHE", str(tmp_path / "cache"))
    with pytest.raises(WeightsUnavailableError, match=r"swinir512_adapted.*bfr adapt .*--tier paper"):
        bfr.load("unsupervised", tier="paper", device="cpu")
    baseline = tmp_path / "swinir_gan.pth"
    torch.save({"params": tiny_restorer().state_dict()}, baseline)
    with pytest.raises(InputError, match="adapted by `python -m bfr adapt`"):
        bfr.load("unsupervised", tier="paper", device="cpu", weights={"swinir512_adapted": str(baseline)})
    from bfr.training.common import export_weights

    compact = export_weights(tiny_restorer(), TINY_SWINIR, tmp_path / "c.safetensors", kind="swinir",
                             extra={"tier": "compact", "resolution": 16, "method": "unsupervised"})  # as `adapt` writes
    with pytest.raises(InputError, match="adapted on the compact tier"):
        bfr.load("unsupervised", tier="paper", device="cpu", weights={"swinir512_adapted": str(compact)})
    plain = export_weights(tiny_restorer(), TINY_SWINIR, tmp_path / "p.safetensors", kind="swinir",
                           extra={"resolution": 16})  # a bfr-trained restorer that was never adapted
    for tier, name in (("paper", "swinir512_adapted"), ("compact", "swinir64_adapted")):
        with pytest.raises(InputError, match="not a restorer adapted by `python -m bfr adapt`"):
            bfr.load("unsupervised", tier=tier, device="cpu", weights={name: str(plain)})


# ---------------------------------------------------------------------------- the demonstration set


@needs_lfw
def test_demo_set_is_deterministic_split_by_person_about_80_20(tmp_path):
    from bfr.training.adapt import _person, make_demo_set

    a = make_demo_set(tmp_path / "a", resolution=16, limit=30, seed=0)
    b = make_demo_set(tmp_path / "b", resolution=16, limit=30, seed=0)
    assert a == b
    for sub in ("adapt", "holdout", "holdout_gt"):
        files_a = sorted(p.name for p in (tmp_path / "a" / sub).iterdir())
        assert files_a == sorted(p.name for p in (tmp_path / "b" / sub).iterdir())
        assert all((tmp_path / "a" / sub / f).read_bytes() == (tmp_path / "b" / sub / f).read_bytes() for f in files_a)
    counts = a["counts"]
    assert counts["adapt"] + counts["holdout"] == 30 and 6 <= counts["holdout"] <= 10
    adapt_people = {_person(p.name) for p in (tmp_path / "a" / "adapt").iterdir()}
    hold_people = {_person(p.name) for p in (tmp_path / "a" / "holdout").iterdir()}
    assert not adapt_people & hold_people
    assert sorted(p.name for p in (tmp_path / "a" / "holdout").iterdir()) == \
        sorted(p.name for p in (tmp_path / "a" / "holdout_gt").iterdir())
    assert make_demo_set(tmp_path / "c", resolution=16, limit=30, seed=1)["images"] != a["images"]


@needs_lfw
def test_evaluate_holdout_numbers(tmp_path, monkeypatch):
    from bfr.imageio import load_image, to_tensor
    from bfr.metrics import psnr, ssim
    from bfr.training.adapt import evaluate_holdout, make_demo_set

    monkeypatch.setenv("BFR_CACHE", str(tmp_path / "cache"))  # no 16-px NIQE model cached by other runs
    make_demo_set(tmp_path, resolution=16, limit=15)
    res = evaluate_holdout(torch.nn.Identity(), tmp_path)
    assert res["psnr_after"] == res["psnr_before"] and res["ssim_after"] == res["ssim_before"]
    names = sorted(p.name for p in (tmp_path / "holdout").iterdir())
    lq = torch.cat([to_tensor(load_image(tmp_path / "holdout" / n)) for n in names])
    gt = torch.cat([to_tensor(load_image(tmp_path / "holdout_gt" / n)) for n in names])
    assert res["n"] == len(names)
    assert abs(res["psnr_before"] - psnr(lq, gt).mean().item()) < 1e-4
    assert abs(res["ssim_before"] - ssim(lq, gt).mean().item()) < 1e-4
    assert res["psnr_before"] < 40  # the demo preset really degraded them

    class Oracle(torch.nn.Module):  # returns the ground truth: PSNR after is the cap
        def forward(self, x):
            return gt[: len(x)] if len(x) == len(gt) else x

    assert evaluate_holdout(Oracle(), tmp_path)["psnr_after"] > 90
    assert "niqe_after" not in res  # no NIQE model for 16-px faces ships: not fitted on the fly


@needs_lfw
def test_evaluate_holdout_reports_niqe_at_the_bundled_size(tmp_path):
    from bfr.metrics import load_niqe_model, niqe
    from bfr.training.adapt import evaluate_holdout, make_demo_set
    from bfr.training.data import list_images, read_images

    make_demo_set(tmp_path, resolution=64, limit=12)
    res = evaluate_holdout(torch.nn.Identity(), tmp_path)
    gt = read_images(list_images(tmp_path / "holdout_gt"), 64).float() / 255
    assert res["niqe_truth"] == pytest.approx(niqe(gt, load_niqe_model(64)).nanmean().item())
    assert res["niqe_after"] == res["niqe_before"]
    assert res["niqe_before"] > res["niqe_truth"] + 0.5  # camera-lowres faces look less natural than the truth


@needs_lfw
def test_card_of_a_demo_set_run_names_the_degradation_and_tabulates_the_holdout(tmp_path, tiny_compact):
    from bfr.training.adapt import AdaptConfig, adapt, make_demo_set

    make_demo_set(tmp_path / "demo", resolution=64, limit=12)
    run = tmp_path / "run"
    adapt(AdaptConfig(**{**tiny_compact, "lq_dir": str(tmp_path / "demo" / "adapt")}, out_dir=str(run),
                      eval_dir=str(tmp_path / "demo"), batch_size=2, max_steps=3, eval_every=2, sample_every=100,
                      save_every=100, gan_weight=0.0, mixed_precision="no", gen_batch_size=8, start=4, min_index=2))
    card = (run / "adapted.md").read_text()
    evals = [r for r in read_log(run) if "holdout_niqe_after" in r]
    assert [r["step"] for r in evals] == [0, 2, 3]  # step 3 is the exported weights, logged though off-schedule
    assert "the `camera-lowres` preset at 64 px, seed 0" in card
    assert "| | PSNR (dB) | SSIM | NIQE |" in card
    assert f"| degraded input | {evals[-1]['holdout_psnr_before']:.2f} |" in card
    assert f"| starting restorer (step 0) | {evals[0]['holdout_psnr_after']:.2f} |" in card
    assert f"| adapted (step 3) | {evals[-1]['holdout_psnr_after']:.2f} | {evals[-1]['holdout_ssim_after']:.4f} | " \
           f"{evals[-1]['holdout_niqe_after']:.2f} |" in card
    assert f"the truth itself scores {evals[-1]['holdout_niqe_truth']:.2f}" in card
    adapt(AdaptConfig(**{**tiny_compact, "lq_dir": str(tmp_path / "demo" / "adapt")}, out_dir=str(run),
                      eval_dir=str(tmp_path / "demo"), batch_size=2, max_steps=3, eval_every=2, sample_every=100,
                      save_every=100, gan_weight=0.0, mixed_precision="no", gen_batch_size=8, start=4, min_index=2))
    assert [r["step"] for r in read_log(run) if "holdout_niqe_after" in r] == [0, 2, 3]  # run again: no second row


def test_cli_adapts_bundles_and_restores_with_the_adapted_weights(tmp_path, tiny_compact, capsys):
    """`adapt … --bundle DIR` then `restore --method unsupervised --weights swinir64_adapted=DIR`: the
    restored face is the adapted restorer's forward pass. With --ema-decay 0 the bundle holds the
    fine-tuned weights themselves (the authors' export), not an average."""
    from safetensors.torch import load_file

    import bfr
    from bfr.cli import main
    from bfr.imageio import load_image

    run, bundle, out = tmp_path / "run", tmp_path / "bundle", tmp_path / "out"
    assert main(["adapt", tiny_compact["lq_dir"], "-o", str(run), "--restorer", tiny_compact["restorer"],
                 "--prior", tiny_compact["prior"], "--clean-dir", tiny_compact["lq_dir"], "--iters", "2",
                 "--batch-size", "2", "--gen-batch-size", "2", "--start", "6", "--min-index", "3",
                 "--precision", "no", "--ema-decay", "0", "--bundle", str(bundle)]) == 0
    config = json.loads((run / "config.json").read_text())
    assert (config["start"], config["min_index"], config["total_steps"], config["ema_decay"]) == (6, 3, 2, 0)
    card = (bundle / "swinir64_adapted.md").read_text()
    assert card.startswith("# Unsupervised BFR") and "the fine-tuned weights exported (no EMA" in card
    exported = load_file(str(bundle / "swinir64_adapted.safetensors"))
    state = load_file(str(run / "state.safetensors"))
    start = load_file(tiny_compact["restorer"])
    trained = {k[len("model.restorer."):]: v for k, v in state.items() if k.startswith("model.restorer.")}
    assert set(trained) == set(exported)
    assert any(not torch.equal(trained[k].half(), start[k].half()) for k in start)  # it was fine-tuned
    assert all(torch.equal(trained[k].half(), exported[k]) for k in exported)

    face = tmp_path / "lq" / "face_0.png"
    assert main(["restore", str(face), "-o", str(out), "--method", "unsupervised", "--aligned",
                 "--weights", f"swinir64_adapted={bundle}"]) == 0
    restored = load_image(out / "face_0_unsupervised.png")
    api = bfr.load("unsupervised", weights={"swinir64_adapted": str(bundle)}).restore(str(face), aligned=True)
    assert restored.shape == api.image.shape == load_image(face).shape
    assert np.abs(restored - api.image).max() <= 1 / 255 + 1e-6  # the CLI wrote what the API restores (8-bit)
    assert np.abs(restored - load_image(face)).mean() > 0.01  # and the adapted restorer changed the face
