"""`python -m bfr`: subcommands work end to end and bad input is one line on stderr with exit code 2."""

import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from bfr.api import method_status
from bfr.cli import main
from bfr.paths import COMPACT_WEIGHTS_DIR, REPO_DIR, data_dir

LFW = data_dir() / "lfw150"


def run(*args):
    return subprocess.run([sys.executable, "-m", "bfr", *args], cwd=REPO_DIR, capture_output=True, text=True,
                          timeout=600, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "2"})


def test_help_lists_subcommands():
    out = run("--help")
    assert out.returncode == 0
    for cmd in ("methods", "degrade", "restore", "train"):
        assert cmd in out.stdout


def test_methods_reports_each_method_and_tier(capsys):
    assert main(["methods"]) == 0
    text = capsys.readouterr().out
    for name in ("difface", "unsupervised", "idm", "flipnet"):
        assert name in text
    assert "paper" in text and "compact" in text
    assert "downloads are off" in text or "not downloaded" in text or "ready" in text
    from bfr.methods.difface import COMPACT_START_STEP, PAPER_START_STEP

    difface = text.split("unsupervised ")[0]  # each tier's own defaults, as restore uses them
    assert f"start_step={COMPACT_START_STEP}," in difface and f"start_step={PAPER_START_STEP}," in difface
    # each weights file under its tier, with the terms it comes under (DifFace's checkpoints: non-commercial)
    assert "difface_unet_512: DifFace's unconditional FFHQ-512" in difface
    assert difface.count("License: NTU S-Lab License 1.0 (non-commercial).") == 2
    assert "sd21_vae: Stable Diffusion 2.1-base VAE" in text and "License: CreativeML Open RAIL++-M." in text


@pytest.mark.skipif(not LFW.is_dir(), reason="../shared/data (LFW) is not here")
def test_degrade_writes_seeded_variants(tmp_path):
    face = LFW / "Aaron_Sorkin_0001.jpg"
    assert main(["degrade", str(face), "-o", str(tmp_path / "a"), "--variants", "2", "--seed", "5"]) == 0
    assert main(["degrade", str(face), "-o", str(tmp_path / "b"), "--variants", "2", "--seed", "5"]) == 0
    a = [np.asarray(Image.open(p)) for p in sorted((tmp_path / "a").glob("*.png"))]
    b = [np.asarray(Image.open(p)) for p in sorted((tmp_path / "b").glob("*.png"))]
    assert len(a) == 2 and a[0].shape == (150, 150, 3)
    assert np.array_equal(a[0], b[0]) and not np.array_equal(a[0], a[1])


def test_bad_input_is_one_line_and_exit_2(tmp_path):
    bogus = tmp_path / "notes.png"
    bogus.write_text("not an image")
    out = run("degrade", str(bogus), "-o", str(tmp_path))
    assert out.returncode == 2
    assert out.stderr.strip().startswith("error:") and len(out.stderr.strip().splitlines()) == 1
    out = run("restore", str(tmp_path / "missing.jpg"), "-o", str(tmp_path), "--method", "nope")
    assert out.returncode == 2 and "unknown method" in out.stderr


def test_an_upscale_that_is_not_a_number_is_one_line(tmp_path, capsys):
    face = _face(tmp_path / "face.png")
    for value in ("nan", "inf", "0"):
        assert main(["restore", str(face), "-o", str(tmp_path / "out"), "--upscale", value, "--aligned"]) == 2
        err = capsys.readouterr().err
        assert f"upscale must be a positive number, got {float(value)}" in err and len(err.strip().splitlines()) == 1
    assert not list((tmp_path / "out").glob("*.png"))


def test_paper_tier_offline_fails_fast_with_instructions(tmp_path):
    img = tmp_path / "face.png"
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(img)
    out = run("restore", str(img), "-o", str(tmp_path), "--tier", "paper", "--aligned")
    assert out.returncode == 2
    assert "iddpm_ffhq512_ema500000.pth" in out.stderr and "BFR_WEIGHTS_DIR" in out.stderr


