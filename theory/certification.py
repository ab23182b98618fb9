r"""Interval-arithmetic proofs of derivative bounds for activations without closed forms.

SiLU, Mish and the tanh approximation of GELU have no closed-form supremum of
:math:`|\phi'|` or :math:`|\phi''|` (the maximisers solve transcendental equations). Their
constants in :mod:`theory.activation_types` are rationals a few :math:`10^{-10}` above
the supremum, proved here: :func:`prove_derivative_bound` shows
:math:`\sup_t |\phi^{(k)}(t)| \le C` on all of :math:`\mathbb R` with mpmath interval
arithmetic (outward rounding) on :math:`[-8, 8]` and an analytic bound on the tails;
:func:`certify_activation_constant` re-derives the rational and proves it.

The tail bounds, one per activation and order, are proved in the comment above each
function below; every one is a decreasing function of :math:`|t|` on :math:`|t| \ge 8`,
so its value at 8 bounds the whole tail.
"""

from __future__ import annotations

from collections.abc import Callable

import mpmath
import sympy
from mpmath import iv
from sympy import Rational, S

from theory.activation_types import GELU_TANH_CUBIC, smooth_function
from theory.errors import CertificationError, ParameterError, UnknownOperationError

__all__ = ["prove_derivative_bound", "certify_activation_constant", "CERTIFIED_NAMES"]


def _interval_program(expressions: list[sympy.Expr], x: sympy.Symbol) -> Callable:
    """Compile expressions in exp, log, tanh and powers into an mpmath.iv evaluator.

    ``tanh(u)`` becomes ``1 - 2/(1 + exp(2u))``, where ``u`` occurs once, so that
    interval evaluation does not widen through repeated occurrences.
    """
    rewritten = [e.replace(sympy.tanh, lambda u: 1 - 2 / (1 + sympy.exp(2 * u)))
                 for e in expressions]
    replacements, reduced = sympy.cse(rewritten)

    def evaluate(e, env):
        if e in env:
            return env[e]
        if e.is_Rational:
            return iv.mpf(e.p) / e.q
        if e is S.Pi:
            return iv.pi
        if e.is_Add or e.is_Mul:
            terms = [evaluate(a, env) for a in e.args]
            total = terms[0]
            for term in terms[1:]:
                total = total + term if e.is_Add else total * term
            return total
        if e.is_Pow and e.exp.is_Integer:
            return evaluate(e.base, env) ** int(e.exp)
        if e.is_Pow and e.exp.is_Rational and e.exp.q == 2:
            return iv.sqrt(evaluate(e.base, env)) ** int(e.exp.p)
        if isinstance(e, sympy.exp):
            return iv.exp(evaluate(e.args[0], env))
        if isinstance(e, sympy.log):
            return iv.log(evaluate(e.args[0], env))
        raise CertificationError(f"_interval_program: expected exp, log, tanh, powers and "
                                 f"arithmetic, got {e}.")

    def program(value):
        env = {x: value}
        for symbol, expression in replacements:
            env[symbol] = evaluate(expression, env)
        return [evaluate(e, env) for e in reduced]

    return program


def _upper(interval) -> mpmath.mpf:
    return mpmath.mpf(interval.b)


def _lower(interval) -> mpmath.mpf:
    return mpmath.mpf(interval.a)


def _tail_silu(X):
    # t >= X >= 1: 0 < silu' = s + t s(1-s) <= 1 + t/(1+e^t) <= 1 + X e^-X (t e^-t decreasing).
    # t <= -X: |silu'| <= s(t)(1 + |t|) <= (1 + |t|) e^-|t| <= (1 + X) e^-X.
    return max(_upper(1 + X * iv.exp(-X)), _upper((1 + X) * iv.exp(-X)))


