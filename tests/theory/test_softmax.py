"""Softmax curvature: the bound kappa(p) against exact and dense eigenvalues."""

import math

import numpy as np
import pytest
import sympy
from hypothesis import given, settings
from hypothesis import strategies as st
from sympy import Rational, S, Symbol

from theory import (
    SUM_TOLERANCE,
    ProbabilityError,
    TheoryError,
    centred_fisher_bound,
    centred_jacobian,
    centring_matrix,
    softmax_covariance,
    softmax_curvature_bound,
)


def _simplex_symbols(K):
    """p_1..p_{K-1} positive symbols and p_K = 1 - sum of the others."""
    free = sympy.symbols(f"p1:{K}", positive=True)
    return list(free) + [1 - sum(free)]


def _dense_top_eigenvalue(p):
    p = np.asarray(p, dtype=np.float64)
    return np.linalg.eigvalsh(np.diag(p) - np.outer(p, p))[-1]


def _roots_above(polynomial, value):
    """Number of real roots of ``polynomial`` strictly above ``value`` (exact, Sturm)."""
    at_value = 0
    while polynomial.eval(value) == 0:
        polynomial = sympy.Poly(sympy.quo(polynomial, sympy.Poly(polynomial.gen - value)))
        at_value += 1
    return polynomial.count_roots(value, 2)


# --- the bound, exactly -------------------------------------------------------------------


def test_two_classes_maximum_is_exactly_one_half():
    q = Symbol("q", positive=True)
    eigenvalues = softmax_covariance([q, 1 - q]).eigenvals(multiple=True)
    top = max(eigenvalues, key=lambda e: e.subs(q, Rational(1, 3)))
    assert sympy.simplify(top - 2 * q * (1 - q)) == 0
    assert sympy.maximum(top, q, sympy.Interval(0, 1)) == S.Half
    assert sympy.solve(sympy.diff(top, q), q) == [S.Half]
    assert softmax_curvature_bound([S.Half, S.Half]) == S.Half


def test_two_classes_bound_equals_the_eigenvalue():
    q = Symbol("q", positive=True)
    bound = softmax_curvature_bound([q, 1 - q])
    for value in (Rational(1, 2), Rational(1, 3), Rational(1, 1000), Rational(7, 8)):
        assert sympy.simplify(bound.subs(q, value) - 2 * value * (1 - value)) == 0


@pytest.mark.parametrize("K", [2, 3, 4], ids=lambda K: f"K={K}")
def test_quadratic_form_is_a_variance(K):
    # The identity behind the Popoviciu step: u^T Sigma_p u = Var_{i~p}(u_i).
    p = _simplex_symbols(K)
    u = sympy.Matrix(sympy.symbols(f"u1:{K + 1}", real=True))
    form = (u.T * softmax_covariance(p) * u)[0, 0]
    variance = sum(pi * ui**2 for pi, ui in zip(p, u)) - sum(pi * ui for pi, ui in zip(p, u))**2
    assert sympy.expand(form - variance) == 0


@given(st.lists(st.integers(1, 50), min_size=2, max_size=6))
def test_exact_bound_has_no_eigenvalue_above_it(weights):
    p = [Rational(w, sum(weights)) for w in weights]
    bound = softmax_curvature_bound(p)
    assert bound.is_Rational
    polynomial = softmax_covariance(p).charpoly()
    assert _roots_above(polynomial, bound) == 0


def test_exact_and_float_paths_agree():
    p = [Rational(4, 5), Rational(1, 8), Rational(3, 40)]
    exact = softmax_curvature_bound(p)
    assert exact == 1 - sum(x**2 for x in p)
    # The float path sums the terms in another order (no cancellation near one-hot p): a
    # few ulps apart.
    assert math.isclose(softmax_curvature_bound([float(x) for x in p]), float(exact),
                        rel_tol=1e-14)


def test_float_input_returns_a_python_float():
    assert type(softmax_curvature_bound(np.array([0.25, 0.75], dtype=np.float32))) is float


@pytest.mark.parametrize(("p", "expected"), [
    ([S.Half, S.Half, 0], S.Half),
    ([Rational(9, 10), Rational(1, 20), Rational(1, 20)], Rational(37, 200)),
    ([Rational(1, 3)] * 3, Rational(1, 3)),
    ([1, 0, 0], 0),
], ids=["two-halves", "confident", "uniform-3", "one-hot"])
def test_each_term_can_be_the_minimum(p, expected):
    # two halves: 1/2; confident: 1 - |p|^2 = 37/200 < max p; uniform: max p = 1/3 < 2/3.
    assert softmax_curvature_bound(sympy.Matrix(p)) == expected


