r"""Certified evaluation of Lipschitz constants at numeric values of their symbols.

A bound is an expression in positive symbols (:func:`bounds.parse_constant`); given
numbers for the symbols, :func:`upper_value` returns a float that is never below the
exact value of the expression, or raises naming what is wrong:

- a value that is not a real number :math:`\ge 0` (NaN, negative, complex; ``inf`` is
  allowed and means "no finite constant") is refused naming the symbol
  (:func:`symbol_values`);
- an expression that is not a real number at the values (the square root or logarithm of
  a negative number, :math:`\infty - \infty`, :math:`1/0` of an expression that may be
  negative) or that is provably negative (``h - 3`` at ``h = 1``) is refused naming the
  node (the caller's ``where``) and the value.

Arithmetic is mpmath interval arithmetic at :data:`PRECISION` bits with outward rounding
(exact when the result is representable, so ``2 * 2`` stays ``4``); functions mpmath
does not enclose natively are monotone on the pieces used and are evaluated at the
endpoints 20 bits beyond the working precision, then widened by :math:`2^{-190}`
relative, far above their rounding error. The float returned is the upper end of the
enclosure rounded up. At 0 the symbols keep the meaning SymPy gave them for positive
values (by continuity: ``h**-1`` at ``h = 0`` is ``inf``).

**0 times infinity.** In a bound, a product is a composition (:func:`theory.compose_rule`)
and a constant 0 means the map is constant; whatever follows or precedes a constant map,
the composition is constant, so :math:`0 \cdot \infty = 0`. :func:`upper_value` applies
this to every product whose factor is exactly 0.
"""

from __future__ import annotations

import contextlib
import math
import numbers
from collections.abc import Iterator, Mapping

import mpmath
import sympy
from mpmath import iv

from bounds.errors import ArgumentError, InvalidValueError

__all__ = ["PRECISION", "precision", "symbol_values", "substitute_depths", "enclose",
           "checked_enclosure", "upper_value", "upper_float"]

#: Working precision of the interval evaluation, in bits.
PRECISION = 200

_MONOTONE = {sympy.erf: (mpmath.erf, True), sympy.erfc: (mpmath.erfc, False)}


@contextlib.contextmanager
def precision() -> Iterator[None]:
    """Run mpmath's interval and real contexts at :data:`PRECISION` bits, then restore
    them (conversions of interval ends to ``mpf`` happen at that precision too)."""
    saved = iv.prec, mpmath.mp.prec
    iv.prec = mpmath.mp.prec = PRECISION
    try:
        yield
    finally:
        iv.prec, mpmath.mp.prec = saved


def _describe(value) -> str:
    return str(value) if isinstance(value, sympy.Basic) else repr(value)


def symbol_values(function: str, values) -> dict[str, object]:
    """Validate ``values``: symbol (or name) -> real number ``>= 0``, ``inf`` allowed.

    Returns
    -------
    dict
        Name -> interval (``mpmath.iv.mpf``) holding the value exactly.

    Raises
    ------
    ArgumentError
        If ``values`` is not a mapping.
    InvalidValueError
        If a value is not a real number (a bool, a string, NaN, a complex number) or is
        negative; the message names the symbol.

    Examples
    --------
    >>> sorted(symbol_values("f", {"h": 2, "k": 0.5}))
    ['h', 'k']
    >>> symbol_values("f", {"h": -1})
    Traceback (most recent call last):
    ...
    bounds.errors.InvalidValueError: f: expected the value of h to be a real number >= 0, got -1.
    """
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise ArgumentError(f"{function}: expected a mapping from symbols to numbers, got "
                            f"{type(values).__name__} {values!r}.")
    return {str(key): _interval(function, str(key), value) for key, value in values.items()}


