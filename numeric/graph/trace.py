"""Run the exported ATen graph and build the architecture graph with certified constants.

:func:`build_graph` runs the functional ATen graph of :func:`~numeric.graph.export.
export_model` on two copies of the example row and sorts every value into

- *traced*: a floating tensor that depends on the network input differentiably; the rule
  of the operation that made it (:mod:`numeric.graph.registry`) gives its graph node;
- *constant*: a value that does not depend on the input (parameters, buffers, a class token
  expanded to the batch, shapes); it becomes a factor of the rule that uses it;
- *dependent*: a value computed from the input without a usable derivative (a comparison,
  an index, max-pool indices, a Python number from ``.item()``): it may flow into other
  such values but an operation producing a floating tensor from one is refused.

Next to every traced value it carries its rows (:mod:`numeric.graph.rows`), proving that
output row ``b`` depends on input row ``b`` alone, and a bound on its token norms where one
is known (LayerNorm -> attention). :meth:`TracedGraph.local_constants` runs the same graph
on a float64 batch and evaluates the local rules at every row.
"""

from __future__ import annotations

import copy
import math
import os
import operator
from dataclasses import dataclass, field

import networkx as nx
import torch
from torch import fx, nn

from numeric.errors import InputError, UnsupportedModuleError
from numeric.graph.export import LEAF_OP, Exported, first_line
from numeric.graph.norms import conv_operator_norm_bounds
from numeric.graph.registry import (GraphOptions, NodeSpec, RuleContext, Value,
                                    bind_arguments, describe_target, lookup_rule,
                                    unsupported)
from numeric.graph.kinds import KindBuilders, ProductBuilder, _Info, _node
from numeric.graph.rows import (MixedRowsError, Rows, broadcast_rows, check_output_rows,
                                map_rows)

__all__ = ["TracedGraph", "build_graph", "evaluate_constants", "UNIT_OPS", "ACTIVATION_OPS"]

#: Graph ops that move coordinates without changing them (norm 1 when ``copies`` is 1).
UNIT_OPS = ("identity", "dropout", "flatten", "reshape", "permute", "select")
#: Elementwise ops whose local rule stashes the derivative.
ACTIVATION_OPS = ("relu", "leaky_relu", "elu", "tanh", "sigmoid", "softplus", "gelu",
                  "gelu_tanh", "silu", "hardswish", "mish", "relu6", "hardtanh")

#: Operators whose result has the shape of their input but not its values.
_CONSTANT_LIKE = {torch.ops.aten.zeros_like, torch.ops.aten.ones_like,
                  torch.ops.aten.empty_like, torch.ops.aten.full_like,
                  torch.ops.aten.new_zeros, torch.ops.aten.new_ones,
                  torch.ops.aten.new_empty, torch.ops.aten.new_full,
                  torch.ops.aten.empty_strided, torch.ops.aten.scalar_tensor}
#: Operators whose result is uninitialised memory.
_UNINITIALISED = {torch.ops.aten.empty, torch.ops.aten.empty_like, torch.ops.aten.new_empty,
                  torch.ops.aten.empty_strided, torch.ops.aten.empty_permuted}
#: Operators that make a tensor from nothing but sizes and values (their ``dtype`` follows
#: the pass's, like the lifted constants).
_CREATION = _UNINITIALISED | _CONSTANT_LIKE | {
    torch.ops.aten.zeros, torch.ops.aten.ones, torch.ops.aten.full, torch.ops.aten.arange}
#: Random operators that draw nothing when their ``train`` argument is False.
_DROPOUTS = {torch.ops.aten.dropout, torch.ops.aten.feature_dropout,
             torch.ops.aten.alpha_dropout, torch.ops.aten.feature_alpha_dropout,
             torch.ops.aten.native_dropout}


def _draws_random_numbers(node: fx.Node) -> bool:
    """Whether the operation draws random numbers (its operator is tagged so by torch)."""
    target = node.target
    if not isinstance(target, torch._ops.OpOverload) or \
            torch.Tag.nondeterministic_seeded not in target.tags:
        return False
    if target.overloadpacket in _DROPOUTS:      # read by schema name, however spelled
        return bind_arguments(target, node.args, node.kwargs)["train"] is not False
    return True


