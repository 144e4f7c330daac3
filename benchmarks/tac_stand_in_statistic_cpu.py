"""Could the repair's stand-in flag a class? A candidate detection statistic, on TUNING models only.

Usage: python benchmarks/tac_stand_in_statistic_cpu.py [--tuning docs/results/tuning/artifacts]
           [--attacks none blended wanet] [--seeds 100] [--data-root DIR]

For every class k of a CIFAR-10 tuning model, the stand-in of the repair (search_stand_in with
TAC's defaults: radius 0.1, 150 steps, from s_k and the clean set alone) is searched, and its
success, the share of the clean images of the other classes it sends to k, is the score. A target
would stand out by a high share; read with the MAD anomaly index on the high side (index of the
negated shares, > 3 flags). It costs C stand-in searches, about C times the repair's one, so it
could only ever be an opt-in deep scan. Results are cached per model (a killed run resumes).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from tacrecon.artifact import load_artifact
from tacrecon.data import clean_subset, load_dataset
from tacrecon.defenses.tac import TAC
from tacrecon.io import atomic_write_json, read_json
from tacrecon.models import as_classifier, latents_of
from tacrecon.stats import anomaly_index
from tacrecon.tac.detect import reconstruct
from tacrecon.tac.stand_in import search_stand_in, stand_in_success

from common import markdown_table, write_result


def stand_in_shares(folder: Path, data) -> dict:
    """The stand-in's success for every class of the model in ``folder``, with seconds."""
    art = load_artifact(folder)
    seed = art.record["seed"]
    clean = clean_subset(data.train, 0.05, None, seed, art.poison_index)
    model = as_classifier(art.model)
    qp = reconstruct(model, latents_of(model, clean.x))
    tac, shares, start = TAC(), [], time.perf_counter()
    for k in range(model.num_classes):
        delta = search_stand_in(model, clean, k, qp.shifts[k].float(), tac.stand_in.eps, tac.stand_in.steps,
                                tac.batch_size, tac.stand_in.lr, torch.Generator().manual_seed(seed))
        shares.append(stand_in_success(model, clean, k, delta))
        print(folder, k, f"{shares[-1]:.3f}", flush=True)
    target = art.attack.target if art.attack.name != "none" else None
    return {"attack": art.attack.name, "seed": seed, "target": target, "shares": shares,
            "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tuning", type=Path, default=Path("docs/results/tuning/artifacts"))
    parser.add_argument("--attacks", nargs="+", default=["none", "blended", "wanet"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[100])
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("cifar10", root=args.data_root)
    results = []
    for attack in args.attacks:
        for seed in args.seeds:
            folder = args.tuning / "cifar10" / "resnet_small" / attack / f"seed{seed}"
            if not (folder / "attack.json").is_file():
                continue
            cache = folder / "stand_in_shares.json"
            if not cache.is_file():
                atomic_write_json(cache, stand_in_shares(folder, data))
            results.append(read_json(cache))
    rows = []
    for r in results:
        shares = torch.tensor(r["shares"])
        index = anomaly_index(-shares)  # high shares -> positive index
        top = int(shares.argmax())
        t = r["target"]
        rows.append([r["attack"], r["seed"], "-" if t is None else t, " ".join(f"{100 * s:.0f}" for s in r["shares"]),
                     f"{top} ({index[top]:.1f})", "-" if t is None else f"{index[t]:.1f}", f"{r['seconds']:.0f}"])
    table = markdown_table(["attack", "seed", "target", "stand-in success per class (%)",
                            "largest: class (index)", "target's index", "seconds"], rows)
    print(table)
    write_result("tac_stand_in_statistic_cpu", {"results": results}, table)


if __name__ == "__main__":
    main()