# --- the bound against dense eigenvalues -------------------------------------------------


@st.composite
def probability_vectors(draw):
    K = draw(st.integers(2, 1000))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    kind = draw(st.sampled_from(["dirichlet", "near-one-hot", "near-uniform"]))
    if kind == "dirichlet":
        concentration = 10 ** draw(st.floats(-2, 2))
        p = rng.dirichlet(np.full(K, concentration))
    elif kind == "near-one-hot":
        epsilon = 10 ** draw(st.floats(-6, -1))
        p = epsilon * rng.dirichlet(np.ones(K))
        p[rng.integers(K)] += 1 - epsilon
    else:
        spread = 10 ** draw(st.floats(-8, -1))
        p = np.exp(spread * rng.standard_normal(K))
        p /= p.sum()
    return p


@settings(max_examples=40)
@given(probability_vectors())
def test_bound_is_above_the_dense_top_eigenvalue(p):
    bound = softmax_curvature_bound(p)
    assert 0.0 <= bound <= 0.5
    assert _dense_top_eigenvalue(p) <= bound + 1e-13


@pytest.mark.parametrize("kind", ["dirichlet", "near-one-hot", "near-uniform"])
def test_bound_for_a_thousand_classes(kind):
    rng = np.random.default_rng(1)
    p = {"dirichlet": rng.dirichlet(np.full(1000, 0.1)),
         "near-one-hot": np.full(1000, 1e-7),
         "near-uniform": np.exp(1e-4 * rng.standard_normal(1000))}[kind]
    if kind == "near-one-hot":
        p[17] = 1 - p.sum()
    p = p / p.sum()
    assert _dense_top_eigenvalue(p) <= softmax_curvature_bound(p) + 1e-13


def test_float32_softmax_of_a_thousand_classes_is_accepted():
    logits = np.random.default_rng(0).standard_normal(1000).astype(np.float32)
    p = np.exp(logits - logits.max())
    p /= p.sum()
    assert softmax_curvature_bound(p) >= _dense_top_eigenvalue(p.astype(np.float64)) - 1e-7


@pytest.mark.parametrize(("offset", "accepted"), [(0.5 * SUM_TOLERANCE, True),
                                                  (2 * SUM_TOLERANCE, False)],
                         ids=["inside-tolerance", "outside-tolerance"])
def test_sum_tolerance(offset, accepted):
    p = [0.25, 0.25, 0.25, 0.25 + offset]
    if accepted:
        assert softmax_curvature_bound(p) == pytest.approx(0.25, abs=1e-5)
    else:
        with pytest.raises(ProbabilityError, match="summing to 1 within"):
            softmax_curvature_bound(p)


# --- validation ---------------------------------------------------------------------------


@pytest.mark.parametrize(("p", "match"), [
    ([], "expected a non-empty probability vector"),
    ([0.5, float("nan"), 0.5], r"expected finite entries, got p\[1\] = nan"),
    ([0.5, float("inf")], "expected finite entries"),
    ([1.2, -0.2], r"expected non-negative entries, got p\[1\] = -0.2"),
    ([0.5, 0.4], "expected entries summing to 1"),
    (np.full((2, 2), 0.25), r"expected a one-dimensional probability vector, got an array of "
                            r"shape \(2, 2\)"),
    (sympy.ones(2, 2) / 4, "expected a one-dimensional probability vector, got a SymPy Matrix"),
    (["a", "b"], "expected real numbers or SymPy expressions, got 'a'"),
    ("ab", "expected a sequence of probabilities"),
    ([Rational(1, 2), Rational(1, 3)], "expected entries summing to 1, got sum 5/6"),
    ([Rational(3, 2), Rational(-1, 2)], r"expected non-negative entries, got p\[1\] = -1/2"),
    ([S.NaN, S.One], "expected finite entries"),
    ([sympy.I, 1 - sympy.I], "expected real entries"),
], ids=["empty", "nan", "inf", "negative", "bad-sum", "2d-array", "2d-matrix", "strings",
        "string", "exact-bad-sum", "exact-negative", "exact-nan", "complex"])
