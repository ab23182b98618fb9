"""Activation bounds against independent NumPy implementations, over random parameters.

Each activation is written here again in NumPy the way torch computes it (not from the
SymPy expressions of theory), and sampled on a grid scaled to its parameters. Every
difference quotient |f(b) - f(a)| / |b - a| is at most the Lipschitz constant (mean value
theorem: no truncation error), and every second divided difference on a smooth stretch
is at most sup |phi''|; the allowances are the float rounding of the evaluations,
4 eps (|f(a)| + |f(b)|) / |b - a|, nothing else. Hypothesis draws the parameters,
magnitudes from 1e-12 to 1e12 included; the best quotient must also come within 0.1% of
the constant (1% for second differences), so a constant that is too large fails too.
"""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.special import erf

from theory import activation_lipschitz, second_derivative_bound

EPS = np.finfo(float).eps

#: magnitudes, log-uniform from 1e-6 to 1e6 plus the extremes 1e-12 and 1e12
MAGNITUDES = st.one_of(st.sampled_from([1e-12, 1e-6, 1.0, 1e6, 1e12]),
                       st.floats(-6, 6).map(lambda e: 10.0**e))
SIGNED = st.tuples(MAGNITUDES, st.sampled_from([-1.0, 1.0])).map(lambda p: p[0] * p[1])


def _grid(scale, centre=0.0):
    """Points on [-40, 40] * scale around centre, denser within 0.01 * scale of centre."""
    t = np.unique(np.concatenate([np.linspace(-40, 40, 4001), np.linspace(-0.01, 0.01, 2001)]))
    return centre + t * scale


def _first_quotients(f, x, step):
    a, b = x, x + step
    fa, fb = f(a), f(b)
    width = b - a
    return np.abs(fb - fa) / width, 4 * EPS * (np.abs(fa) + np.abs(fb)) / width


def _second_quotients(f, x, step, kinks):
    a, b, c = x - step, x, x + step
    fa, fb, fc = f(a), f(b), f(c)
    d2 = 2 * ((fc - fb) / (c - b) - (fb - fa) / (b - a)) / (c - a)
    err = 8 * EPS * (np.abs(fa) + 2 * np.abs(fb) + np.abs(fc)) / ((b - a) * (c - b))
    smooth = np.ones_like(x, dtype=bool)
    for kink in kinks:  # a jump of phi' inside the stencil is not a smooth stretch
        smooth &= ~((a < kink) & (kink < c))
    return np.abs(d2[smooth]), err[smooth]


def check_lipschitz(f, constant, x, step):
    quotient, err = _first_quotients(f, x, step)
    bound = float(constant)
    assert np.all(quotient - err <= bound * (1 + 8 * EPS)), (quotient - err).max()
    assert quotient.max() >= bound * (1 - 1e-3) - err.max()


def check_curvature(f, bound, x, step, kinks=()):
    d2, err = _second_quotients(f, x, step, kinks)
    bound = float(bound)
    assert np.all(d2 - err <= bound * (1 + 1e-9)), (d2 - err).max()
    measurable = err < 1e-3 * bound
    if bound > 0:
        assert measurable.any()
        assert d2[measurable].max() >= bound * (1 - 1e-2)


def _leaky(slope):
    return lambda x: np.where(x > 0, x, slope * x)


def _elu(alpha, scale, input_scale):
    return lambda x: np.where(x > 0, scale * x,
                              scale * alpha * np.expm1(input_scale * np.minimum(x, 0)))


@settings(max_examples=40)
@given(slope=SIGNED)
def test_leaky_relu(slope):
    check_lipschitz(_leaky(slope), activation_lipschitz("leaky_relu", negative_slope=slope),
                    _grid(1.0), 1e-5)
    check_curvature(_leaky(slope), second_derivative_bound("leaky_relu", negative_slope=slope),
                    _grid(1.0), 1e-3, kinks=(0.0,))


@settings(max_examples=30)
@given(weight=st.lists(SIGNED, min_size=1, max_size=4))
def test_prelu_is_the_worst_channel(weight):
    constant = float(activation_lipschitz("prelu", weight=weight))
    x = _grid(1.0)
    worst = max(_first_quotients(_leaky(a), x, 1e-5)[0].max() for a in weight)
    assert constant * (1 - 1e-9) <= worst <= constant * (1 + 1e-9)
    for a in weight:
        check_curvature(_leaky(a), second_derivative_bound("prelu", weight=weight), x, 1e-3,
                        kinks=(0.0,))


@settings(max_examples=60)
@given(alpha=SIGNED, scale=SIGNED,
       input_scale=st.one_of(st.just(0.0), MAGNITUDES))
def test_elu_with_scale_and_input_scale(alpha, scale, input_scale):
    params = dict(alpha=alpha, scale=scale, input_scale=input_scale)
    f = _elu(alpha, scale, input_scale)
    length = 1 / input_scale if input_scale > 0 else 1.0
    check_lipschitz(f, activation_lipschitz("elu", **params), _grid(length), 1e-5 * length)
    kinks = () if scale == scale * alpha * input_scale else (0.0,)
    check_curvature(f, second_derivative_bound("elu", **params), _grid(length),
                    1e-3 * length, kinks)