#: Operators that read only the shape of their input.
_SHAPE_OPS = {torch.ops.aten.sym_size.int, torch.ops.aten.sym_numel.default,
              torch.ops.aten.sym_stride.int, torch.ops.aten.sym_storage_offset.default,
              torch.ops.aten.sym_size, torch.ops.aten.sym_numel,
              torch.ops.aten.sym_stride}


@dataclass
class TracedGraph:
    """The architecture graph of a model and what is needed to evaluate local rules.

    Attributes
    ----------
    G : networkx.DiGraph
        The graph with certified global constants.
    exported : Exported
    options : GraphOptions
    specs : dict
        Graph key -> :class:`NodeSpec` of the rule that made the node.
    local_nodes : dict
        ATen node name -> graph key, for nodes whose rule has a local form.
    input_ndim : dict
        Graph key -> number of dimensions of the op's (first) input.
    standard_input : set
        Graph keys whose input is in the standard row layout (dimension 0 the batch).
    merged : set
        Nodes merged into a neighbour by a pass (their constant is 1).
    """

    G: nx.DiGraph
    exported: Exported
    options: GraphOptions
    specs: dict = field(default_factory=dict)
    local_nodes: dict = field(default_factory=dict)
    input_ndim: dict = field(default_factory=dict)
    standard_input: set = field(default_factory=set)
    merged: set = field(default_factory=set)
    lazy: set = field(default_factory=set)
    kinds: dict = field(default_factory=dict)
    region_nodes: dict = field(default_factory=dict)   # fx name -> key (rules with a region form)
    created: dict = field(default_factory=dict)
    contracted: dict = field(default_factory=dict)
    value_factor: dict = field(default_factory=dict)
    value_shrink: dict = field(default_factory=dict)
    _float64: dict = field(default_factory=dict)

    def local_constants(self, x: torch.Tensor, keep=()) -> tuple[dict, dict, torch.Tensor]:
        """Local constants at every row of ``x``, computed in float64.

        Returns
        -------
        constants : dict
            Graph key -> Tensor of shape (B,).
        stashes : dict
            Graph key -> stash of the local rule, for the keys in ``keep``.
        logits : Tensor of shape (B, K), float64
        """
        runner = _Runner(self, local=True, keep=set(keep))
        with torch.no_grad():
            logits = runner.run(x.detach().to(torch.float64))
        return runner.constants, runner.stashes, logits

    def inputs_as(self, dtype: torch.dtype, device) -> dict:
        """The lifted parameters, buffers and constants, floating ones cast to ``dtype``."""
        cache_key = (dtype, str(device))
        if cache_key not in self._float64:
            def cast(value):
                if isinstance(value, torch.Tensor):
                    value = value.detach().to(device)
                    return value.to(dtype) if value.is_floating_point() else value
                return value
            self._float64[cache_key] = {name: cast(value)
                                        for name, value in self.exported.inputs.items()}
        return self._float64[cache_key]

    def leaf_module(self, call, dtype: torch.dtype) -> nn.Module:
        """The module of a leaf call, as a copy in ``dtype`` when it is not already."""
        module = call.module
        if all(p.dtype == dtype for p in (*module.parameters(), *module.buffers())
               if p.is_floating_point()):
            return module
        key = (id(module), dtype)
        if key not in self._float64:
            self._float64[key] = copy.deepcopy(module).to(dtype)
        return self._float64[key]


# =========================================================================== the runner


def _is_tensor_like(value) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    return isinstance(value, (list, tuple)) and any(isinstance(v, torch.Tensor) for v in value)


