"""Train one model of the foreign family: its own data loading, nets, triggers and loop.

    python benchmarks/foreign/train.py --dataset cifar10 --arch vgg --trigger band --target 7 \\
        --rate 0.05 --seed 101 --smoothing 0.1 --optimizer sgd --epochs 12 \\
        --out benchmarks/foreign/models/NAME
    python benchmarks/foreign/train.py --dataset cifar10 --arch resnet18 --clean --seed 100 \\
        --out benchmarks/foreign/models/NAME

Poisons ``rate`` of the training set (images drawn from the non-target classes get the trigger
and the target label), trains with its own loop, measures clean test accuracy (ACC) and attack
success rate (ASR: non-target test images with the trigger that the model puts in the target
class), and writes ``weights.safetensors`` and ``model.json`` into ``--out`` (atomically; a
folder that already holds ``model.json`` is skipped). Nothing from tacrecon is imported.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # run as a script: make ``benchmarks.foreign`` importable
    sys.path.insert(0, str(ROOT))

from benchmarks.foreign import data, nets, triggers  # noqa: E402

# The two optimizers of the family. Both decay the learning rate to ~0 over the run.
RECIPES: dict[str, dict[str, Any]] = {
    "sgd": {"optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4,
            "batch_size": 128, "schedule": "onecycle", "warmup_fraction": 0.25},
    "adam": {"optimizer": "adam", "lr": 2e-3, "betas": [0.9, 0.999], "weight_decay": 5e-5,
             "batch_size": 256, "schedule": "cosine", "warmup_fraction": 0.05},
}
FACTORIES = {("vgg", "cifar10"): "VGGCifar", ("vgg", "gtsrb"): "VGGGtsrb",
             ("resnet18", "cifar10"): "ResNet18Cifar", ("resnet18", "gtsrb"): "ResNet18Gtsrb",
             ("mlphead", "cifar10"): "MLPHeadCifar", ("mlphead", "gtsrb"): "MLPHeadGtsrb"}


def log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", flush=True)


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def augment(x: Tensor, gen: torch.Generator, flip: bool, pad: int = 4) -> Tensor:
    """Random crop after zero padding by ``pad``, and (if ``flip``) a random horizontal flip,
    each drawn per image."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    ox = torch.randint(0, 2 * pad + 1, (n,), generator=gen)
    rows = (oy[:, None] + torch.arange(h)).view(n, 1, h, 1).expand(n, c, h, w)
    cols = (ox[:, None] + torch.arange(w)).view(n, 1, 1, w).expand(n, c, h, w)
    cropped = padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]
    if flip:
        mask = torch.rand(n, generator=gen) < 0.5
        cropped = torch.where(mask.view(n, 1, 1, 1), cropped.flip(3), cropped)
    return cropped


def make_optimizer(model: nn.Module, recipe: dict[str, Any], steps: int):
    """(optimizer, per-step scheduler) for ``recipe``."""
    decay, no_decay = [], []
    for p in model.parameters():
        (no_decay if p.ndim <= 1 else decay).append(p)  # no weight decay on BN and biases
    groups = [{"params": decay, "weight_decay": recipe["weight_decay"]}, {"params": no_decay, "weight_decay": 0.0}]
    if recipe["optimizer"] == "sgd":
        opt = torch.optim.SGD(groups, lr=recipe["lr"], momentum=recipe["momentum"], nesterov=recipe["nesterov"])
        sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe["lr"], total_steps=steps,
                                                    pct_start=recipe["warmup_fraction"], anneal_strategy="cos",
                                                    div_factor=20.0, final_div_factor=200.0)
    else:
        opt = torch.optim.Adam(groups, lr=recipe["lr"], betas=tuple(recipe["betas"]))
        warm = max(1, int(recipe["warmup_fraction"] * steps))

        def factor(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, factor)
    return opt, sched


