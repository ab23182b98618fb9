"""Interval certificates of the derivative bounds without closed form (theory.certification)."""

import mpmath
import pytest
import sympy
from sympy import Rational, Symbol

from theory import (
    ACTIVATIONS,
    CertificationError,
    ParameterError,
    UnknownOperationError,
    activation_lipschitz,
    certify_activation_constant,
    prove_derivative_bound,
    second_derivative_bound,
)

x = Symbol("x", real=True)
NAMES = ["silu", "mish", "gelu_tanh"]
BOUNDS = {1: activation_lipschitz, 2: second_derivative_bound}


def _supremum(name, order):
    """sup |phi^(order)| located independently: Newton on the next derivative from the best
    point of a grid at 40 digits."""
    derivative = sympy.diff(ACTIVATIONS[name].function(x), x, order)
    value = sympy.lambdify(x, derivative, "mpmath")
    turning = sympy.lambdify(x, sympy.diff(derivative, x), "mpmath")
    with mpmath.workdps(40):
        start = max((mpmath.mpf(i) / 100 for i in range(-800, 801)), key=lambda t: abs(value(t)))
        return abs(value(mpmath.findroot(turning, start)))


@pytest.mark.parametrize("order", [1, 2], ids=["lipschitz", "second-derivative"])
@pytest.mark.parametrize("name", NAMES)
def test_certified_constant_is_rederived_and_within_3e_10_of_the_supremum(name, order):
    constant = BOUNDS[order](name)
    assert constant.is_Rational
    assert certify_activation_constant(name, order=order) == constant
    with mpmath.workdps(40):
        gap = mpmath.mpf(constant.p) / constant.q - _supremum(name, order)
        assert mpmath.mpf("2e-10") - mpmath.mpf("1e-30") <= gap <= mpmath.mpf("3e-10")


@pytest.mark.parametrize("order", [1, 2], ids=["lipschitz", "second-derivative"])
@pytest.mark.parametrize("name", NAMES)
def test_interval_proof_refutes_a_bound_below_the_supremum(name, order):
    below = BOUNDS[order](name) - Rational(1, 10**9)
    assert prove_derivative_bound(name, below, order=order) is False


def test_gelu_with_tanh_approximation_uses_the_gelu_tanh_certificates():
    assert activation_lipschitz("gelu", approximate="tanh") == activation_lipschitz("gelu_tanh")
    assert second_derivative_bound("gelu", approximate="tanh") == \
        second_derivative_bound("gelu_tanh")


def test_interval_proof_accepts_a_loose_bound_and_refutes_a_tight_one():
    assert prove_derivative_bound("silu", Rational(11, 10)) is True
    assert prove_derivative_bound("silu", 1) is False
    assert prove_derivative_bound("mish", Rational(65, 100), order=2) is True
    assert prove_derivative_bound("mish", Rational(643, 1000), order=2) is False  # mish''(0) = 0.64


def test_proof_of_an_uncertified_activation_raises():
    with pytest.raises(UnknownOperationError, match=r"prove_derivative_bound: expected one of "
                                                    r"the known names \(gelu_tanh, mish, silu\), "
                                                    r"got 'relu'"):
        prove_derivative_bound("relu", 1)


def test_proof_needs_a_rational_bound():
    with pytest.raises(ParameterError, match="expected a rational bound, got 1.1"):
        prove_derivative_bound("silu", 1.1)


def test_proof_of_a_third_derivative_is_refused():
    with pytest.raises(ParameterError, match="expected order 1 or 2, got 3"):
        prove_derivative_bound("silu", 1, order=3)
    with pytest.raises(ParameterError, match="certify_activation_constant: expected order 1 "
                                             "or 2, got 0"):
        certify_activation_constant("silu", order=0)


def test_proof_out_of_budget_raises():
    with pytest.raises(CertificationError, match="derivative 1 of mish .* too close to the "
                                                 "supremum for 3 pieces"):
        prove_derivative_bound("mish", Rational(11, 10), max_pieces=3)