class _Runner(KindBuilders, ProductBuilder):
    """Runs the ATen graph once, building the graph (global) or local constants."""

    def __init__(self, traced: TracedGraph, *, local: bool, keep: set | None = None) -> None:
        self.traced = traced
        self.local = local
        self.keep = keep or set()
        self.constants: dict = {}
        self.stashes: dict = {}
        self.env: dict = {}
        self.info: dict = {}
        self.batch = 0

    @property
    def G(self) -> nx.DiGraph:
        return self.traced.G

    # ------------------------------------------------------------------ main loop

    def run(self, x: torch.Tensor):
        exported = self.traced.exported
        graph = exported.module.graph
        dtype = torch.float64 if self.local else x.dtype
        inputs = self.traced.inputs_as(dtype, x.device)
        self.batch = x.shape[0]
        nodes = list(graph.nodes)
        last_use = {}
        for index, node in enumerate(nodes):
            for used in node.all_input_nodes:
                last_use[used] = index
        result = None
        for index, node in enumerate(nodes):
            if node.op == "placeholder":
                value = x if node.name == exported.input_name else inputs[node.name]
                self.env[node] = value
                self.info[node] = self._placeholder(node, value)
            elif node.op == "get_attr":
                value = getattr(exported.module, node.target)
                self.env[node] = value
                self.info[node] = _Info("constant")
            elif node.op == "call_function":
                value = self._evaluate(node, dtype)
                self.env[node] = value
                self.info[node] = self._classify(node, value)
            elif node.op == "output":
                result = self._output(node)
            for used in node.all_input_nodes:
                if last_use.get(used) == index:
                    self.env.pop(used, None)
                    self.info.pop(used, None)
        return result

    def _placeholder(self, node: fx.Node, value) -> _Info:
        if node.name != self.traced.exported.input_name:
            return _Info("constant")
        if not self.local:
            self.G.add_node(node.name, op="input", label="the network input",
                            params={"shape": list(value.shape[1:])})
        return _Info("traced", key=node.name, rows=Rows.standard(value.shape))

    def _evaluate(self, node: fx.Node, dtype: torch.dtype):
        args = fx.node.map_arg(node.args, lambda n: self.env[n])
        kwargs = fx.node.map_arg(node.kwargs, lambda n: self.env[n])
        made = kwargs.get("dtype")
        if getattr(node.target, "overloadpacket", None) in _CREATION and \
                isinstance(made, torch.dtype) and made.is_floating_point and made != dtype:
            # a buffer the export created in the model's dtype (circular padding's): made
            # in this pass's, like the lifted constants, or float64 values meet float32
            kwargs = {**kwargs, "dtype": dtype}
        try:
            if node.target is LEAF_OP:
                call = self.traced.exported.calls[args[1]]
                module = self.traced.leaf_module(call, dtype) if self.local else call.module
                return call.run(list(args[0]), module)
            value = node.target(*args, **kwargs)
        except Exception as err:  # noqa: BLE001 - the model's own code failed on this input
            raise InputError(f"module_graph: the model failed at {self._where(node)} "
                             f"({type(err).__name__}: {first_line(err)}); check the input "
                             f"shape.") from err
        if getattr(node.target, "overloadpacket", None) in _UNINITIALISED and \
                isinstance(value, torch.Tensor):
            # a correct program overwrites these entries before reading them (a circular
            # pad fills its buffer slice by slice), but the values in between pass through
            # the movement replays and value bounds: zeros, not whatever memory held (NaN)
            value = value.zero_()
        return value

    def _where(self, node: fx.Node) -> str:
        target = node.target
        if target is LEAF_OP:
            call = self.traced.exported.calls.get(node.args[1])
            name = type(call.module).__name__ if call is not None else "leaf"
            target_name = f"{name} kept whole"
        else:
            target_name = describe_target(target)
            original = node.meta.get("original_aten")
            if original is not None and str(original) != str(target):
                # a step of a decomposed operator: name the operator the user wrote
                target_name += f" inside {describe_target(original)}"
        source = self.traced.exported.source(node)
        return f"{target_name} (node {node.name!r}{', ' + source if source else ''})"

    # ------------------------------------------------------------------ classification

    def _classify(self, node: fx.Node, result) -> _Info:
        infos = [self.info[m] for m in node.all_input_nodes]
        if node.target is operator.getitem and infos and infos[0].kind in ("tuple",
                                                                          "pending"):
            return self._tuple_item(node, result)
        for info in infos:
            if info.kind == "forbidden":
                raise UnsupportedModuleError(f"module_graph: cannot bound "
                                             f"{self._where(node)}: {info.reason}.")
        traced = any(info.kind in ("traced", "tuple", "pending") for info in infos)
        dependent = any(info.kind == "dependent" for info in infos)
        target = node.target
        if _draws_random_numbers(node):
            # before the constant shortcut: a mask or a noise scale drawn without the input
            # (dropout2d's per-channel mask, torch.rand(())) changes every call just as much
            raise UnsupportedModuleError(
                f"module_graph: cannot bound {self._where(node)}: it draws random numbers "
                f"(dropout in training mode, or noise), so the model is not one function "
                f"of its input and its Fisher information is undefined; call model.eval() "
                f"or remove it.")
        if target in _SHAPE_OPS or (not traced and not dependent):
            return _Info("constant")
        packet = getattr(target, "overloadpacket", None)
        if target in _CONSTANT_LIKE or packet in _CONSTANT_LIKE:
            return _Info("constant")
        if isinstance(result, torch.Tensor) and result.is_complex():
            return _Info("forbidden", reason=f"it uses {node.name!r}, a complex tensor "
                                             f"computed from the input (an FFT?), which no "
                                             f"rule covers")
        if not _is_tensor_like(result) or (isinstance(result, torch.Tensor)
                                           and not result.is_floating_point()):
            return _Info("dependent")
        if dependent:
            culprit = next(m for m in node.all_input_nodes if self.info[m].kind == "dependent")
            raise UnsupportedModuleError(
                f"module_graph: cannot bound {self._where(node)}: it uses {culprit.name!r}, "
                f"which is computed from the input but has no derivative (a comparison, an "
                f"index, max-pool indices, or a Python number from .item()/float()); the "
                f"result would jump as the input moves, so no Lipschitz bound exists.")
        if not self.local and node.target is operator.getitem:
            raise unsupported(self._context(node, result), "indexing a list of tensors")
        return self._apply_rule(node, result)

    def _tuple_item(self, node: fx.Node, result) -> _Info:
        source = self.info[node.args[0]]
        index = node.args[1]
        if source.kind == "pending":
            return self._movement(node, result, *source.pending, index=index)
        entry = (source.outputs or {}).get(index)
        if entry == "traced":
            return _Info("traced", key=source.key, rows=source.entry_rows[index],
                         radius=source.radius, bound=source.bound)
        if entry == "meta":
            return _Info("dependent")
        return _Info("forbidden", reason=f"it uses entry {index} of the output of "
                                         f"{node.args[0].name!r}, which its rule does not "
                                         f"cover")

    # ------------------------------------------------------------------ rules

    def _context(self, node: fx.Node, result) -> RuleContext:
        def wrap(item):
            if isinstance(item, fx.Node):
                info = self.info[item]
                traced = info.kind in ("traced", "tuple", "pending")
                return Value(self.env[item], traced, item.name, info.radius, info.rows,
                             info.kind == "dependent")
            if isinstance(item, (list, tuple)):
                return type(item)(wrap(entry) for entry in item)
            return item
        target, module, call = node.target, None, None
        if target is LEAF_OP:
            call = self.traced.exported.calls[node.args[1]]
            module, target = call.module, call.module
            arguments = {"tensors": wrap(list(node.args[0]))}
        else:
            arguments = {name: wrap(item) for name, item in
                         bind_arguments(node.target, node.args, node.kwargs).items()}
        ctx = RuleContext(node, target, module, arguments, result, self.traced.options,
                          where=self._where(node), call=call)
        ctx.batch = self.batch
        return ctx

    def _apply_rule(self, node: fx.Node, result) -> _Info:
        ctx = self._context(node, result)
        rule = lookup_rule(ctx.target)
        if rule is None:
            raise unsupported(ctx)
        if self.local:
            spec = self.traced.specs.get(self.traced.local_nodes.get(node.name)) or \
                self.traced.kinds.get(node.name)
            if spec is None:
                spec = rule.bound(ctx)
        else:
            spec = rule.bound(ctx)
            self.traced.kinds[node.name] = spec
        try:
            info = self._dispatch(node, ctx, spec, rule, result)
            if self.local:
                self._after(node, ctx, info)
            return info
        except MixedRowsError as err:
            raise UnsupportedModuleError(
                f"module_graph: cannot bound {ctx.where}: {err}; the per-sample Fisher "
                f"information is undefined for a model that mixes the rows of a batch "
                f"(BatchNorm or dropout in training mode, a reduction over dimension 0).") \
                from err

    def _dispatch(self, node, ctx, spec: NodeSpec, rule, result) -> _Info:
        kind = spec.kind
        if kind == "alias":
            source = self.info[_node(node, ctx.traced()[0].name)]
            rows = broadcast_rows(source.rows, result.shape)
            return _Info("traced", key=source.key, rows=rows, radius=source.radius,
                         bound=source.bound)
        if kind == "movement":
            operands = self._operands(ctx)
            infos = {name: self.info[_node(node, name)] for name in operands}
            if isinstance(result, (list, tuple)):
                return _Info("pending", pending=(ctx, operands, spec, infos))
            return self._movement(node, result, ctx, operands, spec, infos)
        if kind == "sum":
            return self._sum(node, ctx, spec, result)
        if kind == "scale":
            return self._scale(node, ctx, spec, result)
        if kind == "choose":
            return self._choose(node, ctx, spec, result)
        if kind == "product":
            return self._product(node, ctx, spec, result)
        return self._map(node, ctx, spec, rule, result)

    def _operands(self, ctx: RuleContext) -> dict:
        """Distinct input-dependent operands: fx name -> (value, rows)."""
        operands = {}
        for value in ctx.traced():
            operands.setdefault(value.name, (value.value, value.rows))
        return operands

    # ------------------------------------------------------------------ node building

    def _add_node(self, key: str, spec: NodeSpec, preds: list[str], node: fx.Node) -> None:
        if self.local:
            return
        attrs = {"op": spec.op, "params": _json(spec.params), "certified": spec.certified,
                 "label": spec.label, "module": self.traced.exported.module_path(node),
                 "aten": describe_target(node.target) if node.target is not LEAF_OP
                 else "leaf"}
        distinct = []
        for index, pred in enumerate(preds):
            if pred in distinct:
                # one graph node used twice (x and -x, a sign flip adds no node): the
                # graph holds one edge per pair, so each further use gets its own node,
                # else the rules would count it once (cat([h, -h]) as h alone); made
                # first, so that passes over `created` meet them before this node
                pred = self._unit(f"{key}_use{index}", pred, 1.0, node,
                                  "another use of the same value")
            distinct.append(pred)
        self.traced.created.setdefault(node.name, []).append(key)
        if callable(spec.lipschitz):
            self.traced.lazy.add(key)
        elif spec.lipschitz is not None:
            attrs["lipschitz"] = float(spec.lipschitz)
        self.G.add_node(key, **attrs)
        for pred in distinct:
            self.G.add_edge(pred, key)
        self.traced.specs[key] = spec

    def _map(self, node, ctx, spec: NodeSpec, rule, result) -> _Info:
        traced = ctx.traced()
        names = {value.name for value in traced}
        if len(names) != 1:
            raise unsupported(ctx, "it takes several input-dependent tensors and its rule "
                                   "covers one")
        value = traced[0]
        tensor = result
        if spec.outputs is not None:
            index = next(i for i, kind in spec.outputs.items() if kind == "traced")
            tensor = result[index]
        pred, rows = self.info[_node(node, value.name)].key, value.rows
        if not spec.mixes and spec.kind != "leaf" and \
                tuple(value.value.shape) != tuple(tensor.shape):
            pred, rows = self._broadcast(node, value, tensor.shape, 0)
        mixes = spec.mixes if spec.kind != "leaf" else tuple(
            d for d in range(value.value.dim()) if d != spec.batch_dim)
        dims = tuple(d % max(value.value.dim(), 1) for d in mixes)
        out_rows = map_rows(rows, dims, spec.keepdim, tensor.shape) if dims else \
            broadcast_rows(rows, tensor.shape)
        radius = spec.radius(value.radius) if spec.radius is not None else None
        key = node.name
        self._add_node(key, spec, [pred], node)
        if not self.local:
            self.traced.input_ndim[key] = value.value.dim()
            if rows.is_standard:
                self.traced.standard_input.add(key)
            if rule.local is not None:
                self.traced.local_nodes[node.name] = key
            if rule.region is not None:
                self.traced.region_nodes[node.name] = key
        else:
            self._evaluate_local(node, ctx, rule)
        if spec.outputs is not None:
            return _Info("tuple", key=key, radius=radius, outputs=spec.outputs,
                         entry_rows={index: out_rows}, bound=spec.value_bound)
        return _Info("traced", key=key, rows=out_rows, radius=radius, bound=spec.value_bound)

    def _evaluate_local(self, node, ctx, rule) -> None:
        """The local constant of a map node (a region runner evaluates another form)."""
        if node.name in self.traced.local_nodes:
            self._run_local(node, ctx, rule)

    def _after(self, node, ctx, info) -> None:
        """Called after each operation in the local runs (a region runner tracks its
        deviations here)."""

    def _run_local(self, node, ctx, rule) -> None:
        key = self.traced.local_nodes[node.name]
        ctx.spec = self.traced.specs[key]
        ctx.keep = key in self.keep
        value = rule.local(ctx).detach().to(torch.float64).cpu()
        spec_constant = ctx.spec.lipschitz
        if isinstance(spec_constant, (int, float)) and math.isfinite(spec_constant):
            value = value.clamp_max(spec_constant)   # the global constant holds everywhere
        self.constants[key] = value
        if ctx.keep:
            self.stashes[key] = ctx.stash

    # ------------------------------------------------------------------ output

    def _output(self, node: fx.Node):
        name = self.traced.exported.output_name
        item = next(m for m in node.all_input_nodes if m.name == name)
        value = self.env[item]
        info = self.info[item]
        if not isinstance(value, torch.Tensor):
            raise InputError(f"module_graph: expected the model to return one tensor of "
                             f"logits, got {type(value).__name__}.")
        if info.kind != "traced":
            raise InputError("module_graph: the model's output does not depend on its input.")
        if value.dim() != 2:
            raise InputError(f"module_graph: expected logits of shape (B, K), got "
                             f"{tuple(value.shape)}.")
        try:
            check_output_rows(info.rows)
        except MixedRowsError as err:
            raise UnsupportedModuleError(f"module_graph: cannot bound the model: {err}; "
                                         f"the per-sample Fisher information is undefined."
                                         ) from err
        if not self.local:
            self.G.add_node("output", op="output", label="the logits",
                            params={"classes": int(value.shape[1])})
            self.G.add_edge(info.key, "output")
        return value


