"""The composition, sum and concatenation rules: exact forms, soundness and sharpness."""

import numpy as np
import pytest
import sympy
from hypothesis import given
from hypothesis import strategies as st
from sympy import Rational, Symbol

from theory import ParameterError, activation_lipschitz, compose_rule, concat_rule, sum_rule

h1, h2, h3 = sympy.symbols("h1:4", positive=True)


@pytest.mark.parametrize(("rule", "expected"), [
    (compose_rule, h1 * h2 * h3),
    (sum_rule, h1 + h2 + h3),
    (concat_rule, sympy.sqrt(h1**2 + h2**2 + h3**2)),
], ids=["compose", "sum", "concat"])
def test_rules_have_the_stated_closed_form(rule, expected):
    assert sympy.simplify(rule(h1, h2, h3) - expected) == 0


def test_rules_with_one_constant_return_it():
    for rule in (compose_rule, sum_rule, concat_rule):
        assert rule(h1) == h1


def test_rules_are_exact_on_numbers():
    assert compose_rule(2, Rational(1, 4)) == Rational(1, 2)
    assert sum_rule(1, Rational(1, 4)) == Rational(5, 4)
    assert concat_rule(1, 1) == sympy.sqrt(2)


def test_concat_never_exceeds_sum():
    assert sympy.simplify(sum_rule(h1, h2) ** 2 - concat_rule(h1, h2) ** 2 - 2 * h1 * h2) == 0


def _matrices(seed, count, shape=(4, 3)):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape) for _ in range(count)]


def _norm(matrix):
    return np.linalg.norm(matrix, 2)


@given(st.integers(0, 2**32 - 1))
def test_rules_bound_jacobians_of_random_linear_maps(seed):
    A, B, C = _matrices(seed, 3, shape=(4, 4))
    assert _norm(A @ B @ C) <= float(compose_rule(_norm(A), _norm(B), _norm(C))) * (1 + 1e-12)
    assert _norm(A + B + C) <= float(sum_rule(_norm(A), _norm(B), _norm(C))) * (1 + 1e-12)
    stacked = np.vstack([A, B, C])
    assert _norm(stacked) <= float(concat_rule(_norm(A), _norm(B), _norm(C))) * (1 + 1e-12)


@given(st.integers(0, 2**32 - 1))
def test_rules_bound_a_small_nonlinear_network(seed):
    # y = concat(tanh(A x), x + sigmoid(B x)): Lipschitz <= sqrt(|A|^2 + (1 + |B|/4)^2).
    rng = np.random.default_rng(seed)
    A, B = rng.standard_normal((3, 3)), rng.standard_normal((3, 3))
    bound = concat_rule(compose_rule(activation_lipschitz("tanh"), _norm(A)),
                        sum_rule(1, compose_rule(activation_lipschitz("sigmoid"), _norm(B))))

    def network(x):
        return np.concatenate([np.tanh(A @ x), x + 1 / (1 + np.exp(-(B @ x)))])

    x, y = rng.standard_normal(3), rng.standard_normal(3)
    ratio = np.linalg.norm(network(x) - network(y)) / np.linalg.norm(x - y)
    assert ratio <= float(bound) * (1 + 1e-12)


def test_rules_are_attained_by_aligned_maps():
    # Rank-one maps sharing singular vectors make each inequality an equality.
    u = np.array([[1.0], [0.0]])
    A, B = 2.0 * u @ u.T, 3.0 * u @ u.T
    assert _norm(A @ B) == pytest.approx(float(compose_rule(2, 3)))
    assert _norm(A + B) == pytest.approx(float(sum_rule(2, 3)))
    assert _norm(np.vstack([A, B])) == pytest.approx(float(concat_rule(2, 3)))


@pytest.mark.parametrize(("rule", "args", "match"), [
    (compose_rule, (), "compose_rule: expected at least one constant, got none"),
    (sum_rule, (1, -2), r"sum_rule: expected constants\[1\] >= 0, got -2"),
    (concat_rule, ("h",), r"concat_rule: expected constants\[0\] to be a real number or "
                          r"SymPy expression, got 'h'"),
    (compose_rule, (sympy.eye(2),), r"compose_rule: expected constants\[0\] to be a real "
                                    r"number, got Matrix"),
    (sum_rule, (sympy.I,), r"sum_rule: expected constants\[0\] to be a real number, got I"),
], ids=["empty", "negative", "string", "matrix", "complex"])
def test_invalid_constants_raise(rule, args, match):
    with pytest.raises(ParameterError, match=match):
        rule(*args)


def test_symbol_of_unknown_sign_is_accepted():
    a = Symbol("a", real=True)
    assert compose_rule(a, 2) == 2 * a
