r"""The concrete elementwise operations: each function, its constants, their proofs.

Every entry of :data:`ENTRIES` is an :class:`~theory.elementwise.Activation` with
:math:`\sup|\phi'|` (the Lipschitz constant), :math:`\sup|\phi''|` over the smooth pieces,
the proof of each on the stated parameter domain, and a check that refuses parameters
outside it. Parameters are those of ``torch.nn.functional``. Three first-derivative and
three second-derivative constants have no closed form (SiLU, Mish, the tanh
approximation of GELU); they are rationals at most :math:`3\cdot 10^{-10}` above the
supremum, proved by :mod:`theory.certification`.
"""

from __future__ import annotations

import sympy
from sympy import Piecewise, Rational

from theory.elementwise import Activation
from theory.errors import ParameterError
from theory.validation import describe

__all__ = ["ENTRIES", "GELU_TANH_CUBIC", "SELU_ALPHA", "SELU_SCALE", "smooth_function"]

GELU_TANH_CUBIC = Rational(44715, 10**6)  # the 0.044715 of Hendrycks & Gimpel (2016)
#: The constants of SELU as torch writes them (Klambauer et al. 2017).
SELU_ALPHA = Rational("1.6732632423543772848170429916717")
SELU_SCALE = Rational("1.0507009873554804934193349852946")

_ONE, _ZERO = Rational(1), Rational(0)
_GELU_EXACT = (1 + sympy.erf(1)) / 2 + sympy.exp(-1) / sympy.sqrt(sympy.pi)
_TANH_CURVATURE = 4 * sympy.sqrt(3) / 9  # sup |d^2/dt^2 tanh| = 4/(3 sqrt 3)

# Certified by theory.certification.certify_activation_constant (order 1 and order 2):
# each exceeds the true supremum by 2e-10 to 3e-10.
_CERTIFIED = {
    ("silu", 1): Rational(10998393204, 10**10),
    ("mish", 1): Rational(10884981615, 10**10),
    ("gelu_tanh", 1): Rational(11289930689, 10**10),
    ("silu", 2): Rational(5000000002, 10**10),
    ("mish", 2): Rational(6442046375, 10**10),
    ("gelu_tanh", 2): Rational(7978845611, 10**10),
}


def _sigmoid(t):
    return 1 / (1 + sympy.exp(-t))


def _gelu_tanh(x):
    inner = sympy.sqrt(2 / sympy.pi) * (x + GELU_TANH_CUBIC * x**3)
    return x / 2 * (1 + sympy.tanh(inner))


def _gelu(x, approximate="none"):
    if approximate == "tanh":
        return _gelu_tanh(x)
    return x / 2 * (1 + sympy.erf(x / sympy.sqrt(2)))


_SMOOTH = {"silu": lambda x: x * _sigmoid(x), "gelu_tanh": _gelu_tanh,
           "mish": lambda x: x * sympy.tanh(sympy.log(1 + sympy.exp(x)))}


def smooth_function(name: str, x: sympy.Symbol) -> sympy.Expr:
    """The SymPy expression of ``silu``, ``mish`` or ``gelu_tanh`` at ``x``."""
    return _SMOOTH[name](x)


def _elu(x, alpha, scale, input_scale):
    return Piecewise((scale * x, x > 0), (scale * alpha * (sympy.exp(input_scale * x) - 1),
                                          True))


# --------------------------------------------------------------------------- domain checks


def _refuse(label: str, name: str, value, why: str):
    raise ParameterError(f"{label}: expected {why}, got {name}={describe(value)}.")


def _check_elu(label, params):
    if params["input_scale"].is_negative:
        _refuse(label, "input_scale", params["input_scale"],
                "input_scale >= 0 (for input_scale < 0 the negative piece "
                "scale*alpha*exp(input_scale*x) grows without bound as x -> -oo: no global "
                "constant)")


def _check_celu(label, params):
    alpha = params["alpha"]
    if alpha.is_zero:
        _refuse(label, "alpha", alpha, "alpha > 0 (celu divides by alpha)")
    if alpha.is_negative:
        _refuse(label, "alpha", alpha, "alpha > 0 (for alpha < 0, exp(x/alpha) grows without "
                                       "bound as x -> -oo: no global constant)")


def _check_softplus(label, params):
    if params["beta"].is_nonpositive:
        _refuse(label, "beta", params["beta"], "beta > 0")


def _check_hardtanh(label, params):
    if (params["max_val"] - params["min_val"]).is_negative:
        raise ParameterError(f"{label}: expected min_val <= max_val, got "
                             f"min_val={params['min_val']}, max_val={params['max_val']}.")


