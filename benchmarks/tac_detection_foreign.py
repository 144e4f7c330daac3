"""Which per-class detection statistic, from the defender's clean set only, singles out the target?

Usage: OMP_NUM_THREADS=1 python benchmarks/tac_detection_foreign.py --data-root DIR [--models NAME ...]
           [--uap-eps 6] [--uap-steps 15] [--mmbd-steps 40] [--mmbd-starts 24] [--summary-only]
           [--part holdout]

``--part holdout`` reads the family's held-out part (benchmarks/foreign/holdout, none of ours) with
every threshold fixed beforehand on the tuning part's clean models (its cached JSONs), so the
held-out figures test the statistics as they were chosen; results in
docs/benchmarks/tac_detection_foreign_holdout(.md/.json and one JSON per model).

Models: the 28 of benchmarks/foreign/models (trained by code that shares nothing with tacrecon) and
our tuning artifacts (CIFAR-10 resnet_small none / badnets / blended / wanet / sig / lira seed 100,
blended seed 101; GTSRB none / badnets / blended seed 100). All are tuning models (seeds 100+).
Clean set: the protocol's, 5% of the training split drawn with the model's seed outside its
poisoned images (``clean_subset(data.train, 0.05, None, seed, poisoned)``).

Per model and per class k, every statistic gives one value v_k (clean data only):

* ``plain``, ``robust95``: ||s_k|| of TAC's latent QP over every clean sample / the 0.95 quantile
  of the margins (``tacrecon.tac.detect.scan``, defaults). Small = suspicious.
* ``nonneg``, ``nonneg_q95``: the same QP with the shift constrained to s >= 0 (post-ReLU latents
  only grow under a trigger), solved here through its dual (L-BFGS-B on lambda >= 0,
  s = (A^T lambda)_+). ``nonneg_sd``: the same with ||s / sd_u|| (sd_u the clean std of unit u).
  Small = suspicious.
* head-weight statistics, with dW = W - median over classes of W (per unit): ``wdiff_max``
  max_u dW_ku, ``wdiff_over_sd`` max_u dW_ku / sd_u, ``wdiff_x_sd`` max_u dW_ku sd_u,
  ``wdiff_dormant`` max of dW_ku over the quarter of units least active on clean data.
  Large = suspicious.
* shift concentration of the plain s_k: ``shift_PR`` participation ratio / d (small =
  suspicious), ``shift_top5_mass`` share of ||s_k||^2 on its 5 largest units,
  ``shift_lowact_mass`` share on the half of units least active on clean data (large).
* ``qens4``: geometric mean of the QP norms at quantiles 1, 0.99, 0.95 and 0.9 (small).
* ``maxmargin``: MM-BD's idea in the latent space: the largest margin min_j (w_k - w_j) z + b_k - b_j
  that a latent 0 <= z <= q99 reaches (q99: the 0.99 quantile of every clean latent value, the same
  box for every unit), an LP; large = suspicious: a dormant trigger unit may fire.
* ``offclass_prob``: mean softmax probability of k over clean images of other classes (large).
* ``uap``: input space. For each k, a universal L-inf perturbation (``--uap-eps``/255,
  ``--uap-steps`` signed-gradient steps on 160 clean images outside k), and its success toward k
  on 256 other clean images (large = suspicious).
* ``mmbd``: MM-BD (arXiv 2205.06900) in short: per class, the largest logit margin
  f_k - max_{j != k} f_j reached by ``--mmbd-steps`` Adam steps on images from ``--mmbd-starts``
  uniform random starts (no data; large = suspicious).
* combinations (``COMBOS``): the geometric mean of the named statistics' ratios to the median.

Each value is divided by the scan's class-count prior (``class_prior``, auto: on for GTSRB's
imbalanced clean set), then read two scale-free ways, both oriented so that larger = more
suspicious: the anomaly index (x_k - median) / (1.4826 MAD), x = -v for small-suspicious, and the
ratio to the median (median / v, or v / median). A fair single threshold for a statistic is set
just above the most extreme class of the worst CLEAN model (foreign clean s100 s101 s112 s115 s120
s127 and our CIFAR-10 / GTSRB ``none``); a backdoored model counts as flagged when its target is
above it. Reported per statistic, split by poisoning rate (1% vs 5-10%; SIG, a clean-label attack
whose target is flagged on the high side, and cifar10-resnet18-patch4-r1-s119, whose backdoor did
not take (ASR 4%), apart): target ranked first; target above the threshold; models where another
class is above it too. Also: the default scan's flagged classes (both looks, the shipped bounds), and
OR rules (a class flagged when any of their statistics passes its own clean threshold). One JSON
per model under docs/benchmarks/tac_detection_foreign/ (a rerun skips it, or recomputes only what
changed); the table in docs/benchmarks/tac_detection_foreign.md/.json.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linprog, minimize

from tacrecon.data import clean_subset, load_dataset
from tacrecon.io import atomic_write_json, read_json
from tacrecon.loading import load_any
from tacrecon.qp import solve_latent_qp
from tacrecon.tac.detect import class_prior, head_of, scan

from common import DOCS, markdown_table, tuning_folder, write_result

FAMILY = Path(__file__).resolve().parent / "foreign"
sys.path.insert(0, str(FAMILY))  # the family's poisoning, to leave its poisoned images out of the clean set
import plan  # noqa: E402
import triggers  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
OURS = [("cifar10", "none", 100), ("cifar10", "badnets", 100), ("cifar10", "blended", 100),
        ("cifar10", "blended", 101), ("cifar10", "wanet", 100), ("cifar10", "sig", 100), ("cifar10", "lira", 100),
        ("gtsrb", "none", 100), ("gtsrb", "badnets", 100), ("gtsrb", "blended", 100)]
NOT_WORKING = {"cifar10-resnet18-patch4-r1-s119"}  # ASR 4.1%: its backdoor did not take
SMALL = {"plain", "robust95", "nonneg", "nonneg_q95", "nonneg_sd", "shift_PR", "qens4"}  # small value = suspicious
COMBOS = {"plain+robust": ["plain", "robust95"], "plain+mmbd": ["plain", "mmbd"],
          "plain+maxmargin+mmbd": ["plain", "maxmargin", "mmbd"], "plain+robust+nonneg": ["plain", "robust95", "nonneg"],
          "plain+maxmargin": ["plain", "maxmargin"], "qens4+maxmargin": ["qens4", "maxmargin"],
          "plain+robust+nonneg+maxmargin": ["plain", "robust95", "nonneg", "maxmargin"],
          "plain+robust+uap": ["plain", "robust95", "uap"], "plain+maxmargin+uap": ["plain", "maxmargin", "uap"]}
SHOWN = ["plain", "robust95", "qens4", "maxmargin", "plain+maxmargin", "uap", "mmbd", "plain+maxmargin+mmbd"]
LATENT_VERSION = 2  # of latent_statistics: a cached model with another is recomputed, its uap kept


def jobs(part: str = "tuning") -> list[tuple[str, str, Path]]:
    """(name, kind, folder) of every model of ``part`` (ours only in the tuning part)."""
    folder = plan.PARTS[part][2]
    out = [(p.name, "foreign", p) for p in sorted(folder.iterdir()) if (p / "model.json").is_file()]
    if part != "tuning":
        return out
    for dataset, attack, seed in OURS:
        out.append((f"ours-{dataset}-{attack}-seed{seed}", "ours", REPO / tuning_folder(dataset, attack, seed)))
    return out


def load(kind: str, folder: Path, root: str | None, cache: dict):
    """(model, clean split, info) of one model."""
    if kind == "foreign":
        meta = read_json(folder / "model.json")
        dataset = meta["dataset"]
    else:
        meta = read_json(folder / "attack.json")
        dataset = meta["dataset"]
    if dataset not in cache:
        cache[dataset] = load_dataset(dataset, root=root)
    data = cache[dataset]
    if kind == "foreign":
        loaded = load_any(f"{FAMILY / 'nets.py'}:{meta['factory']}", weights=folder / "weights.safetensors",
                          num_classes=data.num_classes, dataset=dataset)
        poisoned = (None if meta["clean"] else
                    triggers.poison_indices(data.train.y.cpu(), meta["target"], meta["rate"], meta["seed"]))
        info = {"dataset": dataset, "arch": meta["arch"], "trigger": "clean" if meta["clean"] else meta["trigger"],
                "target": None if meta["clean"] else meta["target"], "rate": None if meta["clean"] else meta["rate"],
                "asr": meta.get("asr"), "seed": meta["seed"]}
    else:
        loaded = load_any(str(folder))
        poisoned = loaded.artifact.poison_index
        clean = meta["attack"] == "none"
        info = {"dataset": dataset, "arch": meta["arch"], "trigger": "clean" if clean else meta["attack"],
                "target": None if clean else meta["attack_config"]["target"],
                "rate": None if clean else meta["attack_config"].get("rate"), "asr": meta.get("asr"),
                "seed": meta["seed"]}
    return loaded.model.eval(), clean_subset(data.train, 0.05, None, info["seed"], poisoned), info


def margins_offsets(z: np.ndarray, w: np.ndarray, b: np.ndarray, k: int, q: float | None):
    """(A, c) of the constraints A s >= c of class k: A_j = w_k - w_j, c_j the largest (or upper
    q-quantile) margin of class j over k among the clean latents z (N, d)."""
    logits = z @ w.T + b
    m = np.delete(logits - logits[:, k:k + 1], k, axis=1)
    c = m.max(0) if q is None else np.quantile(m, q, axis=0, method="higher")
    return np.delete(w[k:k + 1] - w, k, axis=0), c


def nonneg_norm(a: np.ndarray, c: np.ndarray, scale: np.ndarray | None = None) -> float:
    """min ||s / scale|| s.t. a s >= c, s >= 0, by its dual: max_{lam >= 0} lam.c - 1/2 ||scale (a^T lam)_+||^2,
    s = scale^2 (a^T lam)_+. +inf where the primal is infeasible (the dual then has no finite optimum)."""
    s2 = np.ones(a.shape[1]) if scale is None else scale ** 2

    def f(lam):
        g = np.maximum(a.T @ lam, 0)
        return -(lam @ c - 0.5 * np.sum(s2 * g ** 2)), -(c - a @ (s2 * g))

    r = minimize(f, np.zeros(len(c)), jac=True, method="L-BFGS-B", bounds=[(0, None)] * len(c),
                 options={"maxiter": 5000, "ftol": 1e-15, "gtol": 1e-10})
    s = s2 * np.maximum(a.T @ r.x, 0)
    if float(np.max(c - a @ s)) > 1e-3 * (1 + np.abs(c).max()):
        return math.inf
    return float(math.sqrt(np.sum(s ** 2 / s2)))


def latent_max_margin(w: np.ndarray, b: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Per class k, the largest margin min_j (w_k - w_j) z + b_k - b_j over latents 0 <= z <= high (an LP):
    MM-BD's maximum achievable margin, in the latent space. Large = suspicious."""
    c_count, d = w.shape
    out = []
    for k in range(c_count):
        a, bb = np.delete(w[k:k + 1] - w, k, 0), np.delete(b[k] - b, k)
        objective = np.zeros(d + 1)
        objective[-1] = -1  # maximize t subject to a z + bb >= t
        r = linprog(objective, A_ub=np.hstack([-a, np.ones((c_count - 1, 1))]), b_ub=bb,
                    bounds=[(0, h) for h in high] + [(None, None)], method="highs")
        out.append(-r.fun)
    return np.array(out)


