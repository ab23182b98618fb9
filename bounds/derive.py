r"""Derivation of a Lipschitz bound, and hence a Fisher bound, from an architecture graph.

Every node value is a function of the one network input :math:`x`; :math:`L(v)` bounds the
Lipschitz constant of :math:`x \mapsto v(x)`. In topological order (AutoLip, Scaman and
Virmaux 2018):

.. math::

    L(\text{input}) = 1, \qquad L(\text{constant}) = 0, \qquad
    L(v) = c_v\, L(u) \;\; (v \text{ has one predecessor } u,\ :func:`theory.compose_rule`),

    L(\text{add}) = \sum_i L(u_i) \;\; (:func:`theory.sum_rule`), \qquad
    L(\text{concat}) = \Bigl(\sum_i L(u_i)^2\Bigr)^{1/2} \;\; (:func:`theory.concat_rule`),

with :math:`c_v` from :func:`bounds.node_lipschitz`. A node fed only by constants does not
depend on :math:`x`, so its :math:`L` is 0 whatever its constant. The value at the
``output`` node bounds :math:`\operatorname{Lip}(f)` of the logits, and with the softmax
curvature :math:`\lambda_{\max}(\Sigma_p) \le 1/2` (:func:`theory.softmax_curvature_bound`)

.. math::

    \lambda_{\max}(F(x)) \le \tfrac12 \operatorname{Lip}(f)^2 \quad\text{for every } x.

When the node constants bound local Jacobian norms at one input, the same propagation
bounds :math:`\|J(x)\|_2` at that input (chain rule), and :math:`\kappa(p)\|J(x)\|_2^2`
bounds :math:`\lambda_{\max}(F(x))` there.

:func:`derive` works in SymPy and keeps closed forms compact: predecessors are combined
two at a time with their common factor pulled out (the rules are positively homogeneous),
so residual blocks come out as :math:`L(u)(1 + b)` and dense blocks as
:math:`L(u)\prod_l\sqrt{1 + h_l^2}`, never expanded.
:func:`propagate` is the same recursion in floats for large graphs and repeated calls.

References
----------
Scaman and Virmaux, "Lipschitz regularity of deep neural networks: analysis and efficient
estimation", NeurIPS 2018, arXiv:1805.10965.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Mapping
from typing import NamedTuple

import networkx as nx
import sympy

import theory
from bounds.errors import UnboundSymbolError
from bounds.schema import OPS, _freeze, _theory_constant, node_lipschitz, parse_constant, \
    validate

__all__ = ["Bound", "EvaluatedBound", "derive", "propagate"]


class EvaluatedBound(NamedTuple):
    """A bound at numeric values of its symbols.

    Attributes
    ----------
    lipschitz : float
        Bound on the Lipschitz constant of the logits.
    fisher : float
        Bound :math:`\\tfrac12 L^2` on :math:`\\lambda_{\\max}(F(x))`.
    """

    lipschitz: float
    fisher: float


def _free_symbols(expr: sympy.Expr) -> tuple:
    """Free symbols, with ``h[1]`` standing for itself (the label ``h`` is not a symbol)."""
    indexed = expr.atoms(sympy.Indexed)
    labels = {item.base.label for item in indexed}
    atoms = {s for s in expr.free_symbols if s not in labels or s in indexed}
    return tuple(sorted(atoms, key=sympy.default_sort_key))


def _value_map(values, function: str) -> dict[str, object]:
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise UnboundSymbolError(
            f"{function}: expected a mapping from symbols to numbers, got {values!r}.")
    return {str(key): value for key, value in values.items()}


class Bound:
    r"""A Lipschitz bound on the logits and the Fisher bound it implies.

    Returned by :func:`derive`; also built directly from an expression.

    Parameters
    ----------
    lipschitz : sympy.Expr or number
        :math:`L`, a bound on the Lipschitz constant of input :math:`\to` logits.
    certified : bool, default True
        False when some constant in :math:`L` is an estimate rather than an upper bound.
    node_constants : dict, optional
        Node -> :math:`L(\text{node})` for the graph it came from.
    name : str, optional
        The architecture's name.

    Attributes
    ----------
    lipschitz : sympy.Expr
    fisher : sympy.Expr
        :math:`L^2/2`, bounding :math:`\lambda_{\max}(F(x))` for every input.
    symbols : tuple
        The free symbols of :math:`L`, sorted (indexed constants such as ``h[1]`` count as
        one symbol each).
    certified : bool
    node_constants : dict
    name : str or None

    Examples
    --------
    >>> import sympy
    >>> from bounds import Bound
    >>> h = sympy.Symbol("h", positive=True)
    >>> b = Bound(2 * h)
    >>> b.fisher
    2*h**2
    >>> b.evaluate({"h": 1.5})
    EvaluatedBound(lipschitz=3.0, fisher=4.5)
    """

    def __init__(self, lipschitz, *, certified: bool = True, node_constants=None,
                 name: str | None = None):
        self.lipschitz = sympy.sympify(lipschitz)
        self.certified = bool(certified)
        self.node_constants = dict(node_constants or {})
        self.name = name

    @property
    def fisher(self) -> sympy.Expr:
        r""":math:`\tfrac12 L^2`, the Fisher bound for every input (softmax curvature 1/2)."""
        return self.lipschitz**2 / 2

    @property
    def symbols(self) -> tuple:
        """The free symbols of the bound, sorted."""
        return _free_symbols(self.lipschitz)

    def fisher_at(self, p) -> sympy.Expr:
        r"""The Fisher bound :math:`\kappa(p)\, L^2` at a known output distribution ``p``.

        :math:`\kappa(p) = \min(1/2, \max_i p_i, 1 - \|p\|^2)` bounds
        :math:`\lambda_{\max}(\operatorname{diag} p - pp^\top)`
        (:func:`theory.softmax_curvature_bound`), so at an input whose softmax output is
        ``p``, :math:`\lambda_{\max}(F) \le \kappa(p)\, \|J\|_2^2 \le \kappa(p) L^2`.

        Parameters
        ----------
        p : sequence of numbers or SymPy expressions
            The class probabilities.

        Returns
        -------
        sympy.Expr

        Examples
        --------
        >>> import sympy
        >>> from bounds import Bound
        >>> Bound(2).fisher_at([sympy.Rational(9, 10), sympy.Rational(1, 10)])
        18/25
        """
        return theory.softmax_curvature_bound(p) * self.lipschitz**2

    def evaluate(self, values=None) -> EvaluatedBound:
        """The bound at numeric values of its symbols.

        Parameters
        ----------
        values : mapping, optional
            Symbol (or its name, e.g. ``"h"`` or ``"h[1]"``) -> number. Extra entries are
            ignored, so one mapping may serve several bounds.

        Returns
        -------
        EvaluatedBound
            ``(lipschitz, fisher)`` as floats.

        Raises
        ------
        UnboundSymbolError
            If some symbol has no value; the message lists them.

        Examples
        --------
        >>> from bounds import derive, vgg
        >>> bound = derive(vgg(2, shared=True))
        >>> bound.evaluate({"h": 3})
        EvaluatedBound(lipschitz=9.0, fisher=40.5)
        >>> bound.evaluate()
        Traceback (most recent call last):
        ...
        bounds.errors.UnboundSymbolError: Bound.evaluate: no value for h.
        """
        mapping = _value_map(values, "Bound.evaluate")
        missing = [str(s) for s in self.symbols if str(s) not in mapping]
        if missing:
            raise UnboundSymbolError(f"Bound.evaluate: no value for {', '.join(missing)}.")
        subs = {s: sympy.sympify(mapping[str(s)]) for s in self.symbols}
        lipschitz = float(sympy.N(self.lipschitz.xreplace(subs), 30))
        return EvaluatedBound(lipschitz, lipschitz**2 / 2)

    def latex(self) -> str:
        r"""LaTeX of the Lipschitz bound, e.g. ``h^{2}``; see also :meth:`_repr_latex_`.

        Examples
        --------
        >>> from bounds import derive, vgg
        >>> derive(vgg(2, shared=True)).latex()
        'h^{2}'
        """
        return sympy.latex(self.lipschitz)

    def _repr_latex_(self) -> str:
        return (r"$\operatorname{Lip}(f) \le " + sympy.latex(self.lipschitz)
                + r", \quad \lambda_{\max}(F(x)) \le " + sympy.latex(self.fisher) + "$")

    def __str__(self) -> str:
        status = "certified" if self.certified else "not certified (some constants estimated)"
        title = f"Bound for {self.name}" if self.name else "Bound"
        return (f"{title}, {status}\nLipschitz constant of the logits, Lip(f) <=\n"
                f"{sympy.pretty(self.lipschitz)}\nFisher spectral norm, lambda_max(F(x)) "
                f"<= Lip(f)^2/2 =\n{sympy.pretty(self.fisher)}")

    def __repr__(self) -> str:
        return f"Bound(lipschitz={self.lipschitz}, certified={self.certified})"


def _ordered_predecessors(G, node, position) -> list:
    return sorted(G.predecessors(node), key=position.__getitem__)


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


def _combine(rule, a: sympy.Expr, b: sympy.Expr) -> sympy.Expr:
    """``rule(a, b)`` with the common factor of ``a`` and ``b`` pulled out.

    The sum and concatenation rules are positively homogeneous,
    ``rule(c a', c b') = c rule(a', b')`` for ``c >= 0``, so this is the rule's value
    written as a product (no expansion): residual blocks come out as ``L(u) (1 + b)``.
    """
    if a == 0 or b == 0:
        return rule(a, b)
    common = _common_factor(a, b)
    return common * rule(a / common, b / common)


def derive(G) -> Bound:
    r"""Derive the Lipschitz bound of input -> logits and the Fisher bound of a graph.

    Parameters
    ----------
    G : networkx.DiGraph
        An architecture graph (validated first).

    Returns
    -------
    Bound
        ``.lipschitz`` :math:`L` (SymPy), ``.fisher`` :math:`L^2/2`, ``.node_constants``
        (node -> :math:`L(\text{node})`), ``.certified`` (False if any node has
        ``certified=False``). Certified upper bound whenever every node constant is one.

    Raises
    ------
    GraphValidationError
        If ``G`` breaks the schema.

    Notes
    -----
    The rules are those of the module docstring: composition multiplies
    (:func:`theory.compose_rule`), ``add`` sums (:func:`theory.sum_rule`), ``concat`` takes
    the root-sum-square (:func:`theory.concat_rule`). Predecessors are combined two at a
    time in topological order; since :math:`\mathrm{sum}(a, b, c) = \mathrm{sum}(
    \mathrm{sum}(a, b), c)` and :math:`\sqrt{\sqrt{a^2+b^2}^2 + c^2} = \sqrt{a^2+b^2+c^2}`,
    the result is the rule applied to all predecessors at once. Each pair is written as
    :math:`c \cdot \mathrm{rule}(a/c, b/c)` with :math:`c` a common factor of
    :math:`a` and :math:`b` (the rules are positively homogeneous), which keeps products
    such as :math:`\prod_b (1 + \beta_b)` unexpanded. Cost: one SymPy operation
    per edge; use :func:`propagate` for numbers.

    References
    ----------
    Scaman and Virmaux, NeurIPS 2018, arXiv:1805.10965.

    Examples
    --------
    A residual block :math:`x + W_2\,\mathrm{relu}(W_1 x)`:

    >>> import networkx as nx
    >>> from bounds import derive
    >>> G = nx.DiGraph([("x", "w1"), ("w1", "act"), ("act", "w2"), ("w2", "sum"),
    ...                 ("x", "sum"), ("sum", "y")])
    >>> nx.set_node_attributes(G, {"x": "input", "w1": "linear", "act": "relu",
    ...     "w2": "linear", "sum": "add", "y": "output"}, "op")
    >>> G.nodes["w1"]["lipschitz"], G.nodes["w2"]["lipschitz"] = "a", "b"
    >>> bound = derive(G)
    >>> bound.lipschitz, bound.fisher
    (a*b + 1, (a*b + 1)**2/2)
    """
    validate(G)
    order = list(nx.topological_sort(G))
    position = {node: i for i, node in enumerate(order)}
    values: dict = {}
    for node in order:
        op = G.nodes[node]["op"]
        kind = OPS[op].kind
        preds = [values[u] for u in _ordered_predecessors(G, node, position)]
        if op == "input":
            values[node] = sympy.Integer(1)
        elif op == "constant":
            values[node] = sympy.Integer(0)
        elif kind == "sum":
            values[node] = functools.reduce(
                lambda a, b: _combine(theory.sum_rule, a, b), preds)
        elif kind == "concatenation":
            values[node] = functools.reduce(
                lambda a, b: _combine(theory.concat_rule, a, b), preds)
        elif preds[0] == 0:
            values[node] = sympy.Integer(0)
        else:
            values[node] = theory.compose_rule(node_lipschitz(G, node), preds[0])
    output = next(node for node in order if G.nodes[node]["op"] == "output")
    certified = all(data.get("certified", True) for _, data in G.nodes(data=True))
    return Bound(values[output], certified=certified, node_constants=values,
                 name=G.graph.get("name"))


# --------------------------------------------------------------------------- floats


@functools.lru_cache(maxsize=4096)
def _compiled(expr: sympy.Expr):
    """``(names, function)`` evaluating ``expr`` from floats with :mod:`math`."""
    symbols = _free_symbols(expr)
    function = sympy.lambdify(symbols, expr, modules="math", dummify=True)
    return tuple(str(s) for s in symbols), function


@functools.lru_cache(maxsize=1024)
def _theory_float(op: str, frozen_params: tuple) -> float:
    return float(_theory_constant(op, frozen_params))


def _float_constant(G, node, data, mapping) -> float:
    value = data.get("lipschitz")
    if value is None and data["op"] == "output":
        return 1.0
    if value is None:
        return _theory_float(data["op"], _freeze(data.get("params", {})))
    if isinstance(value, numbers.Real) and not isinstance(value, sympy.Basic):
        return float(value)
    expr = parse_constant(value) if isinstance(value, str) else value
    if expr.is_Number:
        return float(expr)
    names, function = _compiled(expr)
    missing = [name for name in names if name not in mapping]
    if missing:
        raise UnboundSymbolError(
            f"propagate: node {node!r} needs a value for {', '.join(missing)}.")
    return float(function(*(float(mapping[name]) for name in names)))


def propagate(G, values=None, *, check: bool = True) -> float:
    r"""The bound of :func:`derive`, computed in floats: :math:`L` of the logits.

    The same recursion as :func:`derive` with :func:`math.fsum` for ``add`` and
    :func:`math.hypot` for ``concat``; theory constants and symbolic node constants are
    compiled once and cached, so repeated calls (per-sample local bounds) cost one pass
    over the graph.

    Parameters
    ----------
    G : networkx.DiGraph
        An architecture graph.
    values : mapping, optional
        Symbol (or name) -> number for the symbolic node constants.
    check : bool, default True
        Validate ``G`` first. Pass False in a hot loop over a graph already validated.

    Returns
    -------
    float
        A bound on the Lipschitz constant of input -> logits (or, with local node
        constants, on the Jacobian norm at that input); ``derive(G).evaluate(values)
        .lipschitz`` up to rounding.

    Raises
    ------
    GraphValidationError
        If ``check`` and ``G`` breaks the schema.
    UnboundSymbolError
        If a node constant has a symbol without a value; the message names node and symbol.

    Examples
    --------
    >>> from bounds import propagate, densenet
    >>> round(propagate(densenet(3, shared=True), {"h": 1.0}), 12)
    2.828427124746
    """
    if check:
        validate(G)
    mapping = _value_map(values, "propagate")
    bound: dict = {}
    output = None
    for node in nx.topological_sort(G):
        data = G.nodes[node]
        op = data["op"]
        kind = OPS[op].kind
        preds = [bound[u] for u in G.predecessors(node)]
        if op == "input":
            bound[node] = 1.0
        elif op == "constant":
            bound[node] = 0.0
        elif kind == "sum":
            bound[node] = math.fsum(preds)
        elif kind == "concatenation":
            bound[node] = math.hypot(*preds)
        else:
            bound[node] = 0.0 if preds[0] == 0 else (
                _float_constant(G, node, data, mapping) * preds[0])
            if op == "output":
                output = node
    return bound[output]
