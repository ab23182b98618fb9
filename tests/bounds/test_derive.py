"""bounds.derive and bounds.propagate: the rules on hand-computed graphs, floats == SymPy."""

import math

import networkx as nx
import pytest
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st

import bounds
from bounds import Bound, UnboundSymbolError, derive, propagate
from tests.bounds.strategies import H, SYMBOLS, architectures

a, b, c = SYMBOLS


def graph(edges, ops, constants=None):
    G = nx.DiGraph(edges)
    nx.set_node_attributes(G, ops, "op")
    for node, value in (constants or {}).items():
        G.nodes[node]["lipschitz"] = value
    return G


def test_chain_multiplies_with_theory_constants():
    G = graph([("x", "fc"), ("fc", "act"), ("act", "pool"), ("pool", "y")],
              {"x": "input", "fc": "linear", "act": "leaky_relu", "pool": "maxpool",
               "y": "output"}, {"fc": "a"})
    G.nodes["act"]["params"] = {"negative_slope": 2}
    G.nodes["pool"]["params"] = {"kernel_size": 3, "stride": 1, "ndim": 1}
    assert derive(G).lipschitz == 2 * sympy.sqrt(3) * a


def test_residual_sum_adds():
    G = graph([("x", "f"), ("f", "g"), ("g", "s"), ("x", "s"), ("s", "y")],
              {"x": "input", "f": "conv", "g": "conv", "s": "add", "y": "output"},
              {"f": a, "g": b})
    bound = derive(G)
    assert bound.lipschitz == a * b + 1
    assert bound.node_constants == {"x": 1, "f": a, "g": a * b, "s": a * b + 1,
                                    "y": a * b + 1}


def test_concat_takes_root_sum_square():
    G = graph([("x", "f"), ("x", "g"), ("x", "k"), ("f", "cat"), ("g", "cat"), ("k", "cat"),
               ("cat", "y")], {"x": "input", "f": "linear", "g": "linear", "k": "linear",
                               "cat": "concat", "y": "output"}, {"f": a, "g": b, "k": 2})
    assert sympy.simplify(derive(G).lipschitz - sympy.sqrt(a**2 + b**2 + 4)) == 0


def test_dense_connectivity_gives_the_product_form():
    G = graph([("x", "f"), ("x", "c1"), ("f", "c1"), ("c1", "g"), ("x", "c2"), ("f", "c2"),
               ("g", "c2"), ("c2", "y")], {"x": "input", "f": "conv", "g": "conv",
                                             "c1": "concat", "c2": "concat", "y": "output"},
              {"f": a, "g": b})
    assert derive(G).lipschitz == sympy.sqrt(1 + a**2) * sympy.sqrt(1 + b**2)


def test_constants_contribute_zero_and_constant_subgraphs_vanish():
    G = graph([("x", "f"), ("f", "s"), ("pos", "s"), ("tok", "big"), ("big", "cat"),
               ("s", "cat"), ("cat", "y")],
              {"x": "input", "f": "embedding", "s": "add", "pos": "constant",
               "tok": "constant", "big": "function", "cat": "concat", "y": "output"},
              {"f": a, "big": math.inf})
    bound = derive(G)
    assert bound.lipschitz == a
    assert bound.node_constants["big"] == 0
    assert propagate(G, {"a": 3}) == 3


def test_output_factor_and_certified_flag():
    G = bounds.vgg(1, shared=True)
    G.nodes["logits"]["lipschitz"] = 3
    assert derive(G).lipschitz == 3 * sympy.Symbol("h", positive=True)
    assert derive(G).certified
    G.nodes["fc1"]["certified"] = False
    assert not derive(G).certified
    assert "not certified" in str(derive(G))


def test_fisher_forms():
    bound = derive(bounds.vgg(2, shared=True))
    h = sympy.Symbol("h", positive=True)
    assert bound.fisher == h**4 / 2
    assert bound.fisher_at([sympy.Rational(1, 2), sympy.Rational(1, 2)]) == h**4 / 2
    assert bound.fisher_at([sympy.Rational(9, 10), sympy.Rational(1, 10)]) == \
        sympy.Rational(9, 50) * h**4


def test_symbols_evaluate_and_printing():
    bound = derive(bounds.vgg(2))
    assert bound.symbols == (H[1], H[2])
    assert bound.evaluate({"h[1]": 2, H[2]: 1.5, "unused": 7}) == (3.0, 4.5)
    with pytest.raises(UnboundSymbolError, match=r"Bound.evaluate: no value for h\[2\]"):
        bound.evaluate({"h[1]": 2})
    with pytest.raises(bounds.ArgumentError,
                       match="Bound.evaluate: expected a mapping .* got list"):
        bound.evaluate([1, 2])
    assert bound.latex() == "{h}_{1} {h}_{2}"
    assert bound._repr_latex_().startswith(r"$\operatorname{Lip}(f) \le")
    assert "h[1]⋅h[2]" in str(bound) and "vgg2" in str(bound)
    assert repr(bound) == "Bound(lipschitz=h[1]*h[2], certified=True)"
    assert Bound(2).evaluate() == (2.0, 2.0)


def test_propagate_names_node_and_symbol():
    G = bounds.vgg(2)
    with pytest.raises(UnboundSymbolError, match=r"node 'conv1' needs a value for h\[1\]"):
        propagate(G, {"h[2]": 1})


def test_propagate_validates_unless_told_not_to():
    G = bounds.vgg(2, shared=True)
    G.add_node("stray", op="relu")
    G.add_edge("conv1", "stray")
    with pytest.raises(bounds.GraphValidationError, match="'stray' is unreachable"):
        propagate(G, {"h": 2})
    assert propagate(G, {"h": 2}, check=False) == 4.0


@settings(max_examples=60)
@given(G=architectures(), data=st.data())
def test_propagate_equals_derive_on_random_graphs(G, data):
    values = {name: data.draw(st.floats(0.0, 3.0)) for name in ("a", "b", "c", "h[1]",
                                                                "h[2]")}
    exact = derive(G).evaluate(values).lipschitz
    assert propagate(G, values) == pytest.approx(exact, rel=1e-9, abs=1e-12)


@settings(max_examples=30)
@given(G=architectures(), data=st.data())
def test_bound_is_monotone_in_every_constant(G, data):
    """Raising one node constant never lowers the bound (all rules are monotone)."""
    weighted = [n for n in G if "lipschitz" in G.nodes[n]]
    values = dict.fromkeys(("a", "b", "c", "h[1]", "h[2]"), 1.5)
    before = propagate(G, values)
    if weighted:
        node = data.draw(st.sampled_from(weighted))
        G.nodes[node]["lipschitz"] = constant_value(G, node, values) + 1.0
    assert propagate(G, values) >= before - 1e-12


def constant_value(G, node, values):
    constant = bounds.node_lipschitz(G, node)
    return float(constant.xreplace({s: values[str(s)] for s in Bound(constant).symbols}))
