"""tacrecon.data: every on-disk form on tiny files, the decode cache, root resolution and errors."""

from __future__ import annotations

import io
import os
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tacrecon.data import DATASETS, Dataset, data_roots, default_cache_dir, load_dataset, readers
from tacrecon.errors import TacreconError

CIFAR_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
SIGNS = [f"sign {i}" for i in range(43)]


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Keep every test away from the user's data and cache folders."""
    monkeypatch.setenv("TACRECON_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("TACRECON_DATA", raising=False)
    return tmp_path / "cache"


def images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)


def encode(img: np.ndarray, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format=fmt)
    return buf.getvalue()


def write_compact(path: Path, x: np.ndarray, y: np.ndarray, classes: list[str], **override) -> None:
    blobs = [encode(img) for img in x]
    arrays = dict(
        encoded=np.frombuffer(b"".join(blobs), dtype=np.uint8),
        offsets=np.cumsum([0] + [len(b) for b in blobs]).astype(np.int64),
        labels=np.asarray(y, dtype=np.int64), format=np.array("png"), size=np.array(x.shape[1]),
        classes=np.array(classes),
    )
    arrays.update(override)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})


def compact_root(root: Path, name: str = "cifar10", classes: list[str] = CIFAR_CLASSES, seed: int = 0):
    """A compact dataset of 12 train / 6 test PNG images; returns the uint8 arrays and labels."""
    x_tr, x_te = images(12, seed=seed), images(6, seed=seed + 1)
    y_tr, y_te = np.arange(12) % len(classes), np.arange(6) % len(classes)
    write_compact(root / name / "train.npz", x_tr, y_tr, classes)
    write_compact(root / name / "test.npz", x_te, y_te, classes)
    return x_tr, y_tr, x_te, y_te


def as_u8(x: torch.Tensor) -> np.ndarray:
    """float (N, C, H, W) in [0, 1] back to uint8 (N, H, W, C)."""
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()


def check_split_contract(ds: Dataset, shape: tuple[int, int, int]) -> None:
    for split in (ds.train, ds.test):
        assert split.x.dtype == torch.float32 and split.y.dtype == torch.int64
        assert split.x.shape[1:] == shape and split.x.is_contiguous()
        assert 0 <= split.x.min() and split.x.max() <= 1
        assert 0 <= split.y.min() and split.y.max() < ds.num_classes
    assert len(ds.mean) == len(ds.std) == shape[0]


