"""The test suite never touches the network: bfr fetches weights where downloads are on (facexlib's
networks for the face pipeline, the paper tier's checkpoints), so tests switch downloads off as CI does
(by HF_HUB_OFFLINE, whose name the messages then give). A test of the download path turns them back on for
itself and points the source at a local ``file:`` URL."""

import os

import pytest

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.pop("BFR_OFFLINE", None)


@pytest.fixture
def no_facexlib_here(monkeypatch, tmp_path):
    """A machine without facexlib's files: bfr's cache in tmp_path, no weights folders set, no memory of
    failed fetches. Skips where facexlib's own folder (inside the installed package) holds them."""
    from bfr.faces import detect
    from bfr.weights import hub

    monkeypatch.setenv("BFR_CACHE", str(tmp_path / "cache"))
    for var in ("BFR_WEIGHTS_DIR", "BFR_FACEXLIB_WEIGHTS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hub, "_failed", {})
    monkeypatch.setattr(hub, "_unreadable", {})
    from bfr.weights import CATALOG, FACEXLIB_NETWORKS

    for name in FACEXLIB_NETWORKS:
        if detect.find_facexlib_weights(CATALOG[name].filename) is not None:
            pytest.skip(f"{CATALOG[name].filename} is in facexlib's own weights folder on this machine")
    return tmp_path / "cache" / "weights"