def _interval(function: str, name: str, value):
    if getattr(value, "ndim", None) == 0 and callable(getattr(value, "item", None)):
        value = value.item()  # a 0-d NumPy array or tensor
    with precision():
        if isinstance(value, sympy.Basic):
            if value.is_Rational:
                interval = iv.mpf(value.p) / value.q
            elif value.is_Float:
                interval = iv.mpf(mpmath.mpf(value._mpf_))
            elif value is sympy.oo:
                interval = iv.mpf("inf")
            else:
                interval = None
        elif isinstance(value, numbers.Real) and not isinstance(value, bool):
            number = float(value) if not isinstance(value, numbers.Integral) else int(value)
            interval = None if isinstance(number, float) and math.isnan(number) else (
                iv.mpf(number))
        else:
            interval = None
    if interval is None or interval.a < 0 or mpmath.isnan(interval.a):
        raise InvalidValueError(f"{function}: expected the value of {name} to be a real "
                                f"number >= 0, got {_describe(value)}.")
    return interval


class _NotReal(Exception):
    """The expression has no real value at the given values; the argument says why."""


def _widened(low, high, bits: int = 190):
    """``[low, high]`` widened outward by ``2**-bits`` relative (infinities kept)."""
    def down(v):
        return v if mpmath.isinf(v) else v - abs(v) * mpmath.ldexp(1, -bits)

    def up(v):
        return v if mpmath.isinf(v) else v + abs(v) * mpmath.ldexp(1, -bits)
    return iv.mpf([down(low), up(high)])


def _monotone(function, increasing: bool, interval):
    with mpmath.workprec(PRECISION + 20):
        ends = function(mpmath.mpf(interval.a)), function(mpmath.mpf(interval.b))
        low, high = ends if increasing else ends[::-1]
        return _widened(low, high)


def _is_zero(interval) -> bool:
    return interval.a == 0 and interval.b == 0


def _product(factors):
    if any(_is_zero(f) for f in factors):
        return iv.mpf(0)  # 0 * oo = 0: a constant map composed with anything
    result = iv.mpf(1)
    for factor in factors:
        result = result * factor
    if mpmath.isnan(result.a) or mpmath.isnan(result.b):
        raise _NotReal("0 times infinity in an expression whose sign is not fixed")
    return result


def _sum(terms):
    plus = any(mpmath.isinf(t.b) and t.b > 0 for t in terms)
    minus = any(mpmath.isinf(t.a) and t.a < 0 for t in terms)
    if plus and minus:
        raise _NotReal("infinity minus infinity")
    result = iv.mpf(0)
    for term in terms:
        result = result + term
    return result


def _power(expr, base, exponent):
    if exponent.a == exponent.b and mpmath.isint(exponent.a) and not mpmath.isinf(exponent.a):
        n = int(exponent.a)
        if _is_zero(base):
            return _zero_power(expr, n)
        if base.a < 0 < base.b and n < 0:
            raise _NotReal(f"{expr.base} is 0 up to rounding and is raised to {n}")
        return base**n
    if base.b < 0:
        raise _NotReal(f"{expr.base} = {_show(base.b)} < 0 raised to {expr.exp}")
    base = iv.mpf([max(base.a, 0), base.b])
    if base.a == 0:
        if exponent.a > 0:
            return iv.mpf([0, base.b**exponent.b if base.b >= 1 else base.b**exponent.a])
        return _zero_power(expr, -1)
    return _corners(base, exponent)


def _corners(base, exponent):
    """x**y over a box with x > 0: monotone in each argument, so the corners bound it."""
    values = [iv.mpf(x) ** iv.mpf(y) for x in (base.a, base.b) for y in (exponent.a,
                                                                           exponent.b)]
    return iv.mpf([min(v.a for v in values), max(v.b for v in values)])


def _zero_power(expr, n):
    if n > 0:
        return iv.mpf(0)
    if n == 0:
        return iv.mpf(1)
    if expr.base.is_nonnegative:  # 1/h at h = 0: the limit from h > 0
        return iv.mpf("inf")
    raise _NotReal(f"division by zero: {expr.base} = 0")


