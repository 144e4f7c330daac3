"""What the learned-trigger attacks (Input-Aware, LIRA) share: a small conv generator network,
the diversity loss, and the co-training loop that trains a classifier with the recipe of
:func:`tacrecon.train.fit` while a generator learns its trigger.

Nothing here is registered: the attacks that use these pieces live in their own files.
"""

from __future__ import annotations

import logging
import math
from typing import Callable, ClassVar, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm.auto import tqdm

from tacrecon.attacks.base import Attack
from tacrecon.data.augment import augment
from tacrecon.data.split import Dataset, Split
from tacrecon.train import LossFn, TrainConfig, lr_factor, make_optimizer, train_step

log = logging.getLogger(__name__)
# (step, batch indices (B,), augmented images (B, C, H, W), labels (B,)) -> the classifier's loss
BatchLoss = Callable[[int, Tensor, Tensor, Tensor], LossFn]


def conv_block(c_in: int, c_out: int, relu: bool = True) -> nn.Sequential:
    """3x3 conv (with bias) -> BN -> optional ReLU, the block of BackdoorBench's generators."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out)]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class EncoderDecoder(nn.Module):
    """A conv encoder-decoder without skip connections, ending in ``tanh``.

    The shape of BackdoorBench's Input-Aware generator, with its width as a parameter: ``depth``
    levels of two conv blocks and a 2x2 max-pool (widths ``width * 2**i``), a middle block, then
    ``depth`` levels of bilinear upsampling and two conv blocks back to ``out_chans``; the last
    block has no ReLU. Without skips the output cannot copy the input pixel for pixel, so a
    trigger has to be synthesised from a coarse code of the image.

    Args:
        in_chans: image channels.
        out_chans: output channels (image channels for a pattern, 1 for a mask).
        width: channels of the first level (BackdoorBench: 32).
        depth: number of pooling levels; H and W need not be multiples of ``2**depth``.

    Shape:
        forward: (N, in_chans, H, W) -> (N, out_chans, H, W), values in (-1, 1).
    """

    def __init__(self, in_chans: int, out_chans: int, width: int = 16, depth: int = 3) -> None:
        super().__init__()
        widths = [width * 2 ** i for i in range(depth)]
        self.down = nn.ModuleList()
        c = in_chans
        for w in widths:
            self.down.append(nn.Sequential(conv_block(c, w), conv_block(w, w)))
            c = w
        self.middle = conv_block(c, c)
        self.up = nn.ModuleList()
        for i in reversed(range(depth)):
            nxt = widths[i - 1] if i > 0 else out_chans
            self.up.append(nn.Sequential(conv_block(c, c), conv_block(c, nxt, relu=i > 0)))
            c = nxt

    def forward(self, x: Tensor) -> Tensor:
        sizes = []
        for block in self.down:
            x = block(x)
            sizes.append(x.shape[-2:])
            x = F.max_pool2d(x, 2, ceil_mode=True)
        x = self.middle(x)
        for block, size in zip(self.up, reversed(sizes)):
            x = block(F.interpolate(x, size=size, mode="bilinear", align_corners=False))
        return torch.tanh(x)


def seeded_net(seed: int, *args: int, **kwargs: int) -> EncoderDecoder:
    """An :class:`EncoderDecoder` initialised from a private RNG seeded with ``seed``."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return EncoderDecoder(*args, **kwargs)


