"""Datasets as two tensors per split on one device: ``load_dataset(name, root, device) -> Dataset``.

Under each data root the forms are tried in this order: the compact ``<root>/<name>/{train,test}.npz``
(see ``shared/data/README.md``), the dataset's standard layout (torchvision's for CIFAR-10 and GTSRB,
the official folder for Tiny-ImageNet), then an ImageFolder tree ``<root>/<name>/{train,test}/<class>/``.
Files are decoded once to uint8 and cached (see :mod:`tacrecon.data.cache` for the key).

Example:
    >>> ds = load_dataset("digits")
    >>> ds.train.x.shape, ds.num_classes
    (torch.Size([1437, 1, 16, 16]), 10)
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

from tacrecon.data.cache import decode_cached, default_cache_dir
from tacrecon.data.readers import (
    CIFAR_FILES,
    Decoded,
    read_cifar_batches,
    read_compact,
    read_gtsrb_ppm,
    read_imagefolder,
    read_tinyimagenet,
)
from tacrecon.data.split import Dataset, Split, clean_subset
from tacrecon.errors import TacreconError
from tacrecon.registry import Registry

__all__ = ["DATASETS", "Dataset", "Split", "clean_subset", "data_roots", "default_cache_dir", "load_dataset"]

log = logging.getLogger(__name__)

DATASETS: Registry[Callable[..., Any]] = Registry("dataset")

GTSRB_CLASSES = (
    "Speed limit (20km/h)", "Speed limit (30km/h)", "Speed limit (50km/h)", "Speed limit (60km/h)",
    "Speed limit (70km/h)", "Speed limit (80km/h)", "End of speed limit (80km/h)", "Speed limit (100km/h)",
    "Speed limit (120km/h)", "No passing", "No passing for vehicles over 3.5 metric tons",
    "Right-of-way at the next intersection", "Priority road", "Yield", "Stop", "No vehicles",
    "Vehicles over 3.5 metric tons prohibited", "No entry", "General caution", "Dangerous curve to the left",
    "Dangerous curve to the right", "Double curve", "Bumpy road", "Slippery road",
    "Road narrows on the right", "Road work", "Traffic signals", "Pedestrians", "Children crossing",
    "Bicycles crossing", "Beware of ice/snow", "Wild animals crossing", "End of all speed and passing limits",
    "Turn right ahead", "Turn left ahead", "Ahead only", "Go straight or right", "Go straight or left",
    "Keep right", "Keep left", "Roundabout mandatory", "End of no passing",
    "End of no passing by vehicles over 3.5 metric tons",
)  # the official sign names, as in the compact gtsrb files


@dataclass(frozen=True)
class Layout:
    """One form a dataset can take under a data root.

    Attributes:
        name: short id; part of the cache key and file name.
        dirs: folders relative to a root where this form may lie, tried in order.
        marker: a path inside such a folder whose existence means "this form is here".
        key: paths inside the folder that identify its contents for the cache key: files are
            hashed by content, folders by every file's (relative path, size, mtime).
        expected: the form, for error messages.
        read: decodes the folder.
    """

    name: str
    dirs: tuple[str, ...]
    marker: str
    key: tuple[str, ...]
    expected: str
    read: Callable[[Path], Decoded]


def data_roots(root: str | Path | None = None) -> list[Path]:
    """The data roots to search, in order.

    ``root`` if given, else ``$TACRECON_DATA``, else ``default_cache_dir()/"data"``. A string
    (argument or variable) may list several roots separated by ``os.pathsep``.
    """
    spec = root if root not in (None, "") else os.environ.get("TACRECON_DATA", "")
    if isinstance(spec, Path):
        return [spec.expanduser()]
    roots = [Path(p).expanduser() for p in str(spec).split(os.pathsep) if p]
    return roots or [default_cache_dir() / "data"]


def load_dataset(name: str, root: str | Path | None = None, device: str | torch.device = "cpu") -> Dataset:
    """Load a registered dataset onto ``device``.

    Args:
        name: one of ``DATASETS.names()``.
        root: the data root (see :func:`data_roots`).
        device: where both splits are placed.

    Returns:
        The dataset: x float32 (N, C, H, W) in [0, 1], y int64 (N,), class names, and the
        per-channel mean/std of the train split.

    Raises:
        TacreconError: an unknown name, data not found under any root, or a malformed file.
    """
    return DATASETS.get(name)(data_roots(root)).to(device)


def locate(name: str, roots: list[Path], layouts: list[Layout]) -> tuple[Path, Layout]:
    """The first folder holding ``name``: roots outermost, then forms in order, then their folders."""
    tried = []
    for root in roots:
        for layout in layouts:
            for rel in layout.dirs:
                marker = root / rel / layout.marker
                if marker.exists():
                    return root / rel, layout
                tried.append(str(marker))
    expected = " | ".join(layout.expected for layout in layouts)
    raise TacreconError(
        f"{name} not found; tried: {', '.join(tried)}; expected one of: {expected}; "
        "set --data-root or TACRECON_DATA"
    )


def _split(x: np.ndarray, y: np.ndarray) -> Split:
    """uint8 (N, H, W, C) and labels (N,) as a split with x float32 (N, C, H, W) in [0, 1].

    The float conversion comes last so that the cache holds 4x smaller uint8 arrays.
    """
    nchw = torch.from_numpy(x).permute(0, 3, 1, 2)
    images = nchw.to(torch.float32, memory_format=torch.contiguous_format).div_(255)  # one pass
    return Split(images, torch.from_numpy(y).long())


def _from_files(name: str, roots: list[Path], layouts: list[Layout], num_classes: int) -> Dataset:
    folder, layout = locate(name, roots, layouts)
    data = decode_cached(f"{name}-{layout.name}", folder, layout.key, layout.read)
    if len(data.classes) != num_classes:
        log.warning("%s in %s has %d classes, expected %d", name, folder, len(data.classes), num_classes)
    train, test = _split(data.train_x, data.train_y), _split(data.test_x, data.test_y)
    return Dataset(name, train, test, list(data.classes), data.mean, data.std)


def _compact(name: str) -> Layout:
    return Layout("npz", (name,), "train.npz", ("train.npz", "test.npz"),
                  f"compact <root>/{name}/{{train,test}}.npz", read_compact)


def _imagefolder(name: str, size: int) -> Layout:
    return Layout("imagefolder", (name,), "train", ("train", "test"),
                  f"ImageFolder <root>/{name}/{{train,test}}/<class>/<image>",
                  partial(read_imagefolder, size=size))


CIFAR10_BATCHES = Layout(
    "batches", ("cifar-10-batches-py", "cifar10/cifar-10-batches-py"), "batches.meta", CIFAR_FILES,
    "torchvision <root>/[cifar10/]cifar-10-batches-py/{data_batch_1..5,test_batch,batches.meta}",
    read_cifar_batches,
)
GTSRB_PPM = Layout(
    "ppm", ("gtsrb",), "GTSRB/Training", ("GTSRB", "GT-final_test.csv"),
    "torchvision <root>/gtsrb/{GTSRB/Training/<class>/{GT-<class>.csv,*.ppm},"
    "GTSRB/Final_Test/Images/*.ppm,GT-final_test.csv}",
    partial(read_gtsrb_ppm, classes=GTSRB_CLASSES, size=32),
)
TINYIMAGENET = Layout(
    "standard", ("tiny-imagenet-200", "tinyimagenet/tiny-imagenet-200"), "wnids.txt",
    ("wnids.txt", "words.txt", "train", "val"),
    "<root>/[tinyimagenet/]tiny-imagenet-200/{wnids.txt,train/<wnid>/images/,val/images/,"
    "val/val_annotations.txt}",
    partial(read_tinyimagenet, size=64),
)


@DATASETS.register("cifar10")
def cifar10(roots: list[Path]) -> Dataset:
    """CIFAR-10: 50,000 train / 10,000 test RGB 32x32 images, 10 classes (airplane ... truck)."""
    layouts = [_compact("cifar10"), CIFAR10_BATCHES, _imagefolder("cifar10", 32)]
    return _from_files("cifar10", roots, layouts, 10)


@DATASETS.register("gtsrb")
def gtsrb(roots: list[Path]) -> Dataset:
    """GTSRB: 39,209 train / 12,630 test traffic signs, RGB resized to 32x32 (whole image), 43 classes."""
    layouts = [_compact("gtsrb"), GTSRB_PPM, _imagefolder("gtsrb", 32)]
    return _from_files("gtsrb", roots, layouts, 43)


@DATASETS.register("tinyimagenet")
def tinyimagenet(roots: list[Path]) -> Dataset:
    """Tiny-ImageNet: 100,000 train / 10,000 val (used as test) RGB 64x64 images, 200 classes."""
    layouts = [_compact("tinyimagenet"), TINYIMAGENET, _imagefolder("tinyimagenet", 64)]
    return _from_files("tinyimagenet", roots, layouts, 200)


@DATASETS.register("digits")
def digits(roots: list[Path]) -> Dataset:
    """scikit-learn's 1,797 8x8 digits, scaled to [0, 1] and upsampled (bilinear) to 1x16x16.

    A fixed 80/20 split (a permutation from a generator seeded 0): 1,437 train / 360 test.
    Needs no files, so ``roots`` is ignored. Meant for fast tests and examples.
    """
    from sklearn.datasets import load_digits  # imported here: scikit-learn takes ~1 s to import

    bunch = load_digits()
    x = torch.from_numpy(bunch.images).float().div_(16).unsqueeze(1)  # (1797, 1, 8, 8), pixels 0..16
    x = F.interpolate(x, size=(16, 16), mode="bilinear", align_corners=False).clamp_(0, 1)
    y = torch.from_numpy(bunch.target).long()
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    train_idx, test_idx = order[: int(0.8 * len(y))], order[int(0.8 * len(y)) :]
    train, test = Split(x[train_idx], y[train_idx]), Split(x[test_idx], y[test_idx])
    std, mean = torch.std_mean(train.x, dim=(0, 2, 3), correction=0)
    classes = [str(i) for i in range(10)]
    return Dataset("digits", train, test, classes, tuple(mean.tolist()), tuple(std.tolist()))
