"""CLI: exit codes and one-line errors; train and attack write their files."""

import json
from pathlib import Path

import pytest

from tacrecon.cli import main

ROOT = Path(__file__).parents[1]


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    monkeypatch.setenv("TACRECON_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TACRECON_DATA", raising=False)


@pytest.mark.parametrize("argv,message", [
    (["train", "--dataset", "cifar10", "--arch", "resnet_small", "--out", "o", "--data-root", "nowhere"],
     "cifar10 not found; tried: nowhere"),
    (["train", "--dataset", "digits", "--arch", "resnet_huge", "--out", "o"], "unknown model 'resnet_huge'"),
    (["train", "--dataset", "digits", "--arch", "test_cnn", "--out", "o", "--bogus"], "unrecognized arguments: --bogus"),
    (["train", "--dataset", "digits"], "required: --arch, --out"),
    (["train", "--dataset", "digits", "--arch", "test_cnn", "--out", "o", "--set", "lr"], "key=value"),
    (["train", "--dataset", "digits", "--arch", "test_cnn", "--out", "o", "--set", "epoch=2"], "unknown TrainConfig key"),
    (["train", "--dataset", "digits", "--arch", "test_cnn", "--out", "o", "--device", "cuda:7"], "device"),
    (["list", "things"], "invalid choice"),
    (["defend", "magic", "nowhere", "--out", "o"], "unknown defense 'magic'"),
    (["defend", "ft", "nowhere", "--out", "o"], "not a complete attack artifact"),
    (["defend", "ft", "nowhere", "--out", "o", "--set", "epoch=1"], "unknown FT key"),
    (["attack", "nope", "--dataset", "digits", "--arch", "test_cnn", "--out", "o"], "unknown attack 'nope'"),
    (["attack", "badnets", "--dataset", "digits", "--arch", "test_cnn", "--out", "o", "--target", "12"], "outside 0..9"),
    (["attack", "badnets", "--dataset", "digits", "--arch", "test_cnn", "--out", "o", "--poison-rate", "0"], "rate"),
    ([], "required: command"),
    (["bench", ".", "--out", "o"], "is a folder, not a config file"),
    (["bench", "grid.yaml", "--out", "o"], "no such config file"),
    (["bench", "smoke.yaml", "--out", "o", "--only", "attack=badnet"], "--only attack=badnet: not in this config"),
    (["bench", "smoke.yaml", "--out", "o", "--threads", "-1"], "--threads must be >= 1"),
    (["bench", "smoke.yaml", "--out", "smoke.yaml/x", "--dry-run"], "is a file, not a folder"),
    (["report", "."], "not a bench output folder"),
])
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, monkeypatch, argv, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smoke.yaml").write_text((ROOT / "configs" / "smoke.yaml").read_text())
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert err.startswith("tacrecon: error: ") and message in err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_gpu_index_the_machine_lacks_is_one_error(monkeypatch):
    import torch

    from tacrecon.cli import pick_device
    from tacrecon.errors import TacreconError

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert pick_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(TacreconError, match="has 1 GPU"):
        pick_device("cuda:7")


def test_list(capsys):
    for what, name in (("models", "preact_resnet18"), ("datasets", "gtsrb"), ("attacks", "badnets"),
                       ("defenses", "tac")):
        code, out, _ = run(capsys, "list", what)
        assert code == 0 and name in out


