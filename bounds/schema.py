r"""The architecture-graph schema: the op vocabulary and the validation of a graph.

An architecture is a :class:`networkx.DiGraph` ``G`` with one ``input`` node and one
``output`` node (the logits). Every node carries an ``op`` from :data:`OPS`; the weighted
ops carry their Lipschitz constant in the ``lipschitz`` attribute (a SymPy expression, a
number, or a string that SymPy reads with positive symbols). The vocabulary, the arity of
every op and where its constant comes from are listed in ``docs/internals.md``; this module
is their executable form.

``L(v)`` denotes a bound on the Lipschitz constant of ``x -> v(x)`` (``x`` the network
input). The constant of one node's own map, before propagation, is :func:`node_lipschitz`;
the propagation itself lives in :mod:`bounds.derive`.

References
----------
Scaman and Virmaux, "Lipschitz regularity of deep neural networks: analysis and efficient
estimation", NeurIPS 2018, arXiv:1805.10965 (the AutoLip calculus on computation graphs).
"""

from __future__ import annotations

import functools
import keyword
import math
import numbers
import re
from dataclasses import dataclass
from types import MappingProxyType

import networkx as nx
import sympy

import theory
from bounds import evaluation
from bounds.errors import GraphValidationError, InvalidValueError

__all__ = ["OpSpec", "OPS", "KINDS", "parse_constant", "node_lipschitz", "validate"]


@dataclass(frozen=True)
class OpSpec:
    """What the schema knows about one op.

    Attributes
    ----------
    kind : str
        One of :data:`KINDS`.
    min_inputs, max_inputs : int or None
        Allowed number of predecessors; ``max_inputs`` is None for "no upper limit".
    """

    kind: str
    min_inputs: int
    max_inputs: int | None

    @property
    def needs_lipschitz(self) -> bool:
        """True for the weighted ops, whose constant must be given on the node."""
        return self.kind == "weighted"

    @property
    def takes_lipschitz(self) -> bool:
        """True for the one-input ops, where a ``lipschitz`` attribute is the node constant."""
        return self.min_inputs == 1 and self.max_inputs == 1


#: The kinds of op, in the order of the table in ``docs/internals.md``.
KINDS = ("structural", "weighted", "activation", "pooling", "unit", "sum", "concatenation")

_WEIGHTED = ("linear", "conv", "batchnorm", "layernorm", "attention", "scale", "embedding",
             "function")
_UNIT = ("identity", "dropout", "flatten", "reshape", "permute", "select")
#: every elementwise activation of theory.ACTIVATIONS (the identity-like ones are "unit")
_ACTIVATIONS = tuple(name for name in theory.ACTIVATIONS if name not in _UNIT)
_POOLING = ("maxpool", "avgpool", "adaptive_avgpool")

#: The op vocabulary: op name -> :class:`OpSpec` (read-only).
OPS = MappingProxyType({
    "input": OpSpec("structural", 0, 0),
    "output": OpSpec("structural", 1, 1),
    "constant": OpSpec("structural", 0, 0),
    **{op: OpSpec("weighted", 1, 1) for op in _WEIGHTED},
    **{op: OpSpec("activation", 1, 1) for op in _ACTIVATIONS},
    **{op: OpSpec("pooling", 1, 1) for op in _POOLING},
    **{op: OpSpec("unit", 1, 1) for op in _UNIT},
    "add": OpSpec("sum", 2, None),
    "concat": OpSpec("concatenation", 2, None),
})


# --------------------------------------------------------------------------- constants

_ALLOWED_CHARS = re.compile(r"[A-Za-z0-9_+\-*/^().,\[\]\s]*")
_IDENTIFIER = re.compile(r"(?<![0-9.])[A-Za-z_][A-Za-z0-9_]*")
_ATTRIBUTE = re.compile(r"\.\s*[A-Za-z_]")
_NAME = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*")
_INDEXED = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*\[\s*(\d+(?:\s*,\s*\d+)*)\s*\]\s*")
_FUNCTIONS = {name: getattr(sympy, name) for name in (
    "sqrt", "exp", "log", "Max", "Min", "Abs", "erf", "erfc", "tanh", "cosh", "sinh",
    "Rational", "Integer", "Float", "Product", "Sum", "floor", "ceiling")}
