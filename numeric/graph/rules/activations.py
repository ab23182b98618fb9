r"""Elementwise activations, clamps, and the softmax family.

Elementwise :math:`x \mapsto (\phi(x_i))_i` has Jacobian :math:`\operatorname{diag}
(\phi'(x_i))`: its constant is :math:`\sup_t|\phi'(t)|` from
:func:`theory.activation_lipschitz` with the operator's **actual** parameters (read by
name from the normalised call), and a parameter outside the proved domain is refused
there (ELU with a negative ``input_scale``, CELU with ``alpha <= 0``, softplus with
``beta <= 0``...). Locally, the row maximum of :math:`|\phi'|` over the measured
pre-activations, each widened to an interval of :data:`~numeric.graph.rules.common.
TOLERANCE` (relative, with an absolute floor): on each piece between kinks
:math:`|\phi'|` is monotone or has derivative at most the second-derivative bound ``c``,
so :math:`\max(|\phi'(z-\tau)|, |\phi'(z)|, |\phi'(z+\tau)|) + \tau c` bounds it on
:math:`[z-\tau, z+\tau]`, kinks included: at a kink the bound covers every one-sided
derivative (the Clarke generalized Jacobian).

A softmax inside the network (over any dimension) has the Jacobian
:math:`\Sigma_p = \operatorname{diag}(p) - pp^\top` on each slice, of norm at most
:math:`\kappa(p) = \min(1/2, \max p, 1 - \|p\|^2)` (:func:`theory.softmax_curvature_bound`).
``log_softmax`` has the Jacobian :math:`I - 1p^\top`, of norm at most :math:`1 + \sqrt K`;
as the last operation over the classes it leaves the Fisher information unchanged
(:math:`\operatorname{softmax}(\log\operatorname{softmax} z) = \operatorname{softmax} z`),
which the centring pass uses.
"""

from __future__ import annotations

import math

import sympy
import torch

import theory
from numeric.graph.norms import CERTIFICATION_FACTOR
from numeric.graph.registry import NodeSpec, RuleContext, register_rule, unsupported
from numeric.graph.rows import map_rows, per_row
from numeric.graph.rules.common import aten, certify, tolerance

__all__ = ["register", "ELEMENTWISE_OPS"]

#: ATen operator -> (theory name, the parameter names read from the call).
ELEMENTWISE_OPS = {
    aten.relu.default: ("relu", ()),
    aten.leaky_relu.default: ("leaky_relu", ("negative_slope",)),
    aten.elu.default: ("elu", ("alpha", "scale", "input_scale")),
    aten.gelu.default: ("gelu", ("approximate",)),
    aten.silu.default: ("silu", ()),
    aten.hardswish.default: ("hardswish", ()),
    aten.hardsigmoid.default: ("hardsigmoid", ()),
    aten.mish.default: ("mish", ()),
    aten.tanh.default: ("tanh", ()),
    aten.sigmoid.default: ("sigmoid", ()),
    aten.softplus.default: ("softplus", ("beta", "threshold")),
    aten.celu.default: ("celu", ("alpha",)),
    aten.selu.default: ("selu", ()),
    aten.log_sigmoid.default: ("logsigmoid", ()),
    aten.hardtanh.default: ("hardtanh", ("min_val", "max_val")),
}

#: Graph op names for the theory names (others become op "function").
_GRAPH_OPS = {"relu", "leaky_relu", "elu", "tanh", "sigmoid", "softplus", "gelu",
              "silu", "hardswish", "mish", "hardtanh"}


def _parameters(ctx: RuleContext, names) -> dict:
    params = {}
    for name in names:
        value = ctx.arg(name)
        params[name] = value if isinstance(value, str) else float(value)
    return params


def _theory_constant(ctx: RuleContext, name: str, params: dict) -> float:
    try:
        return certify(theory.activation_lipschitz(name, **params))
    except theory.TheoryError as err:
        raise unsupported(ctx, f"{err}".rstrip(".")) from err


