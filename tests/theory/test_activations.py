"""Activation constants: dense sampling of |phi'| and |phi''|, exact derivations, refusals.

The parameter sweeps against independent NumPy implementations are in
test_activation_sweeps.py, the interval certificates in test_certification.py."""

import mpmath
import numpy as np
import pytest
import sympy
from sympy import Rational, Symbol, sqrt

from theory import (
    ACTIVATIONS,
    ParameterError,
    TheoryError,
    UnknownOperationError,
    activation_lipschitz,
    second_derivative_bound,
)

x = Symbol("x", real=True)

VOCABULARY = {"relu", "leaky_relu", "prelu", "elu", "celu", "selu", "tanh", "sigmoid",
              "softplus", "gelu", "gelu_tanh", "silu", "hardswish", "hardsigmoid", "mish",
              "relu6", "hardtanh", "softsign", "logsigmoid", "tanhshrink", "identity",
              "dropout", "flatten", "reshape", "permute", "select"}

CASES = [
    ("relu", {}), ("leaky_relu", {}), ("leaky_relu", {"negative_slope": 0.2}),
    ("leaky_relu", {"negative_slope": -0.5}), ("leaky_relu", {"negative_slope": 3}),
    ("prelu", {}), ("prelu", {"weight": [-3]}), ("elu", {}), ("elu", {"alpha": 0.5}),
    ("elu", {"alpha": 2}), ("elu", {"alpha": -2, "scale": 3, "input_scale": Rational(1, 4)}),
    ("elu", {"alpha": 5, "scale": -2, "input_scale": 0}), ("celu", {}),
    ("celu", {"alpha": Rational(1, 3)}), ("celu", {"alpha": 4}), ("selu", {}), ("tanh", {}),
    ("sigmoid", {}), ("softplus", {}), ("softplus", {"beta": 2}),
    ("softplus", {"beta": Rational(1, 2)}), ("gelu", {}), ("gelu", {"approximate": "tanh"}),
    ("gelu_tanh", {}), ("silu", {}), ("hardswish", {}), ("mish", {}), ("relu6", {}),
    ("hardtanh", {}), ("hardtanh", {"min_val": -2, "max_val": 3}), ("hardsigmoid", {}),
    ("softsign", {}), ("logsigmoid", {}), ("tanhshrink", {}), ("identity", {}),
    ("dropout", {"p": 0.5}), ("flatten", {"start_dim": 1}), ("reshape", {}), ("permute", {}),
    ("select", {}),
]


def _case_id(case):
    name, params = case
    return name + "".join(f"-{key}={value}" for key, value in params.items())


def _absolute_derivative(name, params, order):
    """|phi^(order)| on the smooth pieces, in NumPy (fast) and mpmath (precise)."""
    derivative = sympy.diff(ACTIVATIONS[name].function(x, **params), x, order)
    derivative = derivative.replace(sympy.DiracDelta, lambda *args: 0)  # kinks: not a piece
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


BOUNDS = {1: activation_lipschitz, 2: second_derivative_bound}


@pytest.mark.parametrize("order", [1, 2], ids=["lipschitz", "second-derivative"])
@pytest.mark.parametrize("case", CASES, ids=_case_id)
def test_dense_sampling_never_exceeds_and_approaches_the_bound(case, order):
    """sup |phi'| (order 1) and sup |phi''| on the pieces (order 2): never exceeded on 1.1
    million points, and approached within 1e-6 by the best of them."""
    name, params = case
    constant = BOUNDS[order](name, **params)
    derivative, precise = _absolute_derivative(name, params, order)
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
        assert isinstance(activation.curvature_derivation, str)
        assert isinstance(activation.function(x), sympy.Expr)
        assert activation.constant() == activation_lipschitz(name)
        assert activation.curvature() == second_derivative_bound(name)


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
    a, c = Symbol("a", positive=True), Symbol("c", nonnegative=True)
    assert activation_lipschitz("leaky_relu", negative_slope=a) == sympy.Max(1, a)
    assert activation_lipschitz("elu", alpha=Rational(1, 2)) == 1
    assert activation_lipschitz("elu", alpha=a, input_scale=c) == sympy.Max(1, a * c)
    assert second_derivative_bound("elu", alpha=a, scale=2, input_scale=c) == 2 * a * c**2
    assert activation_lipschitz("prelu", weight=[a, -3]) == sympy.Max(3, a)


def test_celu_is_elu_with_input_scale_one_over_alpha():
    for alpha in (Rational(1, 3), Rational(2), Rational(7, 2)):
        celu = ACTIVATIONS["celu"].function(x, alpha=alpha)
        elu = ACTIVATIONS["elu"].function(x, alpha=alpha, input_scale=1 / alpha)
        assert sympy.simplify(celu - elu) == 0
        assert second_derivative_bound("celu", alpha=alpha) == \
            second_derivative_bound("elu", alpha=alpha, input_scale=1 / alpha)


def test_hardtanh_with_equal_limits_is_constant():
    assert activation_lipschitz("hardtanh", min_val=0.5, max_val=0.5) == 0
    assert ACTIVATIONS["hardtanh"].function(x, min_val=2, max_val=2).subs(x, 7) == 2


