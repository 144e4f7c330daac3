"""NAD: the attention map's definition, the generic choice of attention layers, the loss."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tacrecon.data import load_dataset
from tacrecon.defenses import create_defense
from tacrecon.defenses.nad import FeatureTap, attention_loss, attention_map, distillation_loss, stage_layers
from tacrecon.errors import TacreconError
from tacrecon.models import as_classifier, create_model


@pytest.mark.parametrize("p", [1.0, 2.0, 3.0])
def test_attention_map_is_the_normalized_channel_sum_of_abs_power(p):
    f = torch.randn(3, 5, 4, 6)
    a = attention_map(f, p)
    assert a.shape == (3, 24)
    for i in range(3):
        raw = sum(f[i, c].abs() ** p for c in range(5)).flatten()
        assert torch.allclose(a[i], raw / (raw.norm() + 1e-6), atol=1e-6)
    assert torch.allclose(a.norm(dim=1), torch.ones(3), atol=1e-5)
    assert torch.allclose(attention_map(-7 * f[:, torch.randperm(5)], p), a, atol=1e-5)  # sign, scale, channel order


def test_attention_loss_is_the_mse_of_the_maps_with_no_gradient_to_the_teacher():
    s, t = torch.randn(2, 4, 3, 3, requires_grad=True), torch.randn(2, 4, 3, 3, requires_grad=True)
    loss = attention_loss(s, t)
    assert torch.allclose(loss, ((attention_map(s) - attention_map(t)) ** 2).mean())
    loss.backward()
    assert s.grad is not None and t.grad is None
    assert attention_loss(t, t) == 0


@pytest.mark.parametrize("arch, in_chans, size, last", [
    ("preact_resnet18", 3, 32, ["layer3", "layer4"]),
    ("resnet_small", 3, 32, ["features.3", "features"]),
    ("vgg11_bn", 3, 32, ["features.20", "features.27"]),
    ("test_cnn", 1, 16, ["features.0", "features"]),
])
def test_stage_layers_end_each_resolution(arch, in_chans, size, last):
    model = create_model(arch, in_chans=in_chans).train()
    stages = stage_layers(model, torch.rand(2, in_chans, size, size))
    assert stages[-2:] == last
    assert model.training  # mode restored
    assert not any(m._forward_hooks for m in model.modules())  # hooks removed
    nad = create_defense("nad")
    assert nad.attention_layers(model, torch.rand(2, in_chans, size, size)) == last


def test_stage_layers_of_a_wrapped_plain_module():
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(4, 8, 3, padding=1),
                        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10))
    model = as_classifier(net)
    assert stage_layers(model, torch.rand(2, 3, 8, 8)) == ["module.1", "module.4"]


def test_layers_override_and_errors():
    model = create_model("test_cnn", in_chans=1)
    x = torch.rand(2, 1, 16, 16)
    assert create_defense("nad", layers=["features.0.0", "features.1"]).attention_layers(model, x) == \
        ["features.0.0", "features.1"]
    with pytest.raises(TacreconError, match="no module named nope"):
        create_defense("nad", layers=["features.0", "nope"]).attention_layers(model, x)
    with pytest.raises(TacreconError, match="needs 4 stages"):
        create_defense("nad", betas=[1.0, 1.0, 1.0, 1.0]).attention_layers(model, x)
    with pytest.raises(TacreconError, match="layers names 1"):
        create_defense("nad", layers=["features"])
    mlp = as_classifier(nn.Sequential(nn.Flatten(), nn.Linear(4, 3)))
    with pytest.raises(TacreconError, match="no convolutional feature maps"):
        create_defense("nad").attention_layers(mlp, torch.rand(2, 1, 2, 2))


def test_distillation_loss_is_ce_plus_weighted_attention_terms():
    student = create_model("test_cnn", in_chans=1).eval()
    teacher = copy.deepcopy(student)
    x, y = torch.rand(4, 1, 16, 16), torch.tensor([0, 1, 2, 3])
    names = ["features.0", "features"]
    with FeatureTap(student, names) as s_tap, FeatureTap(teacher, names) as t_tap:
        loss = distillation_loss(s_tap, teacher, t_tap, (500.0, 1000.0), 2.0)
        assert torch.allclose(loss(student, x, y), F.cross_entropy(student(x), y))  # same weights: no AT term
        with torch.no_grad():
            teacher.features[0][0].weight.mul_(-1.5).add_(0.1)
        s0, t0 = student.features[0](student.normalize(x)), teacher.features[0](teacher.normalize(x))
        s1, t1 = student.features[1](s0), teacher.features[1](t0)
        expected = F.cross_entropy(student(x), y) + 500 * attention_loss(s0, t0) + 1000 * attention_loss(s1, t1)
        assert attention_loss(s0, t0) > 0
        assert torch.allclose(loss(student, x, y), expected, rtol=1e-4)
    assert not student._forward_hooks and not any(m._forward_hooks for m in teacher.modules())


def test_fit_distills_at_the_automatic_layers():
    data = load_dataset("digits")
    clean = data.train.subset(torch.arange(256))
    model = create_model("test_cnn", in_chans=1)
    nad = create_defense("nad", "smoke").fit(model, clean, torch.Generator().manual_seed(0))
    assert nad.layers_ == ["features.0", "features"]
    assert {"teacher_losses", "losses", "teacher_seconds", "student_seconds"} <= set(nad.stats_)
