"""The bench report (tacrecon.bench.report, tables, figures) on hand-made results folders."""

import json

import pytest

from tacrecon.bench import report_text, write_report
from tacrecon.bench.report import words_lines
from tacrecon.errors import TacreconError


def hand_cell(out, attack, seed, defense, acc, asr, der, target=None, norms=None, folder=None, params=None,
              dataset="cifar10", revision=1, attack_revision=1, **extra):
    path = out / "cells" / dataset / "resnet_small" / (folder or attack) / f"seed{seed}" / f"{defense}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"attack": attack, "before": {"acc": 0.85, "asr": None if attack == "none" else 0.95},
                                "after": {"acc": acc, "asr": asr, "ra": None}, "der": der, "target": target,
                                "targets": [] if target is None else [target], "attack_target": 0, "seconds": 1.0,
                                "scores": {"norms": norms} if norms else None,
                                "request": {"defense_params": params or {}}, "defense_revision": revision,
                                "attack_record": {"seconds": 60.0, "attack_revision": attack_revision}, **extra}))
    return path


def test_report_gives_each_backdoor_and_every_target(tmp_path):
    for seed, (left, flagged) in enumerate([(0.30, [7]), (0.10, [7, 1])]):
        for defense, after in (("none", {"badnets->1": 0.96, "blended->7": 0.95}),
                               ("tac", {"badnets->1": left, "blended->7": 0.02})):
            path = hand_cell(tmp_path, "multi", seed, defense, 0.84, max(after.values()), 0.7,
                             target=flagged[0] if defense == "tac" else None, attack_targets=[1, 7])
            record = json.loads(path.read_text())
            record["after"]["asr_per_backdoor"] = after
            record["targets"] = flagged if defense == "tac" else []
            path.write_text(json.dumps(record))
        hand_cell(tmp_path, "badnets-a2a", seed, "tac", 0.84, 0.05, 0.9, target=3, attack_targets=[])
    hand_cell(tmp_path, "badnets", 0, "tac", 0.84, 0.05, 0.9, target=0)  # an older record: one target, 0
    md = write_report(tmp_path)["md"]
    assert "| cifar10/resnet_small | multi | 1/2 (3/4 targets) |" in md  # both flagged in one model of two
    assert "| cifar10/resnet_small | badnets-a2a | 2/2 |" in md  # all-to-all: any flagged class
    assert "| cifar10/resnet_small | badnets | 1/1 |" in md
    assert "| multi | 2 | 84.0±0.0 / 96.0±0.0 | 84.0±0.0 / 20.0±14.1 |" in md  # the worst backdoor's
    assert "### ASR of each backdoor after each defense" in md
    assert "| cifar10/resnet_small | multi | badnets->1 | 96.0±0.0 | 20.0±14.1 |" in md
    assert "| cifar10/resnet_small | multi | blended->7 | 95.0±0.0 | 2.0±0.0 |" in md


def test_report_leaves_out_a_model_the_attack_did_not_implant_in(tmp_path):
    for seed, asr in enumerate([0.02, 0.95]):  # seed 0: ASR 2% before any defense, nothing to find
        before = {"acc": 0.85, "asr": asr}
        hand_cell(tmp_path, "adap_blend", seed, "none", 0.85, asr, 0.5, before=before)
        hand_cell(tmp_path, "adap_blend", seed, "tac", 0.85, 0.01, 0.5 + asr / 2, target=0, before=before)
        hand_cell(tmp_path, "adap_blend", seed, "ft", 0.85, asr, 0.5, before=before)
    hand_cell(tmp_path, "lc", 0, "tac", 0.85, 0.03, 0.5, before={"acc": 0.85, "asr": 0.03})
    md = write_report(tmp_path)["md"]
    assert "| cifar10/resnet_small | adap_blend | 1/1, 1 not implanted |" in md
    assert "| cifar10/resnet_small | lc | 1 not implanted |" in md
    assert "| cifar10/resnet_small | 1/1 | 0/1 |" in md  # the removal bar counts the implanted model only
    assert "| cifar10/resnet_small | adap_blend | 1 | 0.975 |" in md  # the comparison too
    assert "| lc |" not in md.split("### tac against")[1].split("### removal")[0]