@pytest.mark.skipif(not method_status("difface", "compact")[0], reason="compact DifFace weights are not bundled")
@pytest.mark.skipif(not (data_dir() / "real-lq").is_dir(), reason="../shared/data (real-lq) is not here")
def test_restore_real_photo_writes_output_and_faces(tmp_path):
    photo = data_dir() / "real-lq" / "whole_imgs" / "00.jpg"
    faces = tmp_path / "faces"
    faces.mkdir()
    # crops of an earlier run that found more faces in 00.jpg (this method's go; another method's pairs, another
    # photo's and other files stay), and a stale pair this run overwrites
    for name in ("00_difface_05_input", "00_difface_05_restored", "00_difface_07_restored", "00_idm_06_input",
                 "00_idm_06_restored", "00_01_difface_00_restored", "00_difface_01_input", "notes"):
        _face(faces / f"{name}.png", value=7)
    out = run("restore", str(photo), "-o", str(tmp_path), "--steps", "50", "--start-step", "20", "--save-faces")
    assert out.returncode == 0, out.stderr
    restored = np.asarray(Image.open(tmp_path / "00_difface.png"))
    assert restored.shape == np.asarray(Image.open(photo)).shape
    assert "restored 2 faces" in out.stdout.lower()
    assert sorted(p.stem for p in faces.glob("*.png")) == [
        "00_01_difface_00_restored", "00_difface_00_input", "00_difface_00_restored", "00_difface_01_input",
        "00_difface_01_restored", "00_idm_06_input", "00_idm_06_restored", "notes"]
    for i in range(2):  # this run's pairs: the photo's crop and its restoration, not the stale flat files
        before = np.asarray(Image.open(faces / f"00_difface_{i:02d}_input.png"), np.float32)
        after = np.asarray(Image.open(faces / f"00_difface_{i:02d}_restored.png"), np.float32)
        assert before.shape == after.shape == (64, 64, 3) and before.std() > 10 and after.std() > 10
        assert np.abs(before - after).mean() < 40  # the same face


@pytest.mark.skipif(not method_status("difface", "compact")[0], reason="compact DifFace weights are not bundled")
@pytest.mark.skipif(not LFW.is_dir(), reason="../shared/data (LFW) is not here")
def test_eval_offset_scores_faces_kept_apart(tmp_path, capsys):
    import json

    from bfr.evaluation import build_test_set

    assert main(["eval", "-o", str(tmp_path), "--methods", "difface", "--n-images", "2", "--offset", "5",
                 "--steps", "6", "--start-steps", "3", "--batch-size", "2", "--device", "cpu"]) == 0
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["settings"]["offset"] == 5 and (tmp_path / "testset_r64_n2_s0_o5.npz").is_file()
    assert report["test_set"]["images"] == build_test_set(7, 64, seed=0).names[5:]
    assert "after the first 5" in (tmp_path / "results.md").read_text()
    assert "DifFace N=3" in {r["label"] for r in report["rows"]}


def _face(path, value=128):
    Image.fromarray(np.full((64, 64, 3), value, np.uint8)).save(path)
    return path


needs_adapted = pytest.mark.skipif(not method_status("unsupervised", "compact")[0],
                                   reason="swinir64_adapted is not bundled")


def test_output_path_that_is_a_file_fails_before_any_work(tmp_path, capsys):
    img, taken = _face(tmp_path / "face.png"), tmp_path / "taken"
    taken.write_text("keep me")
    for cmd in (["restore", str(img), "-o", str(taken), "--aligned"], ["degrade", str(img), "-o", str(taken)],
                ["restore", str(img), "-o", str(taken / "sub"), "--aligned"], ["eval", "-o", str(taken)],
                ["bench", "-o", str(taken)], ["demo-set", str(taken)], ["adapt", str(tmp_path), "-o", str(taken)],
                *(["train", what, "-o", str(taken), "--steps", "1"] for what in ("prior", "backbone", "flipnet")),
                ["train", "idm", "-o", str(taken)]):
        assert main(cmd) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and ("is a file" in err or "cannot make" in err), err
    assert taken.read_text() == "keep me"


