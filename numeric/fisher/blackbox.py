r"""Black-box estimate of :math:`\lambda_{\max}(F(x))` from output probabilities only.

A black box reveals :math:`p(x)` at inputs of our choosing; each evaluation of one input is
one *query*. A finite difference of :math:`\log p` along a direction ``v`` gives the
directional derivative :math:`J_{\log p}\, v = (I - \mathbf 1 p^\top) J v`, and because
:math:`A^\top \mathbf 1 = 0` (:mod:`numeric.fisher.operator`),

.. math::

    A^\top \, \frac{\log p(x + h v) - \log p(x)}{h} = W v + O(h), \qquad
    \mathbb E_v[(Wv)(Wv)^\top] = W W^\top = M \quad \text{if } \mathbb E[v v^\top] = I.

So :math:`\hat M = \frac1m \sum_i (W v_i)(W v_i)^\top` is an unbiased sketch of the ``K x K``
matrix whose nonzero spectrum is that of ``F``, and :math:`\lambda_{\max}(\hat M)` is a
consistent estimate of :math:`\lambda_{\max}(F)`, biased upwards at finite ``m``; the
default ``method="sketch"`` removes that bias with a parametric bootstrap and reports a
standard error (:mod:`numeric.fisher.sketch`).

The paper's recipe (``method="max_rayleigh"``) instead takes the largest quadratic form
:math:`u^\top F u` over ``m`` random unit directions. A random unit ``u`` in ``d``
dimensions has :math:`\mathbb E (u^\top e)^2 = 1/d` along the top eigenvector ``e``, so the
maximum is of order :math:`\lambda_{\max} \cdot O(\log m / d)`: biased low by orders of
magnitude when ``d >> K``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from numeric.device import resolve_device
from numeric.errors import InputError
from numeric.fisher._validation import (
    check_batch,
    check_generator,
    check_integer,
    check_method,
    check_positive,
)
from numeric.fisher.operator import apply_factor_transpose
from numeric.fisher.sketch import (
    DEFAULT_REPLICATES,
    debiased_top_eigenvalue,
    relative_variance,
    sketch_spectrum,
)

__all__ = ["blackbox_fisher_top_eigenvalue", "BlackboxEstimate", "default_step",
           "minimum_queries"]

#: The paper's step for ``max_rayleigh`` (Euclidean norm of the displacement).
PAPER_STEP = 1e-3


@dataclass(frozen=True)
class BlackboxEstimate:
    """Result of :func:`blackbox_fisher_top_eigenvalue`.

    Attributes
    ----------
    values : Tensor of shape (B,), float64
        Estimated :math:`\\lambda_{\\max}(F(x_b))`.
    queries : Tensor of shape (B,), int64
        Evaluations of ``predict_proba`` spent on each row, the base point included;
        never more than the ``queries`` budget.
    method : str
        ``"sketch"`` or ``"max_rayleigh"``.
    difference : str
        ``"forward"`` or ``"central"``.
    num_directions : int
        Directions ``m`` per row.
    step : float
        Euclidean norm of each displacement.
    eigenvalues : Tensor of shape (B, K) or None
        The sketch's full spectrum, descending, before any bias correction (``"sketch"``
        only).
    standard_error : Tensor of shape (B,) or None
        Estimated standard deviation of ``values`` over the random directions
        (``"sketch"`` only): the spread of the bootstrap replicates with ``debias=True``,
        the first-order :math:`\\hat\\lambda\\sigma` without (Notes of
        :func:`blackbox_fisher_top_eigenvalue`). An estimate of the sampling error, not a
        bound; the finite-difference error is far smaller.
    bias : Tensor of shape (B,) or None
        The bias correction subtracted from the sketch's top eigenvalue (``"sketch"``
        with ``debias=True``; zeros when the directions make the sketch exact).
    """

    values: torch.Tensor
    queries: torch.Tensor
    method: str
    difference: str
    num_directions: int
    step: float
    eigenvalues: torch.Tensor | None = None
    standard_error: torch.Tensor | None = None
    bias: torch.Tensor | None = None


def minimum_queries(method: str, difference: str) -> int:
    """Smallest budget that buys one direction: the base point plus one or two queries."""
    return 3 if method == "max_rayleigh" or difference == "central" else 2


def default_step(x: torch.Tensor, method: str, difference: str) -> float:
    r"""Default Euclidean step ``h`` for the dtype of ``x``.

    ``"max_rayleigh"`` uses the paper's :math:`h = 10^{-3}`. The sketch moves every
    coordinate by about :math:`\eta \max(1, \mathrm{rms}(x))` with
    :math:`\eta = \sqrt{\epsilon}` (forward) or :math:`\epsilon^{1/3}` (central), the
    classical balance of truncation and rounding error, i.e.
    :math:`h = \eta \max(1, \mathrm{rms}(x)) \sqrt d`.
    """
    if method == "max_rayleigh":
        return PAPER_STEP
    eps = torch.finfo(x.dtype).eps
    eta = math.sqrt(eps) if difference == "forward" else eps ** (1 / 3)
    scale = max(1.0, float(x.detach().double().square().mean().sqrt()))
    return eta * scale * math.sqrt(x[0].numel())


def _unit_directions(batch: int, count: int, dim: int, *, orthogonal: bool,
                     generator: torch.Generator | None) -> torch.Tensor:
    """(batch, count, dim) float64 unit directions with ``E[d u u^T] = I``.

    Orthogonal: blocks of ``dim`` Haar-orthonormal vectors (QR of a Gaussian matrix with
    the sign of ``diag R`` fixed), so each full block is an exact orthonormal basis.
    Otherwise independent, uniform on the sphere.
    """
    device = generator.device if generator is not None else torch.device("cpu")
    gaussian = torch.randn(batch, count, dim, generator=generator, device=device,
                           dtype=torch.float64)
    if not orthogonal:
        return gaussian / gaussian.norm(dim=-1, keepdim=True)
    blocks = []
    for start in range(0, count, dim):
        block = gaussian[:, start:start + dim].transpose(1, 2)         # (B, dim, c)
        q, r = torch.linalg.qr(block)
        signs = torch.sign(torch.diagonal(r, dim1=-2, dim2=-1))
        blocks.append((q * signs.unsqueeze(1)).transpose(1, 2))
    return torch.cat(blocks, dim=1)


#: Largest number of perturbed-input entries (rows x directions x d) held at once.
MAX_PERTURBATION_ENTRIES = 2 ** 24


def _direction_chunks(batch: int, count: int, dim: int, orthogonal: bool,
                      generator: torch.Generator | None):
    """The (batch, count, dim) unit directions in chunks along ``count``."""
    size = max(1, MAX_PERTURBATION_ENTRIES // (batch * dim))
    if orthogonal:  # dim <= 16 count: all of them are small enough to hold
        yield from _unit_directions(batch, count, dim, orthogonal=True,
                                    generator=generator).split(size, dim=1)
        return
    for start in range(0, count, size):
        yield _unit_directions(batch, min(size, count - start), dim, orthogonal=False,
                               generator=generator)


def _probabilities(caller: str, predict_proba: Callable, inputs: torch.Tensor,
                   expected_classes: int | None) -> torch.Tensor:
    out = predict_proba(inputs)
    if not isinstance(out, torch.Tensor):
        try:
            out = torch.as_tensor(out)
        except (TypeError, ValueError, RuntimeError) as err:
            raise InputError(f"{caller}: expected predict_proba to return a Tensor or array "
                             f"of probabilities, got {type(out).__name__}.") from err
    rows = inputs.shape[0]
    if out.dim() != 2 or out.shape[0] != rows:
        raise InputError(f"{caller}: expected predict_proba to return probabilities of "
                         f"shape (n, K) = ({rows}, K), got shape {tuple(out.shape)}.")
    if expected_classes is not None and out.shape[1] != expected_classes:
        raise InputError(f"{caller}: predict_proba returned {out.shape[1]} classes, "
                         f"earlier {expected_classes}.")
    out = out.detach().to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(out).all():
        raise InputError(f"{caller}: predict_proba returned NaN or inf.")
    sums = out.sum(dim=1)
    if bool((out < -1e-6).any()) or bool(((sums - 1).abs() > 1e-3).any()):
        raise InputError(f"{caller}: expected predict_proba to return probabilities "
                         f"(non-negative rows summing to 1), got values in "
                         f"[{float(out.min()):.3g}, {float(out.max()):.3g}] and row sums "
                         f"in [{float(sums.min()):.3g}, {float(sums.max()):.3g}]; if it "
                         f"returns logits, apply softmax.")
    return out.clamp_min(0)


def _log(p: torch.Tensor) -> torch.Tensor:
    return p.clamp_min(torch.finfo(p.dtype).tiny).log()


def _evaluate(caller: str, predict_proba: Callable, x: torch.Tensor,
              displacements: torch.Tensor, batch_size: int, classes: int) -> torch.Tensor:
    """``predict_proba(x_b + delta_bj)`` for every (b, j): (B, c, K) float64."""
    batch, count = displacements.shape[:2]
    shifted = (x.unsqueeze(1) + displacements.reshape(batch, count, *x.shape[1:])
               .to(device=x.device, dtype=x.dtype)).reshape(batch * count, *x.shape[1:])
    parts = [_probabilities(caller, predict_proba, chunk, classes)
             for chunk in shifted.split(batch_size)]
    return torch.cat(parts).reshape(batch, count, classes)


def blackbox_fisher_top_eigenvalue(predict_proba: Callable[[torch.Tensor], torch.Tensor],
                                   x: torch.Tensor, queries: int = 200, *,
                                   method: str = "sketch", difference: str = "forward",
                                   step: float | None = None, debias: bool = True,
                                   num_bootstrap: int = DEFAULT_REPLICATES,
                                   generator: torch.Generator | None = None,
                                   batch_size: int = 512,
                                   device: str | torch.device | None = None
                                   ) -> BlackboxEstimate:
    r"""Estimate :math:`\lambda_{\max}(F(x_b))` from probabilities alone, per row.

    Parameters
    ----------
    predict_proba : callable
        Maps a batch of inputs (n, *S), in the dtype of ``x`` and on the computation
        device, to probabilities (n, K) (a Tensor or array). Each input row evaluated is
        one query.
    x : Tensor of shape (B, *S)
        The inputs.
    queries : int
        Budget of evaluations per row, the base evaluation at ``x_b`` included.
    method : {"sketch", "max_rayleigh"}
        ``"sketch"`` (default): top eigenvalue of the unbiased sketch :math:`\hat M` of
        :math:`\Sigma_p^{1/2} J J^\top \Sigma_p^{1/2}` (module docstring).
        ``"max_rayleigh"``: the paper's recipe, for comparison -- the maximum of
        :math:`u^\top F u = \sum_y p_y (u^\top \nabla \log p_y)^2` over random unit
        directions by central differences with :math:`h = 10^{-3}`. Biased low.
    difference : {"forward", "central"}
        Finite differences for ``"sketch"``: ``m = queries - 1`` directions (forward,
        the default) or ``m = (queries - 1) // 2`` (central). ``"max_rayleigh"`` always
        uses central differences.
    step : float, optional
        Euclidean norm ``h`` of each displacement; default :func:`default_step`.
    debias : bool
        ``"sketch"`` only: subtract the bootstrap estimate of the upward bias (Notes;
        default). ``False`` returns the plug-in :math:`\lambda_{\max}(\hat M)`.
    num_bootstrap : int
        Bootstrap replicates ``R >= 2`` for ``debias`` (default 16, which keeps the
        Monte-Carlo error of the correction below a quarter of the standard error).
    generator : torch.Generator, optional
        Seeds the directions and the bootstrap.
    batch_size : int
        Largest number of rows passed to ``predict_proba`` in one call.
    device : str or torch.device, optional
        Where the perturbed inputs are made and handed to ``predict_proba``: ``"cpu"``,
        ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (:func:`numeric.device.resolve_device`);
        default the device of ``x``.

    Returns
    -------
    BlackboxEstimate
        ``values`` (B,) float64 on the CPU -- estimates, not bounds --, ``queries`` (B,)
        int64 (``1 + m`` or ``1 + 2m``, never above the budget), the sketch spectrum,
        the bias correction and a standard error.

    Raises
    ------
    InputError
        ``x`` malformed or non-finite; ``queries`` below :func:`minimum_queries` (2 for
        a forward sketch, 3 otherwise); ``num_bootstrap`` below 2; ``predict_proba``
        returning a wrong shape, non-finite values, logits instead of probabilities, or
        one class; a device that is unknown or not available.

    Notes
    -----
    Directions: :math:`v_i = \sqrt d\, u_i` with unit :math:`u_i`, so
    :math:`\mathbb E[v v^\top] = I`; blocks of ``d`` orthonormal vectors when
    :math:`d \le 16 m` (a full block makes the sketch exact), otherwise independent
    uniform directions.

    *Bias.* Finite differences: :math:`O(h)` (forward) or :math:`O(h^2)` (central)
    relative to the derivative, about :math:`\sqrt\epsilon` or
    :math:`\epsilon^{2/3}` at the default step, negligible beside the sampling error.
    Sampling: :math:`\hat M` is unbiased but :math:`\lambda_{\max}` is convex, so
    :math:`\mathbb E\,\lambda_{\max}(\hat M) \ge \lambda_{\max}` (Jensen); to second
    order the bias is :math:`\frac{c\,\lambda_1}{m}\sum_{j \ge 2} \frac{\lambda_j}
    {\lambda_1 - \lambda_j}` (``c <= 1``): small when the top eigenvalue is separated,
    large when many eigenvalues crowd it (measured: +15 to +18 % at ``m = 199`` on a
    random-init torchvision resnet18, K = 1000), vanishing as ``m`` grows. ``debias=True``
    estimates it by a parametric bootstrap -- ``R`` Gaussian sketches of the same size
    drawn from :math:`N(0, \hat M)` -- scaled by the design factor
    :math:`\rho = m\sigma^2/2` below, and subtracts it
    (:func:`~numeric.fisher.sketch.debiased_top_eigenvalue`; clipped to ``[0, top/2]``).
    On that resnet18 (24 inputs, ``benchmarks/blackbox.py``) this brought the median
    absolute error at 200 queries from 17 % to 7 %, and the mean error from +18 % to -2 %.

    *Variance.* To first order :math:`\operatorname{Var}\lambda_{\max}(\hat M) \approx
    \lambda_1^2 \sigma^2` with :math:`\sigma^2 = 2(d-1)/(m(d+2)) \approx 2/m` for
    independent directions and :math:`\sigma^2 = 2r(d-r)/(m^2(d+2))` for orthogonal
    blocks (``r = m mod d``). ``standard_error`` is the standard deviation of the
    bootstrap replicates times :math:`\sqrt{\rho(1 + \rho/R)}` with ``debias`` (it
    sees the crowding of the spectrum; the factor includes the Monte-Carlo error of the
    correction), and :math:`\hat\lambda\sigma` without. At 200 queries (forward,
    ``m = 199``) the relative standard error is about 10 %, which no estimator built on
    ``m`` random directions avoids (for a known top eigenvector :math:`e^\top \hat M e`
    has it), and why the default spends one query per direction rather than two: the
    sampling error, not the :math:`O(h)` truncation, dominates. Quadrupling the budget
    halves it.

    Cost: ``B * queries`` model evaluations in calls of at most ``batch_size`` rows,
    plus :math:`O(m K \min(m, K))` per row for the spectrum and, with ``debias``, ``R``
    eigenproblems of size :math:`\min(m, K)` per row.

    References
    ----------
    Zhang et al., arXiv:2606.04767 (the ``max_rayleigh`` recipe). Halko, Martinsson &
    Tropp, SIAM Review 53(2), 2011 (sketching). Anderson, *An Introduction to
    Multivariate Statistical Analysis*, 3rd ed., 13.5 (sample eigenvalue bias and
    variance). Efron & Tibshirani, *An Introduction to the Bootstrap*, 1993, ch. 10
    (bootstrap bias correction).

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Linear(4, 3).double()
    >>> x = torch.randn(2, 4, dtype=torch.float64)
    >>> result = blackbox_fisher_top_eigenvalue(
    ...     lambda z: torch.softmax(model(z), -1), x, queries=20,
    ...     generator=torch.Generator().manual_seed(0))
    >>> result.queries.tolist()  # d = 4 <= 19 directions: orthogonal blocks
    [20, 20]
    """
    caller = "blackbox_fisher_top_eigenvalue"
    if not callable(predict_proba):
        raise InputError(f"{caller}: expected predict_proba to be callable, "
                         f"got {type(predict_proba).__name__}.")
    check_batch(caller, x)
    check_method(caller, method, ("sketch", "max_rayleigh"))
    if difference not in ("forward", "central"):
        raise InputError(f"{caller}: expected difference 'forward' or 'central', "
                         f"got {difference!r}.")
    if method == "max_rayleigh":
        difference = "central"
    check_integer(caller, "queries", queries, minimum=1)
    if queries < minimum_queries(method, difference):
        raise InputError(f"{caller}: queries too small: method={method!r} with "
                         f"{difference} differences needs at least "
                         f"{minimum_queries(method, difference)} queries per input (the base "
                         f"point and one direction), got {queries}.")
    if step is not None:
        check_positive(caller, "step", step)
    check_integer(caller, "num_bootstrap", num_bootstrap, minimum=2)
    check_integer(caller, "batch_size", batch_size)
    check_generator(caller, generator)
    if device is not None:
        x = x.to(resolve_device(device, caller=caller))

    batch, dim = x.shape[0], x[0].numel()
    step = default_step(x, method, difference) if step is None else float(step)
    count = queries - 1 if difference == "forward" else (queries - 1) // 2
    base = torch.cat([_probabilities(caller, predict_proba, chunk, None)
                      for chunk in x.split(batch_size)])
    classes = base.shape[1]
    if classes < 2:
        raise InputError(f"{caller}: expected at least K = 2 classes, got K = {classes}.")
    orthogonal = method == "sketch" and dim <= 16 * count
    samples = torch.cat([
        _directional_derivatives(caller, predict_proba, x, base, directions * step,
                                 difference, batch_size)
        for directions in _direction_chunks(batch, count, dim, orthogonal, generator)],
        dim=1)                                                           # (B, m, K)
    used = torch.full((batch,), 1 + (count if difference == "forward" else 2 * count),
                      dtype=torch.int64)
    if method == "max_rayleigh":
        quadratic = (base.unsqueeze(1) * samples.square()).sum(dim=-1) / step ** 2
        return BlackboxEstimate(values=quadratic.max(dim=1).values, queries=used,
                                method=method, difference=difference,
                                num_directions=count, step=step)
    whitened = apply_factor_transpose(base.unsqueeze(1), samples) * (math.sqrt(dim) / step)
    eigenvalues = sketch_spectrum(whitened)                               # (B, K)
    sigma2 = relative_variance(count, dim, orthogonal)
    if debias:
        values, bias, error = debiased_top_eigenvalue(
            eigenvalues, count, sigma2, replicates=num_bootstrap, generator=generator)
    else:
        values, bias = eigenvalues[:, 0], None
        error = values * math.sqrt(sigma2)
    return BlackboxEstimate(values=values, queries=used, method=method,
                            difference=difference, num_directions=count, step=step,
                            eigenvalues=eigenvalues, standard_error=error, bias=bias)


def _directional_derivatives(caller, predict_proba, x, base, displacements, difference,
                             batch_size) -> torch.Tensor:
    """Finite differences of log p times the step: (B, m, K) float64, ~ J_logp delta."""
    classes = base.shape[1]
    forward = _log(_evaluate(caller, predict_proba, x, displacements, batch_size, classes))
    if difference == "forward":
        return forward - _log(base).unsqueeze(1)
    backward = _log(_evaluate(caller, predict_proba, x, -displacements, batch_size, classes))
    return (forward - backward) / 2