def _check_gelu(label, params):
    if params["approximate"] not in ("none", "tanh"):
        _refuse(label, "approximate", params["approximate"], "approximate 'none' or 'tanh'")


def _elu_constant(alpha, scale, input_scale):
    return sympy.Abs(scale) * sympy.Max(1, sympy.Abs(alpha * input_scale))


_IDENTITY_DERIVATION = (
    "{name} is a coordinate map: it permutes, copies into a new shape, or selects entries "
    "(dropout in evaluation mode is the identity), so its Jacobian is a 0/1 matrix with "
    "orthonormal rows and norm 1 (or 0 for an empty selection). In training mode dropout "
    "rescales the kept entries by 1/(1-p); that mode is not what the Fisher bound measures.")
_LINEAR_PIECES = "piecewise linear: phi'' = 0 on every piece."
_CERTIFIED_TEXT = ("a certified upper bound within 3e-10 of the supremum (interval "
                   "arithmetic on [-8, 8], analytic tails: theory.certification)")


def _certified(name: str, derivation: str, curvature_derivation: str) -> Activation:
    """The parameterless smooth ``name`` of ``_SMOOTH`` with its two certified constants
    (``_CERTIFIED[name, 1]`` and ``[name, 2]``); each derivation text is completed with
    ``_CERTIFIED_TEXT`` and a full stop."""
    return Activation(name, _SMOOTH[name], lambda: _CERTIFIED[name, 1],
                      f"{derivation}{_CERTIFIED_TEXT}.",
                      curvature=lambda: _CERTIFIED[name, 2],
                      curvature_derivation=f"{curvature_derivation}{_CERTIFIED_TEXT}.")


