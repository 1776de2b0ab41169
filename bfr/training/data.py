"""Training faces: the LFW crops of ../shared/data, held in memory as uint8 tensors at the model's
size, and folders of images (Kuai's LQ set, FFHQ) read on demand.

LFW crops are deep-funneled and centre-cropped, so a plain resize of the 150×150 crop is
already the compact template (the LFW 5-point template scaled by size/150).
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import torch

from bfr.errors import InputError
from bfr.imageio import load_image, to_tensor
from bfr.methods.base import resize
from bfr.paths import IMAGE_SUFFIXES, data_dir


def split_files(split: str) -> list[Path]:
    """Image paths of the LFW ``train`` or ``test`` split (train only for training) in data_dir()."""
    root = data_dir()
    listing = root / "lfw150-splits" / f"{split}.txt"
    if not listing.is_file():
        where = (f"BFR_DATA={os.environ['BFR_DATA']} is set, but that folder holds no lfw150-splits/{split}.txt"
                 if os.environ.get("BFR_DATA") else "The training data lives in ../shared/data beside the repository "
                 "(or set BFR_DATA to its path)")
        raise InputError(f"LFW split list not found at {listing}. {where}.")
    names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    return [root / "lfw150" / n for n in names]


def load_faces(paths: list[Path], size: int) -> torch.Tensor:
    """Read and resize faces to (N, 3, size, size) uint8 RGB (area resampling, antialiased)."""
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        bgr = cv2.imread(str(p), cv2.IMREAD_COLOR)
        if bgr is None:
            raise InputError(f"cannot read training image {p}")
        interp = cv2.INTER_AREA if bgr.shape[0] > size else cv2.INTER_CUBIC
        out[i] = cv2.resize(bgr, (size, size), interpolation=interp)[:, :, ::-1]
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


class FaceBatches:
    """Random batches in [-1, 1] with horizontal flips, drawn from an in-memory uint8 set."""

    def __init__(self, faces: torch.Tensor, batch_size: int, seed: int = 0, flip: bool = True):
        self.faces = faces
        self.batch_size = batch_size
        self.flip = flip
        self.generator = torch.Generator().manual_seed(seed)

    def __len__(self) -> int:
        return len(self.faces)

    def next(self) -> torch.Tensor:
        idx = torch.randint(len(self.faces), (self.batch_size,), generator=self.generator)
        x = self.faces[idx].float() / 127.5 - 1.0
        if self.flip:
            mask = torch.rand(self.batch_size, generator=self.generator) < 0.5
            x[mask] = x[mask].flip(-1)
        return x


def list_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"{folder} is not a folder of images")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {folder}")
    return files


def read_images(files: list[Path], resolution: int) -> torch.Tensor:
    """(N, 3, R, R) uint8: each file read as RGB and resized (antialiased bicubic) when not R×R."""
    out = torch.empty((len(files), 3, resolution, resolution), dtype=torch.uint8)
    for i, p in enumerate(files):
        img = resize(to_tensor(load_image(p)), resolution)
        out[i] = (img[0] * 255).round().clamp(0, 255).to(torch.uint8)
    return out


class FolderBatches:
    """Random batches in [0, 1] read from a folder on demand (clean FFHQ can be too big for memory)."""

    def __init__(self, folder: str | Path, resolution: int, batch_size: int, seed: int = 0, flip: bool = True,
                 files: list[Path] | None = None):
        self.files = list_images(folder) if files is None else files  # ``files``: a chosen subset of the folder
        self.resolution, self.batch_size, self.flip = resolution, batch_size, flip
        self.generator = torch.Generator().manual_seed(seed)

    def next(self) -> torch.Tensor:
        idx = torch.randint(len(self.files), (self.batch_size,), generator=self.generator)
        x = read_images([self.files[i] for i in idx], self.resolution).float() / 255
        if self.flip:
            mask = torch.rand(self.batch_size, generator=self.generator) < 0.5
            x[mask] = x[mask].flip(-1)
        return x


class UnitBatches:
    """FaceBatches ([-1, 1]) seen in [0, 1], for the trainers that work in [0, 1] (Kuai's, FLIPNET's)."""

    def __init__(self, batches: FaceBatches):
        self.batches = batches
        self.generator = batches.generator  # what a resumed run reseeds

    def next(self) -> torch.Tensor:
        return self.batches.next() * 0.5 + 0.5