def _tail_silu_2(X):
    # silu'' = s(1-s)(2 + t(1-2s)), s = sigmoid(t); s(1-s) <= e^-|t| and |1-2s| <= 1, so
    # |silu''| <= (2 + |t|) e^-|t|, decreasing in |t| (derivative -(1 + |t|) e^-|t|).
    return _upper((2 + X) * iv.exp(-X))


def _tail_mish(X):
    # t >= X >= 1: 0 < tanh(sp) < 1 and t sech^2(sp) sigmoid <= 4 t/(1+e^t)^2 <= 4 X e^-2X.
    # t <= -X: tanh(sp) <= sp <= e^t and |t sech^2(sp) sigmoid| <= |t| e^t: (1 + X) e^-X.
    return max(_upper(1 + 4 * X * iv.exp(-2 * X)), _upper((1 + X) * iv.exp(-X)))


def _tail_mish_2(X):
    # mish'' = (1 - T^2) s (2 + t(1 - s - 2 T s)), T = tanh(sp(t)), s = sigmoid(t), both in
    # (0, 1), so |mish''| <= (1 - T^2) s (2 + 3|t|). t >= X: 1 - T^2 = sech^2(sp) <=
    # 4 e^(-2 sp) <= 4 e^(-2t) (sp >= t) and s < 1: 4 (2 + 3t) e^(-2t), decreasing.
    # t <= -X: 1 - T^2 <= 1, s <= e^t: (2 + 3|t|) e^-|t|, decreasing for |t| > 1/3.
    return max(_upper(4 * (2 + 3 * X) * iv.exp(-2 * X)), _upper((2 + 3 * X) * iv.exp(-X)))


def _gelu_tanh_constants():
    return iv.sqrt(2 / iv.pi), iv.mpf(GELU_TANH_CUBIC.p) / GELU_TANH_CUBIC.q


def _tail_gelu_tanh(X):
    # u = c(t + a t^3), c = sqrt(2/pi), a = 0.044715; g = (1 + tanh u)/2 + t c (1 + 3a t^2)
    # sech^2(u)/2. With sech^2 u <= 4 e^-2|u| the second term is at most
    # h(|t|) = 2c|t|(1 + 3a t^2) e^(-2c(|t| + a|t|^3)), decreasing for |t| >= 1 because
    # (log h)' <= 1 + sqrt(3a) - 2c < 0. t >= X: 0 <= g <= 1 + h(X).
    # t <= -X: (1 + tanh u)/2 <= e^(2u) <= e^(-2c(X + aX^3)), so |g| <= that + h(X).
    c, a = _gelu_tanh_constants()
    decay = iv.exp(-2 * c * (X + a * X**3))
    h = 2 * c * X * (1 + 3 * a * X**2) * decay
    return max(_upper(1 + h), _upper(decay + h))


def _tail_gelu_tanh_2(X):
    # g'' = sech^2(u) (u' + t/2 (u'' - 2 tanh(u) u'^2)), u' = c(1 + 3a t^2), u'' = 6act, so
    # |g''| <= 4 e^(-2c(s + a s^3)) P(s), s = |t|, P(s) = u' + s/2 (6acs + 2u'^2) a
    # polynomial of degree 5 with positive coefficients: (log P)' <= 5/s, and
    # (log of the bound)' <= 5/s - 2c(1 + 3as^2) < 0 for s >= 8 (5/8 < 2c): decreasing.
    c, a = _gelu_tanh_constants()
    slope = c * (1 + 3 * a * X**2)
    polynomial = slope + X / 2 * (6 * a * c * X + 2 * slope**2)
    return _upper(4 * iv.exp(-2 * c * (X + a * X**3)) * polynomial)


#: (activation, derivative order) -> bound on |phi^(order)| over |t| >= X
_TAILS = {("silu", 1): _tail_silu, ("mish", 1): _tail_mish,
          ("gelu_tanh", 1): _tail_gelu_tanh, ("silu", 2): _tail_silu_2,
          ("mish", 2): _tail_mish_2, ("gelu_tanh", 2): _tail_gelu_tanh_2}
