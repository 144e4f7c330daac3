"""TAC on models with two backdoors (digits, tuning seeds 100 and up): which targets the scan flags
and what the repair leaves of each.

Usage: python benchmarks/tac_multi_digits.py [--seeds 100 101 102] [--config KEY=VALUE ...]
                                             [--name tac_multi_digits]

Run it from the repository root. Trains (or reuses) a ``multi`` artifact per seed under
docs/results/tuning/digits-multi (BadNets to class 1 and Blended to class 7 on disjoint samples,
the attack's defaults), then runs TAC's scan and repair (defaults, or ``--config``) on a fifth of
the training split as the clean set, and tabulates, per model: the classes flagged, the relative
norm and anomaly index of each target, and the test ASR of each backdoor before and after.
"""

from __future__ import annotations

import argparse

import torch

from tacrecon.artifact import evaluate, load_artifact, run_attack
from tacrecon.data import clean_subset, load_dataset
from tacrecon.defenses.tac import TAC

from common import TUNING, add_tuning_arguments, markdown_table, parse_tuning_arguments, pct, write_result


def measure(seed: int, config: dict, data) -> dict:
    """One seed's model: trained on first use, scanned and repaired."""
    folder = TUNING / "digits-multi" / f"seed{seed}"
    run_attack("multi", "digits", "resnet_small", folder, seed=seed, train={"progress": False})
    art = load_artifact(folder)
    clean = clean_subset(data.train, 0.2, None, seed, art.poison_index)
    tac = TAC.from_dict(config).fit(art.model, clean, torch.Generator().manual_seed(seed))
    scores = tac.scores()
    targets = [b.target for b in art.attack.backdoors()]
    return {"seed": seed, "targets": targets, "flagged": tac.targets_,
            "relative": {t: scores["relative"][t] for t in targets},
            "anomaly_index": {t: scores["anomaly_index"][t] for t in targets},
            "before": evaluate(art.model, art.attack, data), "after": evaluate(tac.model_, art.attack, data)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_tuning_arguments(parser, "tac_multi_digits")
    args, config = parse_tuning_arguments(parser)
    torch.set_num_threads(1)
    data = load_dataset("digits")
    results = [measure(seed, config, data) for seed in args.seeds]
    rows = []
    for r in results:
        for name, before in r["before"]["asr_per_backdoor"].items():
            t = int(name.rsplit("->", 1)[1]) if "->" in name else None
            rows.append([r["seed"], name, r["flagged"],
                         f"{r['relative'][t]:.2f}" if t is not None else "-",
                         f"{r['anomaly_index'][t]:.2f}" if t is not None else "-",
                         f"{pct(before)} -> {pct(r['after']['asr_per_backdoor'][name])}",
                         f"{pct(r['before']['acc'])} -> {pct(r['after']['acc'])}"])
    table = markdown_table(["seed", "backdoor", "flagged", "relative norm", "anomaly index", "ASR (test)",
                            "ACC (test)"], rows)
    write_result(args.name, {"config": config, "results": results}, table + "\n")


if __name__ == "__main__":
    main()