# =========================================================================== helpers


def _json(params: dict) -> dict:
    def convert(value):
        if isinstance(value, (list, tuple)):
            return [convert(v) for v in value]
        if isinstance(value, dict):
            return {str(k): convert(v) for k, v in value.items()}
        if isinstance(value, torch.Tensor):
            return value.tolist()
        if isinstance(value, float) and not math.isfinite(value):
            return str(value)
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        return str(value)
    return {str(k): convert(v) for k, v in params.items()}


# =========================================================================== entry


def build_graph(exported: Exported, example_input: torch.Tensor,
                options: GraphOptions) -> TracedGraph:
    """Run the exported graph on two copies of the example's first row and build the
    architecture graph (passes not applied yet)."""
    G = nx.DiGraph()
    traced = TracedGraph(G, exported, options)
    row = example_input[:1]
    x = row.expand(2, *row.shape[1:]).clone()
    with torch.no_grad():
        _Runner(traced, local=False).run(x)
    if "output" not in G:
        raise InputError("module_graph: the model returned nothing the graph can bound.")
    keep = nx.ancestors(G, "output") | {"output"}
    G.remove_nodes_from([node for node in list(G) if node not in keep])
    if not any(op == "input" for _, op in G.nodes(data="op")):
        raise InputError("module_graph: the logits do not depend on the input.")
    return traced


def evaluate_constants(traced: TracedGraph) -> None:
    """Compute the constants left as callables (after the folding passes, so that a
    layer's norm is computed once, for the folded weight)."""
    G = traced.G
    convolutions = [key for key in sorted(traced.lazy & set(G))
                    if traced.specs[key].conv_layer is not None
                    and callable(traced.specs[key].lipschitz)]
    if convolutions:   # every convolution in one concurrent call
        values = conv_operator_norm_bounds(
            [traced.specs[key].conv_layer for key in convolutions],
            method=traced.options.conv_method, workers=max(1, min(2, os.cpu_count() or 1)))
        for key, value in zip(convolutions, values):
            traced.specs[key] = traced.specs[key].replace(lipschitz=float(value))
    for key in sorted(traced.lazy & set(G)):
        spec = traced.specs[key]
        if callable(spec.lipschitz):
            value = float(spec.lipschitz())
            traced.specs[key] = spec.replace(lipschitz=value)
        else:
            value = float(spec.lipschitz)
        if "lipschitz" not in G.nodes[key] or key not in traced.merged:
            G.nodes[key]["lipschitz"] = value
    traced.lazy.clear()
