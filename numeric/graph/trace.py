"""torch.fx tracing of a model into the architecture-graph schema of ``docs/internals.md``.

:func:`trace_model` traces the model symbolically (modules with a registered rule are
leaves), then runs the traced graph on an example input with an interpreter that, node by
node, sorts every value into

- *traced*: a tensor that depends on the network input: it gets a graph node from its rule;
- *constant*: a tensor that does not (parameters, buffers, a class token expanded to the
  batch): it becomes a ``constant`` node (L = 0) where an ``add`` or ``concat`` uses it,
  and a factor where a ``scale`` or ``linear`` uses it;
- *meta*: anything else (shapes, sizes, ``torch._assert``), which carries no derivative.

A second run (:meth:`Traced.local_constants`) on a float64 copy evaluates the local rules
at every row of a batch.
"""

from __future__ import annotations

import copy
import inspect
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import networkx as nx
import torch
from torch import fx, nn

from numeric.errors import InputError, TraceError
from numeric.graph.norms import linear_operator_norm
from numeric.graph.registry import (
    GraphOptions,
    NodeSpec,
    RuleContext,
    Value,
    describe_target,
    lookup_rule,
    registered_module_types,
    unsupported,
)
from numeric.graph.rules import (CHANNELWISE_TARGETS, ELEMENTWISE_TARGETS, FLATTEN_TARGETS,
                                 movement_spec, multiplicity)

__all__ = ["trace_model", "Traced", "last_linear", "UNIT_OPS", "ACTIVATION_OPS"]

#: Ops that move coordinates without changing their order in memory (D vectors stay valid).
UNIT_OPS = ("identity", "dropout", "flatten", "reshape")
#: Elementwise ops whose local rule stashes the derivative.
ACTIVATION_OPS = ("relu", "leaky_relu", "elu", "tanh", "sigmoid", "softplus", "gelu",
                  "gelu_tanh", "silu", "hardswish", "mish", "relu6", "hardtanh")

#: Functions whose result has the shape of an input-dependent tensor but not its values.
_CONSTANT_LIKE = {torch.zeros_like, torch.ones_like, torch.empty_like, torch.full_like,
                  torch.rand_like, torch.randn_like, "new_zeros", "new_ones", "new_empty",
                  "new_full", "new_tensor", "zero_"}


# =========================================================================== tracing


class _Tracer(fx.Tracer):
    """fx tracer whose leaves include every module class with a registered rule and that
    remembers which module it was inside when tracing failed."""

    def __init__(self, leaves: tuple[type, ...]) -> None:
        super().__init__()
        self.leaves = leaves
        self.path: list[tuple[str, str]] = []
        self.failed_at: tuple[str, str] | None = None

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, self.leaves) or super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        self.path.append((self.path_of_module(m), type(m).__name__))
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed_at is None:
                self.failed_at = self.path[-1]
            raise
        finally:
            self.path.pop()


