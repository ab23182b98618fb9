"""How the tracer builds graph nodes for each kind of operation (``NodeSpec.kind``).

A mixin of :class:`~numeric.graph.trace._Runner`: data movements (replayed and verified),
sums and scalings with broadcasting counted from the shapes, choices (``maximum``), and
products of two input-dependent tensors (the product rule), each with its rows of the
batch and its token-norm bound. The runner provides ``info``, ``local``, ``constants`` and
``_add_node``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import fx

from numeric.graph.registry import NodeSpec, RuleContext, Value
from numeric.graph.rows import (Rows, broadcast_rows, combine_rows, map_rows, per_row,
                                replay_movement)

__all__ = ["KindBuilders", "ProductBuilder"]


@dataclass
class _Info:
    """What the tracer knows about one value."""

    kind: str                       # traced | constant | dependent | tuple | pending | forbidden
    key: str | None = None          # graph node standing for the value (traced)
    rows: Rows | None = None
    radius: float | None = None
    outputs: dict | None = None     # tuple: entry -> "traced" | "meta"
    entry_rows: dict | None = None  # tuple: entry -> Rows of the traced entry
    reason: str = ""                # forbidden: why using it is refused
    bound: float | None = None      # every |entry| <= bound for every input
    pending: object = None          # a movement returning a tuple: (ctx, operands)


def _is_float_tensor(value) -> bool:
    return isinstance(value, torch.Tensor) and value.is_floating_point()


def _node(node: fx.Node, name: str) -> fx.Node:
    return next(m for m in node.all_input_nodes if m.name == name)


def _substitute(ctx: RuleContext, encoded: dict) -> dict:
    """Arguments with each input-dependent Value replaced by its encoding and floating
    constants cast to float64 (so that the replay mixes no dtypes)."""
    def swap(item):
        if isinstance(item, Value):
            if item.traced:
                return encoded[item.name]
            value = item.value
            if _is_float_tensor(value):
                return value.detach().double().to(next(iter(encoded.values())).device)
            return value
        if isinstance(item, (list, tuple)):
            return type(item)(swap(entry) for entry in item)
        return item
    return {name: swap(item) for name, item in ctx.arguments.items()}



class KindBuilders:
    """Node builders for the kinds other than ``map``."""

    def _unit(self, key: str, pred: str, constant: float, node: fx.Node, what: str) -> str:
        """A helper node ``key`` with constant ``constant`` after ``pred``."""
        if not self.local:
            spec = NodeSpec("function" if constant != 1 else "identity", lipschitz=constant,
                            params={"call": what}, label=what)
            self._add_node(key, spec, [pred], node)
        return key

    def _broadcast(self, node: fx.Node, value: Value, shape, index: int) -> tuple[str, Rows]:
        """Key and rows of an operand broadcast to ``shape`` (a node sqrt(copies) when the
        broadcast copies its entries)."""
        info = self.info[_node(node, value.name)]
        rows = broadcast_rows(info.rows, shape)
        copies = math.prod(shape) // max(value.value.numel(), 1)
        if copies <= 1:
            return info.key, rows
        key = f"{node.name}_broadcast{index}"
        self._unit(key, info.key, _certified_sqrt(copies), node,
                   f"broadcast copying each entry {copies} times: sqrt({copies})")
        return key, rows

    def _movement(self, node, result, ctx, operands, spec: NodeSpec, infos: dict,
                  index=None) -> _Info:
        def run(encoded):
            out = ctx.replay(**_substitute(ctx, encoded))
            return out[index] if index is not None else out
        movement = replay_movement(run, operands, tuple(result.shape))
        keys = {name: infos[name].key for name in operands}
        used = {name: c for name, c in movement.copies.items() if c > 0}
        radius = self._movement_radius(infos, movement, result)
        if not used:
            return _Info("constant")
        name = f"{node.name}" if index is None else f"{node.name}_{index}"
        if len(used) == 1:
            (operand, copies), = used.items()
            bound = _moved_bound(infos[operand].bound, movement, result)
            if copies == 1 and movement.identity[operand] and \
                    tuple(operands[operand][0].shape) == tuple(result.shape):
                return _Info("traced", key=keys[operand], rows=movement.rows, radius=radius,
                             bound=bound)
            op = spec.op if copies == 1 else "function"
            params = {**spec.params, "copies": copies,
                      "identity_order": movement.identity[operand],
                      "last_dim_kept": movement.last_dim_kept}
            self._add_node(name, spec.replace(
                op=op, lipschitz=_certified_sqrt(copies), params=params,
                label=spec.label or f"data movement copying an entry up to {copies} "
                                    f"times: sqrt({copies})"), [keys[operand]], node)
            if not self.local:
                self.traced.input_ndim[name] = operands[operand][0].dim()
            return _Info("traced", key=name, rows=movement.rows, radius=radius, bound=bound)
        preds = []
        for i, (operand, copies) in enumerate(used.items()):
            pred = keys[operand]
            if copies > 1:
                pred = self._unit(f"{name}_part{i}", pred, _certified_sqrt(copies), node,
                                  f"copies of one operand: sqrt({copies})")
            preds.append(pred)
        self._add_node(name, NodeSpec("concat", kind="movement", params={"call": spec.params.get(
            "call", "")}, label="concatenation rule: sqrt(sum of squares)"), preds, node)
        return _Info("traced", key=name, rows=movement.rows, radius=radius)

    def _movement_radius(self, infos: dict, movement, result) -> float | None:
        radii = [info.radius for info in infos.values()]
        if not movement.tokens_whole or any(r is None for r in radii) or result.dim() == 0:
            return None
        copies = max(movement.copies.values(), default=1)
        fills = (movement.rows.materialize() < 0) if not movement.rows.is_standard else None
        extra = 0.0
        if fills is not None and bool(fills.any()):
            values = torch.where(fills.to(result.device), result.detach().double(),
                                 torch.zeros((), dtype=torch.float64, device=result.device))
            extra = float(values.norm(dim=-1).max())
        return (math.sqrt(copies) * max(radii) + extra) * (1 + 1e-12)

    def _sum(self, node, ctx, spec: NodeSpec, result) -> _Info:
        traced = ctx.traced()
        shape = tuple(result.shape)
        groups: dict = {}
        for value, coefficient in zip(traced, spec.coefficients):
            group = (value.name, tuple(value.value.shape))
            groups[group] = groups.get(group, 0.0) + float(coefficient)
        preds, rows, radii = [], [], []
        for i, ((name, _), coefficient) in enumerate(groups.items()):
            value = next(v for v in traced if v.name == name)
            if coefficient == 0:
                continue
            pred, operand_rows = self._broadcast(node, value, shape, i)
            if abs(coefficient) != 1:
                pred = self._unit(f"{node.name}_times{i}", pred, abs(coefficient), node,
                                  f"coefficient {coefficient:g}")
            preds.append(pred)
            rows.append(operand_rows)
            same_tokens = value.value.dim() > 0 and value.value.shape[-1] == shape[-1]
            radii.append(abs(coefficient) * value.radius
                         if value.radius is not None and same_tokens else None)
        if not preds:
            return _Info("constant")
        out_rows = combine_rows(rows, shape)
        radius = None
        if all(r is not None for r in radii) and result.dim() > 0:
            radius = (sum(radii) + _constant_token_norm(ctx, spec, result)) * (1 + 1e-12)
        if len(preds) == 1:
            source = self.info[_node(node, traced[0].name)]
            if preds[0] == source.key:
                return _Info("traced", key=source.key, rows=out_rows, radius=radius)
            return _Info("traced", key=preds[0], rows=out_rows, radius=radius)
        self._add_node(node.name, spec.replace(op="add"), preds, node)
        return _Info("traced", key=node.name, rows=out_rows, radius=radius)

    def _scale(self, node, ctx, spec: NodeSpec, result) -> _Info:
        (value,) = ctx.traced()
        shape = tuple(result.shape)
        factor = spec.factor
        info = self.info[_node(node, value.name)]
        if isinstance(factor, torch.Tensor):
            constant = _broadcast_diagonal_norm(factor, tuple(value.value.shape), shape)
            largest = float(factor.detach().double().abs().max()) if factor.numel() else 0.0
        else:
            copies = math.prod(shape) // max(value.value.numel(), 1)
            constant = abs(float(factor)) * math.sqrt(copies)
            largest = abs(float(factor))
        rows = broadcast_rows(info.rows, shape)
        same_tokens = value.value.dim() > 0 and len(shape) > 0 and \
            value.value.shape[-1] == shape[-1]
        radius = largest * info.radius if info.radius is not None and same_tokens else None
        bound = None if info.bound is None else info.bound * largest * (1 + 1e-12)
        if constant == 1 and tuple(value.value.shape) == shape:
            return _Info("traced", key=info.key, rows=rows, radius=radius, bound=bound)
        self._add_node(node.name, spec.replace(op="scale", lipschitz=constant * (1 + 1e-12),
                                               params={"largest_factor": largest}),
                       [info.key], node)
        return _Info("traced", key=node.name, rows=rows, radius=radius, bound=bound)

    def _choose(self, node, ctx, spec: NodeSpec, result) -> _Info:
        traced = ctx.traced()
        shape = tuple(result.shape)
        preds, rows, seen = [], [], set()
        for i, value in enumerate(traced):
            if value.name in seen:
                continue
            seen.add(value.name)
            pred, operand_rows = self._broadcast(node, value, shape, i)
            preds.append(pred)
            rows.append(operand_rows)
        out_rows = combine_rows(rows, shape)
        if len(preds) == 1:
            self._add_node(node.name, spec.replace(op="function", lipschitz=1.0, kind="map"),
                           preds, node)
        else:
            self._add_node(node.name, spec.replace(op="concat"), preds, node)
        return _Info("traced", key=node.name, rows=out_rows)



def _moved_bound(bound: float | None, movement, result) -> float | None:
    """A value bound after a movement: the operand's, or a larger constant fill."""
    if bound is None:
        return None
    if movement.rows.is_standard:
        return bound
    fills = movement.rows.materialize() < 0
    if not bool(fills.any()):
        return bound
    return max(bound, float(result.detach().abs()[fills.to(result.device)].max()))


