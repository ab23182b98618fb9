"""SymPy-level tests of theory.transformer: closed forms, the derivations behind them,
monotonicity, and validation. The float64 soundness sweep against exact torch Jacobians
lives in tests/integration/test_transformer_constants.py."""

import random

import pytest
import sympy
from hypothesis import given
from hypothesis import strategies as st

from theory.errors import ParameterError, TheoryError
from theory.attention import (
    attention_head_lipschitz,
    attention_head_local_lipschitz,
    multihead_attention_lipschitz,
    pre_ln_attention_lipschitz,
)
from theory.layernorm import layernorm_lipschitz, layernorm_local_lipschitz, layernorm_output_radius

R, N, d, D = sympy.symbols("R N d D", positive=True)
N_int, D_int = sympy.symbols("N D", positive=True, integer=True)
gamma, beta, eps, var = sympy.symbols("gamma beta epsilon v", positive=True)
wq, wk, wv, wo, bq, qk = sympy.symbols("w_q w_k w_v w_o b_q m", positive=True)


def _head_formula(radius, seq_len, head_dim, wq, wk, wv, bq, qk=None):
    """The global head bound as written in the docstring."""
    qk = wq * wk if qk is None else qk
    return wv * sympy.sqrt(seq_len) + radius * wv / sympy.sqrt(head_dim) * (
        radius * qk + (radius * qk + wk * bq) * sympy.sqrt(seq_len))


# --------------------------------------------------------------------------- closed forms


def test_layernorm_closed_forms():
    assert layernorm_lipschitz(gamma, eps) == gamma / sympy.sqrt(eps)
    assert layernorm_local_lipschitz(gamma, var, eps) == gamma / sympy.sqrt(var + eps)
    assert layernorm_output_radius(gamma, beta, D_int) == gamma * sympy.sqrt(D_int) + beta
    assert layernorm_lipschitz(2, sympy.Rational(1, 100)) == 20
    assert layernorm_local_lipschitz(1, 0, 4) == layernorm_lipschitz(1, 4) == sympy.Rational(1, 2)


def test_layernorm_local_form_at_zero_variance_is_the_global_constant():
    assert sympy.simplify(layernorm_local_lipschitz(gamma, 0, eps)
                          - layernorm_lipschitz(gamma, eps)) == 0


def test_attention_head_closed_form():
    derived = attention_head_lipschitz(R, N_int, d, wq, wk, wv, bq)
    assert sympy.simplify(derived - _head_formula(R, N_int, d, wq, wk, wv, bq)) == 0
    with_qk = attention_head_lipschitz(R, N_int, d, wq, wk, wv, bq, qk_norm=qk)
    assert sympy.simplify(with_qk - _head_formula(R, N_int, d, wq, wk, wv, bq, qk)) == 0
    assert attention_head_lipschitz(1, 4, 4, 1, 1, 1) == sympy.Rational(7, 2)


def test_key_and_value_biases_do_not_enter_the_head_bound():
    base = attention_head_lipschitz(R, N_int, d, wq, wk, wv, bq)
    assert attention_head_lipschitz(R, N_int, d, wq, wk, wv, bq, 5, 7) == base


def test_head_bound_at_zero_radius_is_the_value_path():
    """At R = 0 only T1 remains: ||W_v|| sqrt(N)."""
    assert attention_head_lipschitz(0, N_int, d, wq, wk, wv, bq) == wv * sympy.sqrt(N_int)


def test_local_form_without_measurements_is_the_global_form():
    local = attention_head_local_lipschitz(R, N_int, d, wq, wk, wv, bq, qk_norm=qk)
    assert sympy.simplify(local - attention_head_lipschitz(R, N_int, d, wq, wk, wv, bq,
                                                           qk_norm=qk)) == 0


def test_local_form_with_measurements():
    p2, c, sx, sv, g = sympy.symbols("p c s_x s_v g", positive=True)
    local = attention_head_local_lipschitz(R, N_int, d, wq, wk, wv, bq, qk_norm=qk,
                                           attention_norm=p2, attention_column_sum=c,
                                           token_spread=sx, value_spread=sv, query_key_norm=g)
    expected = p2 * wv + sv * (sx * qk + g * sympy.sqrt(c)) / sympy.sqrt(d)
    assert sympy.simplify(local - expected) == 0
    # defaults chain: ||P|| <= sqrt(c), s_v <= s_x ||W_v||
    chained = attention_head_local_lipschitz(R, N_int, d, wq, wk, wv, bq, qk_norm=qk,
                                             attention_column_sum=c, token_spread=sx)
    assert sympy.simplify(chained - (sympy.sqrt(c) * wv + sx * wv * (
        sx * qk + (R * qk + wk * bq) * sympy.sqrt(c)) / sympy.sqrt(d))) == 0