def latent_statistics(z_t: torch.Tensor, y: np.ndarray, w_t: torch.Tensor, b_t: torch.Tensor,
                      shifts: np.ndarray) -> dict[str, list[float]]:
    """The clean-latent and head statistics (C values each) other than the scan's norms."""
    z, w, b = z_t.double().numpy(), w_t.double().numpy(), b_t.double().numpy()
    c_count, d = w.shape
    mu, sd = z.mean(0), z.std(0) + 1e-8
    dw = w - np.median(w, axis=0, keepdims=True)
    out = {"wdiff_max": dw.max(1), "wdiff_over_sd": (dw / sd).max(1), "wdiff_x_sd": (dw * sd).max(1),
           "wdiff_dormant": dw[:, mu <= np.quantile(mu, 0.25)].max(1)}
    sq = shifts ** 2
    out["shift_PR"] = sq.sum(1) ** 2 / (np.sum(sq ** 2, 1) + 1e-30) / d
    out["shift_top5_mass"] = np.sort(sq, axis=1)[:, ::-1][:, :5].sum(1) / sq.sum(1)
    out["shift_lowact_mass"] = sq[:, mu <= np.median(mu)].sum(1) / sq.sum(1)
    nn, nnq, nnsd = [], [], []
    for k in range(c_count):
        a, c = margins_offsets(z, w, b, k, None)
        nn.append(nonneg_norm(a, c))
        nnsd.append(nonneg_norm(a, c, sd))
        nnq.append(nonneg_norm(*margins_offsets(z, w, b, k, 0.95)))
    out.update(nonneg=np.array(nn), nonneg_q95=np.array(nnq), nonneg_sd=np.array(nnsd))
    norms = [solve_latent_qp(z_t, w_t, b_t, quantile=q).norms.double().numpy() for q in (None, 0.99, 0.95, 0.9)]
    floor = 1e-6 * float(np.median(norms[0]))
    out["qens4"] = np.exp(np.mean([np.log(np.maximum(n, floor)) for n in norms], 0))
    out["maxmargin"] = latent_max_margin(w, b, np.full(d, np.quantile(z, 0.99)))
    logits = z @ w.T + b
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    out["offclass_prob"] = np.array([p[y != k, k].mean() for k in range(c_count)])
    return {k: [float(x) for x in v] for k, v in out.items()}


