"""How much TAC's per-class norms follow the class frequencies of the training split (a diagnostic).

Usage: python benchmarks/tac_class_frequency.py [--results docs/results/cpu] [--data-root DIR]

Reads every finished TAC cell of a grid's results folder (no model is run) and, per cell, the
Spearman rank correlation between the plain and the robust (second look) norms of the classes
that are not the attack's target and those classes' counts in the training split. A strongly
negative value means the classes the scan finds cheapest to reach are the frequent ones: on an
imbalanced data set (GTSRB: 210 to 2,250 images a class) that is a cause of small norms besides a
backdoor, which the relative bounds and the MAD index do not model. Chose nothing.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from tacrecon.data import load_dataset

from common import markdown_table, spearman, write_result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=Path("docs/results/cpu"))
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args()
    rows, records, counts = [], [], {}
    for path in sorted((args.results / "cells").glob("*/*/*/seed*/tac.json")):
        r = json.loads(path.read_text())
        dataset, scores = r["dataset"], r["scores"]
        if dataset not in counts:
            counts[dataset] = torch.bincount(load_dataset(dataset, root=args.data_root).train.y.cpu()).tolist()
        target = None if r["attack"] == "none" else r["attack_target"]
        keep = [k for k, n in enumerate(scores["norms"]) if k != target and n != float("inf")]
        n = [counts[dataset][k] for k in keep]
        balanced = len(set(n)) == 1  # equal counts: no ranking to correlate with
        plain = None if balanced else spearman([scores["norms"][k] for k in keep], n)
        robust_norms = scores.get("robust_norms", scores.get("second_norms"))  # a cell of revision <= 6: second_
        robust = (spearman([robust_norms[k] for k in keep], n)
                  if robust_norms is not None and not balanced else None)
        low = min(keep, key=lambda k: scores["relative"][k])
        median = sorted(counts[dataset])[len(counts[dataset]) // 2]
        records.append({"cell": str(path.relative_to(args.results / "cells")), "spearman_plain": plain,
                        "spearman_second": robust, "cheapest_other_class": low, "its_count": counts[dataset][low],
                        "relative": scores["relative"][low], "median_count": median})
        rows.append([records[-1]["cell"], "- (balanced)" if plain is None else f"{plain:+.2f}",
                     "-" if robust is None else f"{robust:+.2f}",
                     f"{low}: {scores['relative'][low]:.3f} x median norm, {counts[dataset][low]} images "
                     f"(median {median})"])
    table = markdown_table(["TAC cell", "Spearman(norm, class count)", "same, second look",
                            "cheapest class that is not the target"], rows)
    print(write_result("tac_class_frequency", {"cells": records, "counts": counts}, table))


if __name__ == "__main__":
    main()
