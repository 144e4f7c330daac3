"""The dry run's cost: unfinished cells priced at their finished peers' median seconds, on a
hand-made results folder (no training)."""

import json

import pytest

from tacrecon.bench import BenchConfig, expand, run_grid
from tacrecon.bench.estimate import estimate
from tacrecon.defenses import create_defense

GRID = {"datasets": ["digits"], "archs": ["test_cnn"], "attacks": ["badnets"], "defenses": ["none", "ft"],
        "seeds": [0, 1, 2], "budget": "smoke", "clean_n": 64}


def finish(cell, out, seconds):
    """Write what a finished cell and its artifact record hold that the estimate reads."""
    config = create_defense(cell.defense, cell.budget, **cell.defense_params).to_dict()
    path = cell.result_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"status": "done", "request": cell.key, "dataset": cell.dataset, "arch": cell.arch,
                                "defense": cell.defense, "defense_config": config, "cell_seconds": seconds}))
    art = cell.artifact_path(out / "artifacts")
    art.mkdir(parents=True, exist_ok=True)
    (art / "attack.json").write_text(json.dumps({"attack": cell.attack, "dataset": cell.dataset,
                                                 "arch": cell.arch, "seconds": 10 * seconds}))


def test_unfinished_cells_cost_their_peers_median(tmp_path):
    out = tmp_path / "out"
    cells = expand(BenchConfig.from_dict({"name": "g", "grids": [GRID]}))
    ft = [c for c in cells if c.defense == "ft"]
    finish(ft[0], out, 60.0)
    finish(ft[1], out, 120.0)
    todo = [ft[2]]
    result = estimate(todo, [ft[2]], out, out / "artifacts")
    assert result.cell_seconds == {ft[2].label: pytest.approx(90.0)}
    assert result.model_seconds == {ft[2].model_label: pytest.approx(900.0)}
    assert result.hours == pytest.approx(990 / 3600)
    assert result.cells_unpriced == 0 and "without" not in result.text()


def test_another_budget_of_a_defense_is_not_a_peer(tmp_path):
    out = tmp_path / "out"
    cells = expand(BenchConfig.from_dict({"name": "g", "grids": [GRID]}))
    finish(next(c for c in cells if c.defense == "ft"), out, 60.0)
    reduced = expand(BenchConfig.from_dict({"name": "g", "grids": [{**GRID, "defense_params": {"ft": {"epochs": 7}}}]}))
    todo = [c for c in reduced if c.defense == "ft" and c.seed == 1]
    result = estimate(todo, [], out, out / "artifacts")
    assert result.cell_seconds == {} and result.cells_unpriced == 1
    assert "1 cells without a finished peer, not counted" in result.text()


def test_the_dry_run_reports_the_estimate(tmp_path):
    out = tmp_path / "out"
    config = BenchConfig.from_dict({"name": "g", "grids": [GRID]})
    for cell in expand(config):
        if cell.seed == 0:
            finish(cell, out, 30.0)
    summary = run_grid(config, out, dry_run=True)
    assert summary["to_run"] == 4
    assert summary["estimate"].startswith("about 0.2 job-hours (4 cells and 2 attack models priced")
