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
depend on :math:`x`, so its :math:`L` is 0 whatever its constant; and a node whose own
constant is 0 is a constant map, so everything after it is 0 too (:math:`0 \cdot \infty =
0`, see :mod:`bounds.evaluation`). The value at the ``output`` node bounds
:math:`\operatorname{Lip}(f)` of the logits, and with the softmax curvature
:math:`\lambda_{\max}(\Sigma_p) \le 1/2` (:func:`theory.softmax_curvature_bound`)

.. math::

    \lambda_{\max}(F(x)) \le \tfrac12 \operatorname{Lip}(f)^2 \quad\text{for every } x.

When the node constants bound local Jacobian norms at one input, the same propagation
bounds :math:`\|J(x)\|_2` at that input (chain rule), and :math:`\kappa(p)\|J(x)\|_2^2`
bounds :math:`\lambda_{\max}(F(x))` there.

:func:`derive` writes :math:`L` in SymPy in time linear in the graph: every value is kept
as a chain of factors (its predecessor's value times its own constant) and multiplied
out once, at the end; a sum or concatenation of two values is written as their common
chain (the nearest shared ancestor in the chains) times the rule applied to what is left,
so residual blocks come out as :math:`L(u)(1 + b)` and dense blocks as
:math:`L(u)\prod_l\sqrt{1 + h_l^2}`, never expanded. :meth:`Bound.evaluate` and
:func:`propagate` compute the number from the node constants themselves with outward
rounding, so the float they return is never below the exact bound.

References
----------
Scaman and Virmaux, "Lipschitz regularity of deep neural networks: analysis and efficient
estimation", NeurIPS 2018, arXiv:1805.10965.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from fractions import Fraction
from typing import NamedTuple

import networkx as nx
import sympy
from mpmath import iv

import theory
from bounds import evaluation
from bounds.errors import UnboundSymbolError
from bounds.factored import Factors, free_symbols
from bounds.schema import OPS, _freeze, _theory_constant, node_lipschitz, validate
from bounds.validation import flag

__all__ = ["Bound", "EvaluatedBound", "derive", "propagate"]


class EvaluatedBound(NamedTuple):
    """A bound at numeric values of its symbols.

    Attributes
    ----------
    lipschitz : float
        Bound on the Lipschitz constant of the logits (rounded up).
    fisher : float
        Bound :math:`\\tfrac12 L^2` on :math:`\\lambda_{\\max}(F(x))` (rounded up).
    """

    lipschitz: float
    fisher: float


class _Step(NamedTuple):
    """One node of a derivation, for evaluating it again from the node constants."""

    node: str
    kind: str                 # "input", "zero", "sum", "concat" or "compose"
    preds: tuple              # positions of the predecessors in the plan
    constant: sympy.Expr | None


class Bound:
    r"""A Lipschitz bound on the logits and the Fisher bound it implies.

    Returned by :func:`derive`; also built directly from an expression.

    Parameters
    ----------
    lipschitz : sympy.Expr or number
        :math:`L`, a bound on the Lipschitz constant of input :math:`\to` logits.
    certified : bool, default True
        False when some constant in :math:`L` is an estimate rather than an upper bound.
    node_constants : mapping, optional
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
    node_constants : mapping
        Computed on first access of each node for a derived bound (the expression of
        every node of a long chain is quadratic in its length).
    name : str or None

    Notes
    -----
    For a graph with Float constants, :attr:`lipschitz` is SymPy's product of them,
    rounded to nearest (for display and algebra); the certified number is
    :meth:`evaluate`, which recomputes it from the node constants with outward rounding.

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
        self.node_constants = node_constants if isinstance(node_constants, Mapping) else \
            dict(node_constants or {})
        self.name = name
        self._plan: tuple[_Step, ...] | None = None

    @property
    def fisher(self) -> sympy.Expr:
        r""":math:`\tfrac12 L^2`, the Fisher bound for every input (softmax curvature 1/2)."""
        return self.lipschitz**2 / 2

    @property
    def symbols(self) -> tuple:
        """The free symbols of the bound, sorted."""
        return free_symbols(self.lipschitz)

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
        """The bound at numeric values of its symbols, rounded up.

        Parameters
        ----------
        values : mapping, optional
            Symbol (or its name, e.g. ``"h"`` or ``"h[1]"``) -> real number ``>= 0``
            (``inf`` allowed: no finite constant). Extra entries are ignored, so one
            mapping may serve several bounds.

        Returns
        -------
        EvaluatedBound
            ``(lipschitz, fisher)`` as floats, never below the exact values: a derived
            bound is recomputed from its node constants in interval arithmetic
            (:mod:`bounds.evaluation`), so a constant that is not a real number
            :math:`\\ge 0` at the values is caught at its node.

        Raises
        ------
        ArgumentError
            If ``values`` is not a mapping.
        UnboundSymbolError
            If some symbol has no value; the message lists them.
        InvalidValueError
            If a value is negative, NaN or not a number (naming the symbol), or a node
            constant is not a real number :math:`\\ge 0` at the values (naming the node,
            its constant and the value): ``h - 3`` at ``h = 1``, ``sqrt(h - 4)``.

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
        function = "Bound.evaluate"
        mapping = evaluation.symbol_values(function, values)
        expr = self.lipschitz if self._plan is not None else evaluation.substitute_depths(
            self.lipschitz, mapping)
        needed = self._needed() if self._plan is not None else free_symbols(expr)
        missing = [str(s) for s in needed if str(s) not in mapping]
        if missing:
            raise UnboundSymbolError(f"{function}: no value for {', '.join(missing)}.")
        with evaluation.precision():
            if self._plan is None:
                interval = evaluation.checked_enclosure(
                    expr, mapping, f"{function}: the bound {self.lipschitz}")
            else:
                interval = _run_plan(self._plan, mapping, function)[-1]
            high = iv.mpf(interval.b)
            return EvaluatedBound(evaluation.upper_float(high),
                                  evaluation.upper_float(high * high / 2))

    def _needed(self) -> tuple:
        needed = set().union(*(free_symbols(step.constant) for step in self._plan
                               if step.constant is not None))
        return tuple(sorted(needed, key=sympy.default_sort_key))

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


def _run_plan(plan, mapping, function: str) -> list:
    """Interval AutoLip over a derivation's steps (one interval per step); a node constant
    that is not a real number >= 0 at ``mapping`` is refused naming the node."""
    values = []
    for step in plan:
        preds = [values[i] for i in step.preds]
        if step.kind == "input":
            value = iv.mpf(1)
        elif step.kind == "zero" or (step.kind == "compose" and _zero(preds[0])):
            value = iv.mpf(0)
        elif step.kind == "sum":
            value = functools.reduce(lambda a, b: a + b, preds)
        elif step.kind == "concat":
            value = iv.sqrt(functools.reduce(lambda a, b: a + b, (p * p for p in preds)))
        else:
            constant = evaluation.checked_enclosure(
                step.constant, mapping, f"{function}: node {step.node!r} (constant "
                                        f"{step.constant})")
            value = iv.mpf(0) if _zero(constant) else constant * preds[0]
        values.append(value)
    return values


def _zero(interval) -> bool:
    return interval.a == 0 and interval.b == 0


def _steps(G, order):
    """The derivation plan: one step per node, the output last."""
    position, plan = {}, []
    output = next(node for node in order if G.nodes[node]["op"] == "output")
    for node in [n for n in order if n != output] + [output]:
        op = G.nodes[node]["op"]
        kind = OPS[op].kind
        preds = tuple(sorted(position[u] for u in G.predecessors(node)))
        if op == "input":
            step = _Step(node, "input", preds, None)
        elif op == "constant":
            step = _Step(node, "zero", preds, None)
        elif kind in ("sum", "concatenation"):
            step = _Step(node, "sum" if kind == "sum" else "concat", preds, None)
        else:
            step = _Step(node, "compose", preds, node_lipschitz(G, node))
        position[node] = len(plan)
        plan.append(step)
    return tuple(plan)


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
        (node -> :math:`L(\text{node})`, computed on access), ``.certified`` (False if any
        node has ``certified=False``). Certified upper bound whenever every node constant
        is one. For a graph whose constants are all numbers, one of them a Float,
        :math:`L` is the Float of :func:`propagate` (rounded up), not a product rounded
        by SymPy.

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
    :math:`c \cdot \mathrm{rule}(a/c, b/c)` with :math:`c` their common chain of factors
    and any further common factor of what is left (the rules are positively homogeneous),
    which keeps products such as :math:`\prod_b (1 + \beta_b)` unexpanded.

    Cost: linear in the nodes and edges plus the walks from the two sides of a merge to
    their nearest shared ancestor (the length of the branches), and one SymPy product of
    the output's factors; no simplification. A 5,000-node chain takes about a second.

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
    plan = _steps(G, order)
    certified = all(data.get("certified", True) for _, data in G.nodes(data=True))
    constants = [step.constant for step in plan if step.constant is not None]
    if not any(c.free_symbols for c in constants) and any(c.has(sympy.Float)
                                                           for c in constants):
        with evaluation.precision():
            intervals = _run_plan(plan, {}, "derive")
        node_constants = {step.node: sympy.Float(evaluation.upper_float(interval))
                          for step, interval in zip(plan, intervals)}
        lipschitz = node_constants[plan[-1].node]
    else:
        factors = Factors()
        values = _factored(plan, factors)
        node_constants = factors.expressions({step.node: value
                                              for step, value in zip(plan, values)})
        lipschitz = node_constants[plan[-1].node]
    bound = Bound(lipschitz, certified=certified, node_constants=node_constants,
                  name=G.graph.get("name"))
    bound._plan = plan
    return bound


def _factored(plan, factors: Factors) -> list:
    values = []
    for step in plan:
        preds = [values[i] for i in step.preds]
        if step.kind == "input":
            values.append(factors.one)
        elif step.kind == "zero":
            values.append(factors.zero)
        elif step.kind == "sum":
            values.append(functools.reduce(
                lambda a, b: factors.merge(theory.sum_rule, a, b), preds))
        elif step.kind == "concat":
            values.append(functools.reduce(
                lambda a, b: factors.merge(theory.concat_rule, a, b), preds))
        else:
            values.append(factors.times(preds[0], step.constant))
    return values


# --------------------------------------------------------------------------- floats


def _times_up(a: float, b: float) -> float:
    """``a * b`` rounded up (exact products stay exact); 0 times anything is 0."""
    if a == 0 or b == 0:
        return 0.0
    product = a * b
    if math.isfinite(product) and Fraction(a) * Fraction(b) > Fraction(product):
        product = math.nextafter(product, math.inf)
    return product


def _sum_up(terms: list[float]) -> float:
    total = math.fsum(terms)
    if math.isfinite(total) and math.fsum([*terms, -total]) > 0:
        total = math.nextafter(total, math.inf)
    return total


def _hypot_up(terms: list[float]) -> float:
    root = math.hypot(*terms)
    if math.isfinite(root):
        exact = sum(Fraction(t) ** 2 for t in terms)
        while Fraction(root) ** 2 < exact:
            root = math.nextafter(root, math.inf)
    return root


@functools.lru_cache(maxsize=1024)
def _theory_float(op: str, frozen_params: tuple) -> float:
    return evaluation.upper_value(_theory_constant(op, frozen_params), {}, f"op {op!r}")


def _float_constant(node, data, mapping) -> float:
    value = data.get("lipschitz")
    if value is None and data["op"] == "output":
        return 1.0
    if value is None:
        return _theory_float(data["op"], _freeze(data.get("params", {})))
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value) if float(value) >= value else math.nextafter(float(value),
                                                                           math.inf)
    expr = _constant_expr(value)
    missing = [str(s) for s in free_symbols(expr) if str(s) not in mapping]
    if missing:
        raise UnboundSymbolError(
            f"propagate: node {node!r} needs a value for {', '.join(missing)}.")
    return evaluation.upper_value(expr, mapping, f"propagate: node {node!r} (constant "
                                                 f"{expr})")