def test_sharp_softmax_local_bound_is_the_value_norm():
    """One-hot attention on distinct tokens: P a permutation, no spread -> ||W_v||."""
    assert attention_head_local_lipschitz(R, N_int, d, wq, wk, wv, bq, attention_norm=1,
                                          attention_column_sum=1, token_spread=0) == wv


def test_multihead_and_pre_ln_closed_forms():
    L1, L2 = sympy.symbols("L_1 L_2", positive=True)
    assert multihead_attention_lipschitz([L1, L2], wo) == wo * sympy.sqrt(L1**2 + L2**2)
    assert multihead_attention_lipschitz([3, 4], 2) == 10
    head = {"head_dim": d, "wq_norm": wq, "wk_norm": wk, "wv_norm": wv, "bq_norm": bq}
    radius = gamma * sympy.sqrt(D_int) + beta
    head_constant = _head_formula(radius, N_int, d, wq, wk, wv, bq)
    expected = 1 + gamma / sympy.sqrt(eps) * wo * sympy.sqrt(2 * head_constant**2)
    block = pre_ln_attention_lipschitz(gamma, beta, eps, D_int, N_int, [head, head], wo)
    assert sympy.simplify(block - expected) == 0
    without = pre_ln_attention_lipschitz(gamma, beta, eps, D_int, N_int, [head, head], wo,
                                         residual=False)
    assert sympy.simplify(block - without - 1) == 0


# --------------------------------------------------------------------------- derivations


def test_layernorm_jacobian_matches_the_proof():
    """SymPy differentiates LN for D = 3 and finds diag(gamma)(P - y y^T / D) / sigma."""
    dim = 3
    x = sympy.Matrix(sympy.symbols("x0:3", real=True))
    g = sympy.Matrix(sympy.symbols("g0:3", real=True))
    mean = sum(x) / dim
    centred = x - mean * sympy.ones(dim, 1)
    variance = (centred.T * centred)[0] / dim
    sigma = sympy.sqrt(variance + eps)
    layernorm = sympy.diag(*g) * centred / sigma
    y = centred / sigma
    projector = sympy.eye(dim) - sympy.ones(dim, dim) / dim
    middle = projector - y * y.T / dim
    claimed = sympy.diag(*g) * middle / sigma
    assert sympy.simplify(layernorm.jacobian(x) - claimed) == sympy.zeros(dim, dim)
    # eigen-structure behind ||M|| <= 1: M 1 = 0, M y = (1 - |y|^2/D) y, M w = w (w ⊥ 1, y)
    y_norm2 = (y.T * y)[0]
    assert sympy.simplify(middle * sympy.ones(dim, 1)) == sympy.zeros(dim, 1)
    assert sympy.simplify(middle * y - (1 - y_norm2 / dim) * y) == sympy.zeros(dim, 1)
    w = sympy.ones(dim, 1).cross(y)
    assert sympy.simplify(middle * w - w) == sympy.zeros(dim, 1)
    # the y-eigenvalue is eps / (var + eps), in (0, 1]; |y|^2 = D var / (var + eps) < D
    assert sympy.simplify(1 - y_norm2 / dim - eps / (variance + eps)) == 0


def _softmax(row):
    exps = [sympy.exp(a) for a in row]
    return [e / sum(exps) for e in exps]


def test_attention_differential_matches_the_proof():
    """dy_i = P_i dX W_v + V^T Sigma_i dA_i, with
    dA_ij = ((dx_i W_q) . k_j + q_i . (dx_j W_k)) / sqrt(d), checked against SymPy's own
    Jacobian at a random rational point for N = 3 tokens, D = 2, head and value dim 2."""
    rng = random.Random(0)
    n, dim, head_dim = 3, 2, 2

    def rational_matrix(rows, cols):
        return sympy.Matrix(rows, cols, lambda *_: sympy.Rational(rng.randint(-9, 9),
                                                                  rng.randint(1, 5)))

    x = sympy.Matrix(n, dim, sympy.symbols(f"x0:{n * dim}", real=True))
    w_q, w_k, w_v = (rational_matrix(dim, head_dim) for _ in range(3))
    b_q, b_k, b_v = (rational_matrix(1, head_dim) for _ in range(3))
    ones = sympy.ones(n, 1)
    scale = 1 / sympy.sqrt(head_dim)
    queries, keys, values = x * w_q + ones * b_q, x * w_k + ones * b_k, x * w_v + ones * b_v
    scores = queries * keys.T * scale
    attention = sympy.Matrix([_softmax(scores.row(i)) for i in range(n)])
    point = dict(zip(x, rational_matrix(n, dim)))
    jacobian = (attention * values).reshape(n * head_dim, 1).jacobian(list(x))
    jacobian = jacobian.subs(point).evalf(40)
    at = {name: m.subs(point).evalf(40) for name, m in
          (("P", attention), ("Q", queries), ("K", keys), ("V", values))}
    for column in range(n * dim):
        dx = sympy.Matrix(n, dim, lambda r, c: int(r * dim + c == column))
        for i in range(n):
            p_i = at["P"].row(i)
            sigma = sympy.diag(*p_i) - p_i.T * p_i
            d_scores = sympy.Matrix([((dx.row(i) * w_q).dot(at["K"].row(j))
                                      + at["Q"].row(i).dot(dx.row(j) * w_k)) * scale
                                     for j in range(n)])
            predicted = p_i * dx * w_v + (at["V"].T * sigma * d_scores).T
            for e in range(head_dim):
                assert abs(jacobian[i * head_dim + e, column] - predicted[e]) < 1e-30


