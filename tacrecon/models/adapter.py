"""Give any classifier ``nn.Module`` the tacrecon contract by hooking its final linear layer."""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from tacrecon.errors import TacreconError
from tacrecon.models.base import Classifier, Normalize


def find_head(module: nn.Module, num_classes: int | None = None, name: str | None = None) -> tuple[str, nn.Linear]:
    """The final linear layer of ``module``: the one named ``name``, else the last registered
    ``nn.Linear`` whose ``out_features == num_classes`` (any ``nn.Linear`` if ``num_classes`` is None).
    """
    if name is not None:
        try:
            layer = module.get_submodule(name)
        except AttributeError:
            raise TacreconError(f"the model has no layer named {name!r}") from None
        if not isinstance(layer, nn.Linear):
            raise TacreconError(f"layer {name!r} is a {type(layer).__name__}, not nn.Linear")
        return name, layer
    found = [(n, m) for n, m in module.named_modules()
             if isinstance(m, nn.Linear) and (num_classes is None or m.out_features == num_classes)]
    if not found:
        widths = sorted({m.out_features for m in module.modules() if isinstance(m, nn.Linear)})
        if num_classes is None or not widths:
            raise TacreconError("the model has no nn.Linear layer; name the head with --head")
        raise TacreconError(f"the model has no nn.Linear layer with out_features={num_classes} (the data set's "
                            f"classes); its linear layers have {', '.join(map(str, widths))} outputs")
    return found[-1]


class HeadAdapter(Classifier):
    """Wraps ``module`` so its head input is the latent, via a forward pre-hook.

    ``forward_features`` runs the whole wrapped module once and returns the captured latent
    (N, d); ``forward_head`` applies the head. The logits of ``forward`` are the module's own.

    Args:
        module: any classifier mapping images to logits (N, C).
        num_classes: C, used to find the head; defaults to the out_features of the last linear.
        head: the head's qualified name (e.g. ``"classifier.3"``), overriding the search.
        mean, std: if given, images in [0, 1] are normalized before the module sees them.
    """

    def __init__(self, module: nn.Module, num_classes: int | None = None, head: str | None = None,
                 mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> None:
        super().__init__()
        self.module = module
        self.head_name, head_layer = find_head(module, num_classes, head)
        self.num_classes, self.latent_dim = head_layer.out_features, head_layer.in_features
        self.normalize = Normalize(mean, std) if mean is not None and std is not None else nn.Identity()
        self._latent: Tensor | None = None
        self._capturing = False
        self._explicit = head is not None
        self._hook = head_layer.register_forward_pre_hook(self._capture)

    def _use(self, name: str) -> None:
        """Make the layer ``name`` the head (the latent is its input)."""
        self._hook.remove()
        self.head_name = name
        layer = self.module.get_submodule(name)
        self.num_classes, self.latent_dim = layer.out_features, layer.in_features
        self._hook = layer.register_forward_pre_hook(self._capture)

    def _capture(self, _layer: nn.Module, args: tuple[Tensor, ...]) -> None:
        if self._capturing:  # only inside forward_features: other adapters' calls keep nothing alive
            self._latent = args[0]

    def forward_features(self, x: Tensor) -> Tensor:
        self._latent, self._capturing = None, True
        try:
            self.module(self.normalize(x))
        finally:
            self._capturing = False
        z, self._latent = self._latent, None
        if z is None:
            raise TacreconError(f"head {self.head_name!r} was not called in the forward pass")
        if z.ndim != 2:
            raise TacreconError(f"head {self.head_name!r} input has shape {tuple(z.shape)}, expected (N, d)")
        return z

    def forward_head(self, f: Tensor, pre_logits: bool = False) -> Tensor:
        return f if pre_logits else self.get_classifier()(f)

    def get_classifier(self) -> nn.Linear:
        return self.module.get_submodule(self.head_name)

    def forward(self, x: Tensor) -> Tensor:
        return self.module(self.normalize(x))

    @torch.no_grad()
    def matches(self, x: Tensor, atol: float = 1e-4) -> bool:
        """Whether the module's output on ``x`` (N, C_in, H, W) is ``head(latent)``, up to a
        shift per image (so a log-softmax after the head still matches)."""
        logits = self.forward(x)
        try:
            rebuilt = self.forward_head(self.forward_features(x))
        except TacreconError:  # the layer is not called
            return False
        if not isinstance(logits, Tensor) or logits.shape != rebuilt.shape:
            return False
        gap = logits - rebuilt
        gap = gap - gap.mean(dim=1, keepdim=True)
        return bool(gap.abs().max() <= atol + 1e-3 * logits.abs().max())

    def check(self, x: Tensor) -> None:
        """Raise if the module's logits are not ``head(latent)`` on ``x`` (N, C_in, H, W)."""
        if not self.matches(x):
            raise TacreconError(
                f"the model's output is not the output of {self.head_name!r}: "
                "the head must be the last operation (name it with --head)")

    @torch.no_grad()
    def locate(self, x: Tensor) -> None:
        """Find the head by running ``x``: of the ``nn.Linear`` layers with ``num_classes``
        outputs, the last one called whose output is the module's (:meth:`matches`); one error
        line if none is. A head named by the user is only checked."""
        if self._explicit:
            self.check(x)
            return
        calls: list[str] = []
        handles = [m.register_forward_hook(lambda *_, n=n: calls.append(n)) for n, m in self.module.named_modules()
                   if isinstance(m, nn.Linear) and m.out_features == self.num_classes]
        try:
            self.forward(x)
        finally:
            for h in handles:
                h.remove()
        order = list(dict.fromkeys(reversed(calls)))  # the last called first
        for name in order:
            self._use(name)
            if self.matches(x):
                return
        tried = ", ".join(order) or "none was called"
        raise TacreconError(f"no nn.Linear with {self.num_classes} outputs gives the model's output (tried: {tried}); "
                            "the final linear layer must be the last operation (a head called twice, or outputs "
                            "reordered after it, cannot be scanned)")


def as_classifier(module: nn.Module, num_classes: int | None = None, head: str | None = None,
                  mean: Sequence[float] | None = None, std: Sequence[float] | None = None) -> Classifier:
    """``module`` itself if it already follows the contract (and needs no normalization), else a
    :class:`HeadAdapter` around it."""
    if isinstance(module, Classifier) and head is None and mean is None:
        return module
    return HeadAdapter(module, num_classes, head, mean, std)