def test_report_on_a_hand_made_folder(tmp_path):
    for seed, (a, b) in enumerate([(0.80, 0.02), (0.82, 0.04)]):
        hand_cell(tmp_path, "badnets", seed, "none", 0.85, 0.95, 0.5)
        hand_cell(tmp_path, "badnets", seed, "tac", a, b, 0.7, target=0, norms=[1.0, 5.0, 5.1])
        hand_cell(tmp_path, "badnets", seed, "ft", 0.84, 0.60, 0.6)
        hand_cell(tmp_path, "none", seed, "tac", 0.86, None, None, target=1 if seed else None, norms=[5.0, 1.0, 5.1])
    hand_cell(tmp_path, "badnets", 0, "ft", 0.84, 0.60, 0.6, dataset="gtsrb")
    (tmp_path / "cells/cifar10/resnet_small/badnets/seed0/nc.failed.json").write_text("{}")
    texts = write_report(tmp_path)
    md = texts["md"]
    assert "9 finished cells, 1 failed" in md
    assert "### cifar10 / resnet_small" in md and "### gtsrb / resnet_small" in md
    assert "| attack | seeds | none | tac | ft |" in md
    assert "| none | 2 |  | 86.0±0.0 |  |" in md
    assert "| badnets | 2 | 85.0±0.0 / 95.0±0.0 | **81.0±1.4 / 3.0±1.4** | 84.0±0.0 / 60.0±0.0 |" in md
    assert "| cifar10/resnet_small | none | FP 1/2 |" in md and "| cifar10/resnet_small | badnets | 2/2 |" in md
    assert texts["csv"].count("\n") == 10
    # the removal bar: tac leaves 2-4% but costs 3-5 points, ft leaves 60%
    assert "| cifar10/resnet_small | 0/2 | 0/2 |" in md and "| gtsrb/resnet_small |  | 0/1 |" in md
    # the cost: four attack models of a minute each on CIFAR-10 (each counted once), one on GTSRB, 9 cells of 1 s
    assert "| cifar10/resnet_small | (attack models) | 4 | 1.0 | 0.07 |" in md
    assert "| cifar10/resnet_small | tac | 4 | 0.0 | 0.00 |" in md and "| all |  | 14 |  | 0.09 |" in md
    for name in ("asr_vs_acc_cifar10_resnet_small.png", "asr_vs_acc_gtsrb_resnet_small.png",
                 "der_vs_minutes_cifar10_resnet_small.png", "der_vs_minutes_gtsrb_resnet_small.png"):
        assert (tmp_path / name).stat().st_size > 1000  # two figures per data set and architecture
    assert len(list((tmp_path / "plots").glob("tac_*.png"))) == 4
    assert texts["html"].count("data:image/png;base64") == 8


def test_report_bold_needs_a_rival_a_gain_and_every_seed(tmp_path):
    for seed in (0, 1):
        hand_cell(tmp_path, "badnets", seed, "none", 0.85, 0.95, 0.5)
        hand_cell(tmp_path, "blended", seed, "none", 0.85, 0.95, 0.5)
        hand_cell(tmp_path, "blended", seed, "ft", 0.85, 0.95, 0.5)  # changed nothing
        hand_cell(tmp_path, "blended", seed, "fp", 0.85, 0.97, 0.49)
        hand_cell(tmp_path, "wanet", seed, "none", 0.85, 0.95, 0.5)
        hand_cell(tmp_path, "wanet", seed, "ft", 0.84, 0.10, 0.92)
        hand_cell(tmp_path, "wanet", seed, "fp", 0.84, 0.10, 0.92)
    hand_cell(tmp_path, "badnets", 0, "ft", 0.84, 0.50, 0.7)  # the grid has not reached seed 1 yet
    hand_cell(tmp_path, "badnets", 0, "fp", 0.80, 0.50, 0.6)
    hand_cell(tmp_path, "badnets", 1, "fp", 0.80, 0.50, 0.6)
    md = write_report(tmp_path)["md"]
    # a cell over fewer seeds is marked and does not compete; a lone rival is not bold
    assert "| badnets | 2 | 85.0±0.0 / 95.0±0.0 | 80.0±0.0 / 50.0±0.0 | 84.0 / 50.0 [1] |" in md
    assert "[n]: over only n" in md
    assert "| blended | 2 | 85.0±0.0 / 95.0±0.0 | 85.0±0.0 / 97.0±0.0 | 85.0±0.0 / 95.0±0.0 |" in md  # no gain
    assert "| wanet | 2 | 85.0±0.0 / 95.0±0.0 | **84.0±0.0 / 10.0±0.0** | **84.0±0.0 / 10.0±0.0** |" in md  # a tie


