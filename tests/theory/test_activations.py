"""Activation constants: dense sampling of |phi'|, exact derivations, interval certificates."""

import mpmath
import numpy as np
import pytest
import sympy
from sympy import Rational, Symbol, sqrt

from theory import (
    ACTIVATIONS,
    CertificationError,
    ParameterError,
    TheoryError,
    UnknownOperationError,
    activation_lipschitz,
    certify_activation_constant,
    prove_derivative_bound,
)

x = Symbol("x", real=True)

VOCABULARY = {"relu", "leaky_relu", "elu", "tanh", "sigmoid", "softplus", "gelu", "gelu_tanh",
              "silu", "hardswish", "mish", "relu6", "hardtanh", "identity", "dropout",
              "flatten", "reshape", "permute", "select"}

CASES = [
    ("relu", {}), ("leaky_relu", {}), ("leaky_relu", {"negative_slope": 0.2}),
    ("leaky_relu", {"negative_slope": -0.5}), ("leaky_relu", {"negative_slope": 3}),
    ("elu", {}), ("elu", {"alpha": 0.5}), ("elu", {"alpha": 2}), ("tanh", {}),
    ("sigmoid", {}), ("softplus", {}), ("softplus", {"beta": 2}),
    ("softplus", {"beta": Rational(1, 2)}), ("gelu", {}), ("gelu", {"approximate": "tanh"}),
    ("gelu_tanh", {}), ("silu", {}), ("hardswish", {}), ("mish", {}), ("relu6", {}),
    ("hardtanh", {}), ("hardtanh", {"min_val": -2, "max_val": 3}), ("identity", {}),
    ("dropout", {"p": 0.5}), ("flatten", {"start_dim": 1}), ("reshape", {}), ("permute", {}),
    ("select", {}),
]


def _case_id(case):
    name, params = case
    return name + "".join(f"-{key}={value}" for key, value in params.items())


def _absolute_derivative(name, params):
    derivative = sympy.diff(ACTIVATIONS[name].function(x, **params), x)
    as_numpy = sympy.lambdify(x, derivative, modules=["scipy", "numpy"])
    as_mpmath = sympy.lambdify(x, derivative, modules="mpmath")
    return (lambda t: np.abs(np.broadcast_to(as_numpy(t), t.shape)),
            lambda t: abs(as_mpmath(mpmath.mpf(t))))


def _dense_samples(derivative):
    """About 1.1 million points: a fine core grid, the tails, then two zooms on the best."""
    grid = np.concatenate([np.linspace(-40, -8, 20_001), np.linspace(-8, 8, 1_000_001),
                           np.linspace(8, 40, 20_001)])
    values = derivative(grid)
    points, samples = [grid], [values]
    best, step = grid[np.argmax(values)], 16 / 1_000_000
    for _ in range(2):
        zoom = np.linspace(best - 2 * step, best + 2 * step, 10_001)
        zoom_values = derivative(zoom)
        points.append(zoom)
        samples.append(zoom_values)
        best, step = zoom[np.argmax(zoom_values)], 4 * step / 10_000
    return np.concatenate(points), np.concatenate(samples)


@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_dense_sampling_never_exceeds_and_approaches_the_constant(case):
    name, params = case
    constant = activation_lipschitz(name, **params)
    derivative, precise = _absolute_derivative(name, params)
    points, values = _dense_samples(derivative)
    assert np.all(np.isfinite(values))
    assert values.max() <= float(constant) * (1 + 4 * np.finfo(float).eps)
    top = points[np.argsort(values)[-5:]]
    with mpmath.workdps(40):
        exact = mpmath.mpf(sympy.N(constant, 40))
        assert all(precise(t) <= exact for t in top)
        assert exact - max(precise(t) for t in top) <= mpmath.mpf("1e-6")


def test_registry_holds_the_graph_vocabulary():
    assert set(ACTIVATIONS) == VOCABULARY
    for name, activation in ACTIVATIONS.items():
        assert activation.name == name
        assert isinstance(activation.derivation, str) and activation.derivation
        assert isinstance(activation.function(x), sympy.Expr)
        assert activation.constant() == activation_lipschitz(name)


def test_gelu_constant_is_the_value_at_the_critical_point_sqrt2():
    gelu = ACTIVATIONS["gelu"].function(x)
    first, second = sympy.diff(gelu, x), sympy.diff(gelu, x, 2)
    assert sympy.simplify(second - sympy.exp(-x**2 / 2) * (2 - x**2) / sqrt(2 * sympy.pi)) == 0
    assert sympy.simplify(second.subs(x, sqrt(2))) == 0
    constant = activation_lipschitz("gelu")
    assert sympy.simplify(first.subs(x, sqrt(2)) - constant) == 0
    assert sympy.simplify(constant - (1 + sympy.erf(1)) / 2 - sympy.exp(-1) / sqrt(sympy.pi)) == 0
    assert sympy.limit(first, x, sympy.oo) == 1 and sympy.limit(first, x, -sympy.oo) == 0
    # The other critical point: gelu'(-sqrt 2) = 1 - gelu'(sqrt 2), smaller in modulus.
    assert sympy.simplify(first.subs(x, -sqrt(2)) - (1 - constant)) == 0


@pytest.mark.parametrize(("name", "point", "value"), [
    ("sigmoid", 0, Rational(1, 4)),
    ("tanh", 0, 1),
], ids=["sigmoid", "tanh"])
def test_smooth_constants_are_attained_at_a_critical_point(name, point, value):
    first = sympy.diff(ACTIVATIONS[name].function(x), x)
    assert sympy.simplify(sympy.diff(first, x).subs(x, point)) == 0
    assert sympy.simplify(first.subs(x, point) - value) == 0
    assert activation_lipschitz(name) == value


