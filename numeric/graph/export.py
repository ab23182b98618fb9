"""Export a model to a functional ATen graph: the one trace every certified bound reads.

:func:`export_model` runs :func:`torch.export.export` (non-strict: the model's own Python
runs on fake tensors) with a symbolic batch dimension, then decomposes the result into
ATen operators, keeping whole the operators that have a rule of their own (``linear``,
``silu``, ``hardswish``, ...). What this buys, by construction:

- *functional*: in-place operations (``relu_``, ``x[...] = ...``, ``+=`` on a view) are
  replaced by functional ones that compute the same values (``slice_scatter``, ...);
- *normalized arguments*: every operator call follows its schema, so a rule reads
  ``dim``/``keepdim``/``alpha`` by name with the schema's defaults, however the user spelt
  them (``axis=``, keywords, negative dimensions);
- *everything traced through*: forward hooks and pre-hooks, subclasses that override
  ``forward`` (their own code is what is traced, not the parent's), weight
  parametrisations and standardisations are ordinary operations in the graph;
- *Python numbers from tensors* show up as ``aten._local_scalar_dense`` nodes (or make the
  export fail when Python branches on them), never as values frozen at the example;
- *shapes*: every node carries its shape with the batch size as a symbol.

Module classes registered with :func:`numeric.register_rule` (``nn.MultiheadAttention``
among them) are kept whole: while exporting, the ``forward`` of each instance whose type is
exactly the registered class is routed through one opaque operator, ``fimbound::leaf``,
whose node stands for the call (its tensor arguments in order; hooks still run around
it). A subclass is traced through unless it is registered itself.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import os
import traceback
import warnings
import weakref
from dataclasses import dataclass, field

import torch
import torch.utils._pytree as pytree
from torch import fx, nn

from numeric.errors import InputError, TraceError

__all__ = ["Exported", "LeafCall", "export_model", "PRESERVED_OPS"]

aten = torch.ops.aten

#: Operators kept whole by the decomposition: each has a rule whose constant is proved for
#: the operator itself (decomposed, ``silu`` would become ``x * sigmoid(x)``, a product of
#: two input-dependent tensors with no global constant).
PRESERVED_OPS = (
    aten.linear.default, aten.silu.default, aten.hardswish.default,
    aten.hardsigmoid.default, aten.mish.default, aten.softplus.default, aten.celu.default,
    aten.selu.default, aten.log_sigmoid.default, aten._prelu_kernel.default,
    aten.instance_norm.default, aten._safe_softmax.default,
)


# =========================================================================== leaf calls


@dataclass(eq=False)
class LeafCall:
    """One call of a registered module kept whole: the module, where its tensor arguments
    go in its ``(args, kwargs)``, and the structure of its outputs."""

    module: nn.Module
    leaves: list
    spec: pytree.TreeSpec
    tensor_positions: list[int]
    output_spec: pytree.TreeSpec | None = None
    output_leaves: list | None = None

    def arguments(self, tensors) -> tuple[tuple, dict]:
        """The call's ``(args, kwargs)`` with ``tensors`` put back in place."""
        leaves = list(self.leaves)
        for position, tensor in zip(self.tensor_positions, tensors):
            leaves[position] = tensor
        return pytree.tree_unflatten(leaves, self.spec)

    #: shapes and structure of the outputs of the same call in an eager run, used to give
    #: export the output shapes of a module whose own code cannot run on fake tensors
    eager: tuple | None = None

    def run(self, tensors, module: nn.Module | None = None) -> list[torch.Tensor]:
        """Call the module's own forward (of ``module``, e.g. a float64 copy) on ``tensors``;
        its outputs, flattened, non-tensors replaced by empty tensors."""
        module = self.module if module is None else module
        args, kwargs = self.arguments(tensors)
        output = type(module).forward(module, *args, **kwargs)
        leaves, spec = pytree.tree_flatten(output)
        if self.output_spec is None:
            self.output_spec, self.output_leaves = spec, leaves
        return [leaf.clone(memory_format=torch.contiguous_format)
                if isinstance(leaf, torch.Tensor) else tensors[0].new_empty(0)
                for leaf in leaves]

    def fake(self, tensors) -> list[torch.Tensor]:
        """Outputs on fake tensors, without running the module's code on them (it may
        branch on values): empty tensors of the shapes of the same call in the eager run,
        with the batch size made symbolic where the input's is."""
        if self.eager is None:
            return self.run(tensors)
        spec, leaves, input_shape = self.eager
        self.output_spec, self.output_leaves = spec, leaves
        first = tensors[0] if tensors else None
        position = next((i for i, size in enumerate(first.shape)
                         if not isinstance(size, int)), None) if first is not None else None
        outputs = []
        for leaf in leaves:
            if not isinstance(leaf, torch.Tensor):
                outputs.append(first.new_empty(0))
                continue
            shape = list(leaf.shape)
            if position is not None and position < len(shape) and input_shape is not None \
                    and shape[position] == input_shape[position]:
                shape[position] = first.shape[position]
            outputs.append(first.new_empty(shape, dtype=leaf.dtype))
        return outputs


