"""The model contract over every registered model, and the adapter for any nn.Module."""

import pytest
import torch
from torch import nn

from tacrecon.errors import TacreconError
from tacrecon.models import MODELS, HeadAdapter, as_classifier, create_model, evaluating, find_head, inspecting
from tacrecon.recipes import MIN_SIDE, model_kwargs


@pytest.mark.parametrize("name", MODELS.names())
def test_contract(name):
    model = create_model(name, num_classes=7).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        logits = model(x)
        f = model.forward_features(x)
        z = model.forward_head(f, pre_logits=True)
        head = model.get_classifier()
    assert logits.shape == (3, 7)
    assert isinstance(head, nn.Linear) and head.out_features == 7
    assert z.shape == (3, model.latent_dim) == (3, head.in_features)
    torch.testing.assert_close(head(z), logits)
    torch.testing.assert_close(model.latent(x), z)


@pytest.mark.parametrize("name", MODELS.names())
def test_latent_is_head_input(name):
    model = create_model(name, num_classes=5).eval()
    seen = []
    model.get_classifier().register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        model(x)
        torch.testing.assert_close(model.latent(x), seen[0])


@pytest.mark.parametrize("name", MODELS.names())
def test_one_channel_and_small_inputs(name):
    side = MIN_SIDE.get(name, 16)
    model = create_model(name, num_classes=10, in_chans=1).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, side, side)).shape == (2, 10)


def test_a_model_too_deep_for_the_images_is_one_error():
    from tacrecon.data import load_dataset

    with pytest.raises(TacreconError, match="vgg11_bn needs images of at least 32x32"):
        model_kwargs("vgg11_bn", load_dataset("digits"))


def test_normalization_is_inside_and_not_in_state_dict():
    model = create_model("test_cnn", mean=[0.1, 0.2, 0.3], std=[0.5, 0.5, 0.5])
    assert not any("normalize" in k for k in model.state_dict())
    torch.testing.assert_close(model.normalize.mean.flatten(), torch.tensor([0.1, 0.2, 0.3]))


def test_preact_state_dict_names_match_backdoorbench():
    keys = set(create_model("preact_resnet18").state_dict())
    for key in ["conv1.weight", "layer1.0.bn1.weight", "layer1.0.conv1.weight", "layer1.1.conv2.weight",
                "layer2.0.shortcut.0.weight", "layer4.1.bn2.running_var", "linear.weight",
                "linear.bias"]:
        assert key in keys
    assert "layer1.0.shortcut.0.weight" not in keys and "bn.weight" not in keys
    assert len(keys) == 102  # BackdoorBench's PreActResNet18 state_dict has 102 entries


def test_bad_stats_rejected():
    with pytest.raises(TacreconError):
        create_model("test_cnn", mean=[0.5], std=[0.5])


def test_unknown_model_lists_known():
    with pytest.raises(TacreconError, match="known: .*resnet_small"):
        create_model("resnet_huge")


def test_adapter_on_sequential():
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.ReLU(), nn.Linear(6, 4))
    model = as_classifier(net, num_classes=4).eval()
    x = torch.rand(5, 3, 2, 2)
    assert isinstance(model, HeadAdapter) and model.head_name == "3"
    assert model.latent_dim == 6 and model.num_classes == 4
    torch.testing.assert_close(model(x), net(x))
    torch.testing.assert_close(model.latent(x), torch.relu(net[1](x.flatten(1))))
    model.check(x)


class Custom(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Conv2d(3, 8, 3)
        self.aux = nn.Linear(8, 10)  # a linear with the class count that is not the head
        self.out = nn.Linear(8, 10)

    def forward(self, x):
        return self.out(torch.relu(self.body(x)).mean((2, 3)))


def test_adapter_on_custom_module_picks_last_linear_and_named_head():
    net = Custom().eval()
    model = as_classifier(net, num_classes=10)
    assert model.head_name == "out"
    x = torch.rand(2, 3, 8, 8)
    model.check(x)
    assert find_head(net, name="aux")[0] == "aux"
    with pytest.raises(TacreconError, match="not called"):
        as_classifier(net, head="aux").latent(x)


def test_adapter_normalizes_when_asked():
    net = nn.Sequential(nn.Flatten(), nn.Linear(3, 2))
    model = as_classifier(net, mean=[0.5] * 3, std=[0.25] * 3)
    x = torch.rand(4, 3, 1, 1)
    torch.testing.assert_close(model(x), net((x - 0.5) / 0.25))


def test_adapter_errors():
    with pytest.raises(TacreconError, match="no nn.Linear"):
        as_classifier(nn.Sequential(nn.Flatten(), nn.Linear(3, 2)), num_classes=10)
    with pytest.raises(TacreconError, match="no layer named"):
        as_classifier(nn.Sequential(nn.Linear(3, 2)), head="fc")
    with pytest.raises(TacreconError, match="not nn.Linear"):
        as_classifier(nn.Sequential(nn.Linear(3, 2), nn.ReLU()), head="1")


def test_adapter_check_detects_op_after_head():
    net = nn.Sequential(nn.Flatten(), nn.Linear(3, 4), nn.Softmax(dim=1))
    with pytest.raises(TacreconError, match="last operation"):
        as_classifier(net, num_classes=4).check(torch.rand(2, 3, 1, 1))


def test_registered_model_returned_as_is():
    model = create_model("test_cnn")
    assert as_classifier(model) is model


def test_locate_picks_the_last_called_head_and_accepts_a_log_softmax():
    class AuxAfter(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.fc, self.aux = nn.Flatten(), nn.Linear(12, 4), nn.Linear(12, 4)

        def forward(self, x):
            return torch.log_softmax(self.fc(self.body(x)), dim=1)

    model = as_classifier(AuxAfter().eval(), num_classes=4)
    assert model.head_name == "aux"  # the last registered, before running anything
    x = torch.rand(3, 3, 2, 2)
    model.locate(x)
    assert model.head_name == "fc" and model.latent(x).shape == (3, 12)
    with pytest.raises(TacreconError, match="last operation"):
        as_classifier(AuxAfter().eval(), head="aux").locate(x)  # a named head is only checked


def test_evaluating_and_inspecting_give_the_mode_and_gradients_back_even_on_an_error():
    model = create_model("test_cnn", num_classes=3, in_chans=1)
    model.train()
    with pytest.raises(RuntimeError), evaluating(model):
        assert not model.training
        raise RuntimeError("boom")
    assert model.training
    model.eval()
    with inspecting(model):
        assert not any(p.requires_grad for p in model.parameters())
    assert not model.training and all(p.requires_grad for p in model.parameters())