def test_registry_and_unknown_name():
    assert DATASETS.names() == ["cifar10", "digits", "gtsrb", "tinyimagenet"]
    with pytest.raises(TacreconError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")


def test_digits_is_deterministic_and_in_range():
    a, b = load_dataset("digits"), load_dataset("digits", device="cpu")
    assert a.train.x.shape == (1437, 1, 16, 16) and a.test.x.shape == (360, 1, 16, 16)
    check_split_contract(a, (1, 16, 16))
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert a.classes == [str(i) for i in range(10)] and a.train.device == torch.device("cpu")
    assert a.mean[0] == pytest.approx(a.train.x.mean().item(), abs=1e-5)


@pytest.mark.parametrize("name, classes", [("cifar10", CIFAR_CLASSES), ("gtsrb", SIGNS)])
def test_compact_png_round_trips(tmp_path: Path, cache: Path, name: str, classes: list[str]):
    x_tr, y_tr, x_te, y_te = compact_root(tmp_path / "data", name, classes)
    ds = load_dataset(name, root=tmp_path / "data")
    check_split_contract(ds, (3, 32, 32))
    assert np.array_equal(as_u8(ds.train.x), x_tr) and np.array_equal(as_u8(ds.test.x), x_te)
    assert ds.train.y.tolist() == y_tr.tolist() and ds.test.y.tolist() == y_te.tolist()
    assert ds.classes == classes and ds.name == name
    assert ds.mean == pytest.approx(ds.train.x.mean(dim=(0, 2, 3)).tolist(), abs=1e-6)
    assert ds.std == pytest.approx(ds.train.x.std(dim=(0, 2, 3), unbiased=False).tolist(), abs=1e-6)
    assert [p.name.startswith(f"{name}-npz-") for p in cache.iterdir()] == [True]


def test_cache_is_used_on_second_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    compact_root(tmp_path)
    first = load_dataset("cifar10", root=tmp_path)

    def fail(*args, **kwargs):
        raise AssertionError("decoded again despite the cache")

    monkeypatch.setattr(readers, "_rgb", fail)
    second = load_dataset("cifar10", root=tmp_path)
    assert torch.equal(first.train.x, second.train.x) and first.mean == second.mean


def test_changed_source_changes_cache_key(tmp_path: Path, cache: Path):
    compact_root(tmp_path, seed=0)
    first = load_dataset("cifar10", root=tmp_path)
    x_tr, *_ = compact_root(tmp_path, seed=5)
    second = load_dataset("cifar10", root=tmp_path)
    assert np.array_equal(as_u8(second.train.x), x_tr) and not torch.equal(first.train.x, second.train.x)
    assert len(list(cache.glob("cifar10-npz-*.npz"))) == 2


@pytest.mark.parametrize("damage", ["garbage", "truncated", "wrong keys"])
def test_corrupt_cache_is_rebuilt(tmp_path: Path, cache: Path, damage: str):
    compact_root(tmp_path)
    first = load_dataset("cifar10", root=tmp_path)
    (entry,) = cache.glob("*.npz")
    if damage == "garbage":
        entry.write_bytes(b"not a zip at all")
    elif damage == "truncated":
        entry.write_bytes(entry.read_bytes()[: entry.stat().st_size // 2])
    else:
        np.savez(entry, foo=np.zeros(3))
    again = load_dataset("cifar10", root=tmp_path)
    assert torch.equal(first.train.x, again.train.x)
    with np.load(entry) as rebuilt:
        assert set(rebuilt.files) >= {"train_x", "test_y", "classes", "mean"}


def test_unwritable_cache_is_not_fatal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    compact_root(tmp_path)
    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("TACRECON_CACHE", str(tmp_path / "a-file" / "cache"))
    assert len(load_dataset("cifar10", root=tmp_path).train) == 12


def cifar_batch(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    data = x.transpose(0, 3, 1, 2).reshape(len(x), 3072)  # 1024 R, then G, then B per row
    path.write_bytes(pickle.dumps({b"batch_label": b"b", b"data": data, b"labels": y.tolist()}))


@pytest.mark.parametrize("where", ["cifar-10-batches-py", "cifar10/cifar-10-batches-py"])
def test_cifar10_python_batches(tmp_path: Path, where: str):
    folder = tmp_path / where
    folder.mkdir(parents=True)
    x = images(12)
    y = np.arange(12) % 10
    for i in range(5):
        cifar_batch(folder / f"data_batch_{i + 1}", x[2 * i : 2 * i + 2], y[2 * i : 2 * i + 2])
    cifar_batch(folder / "test_batch", x[10:], y[10:])
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [c.encode() for c in CIFAR_CLASSES]}))
    ds = load_dataset("cifar10", root=tmp_path)
    check_split_contract(ds, (3, 32, 32))
    assert np.array_equal(as_u8(ds.train.x), x[:10]) and np.array_equal(as_u8(ds.test.x), x[10:])
    assert ds.train.y.tolist() == y[:10].tolist() and ds.classes == CIFAR_CLASSES


class Evil:
    """Unpickling this deletes ``victim``, unless the unpickler refuses ``os.remove``."""

    def __init__(self, victim: Path) -> None:
        self.victim = victim

    def __reduce__(self):
        return os.remove, (str(self.victim),)


def test_cifar10_batches_refuse_foreign_pickles(tmp_path: Path):
    folder, victim = tmp_path / "cifar-10-batches-py", tmp_path / "victim"
    folder.mkdir()
    victim.write_text("still here")
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": Evil(victim)}))
    with pytest.raises(TacreconError, match="batches.meta.*not allowed"):
        load_dataset("cifar10", root=tmp_path)
    assert victim.exists()


def gtsrb_tree(root: Path) -> dict[str, np.ndarray]:
    """torchvision's GTSRB layout: 2 classes x 2 train images and 3 test images, of odd sizes."""
    base, header = root / "gtsrb", "Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"
    rng, pixels = np.random.default_rng(0), {}
    rows: dict[Path, list[str]] = {}
    layout = [(0, "00000"), (0, "00000"), (2, "00002"), (2, "00002"), (2, "test"), (0, "test"), (40, "test")]
    for i, (cls, sub) in enumerate(layout):
        img = rng.integers(0, 256, (30 + i, 35 + i, 3), dtype=np.uint8)
        folder = base / "GTSRB" / ("Final_Test/Images" if sub == "test" else f"Training/{sub}")
        csv = base / "GT-final_test.csv" if sub == "test" else folder / f"GT-{sub}.csv"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / f"{i:05d}.ppm")
        rows.setdefault(csv, [header]).append(f"{i:05d}.ppm;{35 + i};{30 + i};5;5;20;20;{cls}")
        pixels[f"{sub}/{i}"] = np.asarray(Image.fromarray(img).resize((32, 32), Image.Resampling.BILINEAR))
    for csv, lines in rows.items():
        csv.write_text("\n".join(lines) + "\n")
    return pixels