@functools.lru_cache(maxsize=65536)
def _parsed(text: str) -> sympy.Expr:
    from bounds.schema import parse_constant
    return parse_constant(text)


def _constant_expr(value) -> sympy.Expr:
    return _parsed(value) if isinstance(value, str) else sympy.sympify(value)


def propagate(G, values=None, *, check: bool = True) -> float:
    r"""The bound of :func:`derive`, computed in floats: :math:`L` of the logits.

    The same recursion as :func:`derive` in double precision, every operation rounded
    up (:func:`math.fsum` for ``add``, :func:`math.hypot` for ``concat``, each checked
    exactly against the true result and moved up one unit in the last place when below
    it), so the float is never below the exact bound of the node constants; theory
    constants are computed once and cached, symbolic node constants are evaluated at
    ``values`` in interval arithmetic (:mod:`bounds.evaluation`). Repeated calls
    (per-sample local bounds) cost one pass over the graph.

    Parameters
    ----------
    G : networkx.DiGraph
        An architecture graph.
    values : mapping, optional
        Symbol (or name) -> real number :math:`\ge 0` for the symbolic node constants.
    check : bool, default True
        Validate ``G`` first. Pass False in a hot loop over a graph already validated.

    Returns
    -------
    float
        A bound on the Lipschitz constant of input -> logits (or, with local node
        constants, on the Jacobian norm at that input); at least
        ``derive(G).evaluate(values).lipschitz`` minus one rounding.

    Raises
    ------
    GraphValidationError
        If ``check`` and ``G`` breaks the schema.
    ArgumentError
        If ``values`` is not a mapping.
    UnboundSymbolError
        If a node constant has a symbol without a value; the message names node and symbol.
    InvalidValueError
        If a value is not a real number :math:`\ge 0`, or a node constant is not one at
        the values (the message names the node, its constant and the value).

    Examples
    --------
    >>> from bounds import propagate, densenet
    >>> round(propagate(densenet(3, shared=True), {"h": 1.0}), 12)
    2.828427124746
    """
    flag("propagate", "check", check, error=TypeError)
    if check:
        validate(G)
    mapping = evaluation.symbol_values("propagate", values)
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
            bound[node] = _sum_up(preds)
        elif kind == "concatenation":
            bound[node] = _hypot_up(preds)
        else:
            bound[node] = 0.0 if preds[0] == 0 else _times_up(
                _float_constant(node, data, mapping), preds[0])
            if op == "output":
                output = node
    return bound[output]