def test_report_sets_tac_against_the_best_other_defense(tmp_path):
    for seed in (0, 1):
        for attack, ders in [("badnets", {"tac": 0.90, "ft": 0.70, "fp": 0.80}),
                             ("blended", {"tac": 0.80, "ft": 0.95, "fp": 0.60}),
                             ("wanet", {"tac": 0.90, "ft": 0.898})]:
            hand_cell(tmp_path, attack, seed, "none", 0.85, 0.95, 0.5)
            for d, der in ders.items():
                hand_cell(tmp_path, attack, seed, d, 0.84, 0.10, der)
    hand_cell(tmp_path, "sig", 0, "tac", 0.84, 0.10, 0.6)  # no rival over the same seeds: no row
    hand_cell(tmp_path, "sig", 1, "ft", 0.84, 0.10, 0.9)
    for seed in (0, 1):  # a rival still short of seed 1 is compared on seed 0, not left out
        hand_cell(tmp_path, "trojan", seed, "none", 0.85, 0.95, 0.5)
        hand_cell(tmp_path, "trojan", seed, "tac", 0.84, 0.10, 0.9)
        hand_cell(tmp_path, "trojan", seed, "fp", 0.84, 0.10, 0.5)
    hand_cell(tmp_path, "trojan", 0, "nc", 0.84, 0.10, 0.95)
    hand_cell(tmp_path, "none", 0, "tac", 0.86, None, None)
    md = write_report(tmp_path)["md"]
    assert "### tac against the best other defense (wins 1, tie 1, loses 2;" in md
    assert "| trojan | 1 | 0.900 | 84.0 / 10.0 | <0.1 | nc | 0.950 |" in md
    assert "| cifar10/resnet_small | badnets | 2 | 0.900 | 84.0±0.0 / 10.0±0.0 | <0.1 | fp | 0.800 |" in md
    assert ("| blended | 2 | 0.800 | 84.0±0.0 / 10.0±0.0 | <0.1 | ft | 0.950 | 84.0±0.0 / 10.0±0.0 | <0.1 | -0.150 "
            "| loses |") in md
    assert "| wanet | 2 | 0.900 |" in md and "| +0.002 | tie |" in md
    assert "| sig |" not in md.split("### tac against")[1].split("### removal")[0]
    assert ("In words: tac has the best DER on 1 of 4 attack rows, ties on 1 (within 0.005) and loses on 2: "
            "cifar10/resnet_small blended to ft by 0.150 (tac 84.0±0.0 / 10.0±0.0, ft 84.0±0.0 / 10.0±0.0); "
            "cifar10/resnet_small trojan to nc by 0.050 (tac 84.0 / 10.0, nc 84.0 / 10.0). Cost (each defense's "
            "minutes over tac's on the same model, the median over the models both ran): fp 1.0x (6 models), "
            "ft 1.0x (6 models), nc 1.0x (1 model).") in md.splitlines()


def test_report_pairs_tac_with_each_rival_on_the_seeds_they_share(tmp_path):
    # rivals on different seeds (one run on seed 0 only, one on seed 1 only) still make a row:
    # each is set against tac on its own seeds, and the closest is the best other
    for seed, der in ((0, 0.95), (1, 0.85)):
        hand_cell(tmp_path, "badnets", seed, "none", 0.85, 0.95, 0.5)
        hand_cell(tmp_path, "badnets", seed, "tac", 0.84, 0.10, der)
    hand_cell(tmp_path, "badnets", 0, "ft", 0.84, 0.10, 0.90)  # margin +0.05 on seed 0
    hand_cell(tmp_path, "badnets", 1, "nc", 0.84, 0.10, 0.88)  # margin -0.03 on seed 1
    md = write_report(tmp_path)["md"]
    assert "### tac against the best other defense (wins 0, tie 0, loses 1;" in md
    assert "| cifar10/resnet_small | badnets | 1 | 0.850 | 84.0 / 10.0 | <0.1 | nc | 0.880 |" in md
    assert "| -0.030 | loses |" in md


def test_report_says_in_words_that_tac_loses_on_none_and_what_each_rival_costs(tmp_path):
    for defense, der, seconds in (("none", 0.5, 0.5), ("tac", 0.96, 60.0), ("ftsam", 0.95, 1200.0), ("clp", 0.6, 0.3)):
        hand_cell(tmp_path, "badnets", 0, defense, 0.84, 0.05, der, seconds=seconds)
    (words,) = words_lines(write_report(tmp_path)["md"])
    assert words.startswith("In words: tac has the best DER on 1 of 1 attack rows; it loses on none. Cost")
    assert words.endswith("ran): clp 0.005x (1 model), ftsam 20x (1 model).")  # doing nothing is no defense


