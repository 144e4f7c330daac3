"""The GPU protocol's prepared script runs end to end on the CPU with a tiny grid."""

import json
import os
import subprocess
from pathlib import Path

import yaml

from tacrecon.bench import load_config

ROOT = Path(__file__).resolve().parent.parent


def test_the_gpu_config_is_the_protocol():
    config = load_config(ROOT / "configs" / "gpu.yaml")
    (grid,) = config.grids
    assert grid.datasets == ["cifar10"] and grid.archs == ["preact_resnet18"] and grid.budget is None
    assert {"none", "badnets", "blended"} == set(grid.attacks) and {"tac", "ftsam"} <= set(grid.defenses)


def test_the_script_runs_a_tiny_grid_on_the_cpu(tmp_path):
    tiny = {"name": "gpu-tiny", "grids": [{"datasets": ["digits"], "archs": ["test_cnn"], "attacks": ["badnets"],
                                           "defenses": ["none", "tac", "ftsam"], "seeds": [0], "budget": "smoke",
                                           "train": {"epochs": 1}, "clean_fraction": 0.2}]}
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(tiny))
    env = {**os.environ, "CONFIG": str(tmp_path / "tiny.yaml"), "RESULTS": str(tmp_path / "out"), "DEVICE": "cpu",
           "DATA": str(tmp_path / "data"), "TACRECON_CACHE": str(tmp_path / "cache")}
    run = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_protocol.sh")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "gpu protocol:" in run.stdout and (tmp_path / "out" / "report.md").is_file()
    (cell,) = (tmp_path / "out" / "cells").rglob("tac.json")  # badnets-<hash>: the grid overrides the training
    assert json.loads(cell.read_text())["provenance"]["device"].startswith("cpu")