def _symbolic_trace(model: nn.Module) -> fx.GraphModule:
    leaves = registered_module_types()
    tracer = _Tracer(leaves)
    signature = inspect.signature(model.forward)
    params = list(signature.parameters.values())
    concrete = {p.name: p.default for p in params[1:]
                if p.default is not inspect.Parameter.empty}
    required = [p.name for p in params[1:] if p.default is inspect.Parameter.empty
                and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if required:
        raise InputError(f"module_graph: expected a model with one input, got forward "
                         f"arguments {[params[0].name, *required]}.")
    try:
        graph = tracer.trace(model, concrete_args=concrete or None)
    except Exception as err:
        path, kind = tracer.failed_at or ("", type(model).__name__)
        where = f"{path!r} ({kind})" if path else f"the model's own forward ({kind})"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise TraceError(
            f"module_graph: torch.fx could not trace {where}: {first}. Make its forward "
            f"traceable, or treat it as one leaf by registering a rule: "
            f"numeric.register_rule({kind}, rule) - see help(numeric.register_rule).") from err
    return fx.GraphModule(model, graph, class_name=type(model).__name__)


# =========================================================================== state


@dataclass
class _Info:
    """What the interpreter knows about one fx node's value."""

    kind: str                      # traced | constant | meta | tuple | pending
    key: str | None = None         # graph node standing for the value (traced, tuple)
    radius: float | None = None
    tuple_index: int | None = None
    pending: tuple | None = None   # encoded tuple of a data-movement op (pending)
    live: torch.Tensor | None = None  # entries that may depend on the input (None: all)


@dataclass
class Traced:
    """A traced model: the architecture graph and what is needed to evaluate local rules.

    Attributes
    ----------
    G : networkx.DiGraph
        The architecture graph with certified global constants.
    module : torch.fx.GraphModule
    specs : dict
        Graph key -> :class:`NodeSpec` of the rule that made the node.
    local_nodes : dict
        fx node name -> graph key, for nodes whose rule has a local form.
    input_ndim : dict
        Graph key -> number of dimensions of the op's input (batch included).
    """

    G: nx.DiGraph
    module: fx.GraphModule
    options: GraphOptions
    specs: dict = field(default_factory=dict)
    local_nodes: dict = field(default_factory=dict)
    input_ndim: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)
    merged: set = field(default_factory=set)
    lazy: set = field(default_factory=set)

    def local_constants(self, x: torch.Tensor, keep: Iterable[str] = ()
                        ) -> tuple[dict, dict, torch.Tensor]:
        """Local constants at every row of ``x`` (float64 copy of the model).

        Returns
        -------
        constants : dict
            Graph key -> Tensor of shape (B,).
        stashes : dict
            Graph key -> stash of the local rule, for the keys in ``keep``.
        logits : Tensor of shape (B, K), float64
        """
        module = self.module
        if any(t.is_floating_point() and t.dtype != torch.float64
               for t in (*module.parameters(), *module.buffers())):
            module = copy.deepcopy(module).to(torch.float64)
        device = next((t.device for t in module.parameters()), x.device)
        runner = _Runner(module, self, local=True, keep=set(keep))
        with torch.no_grad():
            logits = runner.run(x.to(device, torch.float64))
        return runner.constants, runner.stashes, logits


# =========================================================================== interpreter


def _is_tensor_like(value) -> bool:
    if isinstance(value, torch.Tensor):
        return True
    if isinstance(value, (tuple, list)) and value:
        return all(isinstance(v, torch.Tensor) or v is None for v in value) and any(
            isinstance(v, torch.Tensor) for v in value)
    return False


