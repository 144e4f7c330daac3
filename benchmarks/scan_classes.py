"""A whole TAC scan of a many-class head against one forward pass of preact_resnet18, in one run.

Usage: python benchmarks/scan_classes.py [--classes 10 200 1000] [--dim 2048] [--n 2500] [--threads 2]
                                         [--reference COMMIT]

The practitioner's bar (issue: 1,000 classes in seconds): a scan of a 1,000-class model with a
2,048-dimensional latent on n = 2,500 clean images, both looks and the test, in no more time than
one forward pass of preact_resnet18 over 2,500 CIFAR-size images on the same CPU. The latents are
random but shaped like a scan's (ReLU of a normal, a head of scale 1/sqrt(d)); the scan is TAC's
own (:func:`tacrecon.tac.detect.scan` on a one-layer model whose inputs are the latents). The
table says where the time goes: the n x C^2 offsets of each look and the C active-set solves,
and how exact the answer is: the largest KKT residual, and the largest relative difference of the
norms (both looks) from the solver of ``--reference`` (tacrecon/qp.py at that commit, read with git).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from tacrecon.data.split import Split
from tacrecon.models import as_classifier, create_model
from tacrecon.qp import constraint_offsets, solve_latent_qp
from tacrecon.tac.detect import scan

from common import markdown_table, write_result


def forward_seconds(n: int) -> float:
    """One forward pass of preact_resnet18 (CIFAR-10 head) over n random 32x32 images, batches of 256."""
    model = create_model("preact_resnet18", num_classes=10).eval()
    x = torch.rand(n, 3, 32, 32)
    with torch.no_grad():
        model(x[:32])  # warm-up
        start = time.perf_counter()
        for i in range(0, n, 256):
            model(x[i:i + 256])
    return time.perf_counter() - start


REFERENCE = "871e21604db15eb66ea58d70cf6fcd1df9a08a49"  # the last commit with the solver before the speed-up


def reference_solver(commit: str):
    """tacrecon/qp.py as it was at ``commit``, imported as a module of its own."""
    root = Path(__file__).resolve().parents[1]
    text = subprocess.run(["git", "show", f"{commit}:tacrecon/qp.py"], cwd=root, check=True, capture_output=True,
                          text=True).stdout
    path = Path(tempfile.mkdtemp()) / "reference_qp.py"
    path.write_text(text)
    spec = importlib.util.spec_from_file_location("reference_qp", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def agreement(reference, z, w, b) -> tuple[float, float]:
    """(largest relative norm difference from ``reference`` over both looks, largest KKT residual)."""
    diff, kkt = 0.0, 0.0
    for quantile in (None, 0.95):
        ours, theirs = solve_latent_qp(z, w, b, quantile=quantile), reference.solve_latent_qp(z, w, b, quantile=quantile)
        finite = torch.isfinite(theirs.norms)
        assert torch.equal(finite, torch.isfinite(ours.norms))
        rel = (ours.norms[finite] - theirs.norms[finite]).abs() / theirs.norms[finite].clamp_min(1e-12)
        diff, kkt = max(diff, float(rel.max())), max(kkt, float(ours.kkt_residual.nan_to_num(0).max()))
    return diff, kkt


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def scan_row(n: int, c: int, d: int, reference) -> dict:
    g = torch.Generator().manual_seed(0)
    z = torch.randn(n, d, generator=g).relu()
    model = nn.Sequential(nn.Flatten(), nn.Linear(d, c))
    with torch.no_grad():
        model[1].weight.copy_(torch.randn(c, d, generator=g) / d ** 0.5)
        model[1].bias.copy_(0.1 * torch.randn(c, generator=g))
    clean = Split(z.reshape(n, 1, 1, d), torch.randint(c, (n,), generator=g))
    w, b = model[1].weight.detach(), model[1].bias.detach()
    parts = {"offsets, every sample": timed(lambda: constraint_offsets(z, w, b)),
             "offsets, q 0.95": timed(lambda: constraint_offsets(z, w, b, 0.95)),
             "plain QP (offsets and solves)": timed(lambda: solve_latent_qp(z, w, b))}
    classifier = as_classifier(model)
    whole = timed(lambda: scan(classifier, clean))
    diff, kkt = agreement(reference, z, w, b)
    return {"classes": c, "dim": d, "n": n, "scan": whole, **parts, "relative_difference": diff, "kkt_residual": kkt}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="*", default=[10, 200, 1000])
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--n", type=int, default=2500)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--reference", default=REFERENCE, help="commit of the solver to agree with")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    forward = forward_seconds(args.n)
    reference = reference_solver(args.reference)
    rows = [scan_row(args.n, c, args.dim, reference) for c in args.classes]
    table = markdown_table(
        ["C", "d", "whole scan (s)", "scan / forward", "offsets, every sample (s)", "offsets, q 0.95 (s)",
         "plain QP (s)", "norms vs reference (max rel.)", "KKT residual"],
        [[r["classes"], r["dim"], f"{r['scan']:.2f}", f"{r['scan'] / forward:.2f}", f"{r['offsets, every sample']:.2f}",
          f"{r['offsets, q 0.95']:.2f}", f"{r['plain QP (offsets and solves)']:.2f}", f"{r['relative_difference']:.1e}",
          f"{r['kkt_residual']:.1e}"] for r in rows])
    note = (f"\nOne forward pass of preact_resnet18 over {args.n} CIFAR-size images took {forward:.2f} s in the same "
            f"run ({args.threads} threads). The bar is a 1,000-class scan at <= 1x that. The reference solver is "
            f"tacrecon/qp.py at {args.reference[:7]}.\n")
    write_result("scan_classes", {"forward_seconds": forward, "rows": rows, "threads": args.threads,
                                  "reference": args.reference}, table + note)


if __name__ == "__main__":
    main()
