r"""What the family modules share: layer symbols, graph-building steps, depth handling.

Builders give every weighted layer a positive SymPy symbol: with ``shared=True`` one
symbol per role (every convolution and linear layer has the constant ``h``), with
``shared=False`` (the default) one indexed symbol per layer (``h[3]``, ``h[2, 1]``, ...),
so that a closed form can be written with symbolic depth as a :class:`~sympy.Product`.

=========  ===============================  ==============================================
role       distinct symbol                  shared symbol
=========  ===============================  ==============================================
layer      ``h[l]``, ``h[b, k]``            ``h`` (the ``symbol`` argument)
stem       ``s``                            ``h``
head       ``w``                            ``h``
shortcut   ``p[b]`` (projection)            ``h``
transition ``t[b]``                         ``h``
LayerNorm  ``ell[l, 1]``, ``ell[l, 2]``,    ``ell``
           ``ell_f`` (final)
attention  ``a[l, k]`` (head ``k``)         ``a``
=========  ===============================  ==============================================
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable

import networkx as nx
import sympy

from bounds.errors import FamilyError
from bounds.validation import flag, integer

__all__ = ["DOCS", "Builder", "constant", "constants", "symbol_name", "stem", "classifier",
           "depth_symbol", "depth_value", "depth_values", "product", "closed_form_function",
           "MAXPOOL_STEM", "POOL_2X2", "LAYER", "BLOCK"]

#: role -> (distinct name, shared name; None means the family's ``symbol``)
_ROLES = {"layer": (None, None), "stem": ("s", None), "head": ("w", None),
          "projection": ("p", None), "transition": ("t", None), "norm": ("ell", "ell"),
          "final_norm": ("ell_f", "ell"), "attention": ("a", "a")}
_RESERVED = ("s", "w", "p", "t", "ell", "ell_f", "a")

MAXPOOL_STEM = {"kernel_size": [3, 3], "stride": [2, 2], "padding": [1, 1]}
POOL_2X2 = {"kernel_size": [2, 2], "stride": [2, 2]}

#: Docstring blocks shared by the builders (see :func:`theory.docstrings.fill_doc`).
DOCS = {
    "stem_head": (
        "stem : bool, default False\n    7x7 convolution (``s``), ReLU, 3x3 max pooling "
        "of stride 2 (constant 2,\n    :func:`theory.maxpool_lipschitz`).\n"
        "head : bool, default False\n    Global average pooling (constant "
        ":math:`1/\\sqrt{HW} \\le 1`, bounded by 1) and a linear\n    classifier (``w``)."),
    "shared": (
        "shared : bool, default False\n    Every convolution and linear layer has the "
        "constant ``h``.\nsymbol : str, default \"h\"\n    Name of the layer symbol."),
    "returns": (
        "Returns\n-------\nnetworkx.DiGraph\n    A graph of the schema "
        "(:mod:`bounds.schema`) with symbolic constants.\n\nRaises\n------\nFamilyError\n"
        "    If an option is out of range."),
}


def constant(role: str, *index, shared: bool, symbol: str) -> sympy.Expr:
    """The positive symbol of one weighted layer (see the table in the module docstring)."""
    distinct, common = _ROLES[role]
    if shared:
        return sympy.Symbol(common or symbol, positive=True)
    name = distinct or symbol
    if not index:
        return sympy.Symbol(name, positive=True)
    return sympy.IndexedBase(name, positive=True)[index]


def constants(function: str, shared, symbol) -> Callable[..., sympy.Expr]:
    """``c(role, *index)``: :func:`constant` with a family's ``shared`` and ``symbol``.

    ``shared`` must be a bool and ``symbol`` pass :func:`symbol_name` (checked in that
    order, :class:`FamilyError` naming ``function``).

    Examples
    --------
    >>> c = constants("resnet", False, "h")
    >>> c("layer", 2, 1), c("stem"), constants("resnet", True, "h")("projection", 3)
    (h[2, 1], s, h)
    """
    shared, symbol = flag(function, "shared", shared), symbol_name(function, symbol)
    return functools.partial(constant, shared=shared, symbol=symbol)


def symbol_name(function: str, symbol) -> str:
    """The layer symbol's name: an identifier not used by another role."""
    if not isinstance(symbol, str) or not symbol.isidentifier() or symbol in _RESERVED:
        raise FamilyError(f"{function}: expected symbol to be a name not used by another role "
                          f"({', '.join(_RESERVED)}), got {symbol!r}.")
    return symbol


