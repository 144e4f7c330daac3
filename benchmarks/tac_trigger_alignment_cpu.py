"""How well does TAC's s_t stand for the real trigger's latent effect? A diagnostic, not a tuning step.

Usage: python benchmarks/tac_trigger_alignment_cpu.py [--artifacts docs/results/cpu/artifacts] [--seeds 0]
           [--tuning docs/results/tuning/artifacts] [--data-root DIR]

For every backdoored model, on 500 training images outside the defender's clean set (the images of
other classes than the target), the trigger's latent shift d_i = z(T(x_i)) - z(x_i) is compared
with s_t reconstructed from the clean set alone: the norm of the mean shift, the mean norm, their
ratio (1: the same shift for every image, the universal shift TAC looks for), and the cosine of
s_t with the mean shift and (median) with each d_i. The repair's stand-in for the trigger
(search_stand_in with TAC's defaults, from the clean set alone) is compared the same way: the
cosine of its mean latent change with the trigger's, and the share of the held-out images it
sends to the target on its own. It explains the detection and repair tables; nothing here is
used to choose a threshold or a setting.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from tacrecon.artifact import load_artifact
from tacrecon.attacks import ATTACKS
from tacrecon.data import clean_subset, load_dataset
from tacrecon.data.augment import add_clipped
from tacrecon.defenses.tac import TAC
from tacrecon.metrics import predict, rate
from tacrecon.models import as_classifier, latents_of
from tacrecon.stats import relative_scores
from tacrecon.tac.detect import reconstruct
from tacrecon.tac.stand_in import search_stand_in

from common import add_model_arguments, held_out, markdown_table, model_folders, write_result


def alignment(folder: Path, data) -> dict:
    art = load_artifact(folder)
    seed = art.record["seed"]
    clean = clean_subset(data.train, 0.05, None, seed, art.poison_index)
    held = held_out(data.train, len(clean), 500, seed, art.poison_index)
    model, t = as_classifier(art.model), art.attack.target
    x = held.x[held.y != t]
    shift = (latents_of(model, art.attack(x)) - latents_of(model, x)).double()
    mean = shift.mean(0)
    qp = reconstruct(model, latents_of(model, clean.x))
    s = qp.shifts[t].double()
    each = (shift @ s) / shift.norm(dim=1).clamp_min(1e-12) / s.norm()
    tac = TAC()
    delta = search_stand_in(model, clean, t, s.float(), tac.stand_in.eps, tac.stand_in.steps, tac.batch_size,
                            tac.stand_in.lr, torch.Generator().manual_seed(seed))
    stand_in = (latents_of(model, add_clipped(x, delta)) - latents_of(model, x)).double().mean(0)
    return {"attack": art.attack.name, "seed": seed, "s_norm": float(s.norm()),
            "stand_in_cos_mean": float(stand_in @ mean / stand_in.norm() / mean.norm()),
            "stand_in_success": rate(predict(model, add_clipped(x, delta)) == t),
            "s_relative": float(relative_scores(qp.norms)[t]), "mean_shift_norm": float(mean.norm()),
            "shift_norm": float(shift.norm(dim=1).mean()),
            "consistency": float(mean.norm() / shift.norm(dim=1).mean()),
            "cos_mean": float(mean @ s / mean.norm() / s.norm()), "cos_each_median": float(each.median())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_arguments(parser)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("cifar10", root=args.data_root)
    jobs = model_folders(args, ATTACKS.names(), clean=False)
    results = [{"group": g, **alignment(f, data)} for g, f in jobs if (f / "attack.json").is_file()]
    rows = [[r["group"], r["attack"], r["seed"], f"{r['s_norm']:.2f} ({r['s_relative']:.2f} x median)",
             f"{r['mean_shift_norm']:.2f}", f"{r['shift_norm']:.2f}", f"{r['consistency']:.2f}",
             f"{r['cos_mean']:.2f}", f"{r['cos_each_median']:.2f}", f"{r['stand_in_cos_mean']:.2f}",
             f"{r['stand_in_success']:.1%}"] for r in results]
    table = markdown_table(["models", "attack", "seed", "||s_t||", "||mean trigger shift||",
                            "mean ||trigger shift||", "consistency", "cos(s_t, mean shift)",
                            "cos(s_t, each shift), median", "cos(stand-in's mean change, mean shift)",
                            "stand-in's success"], rows)
    print(table)
    write_result("tac_trigger_alignment_cpu", {"results": results}, table)


if __name__ == "__main__":
    main()
