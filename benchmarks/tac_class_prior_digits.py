"""Does TAC's scan mistake a frequent class for a backdoor target? Imbalanced digits, tuning seeds.

Usage: python benchmarks/tac_class_prior_digits.py [--seeds 100 ... 109] [--ratio 0.1]

For each seed, the digits training split is thinned per class to a geometric profile (the most
frequent class keeps all its images, the rarest ``ratio`` of them, the order of the classes drawn
from the seed), as GTSRB's classes range over about 10x. A clean model and a BadNets model (target
drawn from the seed, so it is sometimes rare and sometimes frequent) are trained with the digits
recipe, and TAC scans each one twice: with a clean set drawn like the training split (20% of it,
so it is imbalanced the same way) and with a balanced clean set (the same number of images per
class). Tabulated per model: the Spearman correlation between the norms of the classes that are
not the target and their training counts, and what TAC flags under each candidate score:

* ``shipped``: TAC as shipped (both looks); ``first``: its first look alone;
* ``count``: both looks on norms divided by a robust power law of the clean set's class counts
  (Theil-Sen fit of log norm on log count, which one outlier cannot move), so a class is judged
  against classes of its own frequency; the clean counts stand in for the training counts;
* ``bias``: the same fit on the head's bias (the model's own log-prior), which needs no clean set
  drawn like the training data;
* ``nobias``: TAC with ``bias=False`` (the QP's constraints leave the head's bias out).

Tuning seeds only (100+): the choice read off this table is then checked on the GTSRB tuning
models, never on the reported ones.
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from torch import Tensor

from tacrecon.artifact import evaluate
from tacrecon.attacks import create_attack
from tacrecon.data import Dataset, Split, clean_subset, load_dataset
from tacrecon.defenses.tac import TAC
from tacrecon.models.adapter import as_classifier
from tacrecon.recipes import build_model, default_train_config, model_kwargs
from tacrecon.stats import trend_prior
from tacrecon.tac.config import DetectionConfig
from tacrecon.tac.detect import detect

from common import markdown_table, spearman, write_result


def thinned(data: Dataset, ratio: float, generator: torch.Generator) -> tuple[Dataset, torch.Tensor]:
    """``data`` with its train split thinned to a geometric class profile; returns it and the
    per-class keep fractions (C,)."""
    c = data.num_classes
    order = torch.randperm(c, generator=generator)
    keep = torch.empty(c, dtype=torch.float64)
    keep[order] = ratio ** (torch.arange(c, dtype=torch.float64) / (c - 1))
    picks = []
    for k in range(c):
        idx = torch.nonzero(data.train.y == k).flatten()
        picks.append(idx[torch.randperm(idx.numel(), generator=generator)[:max(2, round(keep[k].item() * idx.numel()))]])
    pick = torch.cat(picks).sort().values
    return Dataset(data.name, data.train.subset(pick), data.test, data.classes, data.mean, data.std), keep


def balanced_subset(train: Split, per_class: int, seed: int) -> Split:
    g = torch.Generator().manual_seed(seed)
    picks = []
    for k in range(int(train.y.max()) + 1):
        idx = torch.nonzero(train.y == k).flatten()
        picks.append(idx[torch.randperm(idx.numel(), generator=g)[:per_class]])
    return train.subset(torch.cat(picks).sort().values)


def corrected(norms: Tensor, x: Tensor) -> Tensor:
    """``norms`` (C,) over their Theil-Sen power law in ``x`` (C,) (:func:`trend_prior`)."""
    return norms / trend_prior(norms, x)


def verdicts(tac: TAC, plain: TAC, model: torch.nn.Module, clean: Split) -> dict[str, Any]:
    """The classes flagged by TAC as shipped (both looks), by its first look alone, by both looks
    on norms corrected for the class counts or the head's bias, and by the QP without the bias."""
    scan = tac.scan(model, clean)
    norms, robust_norms = scan.plain.qp.norms, scan.robust_look.qp.norms
    counts = torch.bincount(clean.y.cpu(), minlength=len(norms)).double()
    head = as_classifier(model).get_classifier()
    bias = head.bias.detach().double().cpu() if head.bias is not None else torch.zeros(len(norms), dtype=torch.float64)
    out: dict[str, Any] = {"shipped": scan.flagged, "first": scan.plain.detection.flagged,
                           "norms": norms.tolist(), "second_norms": robust_norms.tolist(),
                           "clean_counts": counts.tolist(), "head_bias": bias.tolist()}
    for name, x in (("count", counts.clamp_min(1).log()), ("bias", bias)):
        first = detect(corrected(norms, x), tac.detection).flagged
        second = detect(corrected(robust_norms, x),
                        DetectionConfig(threshold=tac.robust.threshold, max_relative=tac.robust.max_relative,
                                        high_relative=0.0)).flagged
        out[name] = first + [k for k in second if k not in first]
    out["nobias"] = plain.scan(model, clean).flagged
    return out


