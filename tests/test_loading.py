"""Loading any model for scan/repair; one-line errors with exit code 2 at the CLI."""

import json
import textwrap

import pytest
import torch
from safetensors.torch import save_file

from tacrecon.cli import main
from tacrecon.errors import TacreconError
from tacrecon.loading import load_any, parse_stats
from tacrecon.models import create_model

MODEL_PY = textwrap.dedent("""
    import torch
    from torch import nn

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
            self.aux = nn.Linear(8, 10)
            self.classifier = nn.Linear(8, 10)

        def forward(self, x):
            return self.classifier(self.body(x))

    def make():
        return Net()

    NOT_A_MODULE = 3
""")


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("TACRECON_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def user_model(tmp_path):
    (tmp_path / "net.py").write_text(MODEL_PY)
    torch.manual_seed(0)
    ns = {}
    exec(compile(MODEL_PY, "net", "exec"), ns)  # the same definition, to make weights
    net = ns["Net"]()
    save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    torch.save(net.state_dict(), tmp_path / "w.pt")
    return tmp_path, net


def test_nan_weights_are_named_as_such_not_as_a_missing_head(user_model, capsys):
    folder, net = user_model
    state = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in net.state_dict().items()}
    save_file(state, str(folder / "nan.safetensors"))
    code, _, err = cli(capsys, "scan", f"{folder}/net.py:Net", "--weights", folder / "nan.safetensors",
                       "--dataset", "digits")
    assert code == 2 and "NaN or infinite" in err and "nn.Linear" not in err and err.count("\n") == 1


def test_defend_any_defense_on_a_user_module_writes_its_own_state_dict(user_model, capsys):
    from safetensors.torch import load_file

    folder, net = user_model
    code, out, err = cli(capsys, "defend", "ft", f"{folder}/net.py:Net", "--weights", folder / "w.pt", "--dataset",
                         "digits", "--out", folder / "ft", "--budget", "smoke")
    assert code == 0, err
    assert "ft on" in out and "ACC" in out and "ASR" not in out  # no trigger known: ACC only
    state = load_file(str(folder / "ft" / "defended.safetensors"))
    assert set(state) == set(net.state_dict())  # loads into the user's own class
    net.load_state_dict(state)
    record = json.loads((folder / "ft" / "defense.json").read_text())
    assert record["defense"] == "ft" and record["dataset"] == "digits" and "acc" in record["after"]
    code, _, err = cli(capsys, "defend", "ft", f"{folder}/net.py:Net", "--weights", folder / "w.pt",
                       "--out", folder / "ft2")
    assert code == 2 and "--dataset" in err and err.count("\n") == 1


def test_user_module_with_and_without_head(user_model):
    folder, net = user_model
    x = torch.rand(3, 1, 16, 16)
    for weights in ("w.safetensors", "w.pt"):
        loaded = load_any(f"{folder}/net.py:Net", weights=folder / weights, num_classes=10)
        assert loaded.kind == "module" and loaded.model.head_name == "classifier"
        with torch.no_grad():
            torch.testing.assert_close(loaded.model(x), net(x))
    named = load_any(f"{folder}/net.py:make", weights=folder / "w.pt", head="classifier")
    assert named.model.latent_dim == 8
    normalized = load_any(f"{folder}/net.py:Net", weights=folder / "w.pt", normalize="0.5,0.25")
    with torch.no_grad():
        torch.testing.assert_close(normalized.model(x), net((x - 0.5) / 0.25))


@pytest.mark.parametrize("spec,kwargs,message", [
    ("{d}/net.py:Missing", {"weights": "w.pt"}, "defines no 'Missing'"),
    ("{d}/nope.py:Net", {"weights": "w.pt"}, "no such model file"),
    ("{d}/net.py:NOT_A_MODULE", {"weights": "w.pt"}, "cannot be called|not an nn.Module"),
    ("{d}/net.py:Net", {}, "--weights"),
    ("{d}/net.py:Net", {"weights": "corrupt.safetensors"}, "cannot read weights"),
    ("{d}/net.py:Net", {"weights": "w.pt", "num_classes": 43}, "no nn.Linear layer with out_features=43"),
    ("{d}/net.py:Net", {"weights": "w.pt", "head": "body"}, "not nn.Linear"),
    ("{d}/net.py:Net", {"weights": "w.pt", "normalize": "0.5"}, "as many std values"),
    ("{d}", {}, "neither a tacrecon checkpoint"),
    ("{d}/plain.txt", {}, "not a checkpoint folder"),
])
def test_load_errors(user_model, spec, kwargs, message):
    folder, _ = user_model
    (folder / "corrupt.safetensors").write_bytes(b"\x00" * 20)
    (folder / "plain.txt").write_text("hi")
    kwargs = {k: (folder / v if k == "weights" else v) for k, v in kwargs.items()}
    with pytest.raises(TacreconError, match=message):
        load_any(spec.format(d=folder), **kwargs)