_CONSTANTS = {"pi": sympy.pi, "E": sympy.E, "oo": sympy.oo}
#: names that SymPy or Python would read as something other than a positive symbol
_RESERVED = {
    **dict.fromkeys(("nan", "NaN"), "NaN is not a constant"),
    **dict.fromkeys(("inf", "Inf", "infinity", "Infinity"), "write oo for an infinite "
                                                             "constant"),
    "zoo": "zoo is SymPy's complex infinity; a Lipschitz constant is real (write oo)",
    "I": "I is SymPy's imaginary unit; a Lipschitz constant is real",
    **dict.fromkeys(("Integer", "Float", "Rational", "Symbol"),
                    "this name is reserved for numbers; use it as a function, e.g. "
                    "Rational(1, 3)"),
}


def parse_constant(text: str) -> sympy.Expr:
    r"""Read a Lipschitz constant written as text; every symbol is created positive.

    Accepted are numbers, symbols, ``+ - * / ** ^``, the functions ``sqrt exp log Max Min
    Abs erf erfc tanh cosh sinh floor ceiling Rational Integer Float Product Sum``, the
    constants ``pi``, ``E`` (Euler's number) and ``oo`` (infinity: no finite constant),
    and indexed symbols ``h[1, 2]`` (an :class:`~sympy.IndexedBase` with
    ``positive=True``). Everything else, in particular attribute access and Python
    keywords, is refused before SymPy evaluates anything, so a graph file cannot run code.
    Names SymPy would read as something else are refused too: ``nan`` and ``NaN`` (NaN is
    not a constant), ``zoo`` and ``I`` (not real), ``inf``/``infinity`` (write ``oo``),
    and ``Integer``, ``Float``, ``Rational``, ``Symbol`` unless called. Any other bare name
    is a positive :class:`~sympy.Symbol`, even one SymPy would read as a function
    (``gamma``, ``beta``, ``N``, ``S``).

    Parameters
    ----------
    text : str
        The constant, as written by :func:`sympy.sstr` (or by hand).

    Returns
    -------
    sympy.Expr

    Raises
    ------
    GraphValidationError
        If the text uses anything outside the grammar above, names a reserved name, or
        does not parse.

    Examples
    --------
    >>> from bounds import parse_constant
    >>> c = parse_constant("sqrt(h_1**2 + 1)*gamma")
    >>> c, sorted(s.is_positive for s in c.free_symbols)
    (gamma*sqrt(h_1**2 + 1), [True, True])
    >>> parse_constant("h[2]*3/2")
    3*h[2]/2
    >>> parse_constant("nan")
    Traceback (most recent call last):
    ...
    bounds.errors.GraphValidationError: parse_constant: 'nan' in 'nan' is not allowed: NaN is not a constant.
    """
    if not isinstance(text, str):
        raise GraphValidationError(f"parse_constant: expected a string, got {text!r}.")
    return _parse(text)


def _symbol(name: str, text: str):
    if name in _RESERVED:
        raise GraphValidationError(f"parse_constant: {name!r} in {text!r} is not allowed: "
                                   f"{_RESERVED[name]}.")
    return _CONSTANTS.get(name) or sympy.Symbol(name, positive=True)


@functools.lru_cache(maxsize=65536)
def _parse(text: str) -> sympy.Expr:
    plain = _NAME.fullmatch(text)
    if plain and not keyword.iskeyword(plain.group(1)) and not plain.group(1).startswith("__"):
        return _symbol(plain.group(1), text)  # the common case, without the parser
    indexed = _INDEXED.fullmatch(text)
    if indexed and indexed.group(1) not in _RESERVED and indexed.group(1) not in _CONSTANTS:
        indices = tuple(int(i) for i in indexed.group(2).split(","))
        return sympy.IndexedBase(indexed.group(1), positive=True)[indices]
    if not _ALLOWED_CHARS.fullmatch(text) or _ATTRIBUTE.search(text) or not text.strip():
        raise GraphValidationError(
            f"parse_constant: expected an arithmetic expression, got {text!r}.")
    names: dict[str, object] = {}
    for match in _IDENTIFIER.finditer(text):
        name, rest = match.group(), text[match.end():].lstrip()
        if keyword.iskeyword(name) or name.startswith("__"):
            raise GraphValidationError(
                f"parse_constant: expected an arithmetic expression, got the name {name!r} "
                f"in {text!r}.")
        if rest.startswith("("):
            if name not in _FUNCTIONS:
                raise GraphValidationError(
                    f"parse_constant: unknown function {name!r} in {text!r}; known: "
                    f"{', '.join(sorted(_FUNCTIONS))}.")
            names[name] = _FUNCTIONS[name]
        elif rest.startswith("["):
            if name in _RESERVED or name in _CONSTANTS:
                raise GraphValidationError(f"parse_constant: {name!r} in {text!r} cannot "
                                           f"be indexed.")
            names[name] = sympy.IndexedBase(name, positive=True)
        else:
            names[name] = _symbol(name, text)
    try:
        from sympy.parsing.sympy_parser import (convert_xor, parse_expr,
                                                standard_transformations)
        value = parse_expr(text, local_dict=names, global_dict={"Integer": sympy.Integer,
                           "Float": sympy.Float, "Rational": sympy.Rational,
                           "Symbol": sympy.Symbol},
                           transformations=(*standard_transformations, convert_xor))
    except (SyntaxError, TypeError, ValueError, sympy.SympifyError) as err:
        raise GraphValidationError(f"parse_constant: cannot read {text!r}: {err}.") from err
    if not isinstance(value, sympy.Expr):
        raise GraphValidationError(f"parse_constant: expected an expression, got {text!r}.")
    return value


