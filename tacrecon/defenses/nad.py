"""NAD: Neural Attention Distillation, a fine-tuned teacher's attention maps distilled into the
backdoored model.

Li et al. 2021, "Neural Attention Distillation: Erasing Backdoor Triggers from Deep Neural
Networks".
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tacrecon.data.split import Split
from tacrecon.defenses.base import DEFENSES
from tacrecon.defenses.finetune import FinetuneDefense
from tacrecon.errors import TacreconError
from tacrecon.models.base import evaluating
from tacrecon.train import LossFn


def attention_map(f: Tensor, p: float = 2.0, eps: float = 1e-6) -> Tensor:
    """NAD's attention map of feature maps ``f`` (N, C, H, W): per sample, the sum over channels
    of |f|^p, divided by its L2 norm over the H*W positions (+ ``eps``); (N, H*W), float32."""
    a = f.float().abs().pow(p).sum(1).flatten(1)
    return a / (a.norm(dim=1, keepdim=True) + eps)


def attention_loss(student: Tensor, teacher: Tensor, p: float = 2.0) -> Tensor:
    """Mean squared difference of the attention maps of two (N, C, H, W) feature maps; the
    teacher's side carries no gradient."""
    return F.mse_loss(attention_map(student, p), attention_map(teacher.detach(), p))


@torch.no_grad()
def stage_layers(model: nn.Module, x: Tensor) -> list[str]:
    """The modules whose outputs end the network's spatial stages, shallow to deep.

    One forward pass of ``x`` (N, C, H, W) in eval mode records every submodule's output. For
    each spatial size with more than one position, the stage's output is the *shallowest*
    module (fewest dots in its name) producing feature maps of that size, the last one to
    finish among equally shallow ones; outputs of the input's own shape (the image, normalized
    or not) are skipped.
    On 32x32 inputs this gives ``layer1..layer4`` for PreAct-ResNet18 (the first BN of the next
    stage also sees the old size, but sits deeper); ``features.0``, ``features.2``,
    ``features.3`` and ``features`` (the last residual block's output) for resnet_small; the
    last ReLU before each pooling down to 2x2 for VGG; ``features.0.0`` (a conv before its
    pooling), ``features.0`` and ``features`` for test_cnn.
    """
    seen: dict[tuple[int, int], tuple[int, int, str]] = {}  # size -> (depth, -finish, name)
    finished = [0]

    def record(name: str):
        def hook(_module: nn.Module, _args: Any, out: Any) -> None:
            finished[0] += 1
            if (isinstance(out, Tensor) and out.ndim == 4 and out.shape[2] * out.shape[3] > 1
                    and out.shape != x.shape):
                key, depth = (out.shape[2], out.shape[3]), name.count(".")
                if key not in seen or (depth, -finished[0]) <= seen[key][:2]:
                    seen[key] = (depth, -finished[0], name)
        return hook

    handles = [m.register_forward_hook(record(n)) for n, m in model.named_modules() if n]
    try:
        with evaluating(model):
            model(x)
    finally:
        for h in handles:
            h.remove()
    return [name for _, _, name in sorted(seen.values(), key=lambda v: -v[1])]


class FeatureTap:
    """Forward hooks keeping the latest output of the named modules of ``model``; a context
    manager that removes them on exit."""

    def __init__(self, model: nn.Module, names: list[str]) -> None:
        self.outputs: dict[str, Tensor] = {}
        modules = dict(model.named_modules())
        self.names = names
        self.handles = [modules[n].register_forward_hook(self._keep(n)) for n in names]

    def _keep(self, name: str):
        def hook(_module: nn.Module, _args: Any, out: Tensor) -> None:
            self.outputs[name] = out
        return hook

    def features(self) -> list[Tensor]:
        """The captured outputs, in the order of ``names``."""
        return [self.outputs[n] for n in self.names]

    def __enter__(self) -> "FeatureTap":
        return self

    def __exit__(self, *exc: Any) -> None:
        for h in self.handles:
            h.remove()


def distillation_loss(student_tap: FeatureTap, teacher: nn.Module, teacher_tap: FeatureTap,
                      betas: tuple[float, ...], p: float) -> LossFn:
    """fit's loss: CE of the student + sum_i betas[i] * attention loss at the i-th tapped layer,
    against ``teacher`` (eval mode, no gradient) on the same batch."""
    def loss(model: nn.Module, x: Tensor, y: Tensor) -> Tensor:
        ce = F.cross_entropy(model(x), y)
        with torch.no_grad():
            teacher(x)
        pairs = zip(betas, student_tap.features(), teacher_tap.features())
        return ce + sum(b * attention_loss(s, t, p) for b, s, t in pairs)
    return loss