def test_report_sets_each_setting_of_tac_against_the_other_defenses_not_against_each_other(tmp_path):
    hand_cell(tmp_path, "badnets", 0, "none", 0.85, 0.95, 0.5)
    hand_cell(tmp_path, "badnets", 0, "tac", 0.84, 0.40, 0.77)
    hand_cell(tmp_path, "badnets", 0, "tac-abcdef12", 0.84, 0.02, 0.96, params={"pairwise": True})
    hand_cell(tmp_path, "badnets", 0, "ft", 0.84, 0.20, 0.87)
    md = write_report(tmp_path)["md"]
    assert "### tac against the best other defense (wins 0, tie 0, loses 1;" in md
    assert "### tac-abcdef12 against the best other defense (wins 1, tie 0, loses 0;" in md
    tac, variant = words_lines(md)
    assert "loses on 1: cifar10/resnet_small badnets to ft by 0.100" in tac and "tac-abcdef12" not in tac
    assert variant.endswith("; it loses on none. Cost (each defense's minutes over tac-abcdef12's on the same model, "
                            "the median over the models both ran): ft 1.0x (1 model).")


def test_report_reads_the_attack_from_the_result_not_the_folder(tmp_path):
    # an overridden train budget puts a hash on every folder, the clean model's too
    hand_cell(tmp_path, "none", 0, "tac", 0.86, None, None, target=0, norms=[1.0, 5.0, 5.1], folder="none-abcdef12")
    hand_cell(tmp_path, "badnets", 0, "tac", 0.80, 0.02, 0.7, target=0, folder="badnets-abcdef12")
    md = write_report(tmp_path)["md"]
    assert "| cifar10/resnet_small | none-abcdef12 | FP 1/1 |" in md  # a false positive, not a detection
    assert md.index("| none-abcdef12 | 1 |") < md.index("| badnets-abcdef12 | 1 |")


def test_report_sets_each_defense_s_minutes_beside_its_benefit(tmp_path):
    for defense, asr, der, seconds in (("none", 0.95, 0.5, 0.5), ("tac", 0.02, 0.96, 60.0),
                                       ("ftsam", 0.03, 0.95, 600.0), ("nc", 0.30, 0.80, 2400.0)):
        hand_cell(tmp_path, "badnets", 0, defense, 0.84, asr, der, seconds=seconds)
    hand_cell(tmp_path, "none", 0, "tac", 0.86, None, None, seconds=180.0)  # the median of 1 and 3 minutes
    md = write_report(tmp_path)["md"]
    assert "| minutes (median) |  | <0.1 | 2.0 | 10.0 | 40.0 |" in md  # none, tac, then the others by name
    assert "| cifar10/resnet_small | badnets | 1 | 0.960 | 84.0 / 2.0 | 1.0 | ftsam | 0.950 | 84.0 / 3.0 | 10.0 |" in md
    assert (tmp_path / "der_vs_minutes_cifar10_resnet_small.png").read_bytes()[:4] == b"\x89PNG"


def test_report_in_two_parts_the_confirmatory_grid_above_the_development_one(tmp_path):
    confirm, development = tmp_path / "confirm", tmp_path / "dev"
    hand_cell(confirm, "badnets", 2, "tac", 0.84, 0.02, 0.96)
    hand_cell(development, "badnets", 0, "tac", 0.80, 0.40, 0.70)
    (development / "bench.json").write_text(json.dumps({"config": {"name": "cpu"}}))
    texts = write_report(confirm, development)
    md = texts["md"]
    assert md.startswith("## Confirmatory grid: confirm\n")
    assert md.index("84.0 / 2.0") < md.index("## Development grid: cpu (") < md.index("80.0 / 40.0")
    assert report_text(confirm, development) == md == (confirm / "report.md").read_text()
    assert "<h2>Development grid: cpu" in texts["html"] and not (development / "report.md").exists()
    assert report_text(confirm) == md[len("## Confirmatory grid: confirm\n\n"):md.index("\n## Development")]
    with pytest.raises(TacreconError, match="must be another folder"):
        write_report(confirm, confirm)


