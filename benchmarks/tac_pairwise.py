"""The pairwise look of TAC's scan on the tuning models: clean false positives, all-to-all and source-specific detection.

Usage: OMP_NUM_THREADS=1 python benchmarks/tac_pairwise.py --data-root DIR [--set key=value ...]

Models, all tuning models (seeds 100+):

* the 34 of benchmarks/foreign/models (12 clean, 22 all-to-one) and our CIFAR-10 / GTSRB tuning
  artifacts, loaded as benchmarks/tac_detection_foreign.py loads them, with the protocol's clean
  set (5% of the training split drawn with the model's seed outside its poisoned images);
* our digits BadNets models of seeds 100-102 (all-to-one, docs/results/tuning/digits);
* digits models trained here on first use into docs/results/tuning/digits-pairwise: ``none``,
  ``badnets`` and ``blended`` with ``label_mode`` all2all (y -> y + 1), and ``tact``
  (source-specific, one source per seed, ``rate`` and ``cover_rate`` 0.02: 29 poisoned images,
  a fifth of the source class; TaCT's CIFAR-10 0.003 would poison 4 digits images), seeds 100-102.
  Digits clean sets are 20% of the training split (the project's digits setting: 5% leaves 7
  samples a class).

Per model: the pairwise look at the given settings (``--set`` overrides PairwiseConfig fields),
its spread and flagged pairs, and the default scan's flagged classes for comparison. A model
counts as detected when a flagged pair is one of its backdoor's pairs (all-to-one: any pair into
the target, its column), or, all-to-all, when the spread test fires; a flagged pair outside them
is a wrong pair. Also the timing of the
pairwise QPs on synthetic latents with 250 samples a class (C = 10 and C = 43, d = 512).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
from tac_detection_foreign import jobs, load

from tacrecon.artifact import load_artifact, run_attack
from tacrecon.cli import parse_sets
from tacrecon.data import clean_subset, load_dataset
from tacrecon.models import latents_of
from tacrecon.tac.detect import scan
from tacrecon.tac.pairwise import PairwiseConfig, pairwise_look, pairwise_norms

from common import TUNING, markdown_table, write_result

DIGITS = TUNING / "digits-pairwise"
TACT = {100: ((1,), (5, 7), 0), 101: ((4,), (2, 6), 9), 102: ((7,), (0, 5), 3)}  # seed: sources, covers, target
SWEEP = [0.2, 0.22, 0.24, 0.26, 0.28, 0.3, 0.35, 0.4]  # spread thresholds shown
PAIR_SWEEP = [0.4, 0.45, 0.5, 0.53, 0.6, 0.7]


def digits_config(attack: str, seed: int) -> dict[str, Any]:
    """The attack config of one digits model of this benchmark."""
    if attack == "tact":
        sources, covers, target = TACT[seed]
        return {"source_classes": sources, "cover_classes": covers, "target": target, "rate": 0.02,
                "cover_rate": 0.02}
    return {"label_mode": "all2all"} if attack != "none" else {}


def digits_models() -> Iterator[tuple[str, Path, dict[str, Any] | None]]:
    """(name, folder, config to train it with; None: an existing artifact) of the digits models."""
    for seed in (100, 101, 102):
        yield f"ours-digits-badnets-seed{seed}", TUNING / "digits" / "badnets" / f"seed{seed}", None
        for attack in ("none", "badnets", "blended", "tact"):
            sub = f"{attack}-all2all" if attack in ("badnets", "blended") else attack
            yield f"ours-digits-{sub}-seed{seed}", DIGITS / sub / f"seed{seed}", digits_config(attack, seed)


def truth(art) -> dict[str, Any]:
    """The backdoor's mapping from an attack artifact: its kind and its (source, target) pairs
    (all-to-one: its target, whose column :func:`backdoor_pairs` gives)."""
    num = art.model.num_classes
    if art.attack.name == "none":
        return {"kind": "clean", "pairs": []}
    if art.attack.name == "tact":
        return {"kind": "source-specific", "pairs": [[s, art.attack.target] for s in art.attack.source_classes]}
    backdoors = art.attack.backdoors()
    if any(b.target is None for b in backdoors):
        return {"kind": "all-to-all", "pairs": [[s, (s + 1) % num] for s in range(num)]}
    if len(backdoors) > 1:
        return {"kind": "several", "pairs": [[s, b.target] for b in backdoors for s in range(num) if s != b.target]}
    return {"kind": "all-to-one", "target": backdoors[0].target}


def digits_case(name: str, folder: Path, config: dict | None, data) -> tuple:
    """(model, clean split, info) of a digits model, trained on first use."""
    seed = int(folder.name.removeprefix("seed"))
    if config is not None and not (folder / "attack.json").is_file():
        run_attack(folder.parent.name.removesuffix("-all2all"), "digits", "resnet_small", folder, seed=seed,
                   config=config, train={"progress": False})
    art = load_artifact(folder)
    clean = clean_subset(data.train, 0.2, None, seed, art.poison_index)
    info = {"dataset": "digits", "arch": "resnet_small", "trigger": art.attack.name, "seed": seed,
            "asr": art.record.get("asr"), **truth(art)}
    if art.attack.name != "none":
        info["trigger_shift"] = trigger_shifts(art.model.eval(), art.attack, clean)
    return art.model.eval(), clean, info


def trigger_shifts(model, attack, clean) -> list[float]:
    """Per class s: ||mean over the clean samples of s of z(trigger(x)) - z(x)||, the latent shift
    the real trigger makes (C,), to set beside the pair norms n[s, t]."""
    delta = latents_of(model, attack.apply(clean.x)) - latents_of(model, clean.x)
    return [float(delta[clean.y == s].mean(0).norm()) for s in range(model.num_classes)]


def cases(root: str | None) -> Iterator[tuple[str, tuple]]:
    """(name, (model, clean, info)) of every tuning model, loaded one at a time."""
    cache: dict = {}
    for name, kind, folder in jobs():
        model, clean, info = load(kind, folder, root, cache)
        info["kind"] = "clean" if info["target"] is None else "all-to-one"
        yield name, (model, clean, info)
    digits = load_dataset("digits")
    for name, folder, config in digits_models():
        yield name, digits_case(name, folder, config, digits)


def backdoor_pairs(info: dict, num_classes: int) -> list[list[int]]:
    """The (source, target) pairs the backdoor maps: an all-to-one target's whole column."""
    if info["kind"] == "all-to-one":
        return [[s, info["target"]] for s in range(num_classes) if s != info["target"]]
    return info.get("pairs", [])


