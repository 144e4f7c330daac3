"""Architectures: PreAct-ResNet18 and VGG19-BN (BackdoorBench), a fast CPU ResNet, VGG11-BN, a test CNN.

All are :class:`~tacrecon.models.base.Classifier` subclasses; their factories are registered in
``MODELS`` and take ``num_classes``, ``in_chans``, ``mean`` and ``std``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Sequence, cast

import torch.nn.functional as F
from torch import Tensor, nn

from tacrecon.models.base import Classifier, Normalize, default_stats
from tacrecon.registry import Registry

MODELS: Registry[Callable[..., Classifier]] = Registry("model")


def create_model(name: str, num_classes: int = 10, in_chans: int = 3, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, **kwargs: Any) -> Classifier:
    """Build the registered model ``name`` for images of ``in_chans`` channels in [0, 1]."""
    return MODELS.create(name, num_classes=num_classes, in_chans=in_chans, mean=mean, std=std, **kwargs)


class PreActBlock(nn.Module):
    """Pre-activation basic block; parameter names match BackdoorBench's ``PreActBlock``."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        if stride != 1 or in_planes != planes:
            self.shortcut = nn.Sequential(nn.Conv2d(in_planes, planes, 1, stride, bias=False))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(x))
        skip = self.shortcut(out) if hasattr(self, "shortcut") else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + skip


class PreActResNet18(Classifier):
    """PreAct-ResNet18 as in BackdoorBench: a BackdoorBench state_dict loads strictly.

    Like BackdoorBench's (and WaNet's) version, it has no BN/ReLU after the stem and none after
    ``layer4``: the latent is the 512-d average of the raw ``layer4`` output and may be negative.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3, mean=None, std=None) -> None:
        super().__init__()
        self.num_classes, self.latent_dim = num_classes, 512
        self.normalize = Normalize(*default_stats(in_chans, mean, std))
        self.conv1 = nn.Conv2d(in_chans, 64, 3, 1, 1, bias=False)
        widths, planes = [64, 128, 256, 512], 64
        for i, width in enumerate(widths):
            stride = 1 if i == 0 else 2
            blocks = [PreActBlock(planes, width, stride), PreActBlock(width, width)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
            planes = width
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(512, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        out = self.conv1(self.normalize(x))
        return self.layer4(self.layer3(self.layer2(self.layer1(out))))

    def forward_head(self, f: Tensor, pre_logits: bool = False) -> Tensor:
        z = self.avgpool(f).flatten(1)
        return z if pre_logits else self.linear(z)

    def get_classifier(self) -> nn.Linear:
        return self.linear


def conv_bn(c_in: int, c_out: int, pool: bool = False) -> nn.Sequential:
    """3x3 conv -> (2x2 max-pool) -> BN -> ReLU; pooling before BN halves its cost."""
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class Residual(nn.Module):
    """x + body(x)."""

    def __init__(self, body: nn.Module) -> None:
        super().__init__()
        self.body = body

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class ResNetSmall(Classifier):
    """A ResNet-9-style network (prep, 3 pooled stages, 2 residual blocks) sized for a CPU.

    It is the architecture of the CPU protocol (at width 16: stage widths 16/32/64/128). The
    latent is the global average of the last stage's output, as in PreAct-ResNet18 (``pool="max"``
    takes the maximum instead: the same accuracy, but a trigger then changes the latent far from
    additively, and the per-class QP norms no longer single out the target class).
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 3, mean=None, std=None,
                 width: int = 32, pool: str = "avg") -> None:
        super().__init__()
        if pool not in ("max", "avg"):
            raise ValueError(f"pool must be max or avg, got {pool!r}")
        self.pool = pool
        w = [width, 2 * width, 4 * width, 8 * width]
        self.num_classes, self.latent_dim = num_classes, w[3]
        self.normalize = Normalize(*default_stats(in_chans, mean, std))
        self.features = nn.Sequential(
            conv_bn(in_chans, w[0]),
            conv_bn(w[0], w[1], pool=True),
            Residual(nn.Sequential(conv_bn(w[1], w[1]), conv_bn(w[1], w[1]))),
            conv_bn(w[1], w[2], pool=True),
            conv_bn(w[2], w[3], pool=True),
            Residual(nn.Sequential(conv_bn(w[3], w[3]), conv_bn(w[3], w[3]))),
        )
        self.fc = nn.Linear(w[3], num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(self.normalize(x))

    def forward_head(self, f: Tensor, pre_logits: bool = False) -> Tensor:
        pooled = F.adaptive_max_pool2d(f, 1) if self.pool == "max" else F.adaptive_avg_pool2d(f, 1)
        z = pooled.flatten(1)
        return z if pre_logits else self.fc(z)

    def get_classifier(self) -> nn.Linear:
        return self.fc


def vgg_features(cfg: Sequence[int | str], in_chans: int, pool: Callable[[], nn.Module]) -> tuple[nn.Sequential, int]:
    """VGG's conv-BN-ReLU stack from ``cfg`` (widths, "M" for a ``pool()``), and its output channels."""
    layers: list[nn.Module] = []
    c = in_chans
    for v in cfg:
        if v == "M":
            layers.append(pool())
        else:
            layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.BatchNorm2d(int(v)), nn.ReLU(inplace=True)]
            c = int(v)
    return nn.Sequential(*layers), c


