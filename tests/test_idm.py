"""IDM: the conditional sampler on tiny random networks, its LQ wiring checked with an oracle, and the
extrinsic rounds (clean the training set, retrain) on a few LFW faces."""

import json

import pytest
import torch

from bfr.diffusion import GaussianDiffusion
from bfr.errors import InputError, WeightsUnavailableError
from bfr.methods.idm import COMPACT_STEPS, IDM, paper_net, prediction_of
from bfr.nets import UNetModel
from bfr.paths import data_dir
from bfr.weights import read_metadata

TINY = dict(image_size=16, in_channels=6, model_channels=32, out_channels=3, num_res_blocks=1,
            attention_resolutions=(8,), channel_mult=(1, 2), num_head_channels=32, use_scale_shift_norm=True)


def tiny_net(seed=0, **overrides):
    """Non-zero random weights everywhere (the UNet zero-initialises its output conv)."""
    torch.manual_seed(seed)
    net = UNetModel(**{**TINY, **overrides})
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return net


def make(net=None, resolution=16):
    return IDM(net or tiny_net(), resolution=resolution, framing="lfw", tier="compact", device=torch.device("cpu"))


@pytest.mark.parametrize("sampler", ["ddim", "ancestral"])
def test_output_depends_on_the_lq_and_is_reproducible(sampler):
    model = make()
    a, b = torch.rand(2, 1, 3, 16, 16)
    out_a = model.restore(a, steps=8, sampler=sampler, seed=5)
    torch.testing.assert_close(model.restore(a, steps=8, sampler=sampler, seed=5), out_a)
    out_b = model.restore(b, steps=8, sampler=sampler, seed=5)
    assert (out_a - out_b).abs().mean() > 1e-3


def test_restore_returns_the_input_size_in_unit_range():
    out = make().restore(torch.rand(2, 3, 24, 20), steps=5, seed=0)
    assert out.shape == (2, 3, 24, 20) and out.device.type == "cpu"
    assert out.min() >= 0 and out.max() <= 1


class OracleNet(torch.nn.Module):
    """Knows that the answer is the LQ itself: predicts the exact ε of x_t around it, and records its calls."""

    in_channels = 6

    def __init__(self, prediction="eps"):
        super().__init__()
        self.alphas_cumprod = torch.from_numpy(GaussianDiffusion.create(1000).alphas_cumprod).float()
        self.prediction = prediction
        self.calls = []

    def forward(self, x, t, lq=None):
        self.calls.append((t.clone(), None if lq is None else lq.clone()))
        ab = self.alphas_cumprod[t].view(-1, 1, 1, 1)
        eps = (x - ab.sqrt() * lq) / (1 - ab).sqrt()
        return eps if self.prediction == "eps" else ab.sqrt() * eps - (1 - ab).sqrt() * lq


@pytest.mark.parametrize("sampler", ["ddim", "ancestral"])
def test_sampler_passes_the_resized_lq_to_every_step(sampler):
    oracle = OracleNet()
    model = make(oracle, resolution=16)
    lq = torch.rand(2, 3, 16, 16)
    out = model.restore(lq, steps=7, sampler=sampler, seed=1)
    assert len(oracle.calls) == 7
    ts = [int(t[0]) for t, _ in oracle.calls]
    assert ts[0] == 999 and ts[-1] == 0 and ts == sorted(ts, reverse=True)  # original-scale timesteps
    for _, seen in oracle.calls:
        torch.testing.assert_close(seen, lq * 2 - 1)  # the LQ, in [-1, 1], at every step
    torch.testing.assert_close(out, lq, atol=1e-5, rtol=0)  # an exact ε gives back the face it knows


@pytest.mark.parametrize("sampler", ["ddim", "ancestral"])
def test_v_prediction_is_read_as_v(sampler):
    lq = torch.rand(2, 3, 16, 16)
    v_model = IDM(OracleNet("v"), resolution=16, framing="lfw", tier="compact", device=torch.device("cpu"),
                  prediction="v")
    torch.testing.assert_close(v_model.restore(lq, steps=7, sampler=sampler, seed=1), lq, atol=1e-5, rtol=0)
    net = tiny_net()  # the same network outputs read as ε or as v give other faces: the flag is used
    as_v = IDM(net, resolution=16, framing="lfw", tier="compact", device=torch.device("cpu"), prediction="v")
    assert (as_v.restore(lq, steps=7, sampler=sampler, seed=1)
            - make(net).restore(lq, steps=7, sampler=sampler, seed=1)).abs().mean() > 0.05
    with pytest.raises(InputError, match="prediction"):
        IDM(OracleNet(), resolution=16, framing="lfw", tier="compact", device=torch.device("cpu"), prediction="x0")


