r"""Sums, scalings and the refusals of products.

- ``add``/``sub``/``rsub``/``neg`` of input-dependent tensors: the sum rule
  :math:`\|\sum_i a_i J_i\| \le \sum_i |a_i| L_i` (``alpha`` read from the call); constant
  operands do not enter. An operand that broadcasts to a larger shape copies each entry
  ``c`` times and contributes :math:`\sqrt c\, L_i` (counted centrally from the shapes).
- ``mul``/``div`` by a constant (tensor or number): the broadcast diagonal map
  :math:`x \mapsto w \odot \operatorname{broadcast}(x)` has the exact norm
  :math:`\max_j (\sum_{i \to j} w_i^2)^{1/2}` (the root-sum-square of the factors that
  one entry is multiplied by), computed centrally; a zero divisor is refused.
- a product of two input-dependent tensors (gating, squeeze-excitation): the product rule
  (``kind="product"``), with a global constant only when both factors are bounded for
  every input (a sigmoid gate times a bounded value), else local and region bounds only.
- a division by an input-dependent tensor, ``pow``, ``exp``, ``log``, ``sqrt``,
  ``reciprocal``: no global Lipschitz constant exists; refused with the reason. A rounding division
  (``rounding_mode='floor'``/``'trunc'``) is piecewise constant with jumps: refused.
"""

from __future__ import annotations

import torch

from numeric.graph.registry import NodeSpec, RuleContext, register_rule, unsupported
from numeric.graph.rules.common import aten

__all__ = ["register"]


def _is_traced(ctx: RuleContext, name: str) -> bool:
    item = ctx.arguments.get(name)
    return bool(getattr(item, "traced", False))


def _sum_spec(ctx: RuleContext, coefficients: dict) -> NodeSpec:
    """``coefficients``: argument name -> its coefficient in the sum."""
    traced = [(name, c) for name, c in coefficients.items() if _is_traced(ctx, name)]
    constant_terms = [(name, c) for name, c in coefficients.items()
                      if not _is_traced(ctx, name)]
    for name, _ in constant_terms:
        ctx.constant(name)
    return NodeSpec("add", kind="sum", coefficients=tuple(c for _, c in traced),
                    params={"constant_terms": constant_terms}, label="sum rule")


def _add(ctx: RuleContext) -> NodeSpec:
    alpha = float(ctx.arg("alpha")) if "alpha" in ctx.arguments else 1.0
    return _sum_spec(ctx, {"self": 1.0, "other": alpha})


def _sub(ctx: RuleContext) -> NodeSpec:
    alpha = float(ctx.arg("alpha")) if "alpha" in ctx.arguments else 1.0
    return _sum_spec(ctx, {"self": 1.0, "other": -alpha})


def _rsub(ctx: RuleContext) -> NodeSpec:
    alpha = float(ctx.arg("alpha")) if "alpha" in ctx.arguments else 1.0
    return _sum_spec(ctx, {"self": -alpha, "other": 1.0})


def _neg(ctx: RuleContext) -> NodeSpec:
    return _sum_spec(ctx, {"self": -1.0})


def _mul(ctx: RuleContext) -> NodeSpec:
    if _is_traced(ctx, "self") and _is_traced(ctx, "other"):
        return NodeSpec("add", kind="product", params={"operands": ("self", "other")},
                        label="product rule")
    name = "other" if _is_traced(ctx, "self") else "self"
    factor = ctx.constant(name)
    return NodeSpec("scale", kind="scale", factor=factor, label="exact norm of the "
                                                                 "broadcast multiplication")


def _div(ctx: RuleContext) -> NodeSpec:
    mode = ctx.arg("rounding_mode") if "rounding_mode" in ctx.arguments else None
    if mode is not None:
        raise unsupported(ctx, f"rounding_mode={mode!r} makes the division piecewise "
                               f"constant with jumps, so it has no Lipschitz constant")
    if _is_traced(ctx, "other"):
        raise unsupported(ctx, "division by an input-dependent tensor has no global "
                               "Lipschitz constant")
    divisor = ctx.constant("other")
    if isinstance(divisor, torch.Tensor):
        divisor = divisor.detach().to(torch.float64)
        if bool((divisor == 0).any()):
            raise unsupported(ctx, "division by zero")
        factor = 1.0 / divisor
    else:
        if float(divisor) == 0:
            raise unsupported(ctx, "division by zero")
        factor = 1.0 / float(divisor)
    return NodeSpec("scale", kind="scale", factor=factor, label="exact norm of the "
                                                                 "broadcast division")


def _pow(ctx: RuleContext) -> NodeSpec:
    exponent = ctx.constant("exponent")
    if isinstance(exponent, (int, float)) and float(exponent) == 1.0:
        return NodeSpec("identity", kind="alias")
    raise unsupported(ctx, f"x ** {exponent} has no global Lipschitz constant (its "
                           f"derivative is unbounded on unbounded inputs, or at 0)")


def _no_global_constant(reason: str):
    def rule(ctx: RuleContext) -> NodeSpec:
        raise unsupported(ctx, reason)
    return rule


def register() -> None:
    for op in (aten.add.Tensor, aten.add.Scalar):
        register_rule(op, _add, overwrite=True)
    for op in (aten.sub.Tensor, aten.sub.Scalar):
        register_rule(op, _sub, overwrite=True)
    for op in (aten.rsub.Tensor, aten.rsub.Scalar):
        register_rule(op, _rsub, overwrite=True)
    register_rule(aten.neg.default, _neg, overwrite=True)
    for op in (aten.mul.Tensor, aten.mul.Scalar):
        register_rule(op, _mul, overwrite=True)
    for op in (aten.div.Tensor, aten.div.Scalar, aten.div.Tensor_mode, aten.div.Scalar_mode):
        register_rule(op, _div, overwrite=True)
    for op in (aten.pow.Tensor_Scalar,):
        register_rule(op, _pow, overwrite=True)
    unbounded = "its derivative is unbounded, so no global Lipschitz constant exists"
    for op in (aten.exp.default, aten.log.default, aten.sqrt.default, aten.rsqrt.default,
               aten.reciprocal.default, aten.pow.Tensor_Tensor, aten.square.default,
               aten.expm1.default, aten.log1p.default, aten.exp2.default):
        register_rule(op, _no_global_constant(unbounded), overwrite=True)
    jumps = "it is piecewise constant with jumps, so it has no Lipschitz constant"
    for op in (aten.floor.default, aten.ceil.default, aten.round.default, aten.trunc.default,
               aten.sign.default, aten.frac.default, aten.remainder.Scalar,
               aten.remainder.Tensor, aten.fmod.Scalar, aten.fmod.Tensor):
        register_rule(op, _no_global_constant(jumps), overwrite=True)