def test_backdoorbench_record(tmp_path):
    model = create_model("preact_resnet18")
    record = {"model_name": "preactresnet18", "num_classes": 10, "clean_data": "cifar10",
              "model": {f"module.{k}": v for k, v in model.state_dict().items()}, "img_size": (32, 32, 3)}
    torch.save(record, tmp_path / "attack_result.pt")
    loaded = load_any(str(tmp_path / "attack_result.pt"))
    assert loaded.kind == "backdoorbench" and loaded.arch == "preact_resnet18"
    assert torch.allclose(loaded.model.normalize.mean.flatten(), torch.tensor([0.4914, 0.4822, 0.4465]))
    for k, v in model.state_dict().items():  # the "module." prefix of DataParallel is dropped
        assert torch.equal(loaded.model.state_dict()[k], v)
    torch.save({"model_name": "resnet50", "model": {}}, tmp_path / "other.pt")
    with pytest.raises(TacreconError, match="BackdoorBench model 'resnet50' has no tacrecon architecture"):
        load_any(str(tmp_path / "other.pt"))


def test_parse_stats():
    assert parse_stats("0.1,0.2,0.3,0.4") == ([0.1, 0.2], [0.3, 0.4])
    assert parse_stats(None) is None
    with pytest.raises(TacreconError):
        parse_stats("a,b")