@pytest.mark.parametrize(("name", "point", "value"), [
    ("tanh", sympy.atanh(1 / sqrt(3)), 4 * sqrt(3) / 9),
    ("sigmoid", sympy.log((1 + 1 / sqrt(3)) / (1 - 1 / sqrt(3))), sqrt(3) / 18),
    ("gelu", 0, sqrt(2 / sympy.pi)),
], ids=["tanh", "sigmoid", "gelu"])
def test_second_derivative_bounds_are_attained_at_a_critical_point(name, point, value):
    second = sympy.diff(ACTIVATIONS[name].function(x), x, 2)
    assert abs(sympy.N(sympy.diff(second, x).subs(x, point), 30)) < 1e-25
    assert abs(sympy.N(abs(second.subs(x, point)) - value, 30)) < 1e-25
    assert second_derivative_bound(name) == value


def test_gelu_tanh_variant_shares_the_gelu_tanh_constant():
    assert activation_lipschitz("gelu", approximate="tanh") == activation_lipschitz("gelu_tanh")
    assert sympy.simplify(ACTIVATIONS["gelu"].function(x, approximate="tanh")
                          - ACTIVATIONS["gelu_tanh"].function(x)) == 0


# --- errors -------------------------------------------------------------------------------


def test_unknown_name_lists_the_known_names():
    with pytest.raises(UnknownOperationError, match=r"activation_lipschitz: expected one of "
                                                    r"the known names \(celu, dropout, elu, .*\), "
                                                    r"got 'swish'\."):
        activation_lipschitz("swish")


def test_unknown_operation_error_is_a_key_error():
    with pytest.raises(KeyError) as info:
        activation_lipschitz("softmax")
    assert isinstance(info.value, TheoryError)


#: (name, params, pattern): every refusal names the activation, the parameter and its value
REFUSALS = [
    ("relu", {"alpha": 1}, r"activation_lipschitz\('relu'\): expected parameters among "
                           r"\(none\), got \['alpha'\]"),
    ("elu", {"slope": 1}, r"expected parameters among \(alpha, scale, input_scale\)"),
    ("elu", {"input_scale": -0.5}, r"expected input_scale >= 0 \(for input_scale < 0 .* no "
                                   r"global constant\), got input_scale=-0.5"),
    ("celu", {"alpha": -1}, r"activation_lipschitz\('celu'\): expected alpha > 0 \(for "
                            r"alpha < 0, exp\(x/alpha\) grows .*\), got alpha=-1\."),
    ("celu", {"alpha": 0}, r"expected alpha > 0 \(celu divides by alpha\), got alpha=0"),
    ("softplus", {"beta": 0}, r"activation_lipschitz\('softplus'\): expected beta > 0, got "
                              r"beta=0"),
    ("softplus", {"beta": -2.5}, r"expected beta > 0, got beta=-2.5"),
    ("hardtanh", {"min_val": 1, "max_val": -1}, r"expected min_val <= max_val, got "
                                                r"min_val=1, max_val=-1"),
    ("gelu", {"approximate": "erf"}, r"expected approximate 'none' or 'tanh', got "
                                     r"approximate='erf'"),
    ("gelu", {"approximate": 1}, r"expected approximate to be a string, got 1"),
    ("leaky_relu", {"negative_slope": sympy.I}, r"expected negative_slope to be a finite real "
                                                r"number, got I"),
    ("leaky_relu", {"negative_slope": float("nan")}, r"expected negative_slope to be a finite "
                                                     r"real number, got nan"),
    ("leaky_relu", {"negative_slope": float("inf")}, r"got inf"),
    ("elu", {"alpha": sympy.oo}, r"expected alpha to be a finite real number, got oo"),
    ("elu", {"alpha": "one"}, r"expected alpha to be a finite real number or SymPy "
                              r"expression, got 'one'"),
    ("elu", {"scale": True}, r"expected scale to be a finite real number or SymPy "
                             r"expression, got True"),
    ("prelu", {"weight": []}, r"expected weight to hold at least one number, got \[\]"),
    ("prelu", {"weight": [0.5, float("nan")]}, r"expected weight\[1\] to be a finite real "
                                               r"number, got nan"),
    ("selu", {"alpha": 2}, r"expected parameters among \(none\), got \['alpha'\]"),
]


@pytest.mark.parametrize("bound", [activation_lipschitz, second_derivative_bound],
                         ids=["lipschitz", "second-derivative"])
@pytest.mark.parametrize(("name", "params", "match"), REFUSALS,
                         ids=lambda value: value if isinstance(value, str) and len(value) < 12
                         else None)
def test_parameters_outside_the_proved_domain_are_refused(name, params, match, bound):
    match = match.replace("activation_lipschitz", bound.__name__)
    with pytest.raises(ParameterError, match=match) as info:
        bound(name, **params)
    assert isinstance(info.value, ValueError) and isinstance(info.value, TheoryError)


def test_symbolic_parameters_are_refused_only_when_provably_out_of_domain():
    a = Symbol("a", positive=True)
    b = Symbol("b", real=True)
    assert activation_lipschitz("celu", alpha=a) == 1
    assert activation_lipschitz("celu", alpha=b) == 1  # holds under alpha > 0
    with pytest.raises(ParameterError, match="got alpha=-a"):
        activation_lipschitz("celu", alpha=-a)
    assert second_derivative_bound("softplus", beta=a) == a / 4
    with pytest.raises(ParameterError, match=r"got min_val=a \+ 1, max_val=a"):
        activation_lipschitz("hardtanh", min_val=a + 1, max_val=a)
