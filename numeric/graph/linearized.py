"""The exported ATen graph at the centres, read for linear bound propagation.

:class:`AffineGraph` runs the graph of a :class:`~numeric.graph.trace.TracedGraph` (which
has already refused rows that mix and random operations) on the centres in float64 and
sorts every input-dependent node into ``"input"``, ``"affine"`` (with its batched
vector-Jacobian product at the centre, exact for an affine map), ``"relu"`` or
``"maxpool"``. An operator is affine only if it is in :data:`_AFFINE`, its
input-dependent operands sit at the listed argument positions, a product has one of them,
and no argument turns it into something else (a rounding division, dropout in training);
every other input-dependent operation, a module kept whole, and a value computed from
the input without a derivative are refused with
:class:`~numeric.errors.UnsupportedModuleError` naming the node.
:func:`supported_reason` says whether a traced model is in this domain, and at what cost.
"""

from __future__ import annotations

import math
import operator

import torch
from torch import fx
from torch.func import vjp, vmap

from numeric.errors import UnsupportedModuleError
from numeric.graph.export import LEAF_OP, first_line
from numeric.graph.registry import bind_arguments, describe_target
from numeric.graph.trace import _CONSTANT_LIKE, _SHAPE_OPS

__all__ = ["AffineGraph", "supported_reason", "WORK_LIMIT"]

aten = torch.ops.aten

#: Above this many multiply-adds per row for the intermediate bounds, the linear
#: certificate is not attempted (about a second of CPU for the largest allowed).
WORK_LIMIT = 4e9

#: Operators affine in their input-dependent operands, by the argument positions that may
#: depend on the input. Products (``_PRODUCTS``) are affine only with one such operand.
_FIRST_ONLY = (0,)
_EITHER = (0, 1)
_AFFINE = {
    **dict.fromkeys([
        aten.convolution, aten.linear, aten.div, aten.neg, aten.cat, aten.stack, aten.view,
        aten._unsafe_view, aten.reshape, aten.flatten, aten.permute, aten.transpose, aten.t,
        aten.expand, aten.clone, aten.contiguous, aten.alias, aten.detach, aten.unsqueeze,
        aten.squeeze, aten.select, aten.slice, aten.constant_pad_nd, aten.reflection_pad1d,
        aten.reflection_pad2d, aten.reflection_pad3d, aten.replication_pad1d,
        aten.replication_pad2d, aten.replication_pad3d,
        aten._native_batch_norm_legit_no_training, aten.avg_pool1d, aten.avg_pool2d,
        aten.avg_pool3d, aten._adaptive_avg_pool2d, aten.adaptive_avg_pool1d, aten.mean,
        aten.sum, aten.dropout], _FIRST_ONLY),
    **dict.fromkeys([aten.add, aten.sub, aten.rsub, aten.slice_scatter, aten.select_scatter,
                     aten.mm, aten.bmm, aten.matmul, aten.mul], _EITHER),
    aten.addmm: (1, 2),
}
_PRODUCTS = {aten.addmm, aten.mm, aten.bmm, aten.matmul, aten.mul}
#: Arguments whose value makes an otherwise affine operator something else.
_NOT_AFFINE_WHEN = {aten.div: ("rounding_mode", lambda mode: mode is not None),
                    aten.dropout: ("train", bool)}
_RELU = {aten.relu}
_MAXPOOL = {aten.max_pool2d_with_indices, aten.max_pool2d}


def _packet(target):
    return getattr(target, "overloadpacket", target)


def _tensors_at(arg):
    """The fx nodes inside one argument (a node, or a list of them)."""
    if isinstance(arg, fx.Node):
        return [arg]
    if isinstance(arg, (list, tuple)):
        return [item for item in arg if isinstance(item, fx.Node)]
    return []