_CALLS: weakref.WeakValueDictionary[int, LeafCall] = weakref.WeakValueDictionary()
_NEXT_CALL = itertools.count()


@torch.library.custom_op("fimbound::leaf", mutates_args=())
def _leaf(tensors: list[torch.Tensor], call: int) -> list[torch.Tensor]:
    return _CALLS[call].run(tensors)


@_leaf.register_fake
def _leaf_fake(tensors, call):
    return _CALLS[call].fake(tensors)


LEAF_OP = torch.ops.fimbound.leaf.default


@contextlib.contextmanager
def _leaves_kept_whole(model: nn.Module, leaf_types: tuple[type, ...], calls: list,
                       example: torch.Tensor):
    """Route the forward of every instance of exactly one of ``leaf_types`` through the
    opaque ``fimbound::leaf`` operator while the model is exported, after one eager run
    that records each call's output shapes."""
    patched = [module for module in model.modules()
               if type(module) in leaf_types and "forward" not in module.__dict__]
    eager: dict = {module: [] for module in patched}
    for module in patched:
        module.forward = _recording_forward(module, eager[module])
    try:
        if patched:
            with torch.no_grad():
                model(example)
        for module in patched:
            module.forward = _routed_forward(module, calls, eager[module])
        yield
    finally:
        for module in patched:
            del module.forward


def _recording_forward(module: nn.Module, records: list):
    def forward(*args, **kwargs):
        output = type(module).forward(module, *args, **kwargs)
        leaves, spec = pytree.tree_flatten(output)
        first = next((a for a in pytree.tree_leaves((args, kwargs))
                      if isinstance(a, torch.Tensor)), None)
        records.append((spec, [leaf.detach() if isinstance(leaf, torch.Tensor) else leaf
                               for leaf in leaves],
                        tuple(first.shape) if first is not None else None))
        return output
    return forward


def _routed_forward(module: nn.Module, calls: list, eager: list):
    count = itertools.count()

    def forward(*args, **kwargs):
        leaves, spec = pytree.tree_flatten((args, kwargs))
        positions = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
        record = LeafCall(module, leaves, spec, positions)
        index = next(count)
        record.eager = eager[index] if index < len(eager) else None
        number = next(_NEXT_CALL)
        _CALLS[number] = record
        calls.append((number, record))
        outputs = _leaf([leaves[i] for i in positions], number)
        rebuilt = [outputs[i] if isinstance(leaf, torch.Tensor) else leaf
                   for i, leaf in enumerate(record.output_leaves)]
        return pytree.tree_unflatten(rebuilt, record.output_spec)
    return forward


# =========================================================================== export


