"""Training loops: a few real steps on LFW faces, resumable state, exported weights that load."""

import json

import numpy as np
import pytest
import torch

from bfr.api import load_net
from bfr.errors import InputError
from bfr.paths import data_dir
from bfr.training.checkpoint import load_state, save_state
from bfr.training.ema import EMA
from bfr.weights import read_metadata

pytestmark = pytest.mark.skipif(not (data_dir() / "lfw150").is_dir(), reason="../shared/data (LFW) is not here")

TINY_UNET = dict(image_size=32, in_channels=3, model_channels=32, out_channels=6, num_res_blocks=1,
                 attention_resolutions=(8,), channel_mult=(1, 2, 2), num_head_channels=32,
                 use_scale_shift_norm=True)
TINY_SWINIR = dict(img_size=16, in_chans=3, embed_dim=16, depths=(2,), num_heads=(2,), window_size=8,
                   mlp_ratio=2, sf=2, upsampler="nearest+conv", unshuffle=True, unshuffle_scale=2, num_feat=16)


def test_prior_trains_resumes_and_exports(tmp_path):
    from bfr.training.prior import PriorConfig, train_prior

    cfg = PriorConfig(out_dir=str(tmp_path / "prior"), net=TINY_UNET, batch_size=4, max_steps=3, eval_every=3,
                      sample_every=100, save_every=100, train_images=32, mixed_precision="no", lr=1e-3)
    weights = train_prior(cfg)
    log = [json.loads(line) for line in (tmp_path / "prior" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 3 and log[-1]["heldout_loss"] > 0
    cfg.max_steps = 5
    train_prior(cfg)  # resumes at step 3, not 0
    log = [json.loads(line) for line in (tmp_path / "prior" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [3]  # eval_every=3: step 6 is never reached in 5 steps
    meta = read_metadata(weights)
    assert meta["kind"] == "prior" and json.loads(meta["steps"]) == 5
    net = load_net("prior64", weights)
    assert net.image_size == 32
    assert (tmp_path / "prior" / "samples_final.png").stat().st_size > 1000
    card = (tmp_path / "prior" / "prior64.md").read_text()
    assert "steps: 5" in card and "LFW train split" in card and "held-out" in card.lower()
    assert "A quick run on only the first 32 train faces" in card  # not passed off as a model trained on all
    own = tmp_path / "prior" / "prior64.safetensors"  # this run's file, not the bundled prior64
    assert "`python -m bfr train prior`" in card and f"--init-from {own}`" in card
    assert json.loads((tmp_path / "prior" / "config.json").read_text())["train_images_runs"] == [32]

    # The export is the EMA the log measured, and that EMA moves with training.
    from bfr.diffusion import GaussianDiffusion
    from bfr.training.common import held_out_loss
    from bfr.training.data import load_faces, split_files

    cfg.max_steps = 6
    train_prior(cfg)
    log = [json.loads(line) for line in (tmp_path / "prior" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [3, 6] and log[1]["heldout_loss"] != log[0]["heldout_loss"]
    test_faces = load_faces(split_files("test")[:256:2], 32).float() / 127.5 - 1
    exported = held_out_loss(GaussianDiffusion.create(1000, "linear", learn_sigma=True),
                             load_net("prior64", weights), test_faces)
    assert exported == pytest.approx(log[1]["heldout_loss"], rel=1e-3)  # fp16 export of the logged weights


def test_card_remembers_a_quick_start_after_a_resume_on_all_faces(tmp_path):
    from bfr.training.cards import data_note, write_run_config

    write_run_config(tmp_path, {"train_images": None, "lr": 1e-3}, resumed=False)
    assert "quick run" not in data_note(json.loads((tmp_path / "config.json").read_text()))
    write_run_config(tmp_path, {"train_images": 16, "lr": 1e-3}, resumed=True)
    write_run_config(tmp_path, {"train_images": 64, "lr": 1e-3}, resumed=True)
    write_run_config(tmp_path, {"train_images": None, "lr": 2e-4}, resumed=True)  # resumed without the flag
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["lr"] == 2e-4 and config["train_images"] is None and config["train_images_runs"] == [None, 16, 64]
    assert data_note(config).startswith("**Part of this run trained on only the first 64 train faces**")
    assert data_note({"train_images": 8}).startswith("**A quick run on only the first 8 train faces**")  # old runs
    write_run_config(tmp_path, {"train_images": None, "lr": 1e-3}, resumed=False)  # a fresh run in the old folder
    assert json.loads((tmp_path / "config.json").read_text())["train_images_runs"] == [None]


def test_backbone_training_lowers_l1(tmp_path):
    from bfr.training.backbone import BackboneConfig, train_backbone

    cfg = BackboneConfig(out_dir=str(tmp_path / "bb"), net=TINY_SWINIR, resolution=32, batch_size=8, max_steps=30,
                         eval_every=10, sample_every=100, save_every=100, train_images=64, mixed_precision="no",
                         lr=2e-3, warmup_steps=5)
    train_backbone(cfg)
    log = [json.loads(line) for line in (tmp_path / "bb" / "log.jsonl").read_text().splitlines()]
    assert log[-1]["val_psnr"] > log[0]["val_psnr"]
    assert read_metadata(tmp_path / "bb" / "swinir64.safetensors")["kind"] == "swinir"
    assert f"{log[-1]['val_psnr']:.2f} dB" in (tmp_path / "bb" / "swinir64.md").read_text()


def test_state_round_trip_restores_optimizer_moments(tmp_path):
    model = torch.nn.Linear(3, 2)
    ema = EMA(model)
    opt = torch.optim.AdamW(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    save_state(tmp_path / "s.safetensors", model, ema.model, opt, {"step": 7, "seconds": 1.5})
    model2, opt2 = torch.nn.Linear(3, 2), None
    ema2 = EMA(model2)
    opt2 = torch.optim.AdamW(model2.parameters(), lr=0.5)
    meta = load_state(tmp_path / "s.safetensors", model2, ema2.model, opt2)
    assert meta == {"step": 7, "seconds": 1.5}
    torch.testing.assert_close(model2.weight, model.weight)
    torch.testing.assert_close(opt2.state_dict()["state"][0]["exp_avg"], opt.state_dict()["state"][0]["exp_avg"])
    assert opt2.param_groups[0]["lr"] == 0.1


def test_ema_warmup_tracks_short_runs():
    ema = EMA(torch.nn.Linear(1, 1), max_decay=0.9999)
    assert ema.decay(0) == 0.0
    assert 0.98 < ema.decay(1000) < 0.995
    assert ema.decay(10**9) == 0.9999
    assert EMA(torch.nn.Linear(1, 1)).decay(10**9) == 0.999  # by default DifFace's EMA rate, reached at ~31k steps


def test_ema_averages_trainable_weights_and_leaves_frozen_ones_alone():
    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2))
    net[0].requires_grad_(False)
    ema = EMA(net, max_decay=0.5)
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    ema.update(net, step=10**6)  # decay 0.5: halfway to the trained weights
    torch.testing.assert_close(ema.model[1].weight, net[1].weight - 0.5)
    torch.testing.assert_close(ema.model[0].weight, net[0].weight - 1.0)  # frozen: untouched (not copied)


@pytest.mark.parametrize("config", ["bfr.training.prior:PriorConfig", "bfr.training.backbone:BackboneConfig",
                                    "bfr.training.idm:IDMConfig", "bfr.training.flipnet:FlipNetTrainConfig",
                                    "bfr.training.adapt:AdaptConfig"])
def test_training_configs_take_the_seeds_every_command_takes(config):
    """API users build these configs directly: a seed numpy or torch would refuse mid-run is refused at once."""
    import importlib

    module, name = config.split(":")
    cls = getattr(importlib.import_module(module), name)
    assert cls(seed=2**31 - 1).seed == 2**31 - 1
    for whole in (5.0, np.int64(5)):  # taken, and stored as the int torch's generators and JSON want
        assert type(cls(seed=whole).seed) is int and cls(seed=whole).seed == 5
    for bad in (-1, 2**31, 0.5):
        with pytest.raises(InputError, match="a seed is a whole number from 0 to 2147483647"):
            cls(seed=bad)


@pytest.mark.parametrize("what,module,fn", [("prior", "bfr.training.prior", "train_prior"),
                                            ("backbone", "bfr.training.backbone", "train_backbone")])
def test_schedule_steps_reaches_the_training_config(tmp_path, monkeypatch, what, module, fn):
    import importlib

    from bfr.cli import main
    from bfr.training.common import warmup_cosine

    seen = []
    monkeypatch.setattr(importlib.import_module(module), fn, seen.append)
    assert main(["train", what, "-o", str(tmp_path / what), "--schedule-steps", "17500"]) == 0
    assert seen[0].total_steps == 17500
    # resuming step 13,559 of the prior under it: the rate drops from 90% of the base to about a fifth
    assert warmup_cosine(13559, 2e-4, 500, 60000) > 0.85 * 2e-4 > 3.5 * warmup_cosine(13559, 2e-4, 500, 17500)
    assert main(["train", what, "-o", str(tmp_path / what)]) == 0
    assert seen[1].total_steps == {"prior": 60000, "backbone": 30000}[what]  # each default stays when not given


def test_schedule_steps_is_refused_where_it_means_nothing(tmp_path, capsys):
    from bfr.cli import main

    for what in ("idm", "flipnet"):
        assert main(["train", what, "-o", str(tmp_path / what), "--schedule-steps", "10"]) == 2
        assert (f"--schedule-steps is an option of `train prior / backbone`, not of `train {what}`"
                in capsys.readouterr().err)


def test_train_refuses_what_no_run_can_use_in_one_line(tmp_path, capsys, monkeypatch):
    """Flags of another model, counts below one, NaN minutes and --init-from files of the wrong network are
    refused before anything runs; a catalog name is taken for its file."""
    import bfr.training.prior
    from bfr.cli import main
    from bfr.paths import COMPACT_WEIGHTS_DIR

    ran = []
    monkeypatch.setattr(bfr.training.prior, "train_prior", ran.append)
    out = str(tmp_path / "run")
    cases = [
        (["train", "prior", "--lr", "1e-3"], "--lr is an option of `train flipnet`, not of `train prior`"),
        (["train", "backbone", "--embed-steps", "5"], "--embed-steps is an option of `train flipnet`"),
        (["train", "prior", "--rounds", "2"], "--rounds is an option of `train idm`, not of `train prior`"),
        (["train", "flipnet", "--init-from", "prior64"], "`train flipnet` starts from flipnet weights"),
        (["train", "flipnet", "--init-from", "flipnet64", "--embed-steps", "5"], "--embed-steps does not apply"),
        (["train", "prior", "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["train", "idm", "--rounds", "0"], "--rounds must be at least 1, got 0"),
        (["train", "prior", "--minutes", "nan"], "--minutes must be a positive number, got nan"),
        (["train", "backbone", "--init-from", "prior64"],
         "holds a prior network; `train backbone` starts from swinir weights"),
        (["train", "idm", "--init-from", "swinir64"], "`train idm` starts from idm or prior weights"),
        (["train", "prior", "--init-from", str(tmp_path / "nowhere.safetensors")], "no such file"),
        (["train", "prior", "--init-from", "difface_unet_512"],
         "`train prior` continues bfr-trained weights such as prior64, not a third-party checkpoint"),
        (["adapt", str(tmp_path), "--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["adapt", str(tmp_path), "--ema-decay", "1"], "--ema-decay must be in [0, 1), got 1.0"),
        (["adapt", str(tmp_path), "--lr", "-1"], "--lr must be a positive number, got -1.0"),
    ]
    for argv, message in cases:
        assert main([*argv, "-o", out]) == 2, argv
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert ran == [] and not (tmp_path / "run").exists()
    assert main(["train", "prior", "-o", out, "--init-from", "prior64", "--steps", "5", "--train-images", "8"]) == 0
    assert ran[0].init_from == str(COMPACT_WEIGHTS_DIR / "prior64.safetensors") and ran[0].max_steps == 5
    assert ran[0].train_images == 8
    assert main(["train", "prior", "-o", out, "--card-faces", "4"]) == 2
    assert "--card-faces is an option of `train flipnet`" in capsys.readouterr().err


def test_a_start_from_another_networks_weights_is_a_readable_error(tmp_path):
    from bfr.training.checkpoint import resume_or_init
    from bfr.weights.load import StateDictMismatchError, save_safetensors

    net = torch.nn.Conv2d(3, 4, 3)
    other = save_safetensors(torch.nn.Conv2d(3, 8, 3).state_dict(), tmp_path / "other.safetensors")
    ema = EMA(net)
    with pytest.raises(StateDictMismatchError, match="weight: file \\[8, 3, 3, 3\\] vs model \\[4, 3, 3, 3\\]"):
        resume_or_init(tmp_path / "state.safetensors", net, ema.model, torch.optim.AdamW(net.parameters()), str(other))


def test_rewarm_ramps_the_rate_only_for_fresh_optimizer_moments():
    from bfr.training.common import rewarm

    # started from exported weights at step 10,500 with a new AdamW: 1%, 50%, then the full rate
    assert rewarm(10_500, 10_500) == pytest.approx(0.01)
    assert rewarm(10_549, 10_500) == pytest.approx(0.5)
    assert rewarm(10_700, 10_500) == 1.0
    # a resumed optimizer (None) or a start from scratch (step 0, the schedule's own warm-up) is left alone
    assert rewarm(10_500, None) == rewarm(3, 0) == 1.0


def test_tune_for_cuda_turns_on_autotuning_only_where_cuda_is(monkeypatch):
    import torch

    from bfr.training.common import tune_for_cuda

    backends = torch.backends
    saved = (backends.cudnn.benchmark, backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32)
    try:
        backends.cudnn.benchmark = backends.cuda.matmul.allow_tf32 = False
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        tune_for_cuda()
        assert backends.cudnn.benchmark is False and not backends.cuda.matmul.allow_tf32  # CPU runs: untouched
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        tune_for_cuda()
        assert backends.cudnn.benchmark is True and backends.cuda.matmul.allow_tf32
    finally:
        backends.cudnn.benchmark, backends.cudnn.allow_tf32, backends.cuda.matmul.allow_tf32 = saved


def test_a_resumed_run_draws_new_batches_not_the_first_sessions():
    """Every CPU session resumes a run: reseeding from (seed, step) keeps it from replaying the first
    session's batches, timesteps and noise; a fresh run (step 0) draws exactly as before."""
    from bfr.training.common import reseed
    from bfr.training.data import FaceBatches

    faces = torch.arange(64, dtype=torch.uint8).view(64, 1, 1, 1).expand(64, 3, 2, 2).contiguous()

    def first_batch(step):
        torch.manual_seed(0)
        batches = FaceBatches(faces, 8, seed=0, flip=False)
        reseed(0, step, batches.generator)
        return batches.next()[:, 0, 0, 0], torch.rand(3)

    fresh, again, resumed = first_batch(0), first_batch(0), first_batch(500)
    assert torch.equal(fresh[0], again[0]) and torch.equal(fresh[1], again[1])
    assert not torch.equal(fresh[0], resumed[0]) and not torch.equal(fresh[1], resumed[1])
    torch.manual_seed(0)
    assert torch.equal(FaceBatches(faces, 8, seed=0, flip=False).next()[:, 0, 0, 0], fresh[0])  # as before


def test_a_second_stop_signal_acts_at_once():
    import signal

    from bfr.training.common import StopSignal

    before = signal.getsignal(signal.SIGINT)
    stop = StopSignal()
    assert not stop and signal.getsignal(signal.SIGINT) == stop._request
    stop._request(signal.SIGINT, None)  # the first Ctrl-C: stop after this step, save
    assert stop and signal.getsignal(signal.SIGINT) == before  # the next one reaches Python as usual


def test_trainers_give_the_signal_handlers_back_when_they_end():
    """A trainer's StopSignal must not swallow the next Ctrl-C of what runs after it (a card's measurement)."""
    import signal

    from bfr.training import adapt, backbone, flipnet, idm, prior
    from bfr.training.common import StopSignal, gives_back_signals

    @gives_back_signals
    def trainer(fail: bool):
        StopSignal()
        if fail:
            raise RuntimeError("stopped by a bug")

    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    trainer(False)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    with pytest.raises(RuntimeError):
        trainer(True)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    for run in (adapt.adapt, backbone.train_backbone, flipnet.train_flipnet, idm.train_idm, prior.train_prior):
        assert run.__wrapped__ and run.__code__ is trainer.__code__, run.__name__  # each one is wrapped


def test_settings_changed_on_resume_are_kept_per_resume(tmp_path):
    from bfr.training.cards import changes_line, settings_changes

    def invoke(step, **config):
        config = {"lr": 1e-4, "batch_size": 16, "max_steps": None, "net": (1, 2), **config}
        config["changes"] = settings_changes(tmp_path, config, step)
        (tmp_path / "config.json").write_text(json.dumps(config))
        return config["changes"]

    assert invoke(0) == []
    assert invoke(0, lr=5e-5) == []  # a fresh start: nothing to compare with
    assert invoke(500, lr=5e-5, max_steps=900) == []  # when to stop is not a setting; a tuple read back is equal
    assert invoke(900, lr=2e-5) == [{"step": 900, "lr": [5e-5, 2e-5]}]
    assert invoke(1200, lr=2e-5, batch_size=32) == [{"step": 900, "lr": [5e-5, 2e-5]},
                                                     {"step": 1200, "batch_size": [16, 32]}]
    # resumed twice at one step: one entry from the first value, and a change undone leaves none
    assert invoke(1400, lr=1e-5, batch_size=32) == [{"step": 900, "lr": [5e-5, 2e-5]},
                                                    {"step": 1200, "batch_size": [16, 32]}, {"step": 1400,
                                                                                              "lr": [2e-5, 1e-5]}]
    assert invoke(1400, lr=3e-5, batch_size=32)[-1] == {"step": 1400, "lr": [2e-5, 3e-5]}
    assert len(invoke(1400, lr=2e-5, batch_size=32)) == 2
    line = changes_line(invoke(1500, lr=2e-5, batch_size=32))
    assert line.endswith("at step 900: lr 5e-05 → 2e-05; at step 1,200: batch_size 16 → 32")
    assert changes_line([]) is None
