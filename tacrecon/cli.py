"""Command line: ``tacrecon {train,list,demo}``. The only place that picks a device.

Bad input of any kind prints one line ``tacrecon: error: ...`` and exits with code 2.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml

from tacrecon.errors import TacreconError

log = logging.getLogger("tacrecon")


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error as one line (exit 2) instead of the whole usage."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise TacreconError(f"{self.prog}: {message}")


def pick_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; an unavailable device is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TacreconError(f"device {name!r} requested but CUDA is not available")
    try:
        return torch.device(name)
    except RuntimeError:
        raise TacreconError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """``["lr=0.1", "flip=false"]`` -> ``{"lr": 0.1, "flip": False}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise TacreconError(f"--set expects key=value, got {item!r}")
        out[key.strip()] = yaml.safe_load(value)
    return out


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", type=Path, default=None,
                   help="folder holding the datasets (default: $TACRECON_DATA, else the user cache dir)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default: 0)")


def build_parser() -> Parser:
    parser = Parser(prog="tacrecon", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)

    p = sub.add_parser("train", help="train a clean model and save it as a checkpoint")
    p.add_argument("--dataset", required=True)
    p.add_argument("--arch", required=True)
    p.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="TrainConfig overrides")
    add_common(p)

    p = sub.add_parser("list", help="list registered datasets or models")
    p.add_argument("what", choices=["datasets", "models"])

    p = sub.add_parser("demo", help="run the end-to-end demo on the bundled digits data")
    p.add_argument("--epochs", type=int, default=None)
    add_common(p)
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from tacrecon.workflows import train_clean

    device = pick_device(args.device)
    overrides = parse_sets(args.set)
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    result = train_clean(args.dataset, args.arch, args.out, root=args.data_root, device=device,
                         seed=args.seed, overrides=overrides)
    print(f"{args.arch} on {args.dataset}: ACC {result['acc']:.2%} in {result['seconds']:.0f} s -> {args.out}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from tacrecon.data import DATASETS
    from tacrecon.models import MODELS

    registry = DATASETS if args.what == "datasets" else MODELS
    for name in registry.names():
        doc = (registry.get(name).__doc__ or "").strip().splitlines()
        print(f"{name:18s} {doc[0] if doc else ''}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from tacrecon.workflows import demo

    return demo(device=pick_device(args.device), seed=args.seed, epochs=args.epochs)


COMMANDS = {"train": cmd_train, "list": cmd_list, "demo": cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 bad input, 130 interrupted)."""
    try:
        args = build_parser().parse_args(argv)
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
        return COMMANDS[args.command](args)
    except TacreconError as e:
        print(f"tacrecon: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tacrecon: interrupted", file=sys.stderr)
        return 130
