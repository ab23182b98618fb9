r"""Values of a derivation kept as chains of factors, multiplied out once.

:func:`bounds.derive` gives every node the value :math:`L(v) = c_v L(u)`; multiplying it out
at every node would cost :math:`O(n^2)` on a chain of :math:`n` nodes (each product
re-flattens the one before). Here a value is a link ``(base, factor)``, meaning
``factor * value(base)``, interned so that equal values are one object. A sum or
concatenation of two values ``a`` and ``b`` finds their nearest shared link ``c`` (the
lowest common ancestor in the forest of links: :math:`a = c A`, :math:`b = c B`) and
returns ``c * rule(A, B)``, exact because the rules are positively homogeneous. Only the
factors between a value and that ancestor are multiplied, so the work is proportional to
the branches' lengths, and an expression is built by one :class:`sympy.Mul` of its chain.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

import sympy

__all__ = ["Factors", "free_symbols"]


def free_symbols(expr: sympy.Expr) -> tuple:
    """Free symbols, sorted, with ``h[1]`` standing for itself (the label ``h`` is not one)
    and ``h[l]`` inside a Product over ``l`` not one either (``l`` is bound there).

    Examples
    --------
    >>> import sympy
    >>> h = sympy.IndexedBase("h", positive=True)
    >>> free_symbols(h[1] * h[2] + sympy.Symbol("a"))
    (a, h[1], h[2])
    >>> l, n = sympy.symbols("l n", integer=True, positive=True)
    >>> free_symbols(sympy.Product(h[l], (l, 1, n)))
    (n,)
    """
    bound = {limit[0] for loop in expr.atoms(sympy.Product, sympy.Sum) for limit in loop.limits}
    indexed = {item for item in expr.atoms(sympy.Indexed)
               if not (set(item.indices) and bound & set().union(
                   *(sympy.sympify(i).free_symbols for i in item.indices)))}
    labels = {item.base.label for item in expr.atoms(sympy.Indexed)}
    plain = {s for s in expr.free_symbols if not isinstance(s, sympy.Indexed)
             and s not in labels and s not in bound}
    return tuple(sorted(plain | indexed, key=sympy.default_sort_key))


class _Link:
    """``factor * value(base)``; ``depth`` counts the links down to the input's value."""

    __slots__ = ("base", "factor", "depth")

    def __init__(self, base: _Link | None, factor: sympy.Expr) -> None:
        self.base = base
        self.factor = factor
        self.depth = 0 if base is None else base.depth + 1


def _common_factor(a: sympy.Expr, b: sympy.Expr) -> sympy.Expr:
    """A product of powers dividing both ``a`` and ``b`` (1 if none is found)."""
    (ca, ra), (cb, rb) = a.as_coeff_Mul(), b.as_coeff_Mul()
    powers_b = rb.as_powers_dict()
    factors = [ca] if ca == cb and ca.is_positive else []
    for base, ea in ra.as_powers_dict().items():
        eb = powers_b.get(base)
        if eb is None or base == 1:
            continue
        if ea == eb:
            factors.append(base**ea)
        elif ea.is_Rational and eb.is_Rational and ea > 0 and eb > 0:
            factors.append(base ** min(ea, eb))
    return sympy.Mul(*factors)


def _combine(rule: Callable, a: sympy.Expr, b: sympy.Expr) -> sympy.Expr:
    """``rule(a, b)`` with the common factor of ``a`` and ``b`` pulled out.

    The sum and concatenation rules are positively homogeneous,
    ``rule(c a', c b') = c rule(a', b')`` for ``c >= 0``, so this is the rule's value
    written as a product (no expansion).
    """
    common = _common_factor(a, b)
    return common * rule(a / common, b / common)


class Factors:
    """The links of one derivation. ``zero`` (None) is the value of a constant map."""

    zero = None

    def __init__(self) -> None:
        self.one = _Link(None, sympy.Integer(1))
        self._interned: dict[tuple[int, sympy.Expr], _Link] = {}

    def times(self, value: _Link | None, factor: sympy.Expr) -> _Link | None:
        """``factor * value``; 0 times anything, and anything after 0, is 0."""
        if value is None or factor == 0:
            return None
        if factor == 1:
            return value
        key = (id(value), factor)
        link = self._interned.get(key)
        if link is None:
            link = self._interned[key] = _Link(value, factor)
        return link

    def merge(self, rule: Callable, a: _Link | None, b: _Link | None) -> _Link | None:
        """``rule(a, b)`` for the sum or concatenation rule (``rule(L, 0) = L``)."""
        if a is None:
            return b
        if b is None:
            return a
        common, left, right = self._split(a, b)
        return self.times(common, _combine(rule, sympy.Mul(*left), sympy.Mul(*right)))

    @staticmethod
    def _split(a: _Link, b: _Link) -> tuple[_Link, list, list]:
        """The nearest shared link of ``a`` and ``b`` and the factors above it on each side."""
        left, right = [], []
        while a.depth > b.depth:
            left.append(a.factor)
            a = a.base
        while b.depth > a.depth:
            right.append(b.factor)
            b = b.base
        while a is not b:
            left.append(a.factor)
            right.append(b.factor)
            a, b = a.base, b.base
        return a, left, right

    @staticmethod
    def expression(value: _Link | None) -> sympy.Expr:
        """The value multiplied out: one SymPy product of the factors of its chain."""
        if value is None:
            return sympy.Integer(0)
        factors = []
        while value is not None:
            factors.append(value.factor)
            value = value.base
        return sympy.Mul(*factors)

    def expressions(self, values: Mapping[str, _Link | None]) -> Mapping[str, sympy.Expr]:
        """Node -> expression, each multiplied out on first access."""
        return _LazyExpressions(values, self.expression)


class _LazyExpressions(Mapping):
    """A read-only mapping computing (and caching) each entry when it is first read."""

    def __init__(self, values: Mapping, compute: Callable) -> None:
        self._values = dict(values)
        self._compute = compute
        self._cache: dict = {}

    def __getitem__(self, key):
        if key not in self._cache:
            self._cache[key] = self._compute(self._values[key])
        return self._cache[key]

    def __iter__(self) -> Iterator:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"<node constants of {len(self)} nodes, computed on access>"