def verdict(info: dict, flagged: list[list[int]], fired: bool, num_classes: int) -> tuple[bool, bool]:
    """(detected, a wrong pair flagged): detected when a flagged pair is one of the backdoor's
    (for all-to-all, also when the spread test fired)."""
    true = backdoor_pairs(info, num_classes)
    right = any(p in true for p in flagged) or (info["kind"] == "all-to-all" and fired)
    return right, any(p not in true for p in flagged)


def run(name: str, model, clean, info: dict, cfg: PairwiseConfig) -> dict:
    """The look and the scan on one model; ``seconds`` is the look's given the latents (the QPs
    and the tests), ``latent_seconds`` the forward pass the scan shares with it."""
    start = time.perf_counter()
    z = latents_of(model, clean.x)
    latent_seconds = time.perf_counter() - start
    look = pairwise_look(model, clean, cfg, latents=z)
    scores = look.scores
    true = [float(scores[s, t]) for s, t in backdoor_pairs(info, model.num_classes)]
    flagged = [list(p) for p in look.flagged]
    if "trigger_shift" in info:  # how far the real trigger moves a source, over the pair's minimal shift
        info["trigger_over_pair_norm"] = float(np.median([info["trigger_shift"][s] / float(look.norms[s, t])
                                                          for s, t in backdoor_pairs(info, model.num_classes)]))
    right, wrong = verdict(info, flagged, look.all_to_all, model.num_classes)
    return {"model": name, "info": info, "classes": model.num_classes, "spread": look.spread,
            "max_score": float(scores.nan_to_num(-float("inf")).max()), "true_pair_scores": true,
            "all_to_all": look.all_to_all, "flagged": flagged, "detected": right, "wrong_pair": wrong,
            "scan_flagged": scan(model, clean).flagged, "seconds": look.seconds, "latent_seconds": latent_seconds,
            "counts": torch.bincount(clean.y.cpu(), minlength=model.num_classes).tolist(),
            "norms": [[None if not np.isfinite(v) else round(v, 5) for v in row] for row in look.norms.tolist()]}


