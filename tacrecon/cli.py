"""Command line: ``tacrecon {train,attack,scan,repair,defend,bench,report,list,demo}``. The only place that picks a device.

Bad input of any kind prints one line ``tacrecon: error: ...`` and exits with code 2; ``bench``
exits with 1 when some cells failed (each has its ``.failed.json``) and the others ran.
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from pathlib import Path
from typing import Any, Sequence

import torch
import yaml

from tacrecon.errors import TacreconError
from tacrecon.metrics import per_backdoor_text
from tacrecon.page import check_summary, pairwise_verdict, verdict

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
        device = torch.device(name)
    except RuntimeError:
        raise TacreconError(f"unknown device {name!r}; use auto, cpu or cuda[:N]") from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise TacreconError(f"device {name!r} requested but this machine has {torch.cuda.device_count()} GPU(s)")
    return device


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """``["lr=0.1", "flip=false"]`` -> ``{"lr": 0.1, "flip": False}`` (values parsed as YAML)."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise TacreconError(f"--set expects key=value, got {item!r}")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise TacreconError(f"--set {item!r}: the value is not valid YAML") from None
    return out


def add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-root", type=Path, default=None,
                   help="folder holding the datasets (default: $TACRECON_DATA, else the user cache dir)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")
    p.add_argument("--seed", type=int, default=0, help="seed of every random choice (default: 0)")


def add_model(p: argparse.ArgumentParser, dataset_required: bool) -> None:
    """MODEL and how to load it, and the defender's clean set: what scan, repair and defend share."""
    p.add_argument("model", help="checkpoint or attack artifact folder, file.py:Name (with --weights), or attack_result.pt")
    p.add_argument("--dataset", required=dataset_required,
                   help="the dataset the model classifies" + ("" if dataset_required else " (default: an artifact's own)"))
    p.add_argument("--weights", default=None, help="weights of a file.py:Name model (.safetensors or .pt)")
    p.add_argument("--head", default=None, help="name of the final linear layer (default: found automatically)")
    p.add_argument("--normalize", default=None, metavar="MEAN,...,STD,...",
                   help="normalization the model expects of its input (it is then fed [0, 1] images)")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--clean-fraction", type=float, default=None, help="share of the training split (default 0.05)")
    group.add_argument("--clean-n", type=int, default=None, help="number of clean samples")


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

    for command, text in (("scan", "scan a model for a backdoor with TAC (clean data only)"),
                          ("repair", "scan a model, then remove the backdoor: prune the latent units of its TAC and fine-tune")):
        p = sub.add_parser(command, help=text)
        add_model(p, dataset_required=True)
        p.add_argument("--json", type=Path, default=None, help="write the result as JSON")
        p.add_argument("--plot", type=Path, default=None, help="write a bar chart of the per-class norms (PNG)")
        p.add_argument("--html", type=Path, default=None, help="write a one-page report (HTML, images embedded)")
        p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="TAC hyperparameters")
        p.add_argument("--pairwise", action="store_true",
                       help="also the pairwise look, for all-to-all and source-specific backdoors (opt-in: it flags "
                            "some clean models); its own line, and a repair repairs its pairs' targets too")
        if command == "repair":
            p.add_argument("--out", type=Path, required=True, help="output folder")
            p.add_argument("--force-target", type=int, default=None,
                           help="repair this class instead of the flagged ones (also when none is flagged)")
        add_common(p)

    p = sub.add_parser("defend", help="run any registered defense on any model")
    p.add_argument("name", help="defense name (see `tacrecon list defenses`)")
    add_model(p, dataset_required=False)
    p.add_argument("--out", type=Path, required=True, help="output folder (reused when complete)")
    p.add_argument("--budget", default=None, help="named budget, e.g. cpu (default: the published recipe)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="defense hyperparameters")
    add_common(p)

    p = sub.add_parser("bench", help="run a grid of attacks x defenses x seeds (resumable)")
    p.add_argument("config", type=Path, help="grid config (YAML), e.g. configs/smoke.yaml")
    p.add_argument("--out", type=Path, required=True, help="results folder (finished cells are skipped)")
    p.add_argument("--only", nargs="*", default=[], metavar="KEY=V1[,V2]",
                   help="run only the cells whose dataset/arch/attack/seed/defense match")
    p.add_argument("--artifacts", type=Path, default=None, help="attack artifacts folder (default: OUT/artifacts)")
    p.add_argument("--workers", type=int, default=1, help="parallel jobs (local backend; default 1)")
    p.add_argument("--threads", type=int, default=None, help="torch threads per job (default: cores / workers)")
    p.add_argument("--backend", choices=["local", "ray"], default="local")
    p.add_argument("--address", default=None, help="Ray cluster address (default: a local Ray instance)")
    p.add_argument("--dry-run", action="store_true",
                   help="only print what would run and its cost, estimated from the finished cells")
    p.add_argument("--data-root", type=Path, default=None,
                   help="folder holding the datasets (default: $TACRECON_DATA, else the user cache dir)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda[:N] (default: auto)")

    p = sub.add_parser("report", help="tables and plots of a bench results folder")
    p.add_argument("dir", type=Path, help="the --out folder of `tacrecon bench`")
    p.add_argument("--format", choices=["md", "html", "csv"], default="md", help="what to print (all are written)")
    p.add_argument("--development", type=Path, default=None,
                   help="another bench folder: the development grid, reported below DIR's (the confirmatory one)")

    p = sub.add_parser("list", help="list registered datasets, models, attacks or defenses")
    p.add_argument("what", choices=["datasets", "models", "attacks", "defenses"])

    p = sub.add_parser("demo", help="attack -> scan -> repair on the bundled digits data (about a minute)")
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="keep the artifacts in this folder")
    add_common(p)
    return parser


