"""A cache of decoded datasets: one uncompressed .npz of uint8 pixels per (dataset, form, source contents).

Decoding 50,000 images takes ~10 s; loading the cached arrays takes well under a second.

Cache key: sha256 over a format version, the dataset name, the form's name and, for each
identifying path of the form (``Layout.key``), its relative name plus

* for a file: the sha256 of its bytes (the compact .npz files, the CIFAR-10 batches, CSV/txt files);
* for a folder: every file under it as (relative path, size, mtime in ns), sorted; hashing the
  bytes of 100,000 small images would cost about as much as decoding them;
* for a missing path: a marker, so that adding it changes the key.

So the key changes whenever a source file's bytes change (files) or any file under a folder is
added, removed, resized or touched (folders). The file is
``cache_dir() / f"{dataset}-{form}-{key[:16]}.npz"``; entries for superseded sources are not deleted.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from tacrecon.data.readers import Decoded, check_labels, read_npz
from tacrecon.errors import TacreconError

log = logging.getLogger(__name__)

# Bump when decoding changes (e.g. the resize filter), so that old entries are not reused.
CACHE_VERSION = 1
CACHE_KEYS = ("train_x", "train_y", "test_x", "test_y", "classes", "mean", "std")


def default_cache_dir() -> Path:
    """The user's cache folder for tacrecon, e.g. ``~/.cache/tacrecon`` on Linux."""
    import platformdirs  # imported here: a run that sets TACRECON_CACHE and --data-root does not need it

    return Path(platformdirs.user_cache_dir("tacrecon"))


def cache_dir() -> Path:
    """Where decoded datasets are cached: ``$TACRECON_CACHE``, else ``default_cache_dir()/"decoded"``."""
    env = os.environ.get("TACRECON_CACHE")
    return Path(env).expanduser() if env else default_cache_dir() / "decoded"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _tree_stats(folder: Path) -> str:
    """(relative path, size, mtime_ns) of every file under ``folder``, one per line, sorted."""
    lines = []
    for path in folder.rglob("*"):
        if path.is_file():
            st = path.stat()
            lines.append(f"{path.relative_to(folder).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}")
    return "\n".join(sorted(lines))


def fingerprint(folder: Path, entries: Sequence[str], salt: str) -> str:
    """The cache key (hex sha256) of the paths ``entries`` under ``folder``; see the module docstring."""
    digest = hashlib.sha256(f"tacrecon-decoded-v{CACHE_VERSION}\0{salt}".encode())
    for entry in entries:
        path = folder / entry
        try:
            if path.is_file():
                part = "file " + _file_sha256(path)
            elif path.is_dir():
                part = "dir " + _tree_stats(path)
            else:
                part = "missing"
        except OSError as e:
            raise TacreconError(f"cannot read {path}: {e}") from e
        digest.update(f"\0{entry}\0{part}".encode())
    return digest.hexdigest()


def channel_stats(u8: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std, on the [0, 1] scale, of uint8 images (N, H, W, C).

    Exact and light on memory: a 256-bin histogram per channel instead of a float copy.
    """
    levels = torch.arange(256, dtype=torch.float64) / 255
    pixels = torch.from_numpy(u8)
    means, stds = [], []
    for c in range(u8.shape[-1]):
        p = torch.bincount(pixels[..., c].flatten(), minlength=256).double() / (u8.size // u8.shape[-1])
        mean = float(p @ levels)
        means.append(mean)
        stds.append(float((p @ (levels - mean) ** 2).sqrt()))
    return tuple(means), tuple(stds)


def load_cached(path: Path) -> Decoded | None:
    """The decoded dataset cached at ``path``; None if absent, or if damaged (then it is rebuilt)."""
    if not path.is_file():
        return None
    try:
        z = read_npz(path, CACHE_KEYS)
        classes = [str(c) for c in z["classes"]]
        for split in ("train", "test"):
            x, y = z[f"{split}_x"], z[f"{split}_y"]
            if x.dtype != np.uint8 or x.ndim != 4 or not len(x) or y.dtype != np.int64 or len(y) != len(x):
                raise TacreconError(f"{path}: bad {split} arrays")
            check_labels(y, len(classes), path)
        channels = z["train_x"].shape[-1]
        if z["mean"].shape != (channels,) or z["std"].shape != (channels,):
            raise TacreconError(f"{path}: bad mean/std")
    except TacreconError as e:
        log.warning("ignoring damaged cache file (%s); decoding again", e)
        return None
    mean, std = tuple(z["mean"].tolist()), tuple(z["std"].tolist())
    return Decoded(z["train_x"], z["train_y"], z["test_x"], z["test_y"], classes, mean, std)


def save_cached(path: Path, data: Decoded) -> None:
    """Write ``data`` to ``path`` atomically (temp file in the same folder, then rename).

    A cache that cannot be written is logged, not raised: the data is already decoded.
    """
    tmp: Path | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        tmp = Path(name)
        with os.fdopen(fd, "wb") as f:
            np.savez(f, train_x=data.train_x, train_y=data.train_y, test_x=data.test_x,
                     test_y=data.test_y, classes=np.array(data.classes, dtype=str),
                     mean=np.array(data.mean, dtype=np.float64), std=np.array(data.std, dtype=np.float64))
        os.replace(tmp, path)
        log.info("cached decoded data at %s", path)
    except OSError as e:
        log.warning("could not write cache %s: %s", path, e)
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)  # gone already after a successful rename


def decode_cached(label: str, folder: Path, key: Sequence[str], read: Callable[[Path], Decoded]) -> Decoded:
    """``read(folder)`` with its train stats, from the cache when the source has not changed since.

    Args:
        label: ``"<dataset>-<form>"``; salts the key and prefixes the cache file name.
        folder: the dataset's folder.
        key: the paths in ``folder`` that identify its contents (see :func:`fingerprint`).
        read: decodes ``folder``.
    """
    path = cache_dir() / f"{label}-{fingerprint(folder, key, salt=label)[:16]}.npz"
    data = load_cached(path)
    if data is not None:
        log.info("loaded %s from cache %s", label, path)
        return data
    log.info("decoding %s from %s; this happens once per source", label, folder)
    data = read(folder)
    data.mean, data.std = channel_stats(data.train_x)
    save_cached(path, data)
    return data