def test_covariance_identity_of_the_softmax_term():
    """u^T V^T Sigma_p a = Cov_{j~p}(V u, a) for a probability vector p."""
    p = sympy.Matrix(sympy.symbols("p0:3", positive=True))
    f = sympy.Matrix(sympy.symbols("f0:3", real=True))
    a = sympy.Matrix(sympy.symbols("a0:3", real=True))
    sigma = sympy.diag(*p) - p * p.T
    mean = lambda z: sum(p[j] * z[j] for j in range(3))  # noqa: E731
    covariance = mean([f[j] * a[j] for j in range(3)]) - mean(f) * mean(a)
    assert sympy.expand((f.T * sigma * a)[0] - covariance) == 0


# --------------------------------------------------------------------------- monotonicity


@pytest.mark.parametrize("symbol", [R, N, wq, wk, wv, bq], ids=str)
def test_head_bound_increases_with_radius_length_and_norms(symbol):
    expr = attention_head_lipschitz(R, N, d, wq, wk, wv, bq)
    assert sympy.diff(expr, symbol).is_nonnegative


def test_head_bound_decreases_with_head_dim_and_layernorm_with_eps_and_variance():
    assert sympy.diff(attention_head_lipschitz(R, N, d, wq, wk, wv, bq), d).is_nonpositive
    assert sympy.diff(layernorm_lipschitz(gamma, eps), eps).is_negative
    assert sympy.diff(layernorm_local_lipschitz(gamma, var, eps), var).is_negative
    assert sympy.diff(layernorm_output_radius(gamma, beta, D), D).is_positive


positive = st.floats(min_value=1e-6, max_value=1e3, allow_nan=False)
fraction = st.floats(min_value=0.0, max_value=1.0)


@given(radius=positive, seq_len=st.integers(1, 64), head_dim=st.integers(1, 64),
       norms=st.tuples(positive, positive, positive, positive),
       shrink=st.tuples(fraction, fraction, fraction, fraction, fraction, fraction))
def test_measured_values_within_their_a_priori_bounds_never_raise_the_bound(
        radius, seq_len, head_dim, norms, shrink):
    w_q, w_k, w_v, b_q = norms
    column_sum = 1 + shrink[0] * (seq_len - 1)  # c in [1, N]
    measured = {
        "qk_norm": shrink[1] * w_q * w_k,
        "attention_column_sum": column_sum,
        "attention_norm": shrink[2] * column_sum**0.5,
        "token_spread": shrink[3] * radius,
        "value_spread": shrink[4] * shrink[3] * radius * w_v,
        "query_key_norm": shrink[5] * (radius * shrink[1] * w_q * w_k + w_k * b_q),
    }
    local = attention_head_local_lipschitz(radius, seq_len, head_dim, w_q, w_k, w_v, b_q,
                                           **measured)
    worst = attention_head_lipschitz(radius, seq_len, head_dim, w_q, w_k, w_v, b_q)
    assert float(local) <= float(worst) * (1 + 1e-12)


@given(constants=st.lists(positive, min_size=1, max_size=8), wo_norm=positive)
def test_multihead_bound_lies_between_the_largest_head_and_the_sum(constants, wo_norm):
    value = float(multihead_attention_lipschitz(constants, wo_norm))
    assert wo_norm * max(constants) * (1 - 1e-12) <= value
    assert value <= wo_norm * sum(constants) * (1 + 1e-12)


def test_plain_numbers_give_sympy_results_and_integer_floats_count():
    value = attention_head_lipschitz(1.0, 3.0, 4, 2.0, 1.0, 1.0, 0.5)
    assert isinstance(value, sympy.Expr)
    assert sympy.simplify(value - attention_head_lipschitz(1.0, 3, 4, 2.0, 1.0, 1.0, 0.5)) == 0
    assert layernorm_output_radius(1, 0, 16.0) == 4
    assert float(layernorm_lipschitz(1.0, 1e-5)) == pytest.approx(316.2277660168)