def cmd_train(args: argparse.Namespace) -> int:
    from tacrecon.commands.train import train_clean

    device = pick_device(args.device)
    train = parse_sets(args.set)
    if args.epochs is not None:
        train["epochs"] = args.epochs
    result = train_clean(args.dataset, args.arch, args.out, root=args.data_root, device=device,
                         seed=args.seed, train=train)
    print(f"{args.arch} on {args.dataset}: ACC {result['acc']:.2%} in {result['seconds']:.0f} s -> {args.out}")
    return 0


def cmd_attack(args: argparse.Namespace) -> int:
    from tacrecon.artifact import run_attack

    if args.clean == (args.name is not None and args.name != "none"):
        raise TacreconError("give an attack name or --clean (not both)")
    name = "none" if args.clean else args.name
    config = parse_sets(args.set)
    for key, value in (("target", args.target), ("rate", args.poison_rate), ("label_mode", args.label_mode)):
        if value is not None:
            config[key] = value
    train = parse_sets(args.train_set)
    if args.epochs is not None:
        train["epochs"] = args.epochs
    r = run_attack(name, args.dataset, args.arch, args.out, root=args.data_root, device=pick_device(args.device),
                   seed=args.seed, config=config, train=train)
    asr = "" if r["asr"] is None else f", ASR {r['asr']:.2%}, RA {r['ra']:.2%}{per_backdoor_text(r)}"
    print(f"{name} on {args.dataset}/{args.arch}: ACC {r['acc']:.2%}{asr} ({r['seconds']:.0f} s) -> {args.out}")
    return 0