ENTRIES = [
    Activation(
        "relu", lambda x: Piecewise((0, x < 0), (x, True)), lambda: _ONE,
        "relu'(t) is 0 for t < 0 and 1 for t > 0, and relu is continuous: L = 1, attained.",
        curvature=lambda: _ZERO, curvature_derivation=_LINEAR_PIECES),
    Activation(
        "leaky_relu",
        lambda x, negative_slope: Piecewise((negative_slope * x, x < 0), (x, True)),
        lambda negative_slope: sympy.Max(1, sympy.Abs(negative_slope)),
        "Slopes a = negative_slope for t < 0 and 1 for t > 0, continuous at 0: "
        "L = max(1, |a|), attained. Valid for every real a (a > 1 or a < 0 included).",
        curvature=lambda negative_slope: _ZERO, curvature_derivation=_LINEAR_PIECES,
        defaults={"negative_slope": Rational(1, 100)}),
    Activation(
        "prelu",
        lambda x, weight: Piecewise((weight[0] * x, x < 0), (x, True)),
        lambda weight: sympy.Max(1, *(sympy.Abs(a) for a in weight)),
        "Channel c is leaky_relu with slope a_c, so the Jacobian is diagonal with entries 1 "
        "or a_c: L = max(1, max_c |a_c|), attained, for every real weight vector.",
        curvature=lambda weight: _ZERO, curvature_derivation=_LINEAR_PIECES,
        defaults={"weight": (Rational(1, 4),)}),
    Activation(
        "elu", _elu, _elu_constant,
        "elu(t) = scale t (t > 0), scale alpha (exp(input_scale t) - 1) (t <= 0), continuous "
        "at 0. elu' = scale on t > 0 and scale alpha input_scale exp(input_scale t) on "
        "t < 0, where exp(input_scale t) <= 1 when input_scale >= 0, approaching 1 as "
        "t -> 0-: L = |scale| max(1, |alpha input_scale|), attained or approached, for every "
        "real alpha and scale and every input_scale >= 0. input_scale < 0 is refused (the "
        "negative piece is not Lipschitz).",
        curvature=lambda alpha, scale, input_scale: sympy.Abs(scale * alpha) * input_scale**2,
        curvature_derivation="elu'' = 0 on t > 0 and scale alpha input_scale^2 exp(input_scale "
                             "t) on t < 0: sup = |scale alpha| input_scale^2 (t -> 0-).",
        defaults={"alpha": _ONE, "scale": _ONE, "input_scale": _ONE}, check=_check_elu),
    Activation(
        "celu",
        lambda x, alpha: _elu(x, alpha, _ONE, 1 / alpha),
        lambda alpha: _ONE,
        "celu(t) = max(0, t) + min(0, alpha (exp(t/alpha) - 1)) is elu(alpha, scale=1, "
        "input_scale=1/alpha) for alpha > 0: L = max(1, |alpha/alpha|) = 1, approached as "
        "t -> 0-. alpha < 0 is refused (exp(t/alpha) grows without bound as t -> -oo) and "
        "alpha = 0 is undefined.",
        curvature=lambda alpha: 1 / alpha,
        curvature_derivation="celu'' = exp(t/alpha)/alpha on t < 0, 0 on t > 0: sup = 1/alpha.",
        defaults={"alpha": _ONE}, check=_check_celu),
    Activation(
        "selu", lambda x: _elu(x, SELU_ALPHA, SELU_SCALE, _ONE),
        lambda: SELU_SCALE * SELU_ALPHA,
        "selu = elu(alpha=1.6732632423543772848170429916717, scale=1.0507009873554804934193"
        "349852946, input_scale=1): L = scale max(1, alpha) = scale alpha (alpha > 1), "
        "approached as t -> 0-.",
        curvature=lambda: SELU_SCALE * SELU_ALPHA,
        curvature_derivation="selu'' = scale alpha exp(t) on t < 0: sup = scale alpha."),
    Activation(
        "tanh", sympy.tanh, lambda: _ONE,
        "tanh' = 1 - tanh^2 lies in (0, 1], with maximum 1 at t = 0: L = 1.",
        curvature=lambda: _TANH_CURVATURE,
        curvature_derivation="tanh'' = -2 tanh (1 - tanh^2); with u = tanh in (-1, 1), "
                             "|2u(1 - u^2)| peaks at u^2 = 1/3: sup = 4/(3 sqrt 3)."),
    Activation(
        "sigmoid", _sigmoid, lambda: Rational(1, 4),
        "sigmoid' = s(1 - s) with s in (0, 1); s(1 - s) <= 1/4 with equality at s = 1/2, "
        "i.e. t = 0: L = 1/4.",
        curvature=lambda: sympy.sqrt(3) / 18,
        curvature_derivation="sigmoid'' = s(1 - s)(1 - 2s); with u = s - 1/2, |2u(1/4 - u^2)| "
                             "peaks at u^2 = 1/12: sup = sqrt(3)/18."),
    Activation(
        "softplus",
        lambda x, beta, threshold: sympy.log(1 + sympy.exp(beta * x)) / beta,
        lambda beta, threshold: _ONE,
        "softplus'(t) = sigmoid(beta t) lies in (0, 1) and tends to 1 as t -> +oo: L = 1, "
        "approached, for every beta > 0. torch switches to the identity where beta t > "
        "threshold, a jump of log(1 + exp(-threshold))/beta at the switch (2e-9/beta for "
        "the default threshold 20): the derivative bound 1 holds on both pieces, so the "
        "Jacobian norm is bounded by 1 wherever it exists, and torch's function satisfies "
        "|f(x) - f(y)| <= |x - y| + log(1 + exp(-threshold))/beta.",
        curvature=lambda beta, threshold: beta / 4,
        curvature_derivation="softplus'' = beta sigmoid'(beta t) <= beta/4 (0 on torch's "
                             "linear piece).",
        defaults={"beta": _ONE, "threshold": Rational(20)}, check=_check_softplus),
    Activation(
        "gelu", _gelu,
        lambda approximate: _GELU_EXACT if approximate == "none" else _CERTIFIED[
            "gelu_tanh", 1],
        "gelu(t) = t Phi(t); gelu' = Phi(t) + t phi(t), gelu'' = phi(t)(2 - t^2), so the "
        "critical points are t = +-sqrt(2). gelu'(sqrt(2)) = (1 + erf(1))/2 + exp(-1)/"
        "sqrt(pi) = 1.128904145..., gelu'(-sqrt(2)) = 1 - gelu'(sqrt(2)) = -0.1289..., and "
        "gelu' -> 1 (t -> +oo), 0 (t -> -oo). L = (1 + erf(1))/2 + exp(-1)/sqrt(pi), "
        "attained at sqrt(2). With approximate='tanh' see gelu_tanh.",
        curvature=lambda approximate: (sympy.sqrt(2 / sympy.pi) if approximate == "none"
                                       else _CERTIFIED["gelu_tanh", 2]),
        curvature_derivation="gelu'' = phi(t)(2 - t^2), gelu''' = phi(t) t (t^2 - 4): the "
                             "extrema are gelu''(0) = 2 phi(0) = sqrt(2/pi) and gelu''(+-2) = "
                             "-2 phi(2): sup = sqrt(2/pi).",
        defaults={"approximate": "none"}, check=_check_gelu),
    _certified(
        "gelu_tanh",
        "g = d/dt [t/2 (1 + tanh(c(t + 0.044715 t^3)))], c = sqrt(2/pi), peaks at "
        "t = 1.41850400879... with g = 1.12899306865877...; L = 11289930689/10^10 is ",
        "sup |g''| = 0.79788456080... at t = 0; 7978845611/10^10 is "),
    _certified(
        "silu",
        "silu' = s(t)(1 + t(1 - s(t))), s = sigmoid; silu'' = s(1 - s)(2 + t(1 - 2s)) "
        "vanishes at t = +-2.39935728051..., where silu' = 1.09983932012887 and "
        "-0.09983932012887; silu' -> 1, 0 at +-oo. L = 10998393204/10^10, ",
        "sup |silu''| = 1/2 at t = 0; 5000000002/10^10 is "),
    _certified(
        "mish",
        "mish' = tanh(sp(t)) + t sech^2(sp(t)) sigmoid(t), sp = softplus, peaks at "
        "t = 1.49057117948... with mish' = 1.08849816125173...; its minimum is about "
        "-0.1125 and mish' -> 1, 0 at +-oo. L = 10884981615/10^10, ",
        "sup |mish''| = 0.64420463723... at t = -0.08793443131...; 6442046375/10^10 is "),
    Activation(
        "hardswish",
        lambda x: Piecewise((0, x <= -3), (x, x >= 3), (x * (x + 3) / 6, True)),
        lambda: Rational(3, 2),
        "hardswish' = 0 for t < -3, (2t + 3)/6 on (-3, 3) (from -1/2 to 3/2) and 1 for "
        "t > 3; hardswish is continuous: L = 3/2, approached as t -> 3-.",
        curvature=lambda: Rational(1, 3),
        curvature_derivation="hardswish'' = 1/3 on (-3, 3), 0 outside."),
    Activation(
        "hardsigmoid",
        lambda x: Piecewise((0, x <= -3), (1, x >= 3), (x / 6 + Rational(1, 2), True)),
        lambda: Rational(1, 6),
        "hardsigmoid = relu6(t + 3)/6: slopes 0, 1/6, 0 on the three pieces of a continuous "
        "function: L = 1/6, attained.",
        curvature=lambda: _ZERO, curvature_derivation=_LINEAR_PIECES),
    Activation(
        "relu6", lambda x: Piecewise((0, x < 0), (6, x > 6), (x, True)), lambda: _ONE,
        "Slopes 0, 1, 0 on the three pieces of the continuous clamp to [0, 6]: L = 1.",
        curvature=lambda: _ZERO, curvature_derivation=_LINEAR_PIECES),
    Activation(
        "hardtanh",
        lambda x, min_val, max_val: Piecewise((min_val, x < min_val), (max_val, x > max_val),
                                              (x, True)),
        lambda min_val, max_val: _ZERO if (max_val - min_val).is_zero else _ONE,
        "Slopes 0, 1, 0 on the three pieces of the continuous clamp to [min_val, max_val]: "
        "L = 1 for min_val < max_val; for min_val = max_val the map is constant, L = 0. "
        "min_val > max_val is refused (torch refuses it too).",
        curvature=lambda min_val, max_val: _ZERO, curvature_derivation=_LINEAR_PIECES,
        defaults={"min_val": Rational(-1), "max_val": _ONE}, check=_check_hardtanh),
    Activation(
        "softsign", lambda x: x / (1 + sympy.Abs(x)), lambda: _ONE,
        "softsign' = 1/(1 + |t|)^2 lies in (0, 1], with maximum 1 at t = 0: L = 1.",
        curvature=lambda: Rational(2),
        curvature_derivation="softsign'' = -2 sign(t)/(1 + |t|)^3 on t != 0: sup = 2 "
                             "(t -> 0)."),
    Activation(
        "logsigmoid", lambda x: -sympy.log(1 + sympy.exp(-x)), lambda: _ONE,
        "logsigmoid' = 1 - sigmoid(t) = sigmoid(-t) lies in (0, 1) and tends to 1 as "
        "t -> -oo: L = 1, approached.",
        curvature=lambda: Rational(1, 4),
        curvature_derivation="logsigmoid'' = -sigmoid(t)(1 - sigmoid(t)): sup = 1/4 at t = 0."),
    Activation(
        "tanhshrink", lambda x: x - sympy.tanh(x), lambda: _ONE,
        "tanhshrink' = 1 - (1 - tanh^2) = tanh^2 lies in [0, 1) and tends to 1 as "
        "t -> +-oo: L = 1, approached.",
        curvature=lambda: _TANH_CURVATURE,
        curvature_derivation="tanhshrink'' = -tanh'' : sup = 4/(3 sqrt 3), as for tanh."),
] + [
    Activation(name, lambda x: x, lambda: _ONE, _IDENTITY_DERIVATION.format(name=name),
               curvature=lambda: _ZERO, curvature_derivation="linear: phi'' = 0.",
               any_parameters=True)
    for name in ("identity", "dropout", "flatten", "reshape", "permute", "select")
]

