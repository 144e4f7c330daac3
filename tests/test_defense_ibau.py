"""i-BAU's cores: the fixed-point hypergradient (closed form, finite differences), the universal
perturbation step, the perturbed-row mask, the perturbation units, validation."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from tacrecon.defenses import create_defense
from tacrecon.defenses.ibau import fixed_point_hypergradient, perturbation_scale, perturbed_rows, universal_perturbation
from tacrecon.errors import TacreconError
from tacrecon.models import create_model


def quadratic_problem(seed=0, n=4, m=3):
    """L_in = 1/2 d'Ad - d'B theta (d* = A^-1 B theta), L_out = 1/2 ||d - c||^2 + e'theta."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(n, n, generator=g, dtype=torch.float64)
    a = q @ q.T / n + torch.eye(n, dtype=torch.float64)
    b = torch.randn(n, m, generator=g, dtype=torch.float64)
    c, e = torch.randn(n, generator=g, dtype=torch.float64), torch.randn(m, generator=g, dtype=torch.float64)
    theta = torch.randn(m, generator=g, dtype=torch.float64, requires_grad=True)
    inner = lambda d: 0.5 * d @ a @ d - d @ b @ theta  # noqa: E731
    outer = lambda d: 0.5 * (d - c).pow(2).sum() + e @ theta  # noqa: E731
    d_star = torch.linalg.solve(a, b @ theta.detach())
    return a, b, c, e, theta, inner, outer, d_star


def test_hypergradient_equals_the_truncated_neumann_series_on_a_quadratic():
    a, b, c, e, theta, inner, outer, d_star = quadratic_problem()
    step, k = 0.2, 3
    (grad,) = fixed_point_hypergradient(inner, outer, d_star, [theta], step, k)
    g = d_star - c
    jac = torch.eye(len(c), dtype=torch.float64) - step * a  # d Phi / d delta
    v = sum(torch.linalg.matrix_power(jac, j) @ g for j in range(k))
    assert torch.allclose(grad, e + step * b.T @ v, atol=1e-12)


def test_hypergradient_converges_to_the_implicit_gradient_on_a_quadratic():
    a, b, c, e, theta, inner, outer, d_star = quadratic_problem(seed=1)
    (grad,) = fixed_point_hypergradient(inner, outer, d_star, [theta], 0.2, 400)
    exact = b.T @ torch.linalg.solve(a, d_star - c) + e  # d/dtheta L_out(A^-1 B theta, theta)
    assert torch.allclose(grad, exact, atol=1e-10)
    (direct,) = fixed_point_hypergradient(inner, outer, d_star, [theta], 0.2, 1)
    assert not torch.allclose(direct, exact, atol=1e-3)  # the implicit part matters


def test_hypergradient_matches_finite_differences_on_a_linear_model():
    """i-BAU's own losses on a linear classifier: inner -CE(W(x + d) + b) + reg ||d||^2 (strongly
    convex for a large reg), outer CE with d on two rows; the total derivative in (W, b) by
    central differences of theta -> L_out(d*(theta), theta), d* solved by gradient descent."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(8, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (8,), generator=g)
    w = (0.5 * torch.randn(3, 5, generator=g, dtype=torch.float64)).requires_grad_(True)
    bias = (0.1 * torch.randn(3, generator=g, dtype=torch.float64)).requires_grad_(True)
    mask = torch.zeros(8, 1, dtype=torch.float64)
    mask[[1, 6]] = 1.0
    reg, step = 1.0, 0.3

    def inner_at(wt, bt):
        return lambda d: -F.cross_entropy((x + d) @ wt.T + bt, y) + reg * d.pow(2).sum()

    def outer_at(wt, bt):
        return lambda d: F.cross_entropy((x + mask * d) @ wt.T + bt, y)

    def solve(wt, bt):
        d = torch.zeros(5, dtype=torch.float64, requires_grad=True)
        loss = inner_at(wt, bt)
        for _ in range(300):
            d = (d - step * torch.autograd.grad(loss(d), d)[0]).detach().requires_grad_(True)
        return d.detach()

    d_star = solve(w, bias)
    grads = fixed_point_hypergradient(inner_at(w, bias), outer_at(w, bias), d_star, [w, bias], step, 200)
    direction = [torch.randn(3, 5, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)]
    h = 1e-5

    def total(t):
        wt, bt = w.detach() + t * direction[0], bias.detach() + t * direction[1]
        return float(outer_at(wt, bt)(solve(wt, bt)))

    numeric = (total(h) - total(-h)) / (2 * h)
    analytic = float(sum((gr * dr).sum() for gr, dr in zip(grads, direction)))
    assert analytic == pytest.approx(numeric, rel=1e-5, abs=1e-8)
    direct = torch.autograd.grad(outer_at(w, bias)(d_star), [w, bias])
    assert float(sum((gr * dr).sum() for gr, dr in zip(direct, direction))) != pytest.approx(numeric, rel=1e-3)


def test_hypergradient_without_perturbed_rows_is_the_plain_gradient():
    model = nn.Linear(4, 3).double()
    x, y = torch.randn(6, 4, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])
    params = list(model.parameters())
    inner = lambda d: -F.cross_entropy(model(x + d), y) + d.pow(2).sum()  # noqa: E731
    outer = lambda d: F.cross_entropy(model(x), y) + 0 * d.sum()  # noqa: E731
    grads = fixed_point_hypergradient(inner, outer, torch.zeros(4, dtype=torch.float64), params, 0.1, 5)
    plain = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    for a, b in zip(grads, plain):
        assert torch.allclose(a, b)


def test_universal_perturbation_step_increases_the_loss():
    torch.manual_seed(0)
    model = create_model("test_cnn", num_classes=4).eval()
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 16, 16, generator=g)
    scale = perturbation_scale(model, 3)
    u = universal_perturbation(model, iter([(x[:32], None), (x[32:], None)]), scale, lr=10.0, reg=0.001)
    assert u.shape == (1, 3, 16, 16) and u.abs().sum() > 0
    with torch.no_grad():
        pred = model(x).argmax(1)
        before = F.cross_entropy(model(x), pred)
        after = F.cross_entropy(model(x + scale * u), pred)
    assert after > before


def test_perturbation_scale_is_the_model_std_or_one():
    model = create_model("test_cnn", std=(0.2, 0.3, 0.4))
    assert torch.allclose(perturbation_scale(model, 3).flatten(), torch.tensor([0.2, 0.3, 0.4]))
    plain = nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten())
    assert torch.equal(perturbation_scale(plain, 3), torch.ones(1, 3, 1, 1))


@pytest.mark.parametrize("batch, portion, count", [(256, 0.01, 2), (196, 0.01, 1), (64, 0.01, 1),
                                                   (100, 0.05, 5), (64, 0.0, 0), (10, 1.0, 10)])
def test_perturbed_rows_counts(batch, portion, count):
    mask = perturbed_rows(batch, portion, torch.Generator().manual_seed(0))
    assert mask.shape == (batch, 1, 1, 1) and int(mask.sum()) == count and set(mask.unique().tolist()) <= {0.0, 1.0}


@pytest.mark.parametrize("field, value", [("K", 0), ("rounds", -1), ("portion", 1.5), ("inner_step", 0.0),
                                          ("batch_size", 0), ("lr", -1.0)])
def test_validate_names_the_field(field, value):
    with pytest.raises(TacreconError, match=field):
        create_defense("ibau", **{field: value})
