"""Choose a second look for TAC's test on tuning models: the robust QP (quantile q) and its threshold.

Usage: python benchmarks/tac_quantile_tuning.py [--q 0.99 0.95 0.9 0.8] [--digits-seeds 100 ... 109]
           [--digits-attacks none badnets blended wanet lira] [--runs runs/tuning]
           [--tuning docs/results/tuning/artifacts] [--data-root DIR]

Every model here is a tuning model (seeds 100+): the digits ones are trained (or reused) under
``--runs`` with the digits recipe, the CIFAR-10 ones are the tuning grid's artifacts
(configs/tac_tuning_cpu.yaml). For each model and each q the latent QP is solved with the lower
q-quantile of the margins instead of their max (each constraint asks a share q of the clean
samples, not all of them, to reach k); its norms are read like the plain ones: MAD anomaly index
and norm over the median.

The *null* is every class that is not a backdoor target: all classes of the clean models and the
other classes of the backdoored ones. For each q and dataset the table gives the null's largest
index and smallest relative norm, then each attack's target (index / relative; the weakest over
seeds for digits). A threshold for q is read off the null (its largest index plus a margin); the
reported models are never looked at here.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tacrecon.artifact import load_artifact, run_attack
from tacrecon.data import clean_subset, load_dataset
from tacrecon.defenses.tac import TAC
from tacrecon.models import as_classifier, latents_of
from tacrecon.qp import solve_latent_qp
from tacrecon.stats import anomaly_index, relative_scores

from common import markdown_table, write_result

CLEAN_FRACTION = {"digits": 0.2, "cifar10": 0.05}  # the scan's clean set in the tuning scripts and the grid


def model_scores(folder: Path, data, seed: int, qs: list[float]) -> dict:
    """The plain and robust norms of one artifact: {q: {"index": (C,), "relative": (C,)}} (q 1: the max)."""
    art = load_artifact(folder)
    clean = clean_subset(data.train, CLEAN_FRACTION[data.name], None, seed, art.poison_index)
    model = as_classifier(art.model)
    head = model.get_classifier()
    z = latents_of(model, clean.x).double()
    w, b = head.weight.detach().double(), head.bias.detach().double()
    out = {"dataset": data.name, "attack": art.attack.name, "seed": seed,
           "target": art.attack.target if art.attack.name != "none" else None,
           "asr": art.record.get("asr"), "acc": art.record.get("acc"), "q": {}}
    for q in [1.0] + qs:
        norms = solve_latent_qp(z, w, b, quantile=None if q >= 1 else q).norms
        out["q"][str(q)] = {"norms": norms.tolist(), "index": anomaly_index(norms).tolist(),
                            "relative": relative_scores(norms).tolist()}
    return out


def digits_models(args: argparse.Namespace) -> list[tuple[Path, int]]:
    """Train (or reuse) the digits tuning artifacts."""
    jobs = []
    for seed in args.digits_seeds:
        for attack in args.digits_attacks:
            out = args.runs / "digits" / attack / f"seed{seed}"
            run_attack(attack, "digits", "resnet_small", out, seed=seed, train={"progress": False})
            jobs.append((out, seed))
    return jobs


def summary(results: list[dict], dataset: str, q: str) -> list:
    """One table row: the null's extremes and each attack's weakest target for ``q`` on ``dataset``."""
    mine = [r for r in results if r["dataset"] == dataset]
    null_index, null_rel, targets = [], [], {}
    for r in mine:
        s = r["q"][q]
        for k, (i, rel) in enumerate(zip(s["index"], s["relative"])):
            if k == r["target"]:
                targets.setdefault(r["attack"], []).append((i, rel))
            else:
                null_index.append(i)
                null_rel.append(rel)
    row = [dataset, q, len(mine), f"{max(null_index):.2f} / {min(null_rel):.3f}"]
    for attack in sorted(targets):
        index, rel = min(targets[attack])
        row.append(f"{attack} {index:.1f} / {rel:.2f} ({len(targets[attack])})")
    return row


def plain_flags(r: dict) -> list[int]:
    """The classes TAC's plain rule flags on the small side (its default index threshold and bound)."""
    s, rule = r["q"]["1.0"], TAC().detection
    return [k for k, (i, rel) in enumerate(zip(s["index"], s["relative"]))
            if i > rule.threshold and rel < rule.max_relative]


