"""Images for the foreign family: decode ``<root>/<dataset>/<split>.npz`` once, cache the pixels.

The split files hold encoded images (``encoded`` bytes, ``offsets``, ``labels``, ``format``,
``size``, ``classes``). The first call decodes every image with Pillow and keeps the uint8
array (N, 32, 32, 3) as an ``.npy`` in a cache folder outside the repository; later calls read
that file. Only numpy, Pillow and torch are used.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
DATA_ROOT = Path(os.environ.get("FOREIGN_DATA", ROOT.parent / "shared" / "data"))
CACHE = Path(os.environ.get("FOREIGN_CACHE", Path.home() / ".cache" / "tacrecon-foreign"))
NUM_CLASSES = {"cifar10": 10, "gtsrb": 43}


def decode_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(uint8 images (N, H, W, 3), int64 labels (N,)) decoded from one split file."""
    with np.load(path, allow_pickle=False) as z:
        encoded, offsets, labels = z["encoded"], z["offsets"], z["labels"].astype(np.int64)
        size = int(z["size"])
    images = np.empty((len(labels), size, size, 3), dtype=np.uint8)
    for i in range(len(labels)):
        blob = encoded[offsets[i]:offsets[i + 1]].tobytes()
        with Image.open(io.BytesIO(blob)) as im:
            images[i] = np.asarray(im.convert("RGB"), dtype=np.uint8)
    return images, labels


def _save_atomic(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.save(f, array)
    os.replace(tmp, path)


def load_uint8(dataset: str, split: str, root: Path | None = None,
               cache: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Decoded uint8 images (N, H, W, 3) and labels (N,), from the cache when it has them."""
    if dataset not in NUM_CLASSES:
        raise ValueError(f"unknown data set {dataset!r} (known: {', '.join(NUM_CLASSES)})")
    root, cache = Path(root or DATA_ROOT), Path(cache or CACHE)
    source = root / dataset / f"{split}.npz"
    stem = cache / f"{dataset}-{split}"
    img_path, lab_path = stem.with_suffix(".images.npy"), stem.with_suffix(".labels.npy")
    if img_path.is_file() and lab_path.is_file() and img_path.stat().st_mtime >= source.stat().st_mtime:
        return np.load(img_path), np.load(lab_path)
    images, labels = decode_split(source)
    _save_atomic(lab_path, labels)
    _save_atomic(img_path, images)
    return images, labels


def load(dataset: str, split: str, root: Path | None = None,
         cache: Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Float images (N, 3, H, W) in [0, 1] and int64 labels (N,)."""
    images, labels = load_uint8(dataset, split, root, cache)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous().float().div_(255.0)
    return x, torch.from_numpy(labels).long()