def test_train_and_attack_write_artifacts(capsys, tmp_path):
    code, out, _ = run(capsys, "train", "--dataset", "digits", "--arch", "test_cnn", "--epochs", "1",
                       "--out", str(tmp_path / "clean"), "--set", "progress=false")
    assert code == 0 and "ACC" in out
    assert {"model.safetensors", "model.json", "train.json"} <= {p.name for p in (tmp_path / "clean").iterdir()}
    code, out, _ = run(capsys, "attack", "badnets", "--dataset", "digits", "--arch", "test_cnn", "--epochs", "1",
                       "--out", str(tmp_path / "bd"), "--train-set", "progress=false", "--set", "patch_size=2")
    assert code == 0 and "ASR" in out
    record = json.loads((tmp_path / "bd" / "attack.json").read_text())
    assert record["attack_config"]["patch_size"] == 2 and record["poisoned"] == round(0.1 * 1437)
    code, out, _ = run(capsys, "attack", "--clean", "--dataset", "digits", "--arch", "test_cnn", "--epochs", "1",
                       "--out", str(tmp_path / "none"), "--train-set", "progress=false")
    assert code == 0 and json.loads((tmp_path / "none" / "attack.json").read_text())["asr"] is None
    code, out, _ = run(capsys, "defend", "ft", str(tmp_path / "bd"), "--out", str(tmp_path / "ft"),
                       "--budget", "smoke", "--clean-n", "100")
    assert code == 0 and "ft on badnets" in out and "DER" in out
    record = json.loads((tmp_path / "ft" / "defense.json").read_text())
    assert record["clean_samples"] == 100 and record["before"]["asr"] is not None
    code, _, err = run(capsys, "defend", "ft", str(tmp_path / "bd"), "--out", str(tmp_path / "ft"), "--set", "lr=0.5")
    assert code == 2 and "another configuration" in err
    code, _, err = run(capsys, "defend", "ft", str(tmp_path / "bd"), "--out", str(tmp_path / "x"), "--budget", "huge")
    assert code == 2 and "no budget 'huge'" in err


def test_demo_attacks_scans_and_repairs_digits(capsys, tmp_path):
    code, out, _ = run(capsys, "demo", "--out", str(tmp_path / "demo"))
    assert code == 0 and "class 0 flagged" in out
    repair = out.splitlines()[-1]
    acc_before, acc_after = (float(v.split("%")[0]) for v in repair.split("ACC ")[1].split(", ")[0].split(" -> "))
    asr_after = float(repair.split("ASR ")[1].split("-> ")[1].split("%")[0])
    # the default repair (revision 7) leaves 5.7% on the demo's model, just above the removal bar
    # of 5% that it meets on the three digits tuning models (docs/benchmarks.md)
    assert asr_after <= 10.0 and acc_after >= acc_before - 2.0


def test_repair_line_names_the_classes_the_pairwise_look_added(capsys, monkeypatch):
    import tacrecon.commands.repair as repair_module

    seen = {}

    def fake_repair(model, dataset, out, **options):
        seen.update(options["config"])
        scores = {"target": None, "targets": [], "relative": [1.0, 0.9, 1.1], "anomaly_index": [0.0, 1.0, -1.0],
                  "p_value": 0.5, "high_side": [], "robust": [], "prior": None, "pairwise_flagged": [[1, 2]],
                  "pairwise_spread": 0.2, "pairwise_all_to_all": False}
        return {"scores": scores, "targets": [2], "repaired": True, "classes": ["a", "b", "c"], "stats": {},
                "defense_config": {"force_target": -1, "robust_quantile": 0.95},
                "before": {"acc": 0.9}, "after": {"acc": 0.89}}

    monkeypatch.setattr(repair_module, "run_repair", fake_repair)
    code, out, _ = run(capsys, "repair", "m.pt", "--dataset", "digits", "--out", "o", "--pairwise")
    lines = out.splitlines()
    assert code == 0 and seen["pairwise"] is True
    assert lines[1] == "m.pt: pairwise look: 1 pair(s) flagged, 1 (b) -> 2 (c) (spread 0.20; a pair far cheaper one " \
                       "way than the other: a source-specific backdoor, or one source of an all-to-one one)"
    assert lines[2].startswith("repaired (classes 2, 1 from the pairwise look): ACC 90.00% -> 89.00%")


def test_bench_dry_run_lists_the_cells_and_their_cost(capsys, tmp_path):
    code, out, _ = run(capsys, "bench", str(ROOT / "configs" / "smoke.yaml"), "--out", str(tmp_path / "o"), "--dry-run")
    lines = out.splitlines()
    assert code == 0 and lines[-2].startswith("smoke: ") and "0 already finished" in lines[-2]
    assert lines[-1].startswith("cost: about 0.0 job-hours (0 cells and 0 attack models priced")  # nothing finished
    assert all(line.count("/") == 4 for line in lines[:-2])  # one cell label a line