SCORES = ("shipped", "first", "count", "bias", "nobias")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(100, 110)))
    parser.add_argument("--ratio", type=float, default=0.1, help="rarest class's share of its images")
    args = parser.parse_args()
    start = time.perf_counter()
    base = load_dataset("digits")
    tac, no_bias = TAC(), TAC.from_dict({"bias": False})
    records, rows = [], []
    for seed in args.seeds:
        g = torch.Generator().manual_seed(seed)
        data, keep = thinned(base, args.ratio, g)
        train_counts = torch.bincount(data.train.y).double()
        target = int(torch.randint(data.num_classes, (1,), generator=g))
        for attack_name in ("none", "badnets"):
            attack = create_attack(attack_name, **({"target": target} if attack_name != "none" else {}))
            gen = torch.Generator().manual_seed(seed)
            attack.setup(data, gen)
            model = build_model("resnet_small", model_kwargs("resnet_small", data), seed)
            index = attack.train(model, data.train, default_train_config("digits", progress=False), gen)
            model.eval()
            rates = evaluate(model, attack, data)
            t = None if attack_name == "none" else target
            for clean_name, clean in (("drawn", clean_subset(data.train, 0.2, None, seed, index)),
                                      ("balanced", balanced_subset(data.train, 8, seed))):
                v = verdicts(tac, no_bias, model, clean)
                others = [k for k in range(data.num_classes) if k != t]
                rho = spearman([v["norms"][k] for k in others], train_counts[others].tolist())
                records.append({"seed": seed, "attack": attack_name, "target": t, "clean": clean_name,
                                "train_counts": train_counts.tolist(), "spearman": rho, **rates, **v})
                cells = []
                for name in SCORES:
                    flagged = v[name]
                    wrong = [k for k in flagged if k != t]
                    cells.append(("found" if t in flagged else "missed" if t is not None else "clean")
                                 + (f", wrong {wrong}" if wrong else ""))
                asr = "" if rates["asr"] is None else f", ASR {100 * rates['asr']:.0f}%"
                rows.append([seed, f"{attack_name} (ACC {100 * rates['acc']:.0f}%{asr})",
                             "-" if t is None else f"{t} ({int(train_counts[t])} imgs)",
                             clean_name, f"{rho:+.2f}", *cells])
                print(rows[-1], flush=True)
    tally = []
    for clean_name in ("drawn", "balanced"):
        for name in SCORES:
            sub = [r for r in records if r["clean"] == clean_name]
            fp = sum(any(k != r["target"] for k in r[name]) for r in sub)
            found = sum(r["target"] in r[name] for r in sub if r["target"] is not None)
            tally.append([clean_name, name, f"{found}/{sum(r['target'] is not None for r in sub)}",
                          f"{fp}/{len(sub)}"])
    table = (markdown_table(["seed", "attack", "target (train images)", "clean set", "Spearman(norm, count)",
                             *SCORES], rows)
             + "\n\n" + markdown_table(["clean set", "score", "targets found", "models with a wrong class"], tally))
    print(table)
    write_result("tac_class_prior_digits", {"seeds": args.seeds, "ratio": args.ratio, "models": records,
                                            "seconds": time.perf_counter() - start}, table)


if __name__ == "__main__":
    main()