def uap_success(model: torch.nn.Module, clean, eps: float, steps: int, seed: int,
                n_fit: int = 160, n_eval: int = 256) -> list[float]:
    """Per class k: success toward k, on n_eval held-apart clean images outside k, of a universal
    L-inf (eps) perturbation fitted by ``steps`` signed-gradient steps on n_fit others."""
    for p in model.parameters():
        p.requires_grad_(False)
    perm = torch.randperm(len(clean.y), generator=torch.Generator().manual_seed(seed))
    xa, ya = clean.x[perm[:n_fit]], clean.y[perm[:n_fit]]
    xb, yb = clean.x[perm[n_fit:n_fit + n_eval]], clean.y[perm[n_fit:n_fit + n_eval]]
    out = []
    for k in range(model.num_classes):
        xk = xa[ya != k]
        delta = torch.zeros(1, *xa.shape[1:], requires_grad=True)
        tk = torch.full((len(xk),), k)
        for _ in range(steps):
            (grad,) = torch.autograd.grad(F.cross_entropy(model((xk + delta).clamp(0, 1)), tk), delta)
            with torch.no_grad():
                delta -= 2.5 * eps / steps * grad.sign()
                delta.clamp_(-eps, eps)
        with torch.no_grad():
            out.append(float((model((xb[yb != k] + delta).clamp(0, 1)).argmax(1) == k).float().mean()))
    return out