@dataclass
class Exported:
    """A model exported to a functional ATen graph.

    Attributes
    ----------
    module : torch.fx.GraphModule
        The graph with parameters, buffers and constants lifted to placeholders.
    inputs : dict
        Placeholder name -> the tensor (or object) it stands for; the user input's
        placeholder is :attr:`input_name` and maps to None.
    kinds : dict
        Placeholder name -> ``"parameter"``, ``"buffer"``, ``"constant"`` or ``"input"``.
    output_name : str
        The graph node whose value is the model's output.
    calls : dict
        Leaf call number -> :class:`LeafCall` (registered modules kept whole).
    batch_symbol : object
        The symbol of the batch size in the nodes' shapes.
    """

    module: fx.GraphModule
    inputs: dict
    kinds: dict
    input_name: str
    output_name: str
    calls: dict = field(default_factory=dict)
    batch_symbol: object = None

    def source(self, node: fx.Node) -> str:
        """``module 'features.0' (Conv2d) at model.py:23`` for messages about ``node``."""
        parts = []
        stack = node.meta.get("nn_module_stack") or {}
        if stack:
            path, kind = list(stack.values())[-1]
            name = kind.rsplit(".", 1)[-1] if isinstance(kind, str) else kind.__name__
            parts.append(f"module {path!r} ({name})" if path else f"the model's forward "
                                                                   f"({name})")
        line = _user_line(node.meta.get("stack_trace") or "")
        if line:
            parts.append(f"at {line}")
        return " ".join(parts)

    def module_path(self, node: fx.Node) -> str:
        stack = node.meta.get("nn_module_stack") or {}
        return list(stack.values())[-1][0] if stack else ""


def _user_line(stack_trace: str) -> str:
    """``file.py:LINE `code``` of the innermost frame of a stack trace outside torch."""
    frames = [line.strip() for line in stack_trace.splitlines() if line.strip()]
    found = ""
    for i, line in enumerate(frames):
        if line.startswith('File "') and f"{os.sep}torch{os.sep}" not in line and \
                f"{os.sep}numeric{os.sep}graph{os.sep}" not in line:
            path = line.split('"')[1]
            number = line.split("line ")[1].split(",")[0] if "line " in line else "?"
            code = frames[i + 1] if i + 1 < len(frames) and not frames[i + 1].startswith(
                "File ") else ""
            found = f"{os.path.basename(path)}:{number}" + (f" `{code}`" if code else "")
    return found