def _certified_sqrt(copies: int) -> float:
    root = math.isqrt(copies)
    return float(root) if root * root == copies else math.sqrt(copies) * (1 + 1e-15) + 1e-300


def _broadcast_diagonal_norm(factor: torch.Tensor, operand_shape, shape) -> float:
    r"""Exact norm of :math:`x \mapsto w \odot \operatorname{broadcast}(x)`:
    :math:`\max_j \sqrt{\sum_{i \to j} w_i^2}` over the entries :math:`j` of ``x``."""
    squares = factor.detach().to("cpu", torch.float64).pow(2).expand(shape)
    padded = (1,) * (len(shape) - len(operand_shape)) + tuple(operand_shape)
    dims = [d for d, (a, b) in enumerate(zip(padded, shape)) if a == 1 and b != 1]
    if dims:
        squares = squares.sum(dim=dims, keepdim=True)
    return math.sqrt(float(squares.max())) * (1 + 1e-12) if squares.numel() else 0.0


def _constant_token_norm(ctx: RuleContext, spec: NodeSpec, result) -> float:
    """Largest token norm of the constant part of a sum (0 when there is none)."""
    total = None
    for item, coefficient in _constant_terms(ctx, spec):
        term = item * coefficient
        total = term if total is None else total + term
    if total is None:
        return 0.0
    total = torch.as_tensor(total, dtype=torch.float64).expand(result.shape)
    return float(total.norm(dim=-1).max()) if total.numel() else 0.0


