"""The per-class latent QP of TAC, solved exactly (pure tensors, no nn.Module).

For class k, the smallest single latent shift that sends every clean latent z_i to class k:

    s_k = argmin_s 1/2 ||s||^2   s.t.  (w_k - w_j)^T (z_i + s) + b_k - b_j >= 0   for all j != k, i.

The n (C-1) constraints compress to C-1: with a_j = w_k - w_j and
c_j = max_i [(w_j - w_k)^T z_i + b_j - b_k] (the largest logit margin of class j over k),
the constraints read A s >= c. This is a least-distance problem; we solve it through
Lawson & Hanson's reduction to a non-negative least-squares problem in the (C-1) multipliers,
in its Gram form (everything is a (C-1)x(C-1) matrix built from the C x C Gram matrix W W^T):

    u* = argmin_{u >= 0} 1/2 u^T (G + c c^T) u - c^T u,    G = A A^T,
    s_k = A^T u* / (1 - c^T u*),   lambda* = u* / (1 - c^T u*).

The reduction stays exact when the a_j are linearly dependent (C - 1 > d), and 1 - c^T u* = 0
certifies that no shift reaches class k (the class's region is empty): its norm is +inf.
The NNLS is solved by an active-set method (Lawson-Hanson in Gram form), which terminates
after finitely many steps with the exact optimum; each step solves a system the size of the
current active set, which is small in practice (a few constraints are active).
"""

from __future__ import annotations

import logging
import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from tacrecon.errors import TacreconError

log = logging.getLogger(__name__)


@dataclass
class QPResult:
    """The solution of the latent QP for a set of classes (float64, on the CPU).

    Attributes:
        classes: (K,) the classes solved, in order.
        shifts: (K, d) the minimal shifts s_k (NaN rows where infeasible).
        norms: (K,) ||s_k|| (+inf where infeasible).
        multipliers: (K, C) the KKT multipliers lambda_kj (0 at j = k).
        active: (K, C) True where the constraint of class j is active (lambda_kj > 0).
        offsets: (K, C) the offsets c_kj of the compressed constraints (0 at j = k).
        iterations: (K,) active-set iterations.
        kkt_residual: (K,) max of primal infeasibility, dual infeasibility and complementarity,
            relative to the scale of the problem.
        feasible: (K,) False where no latent shift reaches the class.
    """

    classes: Tensor
    shifts: Tensor
    norms: Tensor
    multipliers: Tensor
    active: Tensor
    offsets: Tensor
    iterations: Tensor
    kkt_residual: Tensor
    feasible: Tensor


