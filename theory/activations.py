r"""Derivative bounds of elementwise activations and identity-like operations.

:func:`activation_lipschitz` gives the Lipschitz constant :math:`\sup_t |\phi'(t)|` of an
activation at its actual parameters, and :func:`second_derivative_bound` gives
:math:`\sup |\phi''|` over its smooth pieces (what a local rule needs to widen an interval
of pre-activations into an interval of derivatives). Both refuse parameters outside the
domain on which the constant is proved. :data:`ACTIVATIONS` maps each name to its
:class:`~theory.elementwise.Activation` (function, constants, proofs); the entries and
their proofs are in :mod:`theory.activation_types`, the interval-arithmetic certificates
of the three constants without closed form in :mod:`theory.certification`.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import sympy

from theory.activation_types import ENTRIES
from theory.elementwise import Activation
from theory.errors import UnknownOperationError

__all__ = ["Activation", "ACTIVATIONS", "activation_lipschitz", "second_derivative_bound"]

#: Registry of elementwise and identity-like operations, by name.
ACTIVATIONS: Mapping[str, Activation] = MappingProxyType({a.name: a for a in ENTRIES})


def _lookup(name, function: str) -> Activation:
    if not isinstance(name, str) or name not in ACTIVATIONS:
        known = ", ".join(sorted(ACTIVATIONS))
        raise UnknownOperationError(f"{function}: expected one of the known names ({known}), "
                                    f"got {name!r}.")
    return ACTIVATIONS[name]


def activation_lipschitz(name: str, **params) -> sympy.Expr:
    r"""The Lipschitz constant :math:`\sup_t |\phi'(t)|` of an activation at its parameters.

    Parameters
    ----------
    name : str
        A key of :data:`ACTIVATIONS`. With their parameters (torch's names and defaults)
        and the domain on which the constant is proved:

        =================  =====================================  ===========================
        name               constant                               domain of the parameters
        =================  =====================================  ===========================
        ``relu``, ``relu6`` 1                                     --
        ``leaky_relu``     :math:`\max(1, |s|)`                   ``negative_slope`` real
        ``prelu``          :math:`\max(1, \max_c |a_c|)`          ``weight`` real vector
        ``elu``            :math:`|\lambda| \max(1, |\alpha c|)`  ``input_scale`` c >= 0
        ``celu``           1                                      ``alpha`` > 0
        ``selu``           :math:`\lambda\alpha \approx 1.7581`   --
        ``softplus``       1 (see Notes on ``threshold``)         ``beta`` > 0
        ``hardtanh``       1 (0 if ``min_val == max_val``)        ``min_val <= max_val``
        ``hardsigmoid``    1/6                                    --
        ``hardswish``      3/2                                    --
        ``gelu``           :math:`\Phi(\sqrt2) + \sqrt2\varphi(\sqrt2)`  ``approximate`` none/tanh
        ``gelu_tanh``,     certified rationals (1.1290, 1.0998,   --
        ``silu``, ``mish`` 1.0885)
        ``tanh``,          1                                      --
        ``softsign``,
        ``logsigmoid``,
        ``tanhshrink``
        ``sigmoid``        1/4                                    --
        =================  =====================================  ===========================

        and the identity-like ``identity``, ``dropout``, ``flatten``, ``reshape``,
        ``permute``, ``select`` (constant 1; they accept and ignore any keyword).
    **params
        The parameters, as finite real numbers or SymPy expressions (``weight`` of
        ``prelu``: a number or a sequence of numbers; ``approximate``: a string).

    Returns
    -------
    sympy.Expr
        Exact for every name except ``silu``, ``mish``, ``gelu_tanh`` and
        ``gelu(approximate='tanh')``, whose constants are rationals certified to lie
        within :math:`3\cdot 10^{-10}` above the supremum
        (:func:`theory.certify_activation_constant`). In every case a certified Lipschitz
        bound in the Euclidean norm on the stated domain. Cost: a table lookup.

    Raises
    ------
    UnknownOperationError
        If ``name`` is not registered; the message lists the known names.
    ParameterError
        If a parameter name is not accepted, a value is NaN, infinite or complex, or it
        lies provably outside the domain above (the message names the parameter, its
        value and why). A symbolic parameter of unknown sign is accepted; the result then
        holds under the domain's assumption.

    Notes
    -----
    The elementwise map :math:`x \mapsto (\phi(x_i))_i` has Jacobian
    :math:`\operatorname{diag}(\phi'(x_i))`, of spectral norm
    :math:`\max_i |\phi'(x_i)|`; by the mean value theorem (on each piece of a
    continuous piecewise-smooth :math:`\phi`) the Lipschitz constant is
    :math:`\sup_t |\phi'(t)|`. Each :attr:`Activation.derivation` gives the supremum on
    the domain; for instance ``elu`` with parameters :math:`\alpha, \lambda` (``scale``)
    and :math:`c` (``input_scale``) is :math:`\lambda t` for :math:`t > 0` and
    :math:`\lambda\alpha(e^{ct} - 1)` for :math:`t \le 0`, continuous at 0, with
    :math:`|\phi'| = |\lambda\alpha c| e^{ct} \le |\lambda\alpha c|` on :math:`t < 0`
    exactly when :math:`c \ge 0`; ``celu`` is ``elu`` with :math:`\lambda = 1,
    c = 1/\alpha`, so it needs :math:`\alpha > 0`.

    ``softplus``: torch returns :math:`t` where :math:`\beta t >` ``threshold``, which
    makes a jump of :math:`\log(1 + e^{-\text{threshold}})/\beta` at the switch. The
    derivative bound 1 holds on both pieces (so the Jacobian norm is at most 1 wherever it
    exists, which is what the Fisher bound uses); the function itself satisfies
    :math:`|f(x) - f(y)| \le |x - y| + \log(1 + e^{-\text{threshold}})/\beta`.

    References
    ----------
    .. [1] K. Scaman and A. Virmaux, "Lipschitz regularity of deep neural networks:
       analysis and efficient estimation", NeurIPS 2018, arXiv:1805.10965.
    .. [2] D. Hendrycks and K. Gimpel, "Gaussian error linear units (GELUs)",
       arXiv:1606.08415 (2016).
    .. [3] G. Klambauer et al., "Self-normalizing neural networks", NeurIPS 2017,
       arXiv:1706.02515 (SELU).

    Examples
    --------
    >>> activation_lipschitz("sigmoid")
    1/4
    >>> activation_lipschitz("leaky_relu", negative_slope=3)
    3
    >>> activation_lipschitz("elu", alpha=2, scale=3, input_scale=0.25)
    3
    >>> activation_lipschitz("prelu", weight=[0.25, -2])
    2
    >>> activation_lipschitz("gelu")
    exp(-1)/sqrt(pi) + erf(1)/2 + 1/2
    >>> float(activation_lipschitz("silu"))
    1.0998393204
    >>> activation_lipschitz("celu", alpha=-1)
    Traceback (most recent call last):
    ...
    theory.errors.ParameterError: activation_lipschitz('celu'): expected alpha > 0 (for alpha < 0, exp(x/alpha) grows without bound as x -> -oo: no global constant), got alpha=-1.
    """
    entry = _lookup(name, "activation_lipschitz")
    return entry.constant(**entry.parameters(params, "activation_lipschitz"))


def second_derivative_bound(name: str, **params) -> sympy.Expr:
    r"""A bound on :math:`\sup |\phi''|` over the smooth pieces of an activation.

    Local bounds evaluate :math:`|\phi'|` at a few points of an interval of
    pre-activations; :math:`|\phi'|` moves by at most :math:`\sup|\phi''|` times the
    distance on each smooth piece, so this bound widens the evaluated values into a bound
    over the whole interval (kinks handled by the caller evaluating both sides).

    Parameters
    ----------
    name : str
        A key of :data:`ACTIVATIONS` (see :func:`activation_lipschitz`).
    **params
        The same parameters, on the same domain, as for :func:`activation_lipschitz`.

    Returns
    -------
    sympy.Expr
        0 for piecewise-linear operations (``relu``, ``leaky_relu``, ``prelu``,
        ``relu6``, ``hardtanh``, ``hardsigmoid``, identity-like); exact for ``elu``
        (:math:`|\lambda\alpha| c^2`), ``celu`` (:math:`1/\alpha`), ``selu``
        (:math:`\lambda\alpha`), ``softplus`` (:math:`\beta/4`), ``tanh`` and
        ``tanhshrink`` (:math:`4/(3\sqrt3)`), ``sigmoid`` (:math:`\sqrt3/18`), ``gelu``
        (:math:`\sqrt{2/\pi}`), ``softsign`` (2), ``logsigmoid`` (1/4), ``hardswish``
        (1/3); a certified rational within :math:`3\cdot 10^{-10}` above the supremum for
        ``silu``, ``mish``, ``gelu_tanh`` (:func:`theory.certify_activation_constant`
        with ``order=2``). A certified upper bound in every case; the proofs are
        :attr:`Activation.curvature_derivation`.

    Raises
    ------
    UnknownOperationError
        If ``name`` is not registered.
    ParameterError
        As :func:`activation_lipschitz`.

    Examples
    --------
    >>> second_derivative_bound("relu")
    0
    >>> second_derivative_bound("softplus", beta=8)
    2
    >>> second_derivative_bound("elu", alpha=2, input_scale=3)
    18
    >>> second_derivative_bound("tanh")
    4*sqrt(3)/9
    """
    entry = _lookup(name, "second_derivative_bound")
    return entry.curvature(**entry.parameters(params, "second_derivative_bound"))