def test_lpips_weight_reaches_adapt_and_flipnet_and_zero_turns_the_term_off(tmp_path, capsys, monkeypatch):
    """--lpips-weight 0 is how a run on a networked machine keeps the recipe without fetching VGG16 (528 MB)."""
    import bfr.training.adapt
    import bfr.training.flipnet
    from bfr.cli import build_parser
    from bfr.training.adapt import AdaptConfig
    from bfr.training.common import perceptual_loss
    from bfr.training.flipnet import FlipNetTrainConfig

    seen = {}
    monkeypatch.setattr(bfr.training.adapt, "adapt", lambda cfg: seen.setdefault("adapt", cfg))
    monkeypatch.setattr(bfr.training.flipnet, "train_flipnet", lambda cfg, **k: seen.setdefault("flipnet", cfg))
    monkeypatch.setattr(bfr.training.flipnet, "write_flipnet_card", lambda *a, **k: tmp_path / "card.md")
    clean = tmp_path / "clean"
    clean.mkdir()
    main(["adapt", str(clean), "-o", str(tmp_path / "a"), "--lpips-weight", "0"])
    main(["train", "flipnet", "-o", str(tmp_path / "f"), "--lpips-weight", "0", "--steps", "1"])
    assert seen["adapt"].lpips_weight == 0 and seen["flipnet"].lpips_weight == 0
    assert perceptual_loss(0, torch.device("cpu")) == (None, "LPIPS weight is 0: not used")
    capsys.readouterr()
    assert main(["train", "prior", "-o", str(tmp_path / "p"), "--lpips-weight", "1"]) == 2
    assert "--lpips-weight is an option of `train flipnet`" in capsys.readouterr().err
    assert main(["adapt", str(clean), "-o", str(tmp_path / "b"), "--lpips-weight", "-1"]) == 2
    assert "--lpips-weight must be 0 or more" in capsys.readouterr().err
    parser = build_parser()._subparsers._group_actions[0].choices
    for command, default in (("adapt", AdaptConfig.lpips_weight), ("train", FlipNetTrainConfig.lpips_weight)):
        text = next(a.help for a in parser[command]._actions if "--lpips-weight" in a.option_strings)
        assert f"default {default:g}" in text


@needs_adapted
def test_a_photo_without_a_face_is_copied_with_a_warning_and_exit_code_3(tmp_path):
    from bfr.cli import NO_FACE_EXIT

    wall = _face(tmp_path / "wall.png", 90)
    stale = tmp_path / "out" / "faces" / "wall_unsupervised_00_input.png"  # from an earlier run that found a face
    stale.parent.mkdir(parents=True)
    _face(stale)
    out = run("restore", str(wall), "-o", str(tmp_path / "out"), "--method", "unsupervised", "--save-faces")
    assert out.returncode == NO_FACE_EXIT == 3
    lines = out.stderr.strip().splitlines()
    assert all(line.startswith("warning:") for line in lines) and "No face found" in lines[0], out.stderr
    assert "no face found in 1 of 1 inputs (wall.png): written as the library returns them" in lines[-1]
    copy = np.asarray(Image.open(tmp_path / "out" / "wall_unsupervised.png"))
    assert (copy == 90).all()  # the input, unchanged, as the library returns it
    assert not stale.exists()  # not passed off as this run's crop
    (tmp_path / "bad.png").write_text("not an image")  # with a bad input too: exit 2, and both are said
    out = run("restore", str(wall), str(tmp_path / "bad.png"), "-o", str(tmp_path / "out"), "--method",
              "unsupervised")
    assert out.returncode == 2 and "error: bad.png" in out.stderr.replace(str(tmp_path) + "/", "")
    assert "warning: no face found in 1 of 2 inputs (wall.png)" in out.stderr
    assert "(exit code 2)" in out.stderr and "exit code 3" not in out.stderr  # the code the run really ends with
    face = LFW / "Aaron_Sorkin_0001.jpg"
    if LFW.is_dir():  # a face alone: exit 0
        assert run("restore", str(face), "-o", str(tmp_path / "o2"), "--method", "unsupervised").returncode == 0