class VGG(Classifier):
    """CIFAR-style VGG with batch norm and a single linear head on the pooled 512-d vector."""

    def __init__(self, cfg: Sequence[int | str], num_classes: int = 10, in_chans: int = 3,
                 mean=None, std=None) -> None:
        super().__init__()
        self.normalize = Normalize(*default_stats(in_chans, mean, std))
        self.features, c = vgg_features(cfg, in_chans, lambda: nn.MaxPool2d(2))
        self.num_classes, self.latent_dim = num_classes, c
        self.classifier = nn.Linear(c, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(self.normalize(x))

    def forward_head(self, f: Tensor, pre_logits: bool = False) -> Tensor:
        z = F.adaptive_avg_pool2d(f, 1).flatten(1)
        return z if pre_logits else self.classifier(z)

    def get_classifier(self) -> nn.Linear:
        return self.classifier


VGG19_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M",
                                     512, 512, 512, 512, "M")  # configuration "E" of the VGG paper


class HalvingPool(nn.MaxPool2d):
    """2x2 max-pool, stride 2, that passes a map already 1 pixel high or wide through unchanged.

    On any input torchvision's ``MaxPool2d(2, 2)`` accepts it is that layer; it lets a deep VGG
    also take images under 32x32 (whose maps reach 1x1 before the last pool) instead of failing.
    """

    def __init__(self) -> None:
        super().__init__(kernel_size=2, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return x if min(x.shape[-2:]) < 2 else super().forward(x)


class TorchvisionVGG(Classifier):
    """VGG with batch norm laid out as torchvision's ``VGG``: what BackdoorBench trains as ``vgg19_bn``.

    BackdoorBench builds ``torchvision.models.vgg19_bn(num_classes=C)`` unchanged at every image
    size: ``features`` (3x3 conv with bias, BN, ReLU per width; 2x2 max-pools), ``avgpool`` to
    7x7 (a 32x32 image's 1x1 map is copied 49 times), then ``classifier`` = Linear(512*49, 4096),
    ReLU, Dropout, Linear(4096, 4096), ReLU, Dropout, Linear(4096, C). Parameter and buffer names
    are torchvision's, so such a state_dict loads strictly. The latent is the 4096-d input of
    ``classifier.6``. Initialisation follows torchvision too.
    """

    def __init__(self, cfg: Sequence[int | str], num_classes: int = 10, in_chans: int = 3, mean=None, std=None,
                 hidden: int = 4096) -> None:
        super().__init__()
        self.normalize = Normalize(*default_stats(in_chans, mean, std))
        self.features, c = vgg_features(cfg, in_chans, HalvingPool)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = nn.Sequential(
            nn.Linear(c * 7 * 7, hidden), nn.ReLU(True), nn.Dropout(0.5),
            nn.Linear(hidden, hidden), nn.ReLU(True), nn.Dropout(0.5),
            nn.Linear(hidden, num_classes),
        )
        self.num_classes, self.latent_dim = num_classes, hidden
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(cast(Tensor, m.bias))
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(self.normalize(x))

    def forward_head(self, f: Tensor, pre_logits: bool = False) -> Tensor:
        z = self.avgpool(f).flatten(1)
        for layer in list(self.classifier)[:6]:
            z = layer(z)
        return z if pre_logits else self.get_classifier()(z)

    def get_classifier(self) -> nn.Linear:
        return cast(nn.Linear, self.classifier[6])


class TestCNN(Classifier):
    """A two-conv network for tests: milliseconds per batch on a CPU."""

    def __init__(self, num_classes: int = 10, in_chans: int = 3, mean=None, std=None,
                 width: int = 16) -> None:
        super().__init__()
        self.normalize = Normalize(*default_stats(in_chans, mean, std))
        self.features = nn.Sequential(conv_bn(in_chans, width // 2, pool=True), conv_bn(width // 2, width, pool=True))
        self.num_classes, self.latent_dim = num_classes, width
        self.fc = nn.Linear(width, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        return self.features(self.normalize(x))

    def forward_head(self, f: Tensor, pre_logits: bool = False) -> Tensor:
        z = F.adaptive_avg_pool2d(f, 1).flatten(1)
        return z if pre_logits else self.fc(z)

    def get_classifier(self) -> nn.Linear:
        return self.fc


@MODELS.register("preact_resnet18")
def preact_resnet18(**kwargs) -> PreActResNet18:
    """PreAct-ResNet18 (He et al. 2016, "Identity Mappings in Deep Residual Networks"), 11.2M params."""
    return PreActResNet18(**kwargs)


@MODELS.register("resnet_small")
def resnet_small(**kwargs) -> ResNetSmall:
    """ResNet-9-style CPU network of the CPU protocol."""
    return ResNetSmall(**kwargs)


@MODELS.register("vgg11_bn")
def vgg11_bn(**kwargs) -> VGG:
    """VGG11 with batch norm (Simonyan & Zisserman 2015), CIFAR-style single linear head."""
    return VGG([64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"], **kwargs)


@MODELS.register("vgg_small")
def vgg_small(**kwargs) -> VGG:
    """Small VGG with batch norm and max pooling (widths 32-64-128-256, 1.1M params): the CPU
    protocol's second architecture, no residuals, about resnet_small's training cost."""
    return VGG([32, "M", 64, "M", 128, 128, "M", 256, 256, "M"], **kwargs)


@MODELS.register("vgg19_bn")
def vgg19_bn(**kwargs) -> TorchvisionVGG:
    """VGG19 with batch norm as torchvision (and so BackdoorBench) builds it: 139.6M params at 10 classes."""
    return TorchvisionVGG(VGG19_CFG, **kwargs)


@MODELS.register("test_cnn")
def test_cnn(**kwargs) -> TestCNN:
    """Tiny two-conv network for tests."""
    return TestCNN(**kwargs)