_TAIL_START = 8  # a power of two: bisection of [-8, 8] stays exact in binary

#: The activations whose constants are proved here.
CERTIFIED_NAMES = ("gelu_tanh", "mish", "silu")


def _tail(function: str, name, order):
    if not isinstance(name, str) or name not in CERTIFIED_NAMES:
        raise UnknownOperationError(f"{function}: expected one of the known names "
                                    f"({', '.join(CERTIFIED_NAMES)}), got {name!r}.")
    if order not in (1, 2):
        raise ParameterError(f"{function}: expected order 1 or 2, got {order!r}.")
    return _TAILS[name, order]


def prove_derivative_bound(name: str, bound, *, order: int = 1,
                           max_pieces: int = 20000) -> bool:
    r"""Prove or refute :math:`\sup_t |\phi^{(k)}(t)| \le` ``bound`` by interval arithmetic.

    Parameters
    ----------
    name : str
        ``"silu"``, ``"mish"`` or ``"gelu_tanh"``.
    bound : sympy.Rational or int
        The claimed bound.
    order : {1, 2}, default 1
        The derivative :math:`k`: 1 for the Lipschitz constant, 2 for
        :func:`theory.second_derivative_bound`.
    max_pieces : int, optional
        Budget of subintervals before giving up.

    Returns
    -------
    bool
        ``True`` if the bound is proved on all of :math:`\mathbb R`; ``False`` if a point
        is found where :math:`|\phi^{(k)}|` provably exceeds it.

    Raises
    ------
    UnknownOperationError
        If ``name`` has no certification.
    ParameterError
        If ``bound`` is not a rational number or ``order`` is not 1 or 2.
    CertificationError
        If neither a proof nor a refutation is found within ``max_pieces`` subintervals
        (a bound within rounding distance of the supremum).

    Notes
    -----
    On :math:`|t| \ge 8` an analytic bound on :math:`|\phi^{(k)}|` (proved next to each
    tail function in the source and evaluated with outward rounding) must lie below
    ``bound``. On :math:`[-8, 8]` a bisection keeps a subinterval
    :math:`[m - r, m + r]` only while neither enclosure proves
    :math:`|\phi^{(k)}| \le` ``bound`` on it: the natural interval extension of
    :math:`\phi^{(k)}`, and the second-order centred form

    .. math::

       \phi^{(k)}(t) \in \phi^{(k)}(m) + \phi^{(k+1)}(m)[-r, r]
           + \tfrac12 \phi^{(k+2)}([m-r, m+r])\,[0, r^2],

    which is tight near the maximiser, where :math:`\phi^{(k+1)}(m) \approx 0`. All
    arithmetic is mpmath ``iv`` (outward-rounded intervals), so ``True`` is a proof.
    Cost: a few thousand interval evaluations, about a second.

    References
    ----------
    .. [1] R. E. Moore, R. B. Kearfott and M. J. Cloud, *Introduction to Interval
       Analysis*, SIAM (2009), ch. 6 (centred forms, branch and bound).

    Examples
    --------
    >>> from sympy import Rational
    >>> prove_derivative_bound("silu", Rational(11, 10))
    True
    >>> prove_derivative_bound("silu", Rational(109, 100))
    False
    >>> prove_derivative_bound("silu", Rational(51, 100), order=2)
    True
    """
    tail = _tail("prove_derivative_bound", name, order)
    bound = sympy.sympify(bound)
    if not bound.is_Rational:
        raise ParameterError(f"prove_derivative_bound: expected a rational bound, got {bound}.")
    limit = iv.mpf(bound.p) / bound.q
    core = _prove_on_core(name, order, limit, max_pieces)
    if core is False:
        return False
    if core is None or tail(iv.mpf(_TAIL_START)) > _lower(limit):
        raise CertificationError(
            f"prove_derivative_bound: expected a bound on derivative {order} of {name} that "
            f"interval arithmetic can prove or refute, got {bound}: too close to the "
            f"supremum for {max_pieces} pieces, or below the tail bound.")
    return True


