"""BackdoorBench ``attack_result.pt`` records, written the way BackdoorBench writes them.

The fixtures follow BackdoorBench's own saving code (read, not run: it needs torchvision):

* 2.x ``utils/save_load_attack.py::save_attack_result`` saves with ``torch.save`` the dict
  ``model_name, num_classes, model (state_dict), data_path, img_size, clean_data, bd_train,
  bd_test``; ``bd_train`` (None for some attacks) and ``bd_test`` are
  ``prepro_cls_DatasetBD_v2.retrieve_state()`` (``utils/bd_dataset_v2.py``): ``bd_data_container``
  (``save_folder_path, data_dict, save_file_format``), ``getitem_all``, ``getitem_all_switch``,
  ``original_index_array``, ``poison_indicator``, ``save_folder_path``. Every attack writes its
  poisoned images as PNG files, so ``data_dict`` maps an index to ``{"path", "other_info":
  [bd_label, label]}``. Clean sets are not stored: BackdoorBench rebuilds them from ``data_path``.
* 1.x's ``save_attack_result`` stores the poisoned samples themselves: ``bd_train`` =
  ``{x, y, original_index}`` and ``bd_test`` = ``{x, y, original_index, original_targets}``,
  ``x`` a list of PIL images, the rest numpy arrays.
"""

import argparse
import pickle

import numpy as np
import pytest
import torch

from tacrecon.cli import main
from tacrecon.errors import TacreconError
from tacrecon.loading import BACKDOORBENCH_MODELS, load_any
from tacrecon.models import create_model

SAVE_PATH = "./record/badnet_demo"  # BackdoorBench's --save_path; the PNGs lie under it, never read here

# What save_attack_result (2.x) writes at the top level, in its order.
V2_KEYS = ["model_name", "num_classes", "model", "data_path", "img_size", "clean_data", "bd_train", "bd_test"]

# Every name BackdoorBench's generate_cls_model builds (2.x; 1.x has a subset of them).
BACKDOORBENCH_NAMES = [
    "resnet18", "preactresnet18", "resnet34", "resnet50", "alexnet", "vgg11", "vgg16", "vgg19", "vgg19_bn",
    "squeezenet1_0", "densenet161", "inception_v3", "googlenet", "shufflenet_v2_x1_0", "mobilenet_v2",
    "mobilenet_v3_large", "resnext50_32x4d", "wide_resnet50_2", "mnasnet1_0", "efficientnet_b0", "efficientnet_b3",
    "vit_b_16", "vit_b_32", "vit_l_16", "vit_l_32", "densenet121", "resnext29", "senet18", "convnext_tiny",
]


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("TACRECON_CACHE", str(tmp_path / "cache"))


def v2_dataset_state(labels, poisoned, target, folder, numpy_keys=True, subset=True, in_ram=False):
    """``prepro_cls_DatasetBD_v2.retrieve_state()`` of a set with ``labels`` whose ``poisoned`` indices
    carry an all-to-one trigger to ``target``.

    ``poison_indicator`` is float64 (``np.zeros`` then ones); ``original_index_array`` is int64
    (``np.arange``), cut to the poisoned samples for a test set (``subset``). BadNets-style attacks
    key ``data_dict`` by the numpy integers they iterate over; WaNet-style ones by ``int``.
    ``in_ram``: no save folder, so ``data_dict`` holds ``(PIL image, bd_label, label)`` tuples.
    """
    poison_indicator = np.zeros(len(labels))
    poison_indicator[poisoned] = 1
    original_index_array = np.arange(len(labels))
    data_dict = {}
    for i in original_index_array:
        if poison_indicator[i] != 1:
            continue
        key = i if numpy_keys else int(i)
        if in_ram:
            from PIL import Image

            data_dict[key] = (Image.fromarray(np.full((32, 32, 3), 7, np.uint8)), target, int(labels[i]))
        else:
            data_dict[key] = {"path": f"{folder}/{int(labels[i])}/{i}.png", "other_info": [target, int(labels[i])]}
    if subset:
        original_index_array = original_index_array[np.where(poison_indicator == 1)[0]]
    save_folder = None if in_ram else folder
    return {
        "bd_data_container": {"save_folder_path": save_folder, "data_dict": data_dict, "save_file_format": ".png"},
        "getitem_all": True,
        "getitem_all_switch": False,
        "original_index_array": original_index_array,
        "poison_indicator": poison_indicator,
        "save_folder_path": save_folder,
    }


