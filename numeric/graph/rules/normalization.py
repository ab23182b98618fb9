r"""BatchNorm, LayerNorm, GroupNorm and InstanceNorm.

- BatchNorm in eval mode (``_native_batch_norm_legit_no_training``, instance norm with
  running statistics): the diagonal map :math:`\gamma_c / \sqrt{v_c + \varepsilon}`,
  constant :math:`\max_c |\gamma_c| / \sqrt{v_c + \varepsilon}`, or folded into a
  neighbouring conv/linear layer by :mod:`numeric.graph.passes`. In training mode (batch
  statistics) the rows of the batch are coupled: refused.
- LayerNorm over the last ``k`` dimensions: :func:`theory.layernorm_lipschitz`
  (:math:`\max|\gamma| / \sqrt{\varepsilon}`), every output token of norm at most
  :func:`theory.layernorm_output_radius`; locally the same proof with the smallest token
  variance of the row (:func:`theory.layernorm_local_lipschitz`).
- GroupNorm and InstanceNorm with input statistics normalise groups of entries of one row
  exactly as LayerNorm normalises a token, then scale channel :math:`c` by
  :math:`\gamma_c`: the Jacobian is :math:`\operatorname{diag}(\gamma)` times a block
  diagonal of LayerNorm Jacobians (without affine), so the same constant
  :math:`\max|\gamma|/\sqrt{\varepsilon}` holds (and the local one with the smallest group
  variance).
"""

from __future__ import annotations

import functools
import math

import sympy
import torch

from numeric.graph.norms import CERTIFICATION_FACTOR
from numeric.graph.registry import NodeSpec, RuleContext, register_rule, unsupported
from numeric.graph.rows import per_row
from numeric.graph.rules.common import TOLERANCE, aten, certify
from theory import transformer as tt

__all__ = ["register"]

_TRAINING = ("BatchNorm in training mode normalises with the statistics of the batch, "
             "which couples its rows, so the per-sample Fisher information is undefined; "
             "call model.eval() (or use track_running_stats=True)")


def _double(tensor):
    return None if tensor is None else tensor.detach().to("cpu", torch.float64)


def _channel_scale(weight, variance, eps) -> torch.Tensor:
    scale = 1.0 / torch.sqrt(_double(variance) + float(eps))
    if weight is not None:
        scale = scale * _double(weight)
    return scale


def _batchnorm_eval(ctx: RuleContext) -> NodeSpec:
    scale = _channel_scale(ctx.constant("weight"), ctx.constant("running_var"), ctx.arg("eps"))
    if not bool(torch.isfinite(scale).all()):
        raise unsupported(ctx, "a running variance plus eps is zero or negative")
    return NodeSpec("batchnorm", lipschitz=certify(scale.abs().max()) if scale.numel() else 0.0,
                    label="max |gamma / sqrt(var + eps)| (eval mode)", channel_scale=scale,
                    channelwise=True, outputs={0: "traced", 1: "meta", 2: "meta"},
                    params={"num_features": scale.numel()})


def _batchnorm_training(ctx: RuleContext) -> NodeSpec:
    raise unsupported(ctx, _TRAINING)


def _native_batch_norm(ctx: RuleContext) -> NodeSpec:
    if ctx.arg("training"):
        raise unsupported(ctx, _TRAINING)
    return _batchnorm_eval(ctx)


@functools.cache
def _layernorm_local_function():
    g, v, e = sympy.symbols("g v e", positive=True)
    return sympy.lambdify((g, v, e), tt.layernorm_local_lipschitz(g, v, e), "numpy")


def _gamma_max(weight) -> float:
    return 1.0 if weight is None else float(weight.detach().double().abs().max())