def _derivatives(name: str, order: int, count: int):
    x = sympy.Symbol("x", real=True)
    phi = smooth_function(name, x)
    return x, [sympy.diff(phi, x, order + i) for i in range(count)]


def _prove_on_core(name: str, order: int, limit, max_pieces: int) -> bool | None:
    """Branch and bound on [-8, 8]: True (proved), False (refuted), None (out of budget)."""
    x, (derivative, slope, curvature) = _derivatives(name, order, 3)
    value = _interval_program([derivative], x)
    centred = _interval_program([derivative, slope, curvature], x)
    pieces = [(mpmath.mpf(-_TAIL_START), mpmath.mpf(_TAIL_START))]
    for _ in range(max_pieces):
        if not pieces:
            return True
        low, high = pieces.pop()
        whole = iv.mpf([low, high])
        if _upper(abs(value(whole)[0])) <= _lower(limit):
            continue
        middle, radius = (low + high) / 2, (high - low) / 2
        at_middle, gradient, _ = centred(iv.mpf(middle))
        bend = centred(whole)[2]
        enclosure = (at_middle + gradient * iv.mpf([-radius, radius])
                     + bend * iv.mpf([0, radius**2]) / 2)
        if _upper(abs(enclosure)) <= _lower(limit):
            continue
        if _lower(abs(at_middle)) > _upper(limit):
            return False
        pieces += [(low, middle), (middle, high)]
    return None


def certify_activation_constant(name: str, *, order: int = 1) -> sympy.Rational:
    r"""Re-derive and prove the certified bound on :math:`|\phi^{(k)}|` of an activation.

    Parameters
    ----------
    name : str
        ``"silu"``, ``"mish"`` or ``"gelu_tanh"``.
    order : {1, 2}, default 1
        1: the Lipschitz constant (:func:`theory.activation_lipschitz`); 2: the bound on
        :math:`|\phi''|` (:func:`theory.second_derivative_bound`).

    Returns
    -------
    sympy.Rational
        :math:`C = \lceil (s^* + 2\cdot 10^{-10})\, 10^{10} \rceil / 10^{10}`, where
        :math:`s^*` is the supremum of :math:`|\phi^{(k)}|` located to 30 digits (a grid
        search, then Newton's method on :math:`\phi^{(k+1)} = 0`). Hence
        :math:`s^* + 2\cdot 10^{-10} \le C \le s^* + 3 \cdot 10^{-10}`, and
        :func:`prove_derivative_bound` proves :math:`\sup |\phi^{(k)}| \le C` before it is
        returned.

    Raises
    ------
    UnknownOperationError
        If ``name`` has no certification.
    CertificationError
        If the proof fails.

    Examples
    --------
    >>> from theory import activation_lipschitz
    >>> certify_activation_constant("silu") == activation_lipschitz("silu")
    True
    """
    _tail("certify_activation_constant", name, order)
    x, (derivative, slope) = _derivatives(name, order, 2)
    value = sympy.lambdify(x, derivative, "mpmath")
    turning = sympy.lambdify(x, slope, "mpmath")
    with mpmath.workdps(30):
        grid = [mpmath.mpf(i) / 64 for i in range(-64 * _TAIL_START, 64 * _TAIL_START + 1)]
        start = max(grid, key=lambda t: abs(value(t)))
        supremum = abs(value(mpmath.findroot(turning, start)))
        scaled = int(mpmath.ceil((supremum + mpmath.mpf("2e-10")) * 10**10))
    constant = Rational(scaled, 10**10)
    if not prove_derivative_bound(name, constant, order=order):
        raise CertificationError(f"certify_activation_constant: expected a provable bound for "
                                 f"derivative {order} of {name}, got {constant} refuted.")
    return constant