def v2_record(model_name, state, num_classes=10, clean_data="cifar10", with_train=True, **kw):
    """The dict 2.x's save_attack_result hands to torch.save."""
    g = np.random.default_rng(0)
    train_labels, test_labels = g.integers(0, num_classes, 40), g.integers(0, num_classes, 20)
    bd_train = v2_dataset_state(train_labels, [3, 5, 11], 0, f"{SAVE_PATH}/bd_train_dataset", subset=False, **kw)
    test_poisoned = np.where(test_labels != 0)[0]  # all-to-one: the target class is never poisoned
    bd_test = v2_dataset_state(test_labels, test_poisoned, 0, f"{SAVE_PATH}/bd_test_dataset", **kw)
    return {
        "model_name": model_name,
        "num_classes": num_classes,
        "model": state,
        "data_path": f"./data/{clean_data}",
        "img_size": (32, 32, 3),
        "clean_data": clean_data,
        "bd_train": bd_train if with_train else None,
        "bd_test": bd_test,
    }


def v1_record(model_name, state, num_classes=10, clean_data="cifar10"):
    """The dict 1.x's save_attack_result hands to torch.save (the poisoned samples as PIL images)."""
    from PIL import Image

    def samples(n, with_targets):
        x = [Image.fromarray(np.full((32, 32, 3), 10 * i, np.uint8)) for i in range(n)]
        out = {"x": x, "y": np.zeros(n, dtype=np.int64), "original_index": np.arange(n) * 3}
        if with_targets:
            out["original_targets"] = np.arange(n) % num_classes + 1
        return out

    return {"model_name": model_name, "num_classes": num_classes, "model": state, "data_path": "./data/cifar10",
            "img_size": [32, 32, 3], "clean_data": clean_data, "bd_train": samples(3, False), "bd_test": samples(4, True)}


