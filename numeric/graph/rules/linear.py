r"""Linear maps with constant weights: ``linear``, matrix products, convolutions.

- ``aten.linear(x, W, b)``: :math:`\|W\|_2` by exact SVD (:func:`linear_operator_norm`),
  acting on the last dimension. Token norms: :math:`\|Wx + b\| \le \|W\|R + \|b\|`.
- ``mm``/``bmm``/``addmm``/``baddbmm``/``mv`` with one input-dependent operand and a
  constant one: the largest spectral norm among the constant matrices (a batched product
  is block diagonal), times ``|alpha|``. Broadcasting has already been written out by the
  export as ``expand`` (a data movement whose copies are counted). A product of two
  input-dependent operands has no global constant and is refused.
- ``aten.convolution``: the certified bound of :func:`conv_operator_norm_bound` on the
  layer's own zero-padded grid, with its stride, padding, dilation and groups as the
  normalised arguments give them (a transposed convolution is the adjoint of a
  convolution on its output grid and has the same norm). Other padding modes reach the
  graph as explicit padding operations, whose copies are counted.
"""

from __future__ import annotations

import torch

from numeric.graph.norms import (ConvLayer, conv_dense_entries, conv_dense_matrix,
                                 conv_operator_norm_bound, linear_operator_norm)
from numeric.graph.registry import NodeSpec, RuleContext, register_rule, unsupported
from numeric.graph.rules.common import aten

__all__ = ["register"]


