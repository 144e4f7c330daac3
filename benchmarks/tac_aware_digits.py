"""The TAC-aware attack (tuning seeds 100 and up): how far its hiding term pushes TAC's scan, and
at what cost to the attack's ASR and clean accuracy.

Usage: python benchmarks/tac_aware_digits.py [--dataset digits] [--arch resnet_small]
                                             [--attacks badnets blended] [--weights 0 1 10] [--band 0.1]
                                             [--seeds 100 101 102] [--config KEY=VALUE ...]
                                             [--name tac_aware_digits]

Run it from the repository root. For every backdoor x weight x seed, trains (or reuses) a
``tac_aware`` artifact under docs/results/tuning/<dataset>-tac-aware (``--band``: the attack's; weight 0 is the plain
backdoor, same poisoned samples and training draws), then runs TAC's scan and repair (defaults,
or ``--config``) on a fifth of the training split as the clean set (``--clean-fraction``), and tabulates the target's
relative norm and anomaly index in both looks, whether it is flagged, ASR / ACC before and after
the repair, and what the repair does when it is told the target (``force_target``): whether the
backdoor is hidden from the scan only or from the repair too.
"""

from __future__ import annotations

import argparse
import time

import torch

from tacrecon.artifact import evaluate, load_artifact, run_attack
from tacrecon.data import clean_subset, load_dataset
from tacrecon.defenses.tac import TAC

from common import TUNING, add_tuning_arguments, markdown_table, parse_tuning_arguments, pct, write_result


def measure(dataset: str, arch: str, attack: str, weight: float, band: float, seed: int, config: dict,
            data, fraction: float = 0.2, root: str | None = None) -> dict:
    """One model: trained on first use (data read from ``root``), scanned and repaired."""
    folder = TUNING / f"{dataset}-tac-aware" / f"{attack}-w{weight:g}-b{band:g}-seed{seed}"
    start = time.perf_counter()
    run_attack("tac_aware", dataset, arch, folder, seed=seed, root=root,
               config={"attack": {"name": attack}, "weight": weight, "band": band}, train={"progress": False})
    train_seconds = time.perf_counter() - start
    art = load_artifact(folder)
    clean = clean_subset(data.train, fraction, None, seed, art.poison_index)
    tac = TAC.from_dict(config).fit(art.model, clean, torch.Generator().manual_seed(seed))
    scores, t = tac.scores(), art.attack.target
    forced = TAC.from_dict({**config, "force_target": t}).fit(art.model, clean, torch.Generator().manual_seed(seed))
    look = {key: scores[key][t] for key in ("relative", "anomaly_index", "robust_relative", "robust_anomaly_index")
            if scores.get(key) is not None}
    return {"attack": attack, "weight": weight, "band": band, "seed": seed, "target": t, "flagged": tac.targets_, **look,
            "train_seconds": train_seconds, "before": evaluate(art.model, art.attack, data),
            "after": evaluate(tac.model_, art.attack, data), "forced": evaluate(forced.model_, art.attack, data)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--arch", default="resnet_small")
    parser.add_argument("--attacks", nargs="+", default=["badnets", "blended"])
    parser.add_argument("--weights", nargs="+", type=float, default=[0.0, 1.0, 10.0])
    parser.add_argument("--band", type=float, default=0.1, help="the attack's band (0: the term pulls on every step)")
    add_tuning_arguments(parser, "tac_aware_digits")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--clean-fraction", type=float, default=0.2, help="the defender's share of the training split")
    args, config = parse_tuning_arguments(parser)
    torch.set_num_threads(1)
    data = load_dataset(args.dataset, root=args.data_root)
    results = [measure(args.dataset, args.arch, a, w, args.band, s, config, data, args.clean_fraction,
                       args.data_root)
               for a in args.attacks for w in args.weights for s in args.seeds]
    rows = [[r["attack"], f"{r['weight']:g}", r["seed"], r["target"], r["flagged"],
             f"{r['relative']:.2f} / {r['anomaly_index']:.1f}",
             f"{r['robust_relative']:.2f} / {r['robust_anomaly_index']:.1f}" if "robust_relative" in r else "-",
             f"{pct(r['before']['asr'])} -> {pct(r['after']['asr'])}",
             f"{pct(r['before']['acc'])} -> {pct(r['after']['acc'])}",
             f"{pct(r['forced']['asr'])} / {pct(r['forced']['acc'])}", f"{r['train_seconds']:.0f}"]
            for r in results]
    table = markdown_table(["backdoor", "weight", "seed", "target", "flagged", "plain look: relative / index",
                            "robust look: relative / index", "ASR (test)", "ACC (test)",
                            "repair at the true target: ASR / ACC", "train s"], rows)
    write_result(args.name, {"config": config, "results": results}, table + "\n")


if __name__ == "__main__":
    main()