@pytest.mark.parametrize(("name", "params", "point", "direction", "value"), [
    ("elu", {"alpha": 2}, 0, "-", 2),
    ("softplus", {"beta": 3}, sympy.oo, "-", 1),
], ids=["elu-alpha=2", "softplus-beta=3"])
def test_constants_are_approached_at_a_limit(name, params, point, direction, value):
    first = sympy.diff(ACTIVATIONS[name].function(x, **params), x)
    assert sympy.limit(first, x, point, direction) == value
    assert activation_lipschitz(name, **params) == value


def test_hardswish_constant_is_approached_from_the_left_of_3():
    # sympy.limit mis-evaluates one-sided limits of Piecewise at a breakpoint, so evaluate
    # the derivative exactly on rationals approaching 3 from below.
    first = sympy.diff(ACTIVATIONS["hardswish"].function(x), x)
    for k in (3, 6, 9):
        gap = Rational(1, 10**k)
        assert first.subs(x, 3 - gap) == Rational(3, 2) - gap / 3
    assert first.subs(x, -3 + Rational(1, 10**9)) > Rational(-1, 2)
    assert activation_lipschitz("hardswish") == Rational(3, 2)


def test_symbolic_parameters_give_symbolic_constants():
    a = Symbol("a", positive=True)
    assert activation_lipschitz("leaky_relu", negative_slope=a) == sympy.Max(1, a)
    assert activation_lipschitz("elu", alpha=Rational(1, 2)) == 1


@pytest.mark.parametrize("name", ["silu", "mish", "gelu_tanh"])
def test_certified_constant_is_rederived_and_within_1e_9_of_the_supremum(name):
    constant = activation_lipschitz(name)
    assert constant.is_Rational
    assert certify_activation_constant(name) == constant
    # The supremum, located independently: Newton on phi'' from the best point of a grid.
    first = sympy.diff(ACTIVATIONS[name].function(x), x)
    slope = sympy.lambdify(x, first, "mpmath")
    curvature = sympy.lambdify(x, sympy.diff(first, x), "mpmath")
    with mpmath.workdps(40):
        start = max((mpmath.mpf(i) / 100 for i in range(-800, 801)), key=lambda t: abs(slope(t)))
        supremum = abs(slope(mpmath.findroot(curvature, start)))
        gap = mpmath.mpf(constant.p) / constant.q - supremum
    assert 0 < gap < 1e-9


@pytest.mark.parametrize("name", ["silu", "mish", "gelu_tanh"])
def test_interval_proof_refutes_a_bound_below_the_supremum(name):
    assert prove_derivative_bound(name, activation_lipschitz(name) - Rational(1, 10**9)) is False


def test_interval_proof_accepts_a_loose_bound_and_refutes_a_tight_one():
    assert prove_derivative_bound("silu", Rational(11, 10)) is True
    assert prove_derivative_bound("silu", 1) is False


def test_gelu_tanh_variant_shares_the_gelu_tanh_constant():
    assert activation_lipschitz("gelu", approximate="tanh") == activation_lipschitz("gelu_tanh")
    assert sympy.simplify(ACTIVATIONS["gelu"].function(x, approximate="tanh")
                          - ACTIVATIONS["gelu_tanh"].function(x)) == 0


# --- errors -------------------------------------------------------------------------------


def test_unknown_name_lists_the_known_names():
    with pytest.raises(UnknownOperationError, match=r"activation_lipschitz: expected one of "
                                                    r"the known names \(dropout, elu, .*\), "
                                                    r"got 'swish'\."):
        activation_lipschitz("swish")


def test_unknown_operation_error_is_a_key_error():
    with pytest.raises(KeyError) as info:
        activation_lipschitz("softmax")
    assert isinstance(info.value, TheoryError)


@pytest.mark.parametrize(("name", "params", "match"), [
    ("relu", {"alpha": 1}, r"expected parameters of 'relu' among \(none\), got \['alpha'\]"),
    ("elu", {"slope": 1}, r"expected parameters of 'elu' among \(alpha\)"),
    ("softplus", {"beta": 0}, "expected beta > 0 for 'softplus'"),
    ("hardtanh", {"min_val": 1, "max_val": -1}, "expected min_val < max_val for 'hardtanh'"),
    ("gelu", {"approximate": "erf"}, "expected approximate 'none' or 'tanh' for 'gelu'"),
    ("leaky_relu", {"negative_slope": sympy.I}, "expected a real negative_slope"),
    ("elu", {"alpha": "one"}, "expected a number or SymPy expression for alpha of 'elu'"),
], ids=["relu-extra", "elu-unknown", "softplus-beta", "hardtanh-order", "gelu-approximate",
        "leaky-complex", "elu-string"])
def test_invalid_parameters_raise(name, params, match):
    with pytest.raises(ParameterError, match=match):
        activation_lipschitz(name, **params)


def test_proof_of_an_uncertified_activation_raises():
    with pytest.raises(UnknownOperationError, match=r"prove_derivative_bound: expected one of "
                                                    r"the known names \(gelu_tanh, mish, silu\)"):
        prove_derivative_bound("relu", 1)


def test_proof_needs_a_rational_bound():
    with pytest.raises(ParameterError, match="expected a rational bound, got 1.1"):
        prove_derivative_bound("silu", 1.1)


def test_proof_out_of_budget_raises():
    with pytest.raises(CertificationError, match="too close to the supremum for 3 pieces"):
        prove_derivative_bound("mish", Rational(11, 10), max_pieces=3)
