"""Time the QP stage of TAC for many classes and compare it with cvxpy on the uncompressed problem.

Usage: python benchmarks/qp_scaling.py [--n 2500] [--classes 10 43 200 1000] [--dims 512 2048]
                                       [--reference-n 250] [--max-entries 3e7]

Inputs are random but shaped like a scan: n non-negative latents (ReLU of a normal), a head
with weights of scale 1/sqrt(d). tacrecon solves all C classes of the n samples (the time a scan
pays). The reference is cvxpy (Clarabel, an interior-point solver) on the uncompressed problem
(n' (C-1) dense constraints, one QP per class) for the first ``--reference-classes`` classes, on
the first n' = ``--reference-n`` samples (tacrecon re-solved on the same n' for the comparison),
wherever that constraint matrix has at most ``--max-entries`` entries. The full n = 2,500 is not
feasible for the reference on this machine: at C = 10, d = 512 its 22,500 x 512 matrix did not
finish in 10 minutes. The table gives the time per class of both on the same inputs, their ratio,
and the largest difference of s_k relative to max |s_k|.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch

from tacrecon.qp import solve_latent_qp

from common import markdown_table, write_result


def problem(n: int, c: int, d: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64).relu()
    w = torch.randn(c, d, generator=g, dtype=torch.float64) / d ** 0.5
    b = 0.1 * torch.randn(c, generator=g, dtype=torch.float64)
    return z, w, b


def cvxpy_shift(z: np.ndarray, w: np.ndarray, b: np.ndarray, k: int) -> np.ndarray:
    import cvxpy as cp

    others = [j for j in range(w.shape[0]) if j != k]
    a = w[k] - w[others]                                   # (C-1, d)
    lhs = np.concatenate([z @ a[i] for i in range(len(others))])     # (n (C-1),) constant part
    rows = np.repeat(a, z.shape[0], axis=0)               # (n (C-1), d)
    rhs = np.repeat(b[others] - b[k], z.shape[0])
    s = cp.Variable(w.shape[1])
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(s)), [rows @ s >= rhs - lhs])
    prob.solve(solver=cp.CLARABEL)
    if prob.status != "optimal":
        raise RuntimeError(prob.status)
    return s.value


def reference(z: torch.Tensor, w: torch.Tensor, b: torch.Tensor, classes: int) -> dict:
    """cvxpy on the uncompressed problem for the first ``classes`` classes of (z, w, b), and
    tacrecon on the same inputs: seconds per class of each and the max relative difference."""
    start = time.perf_counter()
    ours = solve_latent_qp(z, w, b)
    ours_s = (time.perf_counter() - start) / w.shape[0]
    ks = list(range(classes))
    start = time.perf_counter()
    refs = [cvxpy_shift(z.numpy(), w.numpy(), b.numpy(), k) for k in ks]
    theirs = (time.perf_counter() - start) / len(ks)
    diff = max(float(np.abs(ours.shifts[k].numpy() - r).max() / np.abs(r).max()) for k, r in zip(ks, refs))
    return {"per_class_s": theirs, "ours_per_class_s": ours_s, "classes": ks, "n": z.shape[0], "max_rel_diff": diff}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2500)
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 43, 200, 1000])
    parser.add_argument("--dims", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--reference-classes", type=int, default=2)
    parser.add_argument("--reference-n", type=int, default=250)
    parser.add_argument("--max-entries", type=float, default=3e7)
    args = parser.parse_args()
    rows, cells = [], []
    for d in args.dims:
        for c in args.classes:
            z, w, b = problem(args.n, c, d)
            start = time.perf_counter()
            result = solve_latent_qp(z, w, b)
            ours = time.perf_counter() - start
            cell = {"C": c, "d": d, "n": args.n, "seconds": ours, "per_class_s": ours / c,
                    "iterations_mean": float(result.iterations.float().mean()),
                    "kkt_max": float(result.kkt_residual.nan_to_num(0).max()), "cvxpy": None}
            n_ref = min(args.reference_n, args.n)
            entries = n_ref * (c - 1) * d
            if entries <= args.max_entries:
                cell["cvxpy"] = reference(z[:n_ref], w, b, min(args.reference_classes, c))
            cells.append(cell)
            ref = cell["cvxpy"]
            rows.append([c, d, f"{ours:.2f}", f"{ours / c * 1e3:.1f}",
                         f"{ref['ours_per_class_s'] * 1e3:.1f}" if ref else "-",
                         f"{ref['per_class_s'] * 1e3:.0f}" if ref else f"not run ({entries:.1e} entries)",
                         f"{ref['per_class_s'] / ref['ours_per_class_s']:.0f}x" if ref else "-",
                         f"{ref['max_rel_diff']:.1e}" if ref else "-", f"{cell['kkt_max']:.1e}"])
            print(rows[-1], flush=True)
    table = markdown_table(["C", "d", f"tacrecon, all classes, n={args.n} (s)", f"tacrecon ms/class, n={args.n}",
                            f"tacrecon ms/class, n'={args.reference_n}", f"cvxpy ms/class, n'={args.reference_n}",
                            "speed-up", "max rel. diff of s_k", "max KKT residual"], rows)
    note = (f"\nThe speed-up compares both solvers on the same n' = {args.reference_n} samples and the same "
            f"classes. Load average during the run: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores.\n")
    print(write_result("qp_scaling", {"n": args.n, "reference_n": args.reference_n, "cells": cells}, table + note))


if __name__ == "__main__":
    main()