def test_invalid_probabilities_raise(p, match):
    with pytest.raises(ProbabilityError, match=f"^softmax_curvature_bound: {match}"):
        softmax_curvature_bound(p)


def test_probability_error_is_a_value_error_and_a_theory_error():
    with pytest.raises(ValueError) as info:
        softmax_curvature_bound([0.3, 0.3])
    assert isinstance(info.value, TheoryError)
    assert str(info.value).endswith(".")


def test_undecidable_symbolic_sum_is_assumed():
    a, b = sympy.symbols("a b", positive=True)
    assert softmax_curvature_bound([a, b]) == sympy.Min(S.Half, sympy.Max(a, b),
                                                        1 - a**2 - b**2)


# --- softmax covariance and the centred refinement ---------------------------------------


@pytest.mark.parametrize("K", [2, 3, 4], ids=lambda K: f"K={K}")
def test_covariance_annihilates_constants_and_is_fixed_by_centring(K):
    p = _simplex_symbols(K)
    sigma = softmax_covariance(p)
    C = centring_matrix(K)
    assert (sigma * sympy.ones(K, 1)).expand() == sympy.zeros(K, 1)
    assert (sigma * C - sigma).expand() == sympy.zeros(K, K)
    assert C * C == C and C.T == C


def test_covariance_is_the_covariance_of_the_one_hot_label():
    p = [Rational(1, 2), Rational(1, 3), Rational(1, 6)]
    one_hot = [sympy.eye(3)[:, i] for i in range(3)]
    mean = sum((pi * e for pi, e in zip(p, one_hot)), sympy.zeros(3, 1))
    second = sum((pi * e * e.T for pi, e in zip(p, one_hot)), sympy.zeros(3, 3))
    assert softmax_covariance(p) == second - mean * mean.T


def test_fisher_depends_only_on_the_centred_jacobian():
    p = _simplex_symbols(3)
    J = sympy.Matrix(3, 2, lambda i, j: Symbol(f"J{i}{j}", real=True))
    sigma = softmax_covariance(p)
    Jc = centred_jacobian(J)
    assert (J.T * sigma * J - Jc.T * sigma * Jc).expand() == sympy.zeros(2, 2)
    assert (sympy.ones(1, 3) * Jc).expand() == sympy.zeros(1, 2)


@pytest.mark.parametrize("seed", range(4), ids=lambda s: f"seed={s}")
def test_centred_bound_sits_between_the_eigenvalue_and_the_plain_bound(seed):
    rng = np.random.default_rng(seed)
    weights = rng.integers(1, 20, size=3)
    p = [Rational(int(w), int(weights.sum())) for w in weights]
    J = sympy.Matrix(rng.integers(-5, 6, size=(3, 2)).tolist())
    bound = float(centred_fisher_bound(p, J))
    p_float = np.array([float(x) for x in p])
    J_float = np.array(J.tolist(), dtype=np.float64)
    sigma = np.diag(p_float) - np.outer(p_float, p_float)
    exact = np.linalg.eigvalsh(J_float.T @ sigma @ J_float)[-1]
    plain = float(softmax_curvature_bound(p)) * np.linalg.norm(J_float, 2) ** 2
    assert exact <= bound + 1e-12
    assert bound <= plain + 1e-12


def test_centred_bound_vanishes_for_a_common_logit_shift():
    # Every logit moves by the same amount: the softmax does not change, F = 0.
    J = sympy.Matrix([[5, -2], [5, -2], [5, -2]])
    p = [Rational(1, 3)] * 3
    assert centred_fisher_bound(p, J) == 0
    assert softmax_curvature_bound(p) * max(J.singular_values())**2 == 29


def test_centred_bound_rejects_a_jacobian_with_the_wrong_number_of_rows():
    with pytest.raises(ValueError, match="expected a Jacobian with 2 rows"):
        centred_fisher_bound([S.Half, S.Half], [[1, 2, 3]])


def test_centring_matrix_rejects_non_positive_size():
    with pytest.raises(ValueError, match="centring_matrix: expected K to be an integer >= 1, "
                                         "got 0"):
        centring_matrix(0)


def test_centred_jacobian_rejects_an_empty_matrix():
    with pytest.raises(ValueError, match=r"centred_jacobian: expected a non-empty K x d matrix, "
                                         r"got shape \(0, 0\)"):
        centred_jacobian([])
