"""Readers for the on-disk forms of a dataset; each decodes a folder to uint8 pixels (N, H, W, 3) + labels.

Every reader raises :class:`TacreconError` naming the offending file for anything malformed.
"""

from __future__ import annotations

import csv
import io
import logging
import pickle
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from tacrecon.errors import TacreconError

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".ppm")
COMPACT_KEYS = ("encoded", "offsets", "labels", "format", "size", "classes")
CIFAR_FILES = ("batches.meta", *(f"data_batch_{i}" for i in range(1, 6)), "test_batch")


@dataclass
class Decoded:
    """A dataset decoded to pixels, before any conversion to tensors.

    Attributes:
        train_x: uint8 (N, H, W, 3).
        train_y: int64 (N,), values in [0, len(classes)).
        test_x: uint8 (M, H, W, 3).
        test_y: int64 (M,).
        classes: class names in label order.
        mean: per-channel mean of ``train_x`` on the [0, 1] scale (C,); readers leave it empty.
        std: per-channel std of ``train_x`` on the [0, 1] scale (C,); readers leave it empty.
    """

    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    classes: list[str]
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()


def check_labels(y: np.ndarray | list[int], num_classes: int, origin: Path) -> np.ndarray:
    """``y`` as int64 (N,); anything but integers in [0, num_classes) is an error naming ``origin``."""
    y = np.asarray(y)
    if y.ndim != 1 or not (np.issubdtype(y.dtype, np.integer) or y.size == 0):
        raise TacreconError(f"{origin}: labels must be a 1-D list of integers, got {y.dtype} {y.shape}")
    y = y.astype(np.int64)
    bad = (y < 0) | (y >= num_classes)
    if bad.any():
        raise TacreconError(f"{origin}: label {int(y[bad][0])} out of range for {num_classes} classes")
    return y


