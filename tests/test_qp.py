"""The latent QP against an independent solver (cvxpy) on the uncompressed n (C-1) constraints."""

import math

import numpy as np
import pytest
import torch

from tacrecon.errors import TacreconError
from tacrecon.qp import constraint_offsets, norm_at_active_set, solve_latent_qp


def problem(n=40, d=12, c=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, d, generator=g, dtype=torch.float64).relu()
    w = torch.randn(c, d, generator=g, dtype=torch.float64)
    b = torch.randn(c, generator=g, dtype=torch.float64)
    return z, w, b


def reference(z, w, b, k, quantile=None):
    """min 1/2 ||s||^2 s.t. every (kept) sample is sent to class k, with all n (C-1) constraints."""
    cp = pytest.importorskip("cvxpy")  # only the reference needs it: the other tests run without
    z, w = z.numpy(), w.numpy()
    b = np.zeros(w.shape[0]) if b is None else b.numpy()
    logits = z @ w.T + b
    if quantile is not None:  # keep, per constraint j, the samples up to the quantile of the margin
        keep = {j: logits[:, j] - logits[:, k] <= np.quantile(logits[:, j] - logits[:, k], quantile, method="lower") + 1e-12
                for j in range(w.shape[0])}
    s = cp.Variable(w.shape[1])
    cons = [(z[keep[j]] if quantile is not None else z) @ (w[k] - w[j]) + (w[k] - w[j]) @ s + b[k] - b[j] >= 0
            for j in range(w.shape[0]) if j != k]
    prob = cp.Problem(cp.Minimize(0.5 * cp.sum_squares(s)), cons)
    prob.solve(solver=cp.CLARABEL, tol_gap_abs=1e-12, tol_gap_rel=1e-12, tol_feas=1e-12)
    return prob.status, s.value


def assert_close_rel(a, b, rel=1e-5):
    assert np.abs(a - b).max() <= rel * max(1.0, np.abs(b).max())


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("use_bias", [True, False])
def test_matches_cvxpy(seed, use_bias):
    z, w, b = problem(seed=seed)
    b = b if use_bias else None
    result = solve_latent_qp(z, w, b)
    for k in range(w.shape[0]):
        status, s = reference(z, w, b, k)
        assert status == "optimal"
        assert_close_rel(result.shifts[k].numpy(), s)
        assert result.norms[k] == pytest.approx(np.linalg.norm(s), rel=1e-5, abs=1e-9)
    assert float(result.kkt_residual.max()) < 1e-9


def test_quantile_variant_matches_cvxpy():
    z, w, b = problem(n=60, seed=4)
    result = solve_latent_qp(z, w, b, quantile=0.9)
    assert bool((result.norms <= solve_latent_qp(z, w, b).norms + 1e-12).all())  # fewer samples, smaller shift
    offsets = constraint_offsets(z, w, b, quantile=0.9)
    for k in range(w.shape[0]):
        margins = (z @ w.T + b) - (z @ w.T + b)[:, k:k + 1]
        expected = torch.quantile(margins, 0.9, dim=0, interpolation="lower")
        assert torch.allclose(offsets[k], expected.masked_fill(torch.arange(w.shape[0]) == k, 0))
        status, s = reference(z, w, b, k, quantile=0.9)
        assert_close_rel(result.shifts[k].numpy(), s)


def test_dependent_constraints_more_classes_than_dimensions():
    z, w, b = problem(n=30, d=3, c=9, seed=5)
    result = solve_latent_qp(z, w, b)
    for k in range(9):
        status, s = reference(z, w, b, k)
        if status == "optimal":
            assert bool(result.feasible[k])
            assert_close_rel(result.shifts[k].numpy(), s, rel=1e-4)
        else:
            assert status.startswith("infeasible") and not bool(result.feasible[k])
            assert math.isinf(float(result.norms[k]))


