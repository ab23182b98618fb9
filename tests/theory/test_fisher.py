"""Fisher identities and the second-order KL expansion, proved exactly for K = 2..4."""

import dataclasses

import mpmath
import numpy as np
import pytest
import sympy
from sympy import Rational

from theory import (
    ParameterError,
    fisher_identities,
    fisher_information,
    kl_second_order,
)

CLASS_COUNTS = pytest.mark.parametrize("K", [2, 3, 4], ids=lambda K: f"K={K}")


@CLASS_COUNTS
def test_expectation_sandwich_and_score_covariance_coincide(K):
    identities = fisher_identities(K, 2)
    assert identities.expectation.shape == identities.sandwich.shape == (2, 2)
    assert len(identities.scores) == K
    assert identities.prove()


@CLASS_COUNTS
def test_kl_expansion_starts_with_half_the_fisher_quadratic_form(K):
    assert kl_second_order(K, 2).prove()


def test_proof_rejects_a_wrong_fisher_matrix():
    identities = fisher_identities(3, 2)
    p, J = identities.p, identities.J
    without_outer_product = dataclasses.replace(identities, sandwich=J.T * sympy.diag(*p) * J)
    assert not without_outer_product.prove()


def test_proof_rejects_a_wrong_quadratic_form():
    expansion = kl_second_order(3, 2)
    doubled = dataclasses.replace(expansion, quadratic_form=2 * expansion.quadratic_form)
    assert not doubled.prove()


def _numeric_point(K, d, seed):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(K), rng.standard_normal((K, d)), rng.standard_normal(d)


@pytest.mark.parametrize("seed", range(3), ids=lambda s: f"seed={s}")
def test_expectation_matches_dense_float_reference(seed):
    K, d = 3, 2
    identities = fisher_identities(K, d)
    z, J, _ = _numeric_point(K, d, seed)
    values = {**dict(zip(identities.logits, z)), **dict(zip(identities.J, J.ravel()))}
    expectation = np.array(identities.expectation.subs(values).evalf(), dtype=np.float64)
    p = np.exp(z - z.max())
    p /= p.sum()
    scores = [J.T @ (np.eye(K)[y] - p) for y in range(K)]
    reference = sum(p[y] * np.outer(scores[y], scores[y]) for y in range(K))
    np.testing.assert_allclose(expectation, reference, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(reference, J.T @ (np.diag(p) - np.outer(p, p)) @ J,
                               rtol=1e-12, atol=1e-14)


def test_kl_remainder_is_third_order():
    K, d = 3, 2
    expansion = kl_second_order(K, d)
    z, J, delta = _numeric_point(K, d, seed=7)
    values = {**dict(zip(expansion.logits, z)), **dict(zip(expansion.J, J.ravel()))}
    kl = sympy.lambdify(list(expansion.delta), expansion.kl.subs(values), "mpmath")
    quadratic = sympy.lambdify(list(expansion.delta), expansion.quadratic_form.subs(values),
                               "mpmath")
    with mpmath.workdps(50):
        remainders = []
        for scale in (mpmath.mpf("1e-2"), mpmath.mpf("1e-3")):
            step = [scale * mpmath.mpf(float(v)) for v in delta]
            remainders.append(abs(kl(*step) - quadratic(*step)) / scale**3)
        # The scaled remainder settles on the cubic coefficient: O(|delta|^3), not larger.
        assert remainders[1] == pytest.approx(float(remainders[0]), rel=0.05)
        assert remainders[1] > 0


def test_fisher_information_of_explicit_numbers():
    p = [Rational(1, 2), Rational(1, 3), Rational(1, 6)]
    J = sympy.Matrix([[1, 2], [0, -1], [3, 1]])
    F = fisher_information(p, J)
    sigma = sympy.diag(*p) - sympy.Matrix(p) * sympy.Matrix(p).T
    assert F == J.T * sigma * J
    assert F.rank() <= len(p) - 1


def test_fisher_information_has_rank_at_most_K_minus_one():
    F = fisher_information([Rational(1, 4), Rational(3, 4)], sympy.Matrix([[1, 2, 3],
                                                                          [4, 5, 7]]))
    assert F.rank() == 1


@pytest.mark.parametrize(("function", "K", "d", "match"), [
    (fisher_identities, 1, 2, "fisher_identities: expected the number of classes K to be an "
                              "integer >= 2, got 1"),
    (fisher_identities, 3, 0, "fisher_identities: expected the input dimension d to be an "
                              "integer >= 1, got 0"),
    (kl_second_order, 2.0, 1, "kl_second_order: expected the number of classes K to be an "
                              "integer >= 2, got 2.0"),
    (kl_second_order, 2, True, "kl_second_order: expected the input dimension d to be an "
                               "integer >= 1, got True"),
], ids=["identities-K", "identities-d", "kl-K", "kl-d"])
def test_invalid_sizes_raise(function, K, d, match):
    with pytest.raises(ParameterError, match=match):
        function(K, d)


def test_fisher_information_rejects_mismatched_jacobian():
    with pytest.raises(ParameterError, match="expected a Jacobian with 2 rows"):
        fisher_information([Rational(1, 2), Rational(1, 2)], [[1, 2]])
