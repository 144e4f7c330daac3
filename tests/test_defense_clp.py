"""CLP: the UCLC against a hand computation, the conv-BN pairing of every architecture, pruning."""

import numpy as np
import pytest
import torch
from torch import nn

from tacrecon.data.split import Split
from tacrecon.defenses import create_defense
from tacrecon.defenses.clp import CLP, conv_bn_pairs, registration_pairs, uclc
from tacrecon.errors import TacreconError
from tacrecon.models import create_model


def random_bn(channels: int, seed: int = 0) -> nn.BatchNorm2d:
    g = torch.Generator().manual_seed(seed)
    bn = nn.BatchNorm2d(channels)
    with torch.no_grad():
        bn.weight.copy_(torch.randn(channels, generator=g))
        bn.bias.copy_(torch.randn(channels, generator=g))
        bn.running_var.copy_(torch.rand(channels, generator=g) + 0.1)
    return bn


def hand_sigma(kernel: np.ndarray) -> float:
    """Largest singular value of one output channel's kernel (C_in, kh, kw) as (C_in, kh * kw)."""
    return float(np.linalg.svd(kernel.reshape(kernel.shape[0], -1), compute_uv=False)[0])


def test_uclc_is_the_largest_singular_value_times_the_bn_scale():
    torch.manual_seed(0)
    conv, bn = nn.Conv2d(2, 3, 3, bias=False), random_bn(3)
    w = conv.weight.detach().double().numpy()
    scale = bn.weight.detach().abs().double().numpy() / np.sqrt(bn.running_var.double().numpy() + bn.eps)
    expected = [scale[k] * hand_sigma(w[k]) for k in range(3)]
    assert np.allclose(uclc(bn, [conv]).numpy(), expected, rtol=1e-5)


def test_uclc_of_a_residual_sum_adds_the_branch_bounds():
    torch.manual_seed(1)
    a, b, bn = nn.Conv2d(2, 3, 3, padding=1), nn.Conv2d(4, 3, 1), random_bn(3, seed=1)
    wa, wb = a.weight.detach().double().numpy(), b.weight.detach().double().numpy()
    scale = bn.weight.detach().abs().double().numpy() / np.sqrt(bn.running_var.double().numpy() + bn.eps)
    two = [scale[k] * (hand_sigma(wa[k]) + hand_sigma(wb[k])) for k in range(3)]
    assert np.allclose(uclc(bn, [a, b]).numpy(), two, rtol=1e-5)
    one = [scale[k] * (hand_sigma(wa[k]) + 1) for k in range(3)]
    assert np.allclose(uclc(bn, [a], identities=1).numpy(), one, rtol=1e-5)


def paired_convs(arch: str) -> dict[str, list[str]]:
    return {bn: src.convs for bn, src in conv_bn_pairs(create_model(arch)).items()}


def test_pairing_test_cnn_goes_through_the_pooling():
    # conv -> max-pool -> BN
    assert paired_convs("test_cnn") == {"features.0.2": ["features.0.0"], "features.1.2": ["features.1.0"]}


def test_pairing_resnet_small():
    expected = {"features.0.1": ["features.0.0"], "features.1.2": ["features.1.0"],
                "features.2.body.0.1": ["features.2.body.0.0"], "features.2.body.1.1": ["features.2.body.1.0"],
                "features.3.2": ["features.3.0"], "features.4.2": ["features.4.0"],
                "features.5.body.0.1": ["features.5.body.0.0"], "features.5.body.1.1": ["features.5.body.1.0"]}
    assert paired_convs("resnet_small") == expected
    assert all(src.identities == 0 for src in conv_bn_pairs(create_model("resnet_small")).values())


def test_pairing_vgg11_bn():
    features = create_model("vgg11_bn").features
    convs = [i for i, m in enumerate(features) if isinstance(m, nn.Conv2d)]
    expected = {f"features.{i + 1}": [f"features.{i}"] for i in convs}
    assert len(expected) == 8 and paired_convs("vgg11_bn") == expected


def test_pairing_preact_resnet18_follows_the_graph_not_the_registration_order():
    model = create_model("preact_resnet18")
    pairs = conv_bn_pairs(model)
    assert len(pairs) == 16
    assert pairs["layer1.0.bn1"].convs == ["conv1"]
    for layer in range(1, 5):
        for block in range(2):
            assert pairs[f"layer{layer}.{block}.bn2"].convs == [f"layer{layer}.{block}.conv1"]
    # layer1.0's skip is the stem's output, so layer1.1.bn1 normalizes conv2 + stem conv
    assert (pairs["layer1.1.bn1"].convs, pairs["layer1.1.bn1"].identities) == (["layer1.0.conv2", "conv1"], 0)
    for layer in (2, 3, 4):
        # the block after a projection block: conv2 plus the 1x1 shortcut conv
        assert pairs[f"layer{layer}.1.bn1"].convs == [f"layer{layer}.0.conv2", f"layer{layer}.0.shortcut.0"]
        # the first block of a stage: the previous conv2 plus an identity skip
        assert (pairs[f"layer{layer}.0.bn1"].convs, pairs[f"layer{layer}.0.bn1"].identities) == (
            [f"layer{layer - 1}.1.conv2"], 1)
    registered = registration_pairs(model)
    for layer in (2, 3, 4):  # BackdoorBench pairs these with the shortcut conv alone
        assert registered[f"layer{layer}.1.bn1"] == f"layer{layer}.0.shortcut.0"


@pytest.mark.parametrize("arch", ["test_cnn", "resnet_small", "vgg11_bn"])
def test_pairing_agrees_with_registration_order_on_conv_bn_networks(arch):
    model = create_model(arch)
    assert {bn: src.convs for bn, src in conv_bn_pairs(model).items()} == {
        bn: [conv] for bn, conv in registration_pairs(model).items()}


class Planted(nn.Module):
    """conv -> BN -> ReLU -> pool -> linear, with channel 5 of the conv 20 times larger."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv, self.bn, self.fc = nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.Linear(16, 4)
        with torch.no_grad():
            self.conv.weight[5] *= 20

    def forward(self, x):
        return self.fc(torch.relu(self.bn(self.conv(x))).mean((2, 3)))


def test_clp_prunes_the_planted_channel_only():
    model = Planted()
    clean = Split(torch.rand(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))
    defense = create_defense("clp", "smoke").fit(model, clean)
    assert defense.pruned_ == {"bn": [5]}
    assert defense.model_.bn.weight[5] == 0 and defense.model_.bn.bias[5] == 0
    assert torch.count_nonzero(defense.model_.bn.weight) == 15
    assert model.bn.weight[5] != 0  # the input model is untouched


def test_clp_errors():
    clean = Split(torch.rand(2, 3, 8, 8), torch.zeros(2, dtype=torch.long))
    with pytest.raises(TacreconError, match="u must be"):
        CLP(u=-1).fit(Planted(), clean)
    with pytest.raises(TacreconError, match="no Conv2d -> BatchNorm2d"):
        CLP().fit(nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(72, 2)), clean)

    class Untraceable(Planted):
        def forward(self, x):
            if x.sum() > 0:  # data-dependent control flow
                return super().forward(x)
            return super().forward(-x)

    with pytest.raises(TacreconError, match="could not trace"):
        CLP().fit(Untraceable(), clean)
