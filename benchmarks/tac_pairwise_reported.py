"""TAC's pairwise look, thresholds frozen on the tuning models, read once on the reported models.

Usage: OMP_NUM_THREADS=1 python benchmarks/tac_pairwise_reported.py --data-root DIR

The pairwise look (`tacrecon.tac.pairwise`, off by default) was built for the attacks that the
scan cannot see, all-to-all and source-specific, and its two thresholds were set just above the
17 clean tuning models (docs/benchmarks/tac_pairwise.md). This script changes nothing in it: it
applies the default PairwiseConfig to every finished attack artifact of the two reported grids,
`docs/results/robustness/artifacts` (seed 0: all-to-all BadNets and Blended, TaCT, the TAC-aware
attack, two backdoors, low rates, ...) and `docs/results/cpu/artifacts` (seeds 0 and 1: the clean
models, whose flags are false positives, and every all-to-one attack), each with the bench's clean
set (5% of the training split, drawn with the model's seed outside its poisoned images). Per
model: the spread, the largest pair score, the backdoor pairs' best score, the flagged pairs and
whether one is the backdoor's (for all-to-all, also the spread test), and the default scan's
flagged classes beside it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from tac_pairwise import run, truth

from tacrecon.artifact import load_artifact
from tacrecon.data import clean_subset, load_dataset
from tacrecon.tac.pairwise import PairwiseConfig

from common import markdown_table, write_result

ROOT = Path(__file__).resolve().parent.parent
GRIDS = {"robustness": ROOT / "docs" / "results" / "robustness" / "artifacts",
         "cpu": ROOT / "docs" / "results" / "cpu" / "artifacts"}


def artifacts() -> Iterator[tuple[str, str, Path]]:
    """(grid, name, folder) of every finished artifact of the reported grids."""
    for grid, root in GRIDS.items():
        for folder in sorted(root.glob("*/*/*/seed*")):
            if (folder / "attack.json").is_file():
                dataset, arch, attack = folder.parts[-4:-1]
                yield grid, f"{dataset}/{arch}/{attack}/{folder.name}", folder


def cases(data_root: str | None) -> Iterator[tuple[str, str, Any, Any, dict]]:
    cache: dict[str, Any] = {}
    for grid, name, folder in artifacts():
        art = load_artifact(folder)
        dataset = art.record["dataset"]
        if dataset not in cache:
            cache[dataset] = load_dataset(dataset, root=data_root)
        clean = clean_subset(cache[dataset].train, 0.05, None, art.record["seed"], art.poison_index)
        info = {"dataset": dataset, "trigger": art.attack.name, "seed": art.record["seed"],
                "asr": art.record.get("asr"), **truth(art)}
        yield grid, name, art.model.eval(), clean, info


def model_row(grid: str, r: dict) -> list:
    info, true = r["info"], r["true_pair_scores"]
    flagged = " ".join(f"{s}->{t}" for s, t in r["flagged"][:4]) + (" ..." if len(r["flagged"]) > 4 else "")
    verdict = "-" if info["kind"] == "clean" else ("yes" if r["detected"] else "no")
    return [grid, r["model"], info["kind"], f"{100 * (info['asr'] or 0):.1f}", f"{r['spread']:.3f}",
            f"{r['max_score']:.3f}", "-" if not true else f"{max(true):.3f}", flagged or "-", verdict,
            "yes" if r["wrong_pair"] else "-", str(r["scan_flagged"] or "-")]


def summary_rows(results: list[tuple[str, dict]]) -> list[list]:
    """Per kind of model: how many, flagged at all, detected, a wrong pair, the scan's flags."""
    rows = []
    for kind in ("clean", "all-to-one", "several", "all-to-all", "source-specific"):
        members = [r for _, r in results if r["info"]["kind"] == kind]
        if members:
            implanted = [r for r in members if kind == "clean" or (r["info"]["asr"] or 0) > 0.05]
            rows.append([kind, len(members), len(implanted), sum(bool(r["flagged"]) for r in implanted),
                         "-" if kind == "clean" else sum(r["detected"] for r in implanted),
                         "-" if kind == "clean" else sum(r["wrong_pair"] for r in implanted),
                         sum(bool(r["scan_flagged"]) for r in implanted)])
    return rows


def main() -> None:
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args()
    cfg = PairwiseConfig()
    results = []
    for grid, name, model, clean, info in cases(args.data_root):
        results.append((grid, run(name, model, clean, info, cfg)))
        r = results[-1][1]
        print(f"{grid} {name}: spread {r['spread']:.3f}, flagged {r['flagged'][:4]}, scan {r['scan_flagged']}", flush=True)
    seconds = [r["seconds"] + r["latent_seconds"] for _, r in results]
    text = (f"Settings (the defaults, frozen on the tuning models): {cfg.to_dict()}. {len(results)} models; the look "
            f"took {np.median(seconds):.1f} s in the median (the forward pass over the clean set included, one "
            "thread). Implanted: ASR before any defense above 5% (clean models: all). Detected: a flagged pair is one "
            "of the backdoor's (all-to-one: any pair into a target), or, all-to-all, the spread test fired.\n\n"
            + markdown_table(["kind", "models", "implanted", "a pair flagged", "detected", "a wrong pair flagged",
                              "default scan flagged a class"], summary_rows(results))
            + "\nPer model: the spread, the largest pair score, the backdoor pairs' best score, the flagged pairs "
              "(highest score first), whether the backdoor was detected, a wrong pair, the default scan's flags.\n\n"
            + markdown_table(["grid", "model", "kind", "ASR before", "spread", "max score", "backdoor best",
                              "flagged", "detected", "wrong pair", "scan"], [model_row(g, r) for g, r in results]))
    record = {"settings": cfg.to_dict(), "results": [{"grid": g, **{k: v for k, v in r.items() if k != "norms"}}
                                                     for g, r in results]}
    print(write_result("tac_pairwise_reported", record, text))


if __name__ == "__main__":
    main()