def rule_row(results: list[dict], q: str, threshold: float, max_relative: float) -> list:
    """One candidate second look: the models it makes wrong (it adds a class that is not the target)
    and, per dataset and attack, the targets found by the plain rule or by it."""
    wrong = {"digits": 0, "cifar10": 0}
    found: dict[str, list[int]] = {}
    for r in results:
        s, t, plain = r["q"][q], r["target"], plain_flags(r)
        second = [k for k, (i, rel) in enumerate(zip(s["index"], s["relative"])) if i > threshold and rel < max_relative]
        wrong[r["dataset"]] += any(k != t and k not in plain for k in second)
        if t is not None:
            hits = found.setdefault(f"{r['dataset']} {r['attack']}", [0, 0])
            hits[0] += t in plain or t in second
            hits[1] += 1
    total = {d: sum(r["dataset"] == d for r in results) for d in wrong}
    return ([q, threshold, max_relative, f"{wrong['digits']}/{total['digits']}", f"{wrong['cifar10']}/{total['cifar10']}"]
            + [f"{k} {v[0]}/{v[1]}" for k, v in sorted(found.items())])


def padded_table(header: list[str], rows: list[list]) -> str:
    width = max(len(r) for r in rows)
    return markdown_table(header + [""] * (width - len(header)), [r + [""] * (width - len(r)) for r in rows])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--q", type=float, nargs="+", default=[0.99, 0.95, 0.9, 0.8])
    parser.add_argument("--digits-seeds", type=int, nargs="*", default=list(range(100, 110)))
    parser.add_argument("--digits-attacks", nargs="+", default=["none", "badnets", "blended", "wanet", "lira"])
    parser.add_argument("--runs", type=Path, default=Path("runs/tuning"))
    parser.add_argument("--tuning", type=Path, default=Path("docs/results/tuning/artifacts"))
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args()
    results = []
    digits = load_dataset("digits")
    for folder, seed in digits_models(args):
        results.append(model_scores(folder, digits, seed, args.q))
    cifar = load_dataset("cifar10", root=args.data_root)
    for folder in sorted((args.tuning / "cifar10" / "resnet_small").glob("*/seed*")):
        if (folder / "attack.json").is_file():
            results.append(model_scores(folder, cifar, int(folder.name[4:]), args.q))
            print(folder, flush=True)
    qs = [str(q) for q in [1.0] + args.q]
    rows = [summary(results, d, q) for d in ("digits", "cifar10") for q in qs
            if any(r["dataset"] == d for r in results)]
    table = padded_table(["dataset", "q", "models", "null: max index / min relative",
                          "targets: weakest index / relative (models)"], rows)
    note = ("\nThe null: every class that is not a backdoor target (all classes of the clean models, the other "
            "classes of the backdoored ones). A target is named with the smallest index it reached over the seeds "
            "and that model's relative norm. q 1.0 is the plain QP (the max over samples).\n\n")
    rules = [rule_row(results, str(q), t, m) for q in args.q for t in (2.0, 2.5, 3.0, 4.0) for m in (0.8, 0.85, 0.9)]
    table += note + padded_table(["q", "index >", "relative <", "digits: models made wrong",
                                  "cifar10: models made wrong", "targets found (plain rule or second look)"], rules)
    note = ("\nA candidate second look flags a class whose robust norm has anomaly index > the threshold and lies "
            "below the relative bound; a model is made wrong when it adds a class that is not the target.\n")
    print(table + note)
    write_result("tac_quantile_tuning", {"q": args.q, "results": results}, table + note)


if __name__ == "__main__":
    main()
