"""Weights: safe loading, strict fitting with readable errors, and resolution without network."""

import hashlib
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from bfr.errors import InputError, WeightsUnavailableError
from bfr.weights import (
    CATALOG,
    ChecksumError,
    StateDictMismatchError,
    WeightSpec,
    available,
    get_spec,
    load_into,
    load_pretrained,
    load_state_dict,
    read_metadata,
    resolve,
    save_safetensors,
)


class NotATensor:
    """Any class: a pickle of it must be refused."""


def tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """No network, an empty cache, no weights dir, no proxy."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("BFR_CACHE", str(tmp_path / "cache"))
    for var in ("BFR_WEIGHTS_DIR", "BFR_OFFLINE", "HTTPS_PROXY", "https_proxy"):
        monkeypatch.delenv(var, raising=False)


def test_safetensors_round_trip_with_metadata_and_shared_tensors(tmp_path):
    w = torch.randn(3, 4)
    sd = {"a": w, "tied": w, "view": w[1], "n": torch.arange(5)}
    path = save_safetensors(sd, tmp_path / "m.safetensors", {"config": {"dim": 4}, "note": "hi"})
    back = load_state_dict(path)
    assert set(back) == set(sd) and all(torch.equal(back[k], sd[k]) for k in sd)
    assert read_metadata(path) == {"config": '{"dim": 4}', "note": "hi"}


def test_a_failed_safetensors_write_keeps_the_earlier_file_whole(tmp_path, monkeypatch):
    """Training states and exports are rewritten in place: a write that fails part-way (disk full, a kill)
    must leave the last good file, not half a file, and no temporary file behind."""
    import safetensors.torch

    path = save_safetensors({"w": torch.ones(4)}, tmp_path / "state.safetensors", {"step": 1})

    def half_written(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"\x00" * 7)
        raise OSError("No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", half_written)
    with pytest.raises(OSError, match="No space left"):
        save_safetensors({"w": torch.zeros(4)}, path, {"step": 2})
    assert torch.equal(load_state_dict(path)["w"], torch.ones(4)) and read_metadata(path) == {"step": "1"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.safetensors"]


def test_pth_with_wrapper_and_module_prefix_loads_strictly(tmp_path):
    src = tiny()
    wrapped = {"state_dict": {f"module.{k}": v for k, v in src.state_dict().items()}, "epoch": 3}
    torch.save(wrapped, tmp_path / "ckpt.pth")
    dst = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    report = load_into(dst, load_state_dict(tmp_path / "ckpt.pth"))
    assert report.ok
    assert all(torch.equal(a, b) for a, b in zip(src.state_dict().values(), dst.state_dict().values(), strict=True))


def test_params_ema_wins_over_params(tmp_path):
    ema, raw = tiny().state_dict(), {k: torch.zeros_like(v) for k, v in tiny().state_dict().items()}
    torch.save({"params": raw, "params_ema": ema}, tmp_path / "basicsr.pth")
    got = load_state_dict(tmp_path / "basicsr.pth")
    assert all(torch.equal(got[k], ema[k]) for k in ema)


def test_pickled_objects_are_refused(tmp_path):
    torch.save({"weight": torch.ones(2), "evil": NotATensor()}, tmp_path / "bad.pth")
    with pytest.raises(InputError, match="weights_only"):
        load_state_dict(tmp_path / "bad.pth")


def test_files_that_are_not_checkpoints_say_so(tmp_path):
    """An image, text, an empty or a cut-off file named like weights: a sentence, never a library traceback."""
    from bfr.weights.load import read_metadata

    torch.save(tiny().state_dict(), tmp_path / "whole.pth")
    data = (tmp_path / "whole.pth").read_bytes()
    files = {"image.pth": b"\x89PNG\r\n\x1a\n" + bytes(64), "text.pth": b"hello", "empty.pth": b"",
             "cut.pth": data[: len(data) // 2], "image.safetensors": b"\x89PNG\r\n\x1a\n" + bytes(64)}
    for name, content in files.items():
        (tmp_path / name).write_bytes(content)
        match = "safetensors file" if name.endswith(".safetensors") else "PyTorch checkpoint"
        with pytest.raises(InputError, match=match):
            load_state_dict(tmp_path / name)
    with pytest.raises(InputError, match="not a readable .safetensors file"):
        read_metadata(tmp_path / "image.safetensors")
    assert set(load_state_dict(tmp_path / "whole.pth")) == set(tiny().state_dict())


def test_devices_are_checked_with_a_sentence():
    from bfr.methods.base import pick_device

    assert pick_device("cpu") == torch.device("cpu") and pick_device(None).type in ("cpu", "cuda")
    for bad, message in (("foo", "unknown device"), ("meta", "not supported")):
        with pytest.raises(InputError, match=message):
            pick_device(bad)
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="CUDA is not available"):
            pick_device("cuda:0")


def test_not_a_state_dict_is_explained(tmp_path):
    torch.save({"epoch": 3, "lr": 0.1}, tmp_path / "meta.pth")
    with pytest.raises(InputError, match="not a state dict"):
        load_state_dict(tmp_path / "meta.pth")


def test_misfit_lists_missing_unexpected_and_shapes():
    sd = tiny().state_dict()
    sd.pop("0.bias")
    sd["extra.weight"] = torch.zeros(1)
    sd["2.weight"] = torch.zeros(3, 8)
    for i in range(12):
        sd[f"more.{i}"] = torch.zeros(1)
    with pytest.raises(StateDictMismatchError) as err:
        load_into(tiny(), sd)
    msg = str(err.value)
    assert "1 missing keys: 0.bias" in msg
    assert "13 unexpected keys: extra.weight" in msg and "+3 more" in msg
    assert "1 shape mismatches: 2.weight: file [3, 8] vs model [2, 8]" in msg
    # Non-strict: loads what fits, reports the rest.
    model = tiny()
    report = load_into(model, sd, strict=False)
    assert report.missing == ["0.bias"] and report.mismatched[0][0] == "2.weight"
    assert torch.equal(model.state_dict()["0.weight"], sd["0.weight"])


def test_offline_absent_remote_file_fails_fast_with_directions():
    t = time.perf_counter()
    with pytest.raises(WeightsUnavailableError) as err:
        resolve("difface_unet_512")
    assert time.perf_counter() - t < 1.0
    msg = str(err.value)
    spec = get_spec("difface_unet_512")
    assert spec.filename in msg and spec.url in msg
    assert "HF_HUB_OFFLINE" in msg and "BFR_WEIGHTS_DIR" in msg and "--weights difface_unet_512=PATH" in msg
    assert "weights={'difface_unet_512': PATH} to bfr.load" in msg  # the Python form too
    ok, why = available("difface_unet_512")
    assert not ok and "HF_HUB_OFFLINE" in why


def test_a_method_names_every_missing_file_before_building_a_network(monkeypatch, tmp_path):
    import bfr
    import bfr.api

    built = []
    monkeypatch.setattr(bfr.api, "UNetModel", lambda **kw: built.append("unet"))
    monkeypatch.setattr(bfr.api, "SwinIR", lambda **kw: built.append("swinir"))
    with pytest.raises(WeightsUnavailableError) as err:
        bfr.load("difface", tier="paper", device="cpu")
    msg = str(err.value)
    assert msg.startswith("2 weights files are missing: (1) ") and "\n" not in msg and built == []
    assert "iddpm_ffhq512_ema500000.pth" in msg and "swinir_restoration512_L1.pth" in msg
    assert "--weights difface_unet_512=PATH" in msg and "--weights difface_swinir_512=PATH" in msg
    # one found (given), one missing: only the missing one is named, still before anything is built
    unet = save_safetensors(tiny().state_dict(), tmp_path / "unet.safetensors")
    with pytest.raises(WeightsUnavailableError) as err:
        bfr.load("difface", tier="paper", device="cpu", weights={"difface_unet_512": str(unet)})
    assert "swinir_restoration512_L1.pth" in str(err.value) and "iddpm" not in str(err.value) and built == []


def test_unreachable_host_fails_fast(monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE")
    spec = WeightSpec(name="nowhere", filename="nowhere.pth", url="https://weights.invalid/nowhere.pth")
    t = time.perf_counter()
    with pytest.raises(WeightsUnavailableError, match="nowhere.pth.*unreachable"):
        resolve(spec)
    assert time.perf_counter() - t < 1.5
    assert available(spec)[0] is False


def test_local_path_env_dir_and_cache_order(tmp_path, monkeypatch):
    spec = WeightSpec(name="toy", filename="toy.safetensors", url="https://weights.invalid/toy.safetensors")
    save_safetensors(tiny().state_dict(), tmp_path / "mine.safetensors")
    assert resolve(spec, tmp_path / "mine.safetensors") == tmp_path / "mine.safetensors"
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        resolve(spec, tmp_path / "absent.safetensors")

    cached = tmp_path / "cache" / "weights" / "toy.safetensors"
    save_safetensors(tiny().state_dict(), cached)
    assert resolve(spec) == cached
    env_dir = tmp_path / "weights"
    save_safetensors(tiny().state_dict(), env_dir / "toy.safetensors")
    monkeypatch.setenv("BFR_WEIGHTS_DIR", str(env_dir))
    assert resolve(spec) == env_dir / "toy.safetensors"  # env dir beats the cache
    assert resolve(spec, env_dir) == env_dir / "toy.safetensors"  # a folder holding the file
    assert available(spec) == (True, f"found at {env_dir / 'toy.safetensors'}")
    assert load_pretrained(tiny(), spec).ok


def test_download_checks_sha256(tmp_path):
    src = tmp_path / "published.pth"
    torch.save(tiny().state_dict(), src)
    good = hashlib.sha256(src.read_bytes()).hexdigest()
    cached = tmp_path / "cache" / "weights" / "dl.pth"

    bad = WeightSpec(name="dl", filename="dl.pth", url=src.as_uri(), sha256="0" * 64)
    with pytest.raises(ChecksumError, match="sha256"):
        resolve(bad)
    assert not cached.exists() and not list(cached.parent.glob("*.part"))

    spec = WeightSpec(name="dl", filename="dl.pth", url=src.as_uri(), sha256=good)
    assert resolve(spec) == cached and cached.read_bytes() == src.read_bytes()
    with pytest.raises(ChecksumError):
        resolve(bad, verify=True)  # a local copy that is not the published file


def test_catalog_entries():
    assert {"difface_unet_512", "difface_swinir_512", "dtbfr_swinir_gan", "prior64", "swinir64"} <= set(CATALOG)
    assert get_spec("difface_swinir_512").url.endswith("/V1.0/swinir_restoration512_L1.pth")
    assert get_spec("swinir64").bundled and get_spec("swinir64").url is None
    with pytest.raises(InputError, match="known: "):
        get_spec("nope")


def test_bundled_file_without_source_says_so(monkeypatch, tmp_path):
    import bfr.weights.hub as hub

    monkeypatch.setattr(hub, "COMPACT_WEIGHTS_DIR", tmp_path / "compact")
    spec = get_spec("swinir64")
    ok, why = available(spec)
    assert not ok and "not bundled in this version" in why and "`python -m bfr train backbone`" in why
    with pytest.raises(WeightsUnavailableError, match="swinir64.safetensors.*[Mm]ake it with `python -m bfr train"):
        resolve(spec)
    ok, why = available(get_spec("flipnet_sd21"))  # published by no one: bfr's own command is named
    assert not ok and "no public source; make it with `python -m bfr train flipnet --tier paper" in why
    save_safetensors(tiny().state_dict(), tmp_path / "compact" / "swinir64.safetensors")
    assert resolve(spec) == tmp_path / "compact" / "swinir64.safetensors"
