"""What the fine-tuning defenses share: their hyperparameters and one call into the training loop.

BackdoorBench's defense recipe (docs/reference-hyperparameters.md, 4.0): SGD with momentum 0.9
(no nesterov), weight decay 5e-4, cosine decay over the epochs, batch 256, lr 0.01, the train
augmentation (random crop with 4-pixel padding on 32x32 images; BackdoorBench also flips CIFAR-10,
which is off here by default because flips change the meaning of digits and traffic signs).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from tacrecon.data.split import Split
from tacrecon.defenses.base import Defense
from tacrecon.errors import TacreconError
from tacrecon.train import BatchHook, LossFn, TrainConfig, fit


@dataclass
class FinetuneDefense(Defense):
    """Base of the defenses that fine-tune on the clean set (their shared fields).

    Args:
        epochs: passes over the clean set.
        lr: peak SGD learning rate (cosine decay to 0 over the run).
        batch_size: samples per step.
        momentum, weight_decay: SGD's (weight decay not on biases and norm weights; BackdoorBench
            decays every parameter).
        crop_padding: random-crop shift in pixels (-1: 1/8 of the image side, 4 on 32x32; 0: off),
            padding by reflection (BackdoorBench's RandomCrop pads with zeros).
        flip: random horizontal flips (BackdoorBench: on for CIFAR-10).
    """

    epochs: int = 100
    lr: float = 0.01
    batch_size: int = 256
    momentum: float = 0.9
    weight_decay: float = 5e-4
    crop_padding: int = -1
    flip: bool = False

    def validate(self) -> None:
        if self.epochs < 0 or self.batch_size < 1 or self.lr < 0 or self.weight_decay < 0:
            raise TacreconError(f"{type(self).__name__}: need epochs >= 0, batch_size >= 1, lr >= 0 and "
                                f"weight_decay >= 0, got {self.epochs}, {self.batch_size}, {self.lr}, "
                                f"{self.weight_decay}")
        if not 0 <= self.momentum < 1:
            raise TacreconError(f"{type(self).__name__}: momentum must be in [0, 1), got {self.momentum}")

    def train_config(self, clean: Split, **changes: Any) -> TrainConfig:
        """The :class:`TrainConfig` of this defense's fine-tune on images like ``clean``'s."""
        pad = self.crop_padding if self.crop_padding >= 0 else clean.x.shape[-1] // 8
        values = dict(epochs=self.epochs, lr=self.lr, batch_size=self.batch_size, momentum=self.momentum,
                      nesterov=False, weight_decay=self.weight_decay, label_smoothing=0.0, schedule="cosine",
                      warmup=0.0, crop_padding=pad, flip=self.flip, progress=True)
        return TrainConfig.from_dict({**values, **changes})

    def finetune(self, model: nn.Module, clean: Split, generator: torch.Generator, loss_fn: LossFn | None = None,
                 params: Iterable[nn.Parameter] | None = None, batch_hook: BatchHook | None = None,
                 epoch_hook: Callable[[int], None] | None = None, **changes: Any) -> list[float]:
        """Fine-tune ``model`` in place on ``clean`` with this defense's recipe (``changes`` to
        the :class:`TrainConfig` on top; the hooks as in :func:`~tacrecon.train.fit`); returns the
        loss of each epoch."""
        return fit(model, clean, self.train_config(clean, **changes), generator=generator, loss_fn=loss_fn,
                   params=params, batch_hook=batch_hook, epoch_hook=epoch_hook, desc=f"{self.name} fine-tune")