def test_keeps_the_ddim_eps_of_its_measurements(monkeypatch):
    """IDM samples with guided-diffusion's DDIM step (ε from the clipped x̂0), the one its defaults and
    card were measured with; DifFace uses its authors' current step (the network's own ε)."""
    import bfr.methods.idm as idm_module

    seen = []
    monkeypatch.setattr(idm_module, "sample", lambda *a, **kw: seen.append(kw["ddim_eps"]) or a[2])
    make().restore(torch.rand(1, 3, 16, 16), steps=2)
    assert seen == ["clipped"]


class TintedOracle(OracleNet):
    """The oracle's face at half its contrast and shifted in colour (the drift of samples drawn from pure noise)."""

    def forward(self, x, t, lq=None):
        mean = lq.mean((2, 3), keepdim=True)
        return super().forward(x, t, mean + 0.5 * (lq - mean) - torch.tensor([0.2, -0.3, 0.1]).view(1, 3, 1, 1))


def test_colour_fix_gives_each_face_the_lq_mean_colour_and_keeps_its_own_contrast():
    lq = torch.rand(2, 3, 16, 16) * 0.5 + 0.25
    model = make(TintedOracle(), resolution=16)
    raw = model.restore(lq, steps=5, color_fix=False, seed=0)
    fixed = model.restore(lq, steps=5, seed=0)  # on by default
    assert model.defaults["color_fix"] is True
    shift = lambda out: (out - lq).mean((2, 3))  # noqa: E731
    torch.testing.assert_close(shift(raw), torch.tensor([[-0.1, 0.15, -0.05]] * 2), atol=2e-3, rtol=0)
    torch.testing.assert_close(shift(fixed), torch.zeros(2, 3), atol=1e-5, rtol=0)
    # the mean moved, the spread did not: half the LQ's, as sampled (matching the spread too would double it)
    torch.testing.assert_close(fixed.std((2, 3)), raw.std((2, 3)), atol=1e-5, rtol=0)
    torch.testing.assert_close(fixed.std((2, 3)), 0.5 * lq.std((2, 3)), atol=1e-4, rtol=0)


def test_lq_is_resized_to_the_model_size_and_back():
    oracle = OracleNet()
    lq = torch.rand(1, 3, 32, 32)
    out = make(oracle, resolution=16).restore(lq, steps=3, seed=0)
    assert oracle.calls[0][1].shape == (1, 3, 16, 16) and out.shape == (1, 3, 32, 32)


def test_rejects_bad_inputs_and_knobs():
    model = make()
    for kwargs in (dict(steps=0), dict(steps=1), dict(steps=2.5), dict(steps=1001), dict(sampler="euler"),
                   dict(eta=1.5)):
        with pytest.raises(InputError):
            model.restore(torch.rand(1, 3, 16, 16), **kwargs)
    with pytest.raises(InputError):
        model.restore(torch.rand(1, 3, 16, 16) * 255)
    with pytest.raises(InputError, match="6 input channels"):
        make(UNetModel(**{**TINY, "in_channels": 3}))


def test_chain_lengths_are_whole_numbers_from_2_to_1000():
    import numpy as np

    from bfr.methods.base import check_steps

    assert check_steps(np.int64(10)) == check_steps(10.0) == 10  # numpy and float whole numbers pass
    for bad in (1, 1001, 2.5, float("nan"), float("inf"), True, "10"):
        with pytest.raises(InputError, match=r"steps must lie in \[2, 1000\]"):
            check_steps(bad)


def test_progress_reports_every_step():
    calls = []
    make().restore(torch.rand(1, 3, 16, 16), steps=4, progress=lambda d, t: calls.append((d, t)))
    assert calls == [(i, 4) for i in range(1, 5)]


