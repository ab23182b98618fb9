r"""Top eigenvalues of the input Fisher information: Lanczos, power iteration, exact.

The iterative methods run on the ``K x K`` operator :math:`M u = A^\top J J^\top A u`
(see :mod:`numeric.fisher.operator`), whose nonzero spectrum is that of ``F``; each
product is one VJP and one JVP of the network over the rows that still iterate
(:class:`GramOperator`). The vectors have ``K`` entries, so the linear algebra
(:mod:`numeric.fisher.krylov`) runs in float64 with full reorthogonalisation whatever
dtype the network computes in. ``M`` annihilates :math:`s = \sqrt p`; every iterate is
kept orthogonal to it, so the Krylov space has dimension at most ``K - 1`` and Lanczos is
exact once it gets there.

Stopping rule (shared by both): a row stops when every returned Ritz pair
:math:`(\theta, u)` has relative residual :math:`\|M u - \theta u\| \le \mathrm{tol}\,\theta`.
By Bauer-Fike some eigenvalue is then within :math:`\mathrm{tol}\,\theta`, and for a
simple eigenvalue with relative gap ``g`` the error is at most
:math:`\theta\,\mathrm{tol}^2 / g` (Kato-Temple), i.e. quadratic in ``tol``.
"""

from __future__ import annotations

import math
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
from numeric.fisher.krylov import KrylovResult, block_lanczos, power_iteration
from numeric.fisher.operator import Linearization, prepare
from numeric.fisher._docs import DEVICE, MODEL_X
from theory.docstrings import fill_doc

__all__ = ["fisher_top_eigenvalue", "EigenDiagnostics", "GramOperator", "choose_method",
           "block_size", "AUTO_EXACT_MAX_CLASSES", "BLOCK_TARGET_ROWS", "MAX_BLOCK_SIZE"]

#: ``method="auto"`` uses the exact path up to this many classes (see :func:`choose_method`).
AUTO_EXACT_MAX_CLASSES = 32

#: Rows per product that Lanczos aims for by device type (see :func:`block_size`).
BLOCK_TARGET_ROWS = {"cpu": 2, "cuda": 64}

#: Largest Lanczos block.
MAX_BLOCK_SIZE = 8


@dataclass(frozen=True)
class EigenDiagnostics:
    """Per-row convergence record of :func:`fisher_top_eigenvalue`.

    Attributes
    ----------
    method : str
        The method that ran (``"auto"`` resolved to ``"exact"`` or ``"lanczos"``).
    iterations : Tensor of shape (B,), int64
        Products ``M u`` a row needed (its Krylov dimension; 0 for ``"exact"``).
    residuals : Tensor of shape (B, k)
        Relative residual :math:`\\|M u - \\theta u\\| / \\theta` of each returned value
        (0 for ``"exact"``).
    converged : Tensor of shape (B,), bool
        Whether every returned value of the row met ``tol``.
    residual_history : Tensor of shape (T, B)
        Relative residual of the top value after each of the ``T`` batched products
        (a row that stopped repeats its last value).
    products : int
        Batched operator applications ``T``, each one VJP and one JVP over the rows
        still iterating times the block size; ``"exact"`` reports ``K``.
    tol : float
    block_size : int
        Vectors per row in each Lanczos product (1 for power iteration and exact).
    """

    method: str
    iterations: torch.Tensor
    residuals: torch.Tensor
    converged: torch.Tensor
    residual_history: torch.Tensor
    products: int
    tol: float
    block_size: int = 1


