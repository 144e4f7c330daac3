"""How stable is TAC's surrogate-trigger search (Phase 2b)? Tuning models only (seed 100+).

Usage: python benchmarks/tac_surrogate_stability.py [--models gtsrb/blended cifar10/blended ...]
       [--seeds 0 1 2] [--only VARIANT ...] [--runs docs/results/tuning] [--data-root DIR]

For each tuning model (its true target, its 5% clean set drawn with the model's seed, as the grid
draws it) the scan's s_t is computed once; then :func:`~tacrecon.tac.stand_in.search_stand_in`
is run with several generator seeds (the batches it draws) for each variant of its settings. A
row gives the stand-in's success (the share of the clean images of the other classes it sends to
the target, what a defender can measure) and the same share on 1,000 held-out training images,
and the latent fit (the final mean squared error over ||s_t||^2). Why: the GTSRB Blended TAC
cell of the CPU grid gave a stand-in that reached 3% of the clean images (ASR left 75.2%) in a
grid process that had imported the code hours earlier, and 66% (ASR 10.7%) when rerun with the
current code on the same scan (norms equal to 1e-8). On these tuning models the search is stable
across its seeds, and the current code reproduces the rerun's 66% on the reported model (65.6%,
64.7%, 63.4% for seeds 0-2, a check, not a choice), so the first run's code, not the search, is
the suspect; since then results name the commit a process imported (tacrecon.io.git_commit).
Only the default variant has been run so far (``--only`` picks others). Each run is cached, so
a killed run resumes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from tacrecon.artifact import load_artifact
from tacrecon.data import clean_subset, load_dataset
from tacrecon.data.augment import add_clipped
from tacrecon.defenses.tac import TAC
from tacrecon.io import atomic_write_json, read_json
from tacrecon.models import as_classifier
from tacrecon.tac.stand_in import search_stand_in, stand_in_success

from common import TUNING, held_out, markdown_table, tuning_folder, write_result

# name -> (eps, steps, lr, restarts): restarts > 1 keeps the stand-in with the best clean success
VARIANTS = {
    "default (eps .1, 150 steps, lr .05)": (0.1, 150, 0.05, 1),
    "lr .01": (0.1, 150, 0.01, 1),
    "300 steps": (0.1, 300, 0.05, 1),
    "eps .2": (0.2, 150, 0.05, 1),
    "best of 3 by clean success": (0.1, 150, 0.05, 3),
}


def latent_fit(model, clean, target: int, shift: torch.Tensor, delta: torch.Tensor) -> float:
    """Mean squared error of the stand-in's latent change against s_t, over ||s_t||^2."""
    others = clean.x[clean.y != target]
    with torch.no_grad():
        change = model.latent(add_clipped(others, delta)) - model.latent(others)
    return float((change - shift).square().sum(1).mean() / shift.square().sum())


def run_variant(model, clean, held, target: int, shift: torch.Tensor, variant: tuple, seed: int) -> dict:
    eps, steps, lr, restarts = variant
    start = time.perf_counter()
    best = None
    for r in range(restarts):
        g = torch.Generator().manual_seed(seed * 1000 + r)
        delta = search_stand_in(model, clean, target, shift, eps, steps, 128, lr, g)
        hit = stand_in_success(model, clean, target, delta)
        if best is None or hit > best[0]:
            best = (hit, delta)
    hit, delta = best
    return {"clean_success": hit, "held_success": stand_in_success(model, held, target, delta),
            "fit": latent_fit(model, clean, target, shift, delta), "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["gtsrb/blended", "gtsrb/badnets", "cifar10/blended",
                                                        "cifar10/badnets", "cifar10/wanet"])
    parser.add_argument("--model-seed", type=int, default=100)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="*", default=None, help="variant names to run (default: all)")
    parser.add_argument("--runs", type=Path, default=TUNING)
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows, results, datasets = [], {}, {}
    for name in args.models:
        dataset, attack = name.split("/")
        folder = tuning_folder(dataset, attack, args.model_seed, args.runs)
        if not (folder / "attack.json").is_file():
            print(f"skip {folder}: no artifact yet", flush=True)
            continue
        if dataset not in datasets:
            datasets[dataset] = load_dataset(dataset, root=args.data_root)
        art, data = load_artifact(folder), datasets[dataset]
        model = as_classifier(art.model).eval()
        clean = clean_subset(data.train, 0.05, None, args.model_seed, art.poison_index)
        target = art.attack.target
        tac = TAC.from_dict({"repair": False}).fit(art.model, clean)
        shift = tac.scan_.shifts[target].float()
        held = held_out(data.train, len(clean), 1000, args.model_seed, art.poison_index)
        for vname, variant in VARIANTS.items():
            for seed in args.seeds:
                cache = folder / "surrogate_stability" / f"{vname.split(' (')[0].replace(' ', '_')}_seed{seed}.json"
                if cache.is_file():
                    record = read_json(cache)
                elif args.only is not None and vname not in args.only:
                    continue
                else:
                    record = run_variant(model, clean, held, target, shift, variant, seed)
                    atomic_write_json(cache, record)
                results.setdefault(name, {}).setdefault(vname, {})[seed] = record
                print(name, vname, seed, {k: round(v, 3) for k, v in record.items()}, flush=True)
            done = results.get(name, {}).get(vname, {})
            if done:
                rows.append([name, vname, len(done),
                             " ".join(f"{r['clean_success']:.0%}" for r in done.values()),
                             " ".join(f"{r['held_success']:.0%}" for r in done.values()),
                             " ".join(f"{r['fit']:.2f}" for r in done.values()),
                             f"{sum(r['seconds'] for r in done.values()) / len(done):.0f}"])
    table = markdown_table(["model (seed 100)", "variant", "runs", "clean success per seed",
                            "held-out success per seed", "latent fit (MSE / ||s_t||^2)", "seconds / run"], rows)
    print(table)
    write_result("tac_surrogate_stability", {"variants": VARIANTS, "model_seed": args.model_seed,
                                             "results": results}, table)


if __name__ == "__main__":
    main()
