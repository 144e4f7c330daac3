"""Time the QP stage of TAC for many classes and compare it with cvxpy on the uncompressed problem.

Usage: python benchmarks/qp_scaling.py [--n 2500] [--classes 10 43 200 1000] [--dims 512 2048]

Inputs are random but shaped like a scan: n non-negative latents (ReLU of a normal), a head
with weights of scale 1/sqrt(d). tacrecon solves all C classes; cvxpy (Clarabel) solves the
uncompressed problem (n (C-1) constraints) for the first ``--reference-classes`` classes,
wherever its constraint matrix has at most ``--max-entries`` entries; the table gives the time per
class of both, their ratio, and the largest difference of s_k relative to max |s_k|.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from common import markdown_table, write_result
from tacrecon.qp import solve_latent_qp


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2500)
    parser.add_argument("--classes", type=int, nargs="+", default=[10, 43, 200, 1000])
    parser.add_argument("--dims", type=int, nargs="+", default=[512, 2048])
    parser.add_argument("--reference-classes", type=int, default=2)
    parser.add_argument("--max-entries", type=float, default=1.2e8)
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
            entries = args.n * (c - 1) * d
            if entries <= args.max_entries:
                ks = list(range(min(args.reference_classes, c)))
                start = time.perf_counter()
                refs = [cvxpy_shift(z.numpy(), w.numpy(), b.numpy(), k) for k in ks]
                theirs = (time.perf_counter() - start) / len(ks)
                diff = max(float(np.abs(result.shifts[k].numpy() - r).max() / np.abs(r).max()) for k, r in zip(ks, refs))
                cell["cvxpy"] = {"per_class_s": theirs, "classes": ks, "max_rel_diff": diff}
            cells.append(cell)
            ref = cell["cvxpy"]
            rows.append([c, d, f"{ours:.2f}", f"{ours / c * 1e3:.1f}",
                         f"{ref['per_class_s'] * 1e3:.0f}" if ref else f"not run ({entries:.1e} entries)",
                         f"{ref['per_class_s'] / (ours / c):.0f}x" if ref else "-",
                         f"{ref['max_rel_diff']:.1e}" if ref else "-", f"{cell['kkt_max']:.1e}"])
            print(rows[-1], flush=True)
    table = markdown_table(["C", "d", "tacrecon, all classes (s)", "tacrecon ms/class", "cvxpy ms/class",
                            "speed-up", "max rel. diff of s_k", "max KKT residual"], rows)
    print(write_result("qp_scaling", {"n": args.n, "cells": cells}, table))


if __name__ == "__main__":
    main()