def _theory_call(ctx: RuleContext) -> tuple[str, dict]:
    """The theory name and parameters of an elementwise operator's actual call."""
    name, names = ELEMENTWISE_OPS[ctx.node.target]
    params = _parameters(ctx, names)
    if name == "gelu":
        return ("gelu_tanh", {}) if params.get("approximate") == "tanh" else ("gelu", {})
    return name, params


def _elementwise_bound(ctx: RuleContext) -> NodeSpec:
    name, params = _theory_call(ctx)
    constant = _theory_constant(ctx, name, params)
    at_zero = abs(float(ctx.replay(self=torch.zeros((), dtype=torch.float64))))
    plain_elu = name == "elu" and params["scale"] == 1.0 and params["input_scale"] == 1.0
    if name in _GRAPH_OPS and (name != "elu" or plain_elu):
        op, graph_params = name, ({"alpha": params["alpha"]} if name == "elu" else params)
    else:
        op, graph_params = "function", {"call": name, **params}
    return NodeSpec(op, lipschitz=constant, params=graph_params, channelwise=True,
                    radius=_activation_radius(constant, at_zero),
                    value_bound=_VALUE_BOUNDS.get(name, lambda p: None)(params),
                    label=f"sup |{name}'| (theory.activation_lipschitz)")


#: Bounds on |phi(t)| for every t, where one exists.
_VALUE_BOUNDS = {
    "sigmoid": lambda p: 1.0, "tanh": lambda p: 1.0, "hardsigmoid": lambda p: 1.0,
    "hardtanh": lambda p: max(abs(p["min_val"]), abs(p["max_val"])),
}


def _activation_radius(constant: float, at_zero: float):
    """Token norms after :math:`\\phi`: :math:`\\|\\phi(t)\\| \\le \\|\\phi(0)1\\| +
    L\\|t\\|`, with the token dimension unknown here unless :math:`\\phi(0) = 0`."""
    if at_zero != 0:
        return None
    return lambda r: None if r is None else constant * r * (1 + 1e-12)


def _curvature(ctx: RuleContext) -> float:
    r""":math:`\sup|\phi''|` on the smooth pieces (:func:`theory.second_derivative_bound`)."""
    name, params = _theory_call(ctx)
    return certify(theory.second_derivative_bound(name, **params))


def _derivative(ctx: RuleContext, z: torch.Tensor) -> torch.Tensor:
    """:math:`\\phi'(z)` entrywise (one backward pass through the operator itself)."""
    with torch.enable_grad():
        leaf = z.detach().clone().requires_grad_(True)
        out = ctx.replay(self=leaf)
        (grad,) = torch.autograd.grad(out.sum(), leaf)
    return grad


def _signed_derivative(ctx: RuleContext, z: torch.Tensor) -> torch.Tensor:
    r""":math:`\phi'(z)` with its sign (one backward pass)."""
    with torch.enable_grad():
        leaf = z.detach().clone().requires_grad_(True)
        out = ctx.replay(self=leaf)
        (grad,) = torch.autograd.grad(out.sum(), leaf)
    return grad


def _elementwise_local(ctx: RuleContext) -> torch.Tensor:
    value = ctx.traced()[0]
    z = value.value.detach().to(torch.float64)
    tau = tolerance(z, value.rows)
    derivative = torch.stack([_derivative(ctx, z + shift).abs()
                              for shift in (-tau, torch.zeros_like(tau), tau)]).amax(0)
    derivative = derivative + tau * _curvature(ctx)
    live = value.rows.live()
    if live is not None:
        derivative = derivative * live.to(derivative.device)
    if ctx.keep:
        ctx.stash["derivative"] = derivative
    rows = value.rows
    return per_row(derivative, rows, ctx.batch) * CERTIFICATION_FACTOR


#: The points where |phi'| may jump, from the operator's parameters.
_KINKS = {
    "relu": lambda p: [0.0], "leaky_relu": lambda p: [0.0], "elu": lambda p: [0.0],
    "celu": lambda p: [0.0], "selu": lambda p: [0.0], "hardswish": lambda p: [-3.0, 3.0],
    "hardsigmoid": lambda p: [-3.0, 3.0],
    "hardtanh": lambda p: [p["min_val"], p["max_val"]],
    "softplus": lambda p: [p["threshold"] / p["beta"]],
}


