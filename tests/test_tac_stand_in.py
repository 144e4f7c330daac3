"""tacrecon.tac.stand_in: the stand-in trigger and the batch hook that stamps it."""

import pytest
import torch

from tacrecon.errors import TacreconError
from tacrecon.metrics import predict
from tacrecon.models import as_classifier, latents_of
from tacrecon.tac.detect import reconstruct
from tacrecon.tac.stand_in import ChasingStandIns, search_stand_in, stamp_patches, stamp_stand_ins


def test_stand_in_trigger_is_bounded_and_reproduces_the_tac(planted):
    art, clean = planted["badnets"]
    model = as_classifier(art.model).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    shift = reconstruct(model, latents_of(model, clean.x)).shifts[0].float()
    delta = search_stand_in(model, clean, 0, shift, eps=0.3, steps=60, batch_size=64)
    assert delta.shape == clean.x.shape[1:] and float(delta.abs().max()) <= 0.3
    assert model.training  # its mode is given back, its weights untouched
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    others = clean.x[clean.y != 0]

    def error(d):
        return float((latents_of(model, (others + d).clamp(0, 1)) - latents_of(model, others) - shift)
                     .square().sum(1).mean())
    assert error(delta) < 0.8 * error(torch.zeros_like(delta))
    hits = float((predict(model, (others + delta).clamp(0, 1)) == 0).float().mean())
    base = float((predict(model, others) == 0).float().mean())
    # it works like a trigger: it sends other classes to the target (0.32 vs 0.0 with two torch
    # threads, 0.19 vs 0.0 with one, whose model trains a little differently)
    assert hits > base + 0.1
    with pytest.raises(TacreconError, match="no image outside class 0"):
        search_stand_in(model, clean.subset(torch.nonzero(clean.y == 0).flatten()), 0, shift, eps=0.3)


def test_stamp_stand_ins_stamps_the_first_share_of_a_batch_in_turn():
    deltas = torch.stack([torch.full((1, 2, 2), 0.25), torch.full((1, 2, 2), -0.25)])
    x, y = torch.full((10, 1, 2, 2), 0.5), torch.arange(10)
    out, labels = stamp_stand_ins(deltas, 0.4)(x, y, torch.Generator())
    assert torch.equal(labels, y) and torch.equal(x, torch.full((10, 1, 2, 2), 0.5))  # the input is not modified
    assert out[:4, 0, 0, 0].tolist() == [0.75, 0.25, 0.75, 0.25] and bool((out[4:] == 0.5).all())
    assert torch.equal(stamp_stand_ins(deltas, 0.01)(x, y, torch.Generator())[0], x)  # a share under one image


def test_chasing_stand_in_moves_towards_its_target_within_its_bound(planted):
    art, clean = planted["badnets"]  # its backdoor's target is 0; the stand-in chases class 3
    model = as_classifier(art.model).train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    start = torch.zeros(1, *clean.x.shape[1:])
    others = clean.x[clean.y != 3]

    def hits(delta):
        return float((predict(model, (others + delta).clamp(0, 1)) == 3).float().mean())

    hook = ChasingStandIns(model, start, [3], share=0.5, eps=0.2, steps=1, step_size=0.05)
    x, y = clean.x[:64], clean.y[:64]
    for _ in range(10):
        out, labels = hook(x, y, torch.Generator())
    assert torch.equal(labels, y) and bool((start == 0).all())  # labels kept, the given stand-ins not modified
    assert float(hook.deltas.abs().max()) <= 0.2 + 1e-6
    assert torch.equal(out[:32], (x[:32] + hook.deltas).clamp(0, 1)) and torch.equal(out[32:], x[32:])
    assert model.training and all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    # the chased stand-in now sends other classes' images to the target, where none went before
    assert hits(torch.zeros(1)) < 0.05 and hits(hook.deltas[0]) > 0.3


def test_stamp_patches_stamps_its_share_after_the_start_in_turn():
    masks = torch.zeros(2, 1, 2, 2)
    masks[:, 0, 0, 0] = 1.0
    patterns = torch.stack([torch.ones(1, 2, 2), torch.zeros(1, 2, 2)])
    x, y = torch.full((10, 1, 2, 2), 0.5), torch.arange(10)
    out, labels = stamp_patches(masks, patterns, 0.2, 0.3)(x, y, torch.Generator())
    assert torch.equal(labels, y) and torch.equal(x, torch.full((10, 1, 2, 2), 0.5))
    assert out[3:5, 0, 0, 0].tolist() == [1.0, 0.0]  # images 3 and 4, the patches in turn, one pixel each
    assert bool((out[3:5, 0, 1:] == 0.5).all()) and torch.equal(out[:3], x[:3]) and torch.equal(out[5:], x[5:])


def test_the_second_half_of_an_odd_batch_stops_at_its_end():
    # stand_in_share 0.5 with patches: stand-ins on round(0.5 * 31) = 16 images, patches from 16 on
    masks, patterns = torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)
    x, y = torch.full((31, 1, 2, 2), 0.5), torch.arange(31)
    out, _ = stamp_patches(masks, patterns, 0.5, 0.5)(x, y, torch.Generator())
    assert torch.equal(out[:16], x[:16]) and bool((out[16:] == 0).all())