def fake_cifar10(root, n=20):
    """torchvision's cifar-10-batches-py with ``n`` random images per batch, two of each class."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    g = np.random.default_rng(1)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": g.integers(0, 256, (n, 3072), dtype=np.uint8), b"labels": [i % 10 for i in range(n)]}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=4))
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [f"c{i}".encode() for i in range(10)]}))
    return root


def scan(capsys, record, root, *extra):
    code = main(["scan", str(record), "--dataset", "cifar10", "--data-root", str(root), "--clean-n", "60", *map(str, extra)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    return fake_cifar10(tmp_path_factory.mktemp("data"))


@pytest.fixture(scope="module")
def preact():
    torch.manual_seed(0)
    return create_model("preact_resnet18")


def test_fixture_has_exactly_the_keys_save_attack_result_writes(preact):
    record = v2_record("preactresnet18", preact.state_dict())
    assert list(record) == V2_KEYS
    bd_test = record["bd_test"]
    assert set(bd_test) == {"bd_data_container", "getitem_all", "getitem_all_switch", "original_index_array",
                            "poison_indicator", "save_folder_path"}
    assert bd_test["poison_indicator"].dtype == np.float64 and bd_test["original_index_array"].dtype == np.int64
    assert all(isinstance(k, np.int64) for k in bd_test["bd_data_container"]["data_dict"])


@pytest.mark.parametrize("prefix,numpy_keys,with_train", [("", True, True), ("module.", True, True),
                                                          ("", False, False)])
def test_v2_record_of_preact_resnet18_loads_and_scans(tmp_path, capsys, cifar_root, preact, prefix, numpy_keys,
                                                      with_train):
    state = {prefix + k: v for k, v in preact.state_dict().items()}  # "module." after DataParallel
    torch.save(v2_record("preactresnet18", state, numpy_keys=numpy_keys, with_train=with_train),
               tmp_path / "attack_result.pt")
    loaded = load_any(str(tmp_path / "attack_result.pt"))
    assert loaded.kind == "backdoorbench" and loaded.arch == "preact_resnet18"
    assert loaded.meta == {"clean_data": "cifar10", "backdoorbench_model": "preactresnet18", "record_version": "2.x"}
    for k, v in preact.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v)
    if prefix:  # once through the command line, on a stand-in CIFAR-10
        code, out, err = scan(capsys, tmp_path / "attack_result.pt", cifar_root, "--json", tmp_path / "scan.json")
        assert code == 0, err
        assert (tmp_path / "scan.json").is_file()


def test_v2_record_whose_poisoned_images_are_kept_in_memory_loads(tmp_path, preact):
    pytest.importorskip("PIL")
    torch.save(v2_record("preactresnet18", preact.state_dict(), in_ram=True), tmp_path / "attack_result.pt")
    assert load_any(str(tmp_path / "attack_result.pt")).meta["record_version"] == "2.x"


def test_v1_record_loads_without_rebuilding_its_images(tmp_path, preact):
    pytest.importorskip("PIL")
    torch.save(v1_record("preactresnet18", preact.state_dict()), tmp_path / "attack_result.pt")
    loaded = load_any(str(tmp_path / "attack_result.pt"))
    assert loaded.arch == "preact_resnet18" and loaded.meta["record_version"] == "1.x"
    for k, v in preact.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v)


def test_a_record_holding_other_objects_is_refused_in_one_line_naming_them(tmp_path, capsys, cifar_root, preact):
    record = v2_record("preactresnet18", preact.state_dict())
    record["args"] = argparse.Namespace(model="preactresnet18")  # a pickled Python object
    torch.save(record, tmp_path / "attack_result.pt")
    message = r"holds pickled Python objects \(argparse.Namespace\), which are never unpickled"
    with pytest.raises(TacreconError, match=message):
        load_any(str(tmp_path / "attack_result.pt"))
    code, _, err = scan(capsys, tmp_path / "attack_result.pt", cifar_root)
    assert code == 2 and "argparse.Namespace" in err and err.count("\n") == 1


# torchvision's vgg19_bn (configuration "E" with batch norm): (index in features, in, out) of each conv;
# a BatchNorm2d follows each conv at index + 1, a ReLU at + 2, and a max-pool after each stage.
VGG19_BN_CONVS = [(0, 3, 64), (3, 64, 64), (7, 64, 128), (10, 128, 128), (14, 128, 256), (17, 256, 256),
                  (20, 256, 256), (23, 256, 256), (27, 256, 512), (30, 512, 512), (33, 512, 512), (36, 512, 512),
                  (40, 512, 512), (43, 512, 512), (46, 512, 512), (49, 512, 512)]


def vgg19_bn_shapes(num_classes):
    """The state_dict names and shapes, in order, of torchvision.models.vgg19_bn(num_classes=...)."""
    shapes = []
    for i, c_in, c_out in VGG19_BN_CONVS:
        shapes += [(f"features.{i}.weight", (c_out, c_in, 3, 3)), (f"features.{i}.bias", (c_out,))]
        shapes += [(f"features.{i + 1}.{k}", (c_out,)) for k in ("weight", "bias", "running_mean", "running_var")]
        shapes.append((f"features.{i + 1}.num_batches_tracked", ()))
    for i, (c_in, c_out) in zip((0, 3, 6), ((512 * 7 * 7, 4096), (4096, 4096), (4096, num_classes))):
        shapes += [(f"classifier.{i}.weight", (c_out, c_in)), (f"classifier.{i}.bias", (c_out,))]
    return shapes


@pytest.mark.parametrize("num_classes", [10, 43, 1000])
def test_vgg19_bn_state_dict_is_torchvisions(num_classes):
    with torch.device("meta"):  # names and shapes only: no 560 MB of weights
        model = create_model("vgg19_bn", num_classes=num_classes)
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == vgg19_bn_shapes(num_classes)
    if num_classes == 1000:  # torchvision's documented parameter count of vgg19_bn
        assert sum(p.numel() for p in model.parameters()) == 143_678_248
    assert model.latent_dim == 4096 and model.get_classifier() is model.classifier[6]


def test_vgg19_bn_runs_as_torchvision_does():
    torch.manual_seed(0)
    model = create_model("vgg19_bn", num_classes=10).eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():  # torchvision's forward: features, 7x7 average pool, flatten, classifier
        expected = model.classifier(torch.flatten(model.avgpool(model.features(model.normalize(x))), 1))
        torch.testing.assert_close(model(x), expected)
        f = model.features(model.normalize(x))
    assert f.shape == (2, 512, 1, 1)


def test_v2_record_of_vgg19_bn_loads_and_scans(tmp_path, capsys, cifar_root):
    torch.manual_seed(0)
    model = create_model("vgg19_bn", num_classes=10)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    expected = {k: v.clone() for k, v in list(model.state_dict().items())[:4]}
    torch.save(v2_record("vgg19_bn", state), tmp_path / "attack_result.pt")
    del model, state
    loaded = load_any(str(tmp_path / "attack_result.pt"))
    assert loaded.arch == "vgg19_bn" and loaded.model.latent_dim == 4096
    for k, v in expected.items():
        assert torch.equal(loaded.model.state_dict()[k], v)
    del loaded
    code, out, err = scan(capsys, tmp_path / "attack_result.pt", cifar_root)
    assert code == 0, err


@pytest.mark.parametrize("name", [n for n in BACKDOORBENCH_NAMES if n not in BACKDOORBENCH_MODELS])
def test_other_backdoorbench_models_are_one_error_saying_how_to_load_them(tmp_path, capsys, cifar_root, name):
    torch.save(v2_record(name, {"fc.weight": torch.zeros(10, 4)}), tmp_path / "attack_result.pt")
    code, _, err = scan(capsys, tmp_path / "attack_result.pt", cifar_root)
    assert code == 2 and err.count("\n") == 1, err
    assert f"BackdoorBench model {name!r} has no tacrecon architecture" in err
    assert "file.py:Name --weights W --normalize 0.4914,0.4822,0.4465,0.247,0.243,0.261" in err


def test_supported_names_are_backdoorbench_names():
    assert set(BACKDOORBENCH_MODELS) <= set(BACKDOORBENCH_NAMES)
