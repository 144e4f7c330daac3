"""Training throughput (images/second) of every registered model with the one training loop.

Usage: python benchmarks/train_throughput.py [--device cpu|cuda] [--images N] [--batch-size B]

Throughput does not depend on pixel values, so the data are random CIFAR-shaped tensors
(3x32x32, 10 classes) resident on the device, as in real runs. One warm-up epoch of a small
split comes first; the timed part is one epoch over ``--images`` images.
"""

from __future__ import annotations

import argparse
import time

import torch

from tacrecon.data.split import Split
from tacrecon.models import MODELS, create_model
from tacrecon.recipes import default_train_config

from common import markdown_table, write_result

# The CPU protocol's resnet_small width; other models at their defaults.
KWARGS = {"resnet_small": {"width": 16}}


def measure(name: str, device: torch.device, images: int, batch_size: int) -> float:
    """Images per second of one training epoch of ``name`` on ``device``."""
    g = torch.Generator().manual_seed(0)
    data = Split(torch.rand(images, 3, 32, 32, generator=g), torch.randint(0, 10, (images,), generator=g)).to(device)
    model = create_model(name, **KWARGS.get(name, {})).to(device)
    cfg = default_train_config("cifar10", epochs=1, batch_size=batch_size, progress=False)
    from tacrecon.train import fit

    fit(model, data.subset(torch.arange(min(images, 2 * batch_size))), cfg)
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fit(model, data, cfg)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--images", type=int, default=None, help="default: 2048 on cpu, 20480 on cuda")
    parser.add_argument("--batch-size", type=int, default=256)
    args = parser.parse_args()
    device = torch.device(args.device)
    images = args.images or (2048 if device.type == "cpu" else 20480)
    rows, record = [], {"images": images, "batch_size": args.batch_size, "models": {}}
    for name in MODELS.names():
        ips = measure(name, device, images, args.batch_size)
        params = sum(p.numel() for p in create_model(name, **KWARGS.get(name, {})).parameters())
        record["models"][name] = {"images_per_s": ips, "params": params}
        rows.append([name, f"{params / 1e6:.2f}M", f"{ips:,.0f}", f"{50000 / ips / 60:.2f}"])
        print(rows[-1], flush=True)
    table = markdown_table(["model", "params", "train images/s", "min per CIFAR-10 epoch"], rows)
    print(write_result(f"train_throughput_{device.type}", record, table, str(device)))


if __name__ == "__main__":
    main()