def _layernorm(ctx: RuleContext) -> NodeSpec:
    shape = tuple(int(s) for s in ctx.arg("normalized_shape"))
    weight, bias, eps = ctx.constant("weight"), ctx.constant("bias"), float(ctx.arg("eps"))
    gamma = _gamma_max(weight)
    beta = 0.0 if bias is None else float(bias.detach().double().norm())
    mixes = tuple(range(-len(shape), 0))
    params = {"normalized_shape": list(shape), "eps": eps}
    outputs = {0: "traced", 1: "meta", 2: "meta"}
    radius_value = certify(tt.layernorm_output_radius(gamma, beta, math.prod(shape)))
    if eps <= 0:
        if ctx.options.allow_unbounded:
            return NodeSpec("layernorm", lipschitz=math.inf, mixes=mixes, params=params,
                            outputs=outputs, radius=lambda r: radius_value,
                            label=f"{ctx.where}: eps = 0, so LayerNorm has no global "
                                  f"Lipschitz constant (its Jacobian grows like 1/sigma)")
        raise unsupported(ctx, "eps = 0: LayerNorm has no global Lipschitz constant (its "
                               "Jacobian grows like 1/sigma); use fisher_bound(..., "
                               "local=True)")

    def without_scale() -> NodeSpec:
        return NodeSpec("layernorm", lipschitz=certify(tt.layernorm_lipschitz(1, eps)),
                        mixes=mixes, outputs=outputs, radius=lambda r: radius_value,
                        params={**params, "gamma_folded": True},
                        label="1/sqrt(eps), gamma folded into the next linear layer")

    scale = _double(weight) if weight is not None and len(shape) == 1 else None
    return NodeSpec("layernorm", lipschitz=certify(tt.layernorm_lipschitz(gamma, eps)),
                    mixes=mixes, params=params, outputs=outputs, value_bound=radius_value,
                    radius=lambda r: radius_value, feature_scale=scale,
                    without_scale=without_scale,
                    label="max|gamma|/sqrt(eps) (theory.layernorm_lipschitz)")


def _smallest_variance_local(ctx: RuleContext, variance: torch.Tensor, rows, gamma: float,
                             eps: float) -> torch.Tensor:
    """Per-row LayerNorm local constant from the variance of each normalised group;
    ``rows`` gives the row of each group."""
    smallest = per_row(variance, rows, ctx.batch, reduce="amin")
    smallest = (smallest * (1 - TOLERANCE)).clamp_min(0)
    values = _layernorm_local_function()(gamma, smallest.cpu().numpy(), float(eps))
    return torch.as_tensor(values, dtype=torch.float64) * CERTIFICATION_FACTOR


def _layernorm_local(ctx: RuleContext) -> torch.Tensor:
    shape = tuple(int(s) for s in ctx.arg("normalized_shape"))
    x = ctx.input.detach().to(torch.float64)
    dims = tuple(range(x.dim() - len(shape), x.dim()))
    variance = x.var(dim=dims, unbiased=False, keepdim=True)
    rows = ctx.traced()[0].rows
    from numeric.graph.rows import map_rows
    group_rows = map_rows(rows, dims, True, variance.shape)
    live = rows.live()
    if live is not None:   # groups that do not depend on the input do not count
        constant_group = ~live.to(x.device).any(dim=dims, keepdim=True)
        variance = torch.where(constant_group, torch.full_like(variance, math.inf), variance)
    gamma = 1.0 if ctx.spec.params.get("gamma_folded") else _gamma_max(ctx.arg("weight"))
    return _smallest_variance_local(ctx, variance, group_rows, gamma, ctx.arg("eps"))


