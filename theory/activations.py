r"""Exact Lipschitz constants of elementwise activations and identity-like operations.

An activation :math:`\phi` applied entrywise has a diagonal Jacobian
:math:`\operatorname{diag}(\phi'(x_i))`, so its Lipschitz constant in the Euclidean norm
is :math:`\sup_t |\phi'(t)|` (for piecewise-:math:`C^1` continuous :math:`\phi`, the
supremum over the pieces). :data:`ACTIVATIONS` maps each name of the graph vocabulary to
an :class:`Activation` holding the SymPy function, its constant and the derivation.

Three constants have no closed form: SiLU, Mish and the tanh approximation of GELU
(their maximisers solve transcendental equations). For them the constant is a rational
upper bound within :math:`10^{-9}` of the true supremum, *certified* by
:func:`certify_activation_constant`: mpmath interval arithmetic (outward rounding) on a
bounded interval and an analytic bound on the tails, see :func:`prove_derivative_bound`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

import mpmath
import sympy
from mpmath import iv
from sympy import Piecewise, Rational, S

from theory.errors import CertificationError, ParameterError, UnknownOperationError

__all__ = [
    "Activation",
    "ACTIVATIONS",
    "activation_lipschitz",
    "certify_activation_constant",
    "prove_derivative_bound",
]

_GELU_TANH_CUBIC = Rational(44715, 10**6)  # the 0.044715 of Hendrycks & Gimpel (2016)


class Activation:
    """An elementwise operation with its exact (or certified) Lipschitz constant.

    Parameters
    ----------
    name : str
        The op name in the graph vocabulary.
    function : callable
        ``function(x, **params)`` returning the SymPy expression of the operation.
    constant : callable
        ``constant(**params)`` returning the Lipschitz constant as a SymPy expression.
    derivation : str
        Why the constant is right (and, where it is not attained, how it is approached).
    defaults : mapping, optional
        Accepted parameter names and their default values.
    check : callable, optional
        ``check(params) -> str | None``: a description of what is wrong with valid-named
        parameters, or ``None``.
    any_parameters : bool, optional
        Accept and ignore any keyword (shape arguments of identity-like ops).

    Attributes
    ----------
    name, derivation, defaults
        As given.
    """

    def __init__(self, name: str, function: Callable, constant: Callable, derivation: str,
                 defaults: Mapping | None = None, check: Callable | None = None,
                 any_parameters: bool = False) -> None:
        self.name = name
        self.derivation = derivation
        self.defaults = MappingProxyType(dict(defaults or {}))
        self._function = function
        self._constant = constant
        self._check = check
        self._any_parameters = any_parameters

    def __repr__(self) -> str:
        return f"Activation({self.name!r})"

    def _parameters(self, params: dict, function: str) -> dict:
        if self._any_parameters:
            return {}
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            accepted = ", ".join(self.defaults) or "none"
            raise ParameterError(f"{function}: expected parameters of {self.name!r} among "
                                 f"({accepted}), got {unknown}.")
        merged = {**self.defaults, **params}
        for key, value in merged.items():
            if isinstance(self.defaults[key], str):
                continue
            try:
                merged[key] = sympy.sympify(value, strict=True)
            except sympy.SympifyError:
                raise ParameterError(f"{function}: expected a number or SymPy expression for "
                                     f"{key} of {self.name!r}, got {value!r}.") from None
        problem = self._check(merged) if self._check else None
        if problem:
            raise ParameterError(f"{function}: expected {problem} for {self.name!r}, "
                                 f"got {params}.")
        return merged

    def function(self, x: sympy.Symbol, **params) -> sympy.Expr:
        """The SymPy expression of the operation at the scalar ``x``."""
        caller = f"ACTIVATIONS[{self.name!r}].function"
        return self._function(x, **self._parameters(params, caller))

    def constant(self, **params) -> sympy.Expr:
        """The Lipschitz constant, :math:`\\sup_t |\\phi'(t)|`, as a SymPy expression."""
        return self._constant_for(f"ACTIVATIONS[{self.name!r}].constant", params)

    def _constant_for(self, caller: str, params: dict) -> sympy.Expr:
        return self._constant(**self._parameters(params, caller))


def _sigmoid(t):
    return 1 / (1 + sympy.exp(-t))


def _real(name: str) -> Callable:
    def check(params):
        return f"a real {name}" if params[name].is_extended_real is False else None
    return check


def _softplus_check(params):
    return "beta > 0" if params["beta"].is_positive is False else None


def _hardtanh_check(params):
    return "min_val < max_val" if (params["min_val"] < params["max_val"]) is S.false else None


def _gelu_check(params):
    return ("approximate 'none' or 'tanh'" if params["approximate"] not in ("none", "tanh")
            else None)


def _gelu_tanh(x):
    inner = sympy.sqrt(2 / sympy.pi) * (x + _GELU_TANH_CUBIC * x**3)
    return x / 2 * (1 + sympy.tanh(inner))


def _gelu(x, approximate="none"):
    if approximate == "tanh":
        return _gelu_tanh(x)
    return x / 2 * (1 + sympy.erf(x / sympy.sqrt(2)))


_GELU_EXACT = (1 + sympy.erf(1)) / 2 + sympy.exp(-1) / sympy.sqrt(sympy.pi)

# Certified by certify_activation_constant: each exceeds the true supremum by 2e-10 to 3e-10.
_CERTIFIED = {
    "silu": Rational(10998393204, 10**10),
    "mish": Rational(10884981615, 10**10),
    "gelu_tanh": Rational(11289930689, 10**10),
}

_UNIT = Rational(1)

_IDENTITY_DERIVATION = (
    "{name} is a coordinate map: it permutes, copies into a new shape, or selects entries "
    "(dropout in evaluation mode is the identity), so its Jacobian is a 0/1 matrix with "
    "orthonormal rows and norm 1 (or 0 for an empty selection). In training mode dropout "
    "rescales the kept entries by 1/(1-p); that mode is not what the Fisher bound measures.")

_ENTRIES = [
    Activation(
        "relu", lambda x: Piecewise((0, x < 0), (x, True)), lambda: _UNIT,
        "relu'(t) is 0 for t < 0 and 1 for t > 0, and relu is continuous: L = 1, attained."),
    Activation(
        "leaky_relu",
        lambda x, negative_slope: Piecewise((negative_slope * x, x < 0), (x, True)),
        lambda negative_slope: sympy.Max(1, sympy.Abs(negative_slope)),
        "Slopes a = negative_slope for t < 0 and 1 for t > 0, continuous at 0: "
        "L = max(1, |a|), attained. Valid for any real a (a > 1 or a < 0 included).",
        defaults={"negative_slope": Rational(1, 100)}, check=_real("negative_slope")),
    Activation(
        "elu",
        lambda x, alpha: Piecewise((x, x > 0), (alpha * (sympy.exp(x) - 1), True)),
        lambda alpha: sympy.Max(1, sympy.Abs(alpha)),
        "elu'(t) = 1 for t > 0 and alpha*exp(t) for t < 0, with |alpha*exp(t)| < |alpha| "
        "approached as t -> 0-; elu is continuous at 0. L = max(1, |alpha|), attained or "
        "approached.",
        defaults={"alpha": Rational(1)}, check=_real("alpha")),
    Activation(
        "tanh", sympy.tanh, lambda: _UNIT,
        "tanh' = 1 - tanh^2 lies in (0, 1], with maximum 1 at t = 0: L = 1."),
    Activation(
        "sigmoid", _sigmoid, lambda: Rational(1, 4),
        "sigmoid' = s(1 - s) with s in (0, 1); s(1 - s) <= 1/4 with equality at s = 1/2, "
        "i.e. t = 0: L = 1/4."),
    Activation(
        "softplus",
        lambda x, beta, threshold: sympy.log(1 + sympy.exp(beta * x)) / beta,
        lambda beta, threshold: _UNIT,
        "softplus'(t) = sigmoid(beta t) lies in (0, 1) and tends to 1 as t -> +oo: L = 1, "
        "approached, for every beta > 0. torch switches to the identity for beta t > "
        "threshold, a jump of log(1 + exp(-threshold))/beta (2e-9 for the default 20) "
        "that this constant ignores.",
        defaults={"beta": Rational(1), "threshold": Rational(20)}, check=_softplus_check),
    Activation(
        "gelu", _gelu,
        lambda approximate: _GELU_EXACT if approximate == "none" else _CERTIFIED["gelu_tanh"],
        "gelu(t) = t Phi(t); gelu' = Phi(t) + t phi(t), gelu'' = phi(t)(2 - t^2), so the "
        "critical points are t = +-sqrt(2). gelu'(sqrt(2)) = (1 + erf(1))/2 + exp(-1)/"
        "sqrt(pi) = 1.128904145..., gelu'(-sqrt(2)) = 1 - gelu'(sqrt(2)) = -0.1289..., and "
        "gelu' -> 1 (t -> +oo), 0 (t -> -oo). L = (1 + erf(1))/2 + exp(-1)/sqrt(pi), "
        "attained at sqrt(2). With approximate='tanh' see gelu_tanh.",
        defaults={"approximate": "none"}, check=_gelu_check),
    Activation(
        "gelu_tanh", _gelu_tanh, lambda: _CERTIFIED["gelu_tanh"],
        "g = d/dt [t/2 (1 + tanh(c(t + 0.044715 t^3)))], c = sqrt(2/pi), peaks at "
        "t = 1.41850400879... with g = 1.12899306865877...; L = 11289930689/10^10 is a "
        "certified upper bound within 3e-10 (interval arithmetic on [-8, 8], analytic "
        "tails; see prove_derivative_bound)."),
    Activation(
        "silu", lambda x: x * _sigmoid(x), lambda: _CERTIFIED["silu"],
        "silu' = s(t)(1 + t(1 - s(t))), s = sigmoid; silu'' = s(1 - s)(2 + t(1 - 2s)) "
        "vanishes at t = +-2.39935728051..., where silu' = 1.09983932012887 and "
        "-0.09983932012887; silu' -> 1, 0 at +-oo. L = 10998393204/10^10, a certified upper "
        "bound within 3e-10 (interval arithmetic on [-8, 8], analytic tails; see "
        "prove_derivative_bound)."),
    Activation(
        "hardswish",
        lambda x: Piecewise((0, x <= -3), (x, x >= 3), (x * (x + 3) / 6, True)),
        lambda: Rational(3, 2),
        "hardswish' = 0 for t < -3, (2t + 3)/6 on (-3, 3) (from -1/2 to 3/2) and 1 for "
        "t > 3; hardswish is continuous: L = 3/2, approached as t -> 3-."),
    Activation(
        "mish", lambda x: x * sympy.tanh(sympy.log(1 + sympy.exp(x))), lambda: _CERTIFIED["mish"],
        "mish' = tanh(sp(t)) + t sech^2(sp(t)) sigmoid(t), sp = softplus, peaks at "
        "t = 1.49057117948... with mish' = 1.08849816125173...; its minimum is about "
        "-0.1125 and mish' -> 1, 0 at +-oo. L = 10884981615/10^10, a certified upper bound "
        "within 3e-10 (interval arithmetic on [-8, 8], analytic tails; see "
        "prove_derivative_bound)."),
    Activation(
        "relu6", lambda x: Piecewise((0, x < 0), (6, x > 6), (x, True)), lambda: _UNIT,
        "Slopes 0, 1, 0 on the three pieces of the continuous clamp to [0, 6]: L = 1."),
    Activation(
        "hardtanh",
        lambda x, min_val, max_val: Piecewise((min_val, x < min_val), (max_val, x > max_val),
                                              (x, True)),
        lambda min_val, max_val: _UNIT,
        "Slopes 0, 1, 0 on the three pieces of the continuous clamp to [min_val, max_val]: "
        "L = 1.",
        defaults={"min_val": Rational(-1), "max_val": Rational(1)}, check=_hardtanh_check),
] + [
    Activation(name, lambda x: x, lambda: _UNIT, _IDENTITY_DERIVATION.format(name=name),
               any_parameters=True)
    for name in ("identity", "dropout", "flatten", "reshape", "permute", "select")
]

#: Registry of elementwise and identity-like operations, by graph op name.
ACTIVATIONS: Mapping[str, Activation] = MappingProxyType({a.name: a for a in _ENTRIES})


def _lookup(name, function: str, registry: Mapping) -> Activation:
    if not isinstance(name, str) or name not in registry:
        known = ", ".join(sorted(registry))
        raise UnknownOperationError(f"{function}: expected one of the known names ({known}), "
                                    f"got {name!r}.")
    return registry[name]


def activation_lipschitz(name: str, **params) -> sympy.Expr:
    r"""The Lipschitz constant :math:`\sup_t |\phi'(t)|` of an activation or identity-like op.

    Parameters
    ----------
    name : str
        A key of :data:`ACTIVATIONS`: ``relu``, ``leaky_relu`` (``negative_slope=0.01``),
        ``elu`` (``alpha=1``), ``tanh``, ``sigmoid``, ``softplus`` (``beta=1``,
        ``threshold=20``), ``gelu`` (``approximate='none'``), ``gelu_tanh``, ``silu``,
        ``hardswish``, ``mish``, ``relu6``, ``hardtanh`` (``min_val=-1``,
        ``max_val=1``), and the identity-like ``identity``, ``dropout``, ``flatten``,
        ``reshape``, ``permute``, ``select`` (which accept and ignore any keyword).
    **params
        The parameters of the activation, as numbers or SymPy expressions.

    Returns
    -------
    sympy.Expr
        Exact for every name except ``silu``, ``mish``, ``gelu_tanh`` and
        ``gelu(approximate='tanh')``, whose constants are rationals certified to lie
        within :math:`10^{-9}` above the supremum (:func:`certify_activation_constant`).
        In every case a certified Lipschitz bound in the Euclidean norm.

    Raises
    ------
    UnknownOperationError
        If ``name`` is not registered; the message lists the known names.
    ParameterError
        If a parameter name is not accepted by the activation, or a value is provably
        out of its domain (``beta <= 0``, ``min_val >= max_val``, a non-real slope).

    Notes
    -----
    The elementwise map :math:`x \mapsto (\phi(x_i))_i` has Jacobian
    :math:`\operatorname{diag}(\phi'(x_i))`, of spectral norm
    :math:`\max_i |\phi'(x_i)|`; by the mean value theorem (on each piece of a
    continuous piecewise-smooth :math:`\phi`) the Lipschitz constant is
    :math:`\sup_t |\phi'(t)|`. Each :attr:`Activation.derivation` gives the supremum.

    References
    ----------
    .. [1] K. Scaman and A. Virmaux, "Lipschitz regularity of deep neural networks:
       analysis and efficient estimation", NeurIPS 2018, arXiv:1805.10965.
    .. [2] D. Hendrycks and K. Gimpel, "Gaussian error linear units (GELUs)",
       arXiv:1606.08415 (2016).

    Examples
    --------
    >>> activation_lipschitz("sigmoid")
    1/4
    >>> activation_lipschitz("leaky_relu", negative_slope=3)
    3
    >>> activation_lipschitz("gelu")
    exp(-1)/sqrt(pi) + erf(1)/2 + 1/2
    >>> float(activation_lipschitz("silu"))
    1.0998393204
    """
    return _lookup(name, "activation_lipschitz", ACTIVATIONS)._constant_for(
        "activation_lipschitz", params)


# --- Certification by interval arithmetic -------------------------------------------------


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


def _tail_mish(X):
    # t >= X >= 1: 0 < tanh(sp) < 1 and t sech^2(sp) sigmoid <= 4 t/(1+e^t)^2 <= 4 X e^-2X.
    # t <= -X: tanh(sp) <= sp <= e^t and |t sech^2(sp) sigmoid| <= |t| e^t: (1 + X) e^-X.
    return max(_upper(1 + 4 * X * iv.exp(-2 * X)), _upper((1 + X) * iv.exp(-X)))


def _tail_gelu_tanh(X):
    # u = c(t + a t^3), c = sqrt(2/pi), a = 0.044715; g = (1 + tanh u)/2 + t c (1 + 3a t^2)
    # sech^2(u)/2. With sech^2 u <= 4 e^-2|u| the second term is at most
    # h(|t|) = 2c|t|(1 + 3a t^2) e^(-2c(|t| + a|t|^3)), decreasing for |t| >= 1 because
    # (log h)' <= 1 + sqrt(3a) - 2c < 0. t >= X: 0 <= g <= 1 + h(X).
    # t <= -X: (1 + tanh u)/2 <= e^(2u) <= e^(-2c(X + aX^3)), so |g| <= that + h(X).
    c = iv.sqrt(2 / iv.pi)
    a = iv.mpf(_GELU_TANH_CUBIC.p) / _GELU_TANH_CUBIC.q
    decay = iv.exp(-2 * c * (X + a * X**3))
    h = 2 * c * X * (1 + 3 * a * X**2) * decay
    return max(_upper(1 + h), _upper(decay + h))


_TAILS = {"silu": _tail_silu, "mish": _tail_mish, "gelu_tanh": _tail_gelu_tanh}
_TAIL_START = 8  # a power of two: bisection of [-8, 8] stays exact in binary


def prove_derivative_bound(name: str, bound, *, max_pieces: int = 20000) -> bool:
    r"""Prove or refute :math:`\sup_t |\phi'(t)| \le` ``bound`` by interval arithmetic.

    Parameters
    ----------
    name : str
        ``"silu"``, ``"mish"`` or ``"gelu_tanh"``.
    bound : sympy.Rational or int
        The claimed bound.
    max_pieces : int, optional
        Budget of subintervals before giving up.

    Returns
    -------
    bool
        ``True`` if the bound is proved on all of :math:`\mathbb R`; ``False`` if a point
        is found where :math:`|\phi'|` provably exceeds it.

    Raises
    ------
    UnknownOperationError
        If ``name`` has no certification.
    ParameterError
        If ``bound`` is not a rational number.
    CertificationError
        If neither a proof nor a refutation is found within ``max_pieces`` subintervals
        (a bound within rounding distance of the supremum).

    Notes
    -----
    On :math:`|t| \ge 8` an analytic bound on :math:`|\phi'|` (written next to each tail
    function in the source and evaluated with outward rounding) must lie below
    ``bound``. On :math:`[-8, 8]` a bisection keeps a subinterval
    :math:`[m - r, m + r]` only while neither enclosure proves
    :math:`|\phi'| \le` ``bound`` on it: the natural interval extension of
    :math:`\phi'`, and the second-order centred form

    .. math::

       \phi'(t) \in \phi'(m) + \phi''(m)[-r, r] + \tfrac12 \phi'''([m-r, m+r])\,[0, r^2],

    which is tight near the maximiser, where :math:`\phi''(m) \approx 0`. All arithmetic
    is mpmath ``iv`` (outward-rounded intervals), so ``True`` is a proof.

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
    """
    tail = _lookup(name, "prove_derivative_bound", _TAILS)
    bound = sympy.sympify(bound)
    if not bound.is_Rational:
        raise ParameterError(f"prove_derivative_bound: expected a rational bound, got {bound}.")
    limit = iv.mpf(bound.p) / bound.q
    core = _prove_on_core(name, limit, max_pieces)
    if core is False:
        return False
    if core is None or tail(iv.mpf(_TAIL_START)) > _lower(limit):
        raise CertificationError(
            f"prove_derivative_bound: expected a bound on the derivative of {name} that "
            f"interval arithmetic can prove or refute, got {bound}: too close to the "
            f"supremum for {max_pieces} pieces, or below the tail bound.")
    return True


def _prove_on_core(name: str, limit, max_pieces: int) -> bool | None:
    """Branch and bound on [-8, 8]: True (proved), False (refuted), None (out of budget)."""
    x = sympy.Symbol("x", real=True)
    derivative = sympy.diff(ACTIVATIONS[name].function(x), x)
    value = _interval_program([derivative], x)
    centred = _interval_program([derivative, sympy.diff(derivative, x),
                                 sympy.diff(derivative, x, 2)], x)
    pieces = [(mpmath.mpf(-_TAIL_START), mpmath.mpf(_TAIL_START))]
    for _ in range(max_pieces):
        if not pieces:
            return True
        low, high = pieces.pop()
        whole = iv.mpf([low, high])
        if _upper(abs(value(whole)[0])) <= _lower(limit):
            continue
        middle, radius = (low + high) / 2, (high - low) / 2
        at_middle, slope, _ = centred(iv.mpf(middle))
        curvature = centred(whole)[2]
        enclosure = (at_middle + slope * iv.mpf([-radius, radius])
                     + curvature * iv.mpf([0, radius**2]) / 2)
        if _upper(abs(enclosure)) <= _lower(limit):
            continue
        if _lower(abs(at_middle)) > _upper(limit):
            return False
        pieces += [(low, middle), (middle, high)]
    return None


def certify_activation_constant(name: str) -> sympy.Rational:
    r"""Re-derive and prove the certified constant of ``silu``, ``mish`` or ``gelu_tanh``.

    Parameters
    ----------
    name : str
        ``"silu"``, ``"mish"`` or ``"gelu_tanh"``.

    Returns
    -------
    sympy.Rational
        :math:`C = \lceil (s^* + 2\cdot 10^{-10})\, 10^{10} \rceil / 10^{10}`, where
        :math:`s^*` is the supremum of :math:`|\phi'|` located to 30 digits (a grid
        search, then Newton's method on :math:`\phi'' = 0`). Hence
        :math:`s^* + 2\cdot 10^{-10} \le C \le s^* + 3 \cdot 10^{-10}`, and
        :func:`prove_derivative_bound` proves :math:`\sup |\phi'| \le C` before it is
        returned. :func:`activation_lipschitz` returns the same value.

    Raises
    ------
    UnknownOperationError
        If ``name`` has no certification.
    CertificationError
        If the proof fails.

    Examples
    --------
    >>> certify_activation_constant("silu") == activation_lipschitz("silu")
    True
    """
    _lookup(name, "certify_activation_constant", _TAILS)
    x = sympy.Symbol("x", real=True)
    derivative = sympy.diff(ACTIVATIONS[name].function(x), x)
    slope = sympy.lambdify(x, derivative, "mpmath")
    curvature = sympy.lambdify(x, sympy.diff(derivative, x), "mpmath")
    with mpmath.workdps(30):
        grid = [mpmath.mpf(i) / 64 for i in range(-64 * _TAIL_START, 64 * _TAIL_START + 1)]
        start = max(grid, key=lambda t: abs(slope(t)))
        supremum = abs(slope(mpmath.findroot(curvature, start)))
        scaled = int(mpmath.ceil((supremum + mpmath.mpf("2e-10")) * 10**10))
    constant = Rational(scaled, 10**10)
    if not prove_derivative_bound(name, constant):
        raise CertificationError(f"certify_activation_constant: expected a provable bound for "
                                 f"{name}, got {constant} refuted.")
    return constant
