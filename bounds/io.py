"""Architecture graphs as JSON files (networkx node-link format).

A file describes a new architecture without Python: ``{"directed": true, "multigraph":
false, "graph": {...}, "nodes": [{"id": "x", "op": "input"}, ...], "edges": [{"source":
"x", "target": "fc"}, ...]}``. Constants that are numbers are stored as JSON numbers;
SymPy expressions are stored as strings that :func:`bounds.parse_constant` reads back
with positive symbols (floats inside them with the digits that round-trip exactly).
Other attributes are stored as JSON, so tuples (pooling sizes in ``params``, say) come back
as lists, which :func:`bounds.validate` and :mod:`theory` read alike; a graph whose params
use lists round-trips exactly.
"""

from __future__ import annotations

import json
import os

import networkx as nx
import sympy
from sympy.printing.str import StrPrinter

from bounds.errors import GraphFormatError, GraphValidationError
from bounds.schema import parse_constant, validate

__all__ = ["read_graph", "write_graph", "graph_to_data", "graph_from_data"]


class _ExactPrinter(StrPrinter):
    """``sstr`` that writes double-precision Floats with the shortest round-trip digits."""

    def _print_Float(self, expr):
        if expr._prec == 53:
            return repr(float(expr))
        return super()._print_Float(expr)


def _constant_to_json(value):
    if isinstance(value, sympy.Basic):
        return _ExactPrinter().doprint(value)
    return value


def graph_to_data(G) -> dict:
    """The node-link dict that :func:`write_graph` stores (``G`` validated first).

    Parameters
    ----------
    G : networkx.DiGraph
        An architecture graph.

    Returns
    -------
    dict
        ``networkx.node_link_data(G, edges="edges")`` with SymPy constants as strings.

    Raises
    ------
    GraphValidationError
        If ``G`` breaks the schema.

    Examples
    --------
    >>> import networkx as nx, sympy
    >>> from bounds import graph_to_data
    >>> G = nx.DiGraph([("x", "fc"), ("fc", "y")])
    >>> nx.set_node_attributes(G, {"x": "input", "fc": "linear", "y": "output"}, "op")
    >>> G.nodes["fc"]["lipschitz"] = sympy.Symbol("w", positive=True) ** 2
    >>> graph_to_data(G)["nodes"][1]
    {'op': 'linear', 'lipschitz': 'w**2', 'id': 'fc'}
    """
    validate(G)
    data = nx.node_link_data(G, edges="edges")
    for node in data["nodes"]:
        if "lipschitz" in node:
            node["lipschitz"] = _constant_to_json(node["lipschitz"])
    return data


def graph_from_data(data) -> nx.DiGraph:
    """The graph of a node-link dict (inverse of :func:`graph_to_data`), validated.

    Parameters
    ----------
    data : dict
        A node-link document with ``"nodes"`` and ``"edges"``.

    Returns
    -------
    networkx.DiGraph
        Constants given as strings become SymPy expressions with positive symbols.

    Raises
    ------
    GraphFormatError
        If ``data`` is not a directed, simple node-link document.
    GraphValidationError
        If the graph breaks the schema.

    Examples
    --------
    >>> from bounds import graph_from_data
    >>> G = graph_from_data({"directed": True, "nodes": [
    ...     {"id": "x", "op": "input"}, {"id": "fc", "op": "linear", "lipschitz": "2*w"},
    ...     {"id": "y", "op": "output"}],
    ...     "edges": [{"source": "x", "target": "fc"}, {"source": "fc", "target": "y"}]})
    >>> G.nodes["fc"]["lipschitz"]
    2*w
    """
    if not isinstance(data, dict) or not isinstance(data.get("nodes"), list) or not (
            isinstance(data.get("edges", []), list)):
        raise GraphFormatError("graph_from_data: expected a node-link document with 'nodes' "
                               "and 'edges' lists, got "
                               f"{type(data).__name__} with keys {sorted(data)!r}."
                               if isinstance(data, dict) else
                               f"graph_from_data: expected a node-link dict, got "
                               f"{type(data).__name__}.")
    if data.get("directed") is False or data.get("multigraph") is True:
        raise GraphFormatError("graph_from_data: expected a directed graph without parallel "
                               f"edges, got directed={data.get('directed')!r}, "
                               f"multigraph={data.get('multigraph')!r}.")
    for i, node in enumerate(data["nodes"]):
        if not isinstance(node, dict) or "id" not in node:
            raise GraphFormatError(f"graph_from_data: malformed node-link document: entry {i} "
                                   f"of 'nodes' has no 'id': {node!r}.")
    data = {**data, "directed": True, "multigraph": False, "edges": data.get("edges", [])}
    try:
        G = nx.node_link_graph(data, edges="edges")
    except (KeyError, TypeError, nx.NetworkXError) as err:
        raise GraphFormatError(f"graph_from_data: malformed node-link document: {err!r}.") \
            from err
    for node, value in G.nodes(data="lipschitz"):
        if isinstance(value, str):
            try:
                G.nodes[node]["lipschitz"] = parse_constant(value)
            except GraphValidationError as err:
                raise GraphValidationError(f"validate: node {node!r}: {err}") from err
    validate(G)
    return G


