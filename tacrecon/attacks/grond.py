"""Grond: a clean-label targeted universal perturbation, and parameter-space stealth during training."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from tacrecon.attacks.adversarial import SurrogatePlan, fooling_rate, targeted_uap, train_surrogate
from tacrecon.attacks.base import ATTACKS, Attack
from tacrecon.data.augment import add_clipped
from tacrecon.data.split import Dataset, Split
from tacrecon.defenses.clp import BNInput, conv_bn_pairs, uclc
from tacrecon.errors import TacreconError
from tacrecon.train import TrainConfig, fit

log = logging.getLogger(__name__)


@ATTACKS.register("grond")
@dataclass
class Grond(Attack):
    """Grond ("Towards Backdoor Stealthiness in Model Parameter Space", CCS 2025,
    https://arxiv.org/abs/2501.05928), as the authors' code does it (repository ``parameter_backdoor``:
    ``generate_upgd.py``, ``poison_loader.py``, ``train.py``, ``lipschitzness_pruning.py``).

    The trigger is a targeted universal adversarial perturbation (TUAP) ``delta`` of a clean
    surrogate model: ``|delta| <= eps``, found by signed-gradient descent of the cross-entropy
    towards the target over batches of the whole training split (:func:`targeted_uap`). Poisoned
    images are target-class images ``clamp(x + delta, 0, 1)`` with their labels kept (clean-label);
    test images get the same. During the victim's training, Adversarial Backdoor Injection (ABI)
    runs after every epoch: in every BatchNorm2d fed by convs, the channels whose upper bound of
    the channel Lipschitz constant (UCLC, CLP's score) exceeds ``mean + u * std`` of their layer
    get their BN weight and bias set to the layer's mean weight and mean bias. The backdoor is then
    learnt without channels that stand out in parameter space (what CLP and other pruning
    defenses look for), and the model is a clean model's near neighbour.

    Defaults are the code's: eps 8/255, step eps/5, 500 TUAP steps of 256 images (~2.56 passes
    over CIFAR-10's 50,000), ABI's u = 3; its ``--pr 0.5`` of the target class is ``rate`` 0.05 of
    the whole training split on CIFAR-10 (its README runs ``--pr 0.1``, i.e. 0.01).

    Differences from the authors' code:

    * The surrogate. Theirs is a fully trained clean ResNet-18 (their victim's architecture);
      ours is a clean ``surrogate_arch`` (the CPU protocol's own architecture) trained on the clean
      training split for ``surrogate_epochs`` epochs of the dataset's recipe with
      :func:`tacrecon.train.fit`, in :meth:`setup`, its seed drawn from the run's generator.
    * TUAP length in passes over the split (``uap_epochs``), so that a small data set gets as
      many image-gradients per image as CIFAR-10 does (their 500 steps of 256 = 2.56 passes).
    * The victim is trained with the protocol's recipe, not theirs (SGD lr 0.01, batch 128, 200
      epochs, steps at 100 and 150; ABI after each of the 200 epochs).
    * ABI pairs each BN with the convs that feed it by tracing the model
      (:func:`tacrecon.defenses.clp.conv_bn_pairs`); theirs pairs each BN with the last conv
      registered before it (the same on conv -> BN networks such as resnet_small). The BN scale
      includes its ``eps`` (theirs: sqrt(running_var)).
    * Images stay float (theirs go through PIL, i.e. uint8, after the perturbation).

    Args:
        eps: L-infinity bound of the TUAP, in [0, 1] pixel units.
        step_size: TUAP step, in [0, 1] pixel units (the code: eps / 5).
        uap_epochs: passes of the TUAP over the training split (steps = ceil(passes * N / batch)).
        uap_batch_size: images per TUAP step.
        u: ABI threshold, in standard deviations of a layer's UCLC.
        abi: run ABI (False: the TUAP backdoor alone, the paper's ablation).
        surrogate_arch: architecture of the surrogate (a registered model).
        surrogate_epochs: epochs of the surrogate's training.

    Shape:
        apply: (N, C, H, W) in [0, 1] -> (N, C, H, W) in [0, 1].

    Example:
        >>> attack = Grond(target=0)
        >>> attack.setup(data, torch.Generator().manual_seed(0))  # surrogate, then the TUAP
        >>> index = attack.train(model, data.train, cfg, generator)  # fit with ABI after each epoch
    """

    rate: float = 0.05
    eps: float = 8 / 255
    step_size: float = 8 / 255 / 5
    uap_epochs: float = 2.56
    uap_batch_size: int = 256
    u: float = 3.0
    abi: bool = True
    surrogate_arch: str = "resnet_small"
    surrogate_epochs: int = 6

    clean_label: ClassVar[bool] = True
    learned: ClassVar[bool] = True

    def validate(self) -> None:
        super().validate()
        if not (0 < self.eps <= 1 and 0 < self.step_size <= 1):
            raise TacreconError(f"eps and step_size must be in (0, 1], got {self.eps}, {self.step_size}")
        if self.uap_epochs <= 0 or self.uap_batch_size < 1 or self.surrogate_epochs < 1:
            raise TacreconError("need uap_epochs > 0, uap_batch_size >= 1 and surrogate_epochs >= 1")
        if not self.u >= 0:
            raise TacreconError(f"u must be >= 0, got {self.u}")

    # --- trigger -----------------------------------------------------------------------------

    def setup(self, data: Dataset, generator: torch.Generator) -> None:
        """Train the surrogate on the clean training split, then the TUAP ``delta_`` (C, H, W)."""
        super().setup(data, generator)
        train = data.train
        surrogate = train_surrogate(SurrogatePlan.of(self.surrogate_arch, data), train, self.surrogate_epochs,
                                    generator)
        steps = math.ceil(self.uap_epochs * len(train) / self.uap_batch_size)
        self.delta_ = targeted_uap(surrogate, train.x, self.target, self.eps, self.step_size, steps,
                                   self.uap_batch_size, generator)
        others = train.x[train.y != self.target]
        self.surrogate_fooled_ = fooling_rate(surrogate, add_clipped(others, self.delta_), self.target)
        log.info("grond: the TUAP sends %.1f%% of the surrogate's non-target training images to class %d",
                 100 * self.surrogate_fooled_, self.target)

    def bind(self, num_classes: int, input_shape: tuple[int, int, int]) -> None:
        super().bind(num_classes, input_shape)
        self.delta_ = torch.zeros(self.input_shape_)

    def apply(self, x: Tensor) -> Tensor:
        return add_clipped(x, self.delta_.to(x))

    def state_dict(self) -> dict[str, Tensor]:
        return {"delta": self.delta_}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        self.delta_ = state["delta"]

    # --- training ----------------------------------------------------------------------------

    def train(self, model: nn.Module, train: Split, cfg: TrainConfig, generator: torch.Generator) -> Tensor:
        """Fit ``model`` on the poisoned split with ABI after every epoch; returns the poisoned indices (K,)."""
        poisoned, idx = self.training_set(train, generator)
        pairs = conv_bn_pairs(model) if self.abi else {}
        if self.abi and not pairs:
            raise TacreconError(f"Grond's ABI needs conv -> BatchNorm2d layers, {type(model).__name__} has none")
        self.abi_resets_: list[int] = []

        def after_epoch(epoch: int) -> None:  # fit calls it before each epoch: after the previous one
            if epoch > 0 and self.abi:
                self.abi_resets_.append(inject(model, pairs, self.u))

        fit(model, poisoned, cfg, generator=generator, epoch_hook=after_epoch, desc=f"train {self.name}")
        after_epoch(cfg.epochs)
        model.eval()
        return idx


@torch.no_grad()
def inject(model: nn.Module, pairs: dict[str, BNInput], u: float) -> int:
    """ABI, one round: in each paired BN of ``model`` (``pairs``: see
    :func:`~tacrecon.defenses.clp.conv_bn_pairs`), set the weight and bias of the channels whose
    UCLC exceeds mean + u * std of the layer to the layer's mean weight and mean bias, in place.
    Returns the number of channels reset."""
    modules = dict(model.named_modules())
    reset = 0
    for name, source in pairs.items():
        bn = modules[name]
        if not isinstance(bn, nn.BatchNorm2d) or bn.weight is None or bn.bias is None:
            raise TacreconError(f"Grond's ABI needs affine BatchNorm2d layers, {name} is not one")
        score = uclc(bn, [modules[c] for c in source.convs], source.identities)
        index = torch.nonzero(score > score.mean() + u * score.std()).flatten().to(bn.weight.device)
        bn.weight[index] = bn.weight.mean()
        bn.bias[index] = bn.bias.mean()
        reset += index.numel()
    return reset
