"""Trace TAC's prune-then-fine-tune repair epoch by epoch on a TUNING model (seed 100+).

Usage: python benchmarks/tac_repair_trace_cpu.py ATTACK PRUNE_STOP LR EPOCHS [BETA] [RECOMPUTE 0|1] [RANK abs|std|mean]
           [--data-root DIR]

Prunes the latent units of s_t (target 0) until ||s_t|| >= PRUNE_STOP x median (RANK: by |s_t|,
the default of ``prune_plan``, or by |s_t| over the units' clean std / mean), then fine-tunes with
the head frozen and the pruned columns held at 0, with the TAC loss of weight BETA (s_t of the
pruned model, recomputed before every epoch when RECOMPUTE is 1). After pruning and after each
epoch it prints ACC and ASR on 500 held-out training images (never the test split) and the
target's relative norm. Prints only; the traces quoted in docs/benchmarks.md are kept in
docs/benchmarks/tac_repair_trace_cpu.md.
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch

from tacrecon.artifact import load_artifact
from tacrecon.data import clean_subset, load_dataset
from tacrecon.defenses.base import columns_held_at_zero
from tacrecon.metrics import accuracy, attack_rates
from tacrecon.models import as_classifier, latents_of
from tacrecon.stats import relative_scores
from tacrecon.tac.detect import reconstruct
from tacrecon.tac.prune import prune_plan
from tacrecon.tac.repair import unlearn_loss
from tacrecon.train import TrainConfig, fit

from common import held_out

ARTIFACTS = Path(__file__).resolve().parent.parent / "docs" / "results" / "tuning" / "artifacts" / "cifar10" / "resnet_small"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("attack")
    parser.add_argument("stop", type=float)
    parser.add_argument("lr", type=float)
    parser.add_argument("epochs", type=int)
    parser.add_argument("beta", type=float, nargs="?", default=0.0)
    parser.add_argument("recompute", type=int, nargs="?", default=0)
    parser.add_argument("rank", nargs="?", default="abs", choices=["abs", "std", "mean"])
    parser.add_argument("--seed", type=int, default=100)
    parser.add_argument("--data-root", default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = load_dataset("cifar10", root=args.data_root)
    art = load_artifact(ARTIFACTS / args.attack / f"seed{args.seed}")
    clean = clean_subset(data.train, 0.05, None, args.seed, art.poison_index)
    held = held_out(data.train, len(clean), 500, args.seed, art.poison_index)
    model, t = as_classifier(copy.deepcopy(art.model)), 0
    head = model.get_classifier()
    z = latents_of(model, clean.x)
    scale = {"abs": None, "std": z.std(0), "mean": z.mean(0)}[args.rank]
    units, _ = prune_plan(z, head.weight, head.bias, [t], args.stop, 1, 64,
                          scale=None if scale is None else scale.clamp_min(1e-6))
    print(f"pruned {len(units)} units", flush=True)

    def report(tag: str) -> None:
        asr = attack_rates(model, held, art.attack, art.attack.label_map())[0] if args.attack != "none" else float("nan")
        rel = relative_scores(reconstruct(model, latents_of(model, clean.x)).norms)[t].item()
        print(f"{tag}: val acc {accuracy(model, held):.3f} asr {asr:.3f} rel {rel:.2f}", flush=True)

    cfg = TrainConfig(epochs=args.epochs, lr=args.lr, batch_size=128, label_smoothing=0.0, schedule="cosine",
                      crop_padding=4, flip=False, progress=False, weight_decay=5e-4)
    with columns_held_at_zero(head, units):
        report("pruned")
        shifts = [reconstruct(model, latents_of(model, clean.x)).shifts[[t]].float()]

        def hook(epoch: int) -> None:
            if epoch > 0:
                report(f"epoch {epoch}")
            if args.recompute:
                shifts[0] = reconstruct(model, latents_of(model, clean.x)).shifts[[t]].float()

        params = [p for p in model.parameters() if not any(p is q for q in head.parameters())]
        fit(model, clean, cfg, generator=torch.Generator().manual_seed(args.seed),
            loss_fn=unlearn_loss(shifts, [t], args.beta), params=params, epoch_hook=hook, desc="trace")
        report("final")


if __name__ == "__main__":
    main()
