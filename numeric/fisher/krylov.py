r"""Block Lanczos and power iteration for batches of small symmetric PSD operators.

The operators of :mod:`numeric.fisher.iterative` act on ``K``-vectors, one operator per
row of a batch, and are expensive (each application is a VJP and a JVP of a network) while
the vectors are cheap. So the linear algebra here keeps everything it can in float64 --
the Krylov basis, its images, the Rayleigh-Ritz problem -- whatever dtype the operator
computes in, and it asks the operator only for the rows that still need it.

An operator is a callable ``operator(vectors, rows) -> images``: ``vectors`` of shape
(n, s, K) float64 hold ``s`` vectors for each of the ``n`` rows listed in ``rows`` (an
int64 tensor of row indices, increasing), and the images have the same shape. Each call
counts as one *product* (one batched application), whatever ``n`` and ``s``.

Stopping rule: a row stops when every one of its top ``k`` Ritz pairs
:math:`(\theta, u)` has relative residual :math:`\|M u - \theta u\| \le \mathrm{tol}\,
\theta`, computed explicitly from the stored images (not from a recurrence). By Bauer-Fike
some eigenvalue is then within :math:`\mathrm{tol}\,\theta` of each Ritz value, and for a
simple eigenvalue with relative gap ``g`` the error is at most :math:`\theta\,
\mathrm{tol}^2 / g` (Kato-Temple). Ritz values never exceed the eigenvalues they
approximate (Cauchy interlacing), so they are lower estimates.

References
----------
Golub & Van Loan, *Matrix Computations*, 4th ed., 10.1 (Lanczos, full
reorthogonalisation) and 10.3.6 (block Lanczos); Parlett, *The Symmetric Eigenvalue
Problem*, 1998, 11.5 (residual bounds) and 6.9 ("twice is enough").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

__all__ = ["KrylovResult", "block_lanczos", "power_iteration", "RowOperator"]

RowOperator = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class KrylovResult:
    """Per-row outcome of :func:`block_lanczos` or :func:`power_iteration`.

    Attributes
    ----------
    values, residuals : Tensor of shape (B, k), float64
        Ritz values (descending) and their relative residuals.
    iterations : Tensor of shape (B,), int64
        Operator-vector products the row used (the dimension of its Krylov space).
    converged : Tensor of shape (B,), bool
    history : Tensor of shape (T, B), float64
        Relative residual of the top value after each product (frozen rows repeat theirs).
    products : int
        Operator calls ``T``.
    """

    values: torch.Tensor
    residuals: torch.Tensor
    iterations: torch.Tensor
    converged: torch.Tensor
    history: torch.Tensor
    products: int


def _project(v: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
    """Remove the component along the unit rows of ``null`` (n, K) from ``v`` (n, s, K)."""
    return v - (v @ null.unsqueeze(-1)) * null.unsqueeze(1)


def _against(w: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``w`` (n, s, K) minus its projection on the orthonormal rows of ``basis``, twice."""
    if basis.shape[1] == 0:
        return w
    for _ in range(2):  # "twice is enough" (Kahan, Parlett)
        w = w - (w @ basis.transpose(1, 2)) @ basis
    return w


def _random(shape, generator: torch.Generator | None, device) -> torch.Tensor:
    draw = generator.device if generator is not None else device
    return torch.randn(shape, generator=generator, device=draw,
                       dtype=torch.float64).to(device)


def _orthonormal_block(w: torch.Tensor, basis: torch.Tensor, null: torch.Tensor,
                       breakdown: float, generator) -> torch.Tensor:
    """Orthonormalise the columns of ``w`` (n, s, K) against ``basis``, ``null`` and each other.

    A column whose remainder is below ``breakdown`` times its norm lies (numerically) in
    the space already spanned -- an invariant subspace -- and is replaced by a random
    vector orthogonal to it, which restarts the Krylov process in the unexplored part.
    """
    columns: list[torch.Tensor] = []
    for j in range(w.shape[1]):
        done = torch.cat([basis, *[c.unsqueeze(1) for c in columns]], dim=1)
        column = w[:, j:j + 1]
        scale = column.norm(dim=-1).clamp_min(torch.finfo(torch.float64).tiny)
        column = _against(_project(column, null), done)
        lost = column.norm(dim=-1) <= breakdown * scale                      # (n, 1)
        if bool(lost.any()):
            fresh = _against(_project(_random(column.shape, generator, column.device), null),
                             done)
            column = torch.where(lost.unsqueeze(-1), fresh, column)
        columns.append((column / column.norm(dim=-1, keepdim=True)).squeeze(1))
    return torch.stack(columns, dim=1)