def timing(num_classes: int, per_class: int = 250, dim: int = 512, seed: int = 0) -> float:
    """Seconds of :func:`pairwise_norms` on synthetic latents (per_class samples of each class)."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(num_classes, dim, generator=g) / dim ** 0.5
    labels = torch.arange(num_classes).repeat_interleave(per_class)
    latents = torch.relu(torch.randn(len(labels), dim, generator=g) + 2 * weight[labels])
    start = time.perf_counter()
    pairwise_norms(latents, labels, weight, torch.zeros(num_classes))
    return time.perf_counter() - start


def group(r: dict) -> str:
    kind = r["info"]["kind"]
    if kind in ("clean", "all-to-one"):
        return f"{kind} ({'foreign' if not r['model'].startswith('ours-') else 'ours'})"
    return f"{kind} (digits)"


def sweep_rows(results: list[dict]) -> list[list]:
    """Per spread threshold: clean models flagged by it, all-to-all models detected, all-to-one seen."""
    rows = []
    for thr in SWEEP:
        cells = []
        for kind in ("clean", "all-to-all", "all-to-one"):
            members = [r for r in results if r["info"]["kind"] == kind]
            cells.append(f"{sum(r['spread'] > thr for r in members)} of {len(members)}")
        rows.append([f"spread > {thr}", *cells])
    for thr in PAIR_SWEEP:
        clean = [r for r in results if r["info"]["kind"] == "clean"]
        tact = [r for r in results if r["info"]["kind"] == "source-specific"]
        a2a = [r for r in results if r["info"]["kind"] == "all-to-all"]
        rows.append([f"a pair > {thr}", f"{sum(r['max_score'] > thr for r in clean)} of {len(clean)}",
                     f"{sum(max(r['true_pair_scores']) > thr for r in a2a)} of {len(a2a)} (a true pair)",
                     f"TaCT pair: {sum(max(r['true_pair_scores']) > thr for r in tact)} of {len(tact)}"])
    return rows


def leave_one_out(results: list[dict]) -> dict[str, int]:
    """Clean models that a threshold set just above the *other* clean models would flag: how often
    a zero-false-positive threshold chosen on 16 models fails on a 17th (per test, and either)."""
    clean = [r for r in results if r["info"]["kind"] == "clean"]
    out = {"spread": 0, "pair": 0, "either": 0}
    for i, r in enumerate(clean):
        others = clean[:i] + clean[i + 1:]
        spread = r["spread"] > max(o["spread"] for o in others)
        pair = r["max_score"] > max(o["max_score"] for o in others)
        out["spread"], out["pair"], out["either"] = out["spread"] + spread, out["pair"] + pair, out["either"] + (spread or pair)
    return out


def summary_rows(results: list[dict]) -> list[list]:
    """Per group: models, flagged at all, detected, and the default scan's flags."""
    rows = []
    for g in sorted({group(r) for r in results}):
        members = [r for r in results if group(r) == g]
        rows.append([g, len(members), sum(bool(r["flagged"]) for r in members), sum(r["all_to_all"] for r in members),
                     "-" if g.startswith("clean") else sum(r["detected"] for r in members),
                     "-" if g.startswith("clean") else sum(r["wrong_pair"] for r in members),
                     f"{min(r['spread'] for r in members):.3f} .. {max(r['spread'] for r in members):.3f}",
                     f"{max(r['max_score'] for r in members):.3f}", sum(bool(r["scan_flagged"]) for r in members)])
    return rows


