"""Input-Aware: a generator co-trained with the classifier makes a different trigger per image."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tacrecon.attacks.base import ATTACKS
from tacrecon.attacks.generators import GeneratorAttack, cotrain, diversity_loss, seeded_net, set_lr, train_batches
from tacrecon.data.split import Dataset, Split
from tacrecon.errors import TacreconError
from tacrecon.train import LossFn, TrainConfig, cross_entropy


@ATTACKS.register("input_aware")
@dataclass
class InputAware(GeneratorAttack):
    """Input-Aware Dynamic Backdoor (Nguyen & Tran 2020, "Input-Aware Dynamic Backdoor Attack",
    https://arxiv.org/abs/2010.08138).

    A pattern generator G and a mask generator M (conv encoder-decoders, outputs in (0, 1)) make a
    trigger for each image, pasted through the mask: ``x' = x + m(x) * (G(x) - x)``. Training, as
    in BackdoorBench (docs/reference-hyperparameters.md, 3.6):

    1. ``mask_epochs`` of M alone (Adam, lr x0.1 at 40% and 80% of the steps like BB's 10/20 of
       25): ``lambda_norm * mean(relu(m - mask_density)) + lambda_div * diversity``; M is frozen.
    2. The classifier (the recipe ``cfg``: SGD, lr schedule, ``cfg.epochs``) and G (Adam) train on
       one loss: in each batch the samples of the fixed poisoned index set get their own trigger
       and the attack label (BackdoorBench instead poisons the first ``rate`` share of every
       shuffled batch, so each image is poisoned in some epochs and clean in others; the number
       per batch is the same); as many other samples of the batch get the trigger of a poisoned
       sample and keep their label (the cross samples, which teach that a trigger only works on
       its own image); plus ``lambda_div`` times the diversity loss of G.

    Choices for the CPU protocol and our poisoning model:

    - Width 16 (BB: 32, 4x the compute): G's forward+backward costs 1.2-1.5x the classifier's
      (resnet_small, width 16) per 32x32 image, but G only sees ~2 * rate of each batch: a joint
      step costs 1.23x a clean step, a mask step (M on the whole batch) 1.22x (batch 256, CPU).
    - The mask epochs come on top of ``cfg.epochs`` (BB counts its 25 of 100 within, so its
      classifier trains 75), so the classifier gets the full recipe; 2 of them (156 steps on
      a 20k-image cifar10 subset) already brought the mask area to 1% of the pixels.
    - Both diversity terms measure image and pattern distances in the space the model sees:
      divided by the dataset's per-channel std (BB feeds the nets normalised images and
      normalises G's pattern); the mask is not normalised. Revision 2. Revision 1 measured them
      on [0, 1] pixels, which made the mask stage's term about a quarter of BB's on CIFAR-10
      (std ~0.25). On GTSRB BB's models see [0, 1] pixels, ours the train split's normalisation,
      so the two differ there by the same factor the other way.
    - The cross trigger comes from a poisoned sample of the same batch and the mask stage pairs
      each image with its neighbour in the batch (BB: a second loader for both); G's gradients
      are zeroed after each step (BB never zeroes them); triggers stay float (no PNG round).

    Args:
        generator_width: channels of the first level of G and M (BB: 32).
        mask_epochs: epochs of mask pre-training, on top of the classifier's epochs (BB: 25).
        lr_generator: Adam learning rate of G (BB: 0.01, betas (0.5, 0.9), constant).
        lr_mask: Adam learning rate of M (BB: 0.01, betas (0.5, 0.9)).
        lambda_div: weight of the diversity loss (BB: 1).
        lambda_norm: weight of the mask-density loss (BB: 100).
        mask_density: mask value above which the density loss penalises (BB: 0.032).

    Shape:
        apply: (N, C, H, W) in [0, 1] -> (N, C, H, W) in [0, 1].
    """

    generator_width: int = 16
    mask_epochs: int = 2
    lr_generator: float = 0.01
    lr_mask: float = 0.01
    lambda_div: float = 1.0
    lambda_norm: float = 100.0
    mask_density: float = 0.032

    revision: ClassVar[int] = 2  # 2: diversity distances on normalised tensors (BB), not [0, 1] pixels

    def validate(self) -> None:
        super().validate()
        if self.generator_width < 1 or self.mask_epochs < 0:
            raise TacreconError(f"need generator_width >= 1 and mask_epochs >= 0, got "
                                f"{self.generator_width} and {self.mask_epochs}")
        if self.lr_generator <= 0 or self.lr_mask <= 0 or self.lambda_div < 0 or self.lambda_norm < 0:
            raise TacreconError("learning rates must be > 0 and loss weights >= 0")
        if not 0 < self.mask_density < 1:
            raise TacreconError(f"mask_density must be in (0, 1), got {self.mask_density}")

    # --- trigger -----------------------------------------------------------------------------

    def setup(self, data: Dataset, generator: torch.Generator) -> None:
        super().setup(data, generator)
        self.std_ = torch.tensor(data.std, dtype=torch.float32).view(1, -1, 1, 1)

    def normalised(self, x: Tensor) -> Tensor:
        """``x`` over the dataset's per-channel std, so distances are those the model sees (the
        mean cancels in a difference): (N, C, H, W) -> (N, C, H, W). Needs :meth:`setup`."""
        return x / self.std_.to(x.device)

    def nets(self, seed: int) -> dict[str, nn.Module]:
        """The pattern generator G and the mask generator M."""
        c = self.input_shape_[0]
        return {"pattern": seeded_net(seed, c, c, self.generator_width),
                "mask": seeded_net(seed + 1, c, 1, self.generator_width)}

    @property
    def pattern_net_(self) -> nn.Module:
        return self.nets_["pattern"]

    @property
    def mask_net_(self) -> nn.Module:
        return self.nets_["mask"]

    def pattern(self, x: Tensor) -> Tensor:
        """G's pattern: (N, C, H, W) -> (N, C, H, W) in (0, 1)."""
        return (self.pattern_net_(x) + 1) / 2

    def mask(self, x: Tensor) -> Tensor:
        """M's output pushed towards 0/1 (BB's threshold): (N, C, H, W) -> (N, 1, H, W) in (0, 1)."""
        return torch.tanh(20 * (self.mask_net_(x) + 1) / 2 - 10) / 2 + 0.5

    def apply(self, x: Tensor) -> Tensor:
        self.pattern_net_.to(x.device).eval()
        self.mask_net_.to(x.device).eval()
        with torch.no_grad():
            xf = x.float()
            return paste(xf, self.pattern(xf), self.mask(xf)).to(x.dtype)

    # --- training ----------------------------------------------------------------------------

    def train(self, model: nn.Module, train: Split, cfg: TrainConfig, generator: torch.Generator) -> Tensor:
        """Pre-train M, then co-train the classifier and G; returns the poisoned indices (K,)."""
        idx = self.poison_index(train.y, generator).to(train.device)
        self._train_mask(train, cfg, generator)
        chosen = torch.zeros(len(train), dtype=torch.bool, device=train.device)
        chosen[idx] = True
        self.pattern_net_.to(train.device).train()
        opt = torch.optim.Adam(self.pattern_net_.parameters(), lr=self.lr_generator, betas=(0.5, 0.9))

        def batch_loss(step: int, i: Tensor, x: Tensor, y: Tensor) -> LossFn:
            return self._joint_loss(chosen[i], x, y, cfg, generator)

        cotrain(model, train, cfg, generator, batch_loss, opt, desc=f"train {self.name}")
        self.pattern_net_.eval()
        return idx

    def _train_mask(self, train: Split, cfg: TrainConfig, generator: torch.Generator) -> None:
        """Stage 1: M alone, on the density and diversity losses; M is frozen afterwards."""
        net = self.mask_net_.to(train.device).train()
        opt = torch.optim.Adam(net.parameters(), lr=self.lr_mask, betas=(0.5, 0.9))
        batches = train_batches(train, cfg, generator, self.mask_epochs, f"train {self.name} mask")
        for step, total, _, x, _ in batches:
            set_lr(opt, self.lr_mask * 0.1 ** ((step >= 0.4 * total) + (step >= 0.8 * total)))
            loss = self.mask_loss(x)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        net.eval().requires_grad_(False)

    def mask_loss(self, x: Tensor) -> Tensor:
        """M's stage-1 loss on a batch (N >= 2); each image is paired with the next one."""
        m = self.mask(x)
        density = F.relu(m - self.mask_density).mean()
        z = self.normalised(x)
        return self.lambda_norm * density + self.lambda_div * diversity_loss(z, z.roll(1, 0), m, m.roll(1, 0))

    def _joint_loss(self, chosen: Tensor, x: Tensor, y: Tensor, cfg: TrainConfig,
                    generator: torch.Generator) -> LossFn:
        """Stage-2 loss of one batch; ``chosen`` (B,) marks its samples in the poisoned index set."""
        bd = torch.nonzero(chosen).flatten()
        if bd.numel() == 0:
            return cross_entropy(cfg)
        rest = torch.nonzero(~chosen).flatten()
        cross = rest[torch.randperm(rest.numel(), generator=generator)[:bd.numel()].to(rest.device)]
        k, n = bd.numel(), cross.numel()  # n < k only when the batch has too few clean samples

        def loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
            x_bd, x_cross = x[bd], x[cross]
            patterns = self.pattern(torch.cat([x_bd, x_cross]))
            p_bd, p_cross = patterns[:k], patterns[k:]
            with torch.no_grad():
                m_bd = self.mask(x_bd)
            x, y = x.clone(), y.clone()
            x[bd], x[cross] = paste(x_bd, p_bd, m_bd), paste(x_cross, p_bd[:n], m_bd[:n])
            y[bd] = self.label_map()(y[bd])
            ce = F.cross_entropy(model(x), y, label_smoothing=cfg.label_smoothing)
            if n == 0:
                return ce
            z = self.normalised
            return ce + self.lambda_div * diversity_loss(z(x_bd[:n]), z(x_cross), z(p_bd[:n]), z(p_cross))

        return loss


def paste(x: Tensor, pattern: Tensor, mask: Tensor) -> Tensor:
    """``x + mask * (pattern - x)``: (N, C, H, W), (N, C, H, W), (N, 1, H, W) -> (N, C, H, W)."""
    return x + mask * (pattern - x)