class AffineGraph:
    """The exported graph evaluated at the centres, with each input-dependent node's kind.

    ``kind[n]`` is ``"input"``, ``"affine"`` (``vjps[n]`` the batched VJP at the centre and
    ``sources[n]`` its input-dependent operands), ``"relu"`` or ``"maxpool"``
    (``sources[n]`` its input, ``pool[n]`` kernel, stride, padding, dilation) or
    ``"tuple"`` (a multi-output operation whose items are the nodes).
    """

    def __init__(self, traced, x: torch.Tensor) -> None:
        exported = traced.exported
        self.graph = exported.module.graph
        self.input_name = exported.input_name
        inputs = traced.inputs_as(torch.float64, x.device)
        self.values: dict = {}
        self.kind: dict = {}
        self.sources: dict = {}
        self.vjps: dict = {}
        self.pool: dict = {}
        self.order: list = []
        self.output = None
        self.relu_inputs: set = set()
        self.pooled_relu_inputs: set = set()
        self.pool_sources: set = set()
        with torch.no_grad():
            for node in self.graph.nodes:
                if node.op == "placeholder":
                    if node.name == self.input_name:
                        self.values[node] = x
                        self.kind[node] = "input"
                        self.order.append(node)
                    else:
                        self.values[node] = inputs[node.name]
                elif node.op == "get_attr":
                    self.values[node] = getattr(exported.module, node.target)
                elif node.op == "call_function":
                    self._call(node)
                elif node.op == "output":
                    item = next(m for m in node.all_input_nodes
                                if m.name == exported.output_name)
                    if self.kind.get(item) not in ("input", "affine", "relu", "maxpool"):
                        raise UnsupportedModuleError(
                            "linear bounds: the logits do not depend on the input.")
                    self.output = item
        for node in self.order:
            if self.kind[node] == "relu":
                self.relu_inputs.add(self.sources[node][0])
        for node in self.order:
            source = self.sources.get(node, [None])[0]
            if self.kind[node] == "maxpool":
                self.pool_sources.add(source)
            if self.kind[node] == "maxpool" and self.kind.get(source) == "relu":
                self.pooled_relu_inputs.add(self.sources[source][0])

    # ------------------------------------------------------------------ forward

    def _traced(self, node: fx.Node) -> list:
        return [m for m in node.all_input_nodes if m in self.kind]

    def _refuse(self, node: fx.Node, why: str):
        target = "a module kept whole" if node.target is LEAF_OP else \
            describe_target(node.target)
        raise UnsupportedModuleError(f"linear bounds: no linear relaxation for {target} "
                                     f"(node {node.name!r}): {why}.")

    def _call(self, node: fx.Node) -> None:
        args = fx.node.map_arg(node.args, lambda n: self.values[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: self.values[n])
        traced = self._traced(node)
        if node.target is LEAF_OP:
            if traced:
                self._refuse(node, "its module is kept whole")
            self.values[node] = None
            return
        if node.target is operator.getitem and traced:
            self._item(node, traced[0])
            return
        value = node.target(*args, **kwargs)
        self.values[node] = value
        if not traced or node.target in _SHAPE_OPS or _packet(node.target) in _CONSTANT_LIKE:
            return
        if any(self.kind[m] == "dependent" for m in traced):
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                self._refuse(node, "it uses a value computed from the input without a "
                                   "derivative (indices or a comparison)")
            self.kind[node] = "dependent"
            return
        if not isinstance(value, (torch.Tensor, tuple, list)):
            self.kind[node] = "dependent"
            return
        if isinstance(value, torch.Tensor) and not value.is_floating_point():
            self.kind[node] = "dependent"
            return
        packet = _packet(node.target)
        if packet in _RELU:
            self._set(node, "relu", traced)
        elif packet in _MAXPOOL:
            self._maxpool(node, args, kwargs, traced)
        elif packet in _AFFINE:
            self._affine(node, traced)
        else:
            self._refuse(node, "it is neither affine, ReLU nor 2-d max pooling")

    def _set(self, node, kind, sources) -> None:
        self.kind[node] = kind
        self.sources[node] = sources
        if kind != "tuple":
            self.order.append(node)

    def _maxpool(self, node, args, kwargs, traced) -> None:
        if len(traced) != 1 or node.args[0] is not traced[0]:
            self._refuse(node, "its input is not the only input-dependent operand")
        bound = bind_arguments(node.target, node.args, node.kwargs)
        kernel = _pair(bound.get("kernel_size"))
        stride = _pair(bound.get("stride") or kernel)
        padding = _pair(bound.get("padding", 0))
        dilation = _pair(bound.get("dilation", 1))
        if bound.get("ceil_mode", False):
            self._refuse(node, "ceil_mode=True")
        if self.values[traced[0]].dim() != 4:
            self._refuse(node, "only 4-d inputs (batch, channels, height, width)")
        self.pool[node] = (kernel, stride, padding, dilation)
        self._set(node, "tuple" if isinstance(self.values[node], tuple) else "maxpool",
                  traced)

    def _affine(self, node, traced) -> None:
        packet = _packet(node.target)
        positions, multiplies = _AFFINE[packet], packet in _PRODUCTS
        arguments = bind_arguments(node.target, node.args, node.kwargs)
        if packet in _NOT_AFFINE_WHEN:
            name, breaks = _NOT_AFFINE_WHEN[packet]
            if breaks(arguments.get(name)):
                self._refuse(node, f"{name}={arguments.get(name)!r} is not affine")
        bound = list(arguments.items())
        inside = []
        for index, (_, arg) in enumerate(bound):
            found = [m for m in _tensors_at(arg) if m in self.kind]
            if found and index not in positions:
                self._refuse(node, f"its argument {bound[index][0]!r} depends on the input")
            inside.extend(found)
        if multiplies and len(set(inside)) > 1:
            self._refuse(node, "it multiplies two input-dependent tensors")
        if multiplies and len(inside) > 1:
            self._refuse(node, "it multiplies an input-dependent tensor by itself")
        self._set(node, "tuple" if isinstance(self.values[node], (tuple, list)) else "affine",
                  traced)
        if self.kind[node] == "affine":
            self._linearize(node, node, traced, None)

    def _item(self, node: fx.Node, source: fx.Node) -> None:
        index = node.args[1]
        parent = self.values[source]
        value = parent[index]
        self.values[node] = value
        if self.kind.get(source) != "tuple":
            self.kind[node] = "dependent"
            return
        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
            self.kind[node] = "dependent"
            return
        inputs = self.sources[source]
        if source in self.pool:
            if index != 0:
                self._refuse(node, "it uses an output of max pooling other than the maximum")
            self.pool[node] = self.pool[source]
            self._set(node, "maxpool", inputs)
            return
        self._set(node, "affine", inputs)
        self._linearize(node, source, inputs, index)

    def _linearize(self, node, op_node, traced, index) -> None:
        """Store the batched VJP at the centre of ``op_node``'s output (item ``index``)."""
        def function(*operands):
            replaced = dict(zip(traced, operands))
            args = fx.node.map_arg(op_node.args,
                                   lambda n: replaced.get(n, self.values[n]))
            kwargs = fx.node.map_arg(op_node.kwargs,
                                     lambda n: replaced.get(n, self.values[n]))
            out = op_node.target(*args, **kwargs)
            return out if index is None else out[index]
        try:
            with torch.enable_grad():
                out, pullback = vjp(function, *[self.values[m] for m in traced])
            batched = vmap(pullback)
            batched(torch.zeros((1, *out.shape), dtype=out.dtype, device=out.device))
        except (RuntimeError, NotImplementedError) as err:
            self._refuse(node, f"its vector-Jacobian product failed ({first_line(err)})")
        self.vjps[node] = batched


def _pair(value):
    if value is None:
        return None
    if isinstance(value, int):
        return (value, value)
    value = tuple(value)
    return value * 2 if len(value) == 1 else value



def supported_reason(traced, x: torch.Tensor) -> str | None:
    """None if the linear certificate applies to the traced model, else why not."""
    try:
        graph = AffineGraph(traced, x[:1].detach().to(torch.float64))
    except UnsupportedModuleError as err:
        return str(err)
    work = 0
    sizes = [math.prod(graph.values[n].shape[1:]) for n in graph.order]
    for i, node in enumerate(graph.order):
        if graph.kind[node] in ("relu", "maxpool"):
            work += 2 * sizes[i] * sum(sizes[:i + 1])
    if work > WORK_LIMIT:
        return (f"linear bounds: the intermediate bounds would take about {work:.1e} "
                f"multiply-adds per input (limit {WORK_LIMIT:.0e}).")
    return None