class _Runner(fx.Interpreter):
    """Runs the traced model once, building the graph (global) or local constants."""

    def __init__(self, module: fx.GraphModule, traced: Traced, *, local: bool,
                 keep: set | None = None) -> None:
        super().__init__(module)
        self.traced = traced
        self.local = local
        self.keep = keep or set()
        self.constants: dict = {}
        self.stashes: dict = {}
        self.input_scales: dict = {}
        self.snapshot: dict = {}
        self.inputs_seen = 0

    # ------------------------------------------------------------------ helpers

    @property
    def G(self) -> nx.DiGraph:
        return self.traced.G

    def _value(self, node: fx.Node) -> Value:
        info = self.traced.info[node.name]
        value = self.snapshot.get(node, self.env[node])
        return Value(value, info.kind in ("traced", "tuple", "pending"), node.name,
                     info.radius, info.live)

    def _context(self, n: fx.Node, result) -> RuleContext:
        def wrap(item):
            return self._value(item) if isinstance(item, fx.Node) else item
        args = fx.node.map_aggregate(n.args, wrap)
        kwargs = fx.node.map_aggregate(n.kwargs, wrap)
        module = self.module.get_submodule(n.target) if n.op == "call_module" else None
        target = module if module is not None else n.target
        return RuleContext(n, target, module, tuple(args), dict(kwargs), result,
                           self.traced.options)

    def _add_node(self, key: str, spec: NodeSpec, preds: list[str], where: str) -> None:
        attrs = {"op": spec.op, "params": _json(spec.params), "certified": spec.certified,
                 "label": spec.label, "module": where}
        if callable(spec.lipschitz):
            self.traced.lazy.add(key)
        elif spec.lipschitz is not None:
            attrs["lipschitz"] = float(spec.lipschitz)
        self.G.add_node(key, **attrs)
        for pred in preds:
            self.G.add_edge(pred, key)
        self.traced.specs[key] = spec

    # ------------------------------------------------------------------ main

    def run_node(self, n: fx.Node):
        if self.local and n.name in self.traced.local_nodes:
            # an in-place op (ReLU(inplace=True)) overwrites its input: keep the input
            # values the local rule must see
            self.snapshot = {m: self.env[m].clone() for m in n.all_input_nodes
                             if isinstance(self.env[m], torch.Tensor)}
        try:
            result = super().run_node(n)
        except Exception as err:   # the model's own code failed on this input
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise InputError(f"module_graph: the model failed at {n.name!r} "
                             f"({type(err).__name__}: {first}); check the input shape.") \
                from err
        if self.local:
            self._run_local(n, result)
        else:
            self.traced.info[n.name] = self._classify(n, result)
        return result

    def _run_local(self, n: fx.Node, result) -> None:
        key = self.traced.local_nodes.get(n.name)
        if key is None:
            return
        ctx = self._context(n, result)
        ctx.spec = self.traced.specs[key]
        ctx.keep = key in self.keep
        rule = lookup_rule(ctx.target)
        self.constants[key] = rule.local(ctx).detach().to(torch.float64).cpu()
        if ctx.keep:
            self.stashes[key] = ctx.stash
        self.snapshot = {}

    def _classify(self, n: fx.Node, result) -> _Info:
        if n.op == "placeholder":
            return self._placeholder(n, result)
        if n.op == "get_attr":
            return _Info("constant" if _is_tensor_like(result) else "meta")
        if n.op == "output":
            self._output(n, result)
            return _Info("meta")
        inputs = [m for m in n.all_input_nodes
                  if self.traced.info[m.name].kind in ("traced", "tuple", "pending")]
        if not inputs:
            return _Info("constant" if _is_tensor_like(result) else "meta")
        if not _is_tensor_like(result):
            return _Info("meta")
        if n.target in _CONSTANT_LIKE:
            return _Info("constant")
        if n.target is _getitem() and self.traced.info[n.args[0].name].kind in (
                "tuple", "pending"):
            return self._tuple_item(n, result)
        for m in inputs:
            if self.traced.info[m.name].kind != "traced":
                raise unsupported(self._context(n, result),
                                  f"it uses the tuple returned by {m.name!r} as a whole")
        return self._apply_rule(n, result)

    def _placeholder(self, n: fx.Node, result) -> _Info:
        if not isinstance(result, torch.Tensor):
            return _Info("meta")
        self.inputs_seen += 1
        if self.inputs_seen > 1:
            raise InputError(f"module_graph: expected a model with one tensor input, got a "
                             f"second one, {n.name!r}.")
        self.G.add_node(n.name, op="input", label="the network input",
                        params={"shape": list(result.shape[1:])})
        return _Info("traced", key=n.name)

    def _tuple_item(self, n: fx.Node, result) -> _Info:
        source = self.traced.info[n.args[0].name]
        index = n.args[1]
        if source.kind == "tuple":
            if index == source.tuple_index:
                return _Info("traced", key=source.key, radius=source.radius,
                             live=source.live)
            raise unsupported(self._context(n, result),
                              f"entry {index} of the output of {source.key!r} is not covered "
                              f"by its rule (only entry {source.tuple_index} is)")
        copies = multiplicity(None, source.pending[index])
        spec = movement_spec("select", copies, "tuple entry")
        self._add_node(n.name, spec, [source.key], describe_target(n.target))
        return _Info("traced", key=n.name)

    def _apply_rule(self, n: fx.Node, result) -> _Info:
        ctx = self._context(n, result)
        rule = lookup_rule(ctx.target)
        if rule is None:
            raise unsupported(ctx)
        spec = rule.bound(ctx)
        traced = ctx.traced()
        where = n.target if n.op == "call_module" else describe_target(n.target)
        if spec.pending is not None:
            return _Info("pending", key=self.traced.info[traced[0].name].key,
                         pending=spec.pending)
        if spec.alias:
            source = self.traced.info[traced[0].name]
            live = source.live if _same_shape(source.live, result) else None
            return _Info(source.kind, key=source.key, radius=source.radius,
                         tuple_index=source.tuple_index, live=live)
        if spec.op in ("add", "concat"):
            self._multi_input(n, spec, ctx, where)
            live = _replay_liveness(ctx, result) if spec.op == "concat" else \
                _union_liveness(traced, result)
            return _Info("traced", key=n.name, live=live)
        keys = list(dict.fromkeys(self.traced.info[v.name].key for v in traced))
        if len(keys) != 1:
            raise unsupported(ctx, "it takes several input-dependent tensors, and its rule "
                                   "gives a one-input op")
        if spec.channel_scale is not None and (self._fold(n, keys[0], spec, ctx)
                                               or self._fold_forward(n, spec, ctx)):
            return self.traced.info[traced[0].name]
        if spec.feature_scale is not None and self._fold_features(n, spec,
                                                                  ctx.input.dim()):
            spec = spec.without_scale()
        if n.name in self.input_scales:
            if spec.fold_input is None:   # _fold_forward only targets conv/linear layers
                raise RuntimeError(f"module_graph: cannot fold a BatchNorm into {n.name!r}")
            spec = spec.fold_input(self.input_scales.pop(n.name))
        self._add_node(n.name, spec, keys, str(where))
        self.traced.input_ndim[n.name] = ctx.input.dim()
        if rule.local is not None:
            self.traced.local_nodes[n.name] = n.name
        kind = "tuple" if spec.tuple_index is not None else "traced"
        return _Info(kind, key=n.name, radius=spec.output_radius,
                     tuple_index=spec.tuple_index, live=_liveness(spec, ctx, result))

    def _multi_input(self, n: fx.Node, spec: NodeSpec, ctx: RuleContext, where) -> None:
        preds, seen = [], set()
        for i, value in enumerate(ctx.values()):
            if value.traced:
                key = self.traced.info[value.name].key
                if key in seen:   # a DiGraph has no parallel edges: route copies via identity
                    copy_key = f"{n.name}_copy{i}"
                    self.G.add_node(copy_key, op="identity", label="second use of an operand",
                                    params={}, certified=True, module=str(where))
                    self.G.add_edge(key, copy_key)
                    key = copy_key
                seen.add(key)
                preds.append(key)
            elif isinstance(value.value, torch.Tensor):
                const_key = f"{n.name}_constant{i}"
                self.G.add_node(const_key, op="constant", params={}, certified=True,
                                label="a tensor that does not depend on the input (L = 0)",
                                module=value.name)
                preds.append(const_key)
        self._add_node(n.name, spec, preds, str(where))

    def _fold_forward(self, n: fx.Node, spec: NodeSpec, ctx: RuleContext) -> bool:
        """Fold a channel scaling into the conv/linear layer after it, when only
        elementwise or per-channel ops (whose Jacobians commute with the scaling) lie in
        between and nothing else uses the intermediate values."""
        if not self.traced.options.fold_batchnorm or ctx.input.dim() < 2:
            return False
        node, flattened = n, False
        while len(node.users) == 1:
            (node,) = node.users
            if node.op not in ("call_module", "call_function", "call_method"):
                return False
            target = self.module.get_submodule(node.target) if node.op == "call_module" \
                else node.target
            kind = type(target) if isinstance(target, nn.Module) else target
            if isinstance(target, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and not flattened:
                break
            if isinstance(target, nn.Linear) and (flattened or ctx.input.dim() == 2):
                break
            if _hashable(kind) and kind in FLATTEN_TARGETS and not flattened:
                flattened = _flattens_from_channels(node, target)
                if not flattened:
                    return False
                continue
            if not (_hashable(kind) and kind in CHANNELWISE_TARGETS):
                return False
        else:
            return False
        self.input_scales[node.name] = spec.channel_scale
        return True

    def _fold_features(self, n: fx.Node, spec: NodeSpec, ndim: int) -> bool:
        """Fold LayerNorm's gamma (a diagonal map on the last dimension) into the linear
        layer after it, when only elementwise ops and token selections lie in between."""
        if not self.traced.options.fold_batchnorm:
            return False
        node = n
        while len(node.users) == 1:
            (node,) = node.users
            if node.op not in ("call_module", "call_function", "call_method"):
                return False
            target = self.module.get_submodule(node.target) if node.op == "call_module" \
                else node.target
            if isinstance(target, nn.Linear):
                if target.in_features != spec.feature_scale.numel():
                    return False
                self.input_scales[node.name] = spec.feature_scale
                return True
            kind = type(target) if isinstance(target, nn.Module) else target
            if _hashable(kind) and kind in ELEMENTWISE_TARGETS:
                continue
            if target is _getitem() and _keeps_last_dim(node.args[1], ndim):
                items = node.args[1] if isinstance(node.args[1], tuple) else (node.args[1],)
                ndim += sum(1 for i in items if i is None) - sum(
                    1 for i in items if isinstance(i, int))
                continue
            return False
        return False

    def _fold(self, n: fx.Node, pred_key: str, spec: NodeSpec, ctx: RuleContext) -> bool:
        """Fold a channel scaling (BatchNorm) into the conv/linear node before it."""
        if not self.traced.options.fold_batchnorm:
            return False
        source = self.traced.specs.get(pred_key)
        producer = ctx.traced()[0].name
        if (source is None or source.fold is None or producer != pred_key
                or len(_node(self.module, producer).users) != 1):
            return False
        if source.op == "linear" and self.traced.input_ndim.get(pred_key) != 2:
            return False
        folded = source.fold(spec.channel_scale)
        data = self.G.nodes[pred_key]
        data["label"] = folded.label
        data["module"] = f"{data['module']}+{n.target}"
        self.traced.specs[pred_key] = folded
        return True

    def _output(self, n: fx.Node, result) -> None:
        (item,) = n.args
        if not isinstance(item, fx.Node) or not isinstance(result, torch.Tensor):
            raise InputError("module_graph: expected the model to return one tensor of "
                             f"logits, got {type(result).__name__}.")
        info = self.traced.info[item.name]
        if info.kind != "traced":
            raise InputError("module_graph: the model's output does not depend on its input.")
        if result.dim() != 2:
            raise InputError(f"module_graph: expected logits of shape (B, K), got "
                             f"{tuple(result.shape)}.")
        self.G.add_node("output", op="output", label="the logits", params={
            "classes": int(result.shape[1])})
        self.G.add_edge(info.key, "output")


def _same_shape(mask, result) -> bool:
    return mask is not None and isinstance(result, torch.Tensor) and \
        mask.shape[1:] == result.shape[1:]


def _compact(mask: torch.Tensor | None) -> torch.Tensor | None:
    """Masks are kept on the CPU; an all-true mask is stored as None (everything live)."""
    return None if mask is None or bool(mask.all()) else mask.cpu()


def _replay_liveness(ctx: RuleContext, result) -> torch.Tensor | None:
    """Entries of the result that may depend on the input: the op applied to 0/1 masks
    (1 where an operand may depend on the input); None (all) when that is not possible."""
    def mask(item):
        if isinstance(item, Value):
            value = item.value
            if not isinstance(value, torch.Tensor):
                return value
            if not item.traced:
                return torch.zeros_like(value, dtype=torch.float64)
            ones = torch.ones_like(value, dtype=torch.float64)
            return ones if item.live is None else ones * item.live.to(value.device)
        if isinstance(item, (list, tuple)):
            return type(item)(mask(entry) for entry in item)
        return item
    try:
        args = mask(ctx.args)
        kwargs = {key: mask(value) for key, value in ctx.kwargs.items()}
        if ctx.node.op == "call_module":
            out = ctx.module(*args, **kwargs)
        elif ctx.node.op == "call_method":
            out = getattr(args[0], ctx.target)(*args[1:], **kwargs)
        else:
            out = ctx.target(*args, **kwargs)
    except Exception:   # noqa: BLE001 - liveness is an optional refinement
        return None
    if not isinstance(out, torch.Tensor) or out.shape != _first_tensor(result).shape:
        return None
    return _compact(out != 0)


def _union_liveness(traced: list[Value], result) -> torch.Tensor | None:
    """Entries of a sum that may depend on the input: the union over the operands (never
    replayed, since a difference of masks would cancel)."""
    if any(value.live is None for value in traced):
        return None
    shape = _first_tensor(result).shape
    try:
        union = torch.zeros(shape, dtype=torch.bool)
        for value in traced:
            union = union | value.live.expand(shape)
    except RuntimeError:
        return None
    return _compact(union)


def _first_tensor(result):
    return result[0] if isinstance(result, (tuple, list)) else result


def _liveness(spec: NodeSpec, ctx: RuleContext, result) -> torch.Tensor | None:
    """Propagate the live-entry mask through a one-input op (see NodeSpec.liveness)."""
    source = ctx.traced()[0].live
    output = _first_tensor(result)
    if spec.liveness == "replay":
        return _replay_liveness(ctx, result)
    if source is None or spec.liveness == "all":
        return None
    if spec.liveness == "same":
        return source if source.shape[1:] == output.shape[1:] else None
    source = source.cpu()
    if spec.liveness.startswith("last:"):
        k = int(spec.liveness.split(":")[1])
        tokens = source.flatten(source.dim() - k).any(-1)
        if tokens.shape[1:] != output.shape[1:output.dim() - k]:
            return None
        return _compact(tokens.reshape(*tokens.shape, *([1] * k)).expand(tuple(output.shape)))
    return None


def _hashable(value) -> bool:
    try:
        hash(value)
    except TypeError:
        return False
    return True


def _flattens_from_channels(node: fx.Node, target) -> bool:
    """A flatten of every dimension after the batch (channels first)."""
    if isinstance(target, nn.Module):
        return target.start_dim == 1 and target.end_dim == -1
    start = node.kwargs.get("start_dim", node.args[1] if len(node.args) > 1 else 0)
    end = node.kwargs.get("end_dim", node.args[2] if len(node.args) > 2 else -1)
    return start == 1 and end == -1


def _keeps_last_dim(index, ndim: int) -> bool:
    """Basic indexing (ints, slices, None) of fewer dimensions than ``ndim``: the last
    dimension is left whole."""
    items = index if isinstance(index, tuple) else (index,)
    if not all(i is None or isinstance(i, (int, slice)) for i in items):
        return False
    return sum(1 for i in items if i is not None) < ndim


def _getitem():
    import operator
    return operator.getitem


def _node(module: fx.GraphModule, name: str) -> fx.Node:
    return next(node for node in module.graph.nodes if node.name == name)


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


# =========================================================================== passes


def _merge_pooling(traced: Traced) -> None:
    """avgpool -> flatten -> linear with an upsampling pool: one exact matrix norm."""
    G = traced.G
    for key, spec in list(traced.specs.items()):
        if spec.op != "linear" or spec.matrix is None or traced.input_ndim.get(key) != 2:
            continue
        (flat,) = G.predecessors(key)
        if G.nodes[flat]["op"] != "flatten" or G.out_degree(flat) != 1:
            continue
        (pool,) = G.predecessors(flat)
        params = G.nodes[pool].get("params", {})
        if (G.nodes[pool]["op"] != "avgpool" or G.out_degree(pool) != 1
                or "output_size" not in params):
            continue
        out, spatial = params["output_size"], params["input_size"]
        if math.prod(out) <= math.prod(spatial):
            continue
        n_in = math.prod(spatial)
        basis = torch.eye(n_in, dtype=torch.float64).reshape(n_in, 1, *spatial)
        pool_fn = {1: torch.nn.functional.adaptive_avg_pool1d,
                   2: torch.nn.functional.adaptive_avg_pool2d,
                   3: torch.nn.functional.adaptive_avg_pool3d}[len(spatial)]
        P = pool_fn(basis, out).reshape(n_in, -1).T                  # (Q, n_in)
        W = spec.matrix
        channels = W.shape[1] // P.shape[0]
        merged = (W.reshape(W.shape[0], channels, P.shape[0]) @ P).reshape(W.shape[0], -1)
        value = linear_operator_norm(merged)
        if value >= G.nodes[pool]["lipschitz"] * G.nodes[key]["lipschitz"]:
            continue
        G.nodes[pool]["lipschitz"] = 1.0
        G.nodes[pool]["label"] = f"merged into {key!r}, which carries the constant"
        G.nodes[key]["lipschitz"] = value
        G.nodes[key]["label"] = "exact SVD of the weight times the upsampling pooling"
        traced.specs[key] = NodeSpec(**{**spec.__dict__, "lipschitz": value,
                                        "matrix": merged})
        traced.merged.update({pool, flat})
        traced.local_nodes = {k: v for k, v in traced.local_nodes.items() if v != pool}


def last_linear(G: nx.DiGraph, traced: Traced) -> str | None:
    """The linear node whose output is the logits (through identity-like nodes), if any."""
    (node,) = G.predecessors("output")
    while G.nodes[node]["op"] in ("identity", "dropout") and G.out_degree(node) == 1:
        (node,) = G.predecessors(node)
    spec = traced.specs.get(node)
    if (G.nodes[node]["op"] == "linear" and G.out_degree(node) == 1 and spec is not None
            and spec.matrix is not None and traced.input_ndim.get(node) == 2):
        return node
    return None


def _centre_logits(traced: Traced) -> None:
    G = traced.G
    node = last_linear(G, traced)
    if node is None:
        return
    W = traced.specs[node].matrix
    centred = W - W.mean(dim=0, keepdim=True)
    value = linear_operator_norm(centred)
    if value < G.nodes[node]["lipschitz"]:
        G.nodes[node]["lipschitz"] = value
        G.nodes[node]["label"] += "; centred: ||(I - 11^T/K) W||"
        G.graph["centred_logits"] = True


# =========================================================================== entry


def trace_model(model: nn.Module, example_input: torch.Tensor,
                options: GraphOptions) -> Traced:
    """Trace ``model`` and build its architecture graph with certified constants.

    ``example_input`` is a batch (B, ...); its first row fixes the shapes (conv grids,
    pooling windows, sequence lengths). The model must already be in eval mode.
    """
    module = _symbolic_trace(model)
    G = nx.DiGraph(name=type(model).__name__)
    traced = Traced(G, module, options)
    runner = _Runner(module, traced, local=False)
    with torch.no_grad():
        runner.run(example_input[:1])
    if not any(op == "output" for _, op in G.nodes(data="op")):
        raise InputError("module_graph: the model returned nothing the graph can bound.")
    _prune(G)
    for key in traced.lazy & set(G):
        spec = traced.specs[key]
        value = float(spec.lipschitz())
        G.nodes[key]["lipschitz"] = value
        traced.specs[key] = NodeSpec(**{**spec.__dict__, "lipschitz": value})
    if options.merge_pooling:
        _merge_pooling(traced)
    if options.centre_logits:
        _centre_logits(traced)
    G.graph["input_shape"] = list(example_input.shape[1:])
    G.graph["options"] = {k: v for k, v in options.__dict__.items()}
    return traced


def _prune(G: nx.DiGraph) -> None:
    """Drop nodes that do not lead to the output (e.g. a computed but unused branch)."""
    keep = nx.ancestors(G, "output") | {"output"}
    G.remove_nodes_from([node for node in list(G) if node not in keep])
    if not any(op == "input" for _, op in G.nodes(data="op")):
        raise InputError("module_graph: the logits do not depend on the input.")