def _as_expr(G, node, value) -> sympy.Expr:
    """The ``lipschitz`` attribute of ``node`` as a checked SymPy expression."""
    where = f"validate: node {node!r} (op {G.nodes[node]['op']!r})"
    if isinstance(value, str):
        try:
            value = parse_constant(value)
        except GraphValidationError as err:
            raise GraphValidationError(f"{where}: {err}") from err
    elif isinstance(value, bool) or not isinstance(value, numbers.Real | sympy.Expr):
        raise GraphValidationError(
            f"{where}: expected 'lipschitz' to be a number, a SymPy expression or a string, "
            f"got {value!r}.")
    elif isinstance(value, numbers.Real) and not isinstance(value, sympy.Basic):
        if math.isnan(value) or value < 0:
            raise GraphValidationError(f"{where}: expected 'lipschitz' >= 0, got {value!r}.")
        return sympy.Integer(value) if isinstance(value, numbers.Integral) else sympy.Float(
            float(value))
    if value.has(sympy.nan, sympy.zoo) or value.is_extended_real is False or value.is_negative:
        raise GraphValidationError(f"{where}: expected 'lipschitz' >= 0, got {value!r}.")
    names = {str(s) for s in value.free_symbols} & (set(_RESERVED) | set(_CONSTANTS))
    if names:
        raise GraphValidationError(
            f"{where}: a symbol named {sorted(names)[0]!r} would be read back from a graph "
            f"file as SymPy's {sorted(names)[0]}; rename it.")
    if not value.free_symbols:
        try:
            evaluation.upper_value(value, {}, f"{where}: 'lipschitz' {value}")
        except InvalidValueError as err:
            raise GraphValidationError(f"{where}: expected 'lipschitz' >= 0, got {value}: "
                                       f"{str(err).split(': ', 2)[-1]}") from err
    return value


def _freeze(value):
    """JSON-like params as a hashable value (lists become tuples)."""
    if isinstance(value, dict):
        return tuple(sorted((key, _freeze(item)) for key, item in value.items()))
    if isinstance(value, list | tuple):
        return tuple(_freeze(item) for item in value)
    return value


@functools.lru_cache(maxsize=1024)
def _theory_constant(op: str, frozen_params: tuple) -> sympy.Expr:
    """The constant :mod:`theory` gives an activation, pooling or unit op."""
    params = dict(frozen_params)
    if op == "maxpool":
        # padding and ceil_mode add or remove windows on the same lattice (theory.pooling)
        for key in ("padding", "ceil_mode", "return_indices"):
            params.pop(key, None)
        return sympy.sympify(theory.maxpool_lipschitz(**params))
    if op == "avgpool":
        uncovered = {key: params[key] for key, default in _AVGPOOL_DEFAULTS.items()
                     if key in params and params[key] != default}
        if uncovered:
            raise ValueError(f"avgpool with {uncovered} changes the divisor near the border; "
                             f"give its constant as a 'lipschitz' attribute")
        for key in ("padding", *_AVGPOOL_DEFAULTS):
            params.pop(key, None)
        return sympy.sympify(theory.avgpool_lipschitz(**params))
    if op == "adaptive_avgpool":
        return sympy.sympify(theory.adaptive_avgpool_lipschitz(**params))
    return sympy.sympify(theory.activation_lipschitz(op, **params))


# zero padding counted in the divisor does not increase the bound of theory.avgpool_lipschitz
_AVGPOOL_DEFAULTS = {"count_include_pad": True, "ceil_mode": False, "divisor_override": None}

#: the pooling params that theory reads as sizes (one entry per spatial dimension)
_POOLING_SIZES = ("kernel_size", "stride", "dilation", "output_size", "input_size")


