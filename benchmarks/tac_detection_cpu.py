"""TAC's detection on the CPU protocol: scan every attack artifact and the clean models; the norms table.

Usage: python benchmarks/tac_detection_cpu.py [--artifacts docs/results/cpu/artifacts] [--seeds 0]
           [--clean-seeds 0 1 2 3 4] [--tuning docs/results/tuning/artifacts] [--data-root DIR] [--train]

Scans (TAC with its defaults, scan only, the 5% clean set of the grid's cells) every artifact
found under ``<artifacts>/cifar10/resnet_small/<attack>/seed<s>``; ``--train`` first trains the
missing clean models of ``--clean-seeds`` (same recipe and folders as the grid). Models under
``--tuning`` (seeds 100+, where the thresholds were chosen) are listed apart from the reported
ones. Besides the default rule, the table shows each half of its small side alone (MAD index > 3;
norm below 0.85 x median), so the reason for the combined rule can be read off, and the largest
norm and lowest index of the classes that are not the target, the margin of its high side
(flagged: index < -3 and norm above 1.25 x median), and the second look (the robust QP read
with its own thresholds, see TAC's docstring) with the classes it adds.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from tacrecon.artifact import load_artifact, run_attack
from tacrecon.attacks import ATTACKS
from tacrecon.data import clean_subset, load_dataset
from tacrecon.defenses.tac import TAC

from common import add_model_arguments, markdown_table, model_folders, write_result


def scan(folder: Path, data, seed: int) -> dict:
    art = load_artifact(folder)
    clean = clean_subset(data.train, 0.05, None, seed, art.poison_index)
    tac = TAC.from_dict({"repair": False}).fit(art.model, clean)
    scores = tac.scores()
    norms = torch.tensor(scores["norms"])
    target = art.attack.target if art.attack.name != "none" else None
    others = [k for k in range(len(norms)) if k != target]
    return {"attack": art.attack.name, "seed": art.record["seed"], "true_target": target, "flagged": tac.targets_,
            "norms": scores["norms"], "relative": scores["relative"], "anomaly_index": scores["anomaly_index"],
            "p_value": scores["p_value"], "scan_seconds": tac.stats_["scan_seconds"],
            "min_relative_other": min(scores["relative"][k] for k in others),
            "max_index_other": max(scores["anomaly_index"][k] for k in others),
            "max_relative_other": max(scores["relative"][k] for k in others),
            "min_index_other": min(scores["anomaly_index"][k] for k in others),
            "by_mad_only": [k for k in range(len(norms)) if scores["anomaly_index"][k] > tac.detection.threshold],
            "by_relative_only": [k for k in range(len(norms)) if scores["relative"][k] < tac.detection.max_relative],
            "second": scores["robust"],
            **{"second_" + k.removeprefix("robust_"): v for k, v in scores.items() if k.startswith("robust_")}}


def second_look(r: dict) -> str:
    """The second look's numbers: the target's relative norm / index, then the others' extremes."""
    if "second_relative" not in r:
        return "off"
    t, rel, index = r["true_target"], r["second_relative"], r["second_anomaly_index"]
    others = [k for k in range(len(rel)) if k != t]
    target = f"{rel[t]:.2f} / {index[t]:.1f}; " if t is not None else ""
    return target + f"{min(rel[k] for k in others):.2f} / {max(index[k] for k in others):.1f}"


def row(group: str, r: dict) -> list:
    t = r["true_target"]
    correct = (r["flagged"] == [] if t is None else r["flagged"][:1] == [t])
    return [group, r["attack"], r["seed"], r["flagged"] or "-", "yes" if correct else "**no**",
            f"{r['relative'][t]:.2f}" if t is not None else "-", f"{r['anomaly_index'][t]:.1f}" if t is not None else "-",
            f"{r['min_relative_other']:.2f} / {r['max_relative_other']:.2f}",
            f"{r['max_index_other']:.1f} / {r['min_index_other']:.1f}", f"{r['p_value']:.2g}",
            r["by_mad_only"] or "-", r["by_relative_only"] or "-", second_look(r), r["second"] or "-",
            f"{r['scan_seconds']:.1f}"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    parser.add_argument("--train", action="store_true", help="train the missing clean models first")
    args = parser.parse_args()
    data = load_dataset("cifar10", root=args.data_root)
    base = args.artifacts / "cifar10" / "resnet_small"
    if args.train:
        for seed in args.clean_seeds:
            run_attack("none", "cifar10", "resnet_small", base / "none" / f"seed{seed}", root=args.data_root, seed=seed,
                       train={"progress": False})
    jobs = model_folders(args, ATTACKS.names())
    results = []
    for group, folder in jobs:
        if not (folder / "attack.json").is_file():
            print(f"skip {folder}: no artifact", flush=True)
            continue
        results.append({"group": group, **scan(folder, data, int(folder.name[4:]))})
        print(row(group, results[-1]), flush=True)
    rows = [row(r["group"], r) for r in results]
    table = markdown_table(["models", "attack", "seed", "flagged", "correct", "target: norm / median",
                            "target: MAD index", "other classes: min / max norm over median",
                            "other classes: max / min index",
                            "p (min norm)", "MAD > 3 alone", "norm < 0.85 median alone",
                            "second look: target rel / index; others min rel / max index", "second look adds",
                            "scan s"], rows)
    reported = [r for r in results if r["group"] == "reported"]
    found = sum(r["flagged"][:1] == [r["true_target"]] for r in reported if r["true_target"] is not None)
    fp = sum(bool(r["flagged"]) for r in reported if r["true_target"] is None)
    summary = (f"\nReported models: poisoned class found for {found} of "
               f"{sum(r['true_target'] is not None for r in reported)} backdoored models; "
               f"{fp} of {sum(r['true_target'] is None for r in reported)} clean models flagged.\n")
    print(table + summary)
    write_result("tac_detection_cpu", {"rule": TAC().to_dict(), "results": results}, table + summary)


if __name__ == "__main__":
    main()
