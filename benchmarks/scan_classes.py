"""A whole TAC scan of a many-class head against one forward pass of preact_resnet18, in one run.

Usage: python benchmarks/scan_classes.py [--classes 10 200 1000] [--dim 2048] [--n 2500] [--threads 2]

The practitioner's bar (issue: 1,000 classes in seconds): a scan of a 1,000-class model with a
2,048-dimensional latent on n = 2,500 clean images, both looks and the test, in no more time than
one forward pass of preact_resnet18 over 2,500 CIFAR-size images on the same CPU. The latents are
random but shaped like a scan's (ReLU of a normal, a head of scale 1/sqrt(d)); the scan is TAC's
own (:func:`tacrecon.tac.detect.scan` on a one-layer model whose inputs are the latents). The
table says where the time goes: the n x C^2 offsets of each look and the C active-set solves.
"""

from __future__ import annotations

import argparse
import time

import torch
from common import markdown_table, write_result
from torch import nn

from tacrecon.data.split import Split
from tacrecon.models import as_classifier, create_model
from tacrecon.qp import constraint_offsets, solve_latent_qp
from tacrecon.tac.detect import scan


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


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def scan_row(n: int, c: int, d: int) -> dict:
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
    return {"classes": c, "dim": d, "n": n, "scan": whole, **parts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="*", default=[10, 200, 1000])
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--n", type=int, default=2500)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    forward = forward_seconds(args.n)
    rows = [scan_row(args.n, c, args.dim) for c in args.classes]
    table = markdown_table(
        ["C", "d", "whole scan (s)", "scan / forward", "offsets, every sample (s)", "offsets, q 0.95 (s)",
         "plain QP (s)"],
        [[r["classes"], r["dim"], f"{r['scan']:.2f}", f"{r['scan'] / forward:.2f}", f"{r['offsets, every sample']:.2f}",
          f"{r['offsets, q 0.95']:.2f}", f"{r['plain QP (offsets and solves)']:.2f}"] for r in rows])
    note = (f"\nOne forward pass of preact_resnet18 over {args.n} CIFAR-size images took {forward:.2f} s in the same "
            f"run ({args.threads} threads). The bar is a 1,000-class scan at <= 1x that.\n")
    write_result("scan_classes", {"forward_seconds": forward, "rows": rows, "threads": args.threads}, table + note)


if __name__ == "__main__":
    main()
