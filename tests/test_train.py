"""The one training loop: it learns, it is repeatable under a seed, its config is strict."""

import pytest
import torch

from tacrecon.data.augment import add_clipped, augment, random_crop, random_flip, to_device
from tacrecon.data.split import Split
from tacrecon.errors import TacreconError
from tacrecon.models import create_model
from tacrecon.train import TrainConfig, fit, lr_factor


def toy_split(n=256, seed=0):
    """Two classes told apart by the brightness of the left half."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, 16, 16, generator=g) * 0.5
    y = torch.randint(0, 2, (n,), generator=g)
    x[y == 1, :, :, :8] += 0.5
    return Split(x, y)


CFG = TrainConfig(epochs=4, batch_size=32, lr=0.05, progress=False)


def trained(seed):
    model = create_model("test_cnn", num_classes=2)
    torch.manual_seed(123)  # identical initialisation for both runs
    model = create_model("test_cnn", num_classes=2)
    history = fit(model, toy_split(), CFG, generator=torch.Generator().manual_seed(seed))
    return model, history


def test_fit_lowers_loss_and_learns():
    model, history = trained(0)
    assert history[-1] < history[0] * 0.7
    data = toy_split(128, seed=1)
    with torch.no_grad():
        acc = (model(data.x).argmax(1) == data.y).float().mean()
    assert acc > 0.9
    assert not model.training


def test_fit_is_repeatable_under_a_seed():
    a, ha = trained(0)
    b, hb = trained(0)
    c, _ = trained(1)
    assert ha == hb
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(va, vb), k
    assert not torch.equal(a.fc.weight, c.fc.weight)


def test_fit_hooks_and_params():
    model = create_model("test_cnn", num_classes=2)
    head_before = model.fc.weight.clone()
    conv_before = model.features[0][0].weight.clone()
    calls = []

    def hook(x, y, g):  # what the hook returns is what the model learns: every label becomes 1
        calls.append(x.shape[0])
        return x, torch.ones_like(y)

    data = toy_split(64)
    fit(model, data, CFG.replace(epochs=3), batch_hook=hook, params=model.fc.parameters())
    assert sum(calls) == 3 * 64
    assert not torch.equal(model.fc.weight, head_before)
    assert torch.equal(model.features[0][0].weight, conv_before)
    with torch.no_grad():
        assert bool((model.eval()(data.x).argmax(1) == 1).all())


def test_train_config_strict():
    with pytest.raises(TacreconError, match="unknown TrainConfig key"):
        TrainConfig.from_dict({"epoch": 3})
    with pytest.raises(TacreconError, match="schedule"):
        TrainConfig.from_dict({"schedule": "step"})
    with pytest.raises(TacreconError, match="must be int"):
        TrainConfig.from_dict({"epochs": 2.5})
    with pytest.raises(TacreconError, match="empty"):
        fit(create_model("test_cnn"), Split(torch.rand(0, 3, 8, 8), torch.zeros(0, dtype=torch.long)), CFG)


def test_schedules():
    cfg = TrainConfig(warmup=0.25)
    assert lr_factor(cfg, 0, 100) == 0 and lr_factor(cfg, 25, 100) == 1 and lr_factor(cfg, 100, 100) == 0
    cos = cfg.replace(schedule="cosine")
    assert lr_factor(cos, 0, 10) == 1 and abs(lr_factor(cos, 10, 10)) < 1e-12


def test_augment_shapes_and_content():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(8, 3, 10, 10)
    assert augment(x, g).shape == x.shape
    assert torch.equal(random_crop(x, 0, g), x)
    flipped = random_flip(x, g)
    same = [torch.equal(a, b) for a, b in zip(x, flipped)]
    for a, b, kept in zip(x, flipped, same):
        assert kept or torch.equal(a.flip(2), b)
    assert any(same) and not all(same)  # about half of the images are flipped
    # a crop is a shifted window of the reflect-padded image: every value comes from x
    image = torch.arange(100.).view(1, 1, 10, 10).expand(16, 1, 10, 10)
    crop = random_crop(image, 2, g)
    padded = torch.nn.functional.pad(image, (2, 2, 2, 2), mode="reflect")
    windows = [padded[0, :, i:i + 10, j:j + 10] for i in range(5) for j in range(5)]
    assert all(any(torch.equal(c, w) for w in windows) for c in crop)
    assert not all(torch.equal(c, image[0]) for c in crop)  # some are shifted


def test_augment_draws_offsets_then_flips_from_the_generator():
    # the draws, in order, that make a CPU run repeatable: the crop's dy and dx, then the flips
    x = torch.rand(6, 3, 8, 8)
    g = torch.Generator().manual_seed(3)
    dy, dx = torch.randint(0, 5, (6,), generator=g), torch.randint(0, 5, (6,), generator=g)
    flip = torch.rand(6, generator=g) < 0.5
    padded = torch.nn.functional.pad(x, (2,) * 4, mode="reflect")
    want = torch.stack([padded[i, :, dy[i]:dy[i] + 8, dx[i]:dx[i] + 8] for i in range(6)])
    want = torch.where(flip[:, None, None, None], want.flip(3), want)
    assert torch.equal(augment(x, torch.Generator().manual_seed(3), padding=2), want)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="the pinned, non-blocking path is for a GPU")
def test_to_device_copies_to_a_gpu_without_blocking():
    t = torch.arange(10)
    assert torch.equal(to_device(t, torch.device("cuda")).cpu(), t)


def test_to_device_on_the_cpu_is_a_plain_move():
    t = torch.arange(10)
    assert to_device(t, torch.device("cpu")) is t


def test_add_clipped_broadcasts_a_perturbation_and_keeps_the_image_range():
    x = torch.tensor([0.0, 0.5, 0.95]).reshape(3, 1, 1, 1)
    out = add_clipped(x, torch.full((1, 1, 1), 0.1))
    assert torch.allclose(out.flatten(), torch.tensor([0.1, 0.6, 1.0])) and torch.equal(x.flatten()[2], torch.tensor(0.95))
    assert float(add_clipped(x, torch.full((1, 1, 1), -0.2)).min()) == 0.0


def test_dropout_draws_do_not_depend_on_what_ran_before():
    """fit seeds torch's global generator (dropout's) from its own generator for the run and gives
    it back afterwards: the same call comes out the same whatever state the global one was in."""
    g = torch.Generator().manual_seed(0)
    data = Split(torch.rand(64, 1, 4, 4, generator=g), torch.randint(3, (64,), generator=g))

    def trained(global_seed: int) -> tuple[torch.Tensor, torch.Tensor]:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 32), torch.nn.Dropout(0.5),
                                    torch.nn.Linear(32, 3))
        torch.manual_seed(global_seed)  # whatever ran before in the process
        fit(model, data, TrainConfig(epochs=2, batch_size=16, crop_padding=0, progress=False),
            generator=torch.Generator().manual_seed(1))
        after = torch.rand(1)  # the global generator goes on as if fit had not drawn from it
        torch.manual_seed(global_seed)
        assert torch.equal(after, torch.rand(1))
        return torch.cat([p.detach().flatten() for p in model.parameters()]), after

    before = torch.random.get_rng_state()
    assert torch.equal(trained(1)[0], trained(2)[0])
    torch.random.set_rng_state(before)


def test_an_epoch_leaves_out_a_tiny_last_batch():
    from tacrecon.train import MIN_TAIL, batches_per_epoch
    assert batches_per_epoch(258, 128) == 2  # a tail of 2 images: batch norm on noise
    assert batches_per_epoch(256 + MIN_TAIL, 128) == 3 and batches_per_epoch(287, 128) == 3
    assert batches_per_epoch(256, 128) == 2 and batches_per_epoch(5, 128) == 1  # one small batch is all there is