def test_symbols_without_sign_assumptions_are_accepted():
    x = sympy.Symbol("x")
    assert layernorm_lipschitz(x, eps) == x / sympy.sqrt(eps)
    assert attention_head_lipschitz(x, N_int, d, 1, 1, 1).has(x)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(("call", "match"), [
    (lambda: layernorm_lipschitz(1, 0), r"layernorm_lipschitz: expected eps > 0, got 0"),
    (lambda: layernorm_lipschitz(1, -1e-5), r"expected eps > 0"),
    (lambda: layernorm_lipschitz(1, -eps), r"expected eps > 0"),
    (lambda: layernorm_lipschitz(-1, 1), r"expected gamma_abs_max >= 0, got -1"),
    (lambda: layernorm_local_lipschitz(1, -1, 1), r"expected variance >= 0"),
    (lambda: layernorm_local_lipschitz(1, 0, 0), r"expected variance \+ eps > 0"),
    (lambda: layernorm_output_radius(1, -2, 4), r"expected beta_norm >= 0"),
    (lambda: layernorm_output_radius(1, 0, 0), r"expected dim to be an integer >= 1, got 0"),
    (lambda: layernorm_output_radius(1, 0, 2.5), r"expected dim to be an integer >= 1"),
    (lambda: attention_head_lipschitz(1, 0, 4, 1, 1, 1), r"expected seq_len to be an integer"),
    (lambda: attention_head_lipschitz(1, -N, 4, 1, 1, 1), r"expected seq_len to be an integer"),
    (lambda: attention_head_lipschitz(1, 1.5, 4, 1, 1, 1), r"expected seq_len to be an integer"),
    (lambda: attention_head_lipschitz(-1, 2, 4, 1, 1, 1), r"expected radius >= 0"),
    (lambda: attention_head_lipschitz(1, 2, 0, 1, 1, 1), r"expected head_dim > 0"),
    (lambda: attention_head_lipschitz(1, 2, 4, -1, 1, 1), r"expected wq_norm >= 0"),
    (lambda: attention_head_lipschitz(1, 2, 4, 1, -wk, 1), r"expected wk_norm >= 0"),
    (lambda: attention_head_lipschitz(1, 2, 4, 1, 1, -1), r"expected wv_norm >= 0"),
    (lambda: attention_head_lipschitz(1, 2, 4, 1, 1, 1, -1), r"expected bq_norm >= 0"),
    (lambda: attention_head_lipschitz(1, 2, 4, 1, 1, 1, 0, -1), r"expected bk_norm >= 0"),
    (lambda: attention_head_lipschitz(1, 2, 4, 1, 1, 1, qk_norm=-1), r"expected qk_norm >= 0"),
    (lambda: attention_head_lipschitz(float("nan"), 2, 4, 1, 1, 1), r"finite real number"),
    (lambda: attention_head_lipschitz(sympy.oo, 2, 4, 1, 1, 1), r"finite real number"),
    (lambda: attention_head_lipschitz(sympy.I, 2, 4, 1, 1, 1), r"finite real number"),
    (lambda: attention_head_lipschitz("1", 2, 4, 1, 1, 1), r"real number or SymPy expression"),
    (lambda: attention_head_local_lipschitz(1, 2, 4, 1, 1, 1, token_spread=-1),
     r"attention_head_local_lipschitz: expected token_spread >= 0"),
    (lambda: multihead_attention_lipschitz([], 1), r"expected at least one head constant"),
    (lambda: multihead_attention_lipschitz([1, -2], 1), r"expected head_constants\[1\] >= 0"),
    (lambda: multihead_attention_lipschitz([1], -1), r"expected wo_norm >= 0"),
    (lambda: pre_ln_attention_lipschitz(1, 0, 1, 4, 2, [], 1), r"expected at least one head"),
    (lambda: pre_ln_attention_lipschitz(1, 0, 1, 4, 2, [{"head_dim": 4}], 1),
     r"expected heads\[0\] to be a mapping with keys"),
    (lambda: pre_ln_attention_lipschitz(
        1, 0, 1, 4, 2, [{"head_dim": 4, "wq_norm": 1, "wk_norm": 1, "wv_norm": 1,
                         "radius": 3}], 1), r"expected heads\[0\]"),
    (lambda: pre_ln_attention_lipschitz(
        1, 0, 0, 4, 2, [{"head_dim": 4, "wq_norm": 1, "wk_norm": 1, "wv_norm": 1}], 1),
     r"expected eps > 0"),
], ids=lambda value: value if isinstance(value, str) else "")
def test_out_of_domain_arguments_raise(call, match):
    with pytest.raises(ParameterError, match=match) as info:
        call()
    assert isinstance(info.value, TheoryError)
    assert isinstance(info.value, ValueError)
