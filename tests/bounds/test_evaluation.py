"""Constants at numeric values: refused when not real numbers >= 0, never rounded below.

The whole class of issue 10 item 12 for graph files: a constant that is negative,
complex or NaN at the given values, names SymPy or Python would read as something else,
0 times infinity, and the rounding of derive / evaluate / propagate.
"""

import math
from fractions import Fraction

import networkx as nx
import pytest
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st

import bounds
from bounds import (
    ArgumentError,
    Bound,
    GraphValidationError,
    InvalidValueError,
    UnboundSymbolError,
    derive,
    parse_constant,
    propagate,
)

h, k = sympy.symbols("h k", positive=True)


def chain(*constants):
    """input -> linear(c1) -> ... -> output, nodes f0, f1, ..."""
    G = nx.DiGraph()
    G.add_node("x", op="input")
    u = "x"
    for i, constant in enumerate(constants):
        G.add_node(f"f{i}", op="linear", lipschitz=constant)
        G.add_edge(u, f"f{i}")
        u = f"f{i}"
    G.add_node("y", op="output")
    G.add_edge(u, "y")
    return G


# --------------------------------------------------------------------------- names


@pytest.mark.parametrize(("text", "why"), [
    ("nan", "NaN is not a constant"), ("NaN*h", "NaN is not a constant"),
    ("zoo", "complex infinity"), ("2*I", "imaginary unit"), ("inf", "write oo"),
    ("Infinity", "write oo"), ("Integer + 2", "reserved for numbers"),
    ("Symbol", "reserved for numbers"),
], ids=["nan", "NaN-product", "zoo", "I", "inf", "Infinity", "bare-Integer", "bare-Symbol"])
def test_names_sympy_reads_otherwise_are_refused(text, why):
    with pytest.raises(GraphValidationError, match=f"parse_constant: .* is not allowed: .*{why}"):
        parse_constant(text)
    with pytest.raises(GraphValidationError, match=f"node 'f0'.*{why}"):
        bounds.validate(chain(text))


@pytest.mark.parametrize(("text", "value"), [
    ("E", sympy.E), ("pi*h", sympy.pi * h), ("oo", sympy.oo), ("Rational(1, 3)*h", h / 3),
    ("S + N", sympy.Symbol("S", positive=True) + sympy.Symbol("N", positive=True)),
    ("sqrt", sympy.Symbol("sqrt", positive=True)),
], ids=["E", "pi", "oo", "Rational-call", "S-N-symbols", "function-name-as-symbol"])
def test_constants_and_ordinary_names(text, value):
    assert parse_constant(text) == value


@pytest.mark.parametrize("name", ["I", "pi", "nan", "oo"])
def test_sympy_symbols_that_would_not_read_back_are_refused(name):
    G = chain(sympy.Symbol(name, positive=True) * 2)
    with pytest.raises(GraphValidationError, match=f"a symbol named '{name}' would be read "
                                                   f"back"):
        bounds.validate(G)


@pytest.mark.parametrize(("constant", "match"), [
    ("log(1/2)", r"expected 'lipschitz' >= 0"), ("sqrt(2) - 2", r"expected 'lipschitz' >= 0"),
    ("sqrt(-1)", r"expected 'lipschitz' >= 0"), ("0*oo", r"expected 'lipschitz' >= 0"),
    ("-oo", r"expected 'lipschitz' >= 0"), ("exp(1) - 3", r"expected 'lipschitz' >= 0"),
], ids=["log-half", "sqrt2-minus-2", "sqrt-minus-1", "nan-product", "minus-oo", "e-minus-3"])
def test_numbers_that_are_not_lipschitz_constants_are_refused(constant, match):
    with pytest.raises(GraphValidationError, match=f"node 'f0' .*{match}"):
        bounds.validate(chain(constant))


# --------------------------------------------------------------------------- evaluation


@pytest.mark.parametrize(("constant", "values", "match"), [
    ("h - 3", {"h": 1}, r"node 'f0' \(constant h - 3\) is -2 at h=1: a Lipschitz constant "
                        r"is >= 0"),
    ("sqrt(h - 4)", {"h": 1}, r"node 'f0' \(constant sqrt\(h - 4\)\) is not a real number "
                              r"at h=1: h - 4 = -3 < 0"),
    ("log(h)", {"h": 0.5}, r"node 'f0' \(constant log\(h\)\) is -0.69314718 at h=0.5"),
    ("1/(h - 1)", {"h": 1}, r"node 'f0' \(constant 1/\(h - 1\)\) is not a real number at "
                            r"h=1: division by zero: h - 1 = 0"),
    ("h - k", {"h": math.inf, "k": math.inf}, r"node 'f0' \(constant h - k\) is not a real "
                                              r"number at h=inf, k=inf: infinity minus "
                                              r"infinity"),
    ("log(h - 2)", {"h": 1}, r"node 'f0' .* logarithm of h - 2 = -1 < 0"),
], ids=["negative", "complex-root", "negative-log", "division-by-zero", "inf-minus-inf",
        "log-of-negative"])
def test_constants_that_are_not_real_at_the_values_name_the_node(constant, values, match):
    G = chain(2, constant)
    G = nx.relabel_nodes(G, {"f1": "f0", "f0": "first"})
    with pytest.raises(InvalidValueError, match=f"Bound.evaluate: {match}"):
        derive(G).evaluate(values)
    with pytest.raises(InvalidValueError, match=f"propagate: {match}"):
        propagate(G, values)


