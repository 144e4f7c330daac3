"""The one training loop, used for clean, poisoned and defense training.

The data stays on the device as two tensors; each epoch is a random permutation drawn from a
``torch.Generator`` so a CPU run is bit-for-bit repeatable; augmentation is batched on the device.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from tacrecon.config import Config
from tacrecon.data.augment import augment
from tacrecon.data.split import Split
from tacrecon.errors import TacreconError

log = logging.getLogger(__name__)

LossFn = Callable[[nn.Module, Tensor, Tensor], Tensor]
BatchHook = Callable[[Tensor, Tensor, torch.Generator], tuple[Tensor, Tensor]]
StepFn = Callable[..., Tensor]


@dataclass
class TrainConfig(Config):
    """Hyperparameters of :func:`fit`. The defaults are the CPU protocol recipe (docs/benchmarks.md).

    lr is the peak learning rate for a batch of ``batch_size``; ``schedule`` is ``onecycle``
    (linear warm-up over ``warmup`` of the steps, then linear decay to 0), ``cosine`` (cosine
    decay from lr, no warm-up) or ``constant``. ``amp``: bf16 autocast on CUDA (no effect on the
    CPU), for every loop that uses this config, the defenses' fine-tunes included (BackdoorBench:
    fp16 AMP in FT, FP and NC; fp32 in FT-SAM's loop and NAD's student).
    """

    epochs: int = 18
    batch_size: int = 256
    lr: float = 0.2
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    label_smoothing: float = 0.0
    schedule: str = "onecycle"
    warmup: float = 0.2
    crop_padding: int = 4
    flip: bool = True
    channels_last: bool = True
    amp: bool = True
    progress: bool = True

    def validate(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.lr < 0:
            raise TacreconError(f"bad TrainConfig: epochs={self.epochs}, batch_size={self.batch_size}, lr={self.lr}")
        if self.schedule not in ("onecycle", "cosine", "constant"):
            raise TacreconError(f"schedule must be onecycle, cosine or constant, got {self.schedule!r}")
        if not 0 <= self.warmup < 1 or not 0 <= self.label_smoothing < 1:
            raise TacreconError("warmup and label_smoothing must be in [0, 1)")


def lr_factor(cfg: TrainConfig, step: int, total: int) -> float:
    """Multiplier of the peak lr at ``step`` of ``total``."""
    t = step / max(total, 1)
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * t))
    if t < cfg.warmup:
        return t / cfg.warmup
    return max(0.0, (1 - t) / (1 - cfg.warmup))


def make_optimizer(params: Iterable[nn.Parameter], cfg: TrainConfig) -> torch.optim.SGD:
    """SGD with momentum and nesterov; no weight decay on biases and norm weights (1-D params)."""
    params = [p for p in params if p.requires_grad]
    decay = [p for p in params if p.ndim > 1]
    no_decay = [p for p in params if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov and cfg.momentum > 0)


def cross_entropy(cfg: TrainConfig) -> LossFn:
    """The default loss: label-smoothed cross-entropy of ``model(x)``."""
    return lambda model, x, y: F.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)


def fit(model: nn.Module, data: Split, cfg: TrainConfig | None = None, *,
        generator: torch.Generator | None = None, loss_fn: LossFn | None = None,
        batch_hook: BatchHook | None = None, params: Iterable[nn.Parameter] | None = None,
        epoch_hook: Callable[[int], None] | None = None, desc: str = "train",
        step_fn: StepFn | None = None) -> list[float]:
    """Train ``model`` in place on ``data`` and return the mean loss of each epoch.

    Args:
        model: a classifier taking images in [0, 1], on ``data.device``.
        data: the training split (x (N, C, H, W) in [0, 1], y (N,)); an epoch leaves out a last
            batch of fewer than :data:`MIN_TAIL` samples (:func:`batches_per_epoch`).
        cfg: hyperparameters (default: ``TrainConfig()``).
        generator: CPU generator for the order and augmentation (default: seeded 0).
        loss_fn: ``(model, x, y) -> scalar``; default label-smoothed cross-entropy.
        batch_hook: ``(x, y, generator) -> (x, y)`` applied after augmentation (e.g. poisoning
            on the fly).
        params: the parameters to train (default: all of ``model``).
        epoch_hook: called with the epoch number before each epoch (e.g. to recompute a target
            from the current model); the model is put back in train mode after it.
        desc: label of the progress bar.
        step_fn: ``(model, opt, loss_fn, x, y, amp=...) -> loss`` making one optimizer step
            (default :func:`train_step`; e.g. a SAM step).
    """
    cfg = cfg or TrainConfig()
    cfg.validate()
    if len(data) == 0:
        raise TacreconError("cannot train on an empty split")
    generator = generator or torch.Generator().manual_seed(0)
    loss_fn = loss_fn or cross_entropy(cfg)
    step_fn = step_fn or train_step
    opt = make_optimizer(params if params is not None else model.parameters(), cfg)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(memory_format=fmt)
    steps_per_epoch = batches_per_epoch(len(data), cfg.batch_size)
    total, step, history = cfg.epochs * steps_per_epoch, 0, []
    bar = tqdm(total=total, desc=desc, disable=None if cfg.progress else True, leave=False)
    model.train()
    with global_rng_from(generator, data.device):
        for epoch in range(cfg.epochs):
            if epoch_hook is not None:
                epoch_hook(epoch)
                model.train()
            order = torch.randperm(len(data), generator=generator).to(data.device)
            losses = []
            for i in range(steps_per_epoch):
                idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
                x = augment(data.x[idx], generator, cfg.crop_padding, cfg.flip)
                y = data.y[idx]
                if batch_hook is not None:
                    x, y = batch_hook(x, y, generator)
                for group in opt.param_groups:
                    group["lr"] = cfg.lr * lr_factor(cfg, step, total)
                loss = step_fn(model, opt, loss_fn, x.contiguous(memory_format=fmt), y, amp=cfg.amp)
                losses.append(loss)
                step += 1
                bar.update()
            history.append(float(torch.stack(losses).mean()))
            bar.set_postfix(epoch=epoch + 1, loss=f"{history[-1]:.3f}")
            log.info("%s epoch %d/%d loss %.4f", desc, epoch + 1, cfg.epochs, history[-1])
    bar.close()
    model.eval()
    return history


# a last batch smaller than this is left out of the epoch: batch norm's statistics of a handful of
# images (2 of a 258-image clean set at batch 128) are noise, and a step on them wrecked a repair
MIN_TAIL = 8


def batches_per_epoch(n: int, batch_size: int) -> int:
    """Batches of an epoch over ``n`` samples: the last, partial one only if it holds at least
    :data:`MIN_TAIL` samples (or is the only batch)."""
    full, tail = divmod(n, batch_size)
    return full + (1 if tail >= MIN_TAIL or full == 0 else 0)


@contextmanager
def global_rng_from(generator: torch.Generator, device: torch.device) -> Iterator[None]:
    """torch's global generator of ``device`` (dropout draws from it) seeded from ``generator``'s
    current state for the duration, and restored after: a run then comes out the same whatever ran
    before it in the process. ``generator``'s own state is only read."""
    seed = int.from_bytes(hashlib.sha256(generator.get_state().numpy().tobytes()).digest()[:8], "little") >> 1
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else []):
        torch.default_generator.manual_seed(seed)
        if cuda:
            torch.cuda.manual_seed(seed)
        yield


def train_step(model: nn.Module, opt: torch.optim.Optimizer, loss_fn: LossFn, x: Tensor, y: Tensor,
               amp: bool) -> Tensor:
    """One SGD step; bf16 autocast on CUDA when ``amp``. Returns the detached loss."""
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp and x.is_cuda):
        loss = loss_fn(model, x, y)
    if not torch.isfinite(loss):
        raise TacreconError(f"training diverged (loss {float(loss)}); lower the learning rate")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return loss.detach()
