"""Multi-target: two or more registered all-to-one attacks in one model, each with its own target."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor

from tacrecon.attacks.base import ATTACKS, Attack, plain_attack
from tacrecon.data.split import Dataset, Split
from tacrecon.errors import TacreconError
from tacrecon.metrics import Backdoor, LabelMap


def default_members() -> list[dict[str, Any]]:
    return [{"name": "badnets"}, {"name": "blended"}]


@ATTACKS.register("multi")
@dataclass
class Multi(Attack):
    """Several backdoors in one model: each member attack stamps its own trigger on its own
    poisoned samples and sends them to its own target.

    The setting of "multiple infected labels with separate triggers" (Wang et al. 2019, "Neural
    Cleanse: Identifying and Mitigating Backdoor Attacks in Neural Networks", IEEE S&P,
    https://doi.org/10.1109/SP.2019.00031), asked of latent-space defenses by reviewers: a
    defense must find and remove every target, not only the most anomalous one.

    Each member is a registered all-to-one attack whose training is its poisoned samples (BadNets,
    Blended, SIG, ...: not WaNet's noise mode, cover samples or a co-trained generator). The
    members share ``rate`` equally: member i poisons ``round(rate / M * N)`` samples of the
    training split, drawn among its eligible samples and never among another member's, so no
    image carries two triggers. Defaults: BadNets (3x3 white patch, bottom right) to ``target``
    and Blended (alpha 0.2) to ``target + 1``, each with its own defaults, 5% of the split each.

    ``backdoors`` lists every member (named ``<attack>-><target>``) and ASR is measured for each;
    the multi attack's own ``apply``, ``label_map`` and ``target`` are its first member's, for
    code that knows one trigger only.

    Args:
        attacks: the members (two or more), each ``{"name": <registered attack>, "target":
            <class>, <its hyperparameters>}``; member i without ``target`` gets ``target + i``.
            Targets must differ; ``rate`` and an all-to-all ``label_mode`` are not member keys.
        target: the first member's target; -1 (default): from the members (0 + i where they
            give none). Set to the first member's target by validation.
        rate: the poisoning rate of all members together.

    Shape:
        apply: (N, C, H, W) in [0, 1] -> (N, C, H, W) in [0, 1] (the first member's trigger).

    Example:
        >>> attack = create_attack("multi", attacks=[{"name": "badnets", "target": 1},
        ...                                          {"name": "blended", "target": 7}])
        >>> attack.setup(data, torch.Generator().manual_seed(0))
        >>> index = attack.train(model, data.train, cfg, generator)
        >>> [b.name for b in attack.backdoors()]
        ['badnets->1', 'blended->7']
    """

    target: int = -1
    attacks: list = field(default_factory=default_members)

    composite: ClassVar[bool] = True

    def validate(self) -> None:
        if self.label_mode != "all2one":
            raise TacreconError("multi: every member is all-to-one with its own target; label_mode must be all2one")
        if not 0 < self.rate < 1:
            raise TacreconError(f"poison rate must be in (0, 1), got {self.rate}")
        self.members_ = self.build_members()
        first = self.members_[0].target
        if self.target >= 0 and self.target != first:
            raise TacreconError(f"multi: target {self.target} is not the first member's ({first}): "
                                "give the targets in the members or as target, not both")
        self.target = first
        super().validate()

    def build_members(self) -> list[Attack]:
        """The member attacks, validated, each with its target and its share of the rate."""
        if not isinstance(self.attacks, list) or len(self.attacks) < 2:
            raise TacreconError(f"multi: attacks must list two or more members, got {self.attacks!r}")
        members = [self.member(i, spec) for i, spec in enumerate(self.attacks)]
        targets = [m.target for m in members]
        shared = sorted({t for t in targets if targets.count(t) > 1})
        if shared:
            raise TacreconError(f"multi: members share target {shared[0]} (targets {targets}); each needs its own")
        return members

    def member(self, i: int, spec: Any) -> Attack:
        """Member ``i`` of ``attacks`` (a mapping with a ``name``) as an attack."""
        return plain_attack(spec, f"multi: attacks[{i}]", {"rate": self.rate / len(self.attacks)},
                            {"target": max(self.target, 0) + i})

    # --- trigger -----------------------------------------------------------------------------

    def setup(self, data: Dataset, generator: torch.Generator) -> None:
        """Each member's setup, in order, with ``generator``; two members that stamp the same
        trigger (e.g. two Blended members with one ``pattern_seed``) are an error."""
        super().bind(data.num_classes, data.input_shape)
        for m in self.members_:
            m.setup(data, generator)
        probe = data.train.x[:16]
        stamped = [m(probe) for m in self.members_]
        for j in range(len(stamped)):
            for i in range(j):
                if torch.equal(stamped[i], stamped[j]):
                    raise TacreconError(f"multi: members {i} and {j} stamp the same trigger; give them different ones")

    def bind(self, num_classes: int, input_shape: tuple[int, int, int]) -> None:
        super().bind(num_classes, input_shape)
        for m in self.members_:
            m.bind(num_classes, input_shape)

    def apply(self, x: Tensor) -> Tensor:
        return self.members_[0].apply(x)

    def label_map(self) -> LabelMap:
        return self.members_[0].label_map()

    def backdoors(self) -> list[Backdoor]:
        return [Backdoor(f"{m.name}->{m.target}", m, m.label_map(), m.target) for m in self.members_]

    # --- poisoning ---------------------------------------------------------------------------

    def eligible(self, y: Tensor) -> Tensor:
        """Samples that some member may poison (N,)."""
        masks = [m.eligible(y) for m in self.members_]
        return torch.stack(masks).any(0)

    def member_indices(self, y: Tensor, generator: torch.Generator, exclude: Tensor | None = None) -> list[Tensor]:
        """Each member's sorted poisoned indices (K_i,), drawn in turn, pairwise disjoint."""
        taken = torch.zeros(y.shape[0], dtype=torch.bool) if exclude is None else exclude.cpu().clone()
        out = []
        for m in self.members_:
            idx = m.poison_index(y, generator, exclude=taken)
            taken[idx] = True
            out.append(idx)
        return out

    def poison_index(self, y: Tensor, generator: torch.Generator, exclude: Tensor | None = None) -> Tensor:
        return torch.cat(self.member_indices(y, generator, exclude)).sort().values

    def poison(self, train: Split, generator: torch.Generator) -> tuple[Split, Tensor]:
        """Every member stamps and relabels its own samples; returns the split and all their indices (K,)."""
        x, y = train.x.clone(), train.y.clone()
        parts = [idx.to(train.device) for idx in self.member_indices(train.y, generator)]
        for m, idx in zip(self.members_, parts):
            m.mark(x, y, idx)
        return Split(x, y), torch.cat(parts).sort().values

    # --- state -------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Tensor]:
        """Each member's trigger state under ``<i>.``."""
        return {f"{i}.{k}": v for i, m in enumerate(self.members_) for k, v in m.state_dict().items()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        for i, m in enumerate(self.members_):
            prefix = f"{i}."
            m.load_state_dict({k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)})