def _elementwise_region(ctx: RuleContext) -> torch.Tensor:
    r"""Row maxima of :math:`\sup|\phi'|` over each entry's interval over the ball.

    The interval :math:`[z - \delta, z + \delta]` is cut at the kinks; on each smooth piece
    :math:`[a, b]` the derivative :math:`g = \phi'` is ``c``-Lipschitz (``c`` the
    second-derivative bound), so :math:`(g(a^+) + g(b^-) \pm c(b - a))/2` bound its range
    there; the one-sided values are taken a tiny step inside the piece, the step times
    ``c`` added. Stashed for the refinements: ``derivative`` (the bound on
    :math:`|\phi'|`) and ``variation`` (on :math:`|\phi'(t) - \phi'(z)|`)."""
    value = ctx.traced()[0]
    z = value.value.detach().to(torch.float64)
    ball = ctx.deviation(value).to(z)
    # never narrower than the local tolerance: at a kink both sides count (Clarke)
    deviation = torch.maximum(ball, tolerance(z, value.rows))
    lower, upper = z - deviation, z + deviation
    name, params = _theory_call(ctx)
    curvature = _curvature(ctx)
    cuts = sorted(_KINKS.get(name, lambda p: [])(params))
    edges = [lower] + [torch.clamp(torch.full_like(z, k), lower, upper) for k in cuts] + [upper]
    highest = torch.full_like(z, -math.inf)
    lowest = torch.full_like(z, math.inf)
    for a, b in zip(edges[:-1], edges[1:]):
        width = (b - a).clamp_min(0)
        step = torch.minimum(width / 2, 1e-9 * (1 + a.abs()))
        left, right = _signed_derivative(ctx, a + step), _signed_derivative(ctx, b - step)
        # phi' is curvature-Lipschitz on the piece: its range is within these
        top = (left + right + curvature * width) / 2 + curvature * step
        bottom = (left + right - curvature * width) / 2 - curvature * step
        highest = torch.where(width > 0, torch.maximum(highest, top), highest)
        lowest = torch.where(width > 0, torch.minimum(lowest, bottom), lowest)
    centre = _signed_derivative(ctx, z)
    highest, lowest = torch.maximum(highest, centre), torch.minimum(lowest, centre)
    best = torch.maximum(highest.abs(), lowest.abs())
    variation = torch.maximum(highest - centre, centre - lowest)
    # away from kinks phi' is smooth: over the ball it moves by curvature * deviation (no
    # tolerance needed there: the widening is for the two sides of a kink)
    at_kink = torch.zeros_like(z, dtype=torch.bool)
    for k in cuts:
        at_kink |= (lower <= k) & (k <= upper)
    variation = torch.where(at_kink, variation, torch.minimum(variation, curvature * ball))
    live = value.rows.live()
    if live is not None:
        best = best * live.to(best.device)
        variation = variation * live.to(best.device)
    ctx.stash["derivative"] = best
    ctx.stash["variation"] = variation
    return per_row(best, value.rows, ctx.batch) * CERTIFICATION_FACTOR


def _prelu(ctx: RuleContext) -> NodeSpec:
    weight = ctx.constant("weight").detach().double()
    # prelu'(t) = 1 for t > 0 and a_c for t < 0: sup = max(1, max |a_c|)
    constant = max(1.0, float(weight.abs().max()) if weight.numel() else 1.0)
    return NodeSpec("function", lipschitz=constant, params={"call": "prelu"}, channelwise=True,
                    radius=_activation_radius(constant, 0.0),
                    label="max(1, max |a|): slopes of the two pieces")


def _one_lipschitz(ctx: RuleContext) -> NodeSpec:
    """abs, clamp with constant bounds, sin, cos: :math:`|\\phi'| \\le 1`."""
    for name in ("min", "max"):
        if name in ctx.arguments:
            item = ctx.arguments[name]
            if getattr(item, "traced", False):
                return NodeSpec("concat", kind="choose", label="clamp to input-dependent "
                                                               "bounds: each entry is one of "
                                                               "the operands'")
            ctx.constant(name)
    zero_preserving = ctx.node.target in (aten.abs.default, aten.sin.default)
    bound = None
    if ctx.node.target in (aten.sin.default, aten.cos.default):
        bound = 1.0
    elif ctx.node.target is aten.clamp.default and ctx.arg("min") is not None and \
            ctx.arg("max") is not None:
        bound = max(abs(float(ctx.arg("min"))), abs(float(ctx.arg("max"))))
    return NodeSpec("function", lipschitz=1.0, params={"call": str(ctx.node.target)},
                    channelwise=True, radius=_activation_radius(1.0, 0.0 if zero_preserving
                                                                else 1.0),
                    value_bound=bound, label="1-Lipschitz elementwise function")


