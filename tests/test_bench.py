"""The grid runner: config errors, stable paths, resume after a kill, one artifact per attack cell,
and the Ray backend (when installed) against the local one."""

import json
import threading
import time
from pathlib import Path

import pytest
import yaml

from tacrecon.bench import BenchConfig, Cell, expand, load_config, parse_only, plan, run_grid, runner
from tacrecon.errors import TacreconError

TINY = {"name": "tiny", "grids": [{"datasets": ["digits"], "archs": ["test_cnn"], "attacks": ["badnets"],
                                   "defenses": ["none", "ft"], "seeds": [0], "budget": "smoke",
                                   "train": {"epochs": 1}, "clean_n": 64}]}


def write(tmp_path, config, name="grid.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


@pytest.mark.parametrize("change,message", [
    ({"grids": [{**TINY["grids"][0], "atacks": ["badnets"]}]}, "unknown Grid key(s): atacks"),
    ({"grids": [{**TINY["grids"][0], "seeds": "0"}]}, "Grid.seeds must be a list"),
    ({"grids": [{**TINY["grids"][0], "attacks": ["badnet"]}]}, "unknown attack 'badnet'"),
    ({"grids": [{**TINY["grids"][0], "defense_params": {"nc": {}}}]}, "'nc' is not in this grid"),
    ({"grids": [{**TINY["grids"][0], "defense_params": {"ft": {"lr": "fast"}}}]}, "FT.lr must be float"),
    ({"grids": [{**TINY["grids"][0], "train": {"epoch": 1}}]}, "unknown TrainConfig key(s): epoch"),
    ({"grids": [{**TINY["grids"][0], "budget": "huge"}]}, "no budget 'huge'"),
    ({"grids": []}, "at least one grid"),
    ({"grids": [{**TINY["grids"][0], "clean_fraction": 0.1}]}, "clean_fraction or clean_n, not both"),
    ({"grids": [{**TINY["grids"][0], "clean_n": True}]}, "clean_n must be a positive integer"),
    ({"grids": [{**{k: v for k, v in TINY["grids"][0].items() if k != "clean_n"}, "clean_fraction": 1.5}]},
     "clean_fraction must be a number in (0, 1]"),
    ({"nmae": "x"}, "unknown BenchConfig key(s): nmae"),
])
def test_config_errors_name_the_key(tmp_path, change, message):
    path = write(tmp_path, {**TINY, **change})
    with pytest.raises(TacreconError) as e:
        load_config(path)
    assert message in str(e.value) and str(path) in str(e.value)


def test_config_file_errors(tmp_path):
    with pytest.raises(TacreconError, match="no such config file"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("grids: [\n")
    with pytest.raises(TacreconError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")


def test_config_file_that_cannot_be_read(tmp_path):
    with pytest.raises(TacreconError, match="is a folder, not a config file"):
        load_config(tmp_path)
    (tmp_path / "binary.yaml").write_bytes(b"\xff\xfe\x00binary")
    with pytest.raises(TacreconError, match="not valid YAML"):
        load_config(tmp_path / "binary.yaml")
    (tmp_path / "bad.yaml").write_text("name: x\ngrids: [\n")
    with pytest.raises(TacreconError, match="bad.yaml"):  # the YAML error's position names the file
        load_config(tmp_path / "bad.yaml")


def test_clean_fraction_one_is_a_number():
    grid = {**{k: v for k, v in TINY["grids"][0].items() if k != "clean_n"}, "clean_fraction": 1}
    assert BenchConfig.from_dict({**TINY, "grids": [grid]}).grids[0].clean_fraction == 1.0


def test_two_grids_defining_one_cell_differently_are_an_error():
    other = {**TINY["grids"][0], "clean_n": 32}
    with pytest.raises(TacreconError, match=r"defined twice, differently \(clean_n: 64 in one grid, 32 in another\)"):
        expand(BenchConfig.from_dict({**TINY, "grids": [TINY["grids"][0], other]}))
    assert len(expand(BenchConfig.from_dict({**TINY, "grids": [TINY["grids"][0]] * 2}))) == 2  # the same: shared


def test_shipped_configs_load():
    paths = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert {"smoke", "cpu", "backdoorbench"} <= {p.stem for p in paths}
    for path in paths:
        assert expand(load_config(path)), path.name


def test_the_robustness_config_plans_its_cells():
    cells = expand(load_config(Path(__file__).parents[1] / "configs" / "robustness.yaml"))
    assert len(cells) == 133 and len({c.attack_dir for c in cells}) == 19  # 19 attacked models, 7 defenses each
    assert {c.defense for c in cells} == {"none", "tac", "ftsam", "nc", "sau", "fp"} and {c.seed for c in cells} == {0}
    assert cells[0].attack == "tac_aware"  # the adaptive attack runs first
    assert {c.attack_params["rate"] for c in cells if "rate" in c.attack_params} == {0.005, 0.01, 0.03, 0.05}
    modes = {(c.attack, c.attack_params.get("label_mode")) for c in cells if "rate" not in c.attack_params}
    assert {("multi", None), ("badnets", "all2all"), ("blended", "all2all")} <= modes
    assert {"tac_aware", "adap_blend", "adap_patch", "tact", "lc", "grond"} <= {c.attack for c in cells}


def test_the_confirm_config_draws_its_targets_from_the_seed_and_marks_reduced_cells():
    import random

    cells = expand(load_config(Path(__file__).parents[1] / "configs" / "confirm.yaml"))
    classes = {"cifar10": 10, "gtsrb": 43}
    for c in cells:
        if c.attack != "none":  # the rule written in the config, applied before any model existed
            rng = random.Random(f"confirm-{c.dataset}-{c.seed}-{c.attack}")
            assert c.attack_params["target"] == rng.randrange(classes[c.dataset]), c
    assert {c.seed for c in cells} == {2, 5, 6} and {c.arch for c in cells} == {"resnet_small", "vgg_small"}
    assert {c.defense for c in cells if c.defense_params} == {"nc", "sau"}  # the reduced ones, named apart
    recipe_nc = {(c.arch, c.attack, c.seed) for c in cells if c.defense == "nc" and not c.defense_params}
    strongest = {("resnet_small", a, s) for a in ("badnets", "trojan", "lira") for s in (5, 6)}  # development grid
    strongest |= {("vgg_small", a, 5) for a in ("badnets", "blended")}  # the confirmatory table's
    assert recipe_nc == strongest  # NC at its recipe on the rows where the reduced NC was TAC's strongest rival
    assert all(c.budget is None for c in cells)  # every other defense at its published recipe
    assert {c.attack_dir for c in cells} == {c.attack for c in cells}  # one report row per attack


def test_cell_paths_are_stable(tmp_path):
    cell = Cell("cifar10", "resnet_small", "badnets", 1, "tac", "cpu")
    assert cell.result_path(tmp_path) == tmp_path / "cells/cifar10/resnet_small/badnets/seed1/tac.json"
    assert cell.artifact_path(tmp_path) == tmp_path / "cifar10/resnet_small/badnets/seed1"
    tuned = Cell("cifar10", "resnet_small", "badnets", 1, "tac", "cpu", {"patch_size": 4}, {}, {"lr": 0.1})
    assert tuned.attack_dir.startswith("badnets-") and len(tuned.attack_dir) == len("badnets-") + 8
    again = Cell("cifar10", "resnet_small", "badnets", 1, "tac", "cpu", {"patch_size": 4}, {}, {"lr": 0.1})
    assert tuned.result_path(tmp_path) == again.result_path(tmp_path)
    assert tuned.defense_name.startswith("tac-") and len(tuned.defense_name) == len("tac-") + 8
    # the target names no folder: models whose targets are drawn per seed stay one report row
    aimed = Cell("cifar10", "resnet_small", "badnets", 2, "tac", None, {"target": 3})
    assert aimed.attack_dir == "badnets"
    assert Cell("cifar10", "resnet_small", "badnets", 1, "tac", "cpu", {"patch_size": 4, "target": 3}, {},
                {"lr": 0.1}).attack_dir == tuned.attack_dir


def test_expand_and_only():
    config = BenchConfig.from_dict(TINY)
    cells = expand(config)
    assert [c.defense for c in cells] == ["none", "ft"]
    only = parse_only(["defense=ft"])
    assert [c.defense for c in runner.select(cells, only)] == ["ft"]
    with pytest.raises(TacreconError, match="--only expects"):
        parse_only(["colour=red"])


def test_only_takes_an_attack_or_a_defense_by_its_report_name(tmp_path):
    config = load_config(Path(__file__).parents[1] / "configs" / "robustness.yaml")
    every = expand(config)
    all2all = next(c.attack_dir for c in every if c.attack_params.get("label_mode") == "all2all")
    picked = runner.select(every, parse_only([f"attack={all2all}", "defense=nc,tac"]))
    assert {c.attack_dir for c in picked} == {all2all} and {c.defense for c in picked} == {"nc", "tac"}
    assert len(runner.select(every, parse_only(["attack=badnets"]))) > len(picked)  # every badnets row
    plan(config, tmp_path, parse_only([f"attack={all2all}"]))  # a report name is known to the config


def test_only_names_a_value_the_config_does_not_have(tmp_path):
    config = BenchConfig.from_dict(TINY)
    with pytest.raises(TacreconError, match=r"--only attack=badnet: not in this config \(badnets, badnets-[0-9a-f]{8}\)"):
        plan(config, tmp_path, parse_only(["attack=badnet,badnets"]))


def test_bad_folders_and_threads_are_errors(tmp_path):
    config = BenchConfig.from_dict(TINY)
    (tmp_path / "file").write_text("")
    with pytest.raises(TacreconError, match="is a file, not a folder"):
        run_grid(config, tmp_path / "file" / "out", dry_run=True)
    with pytest.raises(TacreconError, match="--threads must be >= 1"):
        run_grid(config, tmp_path / "out", threads=0)


def results(out):
    return {p.name: json.loads(p.read_text()) for p in (out / "cells").rglob("*.json")}


def test_run_resume_and_failure(tmp_path, monkeypatch):
    config = BenchConfig.from_dict(TINY)
    out = tmp_path / "out"
    summary = run_grid(config, out, progress=False)
    assert summary["done"] == 2 and summary["failed"] == 0
    first = results(out)
    assert first["ft.json"]["status"] == "done" and first["ft.json"]["before"]["asr"] is not None
    assert run_grid(config, out)["to_run"] == 0  # nothing left to do

    # a killed run: one cell lost, a stale temp file left behind; a defense that raises mid-way
    cell_dir = next((out / "cells").rglob("ft.json")).parent
    (cell_dir / "ft.json").unlink()
    (cell_dir / ".ft.json.abc.tmp").write_text("{half")
    calls = []
    original = runner.cell_job

    def counting(cell, *args):
        calls.append(cell.defense)
        return original(cell, *args)

    monkeypatch.setattr(runner, "cell_job", counting)
    assert run_grid(config, out)["done"] == 1 and calls == ["ft"]
    assert results(out)["ft.json"]["after"] == first["ft.json"]["after"]  # same seed, same numbers

    (cell_dir / "ft.json").unlink()
    import tacrecon.defenses as defenses

    def broken(*args, **kwargs):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(defenses, "create_defense", broken)
    summary = run_grid(config, out)
    assert summary["failed"] == 1
    failed = json.loads((cell_dir / "ft.failed.json").read_text())
    assert "out of memory" in failed["error"] and not (cell_dir / "ft.json").exists()
    monkeypatch.undo()
    assert run_grid(config, out)["done"] == 1 and not (cell_dir / "ft.failed.json").exists()


def test_a_cell_finished_by_a_concurrent_run_is_not_run_again(tmp_path, monkeypatch):
    # two bench runs on one folder (or Ray nodes sharing it) plan the same cells; the later one
    # finds the result written since its plan and leaves it alone
    config = BenchConfig.from_dict(TINY)
    out = tmp_path / "out"
    run_grid(config, out, progress=False)
    cell = next(c for c in expand(config) if c.defense == "ft")
    before = cell.result_path(out).read_text()
    import tacrecon.defenses as defenses

    def never(*args, **kwargs):
        raise AssertionError("the finished cell was run again")

    monkeypatch.setattr(defenses, "create_defense", never)
    artifacts = str(out / "artifacts")
    assert runner.cell_job(cell, str(out), artifacts, None, "cpu", 1) == {"ok": True, "label": cell.label}
    assert cell.result_path(out).read_text() == before


def test_a_cell_another_run_is_running_is_skipped_not_run_twice(tmp_path, monkeypatch):
    # two bench runs with overlapping --only on one folder: the cell's lock is held by the first
    import fcntl

    config = BenchConfig.from_dict(TINY)
    out = tmp_path / "out"
    run_grid(config, out, only={"defense": ["none"]}, progress=False)
    cell = next(c for c in expand(config) if c.defense == "ft")
    import tacrecon.defenses as defenses

    def never(*args, **kwargs):
        raise AssertionError("the cell held by another run was run")

    monkeypatch.setattr(defenses, "create_defense", never)
    path = cell.result_path(out)
    with open(runner.lock_path(path), "a") as held:  # another open file: flock treats it as another process
        fcntl.flock(held, fcntl.LOCK_EX)
        result = runner.cell_job(cell, str(out), str(out / "artifacts"), None, "cpu", 1)
        summary = run_grid(config, out, progress=False)
    assert result["ok"] and result["skipped"] and not path.exists()
    assert summary["skipped"] == 1 and summary["done"] == 0 and summary["failed"] == 0
    monkeypatch.undo()
    assert run_grid(config, out, progress=False)["done"] == 1 and path.exists()  # released: it runs


def test_conflicting_inputs_are_an_error(tmp_path):
    config = BenchConfig.from_dict(TINY)
    out = tmp_path / "out"
    run_grid(config, out, only={"defense": ["none"]}, progress=False)
    other = BenchConfig.from_dict({**TINY, "grids": [{**TINY["grids"][0], "clean_n": 32}]})
    with pytest.raises(TacreconError, match=r"made by other inputs \(clean_n: 64 stored, 32 asked\)"):
        plan(other, out)


def test_an_artifact_made_with_other_inputs_is_not_reused(tmp_path):
    config = BenchConfig.from_dict(TINY)
    out = tmp_path / "out"
    run_grid(config, out, only={"defense": ["none"]}, progress=False)
    stronger = {**TINY["grids"][0], "attack_params": {"badnets": {"rate": 0.3}}}
    cell = expand(BenchConfig.from_dict({**TINY, "grids": [stronger]}))[1]
    # as if the artifact had been made by hand (or by an older recipe) into the default's folder
    result = runner.artifact_job(cell, str(out), str(out / "artifacts" / "x"), None, "cpu", 1, False)
    assert result["ok"]
    made = cell.artifact_path(out / "artifacts" / "x")
    default = expand(config)[0].artifact_path(out / "artifacts")
    for f in made.iterdir():
        (default / f.name).write_bytes(f.read_bytes())
    (out / "cells").rename(tmp_path / "old_cells")
    summary = run_grid(config, out, only={"defense": ["none"]}, progress=False)
    assert summary["failed"] == 1
    error = json.loads(next((out / "cells").rglob("none.failed.json")).read_text())["error"]
    assert "made with other inputs (attack_config.rate: 0.3 stored, 0.1 asked)" in error


def test_a_worker_that_dies_fails_its_cell_and_the_grid_goes_on(tmp_path, monkeypatch):
    config = BenchConfig.from_dict({**TINY, "grids": [{**TINY["grids"][0], "attacks": ["badnets", "blended"]}]})

    class Dying(runner.Inline):
        def result(self, handle):
            out = handle.result()
            if "/badnets-" in out.get("label", "") and out["label"].endswith("/ft"):
                raise RuntimeError("worker killed (simulated)")
            return out

    monkeypatch.setattr(runner, "make_backend", lambda *args: Dying())
    summary = run_grid(config, tmp_path, progress=False)
    assert summary["done"] == 3 and summary["failed"] == 1
    failed = json.loads(next(tmp_path.rglob("ft.failed.json")).read_text())
    assert failed["error"].startswith("worker lost: RuntimeError") and failed["provenance"]["device"].startswith("cpu")


def test_a_cell_made_with_another_default_is_run_again(tmp_path):
    config = BenchConfig.from_dict(TINY)
    out = tmp_path / "out"
    run_grid(config, out, only={"defense": ["ft"]}, progress=False)
    path = expand(config)[1].result_path(out)
    record = json.loads(path.read_text())
    assert runner.cell_state(expand(config)[1], out) == "done"
    record["defense_config"]["lr"] = 123.0  # as if the default had changed since the cell ran
    path.write_text(json.dumps(record))
    assert runner.cell_state(expand(config)[1], out) == "stale"
    summary = run_grid(config, out, only={"defense": ["ft"]}, progress=False)
    assert summary["stale"] == 1 and summary["done"] == 1
    assert json.loads(path.read_text())["defense_config"]["lr"] != 123.0


def test_a_cell_made_by_an_earlier_revision_of_the_code_is_run_again(tmp_path, monkeypatch):
    config = BenchConfig.from_dict(TINY)
    out = tmp_path / "out"
    run_grid(config, out, only={"defense": ["ft"]}, progress=False)
    cell = expand(config)[1]
    assert json.loads(cell.result_path(out).read_text())["defense_revision"] == 1
    assert runner.cell_state(cell, out) == "done"
    from tacrecon.defenses import DEFENSES
    monkeypatch.setattr(DEFENSES.get("ft"), "revision", 2)
    assert runner.cell_state(cell, out) == "stale"


def test_an_artifact_made_by_an_earlier_attack_revision_is_retrained_with_its_cells(tmp_path, monkeypatch):
    from tacrecon.artifact import run_attack
    from tacrecon.attacks import ATTACKS
    config = BenchConfig.from_dict(TINY)
    out = tmp_path / "out"
    run_grid(config, out, progress=False)
    cells = expand(config)
    art = cells[0].artifact_path(out / "artifacts")
    first = json.loads((art / "attack.json").read_text())
    assert first["attack_revision"] == 1
    assert json.loads(cells[1].result_path(out).read_text())["attack_record"]["attack_revision"] == 1
    monkeypatch.setattr(ATTACKS.get("badnets"), "revision", 2)
    assert [runner.cell_state(c, out) for c in cells] == ["stale", "stale"]
    with pytest.raises(TacreconError, match="made by revision 1 of the badnets attack's code, this is revision 2"):
        run_attack("badnets", "digits", "test_cnn", art, seed=0, train={"epochs": 1})
    summary = run_grid(config, out, dry_run=True)
    assert summary["stale"] == 2 and summary["artifacts_to_train"] == 1
    summary = run_grid(config, out, progress=False)
    assert summary["done"] == 2 and summary["failed"] == 0
    again = json.loads((art / "attack.json").read_text())
    # attack.json now says revision 2, so it was rewritten (provenance's time has one-second
    # resolution and may match on a fast machine)
    assert again["attack_revision"] == 2
    assert [runner.cell_state(c, out) for c in cells] == ["done", "done"]


def test_a_config_with_tuples_reads_back_as_done(tmp_path):
    # NAD's betas and layers are tuples; the stored JSON holds lists, which must still match
    from tacrecon.defenses import create_defense

    cell = Cell("digits", "test_cnn", "badnets", 0, "nad", "smoke")
    config = create_defense("nad", "smoke").to_dict()
    assert any(isinstance(v, tuple) for v in config.values())
    path = cell.result_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_text(json.dumps({"status": "done", "request": cell.key, "defense_config": config}))
    assert runner.cell_state(cell, tmp_path) == "done"


def test_an_artifact_is_trained_once(tmp_path, monkeypatch):
    import tacrecon.artifact as artifact

    trained = []

    def fake_run_attack(name, dataset, arch, out, **kwargs):
        if (Path(out) / "attack.json").exists():
            return {}
        trained.append(str(out))
        time.sleep(0.3)
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "attack.json").write_text("{}")
        return {}

    monkeypatch.setattr(artifact, "run_attack", fake_run_attack)
    cell = expand(BenchConfig.from_dict(TINY))[0]
    threads = [threading.Thread(target=runner.artifact_job, args=(cell, str(tmp_path), str(tmp_path), None, "cpu", None, False))
               for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(trained) == 1


def test_one_worker_runs_an_artifacts_cells_before_the_next_artifact(tmp_path, monkeypatch):
    # a grid killed mid-way keeps the cells of the artifacts trained so far
    config = BenchConfig.from_dict({**TINY, "grids": [{**TINY["grids"][0], "attacks": ["badnets", "blended"]}]})
    order = []
    for name in ("artifact_job", "cell_job"):
        original = getattr(runner, name)

        def spy(cell, *args, _name=name, _original=original):
            order.append((_name[:-4], cell.attack))
            return _original(cell, *args)
        monkeypatch.setattr(runner, name, spy)
    assert run_grid(config, tmp_path, progress=False)["done"] == 4
    assert order == [("artifact", "badnets"), ("cell", "badnets"), ("cell", "badnets"),
                     ("artifact", "blended"), ("cell", "blended"), ("cell", "blended")]


def test_each_finished_job_says_what_it_gave_on_stderr(tmp_path, capsys):
    # a grid run in the background with its output in a file has no progress bar: these lines are its log
    run_grid(BenchConfig.from_dict(TINY), tmp_path, progress=False)
    lines = capsys.readouterr().err.splitlines()
    folder = f"digits/test_cnn/{Cell('digits', 'test_cnn', 'badnets', 0, 'ft', train={'epochs': 1}).attack_dir}/seed0"
    assert any(line.endswith(" s)") and f" {folder} (attack model): ACC " in line and ", ASR " in line for line in lines)
    assert any(f" {folder}/ft: ACC " in line and ", ASR " in line for line in lines)
    run_grid(BenchConfig.from_dict(TINY), tmp_path, progress=False)  # nothing left to run: nothing said
    assert capsys.readouterr().err == ""


def test_two_workers(tmp_path):
    config = BenchConfig.from_dict({**TINY, "grids": [{**TINY["grids"][0], "attacks": ["badnets", "blended"]}]})
    summary = run_grid(config, tmp_path, workers=2, threads=1)
    assert summary["done"] == 4 and summary["artifacts_to_train"] == 2
    records = [json.loads(p.read_text()) for p in (tmp_path / "artifacts").rglob("attack.json")]
    assert len(records) == 2


@pytest.mark.timeout(400)
def test_ray_backend_matches_local(tmp_path):
    pytest.importorskip("ray")
    import ray

    config = BenchConfig.from_dict(TINY)
    local = run_grid(config, tmp_path / "local", threads=1, progress=False)
    try:
        remote = run_grid(config, tmp_path / "ray", backend="ray", threads=1)
    finally:
        ray.shutdown()
    assert local["done"] == remote["done"] == 2
    a, b = results(tmp_path / "local"), results(tmp_path / "ray")
    for name in a:
        assert a[name]["after"] == b[name]["after"], name


def test_a_pool_whose_worker_died_is_rebuilt():
    import os
    from concurrent.futures.process import BrokenProcessPool

    pool = runner.Pool(1)
    try:
        lost = pool.submit(os._exit, 1)  # the worker process dies, as under the OOM killer
        with pytest.raises(BrokenProcessPool):
            pool.result(lost)
        assert pool.result(pool.submit(abs, -3)) == 3  # the next job gets a new worker
    finally:
        pool.close()