def test_report_says_which_attacked_models_meet_the_attack_bar(tmp_path):
    for seed, acc in ((0, 0.86), (1, 0.88)):
        hand_cell(tmp_path, "none", seed, "none", acc, None, None, before={"acc": acc, "asr": None})
    hand_cell(tmp_path, "badnets", 0, "none", 0.85, 0.95, 0.5)  # 0.85 before, 1 point under its clean model
    hand_cell(tmp_path, "badnets", 1, "none", 0.85, 0.95, 0.5)  # 3 points under
    path = hand_cell(tmp_path, "multi", 0, "none", 0.85, 0.95, 0.5)
    record = json.loads(path.read_text())
    record["before"]["asr_per_backdoor"] = {"badnets->1": 0.95, "blended->7": 0.62}  # the weaker one counts
    path.write_text(json.dumps(record))
    md = write_report(tmp_path)["md"]
    assert "### attack bar (attacked models with ASR >= 90% within 2 points of the clean model" in md
    assert ("| cifar10/resnet_small | badnets | 1/2 | 85.0±0.0 | 87.0±1.4 | 95.0±0.0 | seed 1: ACC 85.0 "
            "(clean 88.0) |") in md
    assert "| cifar10/resnet_small | multi | 0/1 | 85.0 | 86.0 | 62.0 | seed 0: ASR 62.0 |" in md


def test_report_names_what_a_hashed_attack_overrides(tmp_path):
    request = {"attack_params": {"label_mode": "all2all", "target": 3}, "train": {"epochs": 50}}
    hand_cell(tmp_path, "badnets", 0, "tac", 0.84, 0.05, 0.9, folder="badnets-1a2b3c4d", request=request)
    hand_cell(tmp_path, "blended", 0, "tac", 0.84, 0.05, 0.9, request={"attack_params": {"target": 3}})
    md = write_report(tmp_path)["md"]  # the target names no folder, so it is no override either
    assert 'Overridden attacks: badnets-1a2b3c4d = label_mode=all2all, train={"epochs":50}' in md
    assert "blended =" not in md


def test_report_names_what_a_hashed_defense_overrides(tmp_path):
    hand_cell(tmp_path, "badnets", 0, "tac-0f8d7a6c", 0.80, 0.02, 0.7, params={"threshold": 2.5})
    assert "tac-0f8d7a6c = threshold=2.5" in write_report(tmp_path)["md"]


def test_report_counts_a_stale_cell_whose_rerun_failed_as_failed(tmp_path):
    path = hand_cell(tmp_path, "badnets", 0, "ft", 0.84, 0.50, 0.7)
    hand_cell(tmp_path, "badnets", 0, "none", 0.85, 0.95, 0.5)
    path.with_name("ft.failed.json").write_text("{}")
    md = write_report(tmp_path)["md"]
    assert "1 finished cells, 1 failed" in md and "| ft |" not in md


def test_report_errors(tmp_path):
    with pytest.raises(TacreconError, match="not a bench output folder"):
        write_report(tmp_path)
    cell = tmp_path / "cells/cifar10/resnet_small/badnets/seed0/ft.json"
    cell.parent.mkdir(parents=True)
    cell.write_text(json.dumps({"after": {"acc": 0.8}}))
    with pytest.raises(TacreconError, match=r"ft.json: not a cell result \(missing or malformed 'asr'\)"):
        write_report(tmp_path)
    cell.rename(tmp_path / "cells/cifar10/resnet_small/badnets/ft.json")
    with pytest.raises(TacreconError, match="ft.json: not a cell result"):
        write_report(tmp_path)


def test_report_names_a_defense_whose_cells_mix_code_revisions(tmp_path):
    for seed in (0, 1):
        hand_cell(tmp_path, "badnets", seed, "none", 0.85, 0.95, 0.5)
        hand_cell(tmp_path, "badnets", seed, "ft", 0.84, 0.60, 0.6, revision=2)
        hand_cell(tmp_path, "badnets", seed, "tac", 0.84, 0.02, 0.96, target=0, revision=5 + seed)
    hand_cell(tmp_path, "badnets", 0, "nc", 0.84, 0.02, 0.96, attack_revision=2)
    assert ("Cells of more than one code revision: defense tac revision 5: 1 cell, revision 6: 1 cell; "
            "attack badnets revision 1: 6 cells, revision 2: 1 cell.") in write_report(tmp_path)["md"]
    hand_cell(tmp_path, "badnets", 0, "tac", 0.84, 0.02, 0.96, target=0, revision=6)  # reruns: one revision again
    hand_cell(tmp_path, "badnets", 0, "nc", 0.84, 0.02, 0.96)
    assert "code revision" not in write_report(tmp_path)["md"]