def sample_distances(latents: Tensor, weight: Tensor, bias: Tensor | None = None, budget: int = 1 << 24) -> Tensor:
    """Lower bound of each sample's own distance to each class region: (n, d) -> (n, C).

    d_ik = max_j (logit_ij - logit_ik)_+ / ||w_k - w_j||, the distance from z_i to the farthest
    single half-space of class k's region (0 where sample i already lies in it). The universal
    shift s_k must reach every sample, so ||s_k|| >= max_i d_ik. The (b, C, C) margins are built
    ``budget`` elements at a time (a fixed sample count would need 20 GB at 1,000 classes).
    """
    w = weight.double()
    diff = torch.cdist(w, w).clamp_min(1e-12)  # (C, C) ||w_k - w_j||
    out = []
    chunk = max(1, budget // (w.shape[0] ** 2))
    for start in range(0, latents.shape[0], chunk):
        logits = latents[start:start + chunk].double() @ w.T
        if bias is not None:
            logits = logits + bias.double()
        margins = (logits[:, None, :] - logits[:, :, None]).clamp_min(0)  # (b, k, j)
        out.append((margins / diff).amax(2))
    return torch.cat(out)


def check_inputs(latents: Tensor, weight: Tensor, bias: Tensor | None) -> None:
    """Raise a clear error for shapes that do not fit or values that are not finite."""
    if latents.ndim != 2 or weight.ndim != 2 or latents.shape[1] != weight.shape[1]:
        raise TacreconError(f"latents (n, d) and weight (C, d) do not fit: {tuple(latents.shape)}, {tuple(weight.shape)}")
    if latents.shape[0] == 0:
        raise TacreconError("the latent QP needs at least one clean sample")
    if weight.shape[0] < 2:
        raise TacreconError("the latent QP needs at least two classes")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise TacreconError(f"bias must have shape ({weight.shape[0]},), got {tuple(bias.shape)}")
    for name, t in (("latents", latents), ("weight", weight), ("bias", bias)):
        if t is not None and not bool(torch.isfinite(t).all()):
            raise TacreconError(f"{name} contain NaN or inf values: the model or the data is broken")


def constraint_offsets(latents: Tensor, weight: Tensor, bias: Tensor | None = None,
                       quantile: float | None = None, budget: int = 1 << 24) -> Tensor:
    """c[k, j] = max_i (logit_ij - logit_ik), or its lower ``quantile`` over samples i.

    This max-plus product costs n C^2, the most of any part of the QP stage for many classes. The
    max is a running maximum over the samples, on blocks of rows small enough to stay in cache
    (under a second for n = 2,500, C = 1,000 on one CPU core); the quantile selects the sample of
    its rank in each (k, j) pair (numpy's introselect on the CPU, torch's topk elsewhere), on
    blocks of at most ``budget`` margins. Both are exact.

    Args:
        latents: (n, d) clean latents. weight: (C, d). bias: (C,) or None (bias off).
        quantile: None for the max (the paper's form), else q in (0, 1].
        budget: margins (n x rows x C) built at once by the quantile.
    Returns:
        (C, C) float64 on the latents' device, zero diagonal.
    """
    logits = latents.double() @ weight.double().T
    if bias is not None:
        logits = logits + bias.double()
    if quantile is None:
        out = running_max_offsets(logits)
    elif logits.device.type == "cpu":
        out = torch.from_numpy(quantile_offsets_numpy(logits.numpy(), quantile, budget))
    else:
        out = quantile_offsets_torch(logits, quantile, budget)
    return out.fill_diagonal_(0)


def running_max_offsets(logits: Tensor, block: int = 1 << 18) -> Tensor:
    """max_i (logits[i, j] - logits[i, k]) as a (C, C) [k, j] matrix: a running maximum over the
    n samples, on blocks of about ``block`` entries of the result (they stay in cache)."""
    n, num_classes = logits.shape
    out = torch.empty(num_classes, num_classes, dtype=logits.dtype, device=logits.device)
    rows = max(1, block // num_classes)
    for start in range(0, num_classes, rows):
        part, own = out[start:start + rows], logits[:, start:start + rows]
        scratch = torch.empty_like(part)
        part.copy_(logits[0][None, :] - own[0][:, None])
        for i in range(1, n):
            torch.maximum(part, torch.sub(logits[i][None, :], own[i][:, None], out=scratch), out=part)
    return out


def quantile_rank(n: int, q: float) -> int:
    """The 0-based ascending rank of the lower ``q``-quantile of n values (torch's "lower")."""
    return int(math.floor(q * (n - 1)))


def quantile_offsets_numpy(logits: np.ndarray, q: float, budget: int) -> np.ndarray:
    """The lower q-quantile over samples of logits[:, j] - logits[:, k], (n, C) -> (C, C) [k, j],
    by in-place selection along the contiguous sample axis (much faster than a strided torch
    topk), blocks of rows on torch's number of threads (numpy releases the GIL there)."""
    n, num_classes = logits.shape
    rank, by_class = quantile_rank(n, q), np.ascontiguousarray(logits.T)  # (C, n)
    out = np.empty((num_classes, num_classes))
    rows = max(1, budget // (n * num_classes))

    def block(start: int) -> None:
        margins = by_class[None, :, :] - by_class[start:start + rows, None, :]  # (rows, C, n)
        margins.partition(rank, axis=2)
        out[start:start + rows] = margins[..., rank]

    with ThreadPoolExecutor(max(1, torch.get_num_threads())) as pool:
        list(pool.map(block, range(0, num_classes, rows)))
    return out


def quantile_offsets_torch(logits: Tensor, q: float, budget: int) -> Tensor:
    """:func:`quantile_offsets_numpy` with torch on the logits' device (a GPU)."""
    n, num_classes = logits.shape
    out = torch.empty(num_classes, num_classes, dtype=logits.dtype, device=logits.device)
    rows = max(1, budget // (n * num_classes))
    for start in range(0, num_classes, rows):
        margins = logits[:, None, :] - logits[:, start:start + rows, None]  # (n, rows, C)
        out[start:start + rows] = lower_quantile(margins, q)
    return out


def lower_quantile(values: Tensor, q: float) -> Tensor:
    """The lower ``q``-quantile over dim 0 of ``values`` (n, ...): the value of rank floor(q (n - 1))
    in ascending order, exactly as ``torch.quantile(..., interpolation="lower")`` gives it, found by
    selection instead of a full sort."""
    n = values.shape[0]
    rank = quantile_rank(n, q)
    if n - rank <= n // 8:  # few values above it: the smallest of the top n - rank
        return values.topk(n - rank, dim=0).values[-1]
    return values.kthvalue(rank + 1, dim=0).values


class ColumnCache:
    """The columns of a PSD matrix h (m x m) built on demand by ``column(j)`` and kept: an
    active-set step then costs one new column and a product with the passive ones."""

    def __init__(self, column: Callable[[int], np.ndarray], m: int):
        self.column, self.cols = column, np.empty((m, 8))
        self.slot: dict[int, int] = {}  # column j -> its place in self.cols

    def __call__(self, idx: np.ndarray) -> np.ndarray:
        """h[:, idx] as an (m, len(idx)) array."""
        for j in idx.tolist():
            if j not in self.slot:
                if len(self.slot) == self.cols.shape[1]:
                    self.cols = np.concatenate([self.cols, np.empty_like(self.cols)], axis=1)
                self.cols[:, len(self.slot)] = self.column(j)
                self.slot[j] = len(self.slot)
        return self.cols[:, [self.slot[j] for j in idx.tolist()]]


def nnls_gram(columns: Callable[[np.ndarray], np.ndarray], g: np.ndarray, tol: float,
              max_iter: int) -> tuple[np.ndarray, int]:
    """argmin_{u >= 0} 1/2 u^T h u - g^T u by Lawson-Hanson's active set (h PSD).

    ``columns(idx)`` returns h[:, idx]: only the columns of the passive set are ever needed, so a
    step costs O(m |P|) plus a |P| x |P| solve. Returns (u, iterations).
    """
    m = g.shape[0]
    u, passive, iters = np.zeros(m), np.zeros(m, dtype=bool), 0
    w = g.copy()
    while iters < max_iter and (~passive).any() and w[~passive].max() > tol:
        passive[int(np.argmax(np.where(passive, -np.inf, w)))] = True
        while True:
            iters += 1
            idx = np.flatnonzero(passive)
            z = np.zeros(m)
            z[idx] = np.linalg.lstsq(columns(idx)[idx], g[idx], rcond=None)[0]
            if (z[idx] > 0).all() or iters >= max_iter:
                u = np.where(passive, np.maximum(z, 0), 0.0)
                break
            neg = idx[z[idx] <= 0]
            alpha = np.min(u[neg] / (u[neg] - z[neg]))
            u = u + alpha * (z - u)
            passive &= u > tol * max(1.0, np.abs(u).max())
            u[~passive] = 0.0
        idx = np.flatnonzero(passive)
        w = g - columns(idx) @ u[idx]
    return u, iters


def solve_class(gram: np.ndarray, offsets: np.ndarray, k: int, max_iter: int) -> tuple[np.ndarray, int, bool]:
    """Solve the QP of class k in its multipliers. Returns (lambda (C,), iterations, feasible).

    The NNLS runs over all C multipliers: H = (G_k + c c^T) / scale with
    G_k[i, j] = (w_k - w_i)^T (w_k - w_j), read off the Gram matrix W W^T one column at a time;
    the row and column of k itself are zero (as is c_k), so its multiplier stays 0.
    """
    ck = offsets[k]
    row_k = gram[k]
    scale = max(1.0, float(np.abs(np.diag(gram)).max()) * 4, float(np.abs(ck).max()) ** 2)

    def column(j: int) -> np.ndarray:
        col = gram[k, k] - row_k - row_k[j] + gram[:, j] + ck * ck[j]
        col[k] = 0.0
        return col / scale if j != k else np.zeros_like(col)

    u, iters = nnls_gram(ColumnCache(column, ck.shape[0]), ck / np.sqrt(scale), 1e-12, max_iter)
    u = u / np.sqrt(scale)
    denom = 1.0 - ck @ u
    if denom <= 1e-9:
        return np.zeros_like(u), iters, False
    return u / denom, iters, True


def shift_of(lam: np.ndarray, weight: np.ndarray, k: int) -> np.ndarray:
    """s_k = sum_j lambda_kj (w_k - w_j) over the active constraints: (C,), (C, d) -> (d,)."""
    active = np.flatnonzero(lam)
    return lam[active] @ (weight[k][None, :] - weight[active])


def kkt_residuals(shifts: np.ndarray, lam: np.ndarray, weight: np.ndarray, gram: np.ndarray, offsets: np.ndarray,
                  classes: np.ndarray) -> np.ndarray:
    """Largest relative violation of primal feasibility and complementary slackness, per class:
    shifts (K, d), lam (K, C), weight (C, d), gram (C, C), offsets (K, C) -> (K,)."""
    rows = np.arange(len(classes))
    ws = shifts @ weight.T  # (K, C): w_j^T s_k
    slack = ws[rows, classes][:, None] - ws - offsets  # (w_k - w_j)^T s_k - c_kj
    slack[rows, classes] = 0.0
    sq = np.diag(gram)
    a_norm = np.sqrt(np.maximum(sq[classes][:, None] - 2 * gram[classes] + sq[None, :], 0)).max(1)  # max_j ||w_k - w_j||
    scale = np.maximum(np.maximum(1.0, np.abs(offsets).max(1)), a_norm * np.linalg.norm(shifts, axis=1))
    violation = np.maximum(np.maximum(0.0, -slack.min(1)), np.abs(lam * slack).max(1) / np.maximum(1.0, lam.max(1)))
    return violation / scale


def solve_latent_qp(latents: Tensor, weight: Tensor, bias: Tensor | None = None, *, quantile: float | None = None,
                    classes: list[int] | None = None, max_iter: int | None = None) -> QPResult:
    """Solve the latent QP of every class in ``classes`` (default: all), exactly, in float64.

    Args:
        latents: (n, d) latents of the clean samples (input of the final linear layer).
        weight: (C, d) and bias: (C,) of the final linear layer; ``bias=None`` drops the bias.
        quantile: None for the paper's max over samples; q < 1 uses the lower q-quantile (an
            actual sample's margin), i.e. the top (1 - q) share of samples in each constraint
            is not required to reach the class (robust to a few odd or mislabelled samples).
        classes: the classes to solve.
        max_iter: cap on active-set iterations per class (default 10 (C - 1)).
    """
    check_inputs(latents, weight, bias)
    if quantile is not None and not 0 < quantile <= 1:
        raise TacreconError(f"quantile must be in (0, 1], got {quantile}")
    num_classes = weight.shape[0]
    classes = list(range(num_classes)) if classes is None else list(classes)
    offsets_t = constraint_offsets(latents, weight, bias, quantile).cpu()
    w = weight.detach().double().cpu().numpy()
    gram, offsets = w @ w.T, offsets_t.numpy()
    rows = [solve_class(gram, offsets, k, max_iter or 10 * num_classes) for k in classes]
    lam = np.stack([r[0] for r in rows])
    feasible = np.array([r[2] for r in rows])
    own = np.array(classes)
    shifts = np.stack([shift_of(lam_k, w, k) for lam_k, k in zip(lam, classes)])
    kkt = kkt_residuals(shifts, lam, w, gram, offsets[own], own)
    shifts[~feasible], kkt[~feasible] = np.nan, np.nan
    norms = np.where(feasible, np.linalg.norm(np.nan_to_num(shifts), axis=1), np.inf)
    if not feasible.all():
        log.warning("no latent shift reaches class(es) %s: their norm is +inf", [k for k, f in zip(classes, feasible) if not f])
    t = torch.from_numpy
    return QPResult(torch.tensor(classes), t(shifts), t(norms), t(lam), t(lam > 0), offsets_t[classes],
                    torch.tensor([r[1] for r in rows]), t(kkt), t(feasible))


def norm_at_active_set(latents: Tensor, weight: Tensor, bias: Tensor | None, k: int, active: Tensor,
                       quantile: float | None = None) -> Tensor:
    """||s_k|| as a differentiable function of the latents and the head, at a known active set.

    At the optimum the active constraints J hold with equality, A_J s = c_J, and s_k is the
    least-norm solution: ||s_k||^2 = c_J^T (A_J A_J^T)^+ c_J with A_J = w_k - w_J and c_J the
    offsets of :func:`constraint_offsets` (max, or the lower ``quantile``, of the margins over
    the samples). With ``active`` taken from :func:`solve_latent_qp` on the same inputs, the
    value equals its norm and the gradient is the norm's own wherever the active set is stable:
    what an attacker who knows the scan needs to train against it.

    Args:
        latents: (n, d); weight: (C, d); bias: (C,) or None, all may require grad.
        k: the class. active: (C,) bool, the active constraints of class k (False at k).
        quantile: as in :func:`solve_latent_qp`.
    Returns:
        A scalar tensor (0 where no constraint is active: the class already holds every sample).
    """
    j = torch.nonzero(active).flatten()
    if j.numel() == 0:
        return latents.new_zeros(())
    logits = latents @ weight.T + (bias if bias is not None else 0)
    margins = logits[:, j] - logits[:, k:k + 1]  # (n, |J|)
    c = margins.amax(0) if quantile is None else lower_quantile(margins, quantile)
    a = weight[k][None, :] - weight[j]
    lam = torch.linalg.pinv(a @ a.T) @ c
    return (c @ lam).clamp_min(0).sqrt()