class Builder:
    """Adds nodes with their edges; returns each node's key."""

    def __init__(self, name: str):
        self.G = nx.DiGraph(name=name)

    def __call__(self, key: str, op: str, *preds: str, **attrs) -> str:
        self.G.add_node(key, op=op, **{k: v for k, v in attrs.items() if v is not None})
        self.G.add_edges_from((pred, key) for pred in preds)
        return key


def stem(add: Builder, u: str, value) -> str:
    """7x7 convolution (``value``), ReLU, 3x3 max pooling of stride 2 (constant 2)."""
    u = add("stem.conv", "conv", u, lipschitz=value, label="7x7 convolution, stride 2")
    u = add("stem.relu", "relu", u)
    return add("stem.pool", "maxpool", u, params=dict(MAXPOOL_STEM))


def classifier(add: Builder, u: str, value, relu: bool = False) -> str:
    """[ReLU,] global average pooling (bounded by 1), linear layer (``value``)."""
    if relu:
        u = add("head.relu", "relu", u)
    u = add("head.pool", "flatten", u,
            label="global average pooling: constant 1/sqrt(H*W), bounded by 1")
    return add("fc", "linear", u, lipschitz=value)


# --------------------------------------------------------------------------- closed forms


def depth_symbol(name: str = "n") -> sympy.Symbol:
    """The depth symbol :func:`bounds.closed_form` uses for a name: a positive integer symbol.

    Examples
    --------
    >>> from bounds import depth_symbol
    >>> n = depth_symbol()
    >>> n, n.is_integer, n.is_positive
    (n, True, True)
    """
    return sympy.Symbol(name, integer=True, positive=True)


def depth_value(function: str, value, name: str = "depth") -> sympy.Expr:
    """An int >= 1 as a SymPy Integer, or a symbolic depth (a string becomes
    :func:`depth_symbol`); a SymPy expression is refused only if provably not a positive
    integer."""
    if isinstance(value, str):
        if not value.isidentifier():
            raise FamilyError(f"{function}: expected {name} to be a symbol name, got "
                              f"{value!r}.")
        return depth_symbol(value)
    if isinstance(value, sympy.Expr) and not value.is_Number:
        if value.is_positive is False or value.is_integer is False:
            raise FamilyError(f"{function}: expected {name} to be a positive integer, got "
                              f"{value!r}.")
        return value
    return sympy.Integer(integer(function, name, int(value) if isinstance(
        value, sympy.Integer) else value))


def depth_values(function: str, value) -> tuple[sympy.Expr, ...]:
    """Stage or block sizes: a tuple of :func:`depth_value`, or one of them."""
    if isinstance(value, tuple | list):
        if not value:
            raise FamilyError(f"{function}: expected depth to be a non-empty tuple, got "
                              f"{value!r}.")
        return tuple(depth_value(function, item) for item in value)
    return (depth_value(function, value),)


def product(factor, index: sympy.Symbol, start, end, *, shared: bool) -> sympy.Expr:
    r""":math:`\prod_{i=start}^{end} factor(i)`: a power when shared, else a Product."""
    if shared:
        count = end - start + 1
        return sympy.Mul(*(arg**count for arg in sympy.Mul.make_args(factor(index))))
    if (end - start).is_Integer:
        return sympy.Mul(*(factor(start + i) for i in range(int(end - start) + 1)))
    return sympy.Product(factor(index), (index, start, end))


#: the bound variables of the closed forms' products (layer and block numbers)
LAYER = sympy.Symbol("l", integer=True, positive=True)
BLOCK = sympy.Symbol("b", integer=True, positive=True)


def closed_form_function(family: str):
    """Decorator for a family's closed form ``form(depth, *, shared, symbol, **options)``.

    The wrapped function checks ``shared`` and ``symbol`` and refuses an option the form
    does not take (:class:`FamilyError`, never a bare ``TypeError``); with ``shared`` it
    gathers powers of one base, ``(1 + h^2)^{n_1} (1 + h^2)^{n_2} -> (1 + h^2)^{n_1+n_2}``.
    """
    def decorate(form):
        signature = inspect.signature(form)

        @functools.wraps(form)
        def wrapper(depth="n", **options):
            where = f"closed_form({family!r})"
            shared = flag(where, "shared", options.pop("shared", False))
            symbol = symbol_name(where, options.pop("symbol", "h"))
            try:
                signature.bind(depth, shared=shared, symbol=symbol, **options)
            except TypeError as err:
                raise FamilyError(f"{where}: {err}.") from None
            result = form(depth, shared=shared, symbol=symbol, **options)
            return sympy.powsimp(result, combine="exp") if shared else result
        return wrapper
    return decorate
