r"""The built-in rules: one certified constant (and, where it helps, a local one) per op.

Each rule returns a :class:`~numeric.graph.registry.NodeSpec`; see the registry for the
protocol. The constants, and why each is an upper bound:

- ``nn.Linear``, ``F.linear``, ``x @ W``: exact SVD (:func:`linear_operator_norm`).
- ``nn.Conv{1,2,3}d``, ``F.conv*``, transposed convolutions: the FFT bound on the layer's
  own grid (:func:`conv_operator_norm_bound`; a transposed convolution is the adjoint of
  a convolution and has its norm).
- BatchNorm in eval mode: :math:`\max_c |\gamma_c| / \sqrt{v_c + \varepsilon}` (a diagonal
  map), or folded into the layer before it by the tracer.
- activations: :func:`theory.activation_lipschitz`; locally, :math:`\max_i |\phi'(z_i)|`
  over the actual pre-activations (every :math:`z_i` widened by a relative
  :data:`TOLERANCE` so that a kink met within rounding is counted on both sides).
- max pooling: :func:`theory.maxpool_lipschitz`, or the exact largest window coverage of
  the actual grid when smaller; locally the selection matrix of the actual maxima (every
  entry within :data:`TOLERANCE` of its window's maximum counted as selectable), whose
  norm is :math:`\sqrt{\text{largest number of windows selecting one input}}`.
- average pooling (fixed, adaptive, ``mean``): the exact norm of the pooling matrix,
  a Kronecker product of 1-d matrices (:func:`avgpool_operator_norm`).
- data movement (``view``, ``permute``, indexing, ``expand``, ``repeat``, padding, ...):
  every output entry copies one input entry, so the Jacobian is a 0/1 matrix with one 1
  per row and norm :math:`\sqrt{\text{largest number of copies of one entry}}`, counted
  exactly by running the op on ``arange``.
- LayerNorm: :func:`theory.transformer.layernorm_lipschitz`; locally
  :func:`~theory.transformer.layernorm_local_lipschitz` with the smallest token variance.
- ``nn.MultiheadAttention`` (self-attention): :func:`~theory.transformer.
  attention_head_lipschitz` on the ball of radius :math:`R` that a LayerNorm right before
  it guarantees (:func:`~theory.transformer.layernorm_output_radius`), combined by
  :func:`~theory.transformer.multihead_attention_lipschitz`; locally the same proof with
  the measured attention matrix, spreads and radius
  (:func:`~theory.transformer.attention_head_local_lipschitz`).
- softmax inside the network: :math:`\|\Sigma_p\| \le 1/2`
  (:func:`theory.softmax_curvature_bound`); locally :math:`\kappa(p)` per row.
- ``+``/``-`` of input-dependent tensors: ``add`` (sum rule); ``torch.cat``/``stack``:
  ``concat``; multiplication or division by a constant: ``scale`` with the exact norm of
  the diagonal map. A product of two input-dependent tensors (gating, hand-written
  attention) has no global constant and is refused.
"""

from __future__ import annotations

import functools
import math
import operator

import sympy
import torch
import torch.nn.functional as F
from torch import nn

import theory
from theory import transformer as tt
from numeric.graph.norms import (
    CERTIFICATION_FACTOR,
    avgpool_operator_norm,
    conv_dense_entries,
    conv_dense_matrix,
    conv_operator_norm_bound,
    linear_operator_norm,
    pooling_coverage,
)
from numeric.graph.registry import NodeSpec, Rule, RuleContext, register_rule, unsupported

__all__ = ["TOLERANCE", "install_default_rules"]

#: Relative width of the interval around each measured activation value over which local
#: constants take their maximum (kinks of ReLU-like functions, ties of max pooling, the
#: smallest LayerNorm variance): a row's values are known only up to the rounding of the
#: forward pass, which differs between batch sizes; 1e-8 of the row's largest magnitude
#: dominates it.
TOLERANCE = 1e-8


def _certify(value) -> float:
    """A float upper bound of ``value``: exact for a SymPy/Python number that a float
    represents exactly, else inflated by CERTIFICATION_FACTOR."""
    number = float(value)
    if isinstance(value, sympy.Basic):
        if value.is_Rational and sympy.Rational(number) == value:
            return number
    elif isinstance(value, int) or (isinstance(value, float) and number.is_integer()):
        return number
    return number * CERTIFICATION_FACTOR


def _rows(tensor: torch.Tensor) -> torch.Tensor:
    """(B, ...) -> (B, n)."""
    return tensor.reshape(tensor.shape[0], -1)


def _row_scale(tensor: torch.Tensor) -> torch.Tensor:
    """TOLERANCE times the largest magnitude of each row, broadcastable to ``tensor``."""
    scale = _rows(tensor).abs().amax(dim=1) * TOLERANCE
    return scale.reshape(-1, *([1] * (tensor.dim() - 1)))


def _spatial(ctx: RuleContext, dims: int) -> tuple[int, ...]:
    return tuple(ctx.input.shape[-dims:])