def model_row(r: dict) -> list:
    info = r["info"]
    pairs = info.get("pairs", [])
    truth_cell = {"clean": "-", "all-to-one": f"-> {info.get('target')}"}.get(
        info["kind"], " ".join(f"{s}->{t}" for s, t in pairs[:3]) + (" ..." if len(pairs) > 3 else ""))
    true = r["true_pair_scores"]
    return [r["model"], info["kind"], truth_cell, r["classes"], f"{r['spread']:.3f}", f"{r['max_score']:.3f}",
            "-" if not true else f"{np.median(true):.3f} / {max(true):.3f}",
            " ".join(f"{s}->{t}" for s, t in r["flagged"][:4]) + (" ..." if len(r["flagged"]) > 4 else "") or "-",
            "yes" if r["detected"] else "-", "yes" if r["wrong_pair"] else "-", str(r["scan_flagged"] or "-"),
            f"{info['trigger_over_pair_norm']:.2f}" if "trigger_over_pair_norm" in info else "-", f"{r['seconds']:.2f}"]


def main() -> None:
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--set", nargs="*", default=[], help="PairwiseConfig fields, key=value")
    args = parser.parse_args()
    cfg = PairwiseConfig.from_dict(parse_sets(args.set))
    results = []
    for name, (model, clean, info) in cases(args.data_root):
        results.append(run(name, model, clean, info, cfg))
        print(f"{name}: spread {results[-1]['spread']:.3f}, flagged {results[-1]['flagged'][:4]}", flush=True)
    speed = {f"synthetic C={c}": timing(c) for c in (10, 43)}
    for c in sorted({r["classes"] for r in results}):
        speed[f"tuning models C={c} (mean)"] = float(np.mean([r["seconds"] for r in results if r["classes"] == c]))
    clean = [r for r in results if r["info"]["kind"] == "clean"]
    limits = {"clean_max_spread": max(r["spread"] for r in clean), "clean_max_pair": max(r["max_score"] for r in clean),
              "leave_one_out": leave_one_out(results)}
    text = (f"Settings: {cfg.to_dict()}. The clean models' largest spread {limits['clean_max_spread']:.3f} and largest "
            f"pair score {limits['clean_max_pair']:.3f} (the thresholds sit just above them). Left out one at a time, a "
            f"threshold set above the other clean models flags {limits['leave_one_out']} of {len(clean)} (the "
            f"false-positive rate to expect on new clean models). Seconds of the "
            f"pairwise QPs and tests, one thread (synthetic: 250 latents a class, d = 512; the tuning models: their "
            f"clean sets, the forward pass not counted): " + ", ".join(f"{k}: {v:.2f} s" for k, v in speed.items())
            + ". Detected: a flagged pair is one of the backdoor's (all-to-one: any pair into the target), or, "
            "all-to-all, the spread test fired.\n\n"
            + markdown_table(["group", "models", "a pair flagged", "spread test fired", "detected", "a wrong pair flagged",
                              "spread (min .. max)",
                              "largest pair score", "default scan flagged a class"], summary_rows(results))
            + "\nThresholds swept (models above them):\n\n"
            + markdown_table(["threshold", "clean", "all-to-all (digits)", "all-to-one / TaCT"], sweep_rows(results))
            + "\nPer model: the spread, the largest pair score, the backdoor pairs' scores (median / max; all-to-one: "
              "the target's column), the flagged pairs, the default scan's flagged classes, and (our digits "
              "models) the real trigger's mean latent shift of a source over the pair's minimal one n[s, t] "
              "(median over the backdoor pairs).\n\n"
            + markdown_table(["model", "kind", "backdoor", "C", "spread", "max score", "backdoor pairs", "flagged",
                              "detected", "wrong pair", "scan", "trigger / pair norm", "s"],
                             [model_row(r) for r in results]))
    write_result("tac_pairwise", {"config": cfg.to_dict(), "limits": limits, "timing_seconds": speed,
                                  "summary": summary_rows(results), "sweep": sweep_rows(results), "models": results}, text)


if __name__ == "__main__":
    main()
