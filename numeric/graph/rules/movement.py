r"""Data movement: every output entry is a copy of one input entry or a constant.

Views, permutations, indexing with constant indices, padding (zero, constant, reflection,
replication, circular), concatenation, ``where``/``masked_fill`` with a constant condition,
nearest upsampling, pixel shuffles, the scatter forms that in-place writes become once
functionalized (``slice_scatter``, ``select_scatter``, ``index_put``): the Jacobian is a
0/1 matrix with at most one 1 per row, whose norm is
:math:`\sqrt{\text{largest number of copies of one input entry}}` (for several operands,
the concatenation rule over their parts). The tracer does not trust the operator's name:
it replays the call on encoded entries (:func:`numeric.graph.rows.replay_movement`),
which proves that it is a movement and counts the copies exactly; copies across a
broadcast (``x[:, :1].expand_as(x)``) are counted the same way. Pure dtype and memory
conversions (``clone``, ``_to_copy``, ``alias``) are the identity; refused: ``detach`` of an
input-dependent value (autograd's Jacobian would not be the function's derivative) and a
cast to a float type of fewer than 32 bits (a rounding step function).
"""

from __future__ import annotations

import torch

from numeric.graph.registry import NodeSpec, RuleContext, register_rule
from numeric.graph.rules.common import aten

__all__ = ["register", "MOVEMENT_OPS"]

#: operator -> graph op of the node when each entry is copied once.
MOVEMENT_OPS = {
    aten.view.default: "reshape", aten._unsafe_view.default: "reshape",
    aten.reshape.default: "reshape", aten.unsqueeze.default: "reshape",
    aten.squeeze.default: "reshape", aten.squeeze.dim: "reshape", aten.squeeze.dims: "reshape",
    aten.permute.default: "permute", aten.transpose.int: "permute", aten.t.default: "permute",
    aten.flip.default: "permute", aten.roll.default: "permute",
    aten.pixel_shuffle.default: "permute", aten.pixel_unshuffle.default: "permute",
    aten.expand.default: "select", aten.slice.Tensor: "select", aten.select.int: "select",
    aten.narrow.default: "select", aten.index_select.default: "select",
    aten.index.Tensor: "select", aten.gather.default: "select", aten.cat.default: "select",
    aten.stack.default: "select", aten.split.Tensor: "select",
    aten.split_with_sizes.default: "select", aten.unbind.int: "select",
    aten.chunk.default: "select", aten.repeat.default: "select",
    aten.constant_pad_nd.default: "select", aten.reflection_pad1d.default: "select",
    aten.reflection_pad2d.default: "select", aten.reflection_pad3d.default: "select",
    aten.replication_pad1d.default: "select", aten.replication_pad2d.default: "select",
    aten.replication_pad3d.default: "select", aten._pad_circular.default: "select",
    aten.diagonal.default: "select", aten.unfold.default: "select",
    aten.as_strided.default: "select", aten.slice_scatter.default: "select",
    aten.select_scatter.default: "select", aten.index_put.default: "select",
    aten.diagonal_scatter.default: "select", aten.as_strided_scatter.default: "select",
    aten.where.self: "select", aten.where.ScalarSelf: "select",
    aten.where.ScalarOther: "select", aten.masked_fill.Scalar: "select",
    aten.masked_fill.Tensor: "select", aten.upsample_nearest1d.vec: "select",
    aten.upsample_nearest2d.vec: "select", aten.upsample_nearest3d.vec: "select",
    aten.upsample_nearest1d.default: "select", aten.upsample_nearest2d.default: "select",
    aten.upsample_nearest3d.default: "select", aten.tril.default: "select",
    aten.triu.default: "select", aten.copy.default: "select",
    aten.fill.Scalar: "select", aten.fill.Tensor: "select",
}

#: Operators that return their input's values unchanged.
IDENTITY_OPS = (aten.clone.default, aten.alias.default, aten.detach.default,
                aten.lift_fresh_copy.default, aten._to_copy.default, aten.contiguous.default,
                aten.dropout.default)


def _movement(ctx: RuleContext) -> NodeSpec:
    target = ctx.node.target
    op = MOVEMENT_OPS.get(target, "select")
    return NodeSpec(op, kind="movement", params={"call": str(target)})


def _identity(ctx: RuleContext) -> NodeSpec:
    from numeric.graph.registry import unsupported
    target = ctx.node.target
    if target is aten.dropout.default and ctx.arg("train"):
        raise unsupported(ctx, "dropout in training mode is random, so the model is not one "
                               "function of its input; call model.eval()")
    if target is aten.detach.default or (target is aten.alias.default and str(
            ctx.node.meta.get("original_aten")) == "aten.detach.default"):   # written as alias
        # the value passes, the derivative does not: autograd's Jacobian (what every
        # estimator measures) is then not the derivative of the function computed (a
        # straight-through estimator), and no single bound is right for both
        raise unsupported(ctx, "detach() cuts the derivative of an input-dependent value "
                               "(a straight-through estimator?), so autograd's Jacobian is "
                               "not the derivative of the function the model computes; "
                               "remove the detach")
    dtype = ctx.arg("dtype") if target is aten._to_copy.default else None
    if isinstance(dtype, torch.dtype) and dtype.is_floating_point and \
            torch.finfo(dtype).bits < 32:
        # rounding to a few significant bits is a step function: its jumps (a part in
        # 2^8 for bfloat16) are invisible to a derivative, and a radius or value bound
        # computed from derivatives would step over them
        raise unsupported(ctx, f"it rounds an input-dependent value to {dtype} (a step "
                               f"function: derivative bounds say nothing about its jumps); "
                               f"run that part in float32 or float64")
    return NodeSpec("identity", kind="alias")


def register() -> None:
    for op in MOVEMENT_OPS:
        register_rule(op, _movement, overwrite=True)
    for op in IDENTITY_OPS:
        register_rule(op, _identity, overwrite=True)