def linear_spec(weight: torch.Tensor, label: str, bias: torch.Tensor | None = None,
                scale: float = 1.0) -> NodeSpec:
    """Spec of :math:`x \\mapsto xW^\\top`: a linear map on the last dimension."""
    weight = weight.detach().to("cpu", torch.float64) * scale
    bias_norm = 0.0 if bias is None else float(bias.detach().double().norm()) * abs(scale)

    def fold(channel_scale: torch.Tensor) -> NodeSpec:
        return linear_spec(weight * channel_scale.reshape(-1, 1), label + " + folded BatchNorm")

    def fold_input(channel_scale: torch.Tensor) -> NodeSpec:
        columns = channel_scale.to(weight).repeat_interleave(
            weight.shape[1] // channel_scale.numel())
        return linear_spec(weight * columns, label + " + BatchNorm folded forward")

    def norm() -> float:
        return linear_operator_norm(weight)

    def radius(r):
        return None if r is None else (norm() * r + bias_norm) * (1 + 1e-12)

    return NodeSpec("linear", lipschitz=norm, mixes=(-1,), radius=radius, label=label,
                    params={"in_features": weight.shape[1], "out_features": weight.shape[0]},
                    fold=fold, fold_input=fold_input, matrix=weight)


def _linear(ctx: RuleContext) -> NodeSpec:
    return linear_spec(ctx.constant("weight"), "exact SVD of the weight", ctx.constant("bias"))


def _product(ctx: RuleContext, left: str, right: str, alpha: float = 1.0) -> NodeSpec:
    a, b = ctx.arguments[left], ctx.arguments[right]
    if a.traced and b.traced:   # attention written by hand: the product rule
        return NodeSpec("add", kind="product", label="product rule for a matrix product",
                        params={"operands": (left, right), "matmul": True, "scale": alpha})
    if a.dependent or b.dependent:
        raise unsupported(ctx, "a factor depends on the input without a derivative")
    traced_left = a.traced
    constant = (b if traced_left else a).value.detach().to("cpu", torch.float64)
    if constant.dim() == 1:   # mv: x @ w or A @ x with a vector
        constant = constant.reshape(-1, 1) if traced_left else constant.reshape(1, -1)
    matrices = constant.reshape(-1, *constant.shape[-2:])
    value = max((linear_operator_norm(m) for m in matrices), default=0.0) * abs(alpha)
    mixes = (-1,) if traced_left else (-2,)
    if traced_left and constant.dim() == 2:
        return linear_spec(constant.T, "exact SVD of the constant factor", scale=alpha
                           ).replace(params={"shape": list(constant.shape)})
    return NodeSpec("linear", lipschitz=value, mixes=mixes, params={"shape": list(constant.shape)},
                    label="exact SVD of the constant factor (largest of the batch)")


def _mm(ctx):
    return _product(ctx, "self", "mat2")


def _additive_term_constant(ctx: RuleContext) -> None:
    if ctx.arguments["self"].traced or ctx.arguments["self"].dependent:
        raise unsupported(ctx, "its additive term depends on the input; only the form "
                               "constant + x @ W is covered")


def _addmm(ctx):
    _additive_term_constant(ctx)
    return _product(ctx, "mat1", "mat2", float(ctx.arg("alpha")))


def _baddbmm(ctx):
    _additive_term_constant(ctx)
    return _product(ctx, "batch1", "batch2", float(ctx.arg("alpha")))


def _mv(ctx):
    return _product(ctx, "self", "vec")


def conv_spec(weight, spatial, stride, padding, dilation, groups, method: str,
              label: str | None = None, transposed: bool = False) -> NodeSpec:
    weight = weight.detach().to("cpu", torch.float64)
    label = label or f"certified bound on the zero-padded grid (method {method!r})"
    geometry = dict(stride=stride, padding=padding, dilation=dilation, groups=groups)

    def value() -> float:
        return conv_operator_norm_bound(weight, spatial, padding_mode="zeros",
                                        method=method, **geometry)

    def fold(scale: torch.Tensor) -> NodeSpec:
        scaled = weight * scale.reshape(-1, *([1] * (weight.dim() - 1)))
        return conv_spec(scaled, spatial, stride, padding, dilation, groups, method,
                         label + " + folded BatchNorm")

    def fold_input(scale: torch.Tensor) -> NodeSpec:
        c_out, c_in_group = weight.shape[:2]
        group = torch.arange(c_out) // (c_out // groups)
        factor = scale.to(weight).reshape(groups, c_in_group)[group]
        scaled = weight * factor.reshape(c_out, c_in_group, *([1] * (weight.dim() - 2)))
        return conv_spec(scaled, spatial, stride, padding, dilation, groups, method,
                         label + " + BatchNorm folded forward")

    def dense() -> torch.Tensor:
        return conv_dense_matrix(weight, spatial, **geometry)

    dims = tuple(range(1, len(spatial) + 2))
    layer = ConvLayer(weight, tuple(spatial), tuple(stride), tuple(padding), tuple(dilation),
                      groups, "zeros")
    spec = NodeSpec("conv", lipschitz=value, label=label, mixes=dims, fold=fold,
                    conv_layer=layer,
                    fold_input=fold_input, dense=dense,
                    dense_entries=conv_dense_entries(weight, spatial, **geometry),
                    params={"kernel_size": list(weight.shape[2:]), "stride": list(stride),
                            "padding": list(padding), "dilation": list(dilation),
                            "groups": groups, "input_size": list(spatial)})
    if transposed:
        return spec.replace(fold=None, fold_input=None, dense=None, dense_entries=0,
                            label="adjoint of a convolution on the output grid: its bound")
    return spec


def _convolution(ctx: RuleContext) -> NodeSpec:
    weight = ctx.constant("weight")
    dims = weight.dim() - 2
    stride = tuple(int(s) for s in ctx.arg("stride"))
    padding = tuple(int(p) for p in ctx.arg("padding"))
    dilation = tuple(int(d) for d in ctx.arg("dilation"))
    groups = int(ctx.arg("groups"))
    stride, padding, dilation = (v * dims if len(v) == 1 else v
                                 for v in (stride, padding, dilation))
    method = ctx.options.conv_method
    if ctx.arg("transposed"):
        # conv_transpose(x) = conv^T: a transposed convolution with weight W (c_in, c_out/g)
        # is the adjoint of the convolution with the same weight on the output grid
        out_spatial = tuple(ctx.output.shape[-dims:])
        return conv_spec(weight, out_spatial, stride, padding, dilation, groups, method,
                         transposed=True)
    spatial = tuple(ctx.input.shape[-dims:])
    return conv_spec(weight, spatial, stride, padding, dilation, groups, method)


def register() -> None:
    register_rule(aten.linear.default, _linear, overwrite=True)
    for op, rule in ((aten.mm.default, _mm), (aten.bmm.default, _mm),
                     (aten.addmm.default, _addmm), (aten.baddbmm.default, _baddbmm),
                     (aten.mv.default, _mv)):
        register_rule(op, rule, overwrite=True)
    register_rule(aten.convolution.default, _convolution, overwrite=True)
