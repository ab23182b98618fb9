r"""Symbolic identities of the input Fisher information of a softmax classifier.

A classifier with logits :math:`f : \mathbb R^d \to \mathbb R^K` and
:math:`p(y \mid x) = \operatorname{softmax}(f(x))_y` has the input Fisher information

.. math::

   F(x) = \mathbb E_{y \sim p(\cdot \mid x)}\big[\nabla_x \log p(y \mid x)\,
          \nabla_x \log p(y \mid x)^\top\big]
        = J^\top (\operatorname{diag} p - p p^\top) J
        = \operatorname{Cov}_{y \sim p}\big(\nabla_x \log p(y \mid x)\big),

with :math:`J = \partial f / \partial x`, and
:math:`\mathrm{KL}(p(\cdot \mid x) \,\|\, p(\cdot \mid x + \delta))
= \tfrac12 \delta^\top F(x) \delta + O(\|\delta\|^3)`.

The functions here build every side of these identities for K symbolic logits and a
symbolic K x d Jacobian, and prove them by exact rational simplification. At a point
only the logits :math:`z = f(x)` and the Jacobian enter, so the classifier is modelled
by its first-order expansion :math:`f(x) = z + J x` at :math:`x = 0`; the scores are
obtained by differentiating :math:`\log \operatorname{softmax}` with SymPy, not typed
in. The softmax is written with :math:`e^{z_k}`, which is how notebooks display it; the
proofs substitute :math:`z_k = \log w_k` with :math:`w_k > 0`, after which every entry is
a rational function and "equal" means "the numerator of the difference expands to 0".
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy
from sympy import Matrix

from theory.errors import ParameterError
from theory.docstrings import fill_doc
from theory.validation import positive_integer
from theory.softmax import softmax_covariance

__all__ = ["FisherIdentities", "KLExpansion", "fisher_identities", "fisher_information",
           "kl_second_order"]


_SIZE_DOCS = {
    "sizes": "Parameters\n----------\nK : int\n    Number of classes, at least 2.\nd : int\n"
             "    Input dimension, at least 1.",
    "raises": "Raises\n------\nParameterError\n    If ``K < 2`` or ``d < 1`` or either is not "
              "an integer.",
}


def _check_sizes(K, d, function: str) -> tuple[int, int]:
    return (positive_integer(function, "the number of classes K", K, minimum=2),
            positive_integer(function, "the input dimension d", d))


def _logits(K: int) -> Matrix:
    return Matrix(sympy.symbols(f"z1:{K + 1}", real=True))


def _jacobian(K: int, d: int) -> Matrix:
    separator = "" if K < 10 and d < 10 else ","
    return Matrix(K, d, lambda k, j: sympy.Symbol(f"J_{k + 1}{separator}{j + 1}", real=True))


def _log_softmax(logits: Matrix, y: int) -> sympy.Expr:
    # log softmax(z)_y = z_y - log sum_k exp(z_k), exact for real logits.
    return logits[y] - sympy.log(sum(sympy.exp(z) for z in logits))


def _vanishes(expr: sympy.Expr, logits: Matrix) -> bool:
    """Whether ``expr`` (rational in exp(z_k), polynomial in the rest) is identically 0."""
    weights = sympy.symbols(f"w1:{len(logits) + 1}", positive=True)
    rational = expr.subs({z: sympy.log(w) for z, w in zip(logits, weights)})
    numerator, _ = sympy.fraction(sympy.together(rational))
    return sympy.expand(numerator) == 0


def _matrix_vanishes(matrix: Matrix, logits: Matrix) -> bool:
    return all(_vanishes(entry, logits) for entry in matrix)


def fisher_information(p, J) -> Matrix:
    r"""The input Fisher information :math:`F = J^\top (\operatorname{diag} p - p p^\top) J`.

    Parameters
    ----------
    p : sequence or SymPy Matrix of length K
        The class probabilities at the input (validated as in
        :func:`theory.softmax_covariance`).
    J : SymPy Matrix or nested sequence of shape (K, d)
        The logit Jacobian at the input.

    Returns
    -------
    sympy.Matrix of shape (d, d)
        Symmetric positive semi-definite, of rank at most K - 1.

    Raises
    ------
    ProbabilityError
        If ``p`` is not a probability vector.
    ParameterError
        If ``J`` does not have ``len(p)`` rows.

    Notes
    -----
    The identity with the expectation over :math:`y` is proved by
    :func:`fisher_identities`.

    Examples
    --------
    >>> from sympy import Rational
    >>> fisher_information([Rational(1, 2), Rational(1, 2)], [[1, 0], [-1, 0]])
    Matrix([
    [1, 0],
    [0, 0]])
    """
    covariance = softmax_covariance(p)
    J = J if isinstance(J, sympy.MatrixBase) else Matrix(J)
    if J.rows != covariance.rows:
        raise ParameterError(
            f"fisher_information: expected a Jacobian with {covariance.rows} rows (one per "
            f"class), got shape {J.shape}.")
    return J.T * covariance * J


@dataclass(frozen=True)
class FisherIdentities:
    r"""The three expressions of the input Fisher information, for symbolic K and d.

    Attributes
    ----------
    p : sympy.Matrix of shape (K, 1)
        :math:`\operatorname{softmax}(z)`, written with :math:`e^{z_k}`.
    J : sympy.Matrix of shape (K, d)
        The symbolic logit Jacobian :math:`J_{kj}`.
    expectation : sympy.Matrix of shape (d, d)
        :math:`\sum_y p_y\, s_y s_y^\top`, the Fisher information by its definition.
    sandwich : sympy.Matrix of shape (d, d)
        :math:`J^\top (\operatorname{diag} p - p p^\top) J`.
    score_covariance : sympy.Matrix of shape (d, d)
        :math:`\sum_y p_y s_y s_y^\top - \bar s \bar s^\top` with
        :math:`\bar s = \sum_y p_y s_y`.
    logits : sympy.Matrix of shape (K, 1)
        The real logit symbols :math:`z_k`.
    scores : tuple of sympy.Matrix of shape (d, 1)
        :math:`s_y = \nabla_x \log p(y \mid x)` at :math:`x = 0` for the classifier
        :math:`f(x) = z + J x`, obtained by differentiation.
    """

    p: Matrix
    J: Matrix
    expectation: Matrix
    sandwich: Matrix
    score_covariance: Matrix
    logits: Matrix
    scores: tuple[Matrix, ...]

    def prove(self) -> bool:
        r"""Whether expectation = sandwich = score covariance holds identically.

        Each entry of the differences is reduced to a rational function of
        :math:`w_k = e^{z_k}` and its numerator is expanded; ``True`` means every
        numerator is the zero polynomial, an exact proof for these K and d.
        The mean score :math:`\bar s` is also shown to vanish.
        """
        mean = sum((p * s for p, s in zip(self.p, self.scores)),
                   sympy.zeros(*self.scores[0].shape))
        return (_matrix_vanishes(self.expectation - self.sandwich, self.logits)
                and _matrix_vanishes(self.score_covariance - self.sandwich, self.logits)
                and _matrix_vanishes(mean, self.logits))


@fill_doc(**_SIZE_DOCS)
def fisher_identities(K: int, d: int) -> FisherIdentities:
    r"""Build the input Fisher information three ways for a symbolic K-class classifier.

    %(sizes)s

    Returns
    -------
    FisherIdentities
        The expressions; call :meth:`FisherIdentities.prove` for the exact proof that
        they coincide.

    %(raises)s

    Notes
    -----
    Differentiating :math:`\log p_y = z_y - \log \sum_k e^{z_k}` gives
    :math:`\nabla_z \log p_y = e_y - p`, so by the chain rule
    :math:`s_y = J^\top (e_y - p)`. Then :math:`\mathbb E_y[e_y - p] = 0` and

    .. math::

       \mathbb E_y[(e_y - p)(e_y - p)^\top]
       = \operatorname{diag}(p) - p p^\top = \Sigma_p ,

    hence :math:`\mathbb E_y[s_y s_y^\top] = \operatorname{Cov}(s_y) = J^\top \Sigma_p J`:
    "the Fisher information is the variance of the input Jacobian" (the score is the
    Jacobian row of the log-probability). Cost grows like :math:`K^2 d^2` expression
    size; K <= 5 with small d proves in seconds.

    References
    ----------
    .. [1] S.-I. Amari, *Information Geometry and Its Applications*, Springer (2016),
       ch. 2 (Fisher information as the covariance of the score).
    .. [2] S. Nair, "Softmax is 1/2-Lipschitz", arXiv:2510.23012 (2025).

    Examples
    --------
    >>> identities = fisher_identities(2, 1)
    >>> identities.prove()
    True
    >>> identities.p.T
    Matrix([[exp(z1)/(exp(z1) + exp(z2)), exp(z2)/(exp(z1) + exp(z2))]])
    >>> identities.sandwich.shape
    (1, 1)
    """
    K, d = _check_sizes(K, d, "fisher_identities")
    logits = _logits(K)
    J = _jacobian(K, d)
    x = sympy.symbols(f"x1:{d + 1}", real=True)
    classifier = logits + J * Matrix(x)
    origin = {xi: 0 for xi in x}
    scores = tuple(
        Matrix([sympy.diff(_log_softmax(classifier, y), xi) for xi in x]).subs(origin)
        for y in range(K))
    denominator = sum(sympy.exp(z) for z in logits)
    p = Matrix([sympy.exp(z) / denominator for z in logits])
    expectation = sum((p[y] * scores[y] * scores[y].T for y in range(K)), sympy.zeros(d, d))
    mean = sum((p[y] * scores[y] for y in range(K)), sympy.zeros(d, 1))
    sandwich = J.T * (sympy.diag(*p) - p * p.T) * J
    return FisherIdentities(p=p, J=J, expectation=expectation, sandwich=sandwich,
                            score_covariance=expectation - mean * mean.T, logits=logits,
                            scores=scores)


@dataclass(frozen=True)
class KLExpansion:
    r"""The Taylor expansion of :math:`\mathrm{KL}(p(z) \,\|\, p(z + J\delta))` in :math:`\delta`.

    Attributes
    ----------
    kl : sympy.Expr
        :math:`\sum_y p_y(z) \big(\log p_y(z) - \log p_y(z + J\delta)\big)`, exact.
    terms : tuple of three sympy.Expr
        The homogeneous Taylor terms of degree 0, 1 and 2 in :math:`\delta`,
        :math:`T_k = \frac{1}{k!} \frac{d^k}{dt^k} \mathrm{KL}(t\delta) \big|_{t=0}`.
    quadratic_form : sympy.Expr
        :math:`\tfrac12 \delta^\top F \delta` with
        :math:`F = J^\top (\operatorname{diag} p - p p^\top) J`.
    p, J, delta, logits : sympy.Matrix
        The probabilities (with :math:`e^{z_k}`), the K x d Jacobian, the d x 1
        perturbation and the K x 1 logits.
    """

    kl: sympy.Expr
    terms: tuple[sympy.Expr, sympy.Expr, sympy.Expr]
    quadratic_form: sympy.Expr
    p: Matrix
    J: Matrix
    delta: Matrix
    logits: Matrix

    def prove(self) -> bool:
        r"""Whether :math:`T_0 = T_1 = 0` and :math:`T_2 = \tfrac12 \delta^\top F \delta`."""
        constant, linear, quadratic = self.terms
        return (_vanishes(constant, self.logits) and _vanishes(linear, self.logits)
                and _vanishes(quadratic - self.quadratic_form, self.logits))


@fill_doc(**_SIZE_DOCS)
def kl_second_order(K: int, d: int) -> KLExpansion:
    r"""Show :math:`\mathrm{KL}(p_x \| p_{x+\delta}) = \tfrac12 \delta^\top F \delta + O(\delta^3)`.

    %(sizes)s

    Returns
    -------
    KLExpansion
        The exact KL divergence between the softmax at logits :math:`z` and at
        :math:`z + J\delta` (the first-order model of a classifier moved by
        :math:`\delta`), its Taylor terms up to degree 2, and
        :math:`\tfrac12 \delta^\top F \delta`; :meth:`KLExpansion.prove` shows they agree.

    %(raises)s

    Notes
    -----
    With :math:`u = J\delta` and :math:`q(t) = \operatorname{softmax}(z + t u)`,
    :math:`\mathrm{KL}(t) = \sum_y p_y (\log p_y - \log q_y(t))` satisfies
    :math:`\mathrm{KL}(0) = 0`,
    :math:`\mathrm{KL}'(0) = -(p^\top u - p^\top u) = 0` and
    :math:`\mathrm{KL}''(0) = \operatorname{Var}_{y \sim p}(u_y) = u^\top \Sigma_p u`,
    so the degree-2 term is :math:`\tfrac12 \delta^\top J^\top \Sigma_p J \delta`.
    For a nonlinear classifier the curvature of :math:`f` enters only at degree 3 since
    :math:`\mathrm{KL}` is stationary at :math:`\delta = 0`, so the quadratic term is
    the same. Hence :math:`\tfrac12 \varepsilon^2 \lambda_{\max}(F)` is the worst KL at
    radius :math:`\varepsilon`, to second order.

    References
    ----------
    .. [1] S. Kullback, *Information Theory and Statistics*, Wiley (1959), ch. 2.6.
    .. [2] S.-I. Amari, *Information Geometry and Its Applications*, Springer (2016).

    Examples
    --------
    >>> expansion = kl_second_order(2, 1)
    >>> expansion.prove()
    True
    >>> expansion.terms[0]
    0
    """
    K, d = _check_sizes(K, d, "kl_second_order")
    logits = _logits(K)
    J = _jacobian(K, d)
    delta = Matrix(sympy.symbols(f"delta1:{d + 1}", real=True))
    t = sympy.Symbol("t", real=True)
    moved = logits + t * J * delta
    denominator = sum(sympy.exp(z) for z in logits)
    p = Matrix([sympy.exp(z) / denominator for z in logits])
    kl_t = sum(p[y] * (_log_softmax(logits, y) - _log_softmax(moved, y)) for y in range(K))
    terms = tuple(sympy.diff(kl_t, t, k).subs(t, 0) / sympy.factorial(k) for k in range(3))
    fisher = J.T * (sympy.diag(*p) - p * p.T) * J
    quadratic_form = (delta.T * fisher * delta)[0, 0] / 2
    return KLExpansion(kl=kl_t.subs(t, 1), terms=terms, quadratic_form=quadratic_form,
                       p=p, J=J, delta=delta, logits=logits)