def test_batched_equals_looped():
    z, w, b = problem(c=8, seed=6)
    full = solve_latent_qp(z, w, b)
    for k in (0, 3, 7):
        one = solve_latent_qp(z, w, b, classes=[k])
        assert torch.equal(one.shifts[0], full.shifts[k]) and torch.equal(one.multipliers[0], full.multipliers[k])


def test_closed_form_with_one_constraint():
    # two classes: s = c a / ||a||^2 with a = w_k - w_j and c the largest margin of j over k
    z, w, b = problem(c=2, seed=7)
    result = solve_latent_qp(z, w, b)
    for k, j in ((0, 1), (1, 0)):
        a = w[k] - w[j]
        c = float(((z @ w.T + b)[:, j] - (z @ w.T + b)[:, k]).max())
        expected = max(c, 0.0) * a / a.dot(a)
        torch.testing.assert_close(result.shifts[k], expected)
        assert bool(result.active[k, j]) == (c > 0)


def test_class_already_reached_needs_no_shift():
    z = torch.ones(5, 2, dtype=torch.float64)
    w = torch.tensor([[1.0, 1.0], [-1.0, -1.0], [0.0, 0.0]], dtype=torch.float64)
    result = solve_latent_qp(z, w, None)
    assert float(result.norms[0]) == 0.0 and int(result.iterations[0]) == 0


def test_unreachable_class_is_infinite_not_wrong():
    # 1-d latent: class 1 has logit -1 while max(-z, z) >= 0, so no shift ever makes it win
    z = torch.linspace(-1, 1, 7, dtype=torch.float64)[:, None]
    w = torch.tensor([[-1.0], [0.0], [1.0]], dtype=torch.float64)
    b = torch.tensor([0.0, -1.0, 0.0], dtype=torch.float64)
    result = solve_latent_qp(z, w, b)
    assert not bool(result.feasible[1]) and math.isinf(float(result.norms[1]))
    assert bool(result.feasible[0]) and bool(result.feasible[2])


@pytest.mark.parametrize("bad,message", [
    (dict(z=torch.empty(0, 3)), "at least one clean sample"),
    (dict(z=torch.tensor([[float("nan"), 0, 0]])), "NaN or inf"),
    (dict(w=torch.ones(4, 5)), "do not fit"),
    (dict(b=torch.ones(3)), "bias must have shape"),
    (dict(w=torch.ones(1, 3), b=None), "two classes"),
])
def test_bad_inputs(bad, message):
    args = {"z": torch.rand(4, 3), "w": torch.randn(4, 3), "b": torch.zeros(4), **bad}
    with pytest.raises(TacreconError, match=message):
        solve_latent_qp(args["z"], args["w"], args["b"])
    with pytest.raises(TacreconError, match="quantile"):
        solve_latent_qp(torch.rand(4, 3), torch.randn(4, 3), None, quantile=1.5)


def test_sample_distances_lower_bound_the_universal_shift():
    from tacrecon.qp import sample_distances

    z, w, b = problem(n=30, c=5, seed=8)
    dist = sample_distances(z, w, b)
    result = solve_latent_qp(z, w, b)
    assert dist.shape == (30, 5) and bool((dist >= 0).all())
    assert bool((result.norms >= dist.amax(0) - 1e-9).all())
    # a sample already in class k is at distance 0 from it
    pred = (z @ w.T + b).argmax(1)
    assert bool((dist[torch.arange(30), pred] == 0).all())
    # the distance of a sample alone is the norm of its own one-sample QP (a lower bound of it)
    for i in range(3):
        single = solve_latent_qp(z[i:i + 1], w, b).norms
        assert bool((single >= dist[i] - 1e-9).all())


@pytest.mark.parametrize("quantile", [None, 0.9])
def test_constraint_offsets_in_chunks_equal_one_block(quantile):
    z, w, b = problem(n=30, d=8, c=7)
    whole = constraint_offsets(z, w, b, quantile=quantile)
    for budget in (1, 30 * 7 * 2, 30 * 7 * 3):  # one class, two, three classes of margins at a time
        assert torch.equal(constraint_offsets(z, w, b, quantile=quantile, budget=budget), whole)


