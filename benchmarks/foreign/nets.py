"""Architectures of the foreign family, written from scratch for it (torch only, no tacrecon).

Every net takes images in [0, 1], normalizes them itself (fixed per-channel statistics kept as
a buffer), and ends in a plain ``nn.Linear`` whose output is the logits: ``fc`` for the VGG and
ResNet nets, ``classifier`` for the MLP-head net.

This file is self-contained so that ``tacrecon scan benchmarks/foreign/nets.py:VGGCifar`` can
import it on its own: the names ending in ``Cifar`` / ``Gtsrb`` build the net for that data set
with no arguments (10 / 43 classes, the widths the family was trained with).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

STATS = {  # per-channel mean and std of the training images, in [0, 1]
    "cifar10": ((0.491, 0.482, 0.447), (0.247, 0.243, 0.262)),
    "gtsrb": ((0.341, 0.312, 0.321), (0.275, 0.264, 0.270)),
}


class Standardize(nn.Module):
    """(x - mean) / std with fixed per-channel statistics."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.std


def conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class VGG(nn.Module):
    """Max-pooled VGG-style net: per stage, ``depth`` conv-BN-ReLU blocks then a 2x2 max pool;
    after the last stage a global max pool and the linear head ``fc``.

    ``widths`` (16, 32, 64, 128) and ``depths`` (1, 1, 2, 2) give four stages, 32 -> 2 pixels.
    """

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (16, 32, 64, 128),
                 depths: Sequence[int] = (1, 1, 2, 2), dataset: str = "cifar10") -> None:
        super().__init__()
        self.standardize = Standardize(*STATS[dataset])
        layers: list[nn.Module] = []
        cin = 3
        for width, depth in zip(widths, depths):
            for _ in range(depth):
                layers.append(conv_bn_relu(cin, width))
                cin = width
            layers.append(nn.MaxPool2d(2))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.features(self.standardize(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class BasicBlock(nn.Module):
    """The post-activation residual block of torchvision's ResNet-18: conv-BN-ReLU-conv-BN, add
    the shortcut (a strided 1x1 conv + BN when the shape changes), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet18(nn.Module):
    """A narrow torchvision-style ResNet-18: a stem conv-BN-ReLU (stride ``stem_stride``), four
    stages of two BasicBlocks (``widths``, strides 1, 2, 2, 2), then global average pooling of
    the last block's BN+ReLU output and the linear head ``fc``."""

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (16, 32, 64, 128),
                 blocks: Sequence[int] = (2, 2, 2, 2), stem_stride: int = 2, dataset: str = "cifar10") -> None:
        super().__init__()
        self.standardize = Standardize(*STATS[dataset])
        self.conv1 = nn.Conv2d(3, widths[0], 3, stem_stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        stages: list[nn.Module] = []
        cin = widths[0]
        for i, (width, count) in enumerate(zip(widths, blocks)):
            stride = 1 if i == 0 else 2
            stage = [BasicBlock(cin, width, stride)] + [BasicBlock(width, width) for _ in range(count - 1)]
            stages.append(nn.Sequential(*stage))
            cin = width
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.relu(self.bn1(self.conv1(self.standardize(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class MLPHead(nn.Module):
    """A conv trunk (three stages of conv-BN-ReLU + max pool, then a conv and a 4x4 average pool)
    followed by an MLP: flatten -> Linear -> ReLU -> Dropout -> Linear ``classifier``."""

    def __init__(self, num_classes: int = 10, widths: Sequence[int] = (24, 48, 96), hidden: int = 256,
                 dropout: float = 0.3, dataset: str = "cifar10") -> None:
        super().__init__()
        self.standardize = Standardize(*STATS[dataset])
        w1, w2, w3 = widths
        self.trunk = nn.Sequential(
            conv_bn_relu(3, w1), nn.MaxPool2d(2),          # 16x16
            conv_bn_relu(w1, w2), nn.MaxPool2d(2),         # 8x8
            conv_bn_relu(w2, w3), nn.MaxPool2d(2),         # 4x4
            conv_bn_relu(w3, w3),
            nn.AvgPool2d(2),                               # 2x2
        )
        self.hidden = nn.Linear(w3 * 4, hidden)
        self.act = nn.ReLU(inplace=True)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = torch.flatten(self.trunk(self.standardize(x)), 1)
        return self.classifier(self.dropout(self.act(self.hidden(x))))


ARCHS = {"vgg": VGG, "resnet18": ResNet18, "mlphead": MLPHead}


def build(arch: str, **kwargs) -> nn.Module:
    """The net ``arch`` (a key of :data:`ARCHS`) with ``kwargs``."""
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r} (known: {', '.join(ARCHS)})")
    return ARCHS[arch](**kwargs)


# No-argument constructors for ``tacrecon scan benchmarks/foreign/nets.py:<Name>``.
def VGGCifar() -> VGG:
    return VGG(num_classes=10, dataset="cifar10")


def VGGGtsrb() -> VGG:
    return VGG(num_classes=43, dataset="gtsrb")


def ResNet18Cifar() -> ResNet18:
    return ResNet18(num_classes=10, dataset="cifar10")


def ResNet18Gtsrb() -> ResNet18:
    return ResNet18(num_classes=43, dataset="gtsrb")


def MLPHeadCifar() -> MLPHead:
    return MLPHead(num_classes=10, dataset="cifar10")


def MLPHeadGtsrb() -> MLPHead:
    return MLPHead(num_classes=43, dataset="gtsrb")
