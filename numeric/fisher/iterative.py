r"""Top eigenvalues of the input Fisher information: power iteration and Lanczos.

Both methods run on the ``K x K`` operator :math:`M u = A^\top J J^\top A u` (see
:mod:`numeric.fisher.operator`), whose nonzero spectrum is that of ``F``; each product is
one VJP and one JVP over the whole batch, and all rows iterate together. Vectors have
``K`` entries, so full reorthogonalisation is cheap. ``M`` annihilates
:math:`s = \sqrt p`; every iterate is kept orthogonal to it, so the Krylov space has
dimension at most ``K - 1`` and Lanczos is exact once it gets there.

Stopping rule (shared by both): a row stops when every returned Ritz pair
:math:`(\theta, u)` has relative residual :math:`\|M u - \theta u\| \le \mathrm{tol}\,\theta`.
By Bauer-Fike some eigenvalue is then within :math:`\mathrm{tol}\,\theta`, and for a
simple eigenvalue with relative gap ``g`` the error is at most
:math:`\theta\,\mathrm{tol}^2 / g` (Kato-Temple), i.e. quadratic in ``tol``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from numeric.errors import ConvergenceError, InputError
from numeric.fisher._validation import (
    check_generator,
    check_integer,
    check_method,
    check_positive,
    model_context,
)
from numeric.fisher.exact import MAX_JACOBIAN_ENTRIES, exact_spectrum
from numeric.fisher.operator import Linearization, prepare

__all__ = ["fisher_top_eigenvalue", "EigenDiagnostics", "lanczos", "power_iteration",
           "choose_method", "AUTO_EXACT_MAX_CLASSES"]

#: ``method="auto"`` uses the exact path up to this many classes (see :func:`choose_method`).
AUTO_EXACT_MAX_CLASSES = 32

Operator = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class EigenDiagnostics:
    """Per-row convergence record of :func:`fisher_top_eigenvalue`.

    Attributes
    ----------
    method : str
        The method that ran (``"auto"`` resolved to ``"exact"`` or ``"lanczos"``).
    iterations : Tensor of shape (B,), int64
        Operator products a row needed (0 for ``"exact"``).
    residuals : Tensor of shape (B, k)
        Relative residual :math:`\\|M u - \\theta u\\| / \\theta` of each returned value
        (0 for ``"exact"``).
    converged : Tensor of shape (B,), bool
        Whether every returned value of the row met ``tol``.
    residual_history : Tensor of shape (T, B)
        Relative residual of the top value after each of the ``T`` iterations.
    products : int
        Batched operator products computed (each one VJP and one JVP); ``"exact"``
        reports its ``K`` VJPs.
    tol : float
    """

    method: str
    iterations: torch.Tensor
    residuals: torch.Tensor
    converged: torch.Tensor
    residual_history: torch.Tensor
    products: int
    tol: float


def _project(v: torch.Tensor, null: torch.Tensor) -> torch.Tensor:
    return v - null * (null * v).sum(dim=-1, keepdim=True)


def _normalize(v: torch.Tensor) -> torch.Tensor:
    norm = v.norm(dim=-1, keepdim=True)
    return v / norm.clamp_min(torch.finfo(v.dtype).tiny)


def _random_like(shape, like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device,
                       dtype=like.dtype).to(like.device)


def power_iteration(operator: Operator, start: torch.Tensor, null: torch.Tensor, *,
                    max_iter: int, tol: float):
    """Batched power iteration on a symmetric PSD ``operator`` acting on rows of (B, K).

    Returns ``(values (B, 1), residuals (B, 1), iterations (B,), converged (B,),
    history (T, B), products)``. One product per iteration.
    """
    batch = start.shape[0]
    u = _normalize(_project(start, null))
    values = torch.zeros(batch, 1, dtype=start.dtype, device=start.device)
    residuals = torch.full_like(values, math.inf)
    iterations = torch.zeros(batch, dtype=torch.int64, device=start.device)
    done = torch.zeros(batch, dtype=torch.bool, device=start.device)
    history = []
    for step in range(1, max_iter + 1):
        y = _project(operator(u), null)
        theta = (u * y).sum(dim=-1)
        relative = (y - theta.unsqueeze(-1) * u).norm(dim=-1) / theta.abs().clamp_min(
            torch.finfo(theta.dtype).tiny)
        relative = torch.where(y.norm(dim=-1) == 0, torch.zeros_like(relative), relative)
        history.append(relative)
        update = ~done
        values[update, 0] = theta[update]
        residuals[update, 0] = relative[update]
        iterations[update] = step
        done = done | (relative <= tol)
        if bool(done.all()):
            break
        u = _normalize(y)
    return values, residuals, iterations, done, torch.stack(history), step


def lanczos(operator: Operator, start: torch.Tensor, null: torch.Tensor, *, k: int,
            max_iter: int, tol: float, generator: torch.Generator | None = None):
    """Batched Lanczos with full reorthogonalisation for the top ``k`` eigenvalues.

    ``operator`` is symmetric PSD on rows of (B, K) and annihilates the unit rows of
    ``null``. Every row runs the same number of steps; a row's result is frozen at the step
    where its top ``k`` Ritz pairs meet ``tol`` or its Krylov space becomes invariant.
    A single start vector sees one copy of a repeated eigenvalue: if the Krylov space
    becomes invariant with fewer than ``k`` Ritz values, Lanczos restarts with a random
    vector orthogonal to it; with exactly repeated eigenvalues among the top ``k``
    (non-generic for a trained network) use the exact method.
    Returns ``(values (B, k), residuals (B, k), iterations (B,), converged (B,),
    history (T, B), products)``.

    References
    ----------
    Golub & Van Loan, *Matrix Computations*, 4th ed., section 10.1 (Lanczos with full
    reorthogonalisation; "twice is enough" Gram-Schmidt).
    """
    batch, size = start.shape
    dimension = size - 1  # the operator lives on the complement of ``null``
    steps = min(max_iter, dimension)
    eps, tiny = torch.finfo(start.dtype).eps, torch.finfo(start.dtype).tiny
    q = _normalize(_project(start, null))
    basis = [q]                                                     # Lanczos vectors
    alphas: list[torch.Tensor] = []
    betas: list[torch.Tensor] = []
    values = torch.zeros(batch, k, dtype=start.dtype, device=start.device)
    residuals = torch.full_like(values, math.inf)
    iterations = torch.zeros(batch, dtype=torch.int64, device=start.device)
    done = torch.zeros(batch, dtype=torch.bool, device=start.device)
    history = []
    for step in range(1, steps + 1):
        w = _project(operator(q), null)
        alphas.append((q * w).sum(dim=-1))
        stacked = torch.stack(basis, dim=1)                         # (B, step, K)
        w = _orthogonalize(w, stacked)
        beta = w.norm(dim=-1)
        tridiagonal = _tridiagonal(alphas, betas)
        theta, vectors = torch.linalg.eigh(  # half precision: solve in float32
            tridiagonal.to(torch.promote_types(tridiagonal.dtype, torch.float32)))
        theta, vectors = theta.to(start.dtype), vectors.to(start.dtype)
        theta, last = theta.flip(-1)[:, :k], vectors[:, -1, :].flip(-1)[:, :k]
        scale = theta[:, 0].abs().clamp_min(tiny)
        invariant = (beta <= 10 * eps * scale * step) | (step >= dimension)
        relative = torch.where(invariant.unsqueeze(-1), torch.zeros_like(theta),
                               beta.unsqueeze(-1) * last.abs() / theta.abs().clamp_min(tiny))
        history.append(relative[:, 0])
        update = ~done
        values[update, :theta.shape[1]] = theta[update]
        iterations[update] = step
        if step >= k:
            residuals[update] = relative[update]
            done = done | (relative <= tol).all(dim=-1) | invariant
        if bool(done.all()) or step == steps:
            break
        q = w / beta.clamp_min(tiny).unsqueeze(-1)
        restart = invariant & ~done  # invariant with fewer than k values: start afresh
        if bool(restart.any()):
            fresh = _orthogonalize(_random_like(w.shape, w, generator), stacked)
            q = torch.where(restart.unsqueeze(-1), _normalize(_project(fresh, null)), q)
            beta = torch.where(restart, torch.zeros_like(beta), beta)  # T splits in blocks
        betas.append(beta)
        basis.append(q)
    return values, residuals, iterations, done, torch.stack(history), step


def _orthogonalize(w: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    """``w`` minus its projection on the orthonormal rows of ``basis`` (B, j, K), twice."""
    for _ in range(2):  # "twice is enough" (Kahan, Parlett)
        coefficients = torch.bmm(basis, w.unsqueeze(-1)).transpose(1, 2)   # (B, 1, j)
        w = w - torch.bmm(coefficients, basis).squeeze(1)
    return w


def _tridiagonal(alphas: list[torch.Tensor], betas: list[torch.Tensor]) -> torch.Tensor:
    t = torch.diag_embed(torch.stack(alphas, dim=-1))
    if betas:
        off = torch.diag_embed(torch.stack(betas, dim=-1), offset=1)
        t = t + off + off.transpose(-1, -2)
    return t


def choose_method(num_classes: int, num_features: int) -> str:
    """The rule of ``method="auto"``: ``"exact"`` if ``K <= 32`` and ``K d <= 2**26``.

    Exact costs ``K`` backward passes; Lanczos costs about two backward passes per
    product and typically needs 20-60 products (never more than ``K - 1``), so exact is
    cheaper for small ``K``. Large ``K d`` (many classes on large inputs) would also make
    the exact path's ``K x d`` Jacobian per row large, so it goes to Lanczos.
    """
    if (num_classes <= AUTO_EXACT_MAX_CLASSES
            and num_classes * num_features <= MAX_JACOBIAN_ENTRIES):
        return "exact"
    return "lanczos"


def fisher_top_eigenvalue(model: nn.Module, x: torch.Tensor, method: str = "auto", *,
                          k: int = 1, max_iter: int | None = None, tol: float | None = None,
                          generator: torch.Generator | None = None,
                          dtype: torch.dtype | None = None,
                          return_diagnostics: bool = False):
    r"""Largest eigenvalue(s) :math:`\lambda_{\max}(F(x_b))` of the input Fisher information.

    .. math::

        F(x) = J^\top (\operatorname{diag} p - p p^\top) J, \qquad
        \tfrac12 \varepsilon^2 \lambda_{\max}(F(x)) \approx
        \max_{\|\delta\| = \varepsilon} \mathrm{KL}(p(\cdot|x) \,\|\, p(\cdot|x+\delta)).

    Parameters
    ----------
    model : nn.Module
        Returns logits of shape (B, K); evaluated in eval mode (its mode is restored).
    x : Tensor of shape (B, *S)
        A batch of inputs; moved to the model's device.
    method : {"auto", "exact", "lanczos", "power"}
        ``"exact"``: all eigenvalues from ``K - 1`` VJPs (:func:`fisher_eigenvalues`).
        ``"lanczos"``: batched Lanczos with full reorthogonalisation (top ``k``; a
        single start vector sees one copy of an exactly repeated eigenvalue).
        ``"power"``: power iteration, the paper's algorithm (``k = 1`` only), run on
        ``M``; its iterates are those of power iteration on ``F`` started from
        :math:`W^\top u_0`.
        ``"auto"``: :func:`choose_method` -- exact for ``K <= 32`` (and ``K d <= 2**26``),
        Lanczos otherwise.
    k : int
        Number of top eigenvalues, ``1 <= k <= K - 1`` (``rank F <= K - 1``).
    max_iter : int, optional
        Operator products per row; default ``min(K - 1, 500)`` for Lanczos (it is exact
        after ``K - 1``) and 1000 for power iteration.
    tol : float, optional
        Relative residual tolerance (module docstring); default :math:`\sqrt{\epsilon}` of
        the computation dtype (1.5e-8 in float64, 3.5e-4 in float32).
    generator : torch.Generator, optional
        Seeds the random start vector.
    dtype : torch.dtype, optional
        Computation dtype (default: the model's).
    return_diagnostics : bool
        If True, return ``(values, EigenDiagnostics)`` and report rows that did not
        converge in ``diagnostics.converged`` instead of raising.

    Returns
    -------
    Tensor of shape (B,) for ``k = 1``, else (B, k) descending
        Exact up to rounding for ``"exact"``; iterative values are lower estimates
        (Ritz values never exceed :math:`\lambda_{\max}`) within the stopping rule.

    Raises
    ------
    ConvergenceError
        An iterative method missed ``tol`` within ``max_iter`` for some row (and
        ``return_diagnostics`` is False); the message names the rows.
    InputError
        Bad shapes, non-finite inputs or logits, a model returning probabilities, K = 1,
        an unknown method or a bad ``k``, ``max_iter`` or ``tol``.

    Notes
    -----
    Cost per product: two backward passes over the batch (a VJP and a JVP computed as a
    double VJP), after one forward pass and one backward pass with ``create_graph``.
    Exact: ``K - 1`` backward passes plus :math:`O(K^2 d + K^3)` per row. Lanczos needs
    at most ``K - 1`` products and typically 10-60; power iteration needs about
    :math:`\log(\mathrm{tol}) / \log(\lambda_2/\lambda_1)`. Memory: the graph of one
    forward pass and of its backward pass (for the JVP), plus ``B (K-1) d`` entries for
    the exact path.

    References
    ----------
    Lanczos: Golub & Van Loan, *Matrix Computations*, 4th ed., 10.1. Power iteration and
    the metric: Zhang et al., arXiv:2606.04767.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(),
    ...                             torch.nn.Linear(8, 5)).double()
    >>> x = torch.randn(3, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    >>> exact = fisher_top_eigenvalue(model, x, "exact")
    >>> fast = fisher_top_eigenvalue(model, x, "lanczos")
    >>> bool(torch.allclose(exact, fast, rtol=1e-8))
    True
    """
    caller = "fisher_top_eigenvalue"
    x, dtype = prepare(caller, model, x, dtype)
    check_method(caller, method, ("auto", "exact", "lanczos", "power"))
    check_integer(caller, "k", k)
    if max_iter is not None:
        check_integer(caller, "max_iter", max_iter)
    if tol is not None:
        check_positive(caller, "tol", tol)
    check_generator(caller, generator)
    tol = math.sqrt(torch.finfo(dtype).eps) if tol is None else float(tol)
    with model_context(model):
        lin = Linearization(model, x, dtype=dtype, caller=caller)
        num_classes = lin.num_classes
        if k > num_classes - 1:
            raise InputError(f"{caller}: expected 1 <= k <= K - 1 = {num_classes - 1} "
                             f"(F has rank at most K - 1), got k = {k}.")
        if method == "auto":
            method = choose_method(num_classes, lin.num_features)
        if method == "power" and k != 1:
            raise InputError(f"{caller}: power iteration finds only the top eigenvalue, "
                             f"got k = {k}; use method='lanczos' or 'exact'.")
        if method == "exact":
            values = exact_spectrum(model, x, dtype, caller, linearization=lin)[:, :k]
            diagnostics = _exact_diagnostics(values, tol, num_classes)
        else:
            values, diagnostics = _iterate(lin, method, k, max_iter, tol, generator)
    if not return_diagnostics and not bool(diagnostics.converged.all()):
        _raise_not_converged(caller, diagnostics, max_iter)
    values = values.detach()
    values = values[:, 0] if k == 1 else values
    return (values, diagnostics) if return_diagnostics else values


def _iterate(lin: Linearization, method: str, k: int, max_iter: int | None, tol: float,
             generator: torch.Generator | None):
    null = lin.probabilities.sqrt()
    start = _random_like(null.shape, null, generator)
    with torch.no_grad():
        if method == "lanczos":
            limit = min(lin.num_classes - 1, 500) if max_iter is None else max_iter
            result = lanczos(lin.gram_product, start, null, k=k, max_iter=limit, tol=tol,
                             generator=generator)
        else:
            limit = 1000 if max_iter is None else max_iter
            result = power_iteration(lin.gram_product, start, null, max_iter=limit, tol=tol)
    values, residuals, iterations, converged, history, products = result
    return values, EigenDiagnostics(method=method, iterations=iterations,
                                    residuals=residuals, converged=converged,
                                    residual_history=history, products=products, tol=tol)


def _exact_diagnostics(values: torch.Tensor, tol: float, num_classes: int) -> EigenDiagnostics:
    batch = values.shape[0]
    return EigenDiagnostics(
        method="exact",
        iterations=torch.zeros(batch, dtype=torch.int64, device=values.device),
        residuals=torch.zeros_like(values),
        converged=torch.ones(batch, dtype=torch.bool, device=values.device),
        residual_history=torch.zeros(0, batch, dtype=values.dtype, device=values.device),
        products=num_classes, tol=tol)


def _raise_not_converged(caller: str, diagnostics: EigenDiagnostics,
                         max_iter: int | None) -> None:
    failed = (~diagnostics.converged).nonzero().flatten().tolist()
    worst = float(diagnostics.residuals[~diagnostics.converged].max())
    steps = int(diagnostics.iterations.max())
    shown = ", ".join(map(str, failed[:8])) + (", ..." if len(failed) > 8 else "")
    raise ConvergenceError(
        f"{caller}: {diagnostics.method} did not reach tol={diagnostics.tol:.3g} within "
        f"max_iter={max_iter if max_iter is not None else steps} for rows [{shown}] "
        f"(largest relative residual {worst:.3g}); raise max_iter or tol, use "
        f"method='lanczos' or 'exact', or pass return_diagnostics=True for per-row results.",
        iterations=steps, residual=worst)
