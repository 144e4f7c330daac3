"""The attack interface: a trigger ``apply``, a data ``poison`` step and a ``train`` hook.

An attack is a dataclass of hyperparameters. ``setup`` builds its trigger state from the data
(a pattern, a warping field, a trained generator); ``apply`` is then a pure batched function
that ASR evaluation calls; ``poison`` relabels a fraction of the training split and stamps it
with that trigger; ``train`` runs the one training loop on ``training_set`` (by default the
poisoned split), and only attacks that co-train a generator override it. Attacks whose training
images are not ``poison``'s (cover samples that carry a trigger and keep their label, a training
trigger other than the test one) override ``training_set`` instead. Learned state goes through
``state_dict`` / ``load_state_dict`` so an artifact keeps it. ``backdoors`` lists what the
trained model should have learned (one trigger and label map here; several for ``multi``), and
ASR is measured on each.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from tacrecon.config import Config
from tacrecon.data.split import Dataset, Split
from tacrecon.errors import TacreconError
from tacrecon.metrics import Backdoor, LabelMap, all2all, all2one
from tacrecon.registry import Registry
from tacrecon.train import TrainConfig, fit

ATTACKS: Registry[type[Attack]] = Registry("attack")


@dataclass
class Attack(Config):
    """Base hyperparameters shared by every attack.

    Args:
        target: the attacker's class for all-to-one attacks.
        rate: poisoning rate, the fraction of the *whole* training split that is poisoned
            (BackdoorBench's ``pratio``); samples are drawn among the eligible ones, which for a
            dirty-label attack excludes the samples the attack would not relabel (the target
            class under all2one). BackdoorBench draws among all samples, so at the same rate
            about 10% of its poisoned samples (CIFAR-10) keep their label and ours are all real
            label flips: a slightly stronger attack.
        label_mode: ``all2one`` (every poisoned label -> ``target``) or ``all2all`` (y -> y+1 mod C).
    """

    target: int = 0
    rate: float = 0.1
    label_mode: str = "all2one"

    clean_label: ClassVar[bool] = False  # poison only target-class samples, keep their labels
    learned: ClassVar[bool] = False  # the trigger is trained (it lives in state_dict, not in the seed)
    composite: ClassVar[bool] = False  # built from other attacks (multi, tac_aware): not a part of another
    # bumped when a code change alters what setup/train/apply make; an artifact records it, and
    # the bench retrains an artifact (and reruns its cells) made by an earlier revision
    revision: ClassVar[int] = 1

    def validate(self) -> None:
        if not 0 < self.rate < 1:
            raise TacreconError(f"poison rate must be in (0, 1), got {self.rate}")
        if self.label_mode not in ("all2one", "all2all"):
            raise TacreconError(f"label_mode must be all2one or all2all, got {self.label_mode!r}")
        if self.target < 0:
            raise TacreconError(f"target class must be >= 0, got {self.target}")
        if self.clean_label and self.label_mode != "all2one":
            raise TacreconError(f"{type(self).__name__} is a clean-label attack: all2one only")

    # --- trigger -----------------------------------------------------------------------------

    def setup(self, data: Dataset, generator: torch.Generator) -> None:
        """Build the trigger state for ``data``; the default only binds its shapes (see bind)."""
        self.bind(data.num_classes, data.input_shape)

    def bind(self, num_classes: int, input_shape: tuple[int, int, int]) -> None:
        """Check the target against ``num_classes`` and remember the image shape (C, H, W)."""
        if self.target >= num_classes:
            raise TacreconError(f"target class {self.target} is outside 0..{num_classes - 1}")
        self.num_classes_, self.input_shape_ = num_classes, tuple(input_shape)

    def apply(self, x: Tensor) -> Tensor:
        """Triggered images: (N, C, H, W) in [0, 1] -> same shape, dtype, device, range."""
        raise NotImplementedError

    def __call__(self, x: Tensor) -> Tensor:
        check_images(x)
        with torch.no_grad():
            return self.apply(x).clamp_(0, 1)

    def label_map(self) -> LabelMap:
        """The label the attack wants for each true label."""
        return all2one(self.target) if self.label_mode == "all2one" else all2all(self.num_classes_)

    def backdoors(self) -> list[Backdoor]:
        """The backdoors the attacked model should hold: here one, this trigger and label map
        (target None under all2all); bound first (``setup`` or ``bind``)."""
        target = self.target if self.label_mode == "all2one" else None
        return [Backdoor(self.name, self, self.label_map(), target)]

    # --- poisoning and training --------------------------------------------------------------

    def eligible(self, y: Tensor) -> Tensor:
        """Boolean mask (N,) of the samples that may be poisoned."""
        if self.clean_label:
            return y == self.target
        return self.label_map()(y) != y

    def poison_index(self, y: Tensor, generator: torch.Generator, exclude: Tensor | None = None) -> Tensor:
        """Sorted indices of round(rate * N) eligible samples, drawn with ``generator``, none of
        them where the boolean mask ``exclude`` (N,) is set (another backdoor's samples)."""
        allowed = self.eligible(y).cpu()
        if exclude is not None:
            allowed = allowed & ~exclude.cpu()
        candidates = torch.nonzero(allowed).flatten()
        n = round(self.rate * y.shape[0])
        if n > candidates.numel():
            raise TacreconError(f"rate {self.rate} asks for {n} samples but only {candidates.numel()} are eligible")
        pick = torch.randperm(candidates.numel(), generator=generator)[:n]
        return candidates[pick].sort().values

    def poison(self, train: Split, generator: torch.Generator) -> tuple[Split, Tensor]:
        """The poisoned training split and the poisoned indices (K,); ``train`` is not modified."""
        idx = self.poison_index(train.y, generator).to(train.device)
        x, y = train.x.clone(), train.y.clone()
        self.mark(x, y, idx)
        return Split(x, y), idx

    def mark(self, x: Tensor, y: Tensor, idx: Tensor) -> None:
        """Stamp images ``x[idx]`` (N, C, H, W) with the trigger and relabel ``y[idx]`` (N,), in place
        (a clean-label attack keeps the labels)."""
        x[idx] = self(x[idx])
        if not self.clean_label:
            y[idx] = self.label_map()(y[idx])

    def training_set(self, train: Split, generator: torch.Generator) -> tuple[Split, Tensor]:
        """The split the model is trained on and the indices (K,) of its relabelled samples.

        The default is :meth:`poison`; an attack with cover samples or with a training trigger
        other than ``apply`` builds its own here, and ``poison`` stays the relabelled samples
        stamped with the test trigger.
        """
        return self.poison(train, generator)

    def train(self, model: nn.Module, train: Split, cfg: TrainConfig, generator: torch.Generator) -> Tensor:
        """Train ``model`` in place on :meth:`training_set`; returns the poisoned indices."""
        poisoned, idx = self.training_set(train, generator)
        fit(model, poisoned, cfg, generator=generator, desc=f"train {self.name}")
        return idx

    # --- state -------------------------------------------------------------------------------

    @property
    def name(self) -> str:
        return getattr(type(self), "registered_name", type(self).__name__.lower())

    def state_dict(self) -> dict[str, Tensor]:
        """Tensors of the learned or generated trigger (saved with the artifact)."""
        return {}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        """Restore what :meth:`state_dict` returned."""


# the hooks a part of a composite attack must not override: it is poisoned the plain way (stamp,
# relabel, the one training loop), so the draws of its samples are all the composite coordinates
PLAIN_HOOKS = ("train", "training_set", "poison", "poison_index", "mark")


def plain_attack(spec: Any, where: str, shared: dict[str, Any], defaults: dict[str, Any]) -> Attack:
    """The attack a ``{"name": <registered attack>, <its hyperparameters>}`` mapping names, as a
    part of a composite attack: one trained on its poisoned samples alone, all-to-one.

    Args:
        spec: the mapping. where: how errors name the part (e.g. ``multi: attacks[1]``).
        shared: settings the composite sets for its parts (a part may not give them).
        defaults: settings a part takes unless it gives its own.
    """
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
        raise TacreconError(f"{where} must be a mapping with a name, got {spec!r}")
    name, params = spec["name"], {k: v for k, v in spec.items() if k != "name"}
    cls = ATTACKS.get(name)
    if cls.composite or name == "none":
        raise TacreconError(f"{where} is {name}, not a backdoor of its own")
    own = [h for h in PLAIN_HOOKS if getattr(cls, h) is not getattr(Attack, h)]
    if own:
        raise TacreconError(f"{where} {name} trains its own way ({own[0]}); a part must be an attack trained on "
                            "its poisoned samples alone")
    given = [k for k in shared if k in params]
    if given:
        raise TacreconError(f"{where} gives {given[0]}, which the composite attack sets for its parts")
    if params.get("label_mode", "all2one") != "all2one":
        raise TacreconError(f"{where} {name} is not all-to-one; every part needs one target")
    try:
        return cls.from_dict({**defaults, **params, **shared})
    except TacreconError as e:
        raise TacreconError(f"{where} {name}: {e}") from None


def check_images(x: Tensor) -> None:
    """Raise unless ``x`` is a floating (N, C, H, W) batch."""
    if not isinstance(x, Tensor) or x.ndim != 4 or not x.dtype.is_floating_point:
        shape = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise TacreconError(f"an attack takes float images (N, C, H, W) in [0, 1], got {shape}")