def test_options_of_another_method_are_refused_not_ignored(tmp_path, capsys):
    img = _face(tmp_path / "face.png")
    for cmd, message in (
            (["restore", str(img), "-o", str(tmp_path / "o"), "--aligned", "--no-color-fix"],
             "--no-color-fix does not apply to difface"),
            (["degrade", str(img), "-o", str(tmp_path / "o"), "--method", "flipnet", "--preset", "camera"],
             "--preset applies to --method synthetic only"),
            (["degrade", str(img), "-o", str(tmp_path / "o"), "--method", "flipnet", "--resolution", "64"],
             "--resolution applies to --method synthetic only"),
            (["degrade", str(img), "-o", str(tmp_path / "o"), "--tier", "paper"], "--tier applies to --method flipnet"),
            (["degrade", str(img), "-o", str(tmp_path / "o"), "--no-color-fix"], "--no-color-fix applies to --method "
                                                                                 "flipnet"),
            (["degrade", str(img), "-o", str(tmp_path / "o"), "--fp32"], "--fp32 applies to --method flipnet"),
            (["degrade", str(img), "-o", str(tmp_path / "o"), "--photo"], "--photo applies to --method flipnet")):
        assert main(cmd) == 2, cmd
        err = capsys.readouterr().err
        assert err.startswith("error:") and message in err and len(err.strip().splitlines()) == 1, (cmd, err)
        assert not (tmp_path / "o").exists(), cmd  # a failed command leaves no empty output folder behind


def test_a_failed_command_removes_only_the_empty_folders_it_made(tmp_path, capsys):
    img = _face(tmp_path / "face.png")
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "old.png").write_bytes(b"earlier result")
    missing = ["--weights", f"swinir64={tmp_path / 'missing.safetensors'}"]
    assert main(["restore", str(img), "-o", str(tmp_path / "a" / "b" / "c"), "--aligned", *missing]) == 2
    assert not (tmp_path / "a").exists()  # all three levels were made by the command
    assert main(["restore", str(img), "-o", str(kept / "new"), "--aligned", *missing]) == 2
    assert sorted(p.name for p in kept.iterdir()) == ["old.png"]  # the folder it did not make stays, with its file
    assert "missing.safetensors" in capsys.readouterr().err