def _tuple(value, dims: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * dims
    value = tuple(int(v) for v in value)
    return value * dims if len(value) == 1 else value


# =========================================================================== linear maps


def _linear_spec(weight: torch.Tensor, label: str) -> NodeSpec:
    weight = weight.detach().to("cpu", torch.float64)

    def fold(scale: torch.Tensor) -> NodeSpec:
        return _linear_spec(weight * scale.reshape(-1, 1), label + " + folded BatchNorm")

    def fold_input(scale: torch.Tensor) -> NodeSpec:
        columns = scale.to(weight).repeat_interleave(weight.shape[1] // scale.numel())
        return _linear_spec(weight * columns, label + " + BatchNorm folded forward")

    return NodeSpec("linear", lipschitz=lambda: linear_operator_norm(weight), liveness="last:1",
                    params={"in_features": weight.shape[1], "out_features": weight.shape[0]},
                    label=label, fold=fold, fold_input=fold_input, matrix=weight)


def _linear_module(ctx: RuleContext) -> NodeSpec:
    return _linear_spec(ctx.module.weight, "exact SVD of the weight")


def _constant_argument(ctx: RuleContext, index: int, name: str):
    item = ctx.args[index] if len(ctx.args) > index else ctx.kwargs.get(name)
    if getattr(item, "traced", False):
        raise unsupported(ctx, f"its {name} depends on the input")
    return ctx.arg(index, name)


def _linear_function(ctx: RuleContext) -> NodeSpec:
    return _linear_spec(_constant_argument(ctx, 1, "weight"), "exact SVD of the weight")


def _matmul(ctx: RuleContext) -> NodeSpec:
    left, right = ctx.args[0], ctx.args[1]
    if left.traced and getattr(right, "traced", False):
        raise unsupported(ctx, "a product of two input-dependent tensors (as in "
                               "self-attention written by hand) has no global Lipschitz "
                               "constant; use nn.MultiheadAttention or wrap the block in a "
                               "module with a rule")
    constant = right.value if left.traced else left.value
    if not isinstance(constant, torch.Tensor) or constant.dim() < 2:
        raise unsupported(ctx, "matmul with a vector is not supported")
    matrices = constant.detach().to("cpu", torch.float64).reshape(-1, *constant.shape[-2:])
    value = max(linear_operator_norm(m) for m in matrices)
    spec = NodeSpec("linear", lipschitz=value, label="exact SVD of the constant factor",
                    params={"shape": list(constant.shape)})
    if left.traced and constant.dim() == 2:
        return NodeSpec(**{**spec.__dict__, "matrix": matrices[0].T, "liveness": "last:1"})
    return spec


def _conv_spec(weight, spatial, stride, padding, dilation, groups, padding_mode, method,
               label=None) -> NodeSpec:
    weight = weight.detach().to("cpu", torch.float64)
    label = label or f"certified bound on the zero-padded grid (method {method!r})"

    def value() -> float:
        return conv_operator_norm_bound(weight, spatial, stride=stride, padding=padding,
                                        dilation=dilation, groups=groups,
                                        padding_mode=padding_mode, method=method)

    def fold(scale: torch.Tensor) -> NodeSpec:
        scaled = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
        return _conv_spec(scaled, spatial, stride, padding, dilation, groups, padding_mode,
                          method, label + " + folded BatchNorm")

    def fold_input(scale: torch.Tensor) -> NodeSpec:
        c_out, c_in_group = weight.shape[:2]
        group = torch.arange(c_out) // (c_out // groups)
        factor = scale.to(weight).reshape(groups, c_in_group)[group]     # (c_out, c_in/g)
        scaled = weight * factor.reshape(c_out, c_in_group, *([1] * (weight.dim() - 2)))
        return _conv_spec(scaled, spatial, stride, padding, dilation, groups, padding_mode,
                          method, label + " + BatchNorm folded forward")

    geometry = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)

    def dense() -> torch.Tensor:
        return conv_dense_matrix(weight, spatial, padding_mode=padding_mode, **geometry)

    return NodeSpec("conv", lipschitz=value, label=label, fold=fold, fold_input=fold_input,
                    dense=dense, dense_entries=conv_dense_entries(weight, spatial, **geometry),
                    params={"kernel_size": list(weight.shape[2:]), "stride": list(stride),
                            "padding": list(padding), "dilation": list(dilation),
                            "groups": groups, "input_size": list(spatial)})


def _padding_of(padding, kernel, dilation, dims):
    if isinstance(padding, str):
        if padding == "valid":
            return (0,) * dims
        return tuple(math.ceil(d * (k - 1) / 2) for k, d in zip(kernel, dilation))
    return _tuple(padding, dims)


def _conv_module(ctx: RuleContext) -> NodeSpec:
    conv = ctx.module
    dims = len(conv.kernel_size)
    padding = _padding_of(conv.padding, conv.kernel_size, conv.dilation, dims)
    return _conv_spec(conv.weight, _spatial(ctx, dims), tuple(conv.stride), padding,
                      tuple(conv.dilation), conv.groups, conv.padding_mode,
                      ctx.options.conv_method)


def _conv_transpose_module(ctx: RuleContext) -> NodeSpec:
    conv = ctx.module
    dims = len(conv.kernel_size)
    out_spatial = tuple(ctx.output.shape[-dims:])
    if conv.padding_mode != "zeros":
        raise unsupported(ctx, f"padding_mode={conv.padding_mode!r}")
    spec = _conv_spec(conv.weight, out_spatial, tuple(conv.stride), tuple(conv.padding),
                      tuple(conv.dilation), conv.groups, "zeros", ctx.options.conv_method,
                      "adjoint of a convolution: its certified bound")
    return NodeSpec(**{**spec.__dict__, "fold": None, "fold_input": None, "dense": None})


def _conv_function(ctx: RuleContext) -> NodeSpec:
    weight = _constant_argument(ctx, 1, "weight")
    dims = weight.dim() - 2
    stride = _tuple(ctx.arg(3, "stride", 1), dims)
    dilation = _tuple(ctx.arg(5, "dilation", 1), dims)
    padding = _padding_of(ctx.arg(4, "padding", 0), weight.shape[2:], dilation, dims)
    return _conv_spec(weight, _spatial(ctx, dims), stride, padding, dilation,
                      int(ctx.arg(6, "groups", 1)), "zeros", ctx.options.conv_method)


# =========================================================================== normalisation


def _batchnorm(ctx: RuleContext) -> NodeSpec:
    bn = ctx.module
    if bn.running_var is None:
        raise unsupported(ctx, "it normalises with batch statistics "
                               "(track_running_stats=False), which couples the rows")
    scale = 1.0 / torch.sqrt(bn.running_var.detach().to("cpu", torch.float64) + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.detach().to("cpu", torch.float64)
    return NodeSpec("batchnorm", lipschitz=_certify(scale.abs().max()), liveness="same",
                    label="max |gamma / sqrt(var + eps)| (eval mode)", channel_scale=scale,
                    params={"num_features": bn.num_features})


def _layernorm_parameters(ctx: RuleContext):
    if ctx.module is not None:
        ln = ctx.module
        return tuple(ln.normalized_shape), ln.weight, ln.bias, ln.eps
    shape = ctx.arg(1, "normalized_shape")
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    return shape, ctx.arg(2, "weight"), ctx.arg(3, "bias"), ctx.arg(4, "eps", 1e-5)


def _layernorm(ctx: RuleContext) -> NodeSpec:
    shape, weight, bias, eps = _layernorm_parameters(ctx)
    gamma = 1.0 if weight is None else float(weight.detach().double().abs().max())
    beta = 0.0 if bias is None else float(bias.detach().double().norm())
    if eps <= 0 and ctx.options.allow_unbounded:
        return NodeSpec("layernorm", lipschitz=math.inf, liveness=f"last:{len(shape)}",
                        params={"normalized_shape":
                        list(shape), "eps": eps}, label="eps = 0: local values only")
    if eps <= 0:
        raise unsupported(ctx, "eps = 0: LayerNorm has no global Lipschitz constant; "
                               "use fisher_bound(..., local=True)")
    dim = math.prod(shape)
    radius = _certify(tt.layernorm_output_radius(gamma, beta, dim))
    params = {"normalized_shape": list(shape), "eps": eps}

    def without_scale() -> NodeSpec:
        return NodeSpec("layernorm", lipschitz=_certify(tt.layernorm_lipschitz(1, eps)),
                        liveness=f"last:{len(shape)}", output_radius=radius,
                        params={**params, "gamma_folded": True},
                        label="1/sqrt(eps), gamma folded into the next linear layer "
                              "(theory.transformer.layernorm_lipschitz)")

    scale = None if weight is None or len(shape) != 1 else weight.detach().to(
        "cpu", torch.float64)
    return NodeSpec("layernorm", lipschitz=_certify(tt.layernorm_lipschitz(gamma, eps)),
                    liveness=f"last:{len(shape)}", params=params, output_radius=radius,
                    label="max|gamma|/sqrt(eps) (theory.transformer.layernorm_lipschitz)",
                    feature_scale=scale, without_scale=without_scale)


@functools.cache
def _compiled(name: str):
    """A theory bound as a numpy-vectorised float function of its arguments."""
    positive = dict(positive=True)
    if name == "layernorm_local":
        g, v, e = sympy.symbols("g v e", **positive)
        return sympy.lambdify((g, v, e), tt.layernorm_local_lipschitz(g, v, e), "numpy")
    if name == "attention_local":
        names = ("R", "d", "wq", "wk", "wv", "bq", "qk", "P", "c", "sx", "sv", "g")
        syms = sympy.symbols(" ".join(names), **positive)
        N = sympy.Symbol("N", positive=True, integer=True)
        R, d, wq, wk, wv, bq, qk, P, c, sx, sv, g = syms
        expr = tt.attention_head_local_lipschitz(
            R, N, d, wq, wk, wv, bq, qk_norm=qk, attention_norm=P, attention_column_sum=c,
            token_spread=sx, value_spread=sv, query_key_norm=g)
        return sympy.lambdify((N, *syms), expr, "numpy")
    raise KeyError(name)


def _layernorm_local(ctx: RuleContext) -> torch.Tensor:
    shape, weight, _, eps = _layernorm_parameters(ctx)
    x = ctx.input.detach().to(torch.float64)
    dims = tuple(range(x.dim() - len(shape), x.dim()))
    variance = x.var(dim=dims, unbiased=False)
    live = ctx.traced()[0].live
    if live is not None:   # tokens that do not depend on the input do not count
        tokens = live.to(x.device).flatten(live.dim() - len(shape)).any(-1)
        variance = torch.where(tokens.expand_as(variance), variance, math.inf)
    smallest = _rows(variance).amin(dim=1) * (1 - TOLERANCE)
    gamma = 1.0 if weight is None or ctx.spec.params.get("gamma_folded") else float(
        weight.detach().double().abs().max())
    values = _compiled("layernorm_local")(gamma, smallest.clamp_min(0).cpu().numpy(),
                                          float(eps))
    return torch.as_tensor(values, dtype=torch.float64) * CERTIFICATION_FACTOR


# =========================================================================== activations

#: op name -> (module class, functional forms, method names, parameter names, bound on
#: |phi''| on the smooth pieces for the local tolerance (0: piecewise linear; a parameter
#: name: 2 max(1, |parameter|), which covers elu's alpha e^t and softplus' beta/4)).
_ACTIVATIONS = {
    "relu": (nn.ReLU, (F.relu, torch.relu, F.relu_, torch.relu_), ("relu", "relu_"), (), 0),
    "leaky_relu": (nn.LeakyReLU, (F.leaky_relu, F.leaky_relu_), (), ("negative_slope",), 0),
    "elu": (nn.ELU, (F.elu, F.elu_), (), ("alpha",), "alpha"),
    "tanh": (nn.Tanh, (torch.tanh, F.tanh), ("tanh",), (), 1),
    "sigmoid": (nn.Sigmoid, (torch.sigmoid, F.sigmoid), ("sigmoid",), (), 1),
    "softplus": (nn.Softplus, (F.softplus,), (), ("beta", "threshold"), "beta"),
    "gelu": (nn.GELU, (F.gelu,), (), ("approximate",), 1),
    "silu": (nn.SiLU, (F.silu,), (), (), 1),
    "hardswish": (nn.Hardswish, (F.hardswish,), (), (), 1),
    "mish": (nn.Mish, (F.mish,), (), (), 2),          # |mish''| < 0.7
    "relu6": (nn.ReLU6, (F.relu6,), (), (), 0),
    "hardtanh": (nn.Hardtanh, (F.hardtanh, F.hardtanh_), (), ("min_val", "max_val"), 0),
}

#: Elementwise functions outside the graph vocabulary: op "function" with a constant
#: sup|phi'| (proved in the comment) and a bound on |phi''|.
_OTHER_ELEMENTWISE = {
    # |d/dt t/(1+|t|)| = 1/(1+|t|)^2 <= 1; second derivative <= 2
    "softsign": (nn.Softsign, (F.softsign,), lambda m: 1.0, 2),
    # log sigmoid' = 1 - sigmoid in (0, 1); |second derivative| <= 1/4
    "logsigmoid": (nn.LogSigmoid, (F.logsigmoid,), lambda m: 1.0, 1),
    # hardsigmoid' = 1/6 on (-3, 3), 0 outside
    "hardsigmoid": (nn.Hardsigmoid, (F.hardsigmoid,), lambda m: 1.0 / 6.0, 0),
    # celu' = 1 (t > 0) or exp(t/alpha) < 1 (t < 0); second derivative <= 1/alpha
    "celu": (nn.CELU, (F.celu,), lambda m: 1.0,
             lambda ctx: 2.0 / abs(ctx.module.alpha if ctx.module is not None
                                   else ctx.arg(1, "alpha", 1.0))),
    # selu' = scale (t > 0) or scale*alpha*exp(t) (t < 0): sup = scale*max(1, alpha)
    "selu": (nn.SELU, (F.selu, torch.selu), lambda m: 1.0507009873554805 * 1.6732632423543772,
             2),
    # tanhshrink' = tanh^2 in [0, 1)
    "tanhshrink": (nn.Tanhshrink, (F.tanhshrink,), lambda m: 1.0, 1),
    # prelu' = 1 or a_c: sup = max(1, max |a_c|)
    "prelu": (nn.PReLU, (), lambda m: max(1.0, float(m.weight.detach().abs().max())), 0),
}


def _activation_params(ctx: RuleContext, op: str, names: tuple) -> dict:
    params = {}
    if ctx.module is not None:
        for name in names:
            params[name] = getattr(ctx.module, name)
    else:   # functional forms take (input, *names) positionally or by keyword
        for position, name in enumerate(names, start=1):
            value = ctx.arg(position, name, None)
            if value is not None:
                params[name] = value
    if op == "gelu" and params.get("approximate", "none") == "tanh":
        return {"__op__": "gelu_tanh"}
    if op == "gelu":
        params.pop("approximate", None)
    return params


def _make_activation_rule(op: str, names: tuple, curvature) -> Rule:
    def bound(ctx: RuleContext) -> NodeSpec:
        params = _activation_params(ctx, op, names)
        name = params.pop("__op__", op)
        constant = _certify(theory.activation_lipschitz(name, **params))
        return NodeSpec(name, lipschitz=constant, params=params, liveness="same",
                        label=f"sup |{name}'| (theory.activation_lipschitz)")

    def local(ctx: RuleContext) -> torch.Tensor:
        slack = curvature
        if isinstance(curvature, str):   # a parameter: bound on |phi''| is 2 |parameter|
            default = theory.ACTIVATIONS[op].defaults.get(curvature, 1)
            value = _activation_params(ctx, op, names).get(curvature, default)
            slack = 2 * max(1.0, abs(float(value)))
        return _elementwise_local(ctx, slack)

    return Rule(bound, local)


def _make_other_rule(name: str, constant, curvature) -> Rule:
    def bound(ctx: RuleContext) -> NodeSpec:
        return NodeSpec("function", lipschitz=_certify(constant(ctx.module)), liveness="same",
                        label=f"sup |{name}'|", params={"call": name})

    def local(ctx: RuleContext) -> torch.Tensor:
        return _elementwise_local(ctx, curvature(ctx) if callable(curvature) else curvature)

    return Rule(bound, local)


def _derivative(ctx: RuleContext, z: torch.Tensor) -> torch.Tensor:
    """:math:`\\phi'(z)` entrywise for an elementwise op (one backward pass)."""
    with torch.enable_grad():
        leaf = z.detach().clone().requires_grad_(True)
        out = ctx.replay(leaf + 0)
        (grad,) = torch.autograd.grad(out.sum(), leaf)
    return grad


def _elementwise_local(ctx: RuleContext, curvature: float) -> torch.Tensor:
    r"""Row maxima of :math:`\max_{|t - z_i| \le \tau} |\phi'(t)|`.

    On each piece between kinks :math:`|\phi'|` is either monotone (piecewise linear or
    exponential pieces) or has a derivative bounded by ``curvature``; evaluating at
    :math:`z - \tau`, :math:`z`, :math:`z + \tau` and adding :math:`\tau\cdot` curvature
    therefore bounds the maximum over the interval, kinks included.
    """
    z = ctx.input.detach()
    tau = _row_scale(z)
    derivative = torch.stack([_derivative(ctx, z + shift).abs()
                              for shift in (-tau, torch.zeros_like(tau), tau)]).amax(0)
    derivative = derivative + tau * curvature
    live = ctx.traced()[0].live
    if live is not None:
        derivative = derivative * live.to(derivative.device)
    if ctx.keep:
        ctx.stash["derivative"] = derivative
    value = _rows(derivative).amax(dim=1) * CERTIFICATION_FACTOR
    if ctx.spec is not None and ctx.spec.lipschitz is not None:
        value = value.clamp_max(ctx.spec.lipschitz)
    return value


def _softmax_bound(ctx: RuleContext) -> NodeSpec:
    half = theory.softmax_curvature_bound([sympy.Rational(1, 2), sympy.Rational(1, 2)])
    return NodeSpec("function", lipschitz=float(half), params={"call": "softmax"},
                    label="||diag p - p p^T|| <= 1/2 (theory.softmax_curvature_bound)")


def _softmax_local(ctx: RuleContext) -> torch.Tensor:
    dim = ctx.arg(1, "dim", None) if ctx.module is None else ctx.module.dim
    p = ctx.output.detach().to(torch.float64)
    p = p.movedim(dim if dim is not None else -1, -1)
    kappa = torch.minimum(p.amax(-1), (p * (1 - p)).sum(-1)).clamp(0, 0.5)
    return _rows(kappa).amax(dim=1) * (1 + 1e-6)


# =========================================================================== pooling


#: positional arguments of F.max_pool*d and F.avg_pool*d (several are builtins, without
#: an inspectable signature)
_MAXPOOL_ARGS = (("input", None), ("kernel_size", None), ("stride", None), ("padding", 0),
                 ("dilation", 1), ("ceil_mode", False), ("return_indices", False))
_AVGPOOL_ARGS = (("input", None), ("kernel_size", None), ("stride", None), ("padding", 0),
                 ("ceil_mode", False), ("count_include_pad", True),
                 ("divisor_override", None))


def _pool_parameters(ctx: RuleContext, dims: int) -> dict:
    if ctx.module is not None:
        m = ctx.module
        return {"kernel_size": _tuple(m.kernel_size, dims),
                "stride": _tuple(m.stride if m.stride is not None else m.kernel_size, dims),
                "padding": _tuple(m.padding, dims),
                "dilation": _tuple(getattr(m, "dilation", 1), dims),
                "ceil_mode": bool(m.ceil_mode),
                "count_include_pad": bool(getattr(m, "count_include_pad", True)),
                "divisor_override": getattr(m, "divisor_override", None)}
    names = _MAXPOOL_ARGS if "max" in ctx.target.__name__ else _AVGPOOL_ARGS
    found = {name: ctx.arg(i, name, default) for i, (name, default) in enumerate(names)}
    kernel = _tuple(found["kernel_size"], dims)
    stride = found.get("stride") or kernel
    return {"kernel_size": kernel, "stride": _tuple(stride, dims),
            "padding": _tuple(found.get("padding", 0), dims),
            "dilation": _tuple(found.get("dilation", 1) or 1, dims),
            "ceil_mode": bool(found.get("ceil_mode", False)),
            "count_include_pad": bool(found.get("count_include_pad", True)),
            "divisor_override": found.get("divisor_override")}


def _pool_dims(ctx: RuleContext) -> int:
    name = type(ctx.module).__name__ if ctx.module is not None else ctx.target.__name__
    return int(next(ch for ch in reversed(name) if ch.isdigit()))


def _maxpool(ctx: RuleContext) -> NodeSpec:
    dims = _pool_dims(ctx)
    params = _pool_parameters(ctx, dims)
    spatial, out = _spatial(ctx, dims), tuple(_first(ctx.output).shape[-dims:])
    theory_value = float(theory.maxpool_lipschitz(params["kernel_size"], params["stride"],
                                                  params["dilation"]))
    coverage = math.prod(pooling_coverage(n, o, k, s, p, d) for n, o, k, s, p, d in zip(
        spatial, out, params["kernel_size"], params["stride"], params["padding"],
        params["dilation"]))
    value = min(theory_value, math.sqrt(coverage))
    return NodeSpec("maxpool", lipschitz=_certify(value),
                    params={k: (list(v) if isinstance(v, tuple) else v)
                            for k, v in params.items()
                            if k in ("kernel_size", "stride", "padding", "dilation",
                                     "ceil_mode")},
                    label="sqrt(largest window overlap) (theory.maxpool_lipschitz, "
                          "on the actual grid)",
                    tuple_index=0 if isinstance(ctx.output, tuple) else None)


def _first(output):
    return output[0] if isinstance(output, tuple) else output


def _maxpool_local(ctx: RuleContext) -> torch.Tensor:
    dims = _pool_dims(ctx)
    x = ctx.input.detach().to(torch.float64)
    if dims > 2 or x.dim() != dims + 2:
        return torch.full((x.shape[0],), ctx.spec.lipschitz, dtype=torch.float64)
    params = _pool_parameters(ctx, dims)
    out = tuple(_first(ctx.output).shape[-dims:])
    if dims == 1:
        x = x.unsqueeze(-2)
        out = (1, *out)
        params = {k: ((1, *v) if isinstance(v, tuple) else v) for k, v in params.items()}
        params["padding"] = (0, params["padding"][1])
    batch, channels = x.shape[:2]
    k, s, p, d = (params[n] for n in ("kernel_size", "stride", "padding", "dilation"))
    needed = [(o - 1) * si + di * (ki - 1) + 1 for o, si, di, ki in zip(out, s, d, k)]
    pad = []
    for n, pi, need in reversed(list(zip(x.shape[-2:], p, needed))):
        pad += [pi, need - n - pi]
    padded = F.pad(x, pad, value=-math.inf)
    flat = padded.reshape(batch * channels, 1, *padded.shape[-2:])
    windows = F.unfold(flat, k, dilation=d, stride=s)
    tau = _row_scale(x).reshape(batch, 1, 1).repeat_interleave(channels, 0)
    top = windows.amax(dim=1, keepdim=True)
    selectable = windows >= top - tau
    live = ctx.traced()[0].live
    if live is not None and dims == 2:     # only inputs that depend on the input count
        mask = F.pad(live.to(x.device).expand_as(x).to(torch.float64), pad, value=0.0)
        live_windows = F.unfold(mask.reshape(batch * channels, 1, *mask.shape[-2:]), k,
                                dilation=d, stride=s)
        selectable = selectable & (live_windows > 0)
    selectable = selectable.to(torch.float64)
    counts = F.fold(selectable, padded.shape[-2:], k, dilation=d, stride=s)
    largest = counts.reshape(batch, -1).amax(dim=1)
    return largest.sqrt().clamp_max(ctx.spec.lipschitz) * CERTIFICATION_FACTOR


def _avgpool(ctx: RuleContext) -> NodeSpec:
    dims = _pool_dims(ctx)
    params = _pool_parameters(ctx, dims)
    spatial = _spatial(ctx, dims)

    def one_dim(signal, dim):
        return F.avg_pool1d(signal, params["kernel_size"][dim], params["stride"][dim],
                            params["padding"][dim], params["ceil_mode"],
                            params["count_include_pad"])

    if params["divisor_override"] is None:
        value = avgpool_operator_norm(one_dim, spatial)
    else:
        value = _dense_pool_norm(ctx, spatial)
    return NodeSpec("avgpool", lipschitz=value,
                    params={k: (list(v) if isinstance(v, tuple) else v)
                            for k, v in params.items() if k != "dilation"},
                    label="exact norm of the pooling matrix (Kronecker product of 1-d)")


def _dense_pool_norm(ctx: RuleContext, spatial) -> float:
    """Exact norm of a pooling on one channel from its dense matrix (small grids), else
    the Schur bound sqrt(max column sum * max row sum)."""
    n = math.prod(spatial)
    if n <= 1024:
        basis = torch.eye(n, dtype=torch.float64).reshape(n, 1, *spatial)
        matrix = ctx.replay(basis).reshape(n, -1)
        return linear_operator_norm(matrix)
    ones = torch.ones(1, 1, *spatial, dtype=torch.float64)
    column = ctx.replay(ones)  # row sums of the matrix
    transposed = torch.autograd.functional.vjp(lambda t: ctx.replay(t), ones,
                                               torch.ones_like(column))[1]
    return _certify(math.sqrt(float(column.max()) * float(transposed.max())))


def _adaptive_avgpool(ctx: RuleContext) -> NodeSpec:
    dims = _pool_dims(ctx)
    spatial = _spatial(ctx, dims)
    out = tuple(ctx.output.shape[-dims:])

    def one_dim(signal, dim):
        return F.adaptive_avg_pool1d(signal, out[dim])

    value = avgpool_operator_norm(one_dim, spatial)
    n = math.prod(spatial)
    if all(o == 1 for o in out):
        value = min(value, _certify(theory.global_avgpool_lipschitz(n)))
    return NodeSpec("avgpool", lipschitz=value,
                    params={"output_size": list(out), "input_size": list(spatial)},
                    label="exact norm of the adaptive pooling matrix")


def _adaptive_maxpool(ctx: RuleContext) -> NodeSpec:
    dims = _pool_dims(ctx)
    spatial = _spatial(ctx, dims)
    out = tuple(_first(ctx.output).shape[-dims:])
    coverage = 1
    for n, o in zip(spatial, out):
        counts = [0] * n
        for i in range(o):
            for position in range((i * n) // o, -(-((i + 1) * n) // o)):
                counts[position] += 1
        coverage *= max(counts)
    return NodeSpec("maxpool", lipschitz=_certify(math.sqrt(coverage)),
                    params={"output_size": list(out), "input_size": list(spatial)},
                    label="sqrt(largest adaptive window overlap)",
                    tuple_index=0 if isinstance(ctx.output, tuple) else None)


def _reduce_dims(ctx: RuleContext) -> int:
    """Number of entries each output of a mean/sum reduction combines."""
    dim = ctx.arg(1, "dim", None)
    shape = ctx.input.shape
    if dim is None:
        return math.prod(shape[1:])
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    return math.prod(shape[d] for d in dims)


def _mean(ctx: RuleContext) -> NodeSpec:
    n = _reduce_dims(ctx)
    return NodeSpec("avgpool", lipschitz=_certify(theory.global_avgpool_lipschitz(n)),
                    params={"entries": n}, label="1/sqrt(n): the mean of n entries")


def _sum(ctx: RuleContext) -> NodeSpec:
    n = _reduce_dims(ctx)
    return NodeSpec("function", lipschitz=_certify(math.sqrt(n)),
                    params={"call": "sum", "entries": n}, label="sqrt(n): a sum of n entries")


# =========================================================================== attention


def _head_weights(mha: nn.MultiheadAttention):
    """Per-head torch weights (H, d, E) of q, k, v, biases (H, d) and W_o."""
    E, H = mha.embed_dim, mha.num_heads
    d = E // H
    weight = mha.in_proj_weight.detach().double()
    bias = (mha.in_proj_bias.detach().double() if mha.in_proj_bias is not None
            else torch.zeros(3 * E, dtype=torch.float64))
    wq, wk, wv = (weight[i * E:(i + 1) * E].reshape(H, d, E) for i in range(3))
    bq, bk, bv = (bias[i * E:(i + 1) * E].reshape(H, d) for i in range(3))
    return wq, wk, wv, bq, bk, bv, mha.out_proj.weight.detach().double()


def _head_norms(mha: nn.MultiheadAttention) -> dict:
    wq, wk, wv, bq, _, _, wo = _head_weights(mha)
    norms = {"wq": [], "wk": [], "wv": [], "qk": [], "bq": []}
    for h in range(mha.num_heads):
        norms["wq"].append(linear_operator_norm(wq[h]))
        norms["wk"].append(linear_operator_norm(wk[h]))
        norms["wv"].append(linear_operator_norm(wv[h]))
        # ||W_q W_k^T|| (E x E, rank d) = ||R_q R_k^T|| with W^T = Q R (torch W is d x E)
        r_q = torch.linalg.qr(wq[h].T).R
        r_k = torch.linalg.qr(wk[h].T).R
        norms["qk"].append(linear_operator_norm(r_q @ r_k.T))
        norms["bq"].append(_certify(bq[h].norm()))
    norms["wo"] = linear_operator_norm(wo)
    return norms


def _check_attention(ctx: RuleContext) -> nn.MultiheadAttention:
    mha = ctx.module
    query, key, value = (ctx.arg(i, name) for i, name in enumerate(("query", "key", "value")))
    if not (query is key is value):
        raise unsupported(ctx, "only self-attention (query, key and value the same tensor) "
                               "is covered by the proof")
    if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
        raise unsupported(ctx, "separate k/v dimensions, add_bias_kv and add_zero_attn "
                               "are not covered by the proof")
    for name in ("key_padding_mask", "attn_mask"):
        if ctx.kwargs.get(name) is not None:
            raise unsupported(ctx, f"{name} is not supported")
    return mha


def _attention(ctx: RuleContext) -> NodeSpec:
    mha = _check_attention(ctx)
    radius = ctx.traced()[0].radius
    if radius is None and ctx.options.allow_unbounded:
        return NodeSpec("attention", lipschitz=math.inf, tuple_index=0,
                        params={"heads": mha.num_heads, "embed_dim": mha.embed_dim},
                        label="no global constant (unbounded tokens): local values only")
    if radius is None:
        raise unsupported(
            ctx, "dot-product self-attention has no global Lipschitz constant on unbounded "
                 "inputs (Kim et al. 2021); the proved bound needs tokens of bounded norm, "
                 "which a LayerNorm right before the attention guarantees. Put one there, "
                 "or use fisher_bound(..., local=True) for a bound at given inputs")
    tokens = ctx.input.shape[1] if mha.batch_first else ctx.input.shape[0]
    norms = _head_norms(mha)
    d = mha.head_dim
    heads = [tt.attention_head_lipschitz(radius, tokens, d, norms["wq"][h], norms["wk"][h],
                                         norms["wv"][h], norms["bq"][h],
                                         qk_norm=norms["qk"][h])
             for h in range(mha.num_heads)]
    value = tt.multihead_attention_lipschitz(heads, norms["wo"])
    return NodeSpec("attention", lipschitz=_certify(value), tuple_index=0,
                    params={"heads": mha.num_heads, "embed_dim": mha.embed_dim,
                            "seq_len": tokens, "radius": radius},
                    label="theory.transformer.attention_head_lipschitz on tokens of norm "
                          "<= the LayerNorm radius")


#: above this many multiply-adds per row the token spreads use the trace bound
_SPREAD_EXACT_LIMIT = 5e7


def _spread(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    r"""Upper bound on :math:`\max_i \lambda_{\max}(X^\top \Sigma_i X)^{1/2}`, (B, H).

    ``p`` (B, H, N, N) attention rows, ``x`` (B, H, N, D) (tokens, possibly per head).
    Exact through the Gram matrix of :math:`\operatorname{diag}(\sqrt{p_i})(X - 1\bar x_i^T)`
    when cheap; else its trace (the weighted variance), which is larger.
    """
    B, H, N, D = x.shape
    if N * N * min(N, D) * D * H <= _SPREAD_EXACT_LIMIT:
        mean = p @ x                                            # (B, H, N, D)
        centred = x.unsqueeze(2) - mean.unsqueeze(3)            # (B, H, N_i, N_j, D)
        weighted = p.sqrt().unsqueeze(-1) * centred
        if N <= D:
            gram = weighted @ weighted.transpose(-1, -2)
        else:
            gram = weighted.transpose(-1, -2) @ weighted
        top = torch.linalg.eigvalsh(gram)[..., -1].clamp_min(0)
        slack = 1e-12 * (p.unsqueeze(-1) * x.unsqueeze(2) ** 2).sum((-1, -2))
        return (top + slack).sqrt().amax(-1) * CERTIFICATION_FACTOR
    second = p @ (x ** 2).sum(-1, keepdim=True)                 # (B, H, N, 1)
    mean = p @ x
    variance = second.squeeze(-1) - (mean ** 2).sum(-1)
    slack = 1e-10 * second.squeeze(-1)
    return (variance.clamp_min(0) + slack).sqrt().amax(-1) * CERTIFICATION_FACTOR


def _attention_local(ctx: RuleContext) -> torch.Tensor:
    mha = _check_attention(ctx)
    x = ctx.input.detach().to(torch.float64)
    if not mha.batch_first:
        x = x.transpose(0, 1)
    B, N, E = x.shape
    H, d = mha.num_heads, mha.head_dim
    wq, wk, wv, bq, bk, bv, _ = _head_weights(mha)
    q = torch.einsum("bne,hde->bhnd", x, wq) + bq[None, :, None]
    k = torch.einsum("bne,hde->bhnd", x, wk) + bk[None, :, None]
    v = torch.einsum("bne,hde->bhnd", x, wv) + bv[None, :, None]
    p = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)    # (B, H, N, N)
    attention_norm = torch.linalg.matrix_norm(p, ord=2) * CERTIFICATION_FACTOR
    column = p.sum(-2).amax(-1) * CERTIFICATION_FACTOR
    s_x = _spread(p, x.unsqueeze(1).expand(B, H, N, E))
    s_v = _spread(p, v)
    g = torch.einsum("bhnd,hde->bhne", q, wk).norm(dim=-1).amax(-1) * CERTIFICATION_FACTOR
    radius = x.norm(dim=-1).amax(-1) * CERTIFICATION_FACTOR                # (B,)
    norms = _head_norms(mha)
    function = _compiled("attention_local")
    radius, attention_norm, column, s_x, s_v, g = (
        t.detach().cpu() for t in (radius, attention_norm, column, s_x, s_v, g))
    per_head = []
    for h in range(H):
        value = function(N, radius.numpy(), d, norms["wq"][h], norms["wk"][h],
                         norms["wv"][h], norms["bq"][h], norms["qk"][h],
                         attention_norm[:, h].numpy(), column[:, h].numpy(),
                         s_x[:, h].numpy(), s_v[:, h].numpy(), g[:, h].numpy())
        per_head.append(torch.as_tensor(value, dtype=torch.float64).expand(B))
    heads = torch.stack(per_head, dim=1)
    # theory.transformer.multihead_attention_lipschitz: ||W_o|| sqrt(sum_h L_h^2)
    return norms["wo"] * heads.pow(2).sum(1).sqrt() * CERTIFICATION_FACTOR


# =========================================================================== arithmetic


def _scalar(item) -> float | None:
    value = item.value if hasattr(item, "traced") else item
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _add(ctx: RuleContext) -> NodeSpec:
    traced = ctx.traced()
    alpha = ctx.kwargs.get("alpha", 1)
    if len(ctx.args) > 1 and getattr(ctx.args[1], "traced", False) and abs(alpha) != 1:
        raise unsupported(ctx, f"alpha={alpha} on an input-dependent operand")
    constants = [v for v in ctx.values() if not v.traced and isinstance(v.value, torch.Tensor)]
    if len(traced) == 1 and not constants:
        return NodeSpec("identity", alias=True)
    return NodeSpec("add", label="sum rule", params={"constants": len(constants)})


def _neg(ctx: RuleContext) -> NodeSpec:
    return NodeSpec("identity", alias=True)


def _mul(ctx: RuleContext) -> NodeSpec:
    if len(ctx.traced()) > 1:
        raise unsupported(ctx, "a product of two input-dependent tensors (gating, "
                               "attention written by hand) has no global Lipschitz "
                               "constant; wrap the block in a module and register a rule "
                               "with a proved bound on a stated domain")
    other = next(v for v in (ctx.args[0], ctx.args[1]) if not getattr(v, "traced", False))
    value = _scalar(other)
    if value is None:
        value = float(other.value.detach().double().abs().max())
    return NodeSpec("scale", lipschitz=_certify(abs(value)), params={"factor": abs(value)},
                    liveness="same",
                    label="max |factor| of the elementwise multiplication")


def _div(ctx: RuleContext) -> NodeSpec:
    denominator = ctx.args[1]
    if getattr(denominator, "traced", False):
        raise unsupported(ctx, "division by an input-dependent tensor has no global "
                               "Lipschitz constant")
    value = _scalar(denominator)
    if value is None:
        value = float(denominator.value.detach().double().abs().min())
    if value == 0:
        raise unsupported(ctx, "division by zero")
    return NodeSpec("scale", lipschitz=_certify(1.0 / abs(value)), liveness="same",
                    params={"factor": 1.0 / abs(value)}, label="1 / min |divisor|")


def _concat(ctx: RuleContext) -> NodeSpec:
    tensors = ctx.arg(0, "tensors")
    items = [item for item in ctx.args[0]] if isinstance(ctx.args[0], (list, tuple)) else []
    constants = sum(1 for item in items if not item.traced)
    if len(tensors) == 1:
        return NodeSpec("identity", alias=True)
    return NodeSpec("concat", label="concatenation rule", params={"constants": constants})


def _identity(ctx: RuleContext) -> NodeSpec:
    return NodeSpec("identity", alias=True)


def _log_softmax(ctx: RuleContext) -> NodeSpec:
    """A final ``log_softmax`` over the classes leaves the Fisher information unchanged,
    since softmax(log_softmax(z)) = softmax(z): the graph then ends at its input ``z``."""
    dim = ctx.module.dim if ctx.module is not None else ctx.arg(1, "dim", None)
    users = list(ctx.node.users)
    last = ctx.output.dim() - 1
    if all(user.op == "output" for user in users) and dim in (None, -1, last):
        return NodeSpec("identity", alias=True,
                        label="final log_softmax: the Fisher information depends on "
                              "softmax(output) = softmax(input of log_softmax)")
    raise unsupported(ctx, "log_softmax is supported only as the last operation, over the "
                           "classes (where it does not change the Fisher information)")


def _abs(ctx: RuleContext) -> NodeSpec:
    return NodeSpec("function", lipschitz=1.0, params={"call": "abs"}, liveness="same",
                    label="| |a| - |b| | <= |a - b|")


# =========================================================================== data movement

_MOVEMENT_OPS = {
    "flatten": "flatten", "view": "reshape", "reshape": "reshape", "unflatten": "reshape",
    "squeeze": "reshape", "unsqueeze": "reshape", "view_as": "reshape",
    "reshape_as": "reshape", "permute": "permute", "transpose": "permute", "t": "permute",
    "movedim": "permute", "moveaxis": "permute", "swapaxes": "permute",
    "swapdims": "permute", "getitem": "select", "narrow": "select", "select": "select",
    "roll": "permute", "flip": "permute", "expand": "select", "expand_as": "select",
    "repeat": "select", "tile": "select", "repeat_interleave": "select", "pad": "select",
    "index_select": "select", "take": "select", "gather": "select", "chunk": "select",
    "split": "select", "unbind": "select", "tensor_split": "select",
    "pixel_shuffle": "permute", "pixel_unshuffle": "permute", "diagonal": "select",
}


def _movement_op(ctx: RuleContext) -> str:
    if ctx.module is not None:
        name = type(ctx.module).__name__.lower()
        for key, op in (("flatten", "flatten"), ("unflatten", "reshape"), ("pad", "select"),
                        ("pixel", "permute"), ("upsample", "select")):
            if key in name:
                return op
        return "select"
    name = ctx.target if isinstance(ctx.target, str) else getattr(ctx.target, "__name__", "")
    return _MOVEMENT_OPS.get(name.strip("_"), "select")


def multiplicity(ctx: RuleContext, encoded_output) -> int:
    """Largest number of output entries that copy one input entry (entries are encoded as
    ``1 + index``; 0 marks a fill value)."""
    entries = encoded_output.reshape(-1).round().long().cpu()
    if entries.numel() == 0:
        return 0
    counts = torch.bincount(entries)
    return int(counts[1:].max()) if counts.numel() > 1 else 0


def encode(tensor: torch.Tensor) -> torch.Tensor:
    """``1 + arange`` in the shape of ``tensor``, in float64 (exact below 2**53, and every
    data-movement kernel, reflection padding included, exists for it)."""
    return torch.arange(1, tensor.numel() + 1, dtype=torch.float64,
                        device=tensor.device).reshape(tensor.shape)


def movement_spec(op: str, copies: int, what: str) -> NodeSpec:
    if copies == 1:
        return NodeSpec(op, params={"call": what}, label="coordinate map (norm 1)",
                        liveness="replay")
    return NodeSpec("function", lipschitz=_certify(math.sqrt(copies)), liveness="replay",
                    params={"call": what, "copies": copies},
                    label=f"data movement copying an entry up to {copies} times: "
                          f"sqrt({copies})")


def _movement(ctx: RuleContext) -> NodeSpec:
    traced = ctx.traced()
    if len(traced) != 1:
        raise unsupported(ctx, "indexing with input-dependent indices")
    output = ctx.replay(encode(ctx.input))
    what = describe(ctx)
    if isinstance(output, (tuple, list)):
        return NodeSpec("select", params={"call": what}, pending=tuple(output))
    return movement_spec(_movement_op(ctx), multiplicity(ctx, output), what)


def describe(ctx: RuleContext) -> str:
    if ctx.module is not None:
        return type(ctx.module).__name__
    return ctx.target if isinstance(ctx.target, str) else getattr(ctx.target, "__name__",
                                                                   str(ctx.target))


def _upsample(ctx: RuleContext) -> NodeSpec:
    mode = getattr(ctx.module, "mode", None) if ctx.module is not None else ctx.arg(
        3, "mode", "nearest")
    if mode != "nearest":
        raise unsupported(ctx, f"mode={mode!r} (only 'nearest' upsampling is covered)")
    return _movement(ctx)


# =========================================================================== folding

#: Module classes and functions whose Jacobian is diagonal (elementwise ops) or block
#: diagonal over channels with no mixing (pooling, identity): they commute with a
#: per-channel scaling, so a BatchNorm before them can be folded into the next layer.
ELEMENTWISE_TARGETS = frozenset(
    [module for module, *_ in _ACTIVATIONS.values()]
    + [target for _, functions, methods, *_ in _ACTIVATIONS.values()
       for target in (*functions, *methods)]
    + [module for module, *_ in _OTHER_ELEMENTWISE.values()]
    + [nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, F.dropout, "contiguous"])
CHANNELWISE_TARGETS = ELEMENTWISE_TARGETS | frozenset(
    [nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
     nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
     nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
     F.max_pool2d, F.avg_pool2d, F.adaptive_avg_pool2d, F.adaptive_max_pool2d])

#: Flattening (channels first) before a linear layer.
FLATTEN_TARGETS = frozenset([nn.Flatten, torch.flatten, "flatten"])


# =========================================================================== registration


def install_default_rules() -> None:
    """Register every built-in rule (called once on import of :mod:`numeric.graph`)."""
    entries: list[tuple[object, Rule]] = []

    def add(targets, bound, local=None):
        rule = Rule(bound, local)
        for target in targets:
            entries.append((target, rule))

    add([nn.Linear], _linear_module)
    add([nn.Bilinear], lambda ctx: (_ for _ in ()).throw(
        unsupported(ctx, "a bilinear form is a product of input-dependent tensors")))
    add([F.linear], _linear_function)
    add([torch.matmul, operator.matmul, "matmul", "__matmul__", torch.mm, "mm"], _matmul)
    add([nn.Conv1d, nn.Conv2d, nn.Conv3d], _conv_module)
    add([nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d], _conv_transpose_module)
    add([F.conv1d, F.conv2d, F.conv3d], _conv_function)
    add([nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d], _batchnorm)
    add([nn.LayerNorm, F.layer_norm], _layernorm, _layernorm_local)
    for op, (module, functions, methods, names, curvature) in _ACTIVATIONS.items():
        rule = _make_activation_rule(op, names, curvature)
        for target in (module, *functions, *methods):
            entries.append((target, rule))
    for name, (module, functions, constant, curvature) in _OTHER_ELEMENTWISE.items():
        rule = _make_other_rule(name, constant, curvature)
        for target in (module, *functions):
            entries.append((target, rule))
    add([nn.Softmax, F.softmax, torch.softmax, "softmax"], _softmax_bound, _softmax_local)
    add([nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, F.max_pool1d, F.max_pool2d, F.max_pool3d,
         F.max_pool1d_with_indices, F.max_pool2d_with_indices, F.max_pool3d_with_indices],
        _maxpool, _maxpool_local)
    add([nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, F.avg_pool1d, F.avg_pool2d,
         F.avg_pool3d], _avgpool)
    add([nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
         F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d],
        _adaptive_avgpool)
    add([nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
         F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d],
        _adaptive_maxpool)
    add([torch.mean, "mean"], _mean)
    add([torch.sum, "sum"], _sum)
    add([nn.MultiheadAttention], _attention, _attention_local)
    add([operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub,
         "add", "sub", "add_", "sub_", "__add__", "__radd__", "__sub__", "__rsub__",
         torch.rsub], _add)
    add([operator.neg, torch.neg, "neg", operator.pos], _neg)
    add([operator.mul, operator.imul, torch.mul, "mul", "mul_", "__mul__", "__rmul__"], _mul)
    add([operator.truediv, operator.itruediv, torch.div, torch.true_divide, "div", "div_",
         "__truediv__"], _div)
    add([torch.cat, torch.concat, torch.stack, torch.hstack, torch.vstack], _concat)
    add([torch.abs, "abs"], _abs)
    add([nn.LogSoftmax, F.log_softmax, torch.log_softmax, "log_softmax"], _log_softmax)
    add([nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
         nn.FeatureAlphaDropout, F.dropout, F.dropout1d, F.dropout2d, F.dropout3d,
         F.alpha_dropout, F.feature_alpha_dropout, "contiguous", "clone", "detach", "to",
         "float", "double", "half", "bfloat16", "type", "type_as", "cpu", "cuda",
         torch.clone], _identity)
    movement = [nn.Flatten, nn.Unflatten, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d,
                nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ReflectionPad1d,
                nn.ReflectionPad2d, nn.ReflectionPad3d, nn.ReplicationPad1d,
                nn.ReplicationPad2d, nn.ReplicationPad3d, nn.CircularPad1d,
                nn.CircularPad2d, nn.CircularPad3d, nn.PixelShuffle, nn.PixelUnshuffle,
                torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.permute,
                torch.transpose, torch.t, torch.movedim, torch.swapaxes, torch.narrow,
                torch.roll, torch.flip, torch.tile, torch.repeat_interleave,
                torch.index_select, torch.chunk, torch.split, torch.unbind,
                torch.tensor_split, torch.diagonal, F.pad, F.pixel_shuffle,
                F.pixel_unshuffle, torch.unflatten, operator.getitem]
    movement += [name for name in _MOVEMENT_OPS if name not in ("getitem", "pad")]
    add(movement, _movement)
    add([nn.Upsample, nn.UpsamplingNearest2d, F.interpolate], _upsample)
    for target, rule in entries:
        register_rule(target, rule, overwrite=True)
