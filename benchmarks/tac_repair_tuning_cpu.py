"""Choose TAC's repair recipe on the CPU protocol, on TUNING models (seed 100+), never reported ones.

Usage: python benchmarks/tac_repair_tuning_cpu.py [--seeds 100] [--runs docs/results/tuning]
                                                  [--data-root DIR] [--only VARIANT ...] [--dataset gtsrb]

``--dataset gtsrb`` reads the GTSRB tuning models of <runs>/gtsrb/<attack>/seed<seed> (made by
benchmarks/tac_class_prior_gtsrb.py) and writes tac_repair_tuning_gtsrb*.

Needs the artifacts of configs/tac_tuning_cpu.yaml (cifar10, resnet_small, none / badnets / blended /
wanet / sig). Each variant repairs every backdoored model with its true target forced (so detection does
not interfere) and the clean model with its smallest-norm class forced (the cost of a false
positive). The choice is made on VALIDATION figures of these tuning models: ACC and ASR on 500 (``--val-n``)
training images held out from the defender's clean set (never the test split, protocols.md), and
what a defender sees with clean data only, the target's relative norm ||s_t|| / median ||s_k||
rescanned on the repaired model. Test ACC / ASR are recorded too, not used to choose. Results are
cached per (model, variant) in the artifacts folder, so a killed run resumes.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from tacrecon.artifact import evaluate, load_artifact
from tacrecon.data import clean_subset, load_dataset
from tacrecon.defenses.tac import TAC
from tacrecon.io import atomic_write_json, read_json
from tacrecon.metrics import accuracy, attack_rates

from common import TUNING, held_out, markdown_table, pct, tuning_folder, write_result

PRUNE_VARIANTS = {
    "prune, no fine-tune": {"method": "prune", "epochs": 0},  # prune_stop 1.0 unless said
    "prune, b128 lr.01 ep10": {"method": "prune", "batch_size": 128, "lr": 0.01, "epochs": 10, "beta": 0.0,
                               "freeze_head": False},
    "prune, b128 lr.01 ep10 frozen": {"method": "prune", "batch_size": 128, "lr": 0.01, "epochs": 10, "beta": 0.0},
    "prune to 1.1, b128 lr.01 ep10 frozen": {"method": "prune", "prune_stop": 1.1, "batch_size": 128, "lr": 0.01,
                                              "epochs": 10, "beta": 0.0},
    "prune, b128 lr.003 ep10 frozen": {"method": "prune", "batch_size": 128, "lr": 0.003, "epochs": 10, "beta": 0.0},
    "prune to 1.1, frozen, loss beta .1 recompute": {"method": "prune", "prune_stop": 1.1, "batch_size": 128,
                                                      "lr": 0.01, "epochs": 10, "beta": 0.1, "recompute": True},
    "prune to 1.1, frozen, loss beta .3 recompute": {"method": "prune", "prune_stop": 1.1, "batch_size": 128,
                                                      "lr": 0.01, "epochs": 10, "beta": 0.3, "recompute": True},
    "prune to 1.1 by abs(s) over std, frozen": {"method": "prune", "prune_stop": 1.1, "prune_rank": "shift_std",
                                         "batch_size": 128, "lr": 0.01, "epochs": 10, "beta": 0.0},
    "prune to 1.2 by abs(s) over std, frozen": {"method": "prune", "prune_stop": 1.2, "prune_rank": "shift_std",
                                         "batch_size": 128, "lr": 0.01, "epochs": 10, "beta": 0.0},
    "prune to 1.2, frozen": {"method": "prune", "prune_stop": 1.2, "batch_size": 128, "lr": 0.01, "epochs": 10,
                             "beta": 0.0},
    "prune to 1.1, frozen, surrogate .2": {"method": "prune", "prune_stop": 1.1, "batch_size": 128, "lr": 0.01,
                                           "epochs": 10, "beta": 0.0, "surrogate_eps": 0.2},
    "prune to 1.1, frozen, surrogate .1": {"method": "prune", "prune_stop": 1.1, "batch_size": 128, "lr": 0.01,
                                           "epochs": 10, "beta": 0.0, "surrogate_eps": 0.1},
    "no pruning, frozen, surrogate .1": {"method": "finetune", "batch_size": 128, "lr": 0.01, "epochs": 10,
                                         "beta": 0.0, "surrogate_eps": 0.1},
    "prune, b128 lr.01 ep10 whole beta 1": {"method": "prune", "batch_size": 128, "lr": 0.01, "epochs": 10,
                                            "freeze_head": False, "beta": 1.0},
}
LOSS_VARIANTS = {
    "b32 lr.01 ep10 frozen": {"batch_size": 32, "lr": 0.01, "epochs": 10},
    "b32 lr.003 ep10 frozen": {"batch_size": 32, "lr": 0.003, "epochs": 10},
    "b128 lr.01 ep20 frozen": {"batch_size": 128, "lr": 0.01, "epochs": 20},
    "b128 lr.01 ep20 whole": {"batch_size": 128, "lr": 0.01, "epochs": 20, "freeze_head": False},
    "b128 lr.01 ep20 frozen recompute": {"batch_size": 128, "lr": 0.01, "epochs": 20, "recompute": True},
    "b128 lr.01 ep20 frozen beta 0 (plain FT)": {"batch_size": 128, "lr": 0.01, "epochs": 20, "beta": 0.0},
}
LOSS_VARIANTS = {name: {"method": "finetune", "beta": 1.0, **v} for name, v in LOSS_VARIANTS.items()}
PRUNE_VARIANTS = {name: {"prune_stop": 1.0, **v} for name, v in PRUNE_VARIANTS.items()}
# revision 4: the defaults with the second look, and the repair of a class the second look alone finds
# (the plain rule switched off, so the robust s_t is the one pruned and stamped)
REVISION4_VARIANTS = {
    "defaults, revision 4": {"prune_stop": 1.1, "surrogate_eps": 0.1, "second_quantile": 0.95},
    "second look only, revision 4": {"prune_stop": 1.1, "surrogate_eps": 0.1, "second_quantile": 0.95,
                                     "threshold": 1000.0, "high_relative": 0.0},
}
VARIANTS = {**PRUNE_VARIANTS, **LOSS_VARIANTS, **REVISION4_VARIANTS}
ATTACKS = ("badnets", "blended", "wanet", "sig", "none", "lira")


def relative_target_norm(model: torch.nn.Module, clean, target: int) -> float:
    """||s_t|| / median_k ||s_k|| of ``model`` on ``clean``: near 1 once the shortcut to t is gone."""
    return TAC.from_dict({"repair": False}).fit(model, clean).scores()["relative"][target]


def run_one(art, data, variant: dict, seed: int, val_n: int = 500) -> dict:
    clean = clean_subset(data.train, 0.05, None, seed, art.poison_index)
    held = held_out(data.train, len(clean), val_n, seed, art.poison_index)
    scan = TAC.from_dict({"repair": False}).fit(art.model, clean).scores()
    target = art.attack.target if art.attack.name != "none" else int(torch.tensor(scan["norms"]).argmin())
    start = time.perf_counter()
    tac = TAC.from_dict(variant, force_target=target).fit(art.model, clean, torch.Generator().manual_seed(seed))
    seconds = time.perf_counter() - start
    after = evaluate(tac.model_, art.attack, data)
    val = {}
    for when, model in (("before", art.model), ("after", tac.model_)):
        val[f"acc_{when}"] = accuracy(model, held)
        if art.attack.name != "none":
            val[f"asr_{when}"] = attack_rates(model, held, art.attack, art.attack.label_map())[0]
    return {"target": target, "before": {k: art.record[k] for k in ("acc", "asr")}, "after": after, "seconds": seconds,
            "val": val,
            "rel_norm_before": scan["relative"][target],
            "rel_norm_after": relative_target_norm(tac.model_, clean, target)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[100])
    parser.add_argument("--runs", type=Path, default=TUNING, help="the tuning models' folder (common.tuning_folder)")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--only", nargs="*", default=None, help="variant names to run (default: all)")
    parser.add_argument("--cached", action="store_true", help="tabulate the cached results only, run nothing")
    parser.add_argument("--attacks", nargs="+", default=list(ATTACKS), help="the tuning models to run")
    parser.add_argument("--dataset", choices=["cifar10", "gtsrb"], default="cifar10")
    parser.add_argument("--val-n", type=int, default=500,
                        help="held-out training images for the validation figures (results cached apart per size)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset(args.dataset, root=args.data_root)
    suffix = "" if args.val_n == 500 else f"_val{args.val_n}"  # results of another size are kept apart
    results: dict[str, dict[str, dict]] = {}
    for name, variant in VARIANTS.items():
        tabulate_only = args.cached or (args.only is not None and name not in args.only)
        for seed in args.seeds:
            for attack in ATTACKS:
                folder = tuning_folder(args.dataset, attack, seed, args.runs)
                if not (folder / "attack.json").is_file():
                    print(f"skip {folder}: no artifact yet", flush=True)
                    continue
                stem = name.replace(' ', '_').replace('(', '').replace(')', '')
                cache = folder / "repair_tuning" / f"{stem}{suffix}.json"
                if cache.is_file():  # the name says the setting
                    record = read_json(cache)
                elif tabulate_only or attack not in args.attacks:  # the table holds every cached result
                    continue
                else:
                    record = {"variant": variant, "val_n": args.val_n,
                              **run_one(load_artifact(folder), data, variant, seed, args.val_n)}
                    atomic_write_json(cache, record)
                results.setdefault(name, {})[f"{attack}/seed{seed}"] = record
                print(name, attack, seed, record["after"], round(record["seconds"]), flush=True)
    if not results:  # never overwrite a table with an empty one (a wrong --runs, or run from another folder)
        raise SystemExit(f"no tuning results under {args.runs}: nothing written")
    rows = []
    for name, per_model in results.items():
        for model, r in per_model.items():
            v = r["val"]
            settings = ", ".join(f"{k} {x}" for k, x in VARIANTS[name].items())
            rows.append([name, settings, model, f"{v['acc_before']:.1%} -> {v['acc_after']:.1%}",
                         f"{pct(v.get('asr_before'))} -> {pct(v.get('asr_after'))}",
                         f"{r['rel_norm_before']:.2f} -> {r['rel_norm_after']:.2f}",
                         f"{r['before']['acc']:.2%} -> {r['after']['acc']:.2%}",
                         f"{pct(r['before']['asr'])} -> {pct(r['after']['asr'])}", f"{r['seconds']:.0f}"])
    table = markdown_table(["variant", "settings (other TAC fields: defaults; beta 1 unless said)", "model", "val ACC",
                            "val ASR", "||s_t|| / median", "test ACC (not used to choose)",
                            "test ASR (not used to choose)", "seconds"], rows)
    print(table)
    write_result(("tac_repair_tuning_cpu" if args.dataset == "cifar10" else "tac_repair_tuning_gtsrb") + suffix,
                 {"seeds": args.seeds, "val_n": args.val_n, "variants": VARIANTS, "results": results}, table)


if __name__ == "__main__":
    main()
