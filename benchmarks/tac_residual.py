"""What a defender can see of the backdoor left after TAC's repair, against the true ASR (tuning models).

Usage: python benchmarks/tac_residual.py --data-root DIR [--models NAME ...] [--estimates rescan patch stand-in]
                                         [--eps 0.05] [--steps 40] [--config KEY=VALUE ...] [--clean]
                                         [--name tac_residual]

Run it from the repository root (the tuning artifacts' paths are relative to it).

Every backdoored tuning model (our digits BadNets models of seeds 100-102, trained here on first
use into docs/results/tuning/digits, our CIFAR-10 / GTSRB tuning artifacts under
docs/results/tuning, and the foreign family of benchmarks/foreign/models, trained without
tacrecon code) is repaired
by TAC's default (or ``--config``) with its true target forced (so detection does not interfere), and the repaired
model is then examined with clean data only, by candidate estimates of the residual backdoor:

* ``rescan``: the target's norm over the median norm when the repaired model is scanned again
  (plain look); near or above 1 once the shortcut to the target is gone.
* ``stand-in``: a stand-in trigger searched again on the repaired model for every class k (the
  L-inf ``--eps`` perturbation whose latent change reproduces the rescan's s_k,
  :func:`tacrecon.tac.stand_in.search_stand_in`, ``--steps`` steps), and the share of the clean
  images outside k it sends to k; the estimate is the target's share minus the median share over
  the other classes.
* ``patch``: the repair's own self-check (:func:`tacrecon.tac.residual.estimate_residual` with
  TAC's ``check`` settings): the best small masked patch for the target and for up to 9 other
  classes; the estimate is the target's success minus the other classes' median.

``--part holdout`` repairs the foreign family's held-out part instead (benchmarks/foreign/README.md):
read once per TAC revision, never tuned on. ``--clean`` adds the clean foreign models, repaired by mistake on
the class their scan ranks cheapest: what a false alarm costs in accuracy.

The true residual is the ASR on the test split with the model's own trigger; accuracy is reported
on the test split and on 500 held-out training images (what a defender can measure). One JSON per
model under docs/benchmarks/<name>/ (a rerun computes only the estimates it lacks, repairing the
model again: the repair is deterministic on the same machine and threads); the table and the rank
correlations of each estimate with the true ASR in <name>.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from scipy.stats import spearmanr

from tacrecon.artifact import evaluate, load_artifact, run_attack
from tacrecon.cli import parse_sets
from tacrecon.data import clean_subset, load_dataset
from tacrecon.defenses.tac import TAC
from tacrecon.io import atomic_write_json, read_json
from tacrecon.loading import load_any
from tacrecon.metrics import accuracy
from tacrecon.models import as_classifier
from tacrecon.tac.residual import estimate_residual
from tacrecon.tac.stand_in import search_stand_in, stand_in_success

from common import DOCS, TUNING, held_out, markdown_table, pct, write_result

FAMILY = Path(__file__).resolve().parent / "foreign"
sys.path.insert(0, str(FAMILY))  # the family's trigger code, to measure ASR: it shares no code with tacrecon
import plan  # noqa: E402
import triggers  # noqa: E402

OWN = [("cifar10", "resnet_small", a, 100) for a in ("badnets", "blended", "wanet", "sig", "lira")] + \
      [("cifar10", "resnet_small", "blended", 101)] + [("gtsrb", None, a, 100) for a in ("badnets", "blended")]


def foreign_case(folder: Path, root: str | None, datasets: dict) -> dict:
    """The model, its clean set and held-out images, and its ASR function, for a foreign model."""
    meta = read_json(folder / "model.json")
    data = datasets.setdefault(meta["dataset"], load_dataset(meta["dataset"], root=root))
    model = load_any(f"{FAMILY / 'nets.py'}:{meta['factory']}", weights=folder / "weights.safetensors",
                     num_classes=data.num_classes, dataset=meta["dataset"]).model
    if meta["clean"]:
        return clean_foreign_case(folder.name, model, data, meta["seed"])
    poisoned = triggers.poison_indices(data.train.y.cpu(), meta["target"], meta["rate"], meta["seed"])
    clean = clean_subset(data.train, 0.05, None, meta["seed"], poisoned)
    keep = data.test.y != meta["target"]
    stamped = triggers.apply_in_chunks(triggers.TEST[meta["trigger"]], data.test.x[keep].cpu(), meta["trigger_seed"])

    def rates(m: torch.nn.Module) -> dict:
        from tacrecon.metrics import predict
        return {"acc": accuracy(m, data.test), "asr": float((predict(m, stamped) == meta["target"]).float().mean())}

    return {"name": folder.name, "model": model, "clean": clean, "seed": meta["seed"], "target": meta["target"],
            "held": held_out(data.train, len(clean), 500, meta["seed"], poisoned), "rates": rates,
            "about": f"{meta['trigger']} at {meta['rate']:.0%}"}


def clean_foreign_case(name: str, model: torch.nn.Module, data, seed: int) -> dict:
    """A clean foreign model, repaired by mistake: its target is the class its scan ranks
    cheapest (the class TAC would repair if it flagged one); it has no ASR."""
    clean = clean_subset(data.train, 0.05, None, seed, torch.empty(0, dtype=torch.long))
    relative = TAC.from_dict({"repair": False}).fit(model, clean).scores()["relative"]
    target = min(range(len(relative)), key=lambda k: relative[k])
    return {"name": name, "model": model, "clean": clean, "seed": seed, "target": target,
            "held": held_out(data.train, len(clean), 500, seed, torch.empty(0, dtype=torch.long)),
            "rates": lambda m: {"acc": accuracy(m, data.test)}, "about": "clean (repaired by mistake)"}


def digits_case(seed: int, datasets: dict) -> dict:
    """One of our digits BadNets tuning models (trained on first use, as the demo trains its own)."""
    folder = TUNING / "digits" / "badnets" / f"seed{seed}"
    if not (folder / "attack.json").is_file():
        run_attack("badnets", "digits", "resnet_small", folder, seed=seed, train={"progress": False})
    art = load_artifact(folder)
    data = datasets.setdefault("digits", load_dataset("digits"))
    clean = clean_subset(data.train, 0.2, None, seed, art.poison_index)
    return {"name": f"own-digits-badnets-s{seed}", "model": art.model, "clean": clean, "seed": seed,
            "target": art.attack.target, "held": held_out(data.train, len(clean), 200, seed, art.poison_index),
            "rates": lambda m: {k: v for k, v in evaluate(m, art.attack, data).items() if k != "ra"},
            "about": f"badnets at {art.attack.rate:.0%}"}


def own_case(dataset: str, arch: str | None, attack: str, seed: int, root: str | None, datasets: dict) -> dict:
    """The same for one of our own tuning artifacts."""
    folder = (TUNING / "artifacts" / dataset / arch / attack / f"seed{seed}" if arch
              else TUNING / dataset / attack / f"seed{seed}")
    art = load_artifact(folder)
    data = datasets.setdefault(dataset, load_dataset(dataset, root=root))
    clean = clean_subset(data.train, 0.05, None, seed, art.poison_index)
    return {"name": f"own-{dataset}-{attack}-s{seed}", "model": art.model, "clean": clean, "seed": seed,
            "target": art.attack.target, "held": held_out(data.train, len(clean), 500, seed, art.poison_index),
            "rates": lambda m: {k: v for k, v in evaluate(m, art.attack, data).items() if k != "ra"},
            "about": f"{attack} at {art.attack.rate:.0%}" if hasattr(art.attack, "rate") else attack}


def stand_in_shares(model: torch.nn.Module, clean, scan, eps: float, steps: int, seed: int) -> list[float]:
    """Per class k, the share of clean images outside k that a stand-in searched for k sends to k."""
    classifier = as_classifier(model)
    shares = []
    for k in range(classifier.num_classes):
        shift = scan.shifts[k].float()
        if not bool(torch.isfinite(shift).all()) or not bool((clean.y != k).any()):
            shares.append(0.0)
            continue
        delta = search_stand_in(classifier, clean, k, shift, eps, steps, 64, 0.05, torch.Generator().manual_seed(seed))
        with torch.no_grad():
            shares.append(stand_in_success(classifier, clean, k, delta))
    return shares


def run(case: dict, estimates: list[str], eps: float, steps: int, config: dict, done: dict | None) -> dict:
    """Repair ``case``'s model with its target forced and add the ``estimates`` that ``done`` (an
    earlier result of the same setting, or None) lacks."""
    model, clean, target, seed = case["model"], case["clean"], case["target"], case["seed"]
    start = time.perf_counter()
    tac = TAC.from_dict(config, force_target=target).fit(model, clean, torch.Generator().manual_seed(seed))
    seconds, after = time.perf_counter() - start, case["rates"](tac.model_)
    if done is not None and abs(after.get("asr", 0) - done["after"].get("asr", 0)) > 1e-6:
        # dropout draws from torch's global generator, so a process that repaired other models
        # first can come out differently: the earlier estimates belong to another model, start over
        print(f"{case['name']}: the repair came out differently from the stored one; starting over", flush=True)
        done = None
    out = done or {"model": case["name"], "about": case["about"], "target": target, "eps": eps, "steps": steps,
                   "config": config, "before": case["rates"](model), "after": after,
                   "held_acc": {"before": accuracy(model, case["held"]), "after": accuracy(tac.model_, case["held"])},
                   "repair_seconds": seconds,
                   "check": {k: tac.stats_[k] for k in ("rounds", "held_out", "held_out_acc", "reverted", "residual")
                             if k in tac.stats_}}
    rescan = (TAC.from_dict({"repair": False}).fit(tac.model_, clean)  # the scan both estimates below read
              if {"rescan", "stand-in"} & set(estimates) else None)
    if rescan is not None and "rescan" in estimates and "rescan_relative" not in out:
        out.update(rescan_relative=rescan.scores()["relative"][target], rescan_flagged=rescan.targets_)
    if rescan is not None and "stand-in" in estimates and "stand_in_residual" not in out:
        start = time.perf_counter()
        shares = stand_in_shares(tac.model_, clean, rescan.scan_, eps, steps, seed)
        others = sorted(s for k, s in enumerate(shares) if k != target)
        out.update(stand_in_shares=shares, stand_in_residual=shares[target] - others[len(others) // 2],
                   estimate_seconds=time.perf_counter() - start)
    if "patch" in estimates and "patch" not in out:
        start = time.perf_counter()
        residual = estimate_residual(tac.model_, clean, target, tac.check, torch.Generator().manual_seed(seed))
        out["patch"] = {**residual.record(), "seconds": time.perf_counter() - start, "check": tac.check.to_dict()}
    return out


def cases(root: str | None, wanted: list[str] | None, clean_too: bool, part: str = "tuning"):
    datasets: dict = {}
    if part != "tuning":  # one of the foreign family's held-out parts only
        yield from foreign_cases(plan.PARTS[part][2], root, wanted, clean_too, datasets)
        return
    for seed in (100, 101, 102):
        if not wanted or f"own-digits-badnets-s{seed}" in wanted:
            yield f"own-digits-badnets-s{seed}", lambda s=seed: digits_case(s, datasets)
    for dataset, arch, attack, seed in OWN:
        name = f"own-{dataset}-{attack}-s{seed}"
        if not wanted or name in wanted:
            yield name, lambda d=dataset, a=arch, t=attack, s=seed: own_case(d, a, t, s, root, datasets)
    yield from foreign_cases(plan.MODELS, root, wanted, clean_too, datasets)


def foreign_cases(models: Path, root: str | None, wanted: list[str] | None, clean_too: bool, datasets: dict):
    for folder in sorted(p for p in models.iterdir() if (p / "model.json").is_file()):
        if (clean_too or not read_json(folder / "model.json")["clean"]) and (not wanted or folder.name in wanted):
            yield folder.name, lambda f=folder: foreign_case(f, root, datasets)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--estimates", nargs="+", default=["rescan", "patch"], choices=["rescan", "patch", "stand-in"])
    parser.add_argument("--eps", type=float, default=0.05)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE", help="TAC hyperparameters")
    parser.add_argument("--clean", action="store_true", help="also repair the clean foreign models, by mistake")
    parser.add_argument("--part", choices=sorted(plan.PARTS), default="tuning",
                        help="holdout, holdout2: one of the foreign family's held-out parts only")
    parser.add_argument("--name", default="tac_residual", help="result name (a folder of per-model JSON and a table)")
    args = parser.parse_args()
    config = parse_sets(args.config)
    torch.set_num_threads(1)
    folder = DOCS / args.name
    results = []
    for name, make in cases(args.data_root, args.models, args.clean, args.part):
        path = folder / f"{name}.json"
        done = read_json(path) if path.is_file() else None
        if done is not None and tuple(done.get(k, {}) for k in ("eps", "steps", "config")) != (args.eps, args.steps, config):
            done = None  # another setting: start over
        wanted = {"rescan": "rescan_relative", "stand-in": "stand_in_residual", "patch": "patch"}
        if done is None or any(wanted[e] not in done for e in args.estimates):
            atomic_write_json(path, run(make(), args.estimates, args.eps, args.steps, config, done))
        results.append(read_json(path))
        print(name, results[-1]["after"], results[-1].get("patch", {}).get("score"), flush=True)
    rows = [[r["model"], r["about"], r["target"], change(r, "asr"),
             f"{pct(r['before']['acc'])} -> {pct(r['after']['acc'])}",
             f"{pct(r['held_acc']['before'])} -> {pct(r['held_acc']['after'])}", cell(r, "rescan_relative", "{:.2f}"),
             cell(r, "stand_in_residual", "{:+.3f}"), patch_cell(r), rounds_cell(r), f"{r['repair_seconds']:.0f}"]
            for r in results]
    table = markdown_table(["model", "backdoor", "target", "ASR (test)", "ACC (test)", "ACC (held out)",
                            "rescan: target / median", "stand-in: target - median",
                            "patch: target - median (target, s)", "self-check rounds: scores", "repair s"], rows)
    rho = {name: correlation(results, key) for name, key in
           (("rescan", lambda r: -r["rescan_relative"] if "rescan_relative" in r else None),
            ("stand-in", lambda r: r.get("stand_in_residual")),
            ("patch", lambda r: r["patch"]["score"] if "patch" in r else None))}
    note = "\nRank correlation of each estimate with the true ASR after the repair (Spearman): %s.\n" % "; ".join(
        f"{k} {v[0]:+.2f} (p = {v[1]:.2g}, n = {v[2]})" for k, v in rho.items() if v[2] > 2)
    write_result(args.name, {"eps": args.eps, "steps": args.steps, "config": config,
                             "models": [r["model"] for r in results],
                             "spearman": {k: {"rho": v[0], "p": v[1], "n": v[2]} for k, v in rho.items()}}, table + note)


def change(r: dict, key: str) -> str:
    return f"{pct(r['before'][key])} -> {pct(r['after'][key])}" if key in r["after"] else "-"


def cell(r: dict, key: str, fmt: str) -> str:
    return fmt.format(r[key]) if key in r else "-"


def patch_cell(r: dict) -> str:
    p = r.get("patch")
    return f"{p['score']:+.2f} ({p['success']:.0%}, {p['seconds']:.0f})" if p else "-"


def rounds_cell(r: dict) -> str:
    check = r.get("check") or {}
    if not check.get("residual"):
        return "-"
    return f"{check['rounds']}: " + " ".join(f"{rs[str(r['target'])]['score']:+.2f}" for rs in check["residual"])


def correlation(results: list[dict], estimate) -> tuple[float, float, int]:
    """(Spearman's rho, its p-value, n) of ``estimate`` against the true ASR over the results that have it."""
    pairs = [(estimate(r), r["after"]["asr"]) for r in results if estimate(r) is not None and "asr" in r["after"]]
    if len(pairs) < 3:
        return float("nan"), float("nan"), len(pairs)
    test = spearmanr([a for a, _ in pairs], [b for _, b in pairs])
    return float(test.statistic), float(test.pvalue), len(pairs)


if __name__ == "__main__":
    main()