def max_margin_inputs(model: torch.nn.Module, shape: tuple[int, ...], steps: int, starts: int,
                      seed: int, lr: float = 0.05) -> list[float]:
    """MM-BD (arXiv 2205.06900), short: per class k, the largest logit margin f_k - max_{j != k} f_j
    that ``steps`` Adam steps reach from ``starts`` uniform random images in [0, 1] (no data used)."""
    for p in model.parameters():
        p.requires_grad_(False)
    x0 = torch.rand((starts, *shape), generator=torch.Generator().manual_seed(seed))
    out = []
    for k in range(model.num_classes):
        x = x0.clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=lr)
        for _ in range(steps + 1):
            logits = model(x)
            margin = logits[:, k] - torch.cat([logits[:, :k], logits[:, k + 1:]], 1).max(1).values
            if _ == steps:
                break
            opt.zero_grad()
            (-margin.sum()).backward()
            opt.step()
            with torch.no_grad():
                x.clamp_(0, 1)
        out.append(float(margin.max()))
    return out


def run(name: str, kind: str, folder: Path, args, cache: dict, old: dict | None = None) -> dict:
    """Every statistic of one model; ``old``: a cached record whose uap is kept."""
    model, clean, info = load(kind, folder, args.data_root, cache)
    t0 = time.perf_counter()
    result = scan(model, clean)
    t1 = time.perf_counter()
    w, b = head_of(model)
    stats = {"plain": result.plain.qp.norms.tolist(), "robust95": result.robust_look.qp.norms.tolist()}
    stats.update(latent_statistics(result.latents, clean.y.cpu().numpy(), w, b, result.plain.qp.shifts.double().numpy()))
    t2 = time.perf_counter()
    seconds = {"scan": t1 - t0, "latent_statistics": t2 - t1}
    uap, mmbd = {"eps": args.uap_eps, "steps": args.uap_steps}, {"steps": args.mmbd_steps, "starts": args.mmbd_starts}
    if old is not None and old.get("uap") == uap and "uap" in old["stats"]:
        stats["uap"], seconds["uap"] = old["stats"]["uap"], old["seconds"]["uap"]
    elif args.uap_eps > 0:
        stats["uap"] = uap_success(model, clean, args.uap_eps / 255, args.uap_steps, info["seed"])
        seconds["uap"] = time.perf_counter() - t2
    t3 = time.perf_counter()
    if old is not None and old.get("mmbd") == mmbd and "mmbd" in old["stats"]:
        stats["mmbd"], seconds["mmbd"] = old["stats"]["mmbd"], old["seconds"]["mmbd"]
    elif args.mmbd_steps > 0:
        stats["mmbd"] = max_margin_inputs(model, tuple(clean.x.shape[1:]), args.mmbd_steps, args.mmbd_starts,
                                          info["seed"])
        seconds["mmbd"] = time.perf_counter() - t3
    return {"model": name, "info": info, "labels_count": torch.bincount(clean.y.cpu(), minlength=w.shape[0]).tolist(),
            "stats": stats, "scan_flagged": result.flagged, "scan_plain_flagged": result.plain.detection.flagged,
            "scan_robust_flagged": result.robust, "seconds": seconds,
            "uap": uap, "mmbd": mmbd, "latent_version": LATENT_VERSION}