def test_each_tier_has_its_own_default_chain():
    compact = make()
    paper = IDM(tiny_net(), resolution=16, framing="ffhq", tier="paper", device=torch.device("cpu"))
    assert compact.defaults["steps"] == COMPACT_STEPS and paper.defaults["steps"] == 100
    assert IDM.defaults["steps"] == 100  # the class keeps SR3's; an instance its tier's
    calls = []
    lq = torch.rand(1, 3, 16, 16)
    out = compact.restore(lq, progress=lambda done, total: calls.append(total))
    assert calls[-1] == COMPACT_STEPS
    torch.testing.assert_close(out, compact.restore(lq, steps=COMPACT_STEPS))


def test_cleaning_made_with_other_settings_is_not_reused(tmp_path, capsys):
    from bfr.training.idm import IDMConfig, clean_faces

    faces = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8)
    path = tmp_path / "cleaned.safetensors"
    two = clean_faces(make(), faces, path, IDMConfig(clean_batch=4, clean_steps=2), stop=False)
    again = clean_faces(make(), faces, path, IDMConfig(clean_batch=4, clean_steps=2), stop=False)
    assert "using cleaned faces" in capsys.readouterr().out
    torch.testing.assert_close(again, two)
    three = clean_faces(make(), faces, path, IDMConfig(clean_batch=4, clean_steps=3), stop=False)
    assert "other settings" in capsys.readouterr().out
    assert not torch.equal(three, two)
    torch.testing.assert_close(three, clean_faces(make(), faces, tmp_path / "b.safetensors",
                                                  IDMConfig(clean_batch=4, clean_steps=3), stop=False))
    # an interrupted 2-step cleaning is not resumed by a 3-step one (that would mix the two)
    part = tmp_path / "c.safetensors"
    assert clean_faces(make(), faces, part, IDMConfig(clean_batch=4, clean_steps=2), stop=True) is None
    capsys.readouterr()
    torch.testing.assert_close(clean_faces(make(), faces, part, IDMConfig(clean_batch=4, clean_steps=3), stop=False),
                               three)
    assert "starting the cleaning over" in capsys.readouterr().out


def test_paper_tier_without_a_file_says_what_is_missing(tmp_path, monkeypatch):
    monkeypatch.setenv("BFR_WEIGHTS_DIR", str(tmp_path))
    monkeypatch.setenv("BFR_CACHE", str(tmp_path))
    with pytest.raises(WeightsUnavailableError, match="idm_unet_512") as err:
        paper_net()
    assert "no weights" in str(err.value) and "--weights idm_unet_512=PATH" in str(err.value)
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        paper_net(tmp_path / "missing.safetensors")


def test_paper_tier_reads_what_its_weights_predict(tmp_path, monkeypatch):
    """A 512-px IDM trained by bfr (v-prediction by default) is decoded as v; a bare .pth as SR3's ε."""
    import bfr.methods.idm as idm_module
    from bfr.api import load
    from bfr.training.common import export_weights

    monkeypatch.setattr(idm_module, "IDM_UNET_512", TINY)  # the real 512-px UNet is ~175M parameters
    net = tiny_net()
    v_file = export_weights(net, TINY, tmp_path / "idm_v.safetensors", "idm", extra={"prediction": "v"})
    torch.save(net.state_dict(), tmp_path / "idm.pth")
    assert paper_net(v_file)[1] == "v" and paper_net(tmp_path / "idm.pth")[1] == "eps"
    restorer = load("idm", "paper", device="cpu", weights={"idm_unet_512": str(v_file)})
    assert restorer.model.prediction == "v"
    torch.testing.assert_close(restorer.model.net.state_dict()["out.2.weight"],
                               net.state_dict()["out.2.weight"].half().float())


