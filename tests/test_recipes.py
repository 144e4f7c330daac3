"""The training recipe per data set and the model builder (tacrecon/recipes.py)."""

import torch

from tacrecon.data import load_dataset
from tacrecon.recipes import build_model, default_train_config, model_kwargs


def test_flips_only_where_the_recipe_says():
    assert default_train_config("cifar10").flip and not default_train_config("gtsrb").flip  # signs are not symmetric
    assert not default_train_config("digits").flip and default_train_config("digits").crop_padding == 2
    assert default_train_config("gtsrb", epochs=3).epochs == 3


def test_build_model_is_seeded_and_leaves_the_global_rng_alone():
    kwargs = model_kwargs("test_cnn", load_dataset("digits"))
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a, b, c = build_model("test_cnn", kwargs, 0), build_model("test_cnn", kwargs, 0), build_model("test_cnn", kwargs, 1)
    assert torch.equal(torch.random.get_rng_state(), before)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert not torch.equal(a.fc.weight, c.fc.weight)
