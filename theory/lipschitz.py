r"""The Lipschitz calculus: how constants combine along a computation graph.

Three rules cover every node of an architecture graph (AutoLip, Scaman & Virmaux 2018):
a chain of maps multiplies constants (:func:`compose_rule`), a sum of branches adds them
(:func:`sum_rule`), and a concatenation of branches takes their root-sum-square
(:func:`concat_rule`). Norms are Euclidean throughout.

Every rule holds for two readings of "constant" at once:

* global Lipschitz constants, :math:`\|g(x) - g(y)\| \le L\, \|x - y\|` for all x, y;
* Jacobian norms at a point, :math:`\|\partial g(x)\|_2 \le L`, because the Jacobian of
  a composition, a sum and a concatenation is the product, the sum and the vertical
  stack of the Jacobians.

So constants bounding local Jacobian norms (from the activations at one input) propagate
with the same rules into a bound on the Jacobian of the whole network at that input.
"""

from __future__ import annotations

import sympy

from theory.errors import ParameterError
from theory.docstrings import SCAMAN_VIRMAUX, fill_doc
from theory.validation import nonnegative

__all__ = ["compose_rule", "sum_rule", "concat_rule"]

_RULE_DOCS = {
    "raises": "Raises\n------\nParameterError\n    If no constant is given, or one is not "
              "a scalar, or is provably negative.",
    "references": "References\n----------\n" + SCAMAN_VIRMAUX,
}


def _constants(constants: tuple, function: str) -> list[sympy.Expr]:
    """Sympify and check constants; raise only when one is provably not a valid constant."""
    if not constants:
        raise ParameterError(f"{function}: expected at least one constant, got none.")
    return [nonnegative(function, f"constants[{i}]", constant, finite=False)
            for i, constant in enumerate(constants)]


@fill_doc(**_RULE_DOCS)
def compose_rule(*constants) -> sympy.Expr:
    r"""Constant of a composition :math:`g_n \circ \dots \circ g_1`: :math:`\prod_i L_i`.

    Parameters
    ----------
    *constants : sympy.Expr or number
        :math:`L_1, \dots, L_n \ge 0`, the constants of the maps in the chain (any
        order: the product commutes). Symbols are accepted; a constant is rejected only
        if it is provably negative or not real.

    Returns
    -------
    sympy.Expr
        :math:`\prod_i L_i`, a certified bound whenever every :math:`L_i` is.

    %(raises)s

    Notes
    -----
    Proof (global). If :math:`\|g(a) - g(b)\| \le L_g \|a - b\|` and
    :math:`\|f(x) - f(y)\| \le L_f \|x - y\|`, then

    .. math::

       \|g(f(x)) - g(f(y))\| \le L_g \|f(x) - f(y)\| \le L_g L_f \|x - y\| ,

    and induction extends it to n maps. Proof (at a point). By the chain rule
    :math:`\partial (g \circ f)(x) = \partial g(f(x))\, \partial f(x)`, and the spectral
    norm is submultiplicative: :math:`\|AB\|_2 \le \|A\|_2 \|B\|_2`.

    %(references)s

    Examples
    --------
    >>> from sympy import Rational, Symbol
    >>> compose_rule(2, Rational(1, 4), Symbol("h", positive=True))
    h/2
    """
    return sympy.Mul(*_constants(constants, "compose_rule"))


@fill_doc(**_RULE_DOCS)
def sum_rule(*constants) -> sympy.Expr:
    r"""Constant of a sum of branches :math:`h = \sum_i g_i` fed by one input: :math:`\sum_i L_i`.

    Parameters
    ----------
    *constants : sympy.Expr or number
        :math:`L_i \ge 0`, the constants of the maps :math:`x \mapsto g_i(x)` (each from
        the common input to the branch output, not per branch segment).

    Returns
    -------
    sympy.Expr
        :math:`\sum_i L_i`, a certified bound whenever every :math:`L_i` is. A residual
        block :math:`x + g(x)` gets :math:`1 + L_g`.

    %(raises)s

    Notes
    -----
    Proof (global). By the triangle inequality

    .. math::

       \Big\|\sum_i g_i(x) - \sum_i g_i(y)\Big\|
       \le \sum_i \|g_i(x) - g_i(y)\| \le \Big(\sum_i L_i\Big) \|x - y\| .

    Proof (at a point). :math:`\partial h(x) = \sum_i \partial g_i(x)` and the spectral
    norm obeys the triangle inequality.

    %(references)s

    Examples
    --------
    >>> from sympy import Symbol
    >>> sum_rule(1, Symbol("h", positive=True))
    h + 1
    """
    return sympy.Add(*_constants(constants, "sum_rule"))


@fill_doc(**_RULE_DOCS)
def concat_rule(*constants) -> sympy.Expr:
    r"""Constant of a concatenation :math:`x \mapsto (g_i(x))_i`: :math:`\sqrt{\sum_i L_i^2}`.

    Parameters
    ----------
    *constants : sympy.Expr or number
        :math:`L_i \ge 0`, the constants of the maps :math:`x \mapsto g_i(x)` from the
        common input to each concatenated part.

    Returns
    -------
    sympy.Expr
        :math:`\sqrt{\sum_i L_i^2}`, a certified bound whenever every :math:`L_i` is;
        never more than :math:`\sum_i L_i`. A dense connection
        :math:`x \mapsto (x, g(x))` gets :math:`\sqrt{1 + L_g^2}`.

    %(raises)s

    Notes
    -----
    Proof (global). The squared Euclidean norm of a concatenation is the sum of the
    squared norms of its parts, so

    .. math::

       \|(g_i(x) - g_i(y))_i\|^2 = \sum_i \|g_i(x) - g_i(y)\|^2
       \le \Big(\sum_i L_i^2\Big) \|x - y\|^2 .

    Proof (at a point). The Jacobian is the stack :math:`[A_1; \dots; A_n]` and
    :math:`\|[A_1; \dots; A_n] v\|^2 = \sum_i \|A_i v\|^2 \le \sum_i \|A_i\|_2^2 \|v\|^2`.

    %(references)s

    Examples
    --------
    >>> concat_rule(3, 4)
    5
    >>> from sympy import Symbol
    >>> concat_rule(1, Symbol("h", positive=True))
    sqrt(h**2 + 1)
    """
    values = _constants(constants, "concat_rule")
    return sympy.sqrt(sympy.Add(*[value**2 for value in values]))