def _maximum(ctx: RuleContext) -> NodeSpec:
    """maximum/minimum: each output entry is one operand's entry at that position, so
    :math:`|\\max(a,b) - \\max(a',b')| \\le \\max(|a-a'|, |b-b'|)`: with one
    input-dependent operand a 1-Lipschitz map, with two the concatenation rule."""
    traced = [n for n in ("self", "other") if ctx.arguments[n].traced]
    if len(traced) == 1:
        ctx.constant("other" if traced == ["self"] else "self")
        return NodeSpec("function", lipschitz=1.0, channelwise=True,
                        params={"call": str(ctx.node.target)},
                        label="max/min with a constant: 1-Lipschitz")
    return NodeSpec("concat", kind="choose", label="max/min of two input-dependent tensors: "
                                                   "concatenation rule")


# =========================================================================== softmax


def _softmax_dim(ctx: RuleContext) -> int:
    return int(ctx.arg("dim")) % ctx.input.dim()


def _softmax(ctx: RuleContext) -> NodeSpec:
    half = theory.softmax_curvature_bound([sympy.Rational(1, 2), sympy.Rational(1, 2)])
    dim = _softmax_dim(ctx)
    last = dim == ctx.input.dim() - 1
    size = ctx.input.shape[-1]
    return NodeSpec("function", lipschitz=float(half), mixes=(dim,), value_bound=1.0,
                    params={"call": "softmax", "dim": dim},
                    radius=lambda r: 1.0 if last else math.sqrt(size),
                    label="||diag p - p p^T|| <= 1/2 (theory.softmax_curvature_bound)")


def _softmax_local(ctx: RuleContext) -> torch.Tensor:
    dim = _softmax_dim(ctx)
    p = ctx.output.detach().to(torch.float64)
    kappa = torch.minimum(p.amax(dim, keepdim=True),
                          (p * (1 - p)).sum(dim, keepdim=True)).clamp(0, 0.5)
    rows = map_rows(ctx.traced()[0].rows, (dim,), True, kappa.shape)
    return per_row(kappa, rows, ctx.batch) * (1 + 1e-6)


def _log_softmax(ctx: RuleContext) -> NodeSpec:
    dim = _softmax_dim(ctx)
    classes = ctx.input.shape[dim]
    return NodeSpec("function", lipschitz=certify(1 + math.sqrt(classes)), mixes=(dim,),
                    params={"call": "log_softmax", "dim": dim, "classes": classes},
                    label="||I - 1 p^T|| <= 1 + sqrt(K); 1 after centring when it is the "
                          "last operation over the classes")


def register() -> None:
    for op in ELEMENTWISE_OPS:
        register_rule(op, _elementwise_bound, local=_elementwise_local,
                      region=_elementwise_region, overwrite=True)
    register_rule(aten._prelu_kernel.default, _prelu, overwrite=True)
    for op in (aten.abs.default, aten.clamp.default, aten.clamp.Tensor,
               aten.clamp_min.default, aten.clamp_max.default, aten.clamp_min.Tensor,
               aten.clamp_max.Tensor, aten.sin.default, aten.cos.default):
        register_rule(op, _one_lipschitz, overwrite=True)
    for op in (aten.maximum.default, aten.minimum.default, aten.fmax.default,
               aten.fmin.default):
        register_rule(op, _maximum, overwrite=True)
    for op in (aten._softmax.default, aten._safe_softmax.default):
        register_rule(op, _softmax, local=_softmax_local, overwrite=True)
    register_rule(aten._log_softmax.default, _log_softmax, overwrite=True)
