"""tacrecon.tac.repair: the TAC loss and its refresh; the estimator's fine-tune with them."""

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