def cli(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_scan_cli_on_user_module_and_errors(user_model, capsys):
    folder, _ = user_model
    code, out, err = cli(capsys, "scan", f"{folder}/net.py:Net", "--weights", folder / "w.pt", "--dataset", "digits",
                         "--json", folder / "scan.json", "--plot", folder / "norms.png")
    assert code == 0, err
    record = json.loads((folder / "scan.json").read_text())
    assert {"defense", "defense_config", "target", "targets", "scores", "seconds", "total_seconds"} <= set(record)
    scores = record["scores"]
    assert {"backdoored", "target", "targets", "high_side", "norms", "anomaly_index", "p_value", "robust",
            "robust_norms", "robust_anomaly_index", "robust_relative"} <= set(scores)
    assert len(scores["norms"]) == 10 and len(scores["robust_norms"]) == 10
    assert (folder / "norms.png").read_bytes()[:4] == b"\x89PNG"
    for argv, message in [
        (("--weights", folder / "corrupt.safetensors"), "cannot read weights"),
        (("--weights", folder / "w.pt", "--clean-n", "0"), "clean set must hold"),
        (("--weights", folder / "w.pt", "--head", "aux", "--dataset", "gtsrb", "--data-root", folder), "gtsrb not found"),
    ]:
        (folder / "corrupt.safetensors").write_bytes(b"\x00" * 20)
        args = list(argv) if "--dataset" in argv else [*argv, "--dataset", "digits"]
        code, out, err = cli(capsys, "scan", f"{folder}/net.py:Net", *args)
        assert code == 2 and message in err and err.count("\n") == 1, err


def test_scan_cli_class_count_mismatch(tmp_path, capsys):
    (tmp_path / "m.py").write_text("from torch import nn\n"
                                   "def make():\n    return nn.Sequential(nn.Flatten(), nn.Linear(256, 5))\n")
    torch.save({"1.weight": torch.zeros(5, 256), "1.bias": torch.zeros(5)}, tmp_path / "w.pt")
    code, _, err = cli(capsys, "scan", f"{tmp_path}/m.py:make", "--weights", tmp_path / "w.pt", "--dataset", "digits")
    assert code == 2 and "out_features=10" in err


HEADS_PY = textwrap.dedent("""
    import torch
    from torch import nn

    def body():
        return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

    class HeadFirst(nn.Module):  # the head is registered before a 10-wide linear inside the body
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(10, 10)
            self.features = nn.Sequential(body(), nn.Linear(8, 10), nn.ReLU())

        def forward(self, x):
            return self.fc(self.features(x))

    class AuxAfter(nn.Module):  # an auxiliary head registered after the real one, never called
        def __init__(self):
            super().__init__()
            self.body, self.fc, self.aux = body(), nn.Linear(8, 10), nn.Linear(8, 10)

        def forward(self, x):
            return torch.log_softmax(self.fc(self.body(x)), dim=1)  # a shift per image: still the head's

    class Permuted(AuxAfter):  # classes reordered after the head: its norms would name the wrong class
        def forward(self, x):
            return self.fc(self.body(x))[:, torch.arange(9, -1, -1)]

    class TupleOut(AuxAfter):
        def forward(self, x):
            z = self.body(x)
            return self.fc(z), z
""")


@pytest.fixture
def heads(tmp_path):
    (tmp_path / "heads.py").write_text(HEADS_PY)
    ns = {}
    exec(compile(HEADS_PY, "heads", "exec"), ns)
    torch.manual_seed(0)
    for name in ("HeadFirst", "AuxAfter"):
        torch.save(ns[name]().state_dict(), tmp_path / f"{name}.pt")
    return tmp_path


@pytest.mark.parametrize("name,weights,head", [("HeadFirst", "HeadFirst", "fc"), ("AuxAfter", "AuxAfter", "fc")])
def test_scan_finds_the_head_that_makes_the_output(heads, capsys, name, weights, head):
    code, _, err = cli(capsys, "scan", f"{heads}/heads.py:{name}", "--weights", heads / f"{weights}.pt",
                       "--dataset", "digits", "--json", heads / "scan.json")
    assert code == 0, err
    from tacrecon.commands.scan import prepare

    loaded, _, _ = prepare(f"{heads}/heads.py:{name}", "digits", weights=heads / f"{weights}.pt")
    assert loaded.model.head_name == head


@pytest.mark.parametrize("name,message", [
    ("Permuted", "no nn.Linear with 10 outputs gives the model's output"),
    ("TupleOut", "returns a tuple, not a tensor of logits"),
])
def test_scan_refuses_a_model_whose_output_is_not_its_heads(heads, capsys, name, message):
    code, _, err = cli(capsys, "scan", f"{heads}/heads.py:{name}", "--weights", heads / "AuxAfter.pt",
                       "--dataset", "digits")
    assert code == 2 and message in err and err.count("\n") == 1, err


def test_backdoorbench_record_with_numpy_poison_indices(tmp_path):
    import numpy as np

    model = create_model("preact_resnet18")
    bd = {"poison_indicator": np.array([0, 1, 0], dtype=np.int64), "original_index_array": np.arange(3)}
    record = {"model_name": "preactresnet18", "num_classes": 10, "clean_data": "cifar10", "model": model.state_dict(),
              "bd_train": bd, "bd_test": {"x": np.zeros((2, 2), dtype=np.float32)}}
    torch.save(record, tmp_path / "attack_result.pt")
    assert load_any(str(tmp_path / "attack_result.pt")).arch == "preact_resnet18"


def test_options_a_model_folder_does_not_use_are_errors(tmp_path):
    model = create_model("test_cnn")
    from tacrecon.io import save_checkpoint

    save_checkpoint(model, tmp_path / "ckpt", {"arch": "test_cnn", "model_kwargs": {}})
    with pytest.raises(TacreconError, match="--head applies to a file.py:Name model only"):
        load_any(str(tmp_path / "ckpt"), head="fc")
    with pytest.raises(TacreconError, match="no such file or folder"):
        load_any(str(tmp_path / "missing"))


def test_repair_and_defend_refuse_to_overwrite_the_input(tmp_path, capsys):
    art = tmp_path / "art"
    code, _, err = cli(capsys, "attack", "badnets", "--dataset", "digits", "--arch", "test_cnn", "--out", art,
                       "--epochs", "2")
    assert code == 0, err
    before = (art / "model.safetensors").read_bytes()
    for argv, message in ((("repair", art, "--dataset", "digits", "--out", art), "the model's own folder"),
                          (("defend", "ft", art, "--out", art, "--budget", "smoke"), "holds a model (an attack artifact"),
                          (("repair", art, "--dataset", "digits", "--out", tmp_path / "r", "--force-target", "12"),
                           "force_target 12 is not a class of this model"),
                          (("repair", art, "--dataset", "digits", "--out", tmp_path / "r", "--set", "threshold=[1"),
                           "not valid YAML"),
                          (("scan", art, "--dataset", "digits", "--clean-fraction", "nan"), "clean fraction must be"),
                          (("scan", art, "--dataset", "digits", "--clean-n", "3"), "holds no image of class"),
                          (("scan", art, "--dataset", "digits", "--plot", tmp_path / "norms.jpg"), "name it *.png"),
                          (("scan", art, "--dataset", "digits", "--json", art / "attack.json" / "x.json"),
                           "is a file, not a folder"),
                          (("scan", art, "--dataset", "cifar10", "--data-root", tmp_path), "cifar10 not found")):
        code, _, err = cli(capsys, *argv)
        assert code == 2 and message in err and err.count("\n") == 1, (argv, err)
    assert (art / "model.safetensors").read_bytes() == before
    code, out, err = cli(capsys, "repair", art, "--dataset", "digits", "--out", tmp_path / "r",
                         "--json", tmp_path / "r.json", "--plot", tmp_path / "r.png")
    assert code == 0, err
    assert json.loads((tmp_path / "r.json").read_text())["scores"]["backdoored"] is True
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_attack_never_deletes_a_folder_it_did_not_write(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("precious")
    code, _, err = cli(capsys, "attack", "badnets", "--dataset", "digits", "--arch", "test_cnn", "--out", tmp_path,
                       "--epochs", "1")
    assert code == 2 and "not empty and not an artifact" in err
    assert (tmp_path / "notes.txt").read_text() == "precious"