def read_npz(path: Path, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of the .npz archive ``path`` (never unpickles)."""
    try:
        with path.open("rb") as f:  # opened here: np.load(path) leaks the file when the zip is damaged
            z = np.load(f, allow_pickle=False)
            if not isinstance(z, np.lib.npyio.NpzFile):
                raise ValueError("not an .npz archive")
            missing = [k for k in keys if k not in z.files]
            if missing:
                raise TacreconError(f"{path}: missing keys {missing}; expected keys {list(keys)}")
            return {k: z[k] for k in keys}
    except TacreconError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile, zlib.error) as e:
        raise TacreconError(f"cannot read {path}: {e}") from e


def _rgb(src: Path | io.BytesIO, size: int, what: str, resize: bool = True) -> np.ndarray:
    """One image as uint8 (size, size, 3), resized bilinearly (whole image) if ``resize``."""
    try:
        with Image.open(src) as img:
            rgb = img.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:
        raise TacreconError(f"cannot decode {what}: {e}") from e
    if rgb.size != (size, size):
        if not resize:
            raise TacreconError(f"{what} is {rgb.size[0]}x{rgb.size[1]}, expected {size}x{size}")
        rgb = rgb.resize((size, size), Image.Resampling.BILINEAR)
    return np.asarray(rgb)


def _decode_items(items: Sequence[tuple[Path, int]], size: int, where: Path) -> tuple[np.ndarray, ...]:
    """Decode (image file, label) pairs to uint8 (N, size, size, 3) and int64 (N,)."""
    if not items:
        raise TacreconError(f"no images found in {where}")
    x = np.empty((len(items), size, size, 3), np.uint8)
    for i, (path, _) in enumerate(tqdm(items, desc=f"decoding {where.name}", unit="img", disable=None)):
        x[i] = _rgb(path, size, str(path))
    return x, np.array([label for _, label in items], dtype=np.int64)


# --- compact npz: <dir>/{train,test}.npz, see shared/data/README.md --------------------------


def _check_compact(z: dict[str, np.ndarray], path: Path) -> None:
    """Raise unless the arrays of a compact file agree with one another (see COMPACT_KEYS)."""
    enc, off, size = z["encoded"], z["offsets"], z["size"]
    if enc.dtype != np.uint8 or enc.ndim != 1 or z["classes"].ndim != 1:
        raise TacreconError(f"{path}: encoded must be 1-D uint8 and classes 1-D")
    if size.ndim or not np.issubdtype(size.dtype, np.integer) or int(size) <= 0:
        raise TacreconError(f"{path}: size must be a positive integer scalar, got {size!r}")
    n = len(z["labels"])
    if off.shape != (n + 1,) or not np.issubdtype(off.dtype, np.integer) or n == 0:
        raise TacreconError(f"{path}: offsets have shape {off.shape}, expected ({n} labels + 1,)")
    if off[0] != 0 or off[-1] != len(enc) or (np.diff(off) <= 0).any():
        raise TacreconError(f"{path}: offsets must rise from 0 to {len(enc)} (the encoded length)")


def _compact_split(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Decode one compact split file to uint8 (N, S, S, 3), labels (N,) and class names."""
    z = read_npz(path, COMPACT_KEYS)
    _check_compact(z, path)
    enc, off, size = z["encoded"], z["offsets"], int(z["size"])
    y = check_labels(z["labels"], len(z["classes"]), path)
    x = np.empty((len(y), size, size, 3), np.uint8)
    for i in tqdm(range(len(y)), desc=f"decoding {path.parent.name}/{path.name}", unit="img", disable=None):
        src = io.BytesIO(enc[off[i] : off[i + 1]].tobytes())
        x[i] = _rgb(src, size, f"image {i} of {path}", resize=False)
    return x, y, [str(c) for c in z["classes"]]


def read_compact(folder: Path) -> Decoded:
    """Read ``folder/train.npz`` and ``folder/test.npz`` (the compact format)."""
    train_x, train_y, classes = _compact_split(folder / "train.npz")
    test_x, test_y, test_classes = _compact_split(folder / "test.npz")
    if test_classes != classes:
        raise TacreconError(f"{folder / 'test.npz'}: classes differ from those of train.npz")
    return Decoded(train_x, train_y, test_x, test_y, classes)


# --- CIFAR-10 python batches (torchvision's cifar-10-batches-py) ------------------------------


class _CifarUnpickler(pickle.Unpickler):
    """Unpickles only what CIFAR-10's batches hold: dicts, lists, bytes and numpy arrays."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),  # how numpy 1.x (the official files) pickles arrays
        ("numpy._core.multiarray", "_reconstruct"),  # how numpy 2.x does
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in a CIFAR-10 batch")
        return super().find_class(module, name)


def _unpickle(path: Path) -> dict:
    """One standard CIFAR-10 batch file (a pickled dict with bytes keys)."""
    if not path.is_file():
        raise TacreconError(f"missing {path}; cifar-10-batches-py needs {', '.join(CIFAR_FILES)}")
    try:
        with path.open("rb") as f:
            obj = _CifarUnpickler(f, encoding="bytes").load()
    except Exception as e:  # a damaged pickle fails in many ways; all mean "not a CIFAR batch"
        raise TacreconError(f"cannot read CIFAR-10 batch {path}: {e}") from e
    if not isinstance(obj, dict):
        raise TacreconError(f"{path}: not a CIFAR-10 batch (not a dict)")
    return obj


def _cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """uint8 (N, 32, 32, 3) and labels (N,) of one batch; rows are 1024 R, then G, then B values."""
    batch = _unpickle(path)
    try:
        x = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
        y = check_labels(batch[b"labels"], 10, path)
    except (KeyError, ValueError, TypeError) as e:
        raise TacreconError(f"{path}: not a CIFAR-10 batch ({e!r})") from e
    if len(x) != len(y):
        raise TacreconError(f"{path}: {len(x)} images but {len(y)} labels")
    return x, y


def read_cifar_batches(folder: Path) -> Decoded:
    """Read torchvision's ``cifar-10-batches-py`` folder."""
    meta = _unpickle(folder / "batches.meta")
    names = meta.get(b"label_names")
    if not isinstance(names, list) or len(names) != 10:
        raise TacreconError(f"{folder / 'batches.meta'}: expected 10 label_names")
    train = [_cifar_batch(folder / f"data_batch_{i}") for i in range(1, 6)]
    test_x, test_y = _cifar_batch(folder / "test_batch")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    train_x = np.concatenate([x for x, _ in train])
    train_y = np.concatenate([y for _, y in train])
    return Decoded(train_x, train_y, np.ascontiguousarray(test_x), test_y, classes)


# --- GTSRB as torchvision lays it out -------------------------------------------------------


def _gt_csv(path: Path, num_classes: int) -> list[tuple[str, int]]:
    """(Filename, ClassId) rows of a GTSRB ground-truth CSV (';'-separated, with a header)."""
    try:
        with path.open(newline="", encoding="utf-8") as f:
            rows = [(r["Filename"], int(r["ClassId"])) for r in csv.DictReader(f, delimiter=";")]
    except (OSError, KeyError, ValueError, TypeError, csv.Error) as e:
        raise TacreconError(f"cannot read GTSRB ground truth {path}: {e!r}") from e
    check_labels(np.array([c for _, c in rows], dtype=np.int64), num_classes, path)
    return rows


def read_gtsrb_ppm(folder: Path, classes: Sequence[str], size: int = 32) -> Decoded:
    """Read torchvision's GTSRB folder (``<root>/gtsrb``), resizing every image to size x size.

    Train: ``GTSRB/Training/<class>/*.ppm`` listed with labels in ``GT-<class>.csv``; test:
    ``GTSRB/Final_Test/Images/*.ppm`` labelled by ``GT-final_test.csv`` in ``folder`` itself.
    """
    train_dir = folder / "GTSRB" / "Training"
    class_dirs = sorted(p for p in train_dir.iterdir() if p.is_dir())
    train = [(d / f, c) for d in class_dirs for f, c in _gt_csv(d / f"GT-{d.name}.csv", len(classes))]
    test_dir = folder / "GTSRB" / "Final_Test" / "Images"
    test = [(test_dir / f, c) for f, c in _gt_csv(folder / "GT-final_test.csv", len(classes))]
    train_xy, test_xy = _decode_items(train, size, train_dir), _decode_items(test, size, test_dir)
    return Decoded(train_xy[0], train_xy[1], test_xy[0], test_xy[1], list(classes))


# --- ImageFolder: <dir>/{train,test}/<class>/<image> ----------------------------------------


def _images(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted."""
    if not folder.is_dir():
        raise TacreconError(f"missing folder {folder}")
    return sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def _folder_items(split_dir: Path, classes: list[str]) -> list[tuple[Path, int]]:
    """(image, label) pairs of ``split_dir/<class>/<image>``; a class not in ``classes`` is an error."""
    if not split_dir.is_dir():
        raise TacreconError(f"missing folder {split_dir}")
    index = {c: i for i, c in enumerate(classes)}
    items = []
    for d in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        if d.name not in index:
            raise TacreconError(f"{d}: class {d.name!r} is not among the train classes")
        items += [(p, index[d.name]) for p in _images(d)]
    return items


def read_imagefolder(folder: Path, size: int) -> Decoded:
    """Read ``folder/{train,test}/<class>/*``; labels index the sorted train class folders."""
    classes = sorted(p.name for p in (folder / "train").iterdir() if p.is_dir())
    train = _decode_items(_folder_items(folder / "train", classes), size, folder / "train")
    test = _decode_items(_folder_items(folder / "test", classes), size, folder / "test")
    return Decoded(train[0], train[1], test[0], test[1], classes)


# --- Tiny-ImageNet: tiny-imagenet-200/ -------------------------------------------------------


def _text_rows(path: Path) -> list[list[str]]:
    """Non-empty lines of a tab-separated text file, split on tabs."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise TacreconError(f"cannot read {path}: {e}") from e
    return [line.strip().split("\t") for line in lines if line.strip()]


def _tiny_names(words_txt: Path, wnids: list[str]) -> list[str]:
    """Each wnid's first synonym in ``words.txt`` ("n01443537<TAB>goldfish, Carassius") or the wnid."""
    rows = _text_rows(words_txt) if words_txt.is_file() else []
    words = {r[0]: r[1].split(",")[0].strip() for r in rows if len(r) > 1}
    return [words.get(w) or w for w in wnids]


def read_tinyimagenet(folder: Path, size: int = 64) -> Decoded:
    """Read the official ``tiny-imagenet-200`` folder; its val split serves as the test split.

    Labels index ``wnids.txt``; train is ``train/<wnid>/images/*``, test is ``val/images/*`` labelled
    by ``val/val_annotations.txt`` (file, wnid, box). Names come from ``words.txt`` when present.
    """
    wnids = [row[0] for row in _text_rows(folder / "wnids.txt")]
    index = {w: i for i, w in enumerate(wnids)}
    train = [(p, i) for i, w in enumerate(wnids) for p in _images(folder / "train" / w / "images")]
    ann = folder / "val" / "val_annotations.txt"
    rows = _text_rows(ann)
    unknown = [r for r in rows if len(r) < 2 or r[1] not in index]
    if unknown:
        raise TacreconError(f"{ann}: line {unknown[0]} does not name a file and a wnid from wnids.txt")
    test = [(folder / "val" / "images" / r[0], index[r[1]]) for r in rows]
    classes = _tiny_names(folder / "words.txt", wnids)
    train_xy = _decode_items(train, size, folder / "train")
    test_xy = _decode_items(test, size, folder / "val")
    return Decoded(train_xy[0], train_xy[1], test_xy[0], test_xy[1], classes)