def test_lower_quantile_is_torch_quantile_lower_by_selection():
    from tacrecon.qp import lower_quantile

    g = torch.Generator().manual_seed(0)
    for n in (1, 2, 7, 100, 2500):
        x = torch.randn(n, 3, 5, generator=g, dtype=torch.float64)
        for q in (1e-9, 0.1, 0.5, 0.9, 0.95, 0.99, 1.0):  # the kthvalue and the topk paths
            assert torch.equal(lower_quantile(x, q), torch.quantile(x, q, dim=0, interpolation="lower")), (n, q)


def test_sample_distances_bounds_its_memory_and_not_its_answer():
    from tacrecon.qp import sample_distances

    g = torch.Generator().manual_seed(0)
    z, w, b = torch.randn(50, 8, generator=g), torch.randn(6, 8, generator=g), torch.randn(6, generator=g)
    whole = sample_distances(z, w, b)
    assert torch.allclose(sample_distances(z, w, b, budget=36), whole, rtol=1e-12, atol=0)  # one sample at a time
    assert torch.allclose(sample_distances(z, w, b, budget=1), whole, rtol=1e-12, atol=0)


@pytest.mark.parametrize("quantile", [None, 0.5, 0.9, 1.0])
def test_constraint_offsets_are_the_brute_force_ones(quantile):
    from tacrecon.qp import quantile_offsets_torch

    z, w, b = problem(n=37, d=8, c=9, seed=9)
    logits = z @ w.T + b
    margins = logits[:, None, :] - logits[:, :, None]  # (n, k, j)
    brute = margins.amax(0) if quantile is None else torch.quantile(margins, quantile, dim=0, interpolation="lower")
    assert torch.equal(constraint_offsets(z, w, b, quantile=quantile), brute.fill_diagonal_(0))
    if quantile is not None:  # the torch path (a GPU's) selects the same values
        assert torch.equal(quantile_offsets_torch(logits, quantile, budget=100).fill_diagonal_(0), brute)


def test_many_active_constraints_grow_the_column_cache():
    z, w, b = problem(n=50, d=30, c=60, seed=10)
    result = solve_latent_qp(z, w, b)
    assert int(result.active.sum(1).max()) > 8  # more passive columns than the cache starts with
    assert bool(result.feasible.all()) and float(result.kkt_residual.max()) < 1e-9
    for k in (0, 17):
        one = solve_latent_qp(z, w, b, classes=[k])
        assert torch.equal(one.shifts[0], result.shifts[k])


@pytest.mark.parametrize("quantile", [None, 0.9])
def test_norm_at_active_set_is_the_norm_and_its_gradient(quantile):
    z, w, b = problem(n=60, d=8, c=5, seed=3)
    solved = solve_latent_qp(z, w, b, quantile=quantile)
    for k in range(5):
        norm = norm_at_active_set(z, w, b, k, solved.active[k], quantile)
        assert float(norm) == pytest.approx(float(solved.norms[k]), rel=1e-9, abs=1e-12)
    k = int(solved.norms.argmax())
    wg, zg = w.clone().requires_grad_(True), z.clone().requires_grad_(True)
    grad_w, grad_z = torch.autograd.grad(norm_at_active_set(zg, wg, b, k, solved.active[k], quantile), (wg, zg))
    step = 1e-6 * torch.randn(w.shape, generator=torch.Generator().manual_seed(1), dtype=w.dtype)
    moved = solve_latent_qp(z, w + step, b, quantile=quantile).norms[k] - solved.norms[k]
    assert float(moved) == pytest.approx(float((grad_w * step).sum()), rel=1e-4)
    assert grad_z.abs().sum() > 0  # the offsets' samples carry gradient to the latents


def test_norm_at_active_set_without_active_constraints_is_zero():
    z, w, b = problem()
    none = torch.zeros(w.shape[0], dtype=torch.bool)
    assert float(norm_at_active_set(z, w, b, 0, none)) == 0.0