def test_gtsrb_torchvision_layout(tmp_path: Path):
    pixels = gtsrb_tree(tmp_path)
    ds = load_dataset("gtsrb", root=tmp_path)
    check_split_contract(ds, (3, 32, 32))
    assert ds.train.y.tolist() == [0, 0, 2, 2] and ds.test.y.tolist() == [2, 0, 40]
    assert np.array_equal(as_u8(ds.train.x)[2], pixels["00002/2"])
    assert np.array_equal(as_u8(ds.test.x)[2], pixels["test/6"])
    assert ds.num_classes == 43 and ds.classes[14] == "Stop"


def test_gtsrb_bad_class_id_names_the_csv(tmp_path: Path):
    gtsrb_tree(tmp_path)
    csv = tmp_path / "gtsrb" / "GT-final_test.csv"
    csv.write_text(csv.read_text().replace(";40\n", ";43\n"))
    with pytest.raises(TacreconError, match=f"{re.escape(str(csv))}.*out of range"):
        load_dataset("gtsrb", root=tmp_path)


def test_imagefolder_tree(tmp_path: Path):
    x = images(5, size=40)
    files = [("train", "cat"), ("train", "ant"), ("train", "cat"), ("test", "cat"), ("test", "ant")]
    for i, (split, cls) in enumerate(files):
        (tmp_path / "cifar10" / split / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(x[i]).save(tmp_path / "cifar10" / split / cls / f"{i}.png")
    ds = load_dataset("cifar10", root=tmp_path)
    check_split_contract(ds, (3, 32, 32))
    assert ds.classes == ["ant", "cat"] and ds.train.y.tolist() == [0, 1, 1] and ds.test.y.tolist() == [0, 1]
    expected = np.asarray(Image.fromarray(x[1]).resize((32, 32), Image.Resampling.BILINEAR))
    assert np.array_equal(as_u8(ds.train.x)[0], expected)


def test_an_edited_image_in_a_folder_is_decoded_again(tmp_path: Path, cache: Path):
    # folders are keyed by every file's size and mtime: a replaced image must not be served stale
    for split, cls, i in (("train", "cat", 0), ("train", "ant", 1), ("test", "cat", 2), ("test", "ant", 3)):
        (tmp_path / "cifar10" / split / cls).mkdir(parents=True, exist_ok=True)
        Image.fromarray(images(4, size=32)[i]).save(tmp_path / "cifar10" / split / cls / f"{i}.png")
    first = load_dataset("cifar10", root=tmp_path)
    target = tmp_path / "cifar10" / "train" / "cat" / "0.png"
    Image.fromarray(np.full((32, 32, 3), 7, dtype=np.uint8)).save(target)
    os.utime(target, ns=(target.stat().st_atime_ns, target.stat().st_mtime_ns + 10**9))
    second = load_dataset("cifar10", root=tmp_path)
    assert not torch.equal(first.train.x, second.train.x)
    assert bool((as_u8(second.train.x)[1] == 7).all())  # "ant" sorts first: the cat is image 1


def tiny_tree(base: Path) -> None:
    """The official Tiny-ImageNet layout: 3 wnids x 2 train images, 2 val images, words.txt."""
    wnids = ["n02", "n01", "n03"]
    for w in wnids:
        (base / "train" / w / "images").mkdir(parents=True)
        for j in range(2):
            Image.fromarray(images(1, 64, seed=j)[0]).save(base / "train" / w / "images" / f"{w}_{j}.JPEG")
    (base / "val" / "images").mkdir(parents=True)
    Image.new("L", (64, 64), 128).save(base / "val" / "images" / "val_0.JPEG")  # some real ones are grayscale
    Image.fromarray(images(1, 48)[0]).save(base / "val" / "images" / "val_1.JPEG")
    (base / "val" / "val_annotations.txt").write_text(
        "val_0.JPEG\tn03\t0\t0\t9\t9\nval_1.JPEG\tn02\t1\t1\t8\t8\n")
    (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (base / "words.txt").write_text("n01\tgoldfish, Carassius auratus\nn02\ttench\nn09\tother\n")


@pytest.mark.parametrize("where", ["tiny-imagenet-200", "tinyimagenet/tiny-imagenet-200"])
def test_tinyimagenet_layout(tmp_path: Path, where: str):
    tiny_tree(tmp_path / where)
    ds = load_dataset("tinyimagenet", root=tmp_path)
    check_split_contract(ds, (3, 64, 64))
    assert ds.classes == ["tench", "goldfish", "n03"]
    assert ds.train.y.tolist() == [0, 0, 1, 1, 2, 2] and ds.test.y.tolist() == [2, 0]
    assert torch.allclose(ds.test.x[0], torch.full((3, 64, 64), 128 / 255), atol=2 / 255)


def test_tinyimagenet_unknown_wnid_names_the_annotations(tmp_path: Path):
    tiny_tree(tmp_path / "tiny-imagenet-200")
    ann = tmp_path / "tiny-imagenet-200" / "val" / "val_annotations.txt"
    ann.write_text(ann.read_text().replace("n02", "n99"))
    with pytest.raises(TacreconError, match=f"{re.escape(str(ann))}.*wnid"):
        load_dataset("tinyimagenet", root=tmp_path)


def test_compact_wins_over_other_forms(tmp_path: Path, cache: Path):
    (tmp_path / "cifar10" / "train" / "x").mkdir(parents=True)  # an (empty) ImageFolder, tried later
    compact_root(tmp_path)
    assert len(load_dataset("cifar10", root=tmp_path).train) == 12


def test_root_resolution_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    assert data_roots() == [tmp_path / "xdg" / "tacrecon" / "data"] == [default_cache_dir() / "data"]
    monkeypatch.setenv("TACRECON_DATA", f"{tmp_path / 'env1'}{os.pathsep}{tmp_path / 'env2'}")
    assert data_roots() == [tmp_path / "env1", tmp_path / "env2"]
    assert data_roots(tmp_path / "arg") == [tmp_path / "arg"] and data_roots(str(tmp_path)) == [tmp_path]
    compact_root(tmp_path / "env2")
    assert len(load_dataset("cifar10").test) == 6  # found in the second root


def test_missing_dataset_lists_every_path_tried(tmp_path: Path):
    with pytest.raises(TacreconError) as err:
        load_dataset("cifar10", root=f"{tmp_path / 'a'}{os.pathsep}{tmp_path / 'b'}")
    msg = str(err.value)
    for root in ("a", "b"):
        for rel in (
            "cifar10/train.npz", "cifar-10-batches-py", "cifar10/cifar-10-batches-py", "cifar10/train"
        ):
            assert str(tmp_path / root / rel) in msg
    assert "\n" not in msg and "TACRECON_DATA" in msg and "expected one of" in msg


@pytest.mark.parametrize("override, match", [
    (dict(offsets=None), "missing keys"),
    (dict(offsets=np.array([0, 5, 3], dtype=np.int64)), "offsets"),
    (dict(labels=np.array([0, 10], dtype=np.int64)), "out of range"),
    (dict(encoded=np.zeros(64, dtype=np.uint8), offsets=np.array([0, 32, 64])), "cannot decode image 0"),
    (dict(size=np.array(16)), "expected 16x16"),
])
def test_malformed_compact_names_the_file(tmp_path: Path, override: dict, match: str):
    compact_root(tmp_path)
    path = tmp_path / "cifar10" / "test.npz"
    write_compact(path, images(2), np.array([0, 1]), CIFAR_CLASSES, **override)
    with pytest.raises(TacreconError, match=match) as err:
        load_dataset("cifar10", root=tmp_path)
    assert str(path) in str(err.value)


def test_not_an_npz_names_the_file(tmp_path: Path):
    compact_root(tmp_path)
    (tmp_path / "cifar10" / "train.npz").write_bytes(b"garbage")
    with pytest.raises(TacreconError, match=re.escape(f"cannot read {tmp_path / 'cifar10' / 'train.npz'}")):
        load_dataset("cifar10", root=tmp_path)
