r"""Pooling and reductions over dimensions of one row.

- max pooling (``max_pool{1,2,3}d_with_indices``, adaptive max pooling, ``amax``/``max``
  over dimensions): the Jacobian (Clarke: every selection of a maximum) copies each output
  from one input entry of its window, so its norm is
  :math:`\sqrt{\text{largest number of windows containing one input entry}}`:
  :func:`theory.maxpool_lipschitz`, or the exact coverage of the actual grid when smaller.
  Locally: the selection of the actual maxima, every entry within the tolerance of its
  window's maximum counted as selectable (ties: the Clarke Jacobian).
- average pooling (fixed, adaptive, ``mean`` over dimensions): the exact norm of the
  pooling matrix, a Kronecker product of 1-d matrices (:func:`avgpool_operator_norm`);
  ``sum`` over ``n`` entries: :math:`\sqrt n`.

The indices output of a max pooling depends on the input but has no derivative: it may be
computed (``return_indices=True``, the default of the ATen form) and left unused; using it
as a value is refused.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

import theory
from numeric.graph.norms import (CERTIFICATION_FACTOR, avgpool_operator_norm,
                                 linear_operator_norm, pooling_coverage)
from numeric.graph.registry import NodeSpec, RuleContext, register_rule
from numeric.graph.rows import map_rows, per_row
from numeric.graph.rules.common import aten, certify, tolerance

__all__ = ["register"]


def _sizes(value, dims: int) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * dims
    value = tuple(int(v) for v in value)
    if not value:
        return ()
    return value * dims if len(value) == 1 else value


def _pool_geometry(ctx: RuleContext, dims: int) -> dict:
    kernel = _sizes(ctx.arg("kernel_size"), dims)
    stride = _sizes(ctx.arg("stride"), dims) or kernel
    padding = _sizes(ctx.arg("padding"), dims)
    dilation = _sizes(ctx.arg("dilation"), dims) if "dilation" in ctx.arguments else \
        (1,) * dims
    return {"kernel_size": kernel, "stride": stride, "padding": padding,
            "dilation": dilation, "ceil_mode": bool(ctx.arg("ceil_mode"))}


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def _maxpool(dims: int):
    def bound(ctx: RuleContext) -> NodeSpec:
        geometry = _pool_geometry(ctx, dims)
        spatial = tuple(ctx.input.shape[-dims:])
        out = tuple(_first(ctx.output).shape[-dims:])
        theory_value = float(theory.maxpool_lipschitz(
            list(geometry["kernel_size"]), list(geometry["stride"]),
            list(geometry["dilation"])))
        coverage = math.prod(pooling_coverage(n, o, k, s, p, d) for n, o, k, s, p, d in zip(
            spatial, out, geometry["kernel_size"], geometry["stride"], geometry["padding"],
            geometry["dilation"]))
        value = min(theory_value, math.sqrt(coverage))
        return NodeSpec("maxpool", lipschitz=certify(value), mixes=tuple(range(-dims, 0)),
                        channelwise=ctx.input.dim() == dims + 2,
                        outputs={0: "traced", 1: "meta"},
                        params={k: list(v) if isinstance(v, tuple) else v
                                for k, v in geometry.items()},
                        label="sqrt(largest window overlap) on the actual grid")
    return bound


def _maxpool_local(ctx: RuleContext) -> torch.Tensor:
    value = ctx.traced()[0]
    x = value.value.detach().to(torch.float64)
    dims = len(ctx.spec.params["kernel_size"])
    batch = ctx.batch
    if dims > 2 or x.dim() != dims + 2:
        return torch.full((batch,), ctx.spec.lipschitz, dtype=torch.float64)
    geometry = _pool_geometry(ctx, dims)
    out = tuple(_first(ctx.output).shape[-dims:])
    if dims == 1:
        x = x.unsqueeze(-2)
        out = (1, *out)
        geometry = {k: ((1, *v) if isinstance(v, tuple) else v) for k, v in geometry.items()}
        geometry["padding"] = (0, geometry["padding"][1])
    n, channels = x.shape[:2]
    k, s, d, pad = _window_padding(geometry, tuple(x.shape[-2:]), out)
    padded = F.pad(x, pad, value=-math.inf)
    flat = padded.reshape(n * channels, 1, *padded.shape[-2:])
    windows = F.unfold(flat, k, dilation=d, stride=s)
    tau = tolerance(x, value.rows).reshape(-1, 1, 1)
    tau = tau.expand(n, 1, 1).repeat_interleave(channels, 0) if tau.shape[0] == n else tau
    top = windows.amax(dim=1, keepdim=True)
    selectable = windows >= top - tau
    live = value.rows.live()
    if live is not None:
        mask = F.pad(live.to(x.device).reshape(x.shape).to(torch.float64), pad, value=0.0)
        live_windows = F.unfold(mask.reshape(n * channels, 1, *mask.shape[-2:]), k,
                                dilation=d, stride=s)
        selectable = selectable & (live_windows > 0)
    counts = F.fold(selectable.to(torch.float64), padded.shape[-2:], k, dilation=d, stride=s)
    largest = counts.reshape(n, channels, -1).amax(dim=-1).reshape(n, channels, 1, 1)
    rows = map_rows(value.rows if dims == 2 else _unsqueezed(value.rows), (2, 3), True,
                    largest.shape)
    per = per_row(largest.sqrt(), rows, batch)
    return per.clamp_max(ctx.spec.lipschitz) * CERTIFICATION_FACTOR


def _window_padding(geometry: dict, size: tuple, out: tuple):
    """``(kernel, stride, dilation, pad)``: the ``F.pad`` amounts (last dimension first)
    that make every pooling window of an output of shape ``out`` lie inside the input of
    shape ``size``: the pooling's own padding before, and after it whatever the last
    window reaches (ceil mode) or nothing left over."""
    k, s, p, d = (geometry[name] for name in ("kernel_size", "stride", "padding", "dilation"))
    needed = [(o - 1) * si + di * (ki - 1) + 1 for o, si, di, ki in zip(out, s, d, k)]
    pad = []
    for extent, pi, need in reversed(list(zip(size, p, needed))):
        pad += [pi, need - extent - pi]
    return k, s, d, pad


def _maxpool_region(ctx: RuleContext) -> torch.Tensor:
    """Over the ball an entry can be its window's maximum only if its upper end reaches
    the largest lower end in the window; the norm is the square root of the largest number
    of windows in which one entry can be selected."""
    value = ctx.traced()[0]
    x = value.value.detach().to(torch.float64)
    dims = len(ctx.spec.params["kernel_size"])
    if dims != 2 or x.dim() != 4:
        return torch.full((ctx.batch,), ctx.spec.lipschitz, dtype=torch.float64)
    deviation = torch.maximum(ctx.deviation(value).to(x), tolerance(x, value.rows))
    geometry = _pool_geometry(ctx, dims)
    out = tuple(_first(ctx.output).shape[-dims:])
    n, channels = x.shape[:2]
    k, s, d, pad = _window_padding(geometry, tuple(x.shape[-2:]), out)
    lower = F.pad(x - deviation, pad, value=-math.inf)
    upper = F.pad(x + deviation, pad, value=-math.inf)
    shape = (n * channels, 1, *lower.shape[-2:])
    low_windows = F.unfold(lower.reshape(shape), k, dilation=d, stride=s)
    high_windows = F.unfold(upper.reshape(shape), k, dilation=d, stride=s)
    selectable = high_windows >= low_windows.amax(dim=1, keepdim=True)
    live = value.rows.live()
    if live is not None:
        mask = F.pad(live.to(x.device).reshape(x.shape).to(torch.float64), pad, value=0.0)
        selectable = selectable & (F.unfold(mask.reshape(shape), k, dilation=d, stride=s) > 0)
    counts = F.fold(selectable.to(torch.float64), lower.shape[-2:], k, dilation=d, stride=s)
    largest = counts.reshape(n, channels, -1).amax(dim=-1).reshape(n, channels, 1, 1)
    rows = map_rows(value.rows, (2, 3), True, largest.shape)
    gradients = ctx.tangent_norms(value) if ctx.tangent_norms is not None else None
    if gradients is not None and value.rows.is_standard:
        # (P' - P) J(x): a window whose selection can change moves its row from one
        # selectable entry's gradient to another's: at most twice the largest of them
        norms = F.pad(gradients.to(x), pad, value=0.0).reshape(shape)
        windows = F.unfold(norms, k, dilation=d, stride=s)
        ambiguous = selectable.sum(dim=1) > 1
        change = torch.where(ambiguous, 2 * torch.where(selectable, windows, 0).amax(dim=1),
                             torch.zeros_like(ambiguous, dtype=x.dtype))
        ctx.stash["variation_exact"] = change.pow(2).reshape(n, -1).sum(dim=1).sqrt() * (
            1 + 1e-9)
    return per_row(largest.sqrt(), rows, ctx.batch) * CERTIFICATION_FACTOR


def _unsqueezed(rows):
    from numeric.graph.rows import Rows
    if rows.is_standard:
        return Rows.standard((*rows.shape[:-1], 1, rows.shape[-1]))
    return Rows((*rows.shape[:-1], 1, rows.shape[-1]), rows.tensor.unsqueeze(-2))


def _avgpool(dims: int):
    def bound(ctx: RuleContext) -> NodeSpec:
        geometry = _pool_geometry(ctx, dims)
        spatial = tuple(ctx.input.shape[-dims:])
        count_include_pad = bool(ctx.arg("count_include_pad"))
        divisor = ctx.arguments.get("divisor_override")
        if divisor is None:
            def one_dim(signal, dim):
                return F.avg_pool1d(signal, geometry["kernel_size"][dim],
                                    geometry["stride"][dim], geometry["padding"][dim],
                                    geometry["ceil_mode"], count_include_pad)
            value = avgpool_operator_norm(one_dim, spatial)
        else:
            value = _dense_norm(ctx, spatial)
        return NodeSpec("avgpool", lipschitz=value, mixes=tuple(range(-dims, 0)),
                        channelwise=ctx.input.dim() == dims + 2,
                        params={"kernel_size": list(geometry["kernel_size"]),
                                "stride": list(geometry["stride"]),
                                "padding": list(geometry["padding"]),
                                "ceil_mode": geometry["ceil_mode"],
                                "count_include_pad": count_include_pad},
                        label="exact norm of the pooling matrix (Kronecker product of 1-d)")
    return bound


def _dense_norm(ctx: RuleContext, spatial) -> float:
    """Exact norm of a pooling on one channel from its dense matrix, or the Schur bound
    :math:`\\sqrt{\\max\\text{column sum}\\cdot\\max\\text{row sum}}` on large grids."""
    n = math.prod(spatial)
    if n <= 1024:
        basis = torch.eye(n, dtype=torch.float64).reshape(n, 1, *spatial)
        return linear_operator_norm(ctx.replay(self=basis).reshape(n, -1))
    ones = torch.ones(1, 1, *spatial, dtype=torch.float64)
    rows_sum = ctx.replay(self=ones)
    columns = torch.autograd.functional.vjp(lambda t: ctx.replay(self=t), ones,
                                            torch.ones_like(rows_sum))[1]
    return certify(math.sqrt(float(rows_sum.abs().max()) * float(columns.abs().max())))


def _adaptive_avgpool(dims: int):
    def bound(ctx: RuleContext) -> NodeSpec:
        spatial = tuple(ctx.input.shape[-dims:])
        out = tuple(ctx.output.shape[-dims:])

        def one_dim(signal, dim):
            return F.adaptive_avg_pool1d(signal, out[dim])

        value = avgpool_operator_norm(one_dim, spatial)
        if all(o == 1 for o in out):
            value = min(value, certify(theory.global_avgpool_lipschitz(math.prod(spatial))))
        return NodeSpec("avgpool", lipschitz=value, mixes=tuple(range(-dims, 0)),
                        channelwise=ctx.input.dim() == dims + 2,
                        params={"output_size": list(out), "input_size": list(spatial)},
                        label="exact norm of the adaptive pooling matrix")
    return bound


def _adaptive_maxpool(dims: int):
    def bound(ctx: RuleContext) -> NodeSpec:
        spatial = tuple(ctx.input.shape[-dims:])
        out = tuple(_first(ctx.output).shape[-dims:])
        coverage = 1
        for n, o in zip(spatial, out):
            counts = [0] * n
            for i in range(o):
                for position in range((i * n) // o, -(-((i + 1) * n) // o)):
                    counts[position] += 1
            coverage *= max(counts)
        return NodeSpec("maxpool", lipschitz=certify(math.sqrt(coverage)),
                        mixes=tuple(range(-dims, 0)), outputs={0: "traced", 1: "meta"},
                        channelwise=ctx.input.dim() == dims + 2,
                        params={"output_size": list(out), "input_size": list(spatial)},
                        label="sqrt(largest adaptive window overlap)")
    return bound


def _reduced_dims(ctx: RuleContext) -> tuple[int, ...]:
    ndim = ctx.input.dim()
    dim = ctx.arguments.get("dim")
    dim = ctx.arg("dim") if dim is not None else None
    if dim is None or (isinstance(dim, (list, tuple)) and len(dim) == 0):
        return tuple(range(ndim))
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    return tuple(sorted({int(d) % max(ndim, 1) for d in dims}))


def _keepdim(ctx: RuleContext) -> bool:
    return bool(ctx.arg("keepdim")) if "keepdim" in ctx.arguments else False


def _mean(ctx: RuleContext) -> NodeSpec:
    dims = _reduced_dims(ctx)
    n = math.prod(ctx.input.shape[d] for d in dims)
    return NodeSpec("avgpool", lipschitz=certify(theory.global_avgpool_lipschitz(n)),
                    mixes=dims, keepdim=_keepdim(ctx), params={"entries": n},
                    label="1/sqrt(n): the mean of n entries")


def _sum(ctx: RuleContext) -> NodeSpec:
    dims = _reduced_dims(ctx)
    n = math.prod(ctx.input.shape[d] for d in dims)
    return NodeSpec("function", lipschitz=certify(math.sqrt(n)), mixes=dims,
                    keepdim=_keepdim(ctx), params={"call": "sum", "entries": n},
                    label="sqrt(n): a sum of n entries")


def _amax(ctx: RuleContext) -> NodeSpec:
    dims = _reduced_dims(ctx)
    outputs = {0: "traced", 1: "meta"} if isinstance(ctx.output, (tuple, list)) else None
    return NodeSpec("maxpool", lipschitz=1.0, mixes=dims, keepdim=_keepdim(ctx),
                    outputs=outputs, params={"call": "max over dimensions"},
                    label="a maximum over disjoint sets: each entry is selected at most once")


def register() -> None:
    for dims, op in ((1, aten.max_pool1d_with_indices.default),
                     (2, aten.max_pool2d_with_indices.default),
                     (3, aten.max_pool3d_with_indices.default)):
        register_rule(op, _maxpool(dims), local=_maxpool_local, region=_maxpool_region,
                      overwrite=True)
    for dims, op in ((1, aten.avg_pool1d.default), (2, aten.avg_pool2d.default),
                     (3, aten.avg_pool3d.default)):
        register_rule(op, _avgpool(dims), overwrite=True)
    for dims, op in ((1, aten.adaptive_avg_pool1d.default),
                     (2, aten._adaptive_avg_pool2d.default),
                     (2, aten.adaptive_avg_pool2d.default),
                     (3, aten._adaptive_avg_pool3d.default)):
        register_rule(op, _adaptive_avgpool(dims), overwrite=True)
    for dims, op in ((1, aten.adaptive_max_pool1d.default),
                     (2, aten.adaptive_max_pool2d.default),
                     (3, aten.adaptive_max_pool3d.default)):
        register_rule(op, _adaptive_maxpool(dims), overwrite=True)
    for op in (aten.mean.dim, aten.mean.default):
        register_rule(op, _mean, overwrite=True)
    for op in (aten.sum.dim_IntList, aten.sum.default):
        register_rule(op, _sum, overwrite=True)
    for op in (aten.amax.default, aten.amin.default, aten.max.dim, aten.min.dim):
        register_rule(op, _amax, overwrite=True)