def _constant_terms(ctx: RuleContext, spec: NodeSpec):
    """(constant operand, its coefficient) of a sum, from the rule's ``params``."""
    for name, coefficient in spec.params.get("constant_terms", ()):
        value = ctx.arg(name)
        if isinstance(value, torch.Tensor):
            yield value.detach().to("cpu", torch.float64), coefficient
        elif isinstance(value, (int, float)):
            yield torch.tensor(float(value), dtype=torch.float64), coefficient




# =========================================================================== products


class ProductBuilder:
    """The product rule for two input-dependent operands (a mixin of the runner)."""

    def _factor_magnitude(self, value: Value) -> torch.Tensor:
        """Entrywise bound on ``|value|`` at the inputs being run (the region runner adds
        the deviation over the ball)."""
        return value.value.detach().to(torch.float64).abs()

    def _product(self, node, ctx, spec: NodeSpec, result) -> _Info:
        first, second = (ctx.arguments[name] for name in spec.params["operands"])
        matmul = bool(spec.params.get("matmul", False))
        scale = abs(float(spec.params.get("scale", 1.0)))
        shape = tuple(result.shape)
        preds = []
        for side, moving, fixed in (("left", first, second), ("right", second, first)):
            key = f"{node.name}_{side}"
            source = self.info[_node(node, moving.name)]
            if self.local:
                self.constants[key] = scale * self._product_local(moving, fixed, matmul,
                                                                  shape)
                preds.append(key)
                continue
            bound = self.info[_node(node, fixed.name)].bound
            constant = scale * _product_global(moving, fixed, bound, matmul, shape)
            label = "sup |other factor| (product rule)" if math.isfinite(constant) else (
                f"{ctx.where}: a product of two input-dependent tensors has no global "
                f"Lipschitz constant unless both factors are bounded for every input "
                f"(product rule)")
            self._add_node(key, NodeSpec("function", lipschitz=constant, params={
                "call": "product", "factor": spec.params["operands"][side == "left"]},
                label=label), [source.key], node)
            preds.append(key)
        self._add_node(node.name, NodeSpec("add", kind="product", label="product rule"),
                       preds, node)
        if matmul:
            rows = combine_rows([map_rows(first.rows, (first.value.dim() - 1,), True, shape),
                                 map_rows(second.rows, (second.value.dim() - 2,), True,
                                          shape)], shape)
            bound = None
        else:
            rows = combine_rows([first.rows, second.rows], shape)
            bounds_ = [self.info[_node(node, v.name)].bound for v in (first, second)]
            bound = None if None in bounds_ else bounds_[0] * bounds_[1]
        return _Info("traced", key=node.name, rows=rows, bound=bound)

    def _product_local(self, moving: Value, fixed: Value, matmul: bool, shape) -> torch.Tensor:
        """Per row: the norm of the map (d moving) -> (d moving) * fixed at the values."""
        magnitude = self._factor_magnitude(fixed)
        if matmul:
            dims = (magnitude.dim() - 2, magnitude.dim() - 1)
            values = fixed.value.detach().to(torch.float64)
            norms = torch.linalg.matrix_norm(values, ord=2, keepdim=True) if values.dim() \
                >= 2 else values.abs()
            extra = (magnitude - values.abs()).pow(2).sum(dim=dims, keepdim=True).sqrt()
            slices = map_rows(fixed.rows, dims, True, tuple(norms.shape))
            return per_row((norms + extra) * (1 + 1e-12), slices, self.batch)
        squares = magnitude.pow(2).expand(shape)
        padded = (1,) * (len(shape) - moving.value.dim()) + tuple(moving.value.shape)
        dims = [d for d, (a, b) in enumerate(zip(padded, shape)) if a == 1 and b != 1]
        if dims:
            squares = squares.sum(dim=dims, keepdim=True)
        rows = broadcast_rows(moving.rows, tuple(squares.shape)) if tuple(
            squares.shape) != moving.rows.shape else moving.rows
        return per_row(squares.sqrt() * (1 + 1e-12), rows, self.batch)


def _product_global(moving: Value, fixed: Value, bound: float | None, matmul: bool,
                    shape) -> float:
    """The term's constant for every input: from the fixed factor's value bound."""
    if bound is None:
        return math.inf
    if matmul:
        k, m = fixed.value.shape[-2:]
        return bound * math.sqrt(k * m) * (1 + 1e-12)
    copies = math.prod(shape) // max(moving.value.numel(), 1)
    return bound * math.sqrt(copies) * (1 + 1e-12)