@pytest.mark.parametrize(("values", "match"), [
    ({"h": -1}, "expected the value of h to be a real number >= 0, got -1"),
    ({"h": math.nan}, "got nan"), ({"h": 1j}, "got 1j"), ({"h": "2"}, "got '2'"),
    ({"h": True}, "got True"), ({"h": sympy.I}, "got I"),
    ({"h": -sympy.oo}, "got -oo"),
], ids=["negative", "nan", "complex", "string", "bool", "sympy-I", "minus-oo"])
def test_values_that_are_not_real_numbers_name_the_symbol(values, match):
    for call in (lambda: derive(chain("h")).evaluate(values), lambda: Bound(h).evaluate(values),
                 lambda: propagate(chain("h"), values)):
        with pytest.raises(InvalidValueError, match=match):
            call()


def test_zero_dimensional_arrays_are_numbers():
    import numpy as np
    assert Bound(h).evaluate({"h": np.array(2.5)}).lipschitz == 2.5
    assert Bound(h).evaluate({"h": np.float32(0.5)}).lipschitz == 0.5
    with pytest.raises(InvalidValueError, match="got array"):
        Bound(h).evaluate({"h": np.array([1.0, 2.0])})


def test_values_must_be_a_mapping_and_complete():
    for call in (lambda: derive(chain("h")).evaluate([1]), lambda: propagate(chain("h"), 3)):
        with pytest.raises(ArgumentError, match="expected a mapping from symbols to numbers"):
            call()
    assert isinstance(ArgumentError("x"), TypeError)
    with pytest.raises(UnboundSymbolError, match="no value for k"):
        derive(chain("h", "k")).evaluate({"h": 1})


def test_infinity_is_allowed_and_zero_makes_everything_after_it_constant():
    """0 * oo = 0: a node with constant 0 is a constant map, so is whatever follows it."""
    for constants in ([0, "oo"], ["oo", 0], [0, math.inf], [math.inf, 0.0]):
        G = chain(*constants)
        assert float(derive(G).lipschitz) == 0
        assert derive(G).evaluate() == (0.0, 0.0)
        assert propagate(G) == 0.0
    G = chain("h", "oo")
    assert derive(G).evaluate({"h": 0}) == (0.0, 0.0)
    assert propagate(G, {"h": 0}) == 0.0
    assert propagate(G, {"h": 1}) == math.inf
    assert derive(chain("h")).evaluate({"h": math.inf}).lipschitz == math.inf
    assert derive(chain("1/h")).evaluate({"h": 0}).lipschitz == math.inf


def test_zero_constant_in_a_residual_branch_keeps_the_shortcut():
    G = nx.DiGraph([("x", "f"), ("f", "g"), ("g", "s"), ("x", "s"), ("s", "y")])
    nx.set_node_attributes(G, {"x": "input", "f": "linear", "g": "linear", "s": "add",
                               "y": "output"}, "op")
    G.nodes["f"]["lipschitz"], G.nodes["g"]["lipschitz"] = 0, sympy.oo
    assert derive(G).lipschitz == 1 and propagate(G) == 1.0


# --------------------------------------------------------------------------- rounding


FLOATS = st.floats(0.01, 100.0, allow_nan=False, allow_infinity=False)


@settings(max_examples=80)
@given(constants=st.lists(FLOATS, min_size=1, max_size=40))
def test_chain_of_floats_is_never_rounded_below_the_exact_product(constants):
    exact = math.prod(Fraction(c) for c in constants)
    G = chain(*constants)
    for value in (propagate(G), derive(G).evaluate().lipschitz, float(derive(G).lipschitz)):
        assert Fraction(value) >= exact
        assert value <= float(exact) * (1 + 1e-13)


@settings(max_examples=80)
@given(a=FLOATS, b=FLOATS, c=FLOATS)
def test_sum_and_concatenation_of_floats_are_never_rounded_below(a, b, c):
    for op in ("add", "concat"):
        G = nx.DiGraph([("x", "p"), ("x", "q"), ("x", "r"), ("p", "m"), ("q", "m"),
                        ("r", "m"), ("m", "y")])
        nx.set_node_attributes(G, {"x": "input", "p": "linear", "q": "linear", "r": "linear",
                                   "m": op, "y": "output"}, "op")
        nx.set_node_attributes(G, {"p": a, "q": b, "r": c}, "lipschitz")
        exact_square = (Fraction(a) + Fraction(b) + Fraction(c)) ** 2 if op == "add" else (
            Fraction(a) ** 2 + Fraction(b) ** 2 + Fraction(c) ** 2)
        for value in (propagate(G), derive(G).evaluate().lipschitz):
            assert Fraction(value) ** 2 >= exact_square


def test_exact_values_stay_exact():
    assert propagate(chain(2, 2)) == 4.0
    assert derive(chain("h", "h")).evaluate({"h": 3}) == (9.0, 40.5)
    assert derive(chain(2, "sqrt(2)")).lipschitz == 2 * sympy.sqrt(2)
    assert derive(chain(0.5, 0.25)).lipschitz == sympy.Float(0.125)


def test_theory_constants_are_rounded_up():
    G = chain(1)
    G.add_node("pool", op="avgpool", params={"kernel_size": [2], "stride": [2]})
    G.remove_edge("f0", "y")
    G.add_edges_from([("f0", "pool"), ("pool", "y")])
    value = propagate(G)
    assert Fraction(value) ** 2 >= Fraction(1, 2) and value == pytest.approx(2**-0.5)


def test_closed_form_with_symbolic_depth_evaluates_after_substitution():
    form = bounds.closed_form("vgg", "n", shared=True)
    assert Bound(form).evaluate({"n": 3, "h": 2}) == (8.0, 32.0)
    assert Bound(bounds.closed_form("vgg", "n")).evaluate(
        {"n": 2, "h[1]": 2, "h[2]": 3}).lipschitz == 6.0
