"""How much of TAC's repair each tuning model needs: the repaired weights moved back towards the
original ones, and what clean data shows along the way (tuning models only).

Usage: python benchmarks/tac_retreat.py --data-root DIR [--models NAME ...] [--clean] [--config KEY=VALUE ...]
                                        [--name tac_retreat]

Run it from the repository root. Every tuning model of ``benchmarks/tac_residual.py`` (our digits,
CIFAR-10 and GTSRB tuning models and the foreign family's tuning part; ``--clean`` adds the clean
foreign models, repaired by mistake on their cheapest class) is repaired by TAC's default (or
``--config``) with its true target forced. Then, for each a in ``ALPHAS``, the model with weights
theta_before + a (theta_repaired - theta_before) (every floating-point tensor, batch-norm
statistics included; a = 1 is the repair, a = 0 the model handed in) is measured:

* what only the benchmark can see: test accuracy and test ASR with the model's own trigger;
* what a defender can see from clean data: the accuracy on 500 held-out training images, the
  target's rescanned norm over the median (plain look), the share of the clean images of the other
  classes that the repair's own stand-ins (the latent-guided perturbation and the patch, searched
  on the model before the repair) send to the target, and the self-check's patch score (a patch
  searched afresh on this model, target minus the median of up to 9 other classes).

Why: the repair's accuracy cost on the foreign models is what keeps most of them off the removal
bar, while on some of them the backdoor is gone long before the fine-tune ends. The oracle column
(the smallest a whose test ASR is <= 5%) bounds what a rule choosing a from clean data could gain;
the estimate columns show which clean-data signal could make that choice. One JSON per model under
docs/benchmarks/<name>/ (resumable), the table in <name>.md.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from tac_residual import cases

from tacrecon.cli import parse_sets
from tacrecon.defenses.tac import TAC
from tacrecon.io import atomic_write_json, read_json
from tacrecon.metrics import accuracy
from tacrecon.models import as_classifier
from tacrecon.tac.residual import estimate_residual, stamped_share
from tacrecon.tac.stand_in import stand_in_success

from common import DOCS, markdown_table, pct, write_result

ALPHAS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
BAR_ASR, BAR_COST = 0.05, 0.02


def between(before: torch.nn.Module, after: torch.nn.Module, alpha: float) -> torch.nn.Module:
    """A copy of ``after`` whose floating-point state is before + alpha (after - before)."""
    start, end = before.state_dict(), after.state_dict()
    if start.keys() != end.keys():
        raise ValueError("the repaired model's state does not match the original's")
    model = copy.deepcopy(after)
    model.load_state_dict({k: start[k] + alpha * (v - start[k]) if v.is_floating_point() else v for k, v in end.items()})
    return model.eval()


def measure(case: dict, model: torch.nn.Module, tac: TAC) -> dict:
    """The benchmark's and the defender's view of ``model`` (one point of the path)."""
    clean, target = case["clean"], case["target"]
    classifier = as_classifier(model)
    out = {**case["rates"](model), "held": accuracy(model, case["held"]),
           "relative": TAC.from_dict({"repair": False}).fit(model, clean).scores()["relative"][target]}
    if tac.stand_ins_ is not None:
        out["stand_in"] = stand_in_success(classifier, clean, target, tac.stand_ins_[0])
    if tac.patches_ is not None:
        with torch.no_grad():
            out["patch"] = stamped_share(classifier, clean.x[clean.y != target], tac.patches_[0][0],
                                         tac.patches_[1][0], target)
    out["patch_score"] = estimate_residual(classifier, clean, target, tac.check,
                                           torch.Generator().manual_seed(case["seed"])).score
    return out


def run(case: dict, config: dict) -> dict:
    model, seed = case["model"].eval(), case["seed"]
    start = time.perf_counter()
    tac = TAC.from_dict(config, force_target=case["target"]).fit(model, case["clean"], torch.Generator().manual_seed(seed))
    seconds = time.perf_counter() - start
    path = {f"{a:.1f}": measure(case, between(model, tac.model_, a), tac) for a in ALPHAS}
    return {"model": case["name"], "about": case["about"], "target": case["target"], "config": config,
            "repair_seconds": seconds, "path": path}


def oracle(r: dict) -> str | None:
    """The smallest a whose test ASR is within the bar (None: none, or a clean model)."""
    for a, p in r["path"].items():
        if p.get("asr", 1.0) <= BAR_ASR:
            return a
    return None


def row(r: dict) -> list:
    path, start = r["path"], r["path"]["0.0"]
    cost = {a: start["acc"] - p["acc"] for a, p in path.items()}
    cells = [f"{pct(p['asr']) if 'asr' in p else '-'} / {100 * cost[a]:.1f}" for a, p in path.items() if a != "0.0"]
    best = oracle(r)
    at_best = "-" if best is None else f"{best} ({pct(path[best]['asr'])} at {100 * cost[best]:.1f})"

    def trace(key: str, fmt: str) -> str:
        return " ".join(fmt.format(p[key]) if key in p else "-" for p in path.values())

    return [r["model"], r["about"], *cells, at_best, trace("held", "{:.3f}"), trace("relative", "{:.2f}"),
            trace("stand_in", "{:.2f}"), trace("patch", "{:.2f}"), trace("patch_score", "{:+.2f}")]


def bar_count(results: list[dict], pick) -> int:
    """Backdoored models that meet the removal bar at the a that ``pick`` names (or None)."""
    met = 0
    for r in results:
        a = pick(r)
        if a is not None and "asr" in r["path"]["0.0"]:
            p, start = r["path"][a], r["path"]["0.0"]
            met += p["asr"] <= BAR_ASR and start["acc"] - p["acc"] <= BAR_COST
    return met


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE", help="TAC hyperparameters")
    parser.add_argument("--clean", action="store_true", help="also the clean foreign models, repaired by mistake")
    parser.add_argument("--name", default="tac_retreat")
    args = parser.parse_args()
    config = parse_sets(args.config)
    torch.set_num_threads(1)
    folder = DOCS / args.name
    results = []
    for name, make in cases(args.data_root, args.models, args.clean):
        file = folder / f"{name}.json"
        if not file.is_file() or read_json(file).get("config") != config:
            atomic_write_json(file, run(make(), config))
        results.append(read_json(file))
        print(name, oracle(results[-1]), flush=True)
    header = ["model", "backdoor", *[f"a = {a:.1f}: ASR / cost" for a in ALPHAS[1:]], "oracle a (ASR at cost)",
              "held-out ACC", "rescan target / median", "stand-in share", "patch share", "patch score"]
    backdoored = sum("asr" in r["path"]["0.0"] for r in results)
    note = (f"\nCost: test points lost against the model handed in. The last five columns run over a = "
            f"{', '.join(f'{a:.1f}' for a in ALPHAS)}. Removal bar (ASR <= 5% within 2 points) at a = 1 on "
            f"{bar_count(results, lambda r: '1.0')} of {backdoored} backdoored models; at the oracle a on "
            f"{bar_count(results, oracle)}.\n")
    write_result(args.name, {"config": config, "alphas": ALPHAS, "models": [r["model"] for r in results]},
                 markdown_table(header, [row(r) for r in results]) + note)


if __name__ == "__main__":
    main()