@pytest.mark.skipif(not (data_dir() / "lfw150").is_dir(), reason="../shared/data (LFW) is not here")
def test_two_rounds_clean_the_data_and_record_metrics(tmp_path):
    from bfr.training.idm import IDMConfig, load_idm_net, train_idm

    net = dict(TINY, image_size=16)
    cfg = IDMConfig(out_dir=str(tmp_path / "idm"), net=net, rounds=1, steps_per_round=3, refine_steps=2,
                    batch_size=4, train_images=12, val_images=4, val_steps=3, clean_steps=2, clean_batch=8,
                    eval_every=2, sample_every=100, save_every=100, preview_steps=2, mixed_precision="no",
                    warmup_steps=1, lr=1e-3)
    assert train_idm(cfg) is not None
    run = tmp_path / "idm"
    assert [r["round"] for r in json.loads((run / "rounds.json").read_text())] == [0]
    assert "round 0 only" in (run / "idm64.md").read_text()
    cfg.rounds = 2  # round 0 is done: a rerun goes straight to cleaning and round 1
    final = train_idm(cfg)

    rounds = json.loads((run / "rounds.json").read_text())
    assert [r["round"] for r in rounds] == [0, 1]
    assert [r["steps"] for r in rounds] == [3, 2]
    assert rounds[1]["targets"] == "cleaned by round 0"
    for r in rounds:
        assert 0 < r["psnr"] < 100 and -1 <= r["ssim"] <= 1 and r["psnr_input"] > 0
        meta = read_metadata(run / f"round{r['round']}" / "idm64.safetensors")
        assert meta["kind"] == "idm" and json.loads(meta["round"]) == r["round"]
        assert (run / f"round{r['round']}" / "samples.png").stat().st_size > 200
    log = [json.loads(line) for line in (run / "round1" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 2 and log[-1]["heldout_loss"] > 0

    from safetensors.torch import load_file

    cleaned = load_file(str(run / "round1" / "cleaned.safetensors"))["faces"]
    assert cleaned.dtype == torch.uint8 and cleaned.shape == (12, 3, 16, 16)
    assert not (run / "round1" / "cleaned.safetensors.partial").exists()
    assert read_metadata(run / "round1" / "cleaned.safetensors")["degradation"] == "mild"

    assert final == run / "idm64.safetensors" and (run / "idm64.md").is_file()
    card = (run / "idm64.md").read_text()
    assert "| 0 | lfw | 3 |" in card and "| 1 | cleaned by round 0 | 2 |" in card
    assert "round 0 only" not in card
    restored = make(load_idm_net(final)).restore(torch.rand(1, 3, 16, 16), steps=2)
    assert restored.shape == (1, 3, 16, 16)

    import bfr

    loaded = bfr.load("idm", weights={"idm64": str(final)}, device="cpu")  # the file says what it predicts
    assert loaded.model.prediction == "v" and loaded.model.resolution == 16


@pytest.mark.skipif(not (data_dir() / "lfw150").is_dir(), reason="../shared/data (LFW) is not here")
def test_training_lowers_the_held_out_conditional_loss(tmp_path):
    from bfr.training.idm import IDMConfig, train_idm

    cfg = IDMConfig(out_dir=str(tmp_path / "idm"), net=TINY, rounds=1, steps_per_round=40, batch_size=8,
                    train_images=64, val_images=16, val_steps=2, eval_every=10, sample_every=1000, save_every=1000,
                    mixed_precision="no", lr=2e-3, warmup_steps=5)
    train_idm(cfg)
    log = [json.loads(line) for line in (tmp_path / "idm" / "round0" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [10, 20, 30, 40]
    assert log[-1]["heldout_loss"] < 0.85 * log[0]["heldout_loss"]  # measured 0.74× (v-prediction)


def test_interrupted_cleaning_resumes_to_the_same_faces(tmp_path):
    from bfr.training.idm import IDMConfig, clean_faces

    class StopAfter:
        def __init__(self, n):
            self.n = n

        def __bool__(self):
            self.n -= 1
            return self.n < 0

    faces = torch.randint(0, 256, (10, 3, 16, 16), dtype=torch.uint8)
    cfg = IDMConfig(clean_batch=4, clean_steps=2)
    whole = clean_faces(make(), faces, tmp_path / "a" / "cleaned.safetensors", cfg, StopAfter(10**6))
    path = tmp_path / "b" / "cleaned.safetensors"
    assert clean_faces(make(), faces, path, cfg, StopAfter(1)) is None  # stops after the second chunk
    assert path.with_name(path.name + ".partial").is_file() and not path.exists()
    resumed = clean_faces(make(), faces, path, cfg, StopAfter(10**6))
    assert resumed.dtype == torch.uint8 and resumed.shape == faces.shape
    torch.testing.assert_close(resumed, whole)
    assert path.is_file() and not path.with_name(path.name + ".partial").exists()
    last = tmp_path / "c" / "cleaned.safetensors"  # a stop that comes with the last chunk: nothing is left to do
    torch.testing.assert_close(clean_faces(make(), faces, last, cfg, StopAfter(2)), whole)
    assert last.is_file() and not last.with_name(last.name + ".partial").exists()


def test_a_face_prior_starts_idm_as_its_own_eps_predictor():
    from bfr.training.idm import prior_to_idm

    prior = tiny_net(seed=3, in_channels=3, out_channels=6)  # learned-variance head: [ε, v]
    idm = UNetModel(**TINY)
    idm.load_state_dict(prior_to_idm(prior.state_dict(), TINY))
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([10, 700])
    with torch.no_grad():
        eps = prior(x, t)[:, :3]
        for lq in (torch.zeros(2, 3, 16, 16), torch.randn(2, 3, 16, 16)):
            torch.testing.assert_close(idm(x, t, lq=lq), eps)  # the LQ channels start at zero weight
    with pytest.raises(InputError, match="cannot start an IDM net"):
        prior_to_idm(prior.state_dict(), dict(TINY, out_channels=8))


@pytest.mark.skipif(not (data_dir() / "lfw150").is_dir(), reason="../shared/data (LFW) is not here")
def test_round_zero_starts_from_a_prior_file(tmp_path):
    from bfr.training.common import export_weights
    from bfr.training.idm import IDMConfig, load_idm_net, prior_to_idm, train_idm

    prior_cfg = dict(TINY, in_channels=3, out_channels=6)
    prior = tiny_net(seed=5, **prior_cfg)
    prior_file = export_weights(prior, prior_cfg, tmp_path / "prior.safetensors", kind="prior")
    cfg = IDMConfig(out_dir=str(tmp_path / "idm"), net=TINY, rounds=1, steps_per_round=1, batch_size=2,
                    train_images=4, val_images=2, val_steps=2, eval_every=100, sample_every=100, save_every=100,
                    mixed_precision="no", lr=0.0, warmup_steps=1, init_from=str(prior_file))
    final = train_idm(cfg)  # lr 0: the exported round-0 net is exactly the converted prior
    expected = prior_to_idm({k: v.float() for k, v in prior.half().state_dict().items()}, TINY)
    got = load_idm_net(final).state_dict()
    for name, value in expected.items():
        torch.testing.assert_close(got[name], value.half().float(), msg=name)
    assert "face prior" in (tmp_path / "idm" / "idm64.md").read_text()
    assert prediction_of(final) == "v" and "v-prediction" in (tmp_path / "idm" / "idm64.md").read_text()
    cfg.prediction = "eps"  # a run folder keeps its parameterisation
    with pytest.raises(InputError, match="predicts 'v'"):
        train_idm(cfg)
    cfg.out_dir, cfg.init_from = str(tmp_path / "from_v"), str(final)  # so does a start from v weights
    with pytest.raises(InputError, match="predicts 'v'; this run predicts 'eps'"):
        train_idm(cfg)
    cfg.out_dir, cfg.prediction = str(tmp_path / "continued"), "v"  # a continuation's card names what it continues
    continued = train_idm(cfg)
    card = (tmp_path / "continued" / "idm64.md").read_text()
    assert f"started from: the IDM weights `{final.name}` (round 0, 1 steps, " in card and "trained on lfw)" in card
    assert json.loads(read_metadata(continued)["steps"]) == 2  # its file counts the steps behind it, in all runs
    cfg.out_dir, cfg.init_from = str(tmp_path / "again"), str(continued)
    train_idm(cfg)
    assert f"IDM weights `{continued.name}` (round 0, 2 steps, " in (tmp_path / "again" / "idm64.md").read_text()


def test_cli_train_idm_passes_its_options(monkeypatch, tmp_path, capsys):
    import bfr.training.idm as training
    from bfr.cli import main

    seen = []
    monkeypatch.setattr(training, "train_idm", lambda cfg: seen.append(cfg))  # returns None: "stopped"
    assert main(["train", "idm", "-o", str(tmp_path / "run"), "--rounds", "2", "--steps-per-round", "50",
                 "--refine-steps", "20", "--clean-steps", "25", "--init-from", "scratch", "--minutes", "3"]) == 0
    cfg = seen[0]
    assert (cfg.rounds, cfg.steps_per_round, cfg.refine_steps, cfg.clean_steps) == (2, 50, 20, 25)
    assert cfg.init_from is None and cfg.max_minutes == 3 and cfg.out_dir == str(tmp_path / "run")
    assert "run the same command again to resume" in capsys.readouterr().out
    assert main(["train", "idm", "-o", str(tmp_path / "run"), "--steps", "5"]) == 2  # rounds, not steps
    assert "--steps-per-round" in capsys.readouterr().err
