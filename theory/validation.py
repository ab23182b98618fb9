r"""Argument checks shared by the modules of :mod:`theory`.

Every check takes the public function's name and the parameter's name, so that the
message reads ``"<function>: expected <what>, got <value>."`` and names the culprit, and
raises :class:`theory.errors.ParameterError` (a ``ValueError``). SymPy arguments are
refused only when a violation is *provable* (``Symbol("h")`` of unknown sign passes
:func:`nonnegative`; the result then holds under the documented assumption), as in
:mod:`sympy.stats`.
"""

from __future__ import annotations

import operator

import sympy

from theory.errors import ParameterError

__all__ = ["positive_integer", "real", "finite_real", "nonnegative", "positive",
           "integer_expression", "describe"]


def describe(value) -> str:
    """``repr`` of a Python value, ``str`` of a SymPy one (``-1``, not ``Integer(-1)``)."""
    return str(value) if isinstance(value, sympy.Basic) else repr(value)


def positive_integer(function: str, name: str, value, *, minimum: int = 1,
                     error: type[Exception] = ParameterError) -> int:
    """``value`` as a Python int ``>= minimum`` (int, NumPy or SymPy integers; not bool).

    ``error`` is the exception class raised (other packages pass their own).

    Examples
    --------
    >>> positive_integer("f", "K", 3)
    3
    >>> positive_integer("f", "K", 2.0)
    Traceback (most recent call last):
    ...
    theory.errors.ParameterError: f: expected K to be an integer >= 1, got 2.0.
    """
    try:
        integer = operator.index(value)
    except TypeError:
        integer = None
    if isinstance(value, bool) or integer is None or integer < minimum:
        raise error(f"{function}: expected {name} to be an integer >= {minimum}, got "
                    f"{describe(value)}.")
    return integer


def real(function: str, name: str, value, *, finite: bool = False) -> sympy.Expr:
    """``value`` as a SymPy expression that is not provably non-real or NaN.

    With ``finite=True`` a provably infinite value is refused too.

    Examples
    --------
    >>> real("f", "alpha", 0.5)
    0.500000000000000
    >>> real("f", "alpha", float("nan"))
    Traceback (most recent call last):
    ...
    theory.errors.ParameterError: f: expected alpha to be a real number, got nan.
    """
    what = "a finite real number" if finite else "a real number"
    if isinstance(value, bool):
        raise ParameterError(f"{function}: expected {name} to be {what} or SymPy expression, "
                             f"got {value!r}.")
    try:
        expr = sympy.sympify(value, strict=True)
    except (sympy.SympifyError, TypeError) as err:
        raise ParameterError(f"{function}: expected {name} to be {what} or SymPy expression, "
                             f"got {value!r}.") from err
    if (not isinstance(expr, sympy.Expr) or expr.has(sympy.nan, sympy.zoo)
            or expr.is_extended_real is False or (finite and expr.is_finite is False)):
        raise ParameterError(f"{function}: expected {name} to be {what}, got "
                             f"{describe(value)}.")
    return expr


def finite_real(function: str, name: str, value) -> sympy.Expr:
    """:func:`real` with ``finite=True``."""
    return real(function, name, value, finite=True)


def nonnegative(function: str, name: str, value, *, finite: bool = True) -> sympy.Expr:
    """:func:`real` and not provably negative (``finite=False`` admits ``oo``)."""
    expr = real(function, name, value, finite=finite)
    if expr.is_negative:
        raise ParameterError(f"{function}: expected {name} >= 0, got {describe(value)}.")
    return expr


def positive(function: str, name: str, value, *, finite: bool = True) -> sympy.Expr:
    """:func:`real` and not provably ``<= 0`` (``finite=False`` admits ``oo``)."""
    expr = real(function, name, value, finite=finite)
    if expr.is_nonpositive:
        raise ParameterError(f"{function}: expected {name} > 0, got {describe(value)}.")
    return expr


def integer_expression(function: str, name: str, value) -> sympy.Expr:
    """A SymPy integer ``>= 1`` or an expression not provably otherwise (``3.0`` -> ``3``)."""
    expr = finite_real(function, name, value)
    if isinstance(expr, sympy.Float) and float(expr).is_integer():
        expr = sympy.Integer(int(expr))
    if expr.is_integer is False or (expr - 1).is_negative:
        raise ParameterError(f"{function}: expected {name} to be an integer >= 1, got "
                             f"{describe(value)}.")
    return expr
