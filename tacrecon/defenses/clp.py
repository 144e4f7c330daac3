"""CLP: Channel Lipschitzness-based Pruning (data-free).

Zheng et al. 2022, "Data-free Backdoor Removal based on Channel Lipschitzness", ECCV 2022,
https://arxiv.org/abs/2208.03111.

Every output channel k of a conv followed by a BatchNorm2d computes, up to the BN shift,
``(gamma_k / sigma_k) * (W_k * x)``. CLP bounds the channel's Lipschitz constant by the largest
singular value of the kernel W_k reshaped to (in_channels, kh * kw), times |gamma_k / sigma_k|
(the *upper bound of the channel Lipschitz constant*, UCLC), and prunes the channels whose UCLC
is an outlier within their layer (> mean + u * std): a trigger is a small input pattern that
some channels amplify strongly. No data, no fine-tuning.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from tacrecon.data.split import Split
from tacrecon.defenses.base import DEFENSES, Defense
from tacrecon.errors import TacreconError

# Single-input operations that keep every channel separate and are 1-Lipschitz per channel: a
# BN reached from a conv through them still normalizes that conv's channels one by one.
_PASS_MODULES = (nn.MaxPool2d, nn.AvgPool2d, nn.Identity, nn.Dropout, nn.Dropout2d, nn.ReLU, nn.ReLU6,
                 nn.LeakyReLU)
_PASS_FUNCTIONS = {F.relu, torch.relu, F.relu6, F.leaky_relu, F.max_pool2d, F.avg_pool2d, F.dropout,
                   F.dropout2d}
_PASS_METHODS = {"relu", "relu_", "contiguous", "clone", "float", "to"}
_ADD_FUNCTIONS = {operator.add, operator.iadd, torch.add}
_ADD_METHODS = {"add", "add_"}


@dataclass
class BNInput:
    """What feeds one BatchNorm2d: the convs whose outputs it normalizes and the number of other
    (identity, skip) branches summed with them."""

    convs: list[str] = field(default_factory=list)
    identities: int = 0


def _trace(model: nn.Module) -> torch.fx.GraphModule:
    try:
        return torch.fx.symbolic_trace(model)
    except Exception as err:  # fx raises many types for untraceable Python control flow
        raise TacreconError(f"CLP could not trace {type(model).__name__} with torch.fx to pair its convs "
                            f"and BatchNorm2d layers ({type(err).__name__}: {err})") from None


def _through(node: torch.fx.Node, modules: dict[str, nn.Module]) -> torch.fx.Node:
    """Follow ``node`` back through channel-preserving single-input operations."""
    while True:
        if node.op == "call_module" and isinstance(modules[node.target], _PASS_MODULES):
            node = node.args[0]
        elif node.op == "call_function" and node.target in _PASS_FUNCTIONS:
            node = node.args[0]
        elif node.op == "call_method" and node.target in _PASS_METHODS:
            node = node.args[0]
        else:
            return node
        if not isinstance(node, torch.fx.Node):
            raise TacreconError("CLP: a channel-preserving operation has no tensor input")


def _is_conv(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    return node.op == "call_module" and isinstance(modules[node.target], nn.Conv2d)


def _is_add(node: torch.fx.Node) -> bool:
    return ((node.op == "call_function" and node.target in _ADD_FUNCTIONS)
            or (node.op == "call_method" and node.target in _ADD_METHODS))


def conv_bn_pairs(model: nn.Module) -> dict[str, BNInput]:
    """For every BatchNorm2d of ``model`` that a conv feeds, the convs feeding it (traced with torch.fx).

    A BN is paired with the Conv2d whose output reaches it through channel-preserving operations
    only (pooling, ReLU, dropout): ``conv -> max-pool -> BN`` pairs the conv with the BN. A BN
    whose input is a residual sum (PreAct-ResNet's ``bn1`` of every block after the first) gets
    every conv among the summands (each followed back the same way); the other summands (identity
    skips, nested sums) are counted in ``identities``. A BN fed by anything else (the input image,
    a concatenation, another BN) is left out.

    Returns:
        {BN name: BNInput}, in the graph's order.
    """
    graph = _trace(model)
    modules = dict(graph.named_modules())
    pairs: dict[str, BNInput] = {}
    for node in graph.graph.nodes:
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        source = _through(node.args[0], modules)
        if _is_conv(source, modules):
            pairs[node.target] = BNInput([source.target])
        elif _is_add(source):
            found = BNInput()
            for arg in source.args:
                if not isinstance(arg, torch.fx.Node):
                    continue  # a constant added to the sum does not change its Lipschitz constant
                branch = _through(arg, modules)
                if _is_conv(branch, modules):
                    found.convs.append(branch.target)
                else:
                    found.identities += 1
            if found.convs:
                pairs[node.target] = found
    return pairs


def registration_pairs(model: nn.Module) -> dict[str, str]:
    """BackdoorBench's pairing, for comparison: each BN with the last Conv2d registered before it."""
    pairs, last = {}, None
    for name, module in model.named_modules():
        if isinstance(module, nn.BatchNorm2d) and last is not None:
            pairs[name] = last
        elif isinstance(module, nn.Conv2d):
            last = name
    return pairs


def spectral_norms(weight: Tensor) -> Tensor:
    """Largest singular value of each output channel's kernel: weight (C_out, C_in, kh, kw) -> (C_out,).

    Channel k's kernel is reshaped to (C_in, kh * kw), as in the CLP paper.
    """
    w = weight.detach().float()
    return torch.linalg.matrix_norm(w.reshape(w.shape[0], w.shape[1], -1), ord=2)


def uclc(bn: nn.BatchNorm2d, convs: list[nn.Conv2d], identities: int = 0) -> Tensor:
    """Upper bound of the channel Lipschitz constant of each of ``bn``'s channels: (C,).

    |gamma_k| / sqrt(running_var_k + eps) times (the sum over the feeding convs of the largest
    singular value of their kernel k, plus 1 for each identity branch of a residual sum).
    """
    if bn.running_var is None or bn.weight is None:
        raise TacreconError("CLP needs BatchNorm2d layers with affine weights and running statistics")
    lips = sum(spectral_norms(conv.weight) for conv in convs) + identities
    scale = bn.weight.detach().float().abs() / (bn.running_var.float() + bn.eps).sqrt()
    return scale * lips


@DEFENSES.register("clp")
@dataclass
class CLP(Defense):
    """Channel Lipschitzness-based Pruning: zero the BN channels whose UCLC is an outlier.

    Args:
        u: a channel is pruned when its UCLC > mean + u * std of its layer's UCLCs (unbiased std).

    The published recipe (BackdoorBench ``config/defense/clp``): u = 3, no data, no fine-tuning;
    pruning sets both the BN weight and bias of the channel to 0. There is nothing to shorten,
    so the CPU and smoke budgets are the recipe (a fraction of a second for resnet_small).

    Deviations from BackdoorBench:

    * Pairing. BackdoorBench pairs each BatchNorm2d with the *last Conv2d registered before it*
      (``named_modules()`` order). That is right for conv -> BN networks (VGG, post-activation
      ResNets, our resnet_small and test_cnn, where both pairings agree), but not for PreAct-
      ResNet18, where ``bn1`` of a block normalizes the block's *input*, the residual sum of the
      previous block: BackdoorBench pairs ``layer2.1.bn1``, ``layer3.1.bn1`` and ``layer4.1.bn1``
      with the 1x1 shortcut conv alone (registered after ``conv2``) and the other ``bn1`` with the
      previous ``conv2`` alone. Here the model is traced with torch.fx and each BN gets the convs
      that actually feed it (:func:`conv_bn_pairs`); for a residual sum the UCLC bound is the sum
      of its branches' bounds (a conv: its largest singular value; an identity skip: 1), so
      ``layer2.1.bn1`` gets ``layer2.0.conv2`` + ``layer2.0.shortcut.0``, ``layer1.1.bn1`` gets
      ``layer1.0.conv2`` + the stem ``conv1``, ``layer2.0.bn1`` gets ``layer1.1.conv2`` + 1.
    * sigma_k = sqrt(running_var + eps), the BN's own scale (BackdoorBench omits eps, which makes
      a channel whose variance is 0 infinite).
    """

    paper: ClassVar[str] = ("Zheng et al. 2022, Data-free Backdoor Removal based on Channel Lipschitzness, "
                            "https://arxiv.org/abs/2208.03111")
    budgets: ClassVar[dict[str, dict[str, Any]]] = {"cpu": {}, "smoke": {}}

    u: float = 3.0

    def validate(self) -> None:
        if not self.u >= 0:
            raise TacreconError(f"CLP: u must be >= 0, got {self.u}")

    def channel_scores(self, model: nn.Module) -> dict[str, Tensor]:
        """UCLC (C,) of every paired BatchNorm2d of ``model``, by BN name."""
        pairs = conv_bn_pairs(model)
        if not pairs:
            raise TacreconError(f"CLP found no Conv2d -> BatchNorm2d pair in {type(model).__name__}")
        modules = dict(model.named_modules())
        return {bn: uclc(modules[bn], [modules[c] for c in src.convs], src.identities) for bn, src in pairs.items()}

    @torch.no_grad()
    def defend(self, model: nn.Module, clean: Split, generator: torch.Generator) -> None:
        modules = dict(model.named_modules())
        self.scores_ = {name: score.tolist() for name, score in self.channel_scores(model).items()}
        pruned: dict[str, list[int]] = {}
        for name, values in self.scores_.items():
            score = torch.tensor(values)
            index = torch.nonzero(score > score.mean() + self.u * score.std()).flatten()
            bn = modules[name]
            bn.weight[index.to(bn.weight.device)] = 0
            if bn.bias is not None:
                bn.bias[index.to(bn.bias.device)] = 0
            pruned[name] = index.tolist()
        self.pruned_ = pruned
        self.stats_["pruned"] = sum(len(v) for v in pruned.values())
        self.stats_["channels"] = sum(len(v) for v in self.scores_.values())
        self.stats_["layers"] = len(self.scores_)
