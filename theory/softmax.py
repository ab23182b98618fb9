r"""Curvature of the softmax: the covariance :math:`\Sigma_p` and its largest eigenvalue.

For logits :math:`z` and :math:`p = \operatorname{softmax}(z)` the Jacobian of the softmax
is :math:`\Sigma_p = \operatorname{diag}(p) - p p^\top`, the covariance matrix of the
one-hot vector :math:`e_y` with :math:`y \sim p`. It is the middle factor of the input
Fisher information :math:`F = J^\top \Sigma_p J` (see :mod:`theory.fisher`), so a bound on
:math:`\lambda_{\max}(\Sigma_p)` turns a bound on the logit Jacobian into a bound on
:math:`\lambda_{\max}(F)`.

Probability vectors are accepted in two forms. SymPy input (a list or tuple containing a
SymPy object, or a SymPy ``Matrix`` with one row or one column) is handled exactly and
gives SymPy results. Anything else (a list of floats, a 1-D numpy array, a tensor) is read
entry by entry with ``float`` and gives Python floats; its entries must sum to 1 within
:data:`SUM_TOLERANCE` :math:`\cdot \max(1, K/8)`, which accepts float32 softmax outputs
(the rounding error of a float32 sum of K terms is at most about
:math:`K \cdot 2^{-24}`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import sympy
from sympy import Matrix, S

from theory.errors import ParameterError, ProbabilityError
from theory.validation import positive_integer

__all__ = [
    "SUM_TOLERANCE",
    "softmax_covariance",
    "softmax_curvature_bound",
    "centring_matrix",
    "centred_jacobian",
    "centred_fisher_bound",
]

#: Absolute tolerance on :math:`|\sum_i p_i - 1|` for float input with K <= 8 classes;
#: it grows linearly beyond, as :math:`10^{-6} K / 8`.
SUM_TOLERANCE = 1e-6


def _show(entries: Sequence) -> str:
    """A short rendering of a vector for error messages."""
    shown = [str(e) for e in entries[:6]]
    if len(entries) > 6:
        shown.append(f"... ({len(entries)} entries)")
    return "[" + ", ".join(shown) + "]"


def _entries(p, function: str) -> list:
    """The entries of a one-dimensional vector given as a sequence, array or SymPy Matrix."""
    if isinstance(p, sympy.MatrixBase):
        if min(p.shape) > 1:
            raise ProbabilityError(
                f"{function}: expected a one-dimensional probability vector, "
                f"got a SymPy Matrix of shape {p.shape}.")
        return list(p)
    shape = getattr(p, "shape", None)
    if shape is not None and len(shape) != 1:
        raise ProbabilityError(
            f"{function}: expected a one-dimensional probability vector, "
            f"got an array of shape {tuple(shape)}.")
    if isinstance(p, (str, bytes)) or not isinstance(p, Iterable):
        raise ProbabilityError(
            f"{function}: expected a sequence of probabilities, got {p!r}.")
    return list(p)


def _exact_probabilities(entries: list, function: str) -> list[sympy.Expr]:
    """Validate SymPy entries; raise only where a violation is provable."""
    values = []
    for i, entry in enumerate(entries):
        try:
            value = sympy.sympify(entry, strict=True)
        except sympy.SympifyError:
            raise ProbabilityError(
                f"{function}: expected SymPy expressions or real numbers, "
                f"got {entry!r} at p[{i}].") from None
        if value.has(S.NaN):
            raise ProbabilityError(f"{function}: expected finite entries, got p[{i}] = {value}.")
        if value.is_extended_real is False:
            raise ProbabilityError(f"{function}: expected real entries, got p[{i}] = {value}.")
        if value.is_negative:
            raise ProbabilityError(
                f"{function}: expected non-negative entries, got p[{i}] = {value}.")
        values.append(value)
    residual = sympy.Add(*values) - 1
    if residual.has(sympy.Float) and residual.is_number:
        if abs(float(residual)) > SUM_TOLERANCE * max(1.0, len(values) / 8):
            raise ProbabilityError(
                f"{function}: expected entries summing to 1, got sum {residual + 1}.")
    elif residual.is_zero is False:
        raise ProbabilityError(
            f"{function}: expected entries summing to 1, got sum {residual + 1}.")
    return values


def _float_probabilities(entries: list, function: str) -> list[float]:
    """Validate float entries against the documented tolerance."""
    values = []
    for i, entry in enumerate(entries):
        try:
            value = float(entry)
        except (TypeError, ValueError):
            raise ProbabilityError(
                f"{function}: expected real numbers or SymPy expressions, "
                f"got {entry!r} at p[{i}].") from None
        if not math.isfinite(value):
            raise ProbabilityError(f"{function}: expected finite entries, got p[{i}] = {value}.")
        if value < 0:
            raise ProbabilityError(
                f"{function}: expected non-negative entries, got p[{i}] = {value}.")
        values.append(value)
    tolerance = SUM_TOLERANCE * max(1.0, len(values) / 8)
    total = math.fsum(values)
    if abs(total - 1.0) > tolerance:
        raise ProbabilityError(
            f"{function}: expected entries summing to 1 within {tolerance:g}, "
            f"got sum {total!r} for p = {_show(values)}.")
    return values


def _probabilities(p, function: str) -> tuple[list, bool]:
    """Validated entries of ``p`` and whether they are exact (SymPy) or floats."""
    entries = _entries(p, function)
    if not entries:
        raise ProbabilityError(
            f"{function}: expected a non-empty probability vector, got {p!r}.")
    exact = isinstance(p, sympy.MatrixBase) or any(isinstance(e, sympy.Basic) for e in entries)
    if exact:
        return _exact_probabilities(entries, function), True
    return _float_probabilities(entries, function), False


def softmax_covariance(p) -> Matrix:
    r"""The softmax Jacobian :math:`\Sigma_p = \operatorname{diag}(p) - p p^\top`.

    Parameters
    ----------
    p : sequence, 1-D array or SymPy Matrix of length K
        A probability vector. SymPy entries stay exact (symbols are allowed: the
        constraint :math:`\sum_i p_i = 1` is assumed when it cannot be decided); float
        entries become SymPy ``Float``.

    Returns
    -------
    sympy.Matrix of shape (K, K)
        Symmetric, positive semi-definite, with :math:`\Sigma_p \mathbf 1 = 0` when
        :math:`\sum_i p_i = 1`.

    Raises
    ------
    ProbabilityError
        If ``p`` is empty, not one-dimensional, has a NaN, a negative entry, or a sum
        provably different from 1 (beyond the tolerance for floats).

    Notes
    -----
    :math:`\Sigma_p = \partial \operatorname{softmax}(z) / \partial z` and
    :math:`\Sigma_p = \operatorname{Cov}_{y \sim p}(e_y)`, because
    :math:`\mathbb E[e_y] = p` and :math:`\mathbb E[e_y e_y^\top] = \operatorname{diag}(p)`.
    Hence :math:`u^\top \Sigma_p u = \operatorname{Var}_{i \sim p}(u_i) \ge 0`.

    Examples
    --------
    >>> from sympy import Rational
    >>> softmax_covariance([Rational(1, 4), Rational(3, 4)])
    Matrix([
    [ 3/16, -3/16],
    [-3/16,  3/16]])
    """
    values, _ = _probabilities(p, "softmax_covariance")
    column = Matrix(values)
    return sympy.diag(*values) - column * column.T


def softmax_curvature_bound(p):
    r"""Bound :math:`\min(1/2, \max_i p_i, 1 - \|p\|^2)` on :math:`\lambda_{\max}(\Sigma_p)`.

    Parameters
    ----------
    p : sequence, 1-D array or SymPy Matrix of length K
        A probability vector (the softmax output). SymPy input is handled exactly;
        symbolic entries are allowed and the constraint :math:`\sum_i p_i = 1` is then
        assumed where SymPy cannot decide it. Float input must sum to 1 within
        ``SUM_TOLERANCE * max(1, K / 8)``.

    Returns
    -------
    sympy.Expr or float
        The exact SymPy value (``Min(...)`` if it cannot be evaluated) for SymPy input, a
        Python float otherwise. It is a certified upper bound on
        :math:`\lambda_{\max}(\operatorname{diag}(p) - p p^\top)`; for floats the
        trace term is computed as :math:`\sum_i p_i (1 - p_i)` (equal to
        :math:`1 - \|p\|^2` on the simplex, and accurate near one-hot vectors) and the
        result is clipped at 0, which the exact value never goes below.

    Raises
    ------
    ProbabilityError
        If ``p`` is empty, not one-dimensional, not numeric, has a NaN or an infinity,
        has a negative entry, or does not sum to 1 (provably for SymPy input, beyond
        the tolerance for float input).

    Notes
    -----
    Each term bounds :math:`\lambda_{\max}(\Sigma_p)` on its own:

    * :math:`1/2` (Popoviciu). For a unit vector :math:`u`,

      .. math::

         u^\top \Sigma_p u = \operatorname{Var}_{i \sim p}(u_i)
         \le \tfrac14 (\max_i u_i - \min_i u_i)^2
         \le \tfrac14 \cdot 2 (u_{\max}^2 + u_{\min}^2) \le \tfrac12,

      by Popoviciu's inequality on variances and :math:`(a-b)^2 \le 2(a^2+b^2)`.
      Equality needs :math:`u = (e_i - e_j)/\sqrt 2` and
      :math:`p_i = p_j = 1/2`: the value 1/2 is attained only by two classes at
      probability 1/2 each.
    * :math:`\max_i p_i`: :math:`\Sigma_p \preceq \operatorname{diag}(p)` because
      :math:`p p^\top \succeq 0`.
    * :math:`1 - \|p\|^2 = \operatorname{tr} \Sigma_p`, which bounds the largest
      eigenvalue of a positive semi-definite matrix.

    Since :math:`\Sigma_p` is the Jacobian of the softmax and the simplex argument holds
    at every point, the softmax is 1/2-Lipschitz in the Euclidean norm (Nair 2025),
    improving the constant 1 of Gao & Pavel (2017).

    References
    ----------
    .. [1] T. Popoviciu, "Sur les équations algébriques ayant toutes leurs racines
       réelles", Mathematica (Cluj) 9 (1935), 129-145.
    .. [2] S. Nair, "Softmax is 1/2-Lipschitz", arXiv:2510.23012 (2025).
    .. [3] B. Gao and L. Pavel, "On the properties of the softmax function with
       application in game theory and reinforcement learning", arXiv:1704.00805 (2017).

    Examples
    --------
    >>> from sympy import Rational, Symbol
    >>> softmax_curvature_bound([Rational(1, 2), Rational(1, 2)])
    1/2
    >>> softmax_curvature_bound([Rational(7, 10), Rational(1, 5), Rational(1, 10)])
    23/50
    >>> softmax_curvature_bound([0.98, 0.01, 0.01])
    0.0394
    >>> q = Symbol("q", positive=True)
    >>> softmax_curvature_bound([q, 1 - q])
    Min(1/2, -q**2 - (1 - q)**2 + 1, Max(q, 1 - q))
    """
    values, exact = _probabilities(p, "softmax_curvature_bound")
    if exact:
        trace = 1 - sympy.Add(*[value**2 for value in values])
        return sympy.Min(S.Half, sympy.Max(*values), trace)
    # 1 - p_i as the mass of the others: for the one entry above 1/2, 1.0 - p_i would
    # cancel (a nearly one-hot p rounds its top entry to 1.0 and the term to 0)
    rests = []
    for i, value in enumerate(values):
        if value > 0.5:
            rests.append(math.fsum(values[:i]) + math.fsum(values[i + 1:]))
        else:
            rests.append(1.0 - value)
    trace = math.fsum(value * rest for value, rest in zip(values, rests))
    return max(0.0, min(0.5, max(values), trace * (1 + 1e-15)))


def centring_matrix(K) -> Matrix:
    r"""The centring projection :math:`C = I - \mathbf 1 \mathbf 1^\top / K`.

    Parameters
    ----------
    K : int
        Number of classes, at least 1.

    Returns
    -------
    sympy.Matrix of shape (K, K)
        Symmetric and idempotent (:math:`C^2 = C`, so :math:`\|C\|_2 = 1` for
        :math:`K \ge 2`), with :math:`\Sigma_p C = C \Sigma_p = \Sigma_p` for every
        probability vector :math:`p` of length K.

    Raises
    ------
    ParameterError
        If ``K`` is not a positive integer.

    Notes
    -----
    :math:`\Sigma_p \mathbf 1 = p - p (p^\top \mathbf 1) = 0`, hence
    :math:`\Sigma_p C = \Sigma_p - \Sigma_p \mathbf 1 \mathbf 1^\top / K = \Sigma_p`.

    Examples
    --------
    >>> centring_matrix(2)
    Matrix([
    [ 1/2, -1/2],
    [-1/2,  1/2]])
    """
    K = positive_integer("centring_matrix", "K", K)
    return sympy.eye(K) - sympy.ones(K, K) / K


def _matrix(J, function: str) -> Matrix:
    try:
        matrix = J if isinstance(J, sympy.MatrixBase) else Matrix(J)
    except (TypeError, ValueError, sympy.SympifyError):
        raise ParameterError(f"{function}: expected a K x d matrix, got {J!r}.") from None
    if matrix.rows == 0 or matrix.cols == 0:
        raise ParameterError(f"{function}: expected a non-empty K x d matrix, got shape "
                             f"{matrix.shape}.")
    return matrix


def centred_jacobian(J) -> Matrix:
    r"""The centred logit Jacobian :math:`J_c = C J`, :math:`C = I - \mathbf 1 \mathbf 1^\top/K`.

    The input Fisher information depends on the logit Jacobian only through
    :math:`J_c`: adding the same row vector to every row of :math:`J` (shifting all
    logits together) does not change the softmax.

    Parameters
    ----------
    J : SymPy Matrix or nested sequence of shape (K, d)
        Jacobian of the logits with respect to the input.

    Returns
    -------
    sympy.Matrix of shape (K, d)
        :math:`C J`, whose rows sum to zero.

    Raises
    ------
    ParameterError
        If ``J`` is not a non-empty matrix.

    Notes
    -----
    :math:`J^\top \Sigma_p J = J^\top C \Sigma_p C J = J_c^\top \Sigma_p J_c` because
    :math:`C` is symmetric and :math:`\Sigma_p C = C \Sigma_p = \Sigma_p`
    (:func:`centring_matrix`). See :func:`centred_fisher_bound` for the resulting bound.

    Examples
    --------
    >>> centred_jacobian([[3, 1], [1, 1]])
    Matrix([
    [ 1, 0],
    [-1, 0]])
    """
    J = _matrix(J, "centred_jacobian")
    return centring_matrix(J.rows) * J


def centred_fisher_bound(p, J):
    r"""Bound :math:`\lambda_{\max}(J^\top \Sigma_p J) \le \kappa(p)\, \|C J\|_2^2`.

    Parameters
    ----------
    p : sequence or SymPy Matrix of length K
        The probability vector, as in :func:`softmax_curvature_bound`.
    J : SymPy Matrix or nested sequence of shape (K, d)
        The logit Jacobian at the same input.

    Returns
    -------
    sympy.Expr
        :math:`\kappa(p) \cdot \lambda_{\max}(J_c J_c^\top)` with
        :math:`J_c = C J` (:func:`centred_jacobian`) and :math:`\kappa` from
        :func:`softmax_curvature_bound`. A certified upper bound on
        :math:`\lambda_{\max}` of the input Fisher information, never larger than
        :math:`\kappa(p) \|J\|_2^2` since :math:`\|C\|_2 \le 1`. Exact for exact input.

    Raises
    ------
    ProbabilityError
        If ``p`` is not a probability vector (see :func:`softmax_curvature_bound`).
    ParameterError
        If ``J`` is not a matrix with ``len(p)`` rows.

    Notes
    -----
    With :math:`\Sigma_p C = \Sigma_p` and :math:`C = C^\top`,

    .. math::

       v^\top J^\top \Sigma_p J v = (J_c v)^\top \Sigma_p (J_c v)
       \le \lambda_{\max}(\Sigma_p)\, \|J_c v\|^2
       \le \kappa(p)\, \|J_c\|_2^2\, \|v\|^2 .

    Cost: the eigenvalues of the smaller Gram matrix
    (:math:`\min(K, d)` square) are computed exactly; keep it small for symbolic
    entries.

    Examples
    --------
    >>> from sympy import Rational
    >>> centred_fisher_bound([Rational(1, 2), Rational(1, 2)], [[3, 1], [1, 1]])
    1
    """
    kappa = softmax_curvature_bound(p)
    J = _matrix(J, "centred_fisher_bound")
    K = len(_entries(p, "centred_fisher_bound"))
    if J.rows != K:
        raise ParameterError(
            f"centred_fisher_bound: expected a Jacobian with {K} rows (one per class), "
            f"got shape {J.shape}.")
    centred = centring_matrix(K) * J
    gram = centred * centred.T if K <= J.cols else centred.T * centred
    top = sympy.Max(*gram.eigenvals(multiple=True))
    return sympy.sympify(kappa) * top