def _check_pooling_dimension(node, op: str, params: dict) -> None:
    r"""Refuse pooling sizes that are all ints when ``params`` has no ``ndim``.

    An int repeats over every spatial dimension, so ``{"kernel_size": 3, "stride": 2}``
    does not say whether the pooling is 1-D, 2-D or 3-D, and the constant depends on it
    (:mod:`theory.pooling`): 2 for ``MaxPool2d(3, 2)`` but :math:`\sqrt 2` read as 1-D.
    """
    sizes = {key: params[key] for key in _POOLING_SIZES if key in params}
    if sizes and "ndim" not in params and not any(
            isinstance(value, list | tuple) for value in sizes.values()):
        raise GraphValidationError(
            f"validate: node {node!r} (op {op!r}) expected "
            f"{'/'.join(sizes)} as lists with one entry per spatial dimension or "
            f"params['ndim'], got {params!r}; write e.g. {next(iter(sizes))}=[3, 3] for a "
            f"2-D pooling, or add 'ndim': 2.")


def node_lipschitz(G, node) -> sympy.Expr:
    r"""The Lipschitz constant of one node's own map, before propagation.

    ``input`` and ``output`` give 1 (``output`` may carry a ``lipschitz`` factor),
    ``constant`` gives 0, the weighted ops give their ``lipschitz`` attribute, the
    activation, pooling and unit ops give the constant of :mod:`theory` for their ``params``
    unless a ``lipschitz`` attribute overrides it (a local derivative bound, say). ``add``
    and ``concat`` have no constant of their own; they return None.

    Parameters
    ----------
    G : networkx.DiGraph
        An architecture graph (not validated here).
    node : str
        A node of ``G``.

    Returns
    -------
    sympy.Expr or None

    Raises
    ------
    GraphValidationError
        If the node's op is unknown, its constant is missing, unreadable or provably
        negative, :mod:`theory` rejects its ``params``, or it is a pooling node without a
        ``lipschitz`` attribute whose ``kernel_size``/``stride``/``dilation`` are all ints
        and whose ``params`` have no ``ndim`` (an int does not say how many spatial
        dimensions it repeats over, and a wrong guess can under-estimate the constant).

    Examples
    --------
    >>> import networkx as nx
    >>> from bounds import node_lipschitz
    >>> G = nx.DiGraph()
    >>> G.add_node("fc", op="linear", lipschitz="2*w")
    >>> G.add_node("act", op="relu")
    >>> node_lipschitz(G, "fc"), node_lipschitz(G, "act")
    (2*w, 1)
    """
    data = G.nodes[node]
    op = data.get("op")
    spec = OPS.get(op)
    if spec is None:
        raise GraphValidationError(f"validate: node {node!r} has unknown op {op!r}; known ops: "
                                   f"{', '.join(sorted(OPS))}.")
    if "lipschitz" in data and not spec.takes_lipschitz:
        raise GraphValidationError(
            f"validate: node {node!r} (op {op!r}) takes no 'lipschitz' attribute; its value "
            f"follows from the schema.")
    if "lipschitz" in data:
        return _as_expr(G, node, data["lipschitz"])
    if spec.needs_lipschitz:
        raise GraphValidationError(
            f"validate: node {node!r} (op {op!r}) needs a 'lipschitz' attribute.")
    if op in ("input", "output"):
        return sympy.Integer(1)
    if op == "constant":
        return sympy.Integer(0)
    if spec.kind in ("sum", "concatenation"):
        return None
    params = data.get("params", {})
    if not isinstance(params, dict):
        raise GraphValidationError(
            f"validate: node {node!r} (op {op!r}) expected 'params' to be a dict, got "
            f"{params!r}.")
    if spec.kind == "pooling":
        _check_pooling_dimension(node, op, params)
    try:
        return _theory_constant(op, _freeze(params))
    except (TypeError, ValueError, theory.TheoryError) as err:
        raise GraphValidationError(
            f"validate: node {node!r} (op {op!r}) has params {params!r} that theory rejects: "
            f"{err}") from err


# --------------------------------------------------------------------------- validation


def _names(nodes) -> str:
    return ", ".join(repr(node) for node in nodes)


def _check_ops(G) -> None:
    for node, data in G.nodes(data=True):
        if not isinstance(node, str):
            raise GraphValidationError(
                f"validate: node {node!r} has a key of type {type(node).__name__}; node keys "
                f"must be strings.")
        if "op" not in data:
            raise GraphValidationError(f"validate: node {node!r} has no 'op' attribute.")
        if data["op"] not in OPS:
            raise GraphValidationError(
                f"validate: node {node!r} has unknown op {data['op']!r}; known ops: "
                f"{', '.join(sorted(OPS))}.")