class GeneratorAttack(Attack):
    """Base of the attacks whose trigger is a network: builds, saves and restores the nets.

    Subclasses implement :meth:`nets`, building their generator networks from ``seed``; ``bind``
    builds them with seed 0 (so ``load_artifact`` can fill the weights), ``setup`` from a seed
    drawn from the run's generator; ``state_dict`` holds every weight and buffer.
    """

    learned: ClassVar[bool] = True

    def nets(self, seed: int) -> dict[str, nn.Module]:
        """Freshly initialised networks by name (e.g. ``{"pattern": ..., "mask": ...}``)."""
        raise NotImplementedError

    def setup(self, data: Dataset, generator: torch.Generator) -> None:
        super().setup(data, generator)
        self.nets_ = {name: net.eval() for name, net in self.nets(draw_seed(generator)).items()}

    def bind(self, num_classes: int, input_shape: tuple[int, int, int]) -> None:
        super().bind(num_classes, input_shape)
        self.nets_ = {name: net.eval() for name, net in self.nets(0).items()}

    def state_dict(self) -> dict[str, Tensor]:
        return {f"{name}.{k}": v for name, net in self.nets_.items() for k, v in net.state_dict().items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for name, net in self.nets_.items():
            prefix = f"{name}."
            net.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
            net.eval()


def draw_seed(generator: torch.Generator) -> int:
    """A 31-bit seed drawn from ``generator`` (so a trigger's init follows the run's seed)."""
    return int(torch.randint(2 ** 31 - 1, (1,), generator=generator))


def rms_distance(a: Tensor, b: Tensor) -> Tensor:
    """Per-sample root-mean-square distance: (N, ...) x (N, ...) -> (N,).

    The floor under the square root keeps the gradient finite when two outputs coincide.
    """
    return (a - b).flatten(1).pow(2).mean(1).clamp_min(1e-12).sqrt()


def diversity_loss(x1: Tensor, x2: Tensor, out1: Tensor, out2: Tensor, eps: float = 1e-7) -> Tensor:
    """Input-Aware's diversity loss: mean of ``rms(x1 - x2) / (rms(out1 - out2) + eps)``.

    Minimising it makes the generator's outputs for two different images at least as far apart
    as the images are. Shapes: images (N, C, H, W), outputs (N, C', H, W); returns a scalar > 0.
    """
    return (rms_distance(x1, x2) / (rms_distance(out1, out2) + eps)).mean()


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    """Set the learning rate of every parameter group of ``opt``."""
    for group in opt.param_groups:
        group["lr"] = lr


def train_batches(data: Split, cfg: TrainConfig, generator: torch.Generator, epochs: int,
                  desc: str) -> Iterator[tuple[int, int, Tensor, Tensor, Tensor]]:
    """``epochs`` shuffled passes over ``data`` in augmented batches, drawn as :func:`fit` draws them.

    Yields ``(step, total_steps, idx (B,), x (B, C, H, W), y (B,))`` and shows a progress bar.
    """
    steps = math.ceil(len(data) / cfg.batch_size)
    total, step = epochs * steps, 0
    bar = tqdm(total=total, desc=desc, disable=None if cfg.progress else True, leave=False)
    try:
        for _ in range(epochs):
            order = torch.randperm(len(data), generator=generator).to(data.device)
            for i in range(steps):
                idx = order[i * cfg.batch_size:(i + 1) * cfg.batch_size]
                yield step, total, idx, augment(data.x[idx], generator, cfg.crop_padding, cfg.flip), data.y[idx]
                step += 1
                bar.update()
    finally:
        bar.close()


def cotrain(model: nn.Module, data: Split, cfg: TrainConfig, generator: torch.Generator, batch_loss: BatchLoss,
            gen_opt: torch.optim.Optimizer | None = None, desc: str = "train") -> None:
    """Train ``model`` in place with fit's recipe (SGD, lr schedule, memory format, amp) on the loss
    that ``batch_loss`` builds for each batch; after each step, ``gen_opt`` (if given) steps the
    generator on the gradients that the same backward pass left in it.
    """
    cfg.validate()
    opt = make_optimizer(model.parameters(), cfg)
    fmt = torch.channels_last if cfg.channels_last else torch.contiguous_format
    model.to(memory_format=fmt).train()
    losses = []
    for step, total, idx, x, y in train_batches(data, cfg, generator, cfg.epochs, desc):
        set_lr(opt, cfg.lr * lr_factor(cfg, step, total))
        x = x.contiguous(memory_format=fmt)
        losses.append(train_step(model, opt, batch_loss(step, idx, x, y), x, y, cfg.amp))
        if gen_opt is not None:
            gen_opt.step()
            gen_opt.zero_grad(set_to_none=True)
    model.eval()
    if losses:
        log.info("%s: %d steps, last loss %.4f", desc, len(losses), float(losses[-1]))