def block_lanczos(operator: RowOperator, start: torch.Tensor, null: torch.Tensor, *,
                  k: int, max_iter: int, tol: float, eps: float,
                  generator: torch.Generator | None = None) -> KrylovResult:
    """Top ``k`` eigenvalues of a batch of symmetric PSD operators by block Lanczos.

    Parameters
    ----------
    operator : callable
        See the module docstring; it must annihilate the unit rows of ``null``.
    start : Tensor of shape (B, s, K), float64
        ``s`` start vectors per row (the block size); any scale.
    null : Tensor of shape (B, K), float64
        Unit vectors spanning each operator's known null space; the Krylov space stays
        orthogonal to it and so has dimension at most ``K - 1``.
    k : int
        Number of eigenvalues wanted per row.
    max_iter : int
        Largest Krylov dimension (operator-vector products per row); the last block is
        cut to fit, and a row reaching ``K - 1`` is complete (its Ritz values are the
        eigenvalues).
    tol : float
        Relative residual tolerance (module docstring).
    eps : float
        Unit roundoff of the operator's arithmetic; a new direction smaller than
        ``10 sqrt(K) eps`` of its image is treated as already spanned.
    generator : torch.Generator, optional
        Draws the restart vectors.

    Returns
    -------
    KrylovResult

    Notes
    -----
    Every step applies the operator once to the newest block of the active rows, stores
    the block ``Q`` and its image ``MQ`` (so the Rayleigh-Ritz matrix ``V^T M V`` and the
    residuals are explicit), and orthonormalises ``MQ`` against the whole basis for the
    next block. A block of ``s`` vectors resolves eigenvalues of multiplicity up to ``s``
    and, on a batch too small for efficient kernels, buys a larger Krylov space per
    (latency-bound) product. Rows stop independently; the operator is then asked for the
    remaining rows only.
    """
    batch, block, size = start.shape
    dimension = size - 1
    limit = min(max_iter, dimension)
    device = start.device
    breakdown = 10 * math.sqrt(size) * eps
    basis = start.new_zeros(batch, 0, size)
    images = start.new_zeros(batch, 0, size)
    values = start.new_zeros(batch, k)
    residuals = torch.full_like(values, math.inf)
    iterations = torch.zeros(batch, dtype=torch.int64, device=device)
    converged = torch.zeros(batch, dtype=torch.bool, device=device)
    active = torch.arange(batch, device=device)
    history, last = [], torch.full((batch,), math.inf, dtype=torch.float64, device=device)
    block_vectors = _orthonormal_block(start[:, :min(block, limit)], basis, null,
                                       breakdown, generator)
    products = 0
    while True:
        products += 1
        image = _project(operator(block_vectors, active.cpu()), null[active])
        basis = torch.cat([basis, block_vectors], dim=1)
        images = torch.cat([images, image], dim=1)
        n = basis.shape[1]
        theta, relative = _ritz(basis, images, k)
        last[active] = relative[:, 0]
        met = (relative <= tol).all(dim=-1) if n >= k else torch.zeros_like(last[active],
                                                                              dtype=torch.bool)
        stop = met | (n >= dimension)           # a complete Krylov space is exact
        finished = stop | (n >= limit)
        rows = active[finished]
        values[rows, :theta.shape[1]] = theta[finished]
        residuals[rows, :theta.shape[1]] = relative[finished]
        iterations[rows] = n
        converged[rows] = stop[finished]
        history.append(last.clone())
        keep = ~finished
        if not bool(keep.any()):
            break
        active, basis, images = active[keep], basis[keep], images[keep]
        width = min(block, limit - n)
        block_vectors = _orthonormal_block(image[keep][:, :width], basis, null[active],
                                           breakdown, generator)
    return KrylovResult(values=values, residuals=residuals, iterations=iterations,
                        converged=converged, history=torch.stack(history),
                        products=products)


def _ritz(basis: torch.Tensor, images: torch.Tensor, k: int):
    """Top ``min(k, n)`` Ritz values (n_rows, k') and their relative residuals."""
    projected = basis @ images.transpose(1, 2)
    projected = (projected + projected.transpose(1, 2)) / 2
    theta, vectors = torch.linalg.eigh(projected)
    count = min(k, theta.shape[1])
    theta, vectors = theta.flip(-1)[:, :count], vectors.flip(-1)[:, :, :count]
    coefficients = vectors.transpose(1, 2)                                 # (n, k', m)
    residual = coefficients @ images - theta.unsqueeze(-1) * (coefficients @ basis)
    norms = residual.norm(dim=-1)
    relative = norms / theta.abs().clamp_min(torch.finfo(theta.dtype).tiny)
    return theta, torch.where(norms == 0, torch.zeros_like(relative), relative)


def power_iteration(operator: RowOperator, start: torch.Tensor, null: torch.Tensor, *,
                    max_iter: int, tol: float) -> KrylovResult:
    """Batched power iteration on the rows of (B, K) float64; one product per iteration.

    The Rayleigh quotient of the iterate is the estimate; a row stops when its relative
    residual meets ``tol`` (module docstring). It converges like
    :math:`(\\lambda_2/\\lambda_1)^t`, which is why the estimators prefer Lanczos.
    """
    batch = start.shape[0]
    device = start.device
    u = _project(start.unsqueeze(1), null)
    u = u / u.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(u.dtype).tiny)
    values = start.new_zeros(batch, 1)
    residuals = torch.full_like(values, math.inf)
    iterations = torch.zeros(batch, dtype=torch.int64, device=device)
    converged = torch.zeros(batch, dtype=torch.bool, device=device)
    active = torch.arange(batch, device=device)
    history, last = [], torch.full((batch,), math.inf, dtype=torch.float64, device=device)
    for step in range(1, max_iter + 1):
        y = _project(operator(u, active.cpu()), null[active])
        theta = (u * y).sum(dim=-1).squeeze(-1)
        norms = (y - theta.view(-1, 1, 1) * u).norm(dim=-1).squeeze(-1)
        relative = norms / theta.abs().clamp_min(torch.finfo(theta.dtype).tiny)
        relative = torch.where(norms == 0, torch.zeros_like(relative), relative)
        last[active] = relative
        values[active, 0], residuals[active, 0] = theta, relative
        iterations[active] = step
        stop = relative <= tol
        converged[active[stop]] = True
        history.append(last.clone())
        keep = ~stop
        if not bool(keep.any()) or step == max_iter:
            break
        active, y = active[keep], y[keep]
        u = y / y.norm(dim=-1, keepdim=True).clamp_min(torch.finfo(y.dtype).tiny)
    return KrylovResult(values=values, residuals=residuals, iterations=iterations,
                        converged=converged, history=torch.stack(history), products=step)