def _layernorm_region(ctx: RuleContext) -> torch.Tensor:
    r"""The local form at the smallest token standard deviation over the ball: the standard
    deviation :math:`\|u - \bar u 1\|/\sqrt D` is :math:`1/\sqrt D`-Lipschitz in the
    token, whose change is at most the norm of the entrywise deviations."""
    shape = tuple(int(s) for s in ctx.arg("normalized_shape"))
    value = ctx.traced()[0]
    x = value.value.detach().to(torch.float64)
    dims = tuple(range(x.dim() - len(shape), x.dim()))
    size = math.prod(shape)
    std = x.var(dim=dims, unbiased=False, keepdim=True).sqrt()
    moved = ctx.deviation(value).to(x).pow(2).sum(dim=dims, keepdim=True).sqrt()
    variance = (std - moved / math.sqrt(size)).clamp_min(0) ** 2
    from numeric.graph.rows import map_rows
    group_rows = map_rows(value.rows, dims, True, variance.shape)
    live = value.rows.live()
    if live is not None:
        constant_group = ~live.to(x.device).any(dim=dims, keepdim=True)
        variance = torch.where(constant_group, torch.full_like(variance, math.inf), variance)
    gamma = 1.0 if ctx.spec.params.get("gamma_folded") else _gamma_max(ctx.arg("weight"))
    return _smallest_variance_local(ctx, variance, group_rows, gamma, ctx.arg("eps"))


def _groupnorm(ctx: RuleContext) -> NodeSpec:
    eps = float(ctx.arg("eps"))
    if eps <= 0:
        raise unsupported(ctx, "eps = 0: GroupNorm has no global Lipschitz constant")
    gamma = _gamma_max(ctx.constant("weight"))
    mixes = tuple(range(1, ctx.input.dim()))
    return NodeSpec("function", lipschitz=certify(tt.layernorm_lipschitz(gamma, eps)),
                    mixes=mixes, outputs={0: "traced", 1: "meta", 2: "meta"},
                    params={"call": "group_norm", "groups": int(ctx.arg("group")), "eps": eps},
                    label="max|gamma|/sqrt(eps): LayerNorm of each group, then gamma")


def _groupnorm_local(ctx: RuleContext) -> torch.Tensor:
    x = ctx.input.detach().to(torch.float64)
    groups = int(ctx.arg("group"))
    variance = x.reshape(x.shape[0], groups, -1).var(dim=-1, unbiased=False)
    rows = ctx.traced()[0].rows
    from numeric.graph.rows import Rows
    group_rows = Rows.standard(variance.shape) if rows.is_standard else \
        Rows(tuple(variance.shape), rows.materialize().reshape(x.shape[0], groups, -1)[..., 0])
    return _smallest_variance_local(ctx, variance, group_rows,
                                    _gamma_max(ctx.arg("weight")), ctx.arg("eps"))


def _instance_norm(ctx: RuleContext) -> NodeSpec:
    if not ctx.arg("use_input_stats"):
        scale = _channel_scale(ctx.constant("weight"), ctx.constant("running_var"),
                               ctx.arg("eps"))
        return NodeSpec("batchnorm", lipschitz=certify(scale.abs().max()), channelwise=True,
                        channel_scale=scale, label="max |gamma / sqrt(var + eps)| "
                                                   "(running statistics)")
    eps = float(ctx.arg("eps"))
    if eps <= 0:
        raise unsupported(ctx, "eps = 0: InstanceNorm has no global Lipschitz constant")
    gamma = _gamma_max(ctx.constant("weight"))
    return NodeSpec("function", lipschitz=certify(tt.layernorm_lipschitz(gamma, eps)),
                    mixes=tuple(range(2, ctx.input.dim())),
                    params={"call": "instance_norm", "eps": eps},
                    label="max|gamma|/sqrt(eps): LayerNorm of each channel, then gamma")


def register() -> None:
    register_rule(aten._native_batch_norm_legit_no_training.default, _batchnorm_eval,
                  overwrite=True)
    for op in (aten._native_batch_norm_legit_functional.default,
               aten._native_batch_norm_legit.default, aten._native_batch_norm_legit.no_stats,
               aten.batch_norm.default, aten.cudnn_batch_norm.default):
        register_rule(op, _batchnorm_training, overwrite=True)
    register_rule(aten.native_batch_norm.default, _native_batch_norm, overwrite=True)
    register_rule(aten.native_layer_norm.default, _layernorm, local=_layernorm_local,
                  region=_layernorm_region, overwrite=True)
    register_rule(aten.native_group_norm.default, _groupnorm, local=_groupnorm_local,
                  overwrite=True)
    register_rule(aten.instance_norm.default, _instance_norm, overwrite=True)