class GramOperator:
    r"""The products :math:`M_b u` for any subset of rows, ``block`` vectors per row.

    Rows are replicated ``block`` times along the batch, so one VJP and one JVP over
    ``n * block`` rows give ``block`` products for each of ``n`` rows. When at most half
    of the rows of the current linearization are still asked for, it is rebuilt for those
    rows only (one forward pass), so that rows that stopped early stop costing.

    Parameters
    ----------
    model, x, dtype, device, caller
        As for :class:`~numeric.fisher.operator.Linearization`.
    block : int
    linearization : Linearization, optional
        Of all of ``x``; reused when ``block == 1``.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, *, dtype: torch.dtype,
                 device: torch.device, caller: str, block: int,
                 linearization: Linearization | None = None) -> None:
        self._model, self._x, self._dtype = model, x, dtype
        self._device, self._caller, self.block = device, caller, block
        self._rows = torch.arange(x.shape[0])
        self._lin = linearization if block == 1 else None

    def _build(self, rows: torch.Tensor) -> None:
        if self._lin is not None:  # free the old graphs first
            self._lin.release()
        self._lin = None
        inputs = self._x[rows.to(self._x.device)].repeat_interleave(self.block, dim=0)
        self._lin = Linearization(self._model, inputs, dtype=self._dtype,
                                  caller=self._caller, device=self._device)
        self._rows = rows

    def __call__(self, vectors: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """``vectors`` (n, s, K) float64 for ``rows`` (n,), s <= block: images, float64."""
        if self._lin is None or 2 * len(rows) <= len(self._rows):
            self._build(rows)
        count, width, classes = vectors.shape
        positions = torch.searchsorted(self._rows, rows).to(self._device)
        full = vectors.new_zeros(len(self._rows), self.block, classes)
        full[positions, :width] = vectors
        flat = full.reshape(-1, classes).to(self._dtype)
        with torch.no_grad():
            images = self._lin.gram_product(flat).double()
        return images.reshape(len(self._rows), self.block, classes)[positions, :width]


def block_size(batch: int, classes: int, device: torch.device) -> int:
    """Lanczos block ``s = min(MAX_BLOCK_SIZE, K - 1, BLOCK_TARGET_ROWS // B)``, at least 1.

    A product over a small batch is latency-bound, so a small batch buys a larger Krylov
    space per product with more vectors per row: each product costs little more, and a
    block of ``s`` finds the top eigenvalue in fewer steps (torchvision resnet18 at 32x32,
    2 inputs, K = 1000: 9-16 products with ``s = 1``, 7-12 with ``s = 2``). On one CPU
    thread, with the JVP as cheap as a VJP (:mod:`numeric.fisher._autodiff`), the two
    balanced from 2 rows on, so the CPU target is 2 rows; a GPU is latency-bound up to far
    larger batches. Large batches use ``s = 1``, plain Lanczos.
    """
    target = BLOCK_TARGET_ROWS.get(device.type, BLOCK_TARGET_ROWS["cpu"])
    return max(1, min(MAX_BLOCK_SIZE, classes - 1, target // batch))


def choose_method(num_classes: int, num_features: int) -> str:
    """The rule of ``method="auto"``: ``"exact"`` if ``K <= 32`` and ``K d <= 2**26``.

    Exact costs ``K - 1`` VJPs; Lanczos costs a VJP and a JVP (about three VJPs) per
    product and typically needs 5-20 products (never more than ``K - 1``), so exact is
    cheaper for small ``K``. Large ``K d`` (many classes on large inputs) would also make
    the exact path's ``K x d`` Jacobian per row large, so it goes to Lanczos.
    """
    if (num_classes <= AUTO_EXACT_MAX_CLASSES
            and num_classes * num_features <= MAX_JACOBIAN_ENTRIES):
        return "exact"
    return "lanczos"


@fill_doc(model_x=MODEL_X, device=DEVICE)
def fisher_top_eigenvalue(model: nn.Module, x: torch.Tensor, method: str = "auto", *,
                          k: int = 1, max_iter: int | None = None, tol: float | None = None,
                          generator: torch.Generator | None = None,
                          dtype: torch.dtype | None = None,
                          device: str | torch.device | None = None,
                          return_diagnostics: bool = False):
    r"""Largest eigenvalue(s) :math:`\lambda_{\max}(F(x_b))` of the input Fisher information.

    .. math::

        F(x) = J^\top (\operatorname{diag} p - p p^\top) J, \qquad
        \tfrac12 \varepsilon^2 \lambda_{\max}(F(x)) \approx
        \max_{\|\delta\| = \varepsilon} \mathrm{KL}(p(\cdot|x) \,\|\, p(\cdot|x+\delta)).

    Parameters
    ----------
    %(model_x)s
    method : {"auto", "exact", "lanczos", "power"}
        ``"exact"``: all eigenvalues from ``K - 1`` VJPs (:func:`fisher_eigenvalues`).
        ``"lanczos"``: block Lanczos with full reorthogonalisation (top ``k``; a block of
        ``s`` start vectors sees up to ``s`` copies of a repeated eigenvalue).
        ``"power"``: power iteration, the paper's algorithm (``k = 1`` only), run on
        ``M``; its iterates are those of power iteration on ``F`` started from
        :math:`W^\top u_0`.
        ``"auto"``: :func:`choose_method` -- exact for ``K <= 32`` (and ``K d <= 2**26``),
        Lanczos otherwise.
    k : int
        Number of top eigenvalues, ``1 <= k <= K - 1`` (``rank F <= K - 1``).
    max_iter : int, optional
        Products ``M u`` per row (the Krylov dimension for Lanczos); default
        ``min(K - 1, 500)`` for Lanczos (it is exact after ``K - 1``) and 1000 for power
        iteration.
    tol : float, optional
        Relative residual tolerance (module docstring); default :math:`\sqrt{\epsilon}` of
        the computation dtype (1.5e-8 in float64, 3.5e-4 in float32).
    generator : torch.Generator, optional
        Seeds the random start vectors.
    dtype : torch.dtype, optional
        Computation dtype of the network (default: the model's); the Krylov vectors are
        float64 whatever it is.
    %(device)s
    return_diagnostics : bool
        If True, return ``(values, EigenDiagnostics)`` and report rows that did not
        converge in ``diagnostics.converged`` instead of raising.

    Returns
    -------
    Tensor of shape (B,) for ``k = 1``, else (B, k) descending
        In the computation dtype, on the computation device. Exact up to rounding for
        ``"exact"``; iterative values are lower estimates (Ritz values never exceed
        :math:`\lambda_{\max}`) within the stopping rule. No autocast or TF32 on any path
        (:func:`numeric.device.full_precision`).

    Raises
    ------
    ConvergenceError
        An iterative method missed ``tol`` within ``max_iter`` for some row (and
        ``return_diagnostics`` is False); the message names the rows.
    InputError
        Bad shapes, non-finite inputs or logits, a model returning probabilities, K = 1,
        an unknown method, a bad ``k``, ``max_iter`` or ``tol``, or a device that is
        unknown or not available.

    Notes
    -----
    Cost per product: a VJP and a JVP (computed as a double VJP) over the rows still
    iterating, each replicated ``s`` times (:func:`block_size`: ``s > 1`` only for batches
    too small for efficient kernels), after one forward pass and one backward pass with
    ``create_graph``. A row stops as soon as its Ritz values meet ``tol``; when at most
    half of the rows remain, the products are rebuilt for those rows only. Lanczos needs
    at most ``K - 1`` products per row and typically 5-20; power iteration needs about
    :math:`\log(\mathrm{tol}) / \log(\lambda_2/\lambda_1)`. Exact: ``K - 1`` VJPs packed
    into few backward passes (:func:`~numeric.fisher.exact.whitened_jacobian`) plus
    :math:`O(K^2 d + K^3)` per row. Memory: the graph of the forward pass of ``s`` copies
    of the batch and of its backward pass (for the JVP), plus ``B (K-1) d`` entries for
    the exact path.

    References
    ----------
    Lanczos: Golub & Van Loan, *Matrix Computations*, 4th ed., 10.1 and 10.3.6. Power
    iteration and the metric: Zhang et al., arXiv:2606.04767.

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
    x, dtype, device = prepare(caller, model, x, dtype, device)
    check_method(caller, method, ("auto", "exact", "lanczos", "power"))
    check_integer(caller, "k", k)
    if max_iter is not None:
        check_integer(caller, "max_iter", max_iter)
    if tol is not None:
        check_positive(caller, "tol", tol)
    check_generator(caller, generator)
    tol = math.sqrt(torch.finfo(dtype).eps) if tol is None else float(tol)
    with model_context(model):
        lin = Linearization(model, x, dtype=dtype, caller=caller, device=device)
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
            values = exact_spectrum(model, x, dtype, caller, device=device,
                                    linearization=lin)[:, :k]
            diagnostics = _exact_diagnostics(values, tol, num_classes)
        else:
            values, diagnostics = _iterate(model, x, lin, method, k, max_iter, tol,
                                           generator, dtype, device, caller)
    if not return_diagnostics and not bool(diagnostics.converged.all()):
        _raise_not_converged(caller, diagnostics, max_iter)
    values = values.detach()
    values = values[:, 0] if k == 1 else values
    return (values, diagnostics) if return_diagnostics else values


def _iterate(model, x, lin: Linearization, method: str, k: int, max_iter: int | None,
             tol: float, generator, dtype, device, caller):
    probabilities = torch.softmax(lin.logits.double(), dim=-1)
    null = probabilities.sqrt()
    classes = lin.num_classes
    block = block_size(lin.batch, classes, device) if method == "lanczos" else 1
    operator = GramOperator(model, x, dtype=dtype, device=device, caller=caller,
                            block=block, linearization=lin)
    # p-weighted Gaussian start: the top eigenvector of M leans on the likely classes
    draw = generator.device if generator is not None else device
    start = probabilities.unsqueeze(1) * torch.randn(
        (lin.batch, block, classes), generator=generator, device=draw,
        dtype=torch.float64).to(device)
    eps = torch.finfo(dtype).eps
    if method == "lanczos":
        limit = min(classes - 1, 500) if max_iter is None else max_iter
        result = block_lanczos(operator, start, null, k=k, max_iter=limit, tol=tol,
                               eps=eps, generator=generator)
    else:
        limit = 1000 if max_iter is None else max_iter
        result = power_iteration(operator, start[:, 0], null, max_iter=limit, tol=tol)
    return result.values.to(dtype), _diagnostics(method, result, tol, block)


def _diagnostics(method: str, result: KrylovResult, tol: float,
                 block: int) -> EigenDiagnostics:
    return EigenDiagnostics(method=method, iterations=result.iterations,
                            residuals=result.residuals, converged=result.converged,
                            residual_history=result.history, products=result.products,
                            tol=tol, block_size=block)


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
