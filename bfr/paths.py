"""Where the project's files live: bundled weights, and the shared data beside a checkout."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_DIR = PACKAGE_DIR.parent
COMPACT_WEIGHTS_DIR = PACKAGE_DIR / "weights" / "compact"
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".gif"}  # what a folder of images means


def data_dir() -> Path:
    """The shared data folder: $BFR_DATA, else ../shared/data beside the repository."""
    return Path(os.environ.get("BFR_DATA", REPO_DIR.parent / "shared" / "data"))
