"""bfr.api.Restorer around a stub model: how crops are batched, seeded and counted in the progress, and what
it loads once."""

from pathlib import Path

import numpy as np
import pytest

from bfr.api import BATCH_PIXELS, Restorer
from bfr.errors import InputError


class StubModel:
    """Records each batch; 'restores' by adding the seed to the pixels, so the output says which seed it got."""

    name, title, tier, framing = "stub", "Stub", "paper", "ffhq"
    defaults = dict(seed=0)

    def __init__(self, resolution: int):
        self.resolution = resolution
        self.batches: list[tuple[int, int | None]] = []

    def restore(self, lq, *, seed=0, progress=None, **options):
        self.batches.append((len(lq), seed))
        for done in range(1, 4):
            progress(done, 3)
        return (lq + (seed or 0) / 100).clamp(0, 1)


def test_crops_are_restored_in_seeded_batches_with_one_progress_count():
    model = StubModel(512)
    assert BATCH_PIXELS // 512 ** 2 == 4
    seen = []
    crops = [np.full((8, 8, 3), 0.5, np.float32) for _ in range(10)]
    out = Restorer(model).restore_crops(crops, progress=lambda d, t: seen.append((d, t)), seed=7)
    assert model.batches == [(4, 7), (4, 8), (2, 9)]  # batch k gets seed + k
    assert seen == [(d, 9) for d in range(1, 10)]  # one count over all batches, never going back
    assert len(out) == 10 and np.allclose(out[0], 0.57) and np.allclose(out[9], 0.59)

    small = StubModel(64)
    Restorer(small).restore_crops(crops, progress=lambda d, t: None)  # no seed given: the model's default
    assert small.batches == [(10, 0)]
    none = StubModel(64)
    Restorer(none).restore_crops(crops[:2], progress=lambda d, t: None, seed=None)
    assert none.batches == [(2, None)]


def test_detector_and_face_parser_load_once_per_restorer(monkeypatch, tmp_path):
    """Photo after photo, the detector and ParseNet (~100 MB each with real weights) are loaded once, not per call;
    aligned crops load no detector; another minimum face size gets its own detector (it filters by it)."""
    import torch
    from facexlib.parsing.parsenet import ParseNet

    import bfr.api
    import bfr.faces.pipeline
    from bfr.faces.paste import PARSENET_FILE, FaceParser

    torch.manual_seed(0)
    torch.save(ParseNet(in_size=512, out_size=512, parsing_ch=19).state_dict(), tmp_path / PARSENET_FILE)
    monkeypatch.setenv("BFR_FACEXLIB_WEIGHTS", str(tmp_path))  # a random ParseNet: parsing on for ffhq framing
    built = {"detector": [], "parser": 0}
    real_get = bfr.api.get_detector

    def counting_get(*args, **kwargs):
        built["detector"].append(kwargs.get("min_eye_distance"))
        return real_get(*args, **kwargs)

    class CountingParser(FaceParser):
        def __init__(self, *args, **kwargs):
            built["parser"] += 1
            super().__init__(*args, **kwargs)

        def __call__(self, crop):  # a random ParseNet's mask costs seconds a face on a CPU and says nothing here
            return np.ones(crop.shape[:2], np.float32)

    monkeypatch.setattr(bfr.api, "get_detector", counting_get)
    monkeypatch.setattr(bfr.faces.pipeline, "FaceParser", CountingParser)
    photo = Path(__file__).resolve().parents[1] / "examples" / "group_lq.png"
    restorer = Restorer(StubModel(64), detector="haar")
    crop = np.full((64, 64, 3), 0.5, np.float32)
    assert restorer.restore(crop, aligned=True).faces and built["detector"] == []
    assert "enlarged" not in restorer.restore(crop, aligned=True).message  # 64 px to 64 px
    big = restorer.restore(np.full((512, 512, 3), 0.5, np.float32), aligned=True).message
    assert "restored at 64 px and enlarged up to ×8.0" in big  # an aligned 512-px crop is told why it is soft
    lfw_model = StubModel(64)
    lfw_model.framing = "lfw"  # the compact tier: FFHQ eyes 125.9 px apart at 512, LFW's 17.6 at 64
    big = Restorer(lfw_model).restore(np.full((512, 512, 3), 0.5, np.float32), aligned=True).message
    assert "enlarged up to ×7.1" in big
    with pytest.raises(InputError, match="pass aligned=True with it"):
        restorer.restore(crop, framing="lfw")
    first = restorer.restore(photo, seed=0)
    second = restorer.restore(photo, seed=0)
    assert len(first.faces) >= 2 and "parsing on" in first.message
    # faces far larger than 64 px in the photo: the user is told why they look soft
    assert "restored at 64 px and enlarged up to ×" in first.message
    np.testing.assert_array_equal(first.image, second.image)  # the same detector and parser: the same output
    assert built == {"detector": [None], "parser": 1}
    restorer.restore(photo, seed=0, min_face_size=30)
    assert built == {"detector": [None, 30], "parser": 1}
    assert "enlarged" not in Restorer(StubModel(512), detector="haar").restore(photo).message


def test_half_precision_is_a_switch_every_method_obeys(monkeypatch):
    """On CUDA the networks run under autocast unless ``half_precision=False`` (the authors sample in fp32)."""
    import contextlib

    import torch

    import bfr
    from bfr.api import method_status
    from bfr.methods import base, difface, flipnet, idm, unsupervised

    assert isinstance(base.autocast(torch.device("cuda"), enabled=False), contextlib.nullcontext)
    assert isinstance(base.autocast(torch.device("cpu")), contextlib.nullcontext)
    asked = []

    def recording(device, enabled=True):
        asked.append(enabled)
        return contextlib.nullcontext()

    for module in (difface, flipnet, idm, unsupervised):
        monkeypatch.setattr(module, "autocast", recording)
    face = torch.rand(1, 3, 64, 64)
    short = {"difface": dict(start_step=2), "flipnet": dict(steps=2), "idm": dict(steps=2), "unsupervised": {}}
    for name, options in short.items():
        if not method_status(name, "compact")[0]:
            continue
        for half in (True, False):
            asked.clear()
            model = bfr.load(name, device="cpu", half_precision=half).model
            assert model.half_precision is half
            model.restore(face, **options)
            assert asked and set(asked) == {half}, (name, half, asked)


def test_a_weights_name_the_method_does_not_use_is_refused_not_ignored(tmp_path):
    """A misspelt name would otherwise load the bundled default and say nothing."""
    import bfr

    stray = tmp_path / "mine.safetensors"
    stray.write_bytes(b"not read")
    for method, tier, name, uses in (("difface", "compact", "prior_64", "prior64, swinir64"),
                                     ("idm", "paper", "prior64", "idm_unet_512"),
                                     ("flipnet", "compact", "swinir64", "prior64, flipnet64")):
        with pytest.raises(InputError, match=f"'{name}': .* on the {tier} tier uses {uses}"):
            bfr.load(method, tier=tier, device="cpu", weights={name: str(stray)})


def test_a_misspelt_option_is_named_with_the_ones_the_method_takes():
    restorer = Restorer(StubModel(64))
    photo = np.zeros((64, 64, 3), np.float32)
    with pytest.raises(InputError, match=r"Stub has no option 'upscal': its sampling options are seed; restore "
                                         r"also takes aligned, framing, upscale"):
        restorer.restore(photo, upscal=2)
    with pytest.raises(InputError, match="has no option 'start_stp'"):
        restorer.restore_crops([photo], start_stp=5)
    assert restorer.restore(photo, aligned=True, seed=3).faces  # the options it takes still pass