def _function(expr, args):
    (x,) = args if len(args) == 1 else (None,)
    if isinstance(expr, sympy.exp):
        return iv.exp(x)
    if isinstance(expr, sympy.log):
        if x.b < 0:
            raise _NotReal(f"logarithm of {expr.args[0]} = {_show(x.b)} < 0")
        return iv.log(iv.mpf([max(x.a, 0), x.b])) if x.b > 0 else iv.mpf("-inf")
    if isinstance(expr, sympy.tanh):
        return 1 - 2 / (1 + iv.exp(2 * x))
    if isinstance(expr, sympy.sinh):
        return (iv.exp(x) - iv.exp(-x)) / 2
    if isinstance(expr, sympy.cosh):
        return (iv.exp(x) + iv.exp(-x)) / 2
    if isinstance(expr, sympy.Abs):
        if x.a >= 0:
            return x
        return -x if x.b <= 0 else iv.mpf([0, max(-x.a, x.b)])
    if isinstance(expr, sympy.Max | sympy.Min):
        pick = max if isinstance(expr, sympy.Max) else min
        return iv.mpf([pick(a.a for a in args), pick(a.b for a in args)])
    if isinstance(expr, sympy.floor | sympy.ceiling):
        rounding = mpmath.floor if isinstance(expr, sympy.floor) else mpmath.ceil
        return iv.mpf([rounding(x.a), rounding(x.b)])
    for kind, (function, increasing) in _MONOTONE.items():
        if isinstance(expr, kind):
            return _monotone(function, increasing, x)
    raise _NotReal(f"cannot evaluate {type(expr).__name__}")


def _atom(expr, values):
    if expr.is_Rational:
        return iv.mpf(expr.p) / expr.q
    if expr.is_Float:
        return iv.mpf(mpmath.mpf(expr._mpf_))
    if expr is sympy.oo:
        return iv.mpf("inf")
    if expr is sympy.S.NegativeInfinity:
        return iv.mpf("-inf")
    if isinstance(expr, sympy.NumberSymbol):
        value = mpmath.mpf(expr.evalf(75)._mpf_)
        return _widened(value, value)
    if expr.is_Symbol or isinstance(expr, sympy.Indexed):
        return values[str(expr)]
    raise _NotReal(f"{expr} is not a real number")


def _exact(interval) -> sympy.Expr:
    """The exact value of a degenerate interval as a SymPy number."""
    with precision():
        end = mpmath.mpf(interval.a)
    if mpmath.isinf(end):
        return sympy.oo
    mantissa, exponent = end.man_exp
    return sympy.Integer(mantissa) * sympy.Rational(2) ** exponent


def _doit(expr, values):
    """A Product or Sum with its free symbols replaced by their values, then computed."""
    known = {}
    for symbol in expr.free_symbols:
        interval = values.get(str(symbol))
        if interval is not None and interval.a == interval.b:
            known[symbol] = _exact(interval)
    return expr.xreplace(known).doit()


def substitute_depths(expr: sympy.Expr, values: Mapping) -> sympy.Expr:
    """``expr`` with the symbols that index (``h[n + 1]``) or bound (``Product(.., (l, 1,
    n))``) something replaced by their exact values, and those products carried out, so
    that a closed form with symbolic depth can be evaluated like a derived bound."""
    loops = expr.atoms(sympy.Product, sympy.Sum)
    used = set()
    for item in expr.atoms(sympy.Indexed):
        used |= set().union(*(sympy.sympify(i).free_symbols for i in item.indices))
    for loop in loops:
        used |= set().union(*(sympy.sympify(v).free_symbols for lim in loop.limits
                              for v in lim[1:]))
    known = {}
    for symbol in used:
        interval = values.get(str(symbol))
        if interval is not None and interval.a == interval.b:
            known[symbol] = _exact(interval)
    if not known and not loops:
        return expr
    return expr.xreplace(known).doit() if loops else expr.xreplace(known)