def _the_node(G, op: str) -> str:
    nodes = [node for node, kind in G.nodes(data="op") if kind == op]
    if len(nodes) != 1:
        listed = f": {_names(nodes)}" if nodes else ""
        raise GraphValidationError(
            f"validate: expected exactly one {op!r} node, got {len(nodes)}{listed}.")
    return nodes[0]


def _check_arity(G) -> None:
    for node, op in G.nodes(data="op"):
        spec, got = OPS[op], G.in_degree(node)
        if spec.max_inputs == 0 and got:
            expected = "no predecessors"
        elif spec.max_inputs == 1 and got != 1:
            expected = "exactly 1 predecessor"
        elif spec.max_inputs is None and got < spec.min_inputs:
            expected = f"at least {spec.min_inputs} predecessors"
        else:
            continue
        raise GraphValidationError(
            f"validate: node {node!r} (op {op!r}) expected {expected}, got {got}.")


def _check_attributes(G) -> None:
    for node, data in G.nodes(data=True):
        node_lipschitz(G, node)
        if not isinstance(data.get("certified", True), bool):
            raise GraphValidationError(
                f"validate: node {node!r} expected 'certified' to be True or False, got "
                f"{data['certified']!r}.")
        if not isinstance(data.get("params", {}), dict):
            raise GraphValidationError(
                f"validate: node {node!r} expected 'params' to be a dict, got "
                f"{data['params']!r}.")


def validate(G) -> None:
    r"""Check that ``G`` is an architecture graph of the schema; raise naming the culprit.

    The checks, in order: ``G`` is a non-empty :class:`networkx.DiGraph`; node keys are
    strings; every node has a known ``op``; there is exactly one ``input`` and one
    ``output`` node; there is no cycle; every node has the number of predecessors its op
    requires (``add`` and ``concat`` at least 2) and ``output`` has no successor; every
    node lies on a path to the output (nodes fed only by ``constant`` nodes are allowed:
    they do not depend on the input and get :math:`L = 0`); every node's constant exists,
    is readable and not provably negative (``lipschitz`` is required on the weighted ops,
    refused on ``input``, ``constant``, ``add`` and ``concat``); ``params`` is a dict that
    :mod:`theory` accepts, and a pooling node whose constant comes from :mod:`theory`
    states its number of spatial dimensions (sizes as lists, e.g. ``"kernel_size": [3,
    3]``, or ``"ndim": 2`` next to int sizes); ``certified`` is a bool.

    Parameters
    ----------
    G : networkx.DiGraph
        The architecture graph.

    Raises
    ------
    GraphValidationError
        At the first violated rule, with a message naming the node, e.g.
        ``validate: node 'add3' (op 'add') expected at least 2 predecessors, got 1.``

    Examples
    --------
    >>> import networkx as nx
    >>> from bounds import validate
    >>> G = nx.DiGraph([("x", "fc"), ("fc", "add3"), ("add3", "logits")])
    >>> nx.set_node_attributes(G, {"x": "input", "fc": "linear", "add3": "add",
    ...                            "logits": "output"}, "op")
    >>> G.nodes["fc"]["lipschitz"] = "w"
    >>> validate(G)
    Traceback (most recent call last):
    ...
    bounds.errors.GraphValidationError: validate: node 'add3' (op 'add') expected at least 2 predecessors, got 1.
    >>> G.add_edge("x", "add3")
    >>> validate(G)
    """
    if not isinstance(G, nx.DiGraph) or G.is_multigraph():
        raise GraphValidationError(f"validate: expected a networkx.DiGraph, got "
                                   f"{type(G).__name__}.")
    if not G:
        raise GraphValidationError("validate: expected a graph with an 'input' and an "
                                   "'output' node, got an empty graph.")
    _check_ops(G)
    _the_node(G, "input")
    output = _the_node(G, "output")
    try:
        cycle = nx.find_cycle(G)
    except nx.NetworkXNoCycle:
        cycle = None
    if cycle:
        path = " -> ".join(repr(u) for u, _ in cycle) + f" -> {cycle[0][0]!r}"
        raise GraphValidationError(f"validate: node {cycle[0][0]!r} lies on a cycle: {path}.")
    _check_arity(G)
    if G.out_degree(output):
        raise GraphValidationError(
            f"validate: node {output!r} (op 'output') expected no successors, got "
            f"{G.out_degree(output)}.")
    dead = set(G) - nx.ancestors(G, output) - {output}
    if dead:
        node = next(node for node in G if node in dead)
        raise GraphValidationError(
            f"validate: node {node!r} is unreachable: no path leads from it "
            f"to the output node {output!r}.")
    _check_attributes(G)