def write_graph(G, path) -> None:
    """Write an architecture graph as a JSON node-link file.

    Parameters
    ----------
    G : networkx.DiGraph
        An architecture graph; validated before anything is written.
    path : str or os.PathLike
        The file to write (overwritten).

    Raises
    ------
    GraphValidationError
        If ``G`` breaks the schema or a node attribute is not JSON serialisable.

    Examples
    --------
    >>> import tempfile, os
    >>> from bounds import read_graph, write_graph, vgg
    >>> G = vgg(3)
    >>> path = os.path.join(tempfile.mkdtemp(), "vgg3.json")
    >>> write_graph(G, path)
    >>> H = read_graph(path)
    >>> nx.utils.graphs_equal(G, H)
    True
    """
    data = graph_to_data(G)
    try:
        text = json.dumps(data, indent=1, allow_nan=True)
    except TypeError as err:
        bad = next((node["id"] for node in data["nodes"] if not _serialisable(node)), None)
        raise GraphValidationError(
            f"write_graph: node {bad!r} has an attribute that JSON cannot store: {err}.") \
            from err
    with open(os.fspath(path), "w", encoding="utf-8") as handle:
        handle.write(text + "\n")


def _serialisable(value) -> bool:
    try:
        json.dumps(value)
    except TypeError:
        return False
    return True


def read_graph(path) -> nx.DiGraph:
    """Read an architecture graph from a JSON node-link file and validate it.

    Parameters
    ----------
    path : str or os.PathLike
        A file written by :func:`write_graph` or by hand.

    Returns
    -------
    networkx.DiGraph

    Raises
    ------
    FileNotFoundError
        If there is no such file.
    GraphFormatError
        If the file is not JSON or not a node-link document.
    GraphValidationError
        If the graph breaks the schema (the message names the node).

    Examples
    --------
    >>> import json, os, tempfile
    >>> from bounds import read_graph
    >>> path = os.path.join(tempfile.mkdtemp(), "mlp.json")
    >>> with open(path, "w") as f:
    ...     json.dump({"directed": True, "nodes": [
    ...         {"id": "x", "op": "input"}, {"id": "fc", "op": "linear", "lipschitz": 3.5},
    ...         {"id": "y", "op": "output"}],
    ...         "edges": [{"source": "x", "target": "fc"}, {"source": "fc", "target": "y"}]},
    ...         f)
    >>> sorted(read_graph(path).nodes(data="op"))
    [('fc', 'linear'), ('x', 'input'), ('y', 'output')]
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"read_graph: no such file {path!r}.")
    with open(path, encoding="utf-8") as handle:
        try:
            data = json.load(handle)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise GraphFormatError(f"read_graph: {path!r} is not valid JSON: {err}.") from err
    try:
        return graph_from_data(data)
    except GraphFormatError as err:
        raise GraphFormatError(f"read_graph: {path!r}: {err}") from err