def enclose(expr: sympy.Expr, values: Mapping):
    """An interval (``mpmath.iv.mpf``) holding the exact value of ``expr`` at ``values``.

    ``values`` maps names to intervals (:func:`symbol_values`); every free symbol must
    have one. Raises ``_NotReal`` (internal; :func:`upper_value` turns it into an
    :class:`InvalidValueError` naming the culprit) when the value is not a real number.
    """
    with precision():
        memo: dict = {}
        stack = [(expr, False)]
        while stack:
            node, ready = stack.pop()
            if node in memo:
                continue
            if isinstance(node, sympy.Product | sympy.Sum):
                memo[node] = enclose(_doit(node, values), values)
                continue
            if not node.args or node.is_Number or isinstance(node, sympy.Indexed):
                memo[node] = _atom(node, values)
                continue
            if not ready:
                stack.append((node, True))
                stack.extend((arg, False) for arg in node.args if arg not in memo)
                continue
            args = [memo[arg] for arg in node.args]
            if node.is_Add:
                memo[node] = _sum(args)
            elif node.is_Mul:
                memo[node] = _product(args)
            elif node.is_Pow:
                memo[node] = _power(node, *args)
            else:
                memo[node] = _function(node, args)
        return memo[expr]


def upper_float(interval) -> float:
    """The upper end of an interval as a float, rounded up (``inf`` stays ``inf``)."""
    with precision():
        high = mpmath.mpf(interval.b)
        value = float(high)
        if mpmath.mpf(value) < high:
            value = math.nextafter(value, math.inf)
    return value


def checked_enclosure(expr: sympy.Expr, values: Mapping, where: str):
    """:func:`enclose`, refusing a value that is not a real number ``>= 0`` (see
    :func:`upper_value`)."""
    with precision():
        return _checked(expr, values, where)


def _checked(expr: sympy.Expr, values: Mapping, where: str):
    shown = ", ".join(f"{s}={_show(values[str(s)].a)}"
                      for s in sorted(_names(expr), key=str) if str(s) in values)
    at = f" at {shown}" if shown else ""
    try:
        interval = enclose(expr, values)
    except (_NotReal, ValueError, ZeroDivisionError, mpmath.libmp.ComplexResult) as err:
        raise InvalidValueError(f"{where} is not a real number{at}: {err}.") from None
    if interval.b < 0 or (mpmath.isinf(interval.a) and interval.a < 0):
        value = _show(interval.b)
        raise InvalidValueError(f"{where} is {value}{at}: a Lipschitz constant is >= 0.")
    return interval


def upper_value(expr: sympy.Expr, values: Mapping, where: str) -> float:
    """The value of a Lipschitz constant at ``values``, rounded up; refuse a non-real or
    negative value naming ``where``.

    Parameters
    ----------
    expr : sympy.Expr
        The constant.
    values : mapping
        Name -> interval, from :func:`symbol_values`, with every free symbol of ``expr``.
    where : str
        What ``expr`` is, for messages (``"propagate: node 'fc' (constant h - 3)"``).

    Returns
    -------
    float
        Never below the exact value of ``expr`` at ``values``.

    Raises
    ------
    InvalidValueError
        If the value is not a real number, or is provably negative.

    Examples
    --------
    >>> import sympy
    >>> h = sympy.Symbol("h", positive=True)
    >>> upper_value(h - 3, symbol_values("f", {"h": 5}), "node 'a'")
    2.0
    >>> upper_value(h - 3, symbol_values("f", {"h": 1}), "node 'a'")
    Traceback (most recent call last):
    ...
    bounds.errors.InvalidValueError: node 'a' is -2 at h=1: a Lipschitz constant is >= 0.
    >>> upper_value(sympy.sqrt(h - 4), symbol_values("f", {"h": 1}), "node 'b'")
    Traceback (most recent call last):
    ...
    bounds.errors.InvalidValueError: node 'b' is not a real number at h=1: h - 4 = -3 < 0 raised to 1/2.
    """
    with precision():
        return upper_float(checked_enclosure(expr, values, where))


def _show(end) -> str:
    """An interval end for a message: ``1``, ``-2``, ``0.25``, ``3.1415927``, ``inf``."""
    value = mpmath.mpf(end)
    if mpmath.isinf(value):
        return "inf" if value > 0 else "-inf"
    if mpmath.isint(value) and abs(value) < 10**15:
        return str(int(value))
    return mpmath.nstr(value, 8)


def _names(expr) -> set:
    indexed = expr.atoms(sympy.Indexed)
    labels = {item.base.label for item in indexed}
    return {s for s in expr.free_symbols if s not in labels} | indexed