def scores(values: list[float], name: str, counts: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """(anomaly index, ratio to the median) of one statistic's values, both larger = more suspicious,
    after the scan's class-count prior (auto)."""
    v = torch.tensor(values, dtype=torch.float64)
    labels = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    prior = class_prior(v.clamp_min(1e-12), labels, len(counts))
    if prior is not None:
        v = v / prior
    x = -v if name in SMALL else v
    med = x.median()
    mad = float((x - med).abs().median()) * 1.4826
    index = ((x - med) / max(mad, 1e-12)).numpy()
    ratio = (v.median() / v if name in SMALL else v / max(float(v.median()), 1e-12)).numpy()
    return np.nan_to_num(index, nan=-1e9, posinf=1e9, neginf=-1e9), np.nan_to_num(ratio, nan=0, posinf=1e9)


def all_scores(r: dict) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    out = {n: scores(v, n, r["labels_count"]) for n, v in r["stats"].items()}
    for combo, parts in COMBOS.items():
        if all(p in out for p in parts):
            ratio = np.exp(np.mean([np.log(np.clip(out[p][1], 1e-9, None)) for p in parts], 0))
            x = torch.tensor(np.log(ratio))
            mad = float((x - x.median()).abs().median()) * 1.4826
            out[combo] = (((x - x.median()) / max(mad, 1e-12)).numpy(), ratio)
    return out


OR_RULES = {"plain+maxmargin ratio OR uap index": [("plain+maxmargin", 1), ("uap", 0)],
            "plain+maxmargin ratio OR mmbd index": [("plain+maxmargin", 1), ("mmbd", 0)],
            "plain+maxmargin ratio OR uap index OR mmbd index": [("plain+maxmargin", 1), ("uap", 0), ("mmbd", 0)],
            "qens4 index OR uap index": [("qens4", 0), ("uap", 0)]}  # (statistic, 0: index / 1: ratio)


def or_rules(scored: list, groups: list[str], reference: list) -> list[list]:
    """Rows of OR rules: a class is flagged when any of its statistics is above that statistic's
    clean threshold (each threshold set on the clean models of ``reference`` alone, as in the main
    table)."""
    rows = []
    for name, rule in OR_RULES.items():
        if not all(n in s for n, _ in rule for _, s in scored):
            continue
        limits = [max(float(s[n][j].max()) for r, s in reference if group(r) == "clean") for n, j in rule]
        cells = []
        for g in ["clean", *groups]:
            members = [(r, s) for r, s in scored if group(r) == g]
            flags = [np.any([s[n][j] > t for (n, j), t in zip(rule, limits)], 0) for _, s in members]
            if g == "clean":
                cells.append(f"{sum(bool(f.any()) for f in flags)} of {len(members)}")
                continue
            right = sum(bool(f[r["info"]["target"]]) for f, (r, _) in zip(flags, members))
            wrong = sum(bool(np.delete(f, r["info"]["target"]).any()) for f, (r, _) in zip(flags, members))
            cells.append(f"{right} ({wrong}) of {len(members)}")
        rows.append([name, *cells])
    return rows


def group(r: dict) -> str:
    info = r["info"]
    if info["target"] is None:
        return "clean"
    if r["model"] in NOT_WORKING:
        return "no backdoor (ASR 4%)"
    if info["trigger"] == "sig":
        return "sig (clean-label)"
    return "1%" if info["rate"] <= 0.011 else ("5-10% ours" if r["model"].startswith("ours-") else "5-10% foreign")


def summarize(results: list[dict], reference: list[dict] | None = None) -> tuple[list[dict], list[list], list[list]]:
    """Summary, table rows, per-model rows and OR-rule rows of ``results``; every threshold is set
    on the clean models of ``reference`` (default: ``results`` themselves)."""
    scored = [(r, all_scores(r)) for r in results]
    fixed = scored if reference is None else [(r, all_scores(r)) for r in reference]
    names = list(scored[0][1])
    summary, rows = [], []
    groups = ["1%", "5-10% foreign", "5-10% ours", "sig (clean-label)"]
    for n in names:
        clean = [s[n] for r, s in fixed if group(r) == "clean" and n in s]
        t_index = max(float(ix.max()) for ix, _ in clean)
        t_ratio = max(float(ra.max()) for _, ra in clean)
        entry = {"statistic": n, "clean_max_index": t_index, "clean_max_ratio": t_ratio}
        for g in groups:
            members = [(r, s[n]) for r, s in scored if group(r) == g and n in s]
            t = [r["info"]["target"] for r, _ in members]
            top = sum(int((ix > ix[k]).sum()) == 0 for (_, (ix, _)), k in zip(members, t))
            by_index = sum(bool(ix[k] > t_index) for (_, (ix, _)), k in zip(members, t))
            by_ratio = sum(bool(ra[k] > t_ratio) for (_, (_, ra)), k in zip(members, t))
            wrong_index = sum(bool(np.delete(ix, k).max() > t_index) for (_, (ix, _)), k in zip(members, t))
            wrong_ratio = sum(bool(np.delete(ra, k).max() > t_ratio) for (_, (_, ra)), k in zip(members, t))
            entry[g] = {"models": len(members), "top": top, "index": by_index, "ratio": by_ratio,
                        "wrong_index": wrong_index, "wrong_ratio": wrong_ratio}
        summary.append(entry)
        rows.append([n, f"{t_index:.2f} / {t_ratio:.3f}",
                     *(f"{entry[g]['top']} ; {entry[g]['index']} ({entry[g]['wrong_index']}) ; "
                       f"{entry[g]['ratio']} ({entry[g]['wrong_ratio']}) of {entry[g]['models']}" for g in groups)])
    default = {"statistic": "default scan (flagged)"}
    for g in ["clean", *groups]:
        members = [r for r in results if group(r) == g]
        right = sum(r["info"]["target"] in r["scan_flagged"] for r in members)
        wrong = sum(any(k != r["info"]["target"] for k in r["scan_flagged"]) for r in members)
        default[g] = {"models": len(members), "target_flagged": right, "wrong_flagged": wrong}
    summary.append(default)
    rows.append(["default scan: target flagged (another class flagged)",
                 f"clean models flagged: {default['clean']['wrong_flagged']} of {default['clean']['models']}",
                 *(f"{default[g]['target_flagged']} ({default[g]['wrong_flagged']}) of {default[g]['models']}"
                   for g in groups)])
    per_model = []
    for r, s in scored:
        t = r["info"]["target"]
        cells = []
        for n in SHOWN:
            if n not in s:
                cells.append("-")
                continue
            ix, ra = s[n]
            if t is None:
                k = int(np.argmax(ix))
                cells.append(f"max {ix[k]:.1f} / {ra.max():.2f}")
            else:
                cells.append(f"{int((ix > ix[t]).sum())}: {ix[t]:.1f} / {ra[t]:.2f}")
        info = r["info"]
        per_model.append([r["model"], info["trigger"], "-" if info["rate"] is None else f"{info['rate']:.0%}",
                          "-" if t is None else t, group(r), str(r["scan_flagged"] or "-"), *cells])
    return summary, rows, per_model, or_rules(scored, groups, fixed)


def main() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--models", nargs="*", default=None)
    parser.add_argument("--uap-eps", type=float, default=6.0, help="L-inf radius in 1/255 (0: no input-space statistic)")
    parser.add_argument("--uap-steps", type=int, default=15)
    parser.add_argument("--mmbd-steps", type=int, default=40, help="Adam steps of the input max-margin (0: off)")
    parser.add_argument("--mmbd-starts", type=int, default=24, help="random starting images per class")
    parser.add_argument("--summary-only", action="store_true", help="summarize the cached models only")
    parser.add_argument("--part", choices=sorted(plan.PARTS), default="tuning",
                        help="holdout: the held-out part, thresholds fixed on the tuning part's clean models")
    args = parser.parse_args()
    name_of = "tac_detection_foreign" if args.part == "tuning" else f"tac_detection_foreign_{args.part}"
    folder = DOCS / name_of
    cache: dict = {}
    results = []
    for name, kind, path in jobs(args.part):
        if args.models and name not in args.models:
            continue
        out = folder / f"{name}.json"
        want = {"uap": {"eps": args.uap_eps, "steps": args.uap_steps}, "latent_version": LATENT_VERSION,
                "mmbd": {"steps": args.mmbd_steps, "starts": args.mmbd_starts}}
        old = read_json(out) if out.is_file() else None
        fresh = old is not None and all(old.get(k) == v for k, v in want.items())
        if not args.summary_only and not fresh:
            start = time.perf_counter()
            record = run(name, kind, path, args, cache, old)
            atomic_write_json(out, record)
            print(f"{name}: {time.perf_counter() - start:.0f} s {record['seconds']}", flush=True)
        if out.is_file():
            results.append(read_json(out))
    reference = None
    if args.part != "tuning":  # the thresholds come from the tuning part, as they were chosen
        reference = [read_json(p) for p in sorted((DOCS / "tac_detection_foreign").glob("*.json"))]
    summary, rows, per_model, ors = summarize(results, reference)
    head = ["statistic", "clean max (index / ratio)", "1% (foreign): top ; index (wrong) ; ratio (wrong)",
            "5-10% foreign", "10% ours", "SIG (ours)"]
    seconds = {k: float(np.mean([r["seconds"][k] for r in results if k in r["seconds"]]))
               for k in ("scan", "latent_statistics", "uap", "mmbd") if any(k in r["seconds"] for r in results)}
    fixed = ("" if reference is None else f"Thresholds fixed on the tuning part's {len(reference)} models "
             "(docs/benchmarks/tac_detection_foreign): the clean max column is theirs. ")
    text = (fixed + "Per statistic: the clean models' most extreme class (anomaly index / ratio to the median; the "
            "threshold), then per group: backdoored models whose target ranks first ; whose target is above the "
            "index threshold (models where another class is above it too) ; the same for the ratio. "
            f"{len(results)} models. Mean seconds per model: {seconds}.\n\n"
            + markdown_table(head, rows) + "\nOR rules (each statistic at its own clean threshold): target flagged "
            "(another class flagged too).\n\n"
            + markdown_table(["rule", "clean models flagged", "1%", "5-10% foreign", "10% ours", "SIG"], ors)
            + "\nPer model: the scan's flagged classes (defaults), then per statistic the target's rank (0: first), "
            "anomaly index / ratio to the median; for a clean model its most extreme class's.\n\n"
            + markdown_table(["model", "trigger", "rate", "target", "group", "scan flagged", *SHOWN], per_model))
    write_result(name_of, {"part": args.part, "summary": summary, "or_rules": ors, "models": [r["model"] for r in results],
                                           "uap": {"eps": args.uap_eps, "steps": args.uap_steps},
                                           "mmbd": {"steps": args.mmbd_steps, "starts": args.mmbd_starts},
                                           "seconds_per_model": seconds}, text)


if __name__ == "__main__":
    main()