@settings(max_examples=40)
@given(alpha=MAGNITUDES)
def test_celu(alpha):
    def f(x):
        return np.maximum(0, x) + np.minimum(0, alpha * np.expm1(x / alpha))
    check_lipschitz(f, activation_lipschitz("celu", alpha=alpha), _grid(alpha), 1e-5 * alpha)
    check_curvature(f, second_derivative_bound("celu", alpha=alpha), _grid(alpha),
                    1e-3 * alpha)


@settings(max_examples=40)
@given(beta=MAGNITUDES)
def test_softplus_without_the_threshold_switch(beta):
    def f(x):
        return np.logaddexp(0, beta * x) / beta
    length = 1 / beta
    check_lipschitz(f, activation_lipschitz("softplus", beta=beta), _grid(length),
                    1e-5 * length)
    check_curvature(f, second_derivative_bound("softplus", beta=beta), _grid(length),
                    1e-3 * length)


@settings(max_examples=40)
@given(beta=MAGNITUDES, threshold=st.floats(-30, 30))
def test_softplus_threshold_switch_jumps_by_the_documented_amount(beta, threshold):
    """torch: x where beta x > threshold, else log(1 + exp(beta x))/beta. The jump at the
    switch is log(1 + exp(-threshold))/beta, and |f(x) - f(y)| <= |x - y| + jump."""
    def torch_softplus(x):
        return np.where(beta * x > threshold, x, np.logaddexp(0, beta * x) / beta)
    jump = np.log1p(np.exp(-threshold)) / beta
    switch = threshold / beta
    left = np.logaddexp(0, threshold) / beta
    assert left - switch == pytest.approx(jump, rel=1e-9, abs=1e-12 * abs(switch))
    x = switch + np.linspace(-3, 3, 601) / beta
    fx = torch_softplus(x)
    gaps = np.abs(fx[:, None] - fx[None, :]) - np.abs(x[:, None] - x[None, :])
    rounding = 8 * EPS * (np.abs(fx[:, None]) + np.abs(fx[None, :]) + np.abs(x[:, None]))
    assert np.all(gaps <= jump + rounding)
    delta = 1e-9 / beta  # a pair straddling the switch sees the whole jump
    pair = torch_softplus(np.array([switch - delta, switch + delta]))
    assert abs(pair[0] - pair[1]) - 2 * delta >= jump * (1 - 1e-6) - 1e-6 * abs(switch)


@settings(max_examples=40)
@given(low=SIGNED, width=st.one_of(st.just(0.0), MAGNITUDES))
def test_hardtanh(low, width):
    high = low + width
    if width > 0 and abs(low) > 1e6 * width:
        high = low + abs(low) * 1e-6  # keep the clamped stretch visible in float64
    length = (high - low) or 1.0
    x = _grid(length, (low + high) / 2)
    check_lipschitz(lambda t: np.clip(t, low, high),
                    activation_lipschitz("hardtanh", min_val=low, max_val=high), x,
                    1e-5 * length)


def _sigmoid(x):
    return 0.5 * (1 + np.tanh(x / 2))


_C = np.sqrt(2 / np.pi)

#: the activations without numeric parameters, written as torch computes them, with the
#: points where phi' jumps
FIXED = {
    "relu": (lambda x: np.maximum(x, 0), (0.0,)),
    "relu6": (lambda x: np.clip(x, 0, 6), (0.0, 6.0)),
    "selu": (lambda x: 1.0507009873554805 * np.where(
        x > 0, x, 1.6732632423543772 * np.expm1(np.minimum(x, 0))), (0.0,)),
    "tanh": (np.tanh, ()),
    "sigmoid": (_sigmoid, ()),
    "hardsigmoid": (lambda x: np.clip(x / 6 + 0.5, 0, 1), (-3.0, 3.0)),
    "hardswish": (lambda x: x * np.clip(x + 3, 0, 6) / 6, (-3.0, 3.0)),
    "gelu": (lambda x: x / 2 * (1 + erf(x / np.sqrt(2))), ()),
    "gelu_tanh": (lambda x: x / 2 * (1 + np.tanh(_C * (x + 0.044715 * x**3))), ()),
    "silu": (lambda x: x * _sigmoid(x), ()),
    "mish": (lambda x: x * np.tanh(np.logaddexp(0, x)), ()),
    "softsign": (lambda x: x / (1 + np.abs(x)), ()),
    "logsigmoid": (lambda x: -np.logaddexp(0, -x), ()),
    "tanhshrink": (lambda x: x - np.tanh(x), ()),
}


@pytest.mark.parametrize("name", sorted(FIXED))
def test_activations_without_parameters(name):
    f, kinks = FIXED[name]
    x = _grid(1.0, 0.0)
    x = np.unique(np.concatenate([x, np.linspace(-3.01, -2.99, 2001),
                                  np.linspace(1.3, 1.6, 3001), np.linspace(2.3, 3.01, 2001)]))
    check_lipschitz(f, activation_lipschitz(name), x, 1e-6)
    check_curvature(f, second_derivative_bound(name), x, 1e-3, kinks)