@DEFENSES.register("nad")
@dataclass
class NAD(FinetuneDefense):
    """NAD as BackdoorBench runs it (``defense/nad.py``, ``config/defense/nad``).

    1. Teacher: a copy of the backdoored model fine-tuned on the clean set for
       ``teacher_epochs`` epochs (cross-entropy).
    2. Student: the backdoored model trained ``epochs`` epochs with cross-entropy plus
       ``betas[i]`` times the MSE between its attention map and the teacher's
       (:func:`attention_map`, exponent ``p``) at the i-th attention layer.

    Attention layers: the last ``len(betas)`` stage outputs found by :func:`stage_layers`
    (layer3 and layer4 of PreAct-ResNet18, as in BB), unless ``layers`` names them.

    Args:
        teacher_epochs: the teacher's fine-tune (BB ``te_epochs``).
        epochs: the student's training (BB also uses ``te_epochs`` here; its ``epochs`` is unused).
        betas: the attention-loss weights, for the layers from shallow to deep.
        p: the exponent of the attention map.
        layers: module names to use instead of the automatic choice (as many as ``betas``).
        (the other fine-tune fields: :class:`FinetuneDefense`; the learning rate is constant).

    The published recipe (the defaults): 10 + 10 epochs, batch 256, SGD lr 0.01 momentum 0.9
    wd 5e-4, beta 500 (layer3) and 1000 (layer4), p 2, crop augmentation. BB adds a third
    term (beta 1000) on the 1x1 average-pooled map, whose normalized attention map is always
    1: it contributes nothing and is left out. BB's teacher follows a cosine schedule with
    T_max 100 epochs for 10 epochs (lr 0.01 -> 0.0098) and its student a step schedule that
    stays at 0.01 for the first 20 epochs: both are constant 0.01 here.
    CPU budget: the published recipe (about 20 passes over 2,500 CIFAR-10 images plus 10
    teacher forward passes, about 45 s for resnet_small on 2 cores).
    """

    paper: ClassVar[str] = ("Li et al. 2021, Neural Attention Distillation: Erasing Backdoor Triggers from Deep "
                             "Neural Networks, https://arxiv.org/abs/2101.05930")
    budgets: ClassVar[dict[str, dict[str, Any]]] = {"cpu": {}, "smoke": {"teacher_epochs": 1, "epochs": 1}}

    teacher_epochs: int = 10
    epochs: int = 10
    betas: tuple[float, ...] = (500.0, 1000.0)
    p: float = 2.0
    layers: tuple[str, ...] = ()

    def validate(self) -> None:
        super().validate()
        if self.teacher_epochs < 0:
            raise TacreconError(f"NAD: teacher_epochs must be >= 0, got {self.teacher_epochs}")
        if not self.betas or any(b < 0 for b in self.betas):
            raise TacreconError(f"NAD: betas must be a non-empty list of weights >= 0, got {list(self.betas)}")
        if self.p <= 0:
            raise TacreconError(f"NAD: p must be > 0, got {self.p}")
        if self.layers and len(self.layers) != len(self.betas):
            raise TacreconError(f"NAD: layers names {len(self.layers)} modules but betas has "
                                f"{len(self.betas)} weights")

    def attention_layers(self, model: nn.Module, x: Tensor) -> list[str]:
        """The names of the modules whose outputs are distilled, shallow to deep (``x``: a
        batch of images, (N, C, H, W))."""
        names = dict(model.named_modules())
        if self.layers:
            missing = [n for n in self.layers if n not in names]
            if missing:
                raise TacreconError(f"NAD: the model has no module named {', '.join(missing)}")
            return list(self.layers)
        stages = stage_layers(model, x)
        if len(stages) < len(self.betas):
            raise TacreconError(f"NAD needs {len(self.betas)} stages of feature maps (one per beta); the model has "
                                f"{len(stages)} ({', '.join(stages) or 'no convolutional feature maps'})")
        return stages[-len(self.betas):]

    def defend(self, model: nn.Module, clean: Split, generator: torch.Generator) -> None:
        self.layers_ = self.attention_layers(model, clean.x[:2])
        start = time.perf_counter()
        teacher = copy.deepcopy(model)
        self.stats_["teacher_losses"] = self.finetune(teacher, clean, generator, epochs=self.teacher_epochs,
                                                      schedule="constant")
        teacher.eval()
        self.stats_["teacher_seconds"] = time.perf_counter() - start
        start = time.perf_counter()
        with FeatureTap(model, self.layers_) as student_tap, FeatureTap(teacher, self.layers_) as teacher_tap:
            loss = distillation_loss(student_tap, teacher, teacher_tap, self.betas, self.p)
            self.stats_["losses"] = self.finetune(model, clean, generator, loss_fn=loss, schedule="constant")
        self.stats_["student_seconds"] = time.perf_counter() - start