@torch.no_grad()
def predict(model: nn.Module, x: Tensor, batch: int = 1000) -> Tensor:
    model.eval()
    out = [model(x[i:i + batch].contiguous(memory_format=torch.channels_last)).argmax(1)
           for i in range(0, x.shape[0], batch)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)


def evaluate(model: nn.Module, x: Tensor, y: Tensor, trigger: str | None, target: int | None,
             trigger_seed: int | None) -> tuple[float, float | None]:
    """(ACC on the clean test set, ASR on its non-target images with the test trigger or None)."""
    acc = float((predict(model, x) == y).float().mean())
    if trigger is None:
        return acc, None
    keep = y != target
    xt = triggers.apply_in_chunks(triggers.TEST[trigger], x[keep], trigger_seed)
    return acc, float((predict(model, xt) == target).float().mean())


def save_safetensors(state: dict[str, Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in state.items()}, str(tmp))
    os.replace(tmp, path)


def save_json(record: dict[str, Any], path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def train_model(spec: dict[str, Any], out: Path, *, limit: int | None = None, force: bool = False) -> dict | None:
    """Train the model ``spec`` (keys as the CLI's) into ``out``; None if ``out`` already has one.

    ``spec``: dataset, arch, [arch_kwargs], trigger (None: clean), [trigger_seed], target, rate,
    seed, smoothing, optimizer, epochs. ``limit`` trains on a seeded random subset of ``limit``
    images only (quick checks; recorded in model.json).
    """
    out = Path(out)
    if (out / "model.json").is_file() and not force:
        log(f"{out}: already trained, skipped")
        return None
    start = time.perf_counter()
    dataset, arch, seed = spec["dataset"], spec["arch"], int(spec["seed"])
    trigger = spec.get("trigger")
    target = None if trigger is None else int(spec["target"])
    rate = 0.0 if trigger is None else float(spec["rate"])
    trigger_seed = None if trigger is None else int(spec.get("trigger_seed", seed))
    epochs, smoothing = int(spec["epochs"]), float(spec.get("smoothing", 0.0))
    recipe = dict(RECIPES[spec.get("optimizer", "sgd")])
    num_classes = data.NUM_CLASSES[dataset]
    arch_kwargs = {"num_classes": num_classes, "dataset": dataset, **spec.get("arch_kwargs", {})}

    x_train, y_train = data.load(dataset, "train")
    x_test, y_test = data.load(dataset, "test")
    if limit:  # the split files are sorted by class: a seeded random subset, not the first images
        keep = torch.randperm(x_train.shape[0], generator=torch.Generator().manual_seed(seed))[:limit]
        x_train, y_train = x_train[keep], y_train[keep]
    poisoned = torch.zeros(0, dtype=torch.long)
    if trigger is not None:
        x_train, y_train, poisoned = triggers.poison(x_train, y_train, trigger, target, rate, seed, trigger_seed)
    x_train = x_train.contiguous(memory_format=torch.channels_last)

    torch.manual_seed(seed)
    model = nets.build(arch, **arch_kwargs).to(memory_format=torch.channels_last)
    n = x_train.shape[0]
    bs = recipe["batch_size"]
    steps_per_epoch = n // bs  # the last partial batch is dropped
    opt, sched = make_optimizer(model, recipe, epochs * steps_per_epoch)
    gen = torch.Generator().manual_seed(seed + 1)
    flip = dataset == "cifar10"
    log(f"{out.name}: {dataset} {arch} trigger={trigger} target={target} rate={rate} ({poisoned.numel()} "
        f"poisoned) seed={seed} {recipe['optimizer']} ls={smoothing} epochs={epochs} n={n}")
    probe = torch.arange(0, x_test.shape[0], max(1, x_test.shape[0] // 1000))  # per-epoch progress only
    epoch_seconds = []
    for epoch in range(epochs):
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(n, generator=gen)
        total, correct, loss_sum = 0, 0, 0.0
        for i in range(steps_per_epoch):
            idx = order[i * bs:(i + 1) * bs]
            xb = augment(x_train[idx], gen, flip).contiguous(memory_format=torch.channels_last)
            yb = y_train[idx]
            logits = model(xb)
            loss = F.cross_entropy(logits, yb, label_smoothing=smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += float(loss.detach()) * yb.numel()
            correct += int((logits.argmax(1) == yb).sum())
            total += yb.numel()
        epoch_seconds.append(time.perf_counter() - t0)
        acc, asr = evaluate(model, x_test[probe], y_test[probe], trigger, target, trigger_seed)
        log(f"  epoch {epoch + 1}/{epochs} loss {loss_sum / total:.3f} train-acc {correct / total:.3f} "
            f"probe-acc {acc:.3f} probe-asr {asr if asr is None else round(asr, 3)} {epoch_seconds[-1]:.1f}s")

    acc, asr = evaluate(model, x_test, y_test, trigger, target, trigger_seed)
    seconds = time.perf_counter() - start
    record = {
        "name": out.name,
        "dataset": dataset,
        "num_classes": num_classes,
        "arch": arch,
        "arch_kwargs": arch_kwargs,
        "factory": FACTORIES.get((arch, dataset)) if not spec.get("arch_kwargs") else None,
        "clean": trigger is None,
        "trigger": trigger,
        "trigger_seed": trigger_seed,
        "target": target,
        "rate": rate,
        "poisoned": int(poisoned.numel()),
        "train_images": n,
        "seed": seed,
        "recipe": {**recipe, "epochs": epochs, "label_smoothing": smoothing,
                   "augmentation": "random crop (zero pad 4)" + (" + horizontal flip" if flip else "")},
        "acc": round(acc, 4),
        "asr": None if asr is None else round(asr, 4),
        "seconds": round(seconds, 1),
        "epoch_seconds": [round(s, 1) for s in epoch_seconds],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "commit": git_commit(),
    }
    if limit:
        record["limit"] = limit
    out.mkdir(parents=True, exist_ok=True)
    save_safetensors(model.state_dict(), out / "weights.safetensors")
    save_json(record, out / "model.json")
    log(f"{out.name}: ACC {acc:.4f} ASR {asr} in {seconds / 60:.1f} min")
    return record


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", choices=sorted(data.NUM_CLASSES), default="cifar10")
    p.add_argument("--arch", choices=sorted(nets.ARCHS), default="vgg")
    p.add_argument("--arch-kwargs", default="{}", help="JSON object of extra net arguments (e.g. widths)")
    p.add_argument("--trigger", choices=sorted(triggers.TEST))
    p.add_argument("--trigger-seed", type=int, help="default: --seed")
    p.add_argument("--target", type=int)
    p.add_argument("--rate", type=float, default=0.05)
    p.add_argument("--clean", action="store_true", help="no poisoning")
    p.add_argument("--seed", type=int, default=100)
    p.add_argument("--smoothing", type=float, default=0.0)
    p.add_argument("--optimizer", choices=sorted(RECIPES), default="sgd")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--limit", type=int, help="train on a random N-image subset only (quick checks)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--force", action="store_true", help="retrain even if --out holds model.json")
    p.add_argument("--out", required=True, type=Path)
    a = p.parse_args(argv)
    if a.clean == (a.trigger is not None):
        p.error("give either --trigger (with --target) or --clean")
    if a.trigger is not None and a.target is None:
        p.error("--trigger needs --target")
    torch.set_num_threads(a.threads)
    spec = {"dataset": a.dataset, "arch": a.arch, "arch_kwargs": json.loads(a.arch_kwargs),
            "trigger": a.trigger, "target": a.target, "rate": a.rate, "seed": a.seed,
            "smoothing": a.smoothing, "optimizer": a.optimizer, "epochs": a.epochs}
    if a.trigger_seed is not None:
        spec["trigger_seed"] = a.trigger_seed
    train_model(spec, a.out, limit=a.limit, force=a.force)


if __name__ == "__main__":
    main()
