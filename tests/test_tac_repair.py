"""tacrecon.tac.repair: the TAC loss and its refresh; the estimator's fine-tune with them."""

import pytest
import torch
import torch.nn.functional as F
from conftest import make_tac

from tacrecon.models import create_model, latents_of
from tacrecon.tac.detect import reconstruct
from tacrecon.tac.repair import unlearn_loss


def test_unlearn_recompute_and_frozen_head(digits):
    model = create_model("test_cnn", in_chans=1)
    clean = digits.train.subset(torch.arange(64))
    shift = reconstruct(model, latents_of(model, clean.x)).shifts[[0]].float()
    head_before = model.get_classifier().weight.clone()
    tac = make_tac(epochs=2, batch_size=32, lr=0.01, crop_padding=0, beta=1.0, recompute=True, freeze_head=True)
    history = tac.unlearn(model, clean, [0], shift, tac.beta, torch.Generator().manual_seed(0), None)
    assert len(history) == 2
    assert torch.equal(model.get_classifier().weight, head_before)


def test_multi_target_unlearn_loss_averages_the_targets(digits):
    model = create_model("test_cnn", in_chans=1).eval()
    x, y = digits.train.x[:32], digits.train.y[:32]
    shifts = torch.randn(2, model.latent_dim, generator=torch.Generator().manual_seed(0))
    got = unlearn_loss([shifts], [0, 3], beta=0.5)(model, x, y)
    z, head = model.latent(x), model.get_classifier()
    terms = [F.cross_entropy(head(z[y != t] + shifts[i]), y[y != t]) for i, t in enumerate([0, 3])]
    assert torch.allclose(got, F.cross_entropy(head(z), y) + 0.5 * (terms[0] + terms[1]) / 2)
    clean = digits.train.subset(torch.arange(64))
    tac = make_tac(epochs=1, batch_size=32, lr=0.01, crop_padding=0)
    both = reconstruct(model, latents_of(model, clean.x)).shifts[[0, 3]].float()
    assert len(tac.unlearn(model, clean, [0, 3], both, 0.0, torch.Generator().manual_seed(0), None)) == 1


def test_distillation_ignores_the_targets_columns_and_vanishes_on_the_teacher():
    from tacrecon.tac.repair import distillation

    g = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(8, 5, generator=g), torch.randn(8, 5, generator=g)
    assert float(distillation(teacher, teacher, [2], 2.0)) == pytest.approx(0.0, abs=1e-6)
    pulled = teacher.clone()
    pulled[:, 2] += 10.0  # the teacher's pull towards target 2 is not taught back
    assert torch.allclose(distillation(student, teacher, [2], 2.0), distillation(student, pulled, [2], 2.0))
    assert float(distillation(student, teacher, [2], 2.0)) > 0


def test_unlearn_loss_adds_the_distillation_from_the_teacher(digits):
    from tacrecon.tac.repair import distillation

    model, teacher = create_model("test_cnn", in_chans=1).eval(), create_model("test_cnn", in_chans=1).eval()
    x, y = digits.train.x[:16], digits.train.y[:16]
    zero = torch.zeros(1, model.latent_dim)
    plain = unlearn_loss([zero], [0], beta=0.0)(model, x, y)
    with_kd = unlearn_loss([zero], [0], beta=0.0, teacher=teacher, distill=0.5)(model, x, y)
    with torch.no_grad():
        expected = plain + 0.5 * distillation(model(x), teacher(x), [0], 2.0)
    assert torch.allclose(with_kd, expected)


def test_unlearn_loss_can_leave_the_stamped_share_out_of_the_distillation(digits):
    from tacrecon.tac.repair import distillation

    model, teacher = create_model("test_cnn", in_chans=1).eval(), create_model("test_cnn", in_chans=1).eval()
    x, y = digits.train.x[:16], digits.train.y[:16]
    zero = torch.zeros(1, model.latent_dim)
    plain = unlearn_loss([zero], [0], beta=0.0)(model, x, y)
    skipped = unlearn_loss([zero], [0], beta=0.0, teacher=teacher, distill=0.5, skip=0.25)(model, x, y)
    with torch.no_grad():
        expected = plain + 0.5 * distillation(model(x[4:]), teacher(x[4:]), [0], 2.0)
    assert torch.allclose(skipped, expected)
    everything = unlearn_loss([zero], [0], beta=0.0, teacher=teacher, distill=0.5, skip=1.0)(model, x, y)
    assert torch.allclose(everything, plain)  # nothing left to distill on


def test_pair_patch_sends_each_flagged_source_to_its_own_target(planted):
    from tacrecon.models import as_classifier
    from tacrecon.tac.config import StandInConfig
    from tacrecon.tac.repair import search_pair_patch

    art, clean = planted["badnets"]  # BadNets to 0: a patch that sends every source to 0 exists
    model = as_classifier(art.model).eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    pairs = [(s, 0) for s in range(1, 10)] + [(1, 5)]  # a source's first pair counts
    mask, pattern, stats = search_pair_patch(model, clean, pairs, StandInConfig(patch=9), torch.Generator().manual_seed(0))
    assert mask.shape == (1, 1, *clean.x.shape[2:]) and pattern.shape == (1, *clean.x.shape[1:])
    assert int((mask > 0).sum()) <= 9
    assert stats["pair_patch_pairs"] == [[s, 0] for s in range(1, 10)] and stats["pair_patch_success"] > 0.5
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())  # the model is left alone