def test_paper_training_names_every_missing_file_with_its_own_option(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("BFR_WEIGHTS_DIR", str(tmp_path / "none"))
    monkeypatch.setenv("BFR_CACHE", str(tmp_path / "cache"))  # not a cache that holds paper weights
    clean = tmp_path / "clean"
    clean.mkdir()
    _face(clean / "face.png")  # a folder of faces: its check comes first
    assert main(["train", "flipnet", "--tier", "paper", "--clean-dir", str(clean), "-o", str(tmp_path / "f")]) == 2
    err = capsys.readouterr().err
    assert "2 weights files are missing" in err and "pass --unet PATH" in err and "pass --vae PATH" in err, err
    assert "--weights" not in err and len(err.strip().splitlines()) == 1
    assert main(["adapt", str(clean), "-o", str(tmp_path / "a"), "--tier", "paper", "--clean-dir", str(clean)]) == 2
    err = capsys.readouterr().err
    assert "pass --restorer PATH" in err and "pass --prior PATH" in err and "--weights" not in err, err
    assert main(["adapt", str(clean), "-o", str(tmp_path / "a"), "--tier", "paper"]) == 2
    assert "(--gan-weight 0)" in capsys.readouterr().err
    assert main(["adapt", str(clean), "-o", str(tmp_path / "a"), "--gan-weight", "-1"]) == 2
    assert "--gan-weight must be 0 or more" in capsys.readouterr().err


def test_gan_weight_help_states_the_configs_default():
    from bfr.cli import build_parser
    from bfr.training.adapt import AdaptConfig

    adapt = build_parser()._subparsers._group_actions[0].choices["adapt"]
    text = next(a.help for a in adapt._actions if "--gan-weight" in a.option_strings)
    assert f"default {AdaptConfig.gan_weight:g}," in text


@needs_adapted
def test_folder_run_reports_a_bad_file_and_writes_the_others(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    _face(folder / "a.png", 100)
    (folder / "b.jpg").write_text("not an image")
    (folder / "readme.txt").write_text("ignored: not an image suffix")
    _face(folder / "p.png", 120)
    Image.fromarray(np.full((64, 64, 3), 140, np.uint8)).save(folder / "p.jpg")  # the same stem as p.png
    out = run("restore", str(folder), str(folder / "a.png"), "-o", str(tmp_path / "out"), "--method", "unsupervised",
              "--aligned")
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("error:") for line in lines), out.stderr  # no progress-bar debris
    assert "b.jpg" in lines[0] and "1 of 4 inputs failed" in lines[1]
    written = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
    assert written == ["a_unsupervised.png", "p_jpg_unsupervised.png", "p_png_unsupervised.png"]  # a once, p twice
    p_png, p_jpg = (np.asarray(Image.open(tmp_path / "out" / f"p_{e}_unsupervised.png")) for e in ("png", "jpg"))
    assert p_png.mean() < p_jpg.mean()  # each from its own input


def test_weights_device_and_option_mistakes_are_one_line_errors(tmp_path, capsys):
    img = _face(tmp_path / "face.png")
    cases = [(["--weights", str(img)], "NAME=PATH"),
             (["--weights", f"nosuch={img}"], "uses prior64, swinir64"),
             (["--weights", f"swinir64={img}"], "is not a readable .safetensors file"),
             (["--device", "foo"], "unknown device"),
             (["--steps", "5"], "--start-step"),
             (["--steps", "-5"], "steps must lie in [2, 1000]")]
    prior = COMPACT_WEIGHTS_DIR / "prior64.safetensors"
    if prior.is_file():  # a file of the wrong kind says so, instead of a traceback
        cases.append((["--weights", f"swinir64={prior}"], "holds a prior network, but swinir64 must be a swinir"))
    if not __import__("torch").cuda.is_available():
        cases.append((["--device", "cuda"], "CUDA is not available"))
    if not __import__("torch").backends.mps.is_available():
        cases.append((["--device", "mps"], "MPS is not available here"))
    for extra, message in cases:
        assert main(["restore", str(img), "-o", str(tmp_path / "o"), "--aligned", *extra]) == 2, extra
        err = capsys.readouterr().err
        assert err.startswith("error:") and message in err and len(err.strip().splitlines()) == 1, (extra, err)
        assert not (tmp_path / "o").exists(), extra
    assert main(["restore", str(img), "-o", str(tmp_path / "o"), "--framing", "lfw"]) == 2
    assert "add --aligned" in capsys.readouterr().err


@needs_adapted
def test_upscale_beyond_the_output_cap_or_under_a_readable_size_is_refused(tmp_path, capsys):
    img = _face(tmp_path / "face.png")
    for upscale, message in (("200", "over the 67.1 MP limit"), ("0.01", "would give 1×1, under 16 px a side"),
                             ("0.2", "would give 13×13")):
        assert main(["restore", str(img), "-o", str(tmp_path / "o"), "--method", "unsupervised", "--aligned",
                     "--upscale", upscale]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error:") and message in err, (upscale, err)
    assert not (tmp_path / "o").exists()
    assert main(["restore", str(img), "-o", str(tmp_path / "o"), "--method", "unsupervised", "--aligned",
                 "--upscale", "0.25"]) == 0  # 16×16: the smallest image bfr reads
    assert Image.open(tmp_path / "o" / "face_unsupervised.png").size == (16, 16)


def test_an_output_that_cannot_be_written_is_one_line_and_the_other_inputs_are_written(tmp_path, capsys,
                                                                                        monkeypatch):
    a, b, out = _face(tmp_path / "a.png"), _face(tmp_path / "b.png"), tmp_path / "o"
    (out / "a_difface.png").mkdir(parents=True)  # a folder where a's result goes
    assert main(["degrade", str(a), str(b), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"error: cannot write {out / 'a_difface.png'}: Is a directory" in err and "Traceback" not in err
    assert "1 of 2 inputs failed (a.png)" in err and (out / "b_difface.png").is_file()
    monkeypatch.setattr("bfr.cli.os.access", lambda path, mode: False)  # a folder this user may not write into
    assert main(["degrade", str(a), "-o", str(tmp_path / "ro")]) == 2
    assert "cannot write into the output folder" in capsys.readouterr().err and not (tmp_path / "ro").exists()


@needs_adapted
def test_save_faces_into_a_file_is_one_line(tmp_path, capsys):
    img, out = _face(tmp_path / "face.png"), tmp_path / "o"
    out.mkdir()
    (out / "faces").write_text("not a folder")
    assert main(["restore", str(img), "-o", str(out), "--method", "unsupervised", "--aligned", "--save-faces"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot write") and "faces" in err and len(err.strip().splitlines()) == 1, err


def test_seeds_are_whole_numbers_from_zero_in_every_command(tmp_path, capsys):
    from bfr.errors import MAX_SEED

    img, o = _face(tmp_path / "face.png"), str(tmp_path / "o")
    for cmd in (["degrade", str(img), "-o", o], ["restore", str(img), "-o", o, "--aligned"], ["eval", "-o", o],
                ["demo-set", str(tmp_path / "d")], ["adapt", str(tmp_path), "-o", o]):
        for seed in ("-1", "1.5", str(MAX_SEED + 1)):
            with pytest.raises(SystemExit) as stop:  # argparse's usage error: exit code 2, before any work
                main([*cmd, "--seed", seed])
            err = capsys.readouterr().err
            assert stop.value.code == 2 and "argument --seed: a seed is a whole number from 0" in err, (cmd, err)
    assert main(["degrade", str(img), "-o", o, "--seed", str(MAX_SEED), "--variants", "2"]) == 2
    assert "leaves no room for 2 variants" in capsys.readouterr().err
    assert not (tmp_path / "o").exists() and not (tmp_path / "d").exists()


def test_bench_and_demo_set_refuse_sizes_no_run_can_use(tmp_path, capsys):
    assert main(["bench", "-o", str(tmp_path / "b"), "--batch-sizes", "0", "--photo-sizes"]) == 2
    assert "batch sizes are faces per call, each at least 1; got [0]" in capsys.readouterr().err
    assert main(["demo-set", str(tmp_path / "d"), "--resolution", "8"]) == 2  # refused by make_demo_set itself
    assert "at least 16; got 8" in capsys.readouterr().err
    assert main(["demo-set", str(tmp_path / "d"), "--n-images", "1"]) == 2
    assert "--n-images must be 2 or more" in capsys.readouterr().err
    assert not (tmp_path / "b").exists() and not (tmp_path / "d").exists()


@pytest.mark.skipif(not (data_dir() / "lfw150-splits").is_dir(), reason="../shared/data is not here")
def test_demo_set_n_images_makes_a_quick_set(tmp_path, capsys):
    assert main(["demo-set", str(tmp_path / "d"), "--n-images", "20", "--resolution", "16"]) == 0
    made = len(list((tmp_path / "d" / "adapt").iterdir())) + len(list((tmp_path / "d" / "holdout").iterdir()))
    assert made == 20 and "degraded faces in adapt/" in capsys.readouterr().out


def test_a_folder_input_takes_every_readable_image_and_nothing_else(tmp_path):
    from bfr.cli import _inputs

    for name in ("a.png", "b.GIF", "c.webp", "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    assert [p.name for p in _inputs([str(tmp_path)])] == ["a.png", "b.GIF", "c.webp"]


def test_degrade_refuses_no_variants_and_tiny_sizes_and_lists_every_preset(tmp_path, capsys):
    from bfr.cli import PRESET_HELP
    from bfr.degradations import PRESETS

    img = _face(tmp_path / "face.png")
    for extra, message in ((["--variants", "0"], "--variants"), (["--resolution", "0"], "--resolution"),
                           (["--preset", "nope"], "nope")):
        assert main(["degrade", str(img), "-o", str(tmp_path / "o"), *extra]) == 2
        assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # checked before the output folder is made
    assert PRESET_HELP.split(" | ") == list(PRESETS)


@pytest.mark.skipif(not method_status("difface", "compact")[0], reason="compact DifFace weights are not bundled")
@pytest.mark.skipif(not (data_dir() / "real-lq").is_dir(), reason="../shared/data (real-lq) is not here")
def test_sampling_flags_reach_the_sampler_and_only_center_face_the_detector(tmp_path, capsys):
    face = data_dir() / "real-lq" / "cropped_faces" / "Julia_Roberts_crop.png"

    def restored(*flags):
        out = tmp_path / "-".join(flags)
        assert main(["restore", str(face), "-o", str(out), "--aligned", "--steps", "20", "--start-step", "4",
                     *flags]) == 0
        return np.asarray(Image.open(out / "Julia_Roberts_crop_difface.png"), np.int16)

    one = restored("--seed", "1", "--eta", "1")
    np.testing.assert_array_equal(one, restored("--seed", "1", "--eta", "1"))  # seeded: the same file
    assert np.abs(one - restored("--seed", "2", "--eta", "1")).mean() > 0.1  # another seed, other noise
    assert np.abs(one - restored("--seed", "1", "--eta", "0")).mean() > 0.1  # η changes the chain's noise
    photo = data_dir() / "real-lq" / "whole_imgs" / "00.jpg"
    capsys.readouterr()
    assert main(["restore", str(photo), "-o", str(tmp_path / "c"), "--only-center-face", "--steps", "20",
                 "--start-step", "4", "--save-faces"]) == 0
    assert "Restored 1 face found" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "c" / "faces").iterdir()) == [
        "00_difface_00_input.png", "00_difface_00_restored.png"]


def test_fp32_and_the_adapted_bundle_name_reach_the_library(tmp_path, monkeypatch):
    import bfr
    import bfr.training.adapt
    from bfr.errors import BfrError

    asked = []

    def fake_load(method, **kwargs):
        asked.append(kwargs["half_precision"])
        raise BfrError("stop here")

    monkeypatch.setattr(bfr, "load", fake_load)
    img = _face(tmp_path / "face.png")
    assert main(["restore", str(img), "-o", str(tmp_path / "o"), "--aligned", "--fp32"]) == 2
    assert main(["restore", str(img), "-o", str(tmp_path / "o"), "--aligned"]) == 2
    assert main(["degrade", str(img), "-o", str(tmp_path / "o"), "--method", "flipnet", "--fp32"]) == 2
    assert asked == [False, True, False]

    named = []
    monkeypatch.setattr(bfr.training.adapt, "adapt", lambda cfg: tmp_path)
    monkeypatch.setattr(bfr.training.adapt, "write_card", lambda run, dest, name: named.append(name) or "card")
    for tier in ("compact", "paper"):
        assert main(["adapt", str(tmp_path), "-o", str(tmp_path / "a"), "--tier", tier, "--bundle", str(tmp_path)]) == 0
    assert named == ["swinir64_adapted", "swinir512_adapted"]  # the names `restore --method unsupervised` loads
    from bfr.training.adapt import AdaptConfig

    assert AdaptConfig(lq_dir=str(tmp_path)).lpips_weight == 0.4  # the authors' 0.1 on sums over 4 images


def test_a_folder_without_images_is_named_with_what_counts_as_one(tmp_path, capsys):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "readme.txt").write_text("no photos here")
    assert main(["restore", str(folder), "-o", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f"no input images in {folder}" in err and ".png" in err and ".jpg" in err
    assert not (tmp_path / "out").exists()


def test_a_bfr_data_without_the_lfw_lists_says_the_variable_is_set(tmp_path, monkeypatch):
    from bfr.errors import InputError
    from bfr.training.data import split_files

    monkeypatch.setenv("BFR_DATA", str(tmp_path))
    with pytest.raises(InputError, match=f"BFR_DATA={tmp_path} is set, but that folder holds no lfw150-splits/"):
        split_files("train")
    monkeypatch.delenv("BFR_DATA")
    monkeypatch.setattr("bfr.training.data.data_dir", lambda: tmp_path)
    with pytest.raises(InputError, match="or set BFR_DATA to its path"):
        split_files("train")


def test_degrade_flipnet_photo_detects_the_face_first(tmp_path, monkeypatch):
    import bfr

    img = _face(tmp_path / "face.png")
    asked = []

    class Recording:
        framing = "lfw"

        def degrade(self, path, *, aligned, **options):
            asked.append(aligned)
            return [np.zeros((8, 8, 3), np.float32)]

    monkeypatch.setattr(bfr, "load", lambda *a, **k: Recording())
    for extra, aligned in (([], True), (["--photo"], False)):
        assert main(["degrade", str(img), "-o", str(tmp_path / "o"), "--method", "flipnet", *extra]) == 0
        assert asked.pop() is aligned


@pytest.mark.skipif(not method_status("unsupervised", "compact")[0], reason="swinir64_adapted is not bundled")
def test_restoring_a_folder_into_itself_twice_does_not_restore_the_results(tmp_path, capsys):
    folder = tmp_path / "faces"
    folder.mkdir()
    _face(folder / "face.png")
    run = ["restore", str(folder), "-o", str(folder), "--method", "unsupervised", "--aligned"]
    assert main(run) == 0 and main(run) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["face.png", "face_unsupervised.png"]
    assert "skipping 1 earlier result(s) of this command" in capsys.readouterr().out
    only_results = tmp_path / "only"
    only_results.mkdir()
    _face(only_results / "x_unsupervised.png")  # all there is: restored as asked
    assert main(["restore", str(only_results), "-o", str(only_results), "--method", "unsupervised", "--aligned"]) == 0
    assert (only_results / "x_unsupervised_unsupervised.png").is_file()