def scan_options(args: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments that ``scan`` and ``repair`` share."""
    return {"root": args.data_root, "device": pick_device(args.device), "seed": args.seed, "weights": args.weights,
            "head": args.head, "normalize": args.normalize, "clean_fraction": args.clean_fraction,
            "clean_n": args.clean_n, "json": args.json, "plot": args.plot, "html": args.html,
            "command": args.command_line, "config": {**parse_sets(args.set), **({"pairwise": True} if args.pairwise else {})}}


def cmd_scan(args: argparse.Namespace) -> int:
    from tacrecon.commands.scan import run_scan

    r = run_scan(args.model, args.dataset, **scan_options(args))
    print(f"{args.model}: {verdict(r)} [{r['total_seconds']:.1f} s, {r['clean_samples']} clean samples]")
    if "pairwise_flagged" in r["scores"]:
        print(f"{args.model}: {pairwise_verdict(r)}")
    return 0


def cmd_repair(args: argparse.Namespace) -> int:
    from tacrecon.commands.repair import run_repair

    options = scan_options(args)
    if args.force_target is not None:
        options["config"]["force_target"] = args.force_target
    r = run_repair(args.model, args.dataset, args.out, **options)
    print(f"{args.model}: {verdict(r)}")
    if "pairwise_flagged" in r["scores"]:
        print(f"{args.model}: {pairwise_verdict(r)}")
    b, a = r["before"], r["after"]
    line = f"ACC {b['acc']:.2%} -> {a['acc']:.2%}"
    if "asr" in b:
        line += f", ASR {b['asr']:.2%} -> {a['asr']:.2%}, RA {b['ra']:.2%} -> {a['ra']:.2%}, DER {r['der']:.3f}"
        line += per_backdoor_text(b, a)
    forced, paired = r["defense_config"]["force_target"], r["targets"][len(r["scores"]["targets"]):]
    which = (f" (class {forced}, forced)" if forced >= 0 else
             f" (classes {', '.join(map(str, r['targets']))}, {len(paired)} from the pairwise look)" if paired else "")
    print(("repaired" + which + ": " if r["repaired"] else "left unchanged: ") + line + f" -> {args.out}")
    summary = check_summary(r["stats"])
    if summary:
        print(summary)
    return 0


def cmd_defend(args: argparse.Namespace) -> int:
    from tacrecon.commands.defend import run_defense

    r = run_defense(args.name, args.model, args.out, dataset=args.dataset, root=args.data_root,
                    device=pick_device(args.device), budget=args.budget, config=parse_sets(args.set),
                    clean_fraction=args.clean_fraction, clean_n=args.clean_n, seed=args.seed, weights=args.weights,
                    head=args.head, normalize=args.normalize)
    b, a = r["before"], r["after"]
    line = f"ACC {b['acc']:.2%} -> {a['acc']:.2%}"
    if b.get("asr") is not None:
        line += f", ASR {b['asr']:.2%} -> {a['asr']:.2%}, RA {b['ra']:.2%} -> {a['ra']:.2%}, DER {r['der']:.3f}"
        line += per_backdoor_text(b, a)
    found = "" if r["target"] is None else f", flagged class {r['target']}"
    what = f"{r['attack']} ({r['dataset']}/{r['arch']})" if "attack" in r else f"{args.model} ({r['dataset']})"
    print(f"{args.name} on {what}: {line}{found} ({r['seconds']:.0f} s) -> {args.out}")
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    from tacrecon.bench import load_config, parse_only, plan, run_grid

    config = load_config(args.config)
    only = parse_only(args.only)
    device = str(pick_device(args.device))
    s = run_grid(config, args.out, only=only, workers=args.workers, backend=args.backend, root=args.data_root,
                 device=device, address=args.address, threads=args.threads, dry_run=args.dry_run,
                 artifacts=args.artifacts)
    if args.dry_run:
        _, todo = plan(config, args.out, only)
        for cell in todo:
            print(cell.label)
    print(f"{config.name}: {s['cells']} cells, {s['finished_before']} already finished, {s['to_run']} to run "
          f"({s['stale']} of them stale, {s['artifacts_to_train']} attack artifacts to train)" +
          ("" if args.dry_run or not s["to_run"] else f"; done {s['done']}, failed {s['failed']}"
                                                      + (f", {s['skipped']} left to another run" if s["skipped"] else "")
                                                      + f" in {s['seconds'] / 60:.1f} min") + f" -> {args.out}")
    if args.dry_run:
        print(f"cost: {s['estimate']}")
    return 1 if s["failed"] else 0


def cmd_report(args: argparse.Namespace) -> int:
    from tacrecon.bench import write_report

    print(write_report(args.dir, args.development)[args.format], end="")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from tacrecon.attacks import ATTACKS
    from tacrecon.data import DATASETS
    from tacrecon.defenses import DEFENSES
    from tacrecon.models import MODELS
    from tacrecon.registry import Registry

    registries: dict[str, Registry[Any]] = {"datasets": DATASETS, "models": MODELS, "attacks": ATTACKS,
                                             "defenses": DEFENSES}
    registry = registries[args.what]
    for name in registry.names():
        entry = registry.get(name)
        paragraph = " ".join((entry.__doc__ or "").strip().split("\n\n")[0].split())
        paper = getattr(entry, "paper", "")
        print(f"{name:18s} {paragraph}" + (f" [{paper}]" if paper else ""))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from tacrecon.commands.demo import demo

    return demo(device=pick_device(args.device), seed=args.seed, epochs=args.epochs, out=args.out)


COMMANDS = {"train": cmd_train, "attack": cmd_attack, "scan": cmd_scan, "repair": cmd_repair,
            "defend": cmd_defend, "bench": cmd_bench, "report": cmd_report, "list": cmd_list,
            "demo": cmd_demo}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 1 some bench cells failed, 2 bad input, 130 interrupted)."""
    try:
        argv = list(sys.argv[1:] if argv is None else argv)
        args = build_parser().parse_args(argv)
        args.command_line = " ".join(["tacrecon", *map(shlex.quote, map(str, argv))])
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
        if getattr(args, "out", None) is not None:  # a bad --out is said now, not after the work
            from tacrecon.io import check_output_folder

            check_output_folder(args.out)
        return COMMANDS[args.command](args)
    except TacreconError as e:
        print(f"tacrecon: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a path that cannot be read or written: the user's to fix, not a traceback
        print(f"tacrecon: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tacrecon: interrupted", file=sys.stderr)
        return 130