@contextlib.contextmanager
def _quiet():
    """Silence torch's logging and warnings while exporting (they are not for our users:
    failures are reported as one line)."""
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict)
               if name.startswith("torch")] + [logging.getLogger("torch")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stderr(io.StringIO()), \
                contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def first_line(err: BaseException) -> str:
    """The first meaningful line of an exception's message."""
    for line in str(err).splitlines():
        line = line.strip()
        if line and not line.startswith(("While executing", "Original traceback",
                                          "Set TORCH", "For more information")):
            return line
    return type(err).__name__


def _user_frame(err: BaseException) -> str:
    """``file.py:LINE `code``` of the innermost traceback frame outside torch/fimbound."""
    found = ""
    for frame in traceback.extract_tb(err.__traceback__):
        path = frame.filename
        if f"{os.sep}torch{os.sep}" in path or f"{os.sep}numeric{os.sep}graph" in path \
                or "site-packages" in path and "torch" in path:
            continue
        found = f"{os.path.basename(path)}:{frame.lineno}" + (
            f" `{frame.line}`" if frame.line else "")
    return found


def _explain(err: BaseException) -> str:
    """A one-line reason for an export failure, in the user's terms."""
    name = type(err).__name__
    text = first_line(err)
    where = _user_frame(err)
    at = f" at {where}" if where else ""
    if "DataDependent" in name or "data-dependent" in text or "data dependent" in text:
        return (f"the model turns an input-dependent tensor into a Python value{at} "
                f"(float(t), int(t), t.item(), t.tolist(), or an `if` on a tensor); such "
                f"a value would be frozen at the example input, so the model is refused")
    if "Constraint" in name or "specialize" in text or "batch" in text.lower() and \
            "dynamic" in text.lower():
        return (f"the model's code depends on the batch size{at} ({text}); its rows "
                f"cannot be certified one at a time")
    return f"{name}: {text}{at}"


def unwrapped(model: nn.Module) -> nn.Module:
    """The module that computes: ``nn.DataParallel``/``DistributedDataParallel`` and
    ``torch.compile`` wrappers run their inner module's function unchanged."""
    while True:
        if isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
            model = model.module
        elif type(model).__name__ == "OptimizedModule" and hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def export_model(model: nn.Module, example_input: torch.Tensor,
                 leaf_types: tuple[type, ...] = ()) -> Exported:
    """Export ``model`` at the shape of one row of ``example_input``.

    Parameters
    ----------
    model : nn.Module
        Taken as it is (its train/eval modes are not changed).
    example_input : Tensor of shape (B, ...)
        Only its first row and dtype/device are used; the batch size is symbolic.
    leaf_types : tuple of module classes
        Instances of exactly these classes are kept whole (see the module docstring).

    Raises
    ------
    TraceError
        The model cannot be exported; the message says why in one line and names the line
        of the model's code.
    """
    model = unwrapped(model)
    if isinstance(model, torch.jit.ScriptModule):
        raise TraceError(f"module_graph: {type(model).__name__} is a TorchScript module, "
                         f"which torch.export cannot trace; pass the nn.Module it was "
                         f"scripted from.")
    row = example_input[:1]
    x = row.expand(2, *row.shape[1:]).clone()
    calls: list = []
    dim = torch.export.Dim("batch")
    try:
        with _quiet(), _leaves_kept_whole(model, leaf_types, calls, x):
            program = torch.export.export(model, (x,), dynamic_shapes=({0: dim},),
                                          strict=False)
            table = torch.export.default_decompositions()
            for op in PRESERVED_OPS:
                table.pop(op, None)
            program = program.run_decompositions(table)
    except Exception as err:  # noqa: BLE001 - every failure is reported as one line
        raise TraceError(f"module_graph: torch.export could not trace "
                         f"{type(model).__name__}: {_explain(err)}.") from err
    return _collect(program, dict(calls))


def _collect(program, calls: dict) -> Exported:
    from torch.export.graph_signature import InputKind, OutputKind

    signature = program.graph_signature
    state = program.state_dict
    inputs, kinds, input_name = {}, {}, None
    for spec in signature.input_specs:
        name = spec.arg.name
        if spec.kind == InputKind.USER_INPUT:
            if input_name is not None:
                raise InputError("module_graph: expected a model with one tensor input, "
                                 f"got a second one, {name!r}.")
            input_name, inputs[name], kinds[name] = name, None, "input"
        elif spec.kind in (InputKind.PARAMETER, InputKind.BUFFER):
            value = state[spec.target] if spec.target in state else \
                program.constants[spec.target]
            inputs[name], kinds[name] = value, spec.kind.name.lower()
        else:   # constant tensors and script objects lifted out of the code
            inputs[name], kinds[name] = program.constants[spec.target], "constant"
    outputs = [spec for spec in signature.output_specs if spec.kind == OutputKind.USER_OUTPUT]
    if len(outputs) != 1 or not hasattr(outputs[0].arg, "name"):
        raise InputError(f"module_graph: expected the model to return one tensor of logits, "
                         f"got {len(outputs)} outputs.")
    batch = None
    if input_name is not None:
        node = next(n for n in program.graph.nodes if n.name == input_name)
        batch = node.meta["val"].shape[0]
    return Exported(program.graph_module, inputs, kinds, input_name, outputs[0].arg.name,
                    calls, batch)
