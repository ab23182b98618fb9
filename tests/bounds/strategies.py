"""Hypothesis strategies: random architecture graphs of the schema."""

from __future__ import annotations

import networkx as nx
import sympy
from hypothesis import strategies as st

SYMBOLS = sympy.symbols("a b c", positive=True)
H = sympy.IndexedBase("h", positive=True)

#: exact constants a graph may carry (SymPy, numbers, strings)
CONSTANTS = st.one_of(
    st.integers(0, 4),
    st.floats(0.0, 4.0, allow_nan=False, allow_infinity=False),
    st.sampled_from([*SYMBOLS, 2 * SYMBOLS[0], sympy.sqrt(SYMBOLS[1]), SYMBOLS[0] * SYMBOLS[2] + 1,
                     sympy.Rational(3, 2), H[1], H[2] * SYMBOLS[0], sympy.Float(0.1)]),
    st.sampled_from(["a/2", "sqrt(b) + c", "h[1]**2"]),
)

#: (op, params) of parameter-free or parametrised theory ops; pooling nodes state their
#: number of spatial dimensions by lists, tuples (written to JSON as lists) or ``ndim``
THEORY_OPS = st.sampled_from([
    ("relu", None), ("tanh", None), ("gelu", None), ("identity", None), ("flatten", None),
    ("leaky_relu", {"negative_slope": 2}), ("elu", {"alpha": 3}),
    ("maxpool", {"kernel_size": 3, "stride": 1, "ndim": 1}),
    ("maxpool", {"kernel_size": [3, 3], "stride": [2, 2], "padding": [1, 1]}),
    ("maxpool", {"kernel_size": (2, 2), "stride": 1, "dilation": (1, 2)}),
    ("avgpool", {"kernel_size": [2, 2]}),
    ("avgpool", {"kernel_size": 2, "stride": 1, "ndim": 2}),
    ("avgpool", {"kernel_size": (3,), "stride": (2,)}),
])
WEIGHTED = st.sampled_from(["linear", "conv", "batchnorm", "layernorm", "attention", "scale"])


@st.composite
def architectures(draw, max_nodes: int = 12) -> nx.DiGraph:
    """A random valid graph: one input, weighted/theory/add/concat nodes, constants, output."""
    G = nx.DiGraph(name="random")
    G.add_node("x", op="input")
    for i in range(draw(st.integers(1, max_nodes))):
        key = f"n{i}"
        kind = draw(st.sampled_from(["weighted", "theory", "merge", "constant"]))
        existing = [node for node in G if G.nodes[node]["op"] != "output"]
        if kind == "constant":
            G.add_node(key, op="constant")
        elif kind == "merge" and len(existing) >= 2:
            preds = draw(st.lists(st.sampled_from(existing), min_size=2, max_size=3,
                                  unique=True))
            G.add_node(key, op=draw(st.sampled_from(["add", "concat"])))
            G.add_edges_from((pred, key) for pred in preds)
        else:
            pred = draw(st.sampled_from(existing))
            if kind == "weighted":
                G.add_node(key, op=draw(WEIGHTED), lipschitz=draw(CONSTANTS))
            else:
                op, params = draw(THEORY_OPS)
                G.add_node(key, op=op, **({"params": dict(params)} if params else {}))
            G.add_edge(pred, key)
        if draw(st.booleans()) and G.nodes[key]["op"] not in ("constant",):
            G.nodes[key]["certified"] = draw(st.booleans())
    dangling = [node for node in G if G.out_degree(node) == 0]
    last = dangling[0]
    if len(dangling) > 1:
        last = "merge"
        G.add_node(last, op=draw(st.sampled_from(["add", "concat"])))
        G.add_edges_from((node, last) for node in dangling)
    G.add_node("logits", op="output")
    G.add_edge(last, "logits")
    return G
