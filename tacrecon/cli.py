"""Command line: ``tacrecon {train,attack,list,demo}``. The only place that picks a device.

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

    p = sub.add_parser("attack", help="train a backdoored model and save it as an attack artifact")
    p.add_argument("name", nargs="?", default=None, help="attack name (see `tacrecon list attacks`)")
    p.add_argument("--clean", action="store_true", help="no attack: the clean reference model (= `none`)")
    p.add_argument("--dataset", required=True)
    p.add_argument("--arch", required=True)
    p.add_argument("--target", type=int, default=None, help="target class (default 0)")
    p.add_argument("--poison-rate", type=float, default=None, help="fraction of the training split (default 0.1)")
    p.add_argument("--label-mode", choices=["all2one", "all2all"], default=None)
    p.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    p.add_argument("--out", type=Path, required=True, help="artifact folder (reused when complete)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="attack hyperparameters")
    p.add_argument("--train-set", nargs="*", default=[], metavar="KEY=VALUE", help="TrainConfig overrides")
    add_common(p)

    p = sub.add_parser("list", help="list registered datasets, models or attacks")
    p.add_argument("what", choices=["datasets", "models", "attacks"])

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


def cmd_attack(args: argparse.Namespace) -> int:
    from tacrecon.artifact import run_attack

    if args.clean == (args.name is not None and args.name != "none"):
        raise TacreconError("give an attack name or --clean (not both)")
    name = "none" if args.clean else args.name
    attack_kwargs = parse_sets(args.set)
    for key, value in (("target", args.target), ("rate", args.poison_rate), ("label_mode", args.label_mode)):
        if value is not None:
            attack_kwargs[key] = value
    train_overrides = parse_sets(args.train_set)
    if args.epochs is not None:
        train_overrides["epochs"] = args.epochs
    r = run_attack(name, args.dataset, args.arch, args.out, root=args.data_root, device=pick_device(args.device),
                   seed=args.seed, attack_kwargs=attack_kwargs, train_overrides=train_overrides)
    asr = "" if r["asr"] is None else f", ASR {r['asr']:.2%}, RA {r['ra']:.2%}"
    print(f"{name} on {args.dataset}/{args.arch}: ACC {r['acc']:.2%}{asr} ({r['seconds']:.0f} s) -> {args.out}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from tacrecon.attacks import ATTACKS
    from tacrecon.data import DATASETS
    from tacrecon.models import MODELS

    registry = {"datasets": DATASETS, "models": MODELS, "attacks": ATTACKS}[args.what]
    for name in registry.names():
        paragraph = (registry.get(name).__doc__ or "").strip().split("\n\n")[0]
        print(f"{name:18s} {' '.join(paragraph.split())}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from tacrecon.workflows import demo

    return demo(device=pick_device(args.device), seed=args.seed, epochs=args.epochs)


COMMANDS = {"train": cmd_train, "attack": cmd_attack, "list": cmd_list, "demo": cmd_demo}


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
