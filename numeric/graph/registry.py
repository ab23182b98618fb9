"""The rule registry: module type / function / method name -> Lipschitz rule.

A *rule* turns one traced operation into one node of the architecture graph
(``docs/internals.md``): its ``op``, a certified constant and its parameters. It may also
give a *local* constant: a bound on the Jacobian norm of the operation at the actual
inputs of a batch, one value per row. BackPACK-style, the registry maps

- a module class (``torch.nn.Conv2d``), looked up along the MRO of the module's type;
- a function (``torch.cat``, ``operator.add``, ``torch.nn.functional.relu``);
- a string, the name of a ``torch.Tensor`` method (``"view"``, ``"relu"``),

to a :class:`Rule`. Registering a module class also makes :func:`numeric.module_graph`
treat its instances as leaves (they are not traced into), so a custom block with
data-dependent control flow becomes traceable once it has a rule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from numeric.errors import InputError, UnsupportedModuleError

__all__ = ["NodeSpec", "Rule", "RuleContext", "Value", "GraphOptions", "register_rule",
           "lookup_rule", "registered_module_types", "describe_target"]


@dataclass(frozen=True)
class GraphOptions:
    """How :func:`numeric.module_graph` turns constants into a graph.

    Attributes
    ----------
    fold_batchnorm : bool
        Fold an eval-mode BatchNorm into the conv/linear layer right before it (when that
        layer feeds nothing else), or else into the conv/linear layer after it when only
        elementwise or per-channel ops lie in between (their Jacobians commute with a
        per-channel scaling: pre-activation DenseNet layers); likewise LayerNorm's
        :math:`\\gamma` into a linear layer after it. The node constant becomes the norm
        of the rescaled weight, never larger than the product of the two norms.
    centre_logits : bool
        Replace the constant of a final linear layer :math:`W` by
        :math:`\\|C W\\|_2` with :math:`C = I - 11^\\top/K`: the Fisher information depends
        only on the centred logits (:math:`\\Sigma_p = C\\Sigma_p C`), so the graph then
        bounds the Lipschitz constant of the centred logits, and ``Lip^2/2`` still bounds
        :math:`\\lambda_{\\max}(F)`.
    merge_pooling : bool
        Merge an upsampling average pooling (e.g. torchvision VGG's 1x1 -> 7x7) with the
        linear layer after it into one exact matrix norm.
    conv_method : str
        ``method`` of :func:`numeric.conv_operator_norm_bound`.
    refine_limit : int
        Largest matrix (entries) for which the local bound uses the exact norm of the
        masked matrix :math:`\\|D_{next} W D_{prev}\\|_2` at each row (a linear layer's
        weight, a convolution's explicit matrix on its grid).
    allow_unbounded : bool
        Give an infinite constant, instead of raising, to an op that has no global
        constant but has a local rule (attention without a LayerNorm before it): used by
        local bounds, where every such node gets its value at each row.
    """

    fold_batchnorm: bool = True
    centre_logits: bool = True
    merge_pooling: bool = True
    conv_method: str = "auto"
    refine_limit: int = 2 ** 20
    allow_unbounded: bool = False


@dataclass(frozen=True)
class NodeSpec:
    """What a rule says about one operation.

    Attributes
    ----------
    op : str
        A name of ``bounds.OPS``.
    lipschitz : float, callable or None
        The certified node constant; None leaves it to :mod:`theory` (activation, pooling
        and unit ops with ``params``). A zero-argument callable is evaluated once the whole
        model is traced, so that an expensive norm is not computed for a layer that a
        BatchNorm folding replaces.
    params : dict
        JSON parameters of the op (``kernel_size``, ``negative_slope``, ...).
    certified : bool
        False for an estimate.
    label : str
        One line on how the constant was obtained.
    alias : bool
        The operation is the identity map (dropout in eval mode, ``contiguous``): no node,
        its output *is* its input.
    output_radius : float or None
        A bound on the Euclidean norm of every last-dimension vector ("token") of the
        output, valid for every input (LayerNorm sets it; attention reads it).
    tuple_index : int or None
        The operation returns a tuple and the node stands for this entry of it.
    fold : callable or None
        ``fold(scale) -> NodeSpec``: the spec after multiplying output channel ``c`` by
        ``scale[c]`` (conv and linear layers: BatchNorm folding).
    fold_input : callable or None
        ``fold_input(scale) -> NodeSpec``: the spec after multiplying input channel ``c``
        (input feature ``c`` of a linear layer, blocks of equal size after a flatten) by
        ``scale[c]``: a BatchNorm before it, separated only by elementwise or per-channel
        operations, whose Jacobians commute with a per-channel scaling.
    feature_scale, without_scale : Tensor, callable or None
        LayerNorm's elementwise scale :math:`\\gamma` (last dimension) and the spec of the
        same op without it, for folding :math:`\\gamma` into the linear layer after it.
    channel_scale : Tensor or None
        The per-channel factors of an affine channel map (BatchNorm), for folding.
    matrix : Tensor or None
        The weight of a linear layer acting on the last dimension, for the centring and
        the local masked refinement.
    dense : callable or None
        ``dense() -> Tensor``: the explicit matrix of a linear op on flattened coordinates
        (a convolution on its grid), for the local masked refinement when it is small;
        ``dense_entries`` is its size.
    pending : tuple or None
        For a data-movement op that returns a tuple (``chunk``, ``split``): the op applied
        to the encoded input, so that indexing the tuple can count copies.
    liveness : str
        How the set of output entries that depend on the input follows from the input's:
        ``"all"`` (every entry may, the safe default), ``"same"`` (elementwise ops),
        ``"replay"`` (data movement: the op applied to the mask), ``"last:k"`` (an entry
        depends on the input when its token, the last ``k`` dimensions, does: LayerNorm,
        a linear layer on the last dimension).
    """

    op: str
    lipschitz: float | Callable[[], float] | None = None
    params: dict = field(default_factory=dict)
    certified: bool = True
    label: str = ""
    alias: bool = False
    output_radius: float | None = None
    tuple_index: int | None = None
    fold: Callable[[torch.Tensor], NodeSpec] | None = None
    fold_input: Callable[[torch.Tensor], NodeSpec] | None = None
    channel_scale: torch.Tensor | None = None
    feature_scale: torch.Tensor | None = None
    without_scale: Callable[[], NodeSpec] | None = None
    matrix: torch.Tensor | None = None
    pending: tuple | None = None
    liveness: str = "all"
    dense: Callable[[], torch.Tensor] | None = None
    dense_entries: int = 0


@dataclass(frozen=True)
class Value:
    """An argument of a traced operation as a rule sees it.

    ``value`` is the actual object (a tensor for tensors); ``traced`` says whether it
    depends on the network input (else it is a constant: a parameter, a buffer, a number);
    ``radius`` is the token-norm bound of a traced value when one is known; ``live`` is a
    boolean mask (shape of one row, broadcastable) of the entries that may depend on the
    input (None: all may). Entries outside it are constant functions of the input, so a
    Jacobian-norm bound at a point needs only the live part (e.g. the class token of a
    ViT before the first attention).
    """

    value: Any
    traced: bool
    name: str = ""
    radius: float | None = None
    live: torch.Tensor | None = None


@dataclass
class RuleContext:
    """Everything a rule may use about one traced operation.

    Attributes
    ----------
    node : torch.fx.Node
    target : object
        The module instance (``call_module``), function (``call_function``) or method name
        (``call_method``).
    module : nn.Module or None
    args, kwargs
        The operation's arguments with every fx node replaced by a :class:`Value`.
    output : object
        The actual output on the example batch.
    options : GraphOptions
    spec : NodeSpec or None
        In a local rule: the node's global spec.
    stash : dict
        Where a local rule may leave per-row data for later refinements (activations leave
        ``"derivative"``, Tensor of shape (B, ...)).
    keep : bool
        True when the tracer wants the stash filled.
    """

    node: fx.Node
    target: Any
    module: nn.Module | None
    args: tuple
    kwargs: dict
    output: Any
    options: GraphOptions
    spec: NodeSpec | None = None
    stash: dict = field(default_factory=dict)
    keep: bool = False

    # ---------------------------------------------------------------- argument helpers

    def values(self) -> Iterator[Value]:
        """Every :class:`Value` among the arguments, nested lists included, in order."""
        def walk(item):
            if isinstance(item, Value):
                yield item
            elif isinstance(item, (list, tuple)):
                for entry in item:
                    yield from walk(entry)
            elif isinstance(item, dict):
                for entry in item.values():
                    yield from walk(entry)
        yield from walk(self.args)
        yield from walk(self.kwargs)

    def traced(self) -> list[Value]:
        """The input-dependent arguments, in order."""
        return [value for value in self.values() if value.traced]

    @property
    def input(self) -> torch.Tensor:
        """The (first) input-dependent tensor."""
        return self.traced()[0].value

    def arg(self, index: int, name: str, default=None):
        """Positional-or-keyword argument ``index``/``name`` with Values unwrapped."""
        if len(self.args) > index:
            item = self.args[index]
        else:
            item = self.kwargs.get(name, default)
        return item.value if isinstance(item, Value) else item

    def replay(self, substitute: torch.Tensor):
        """Run the operation again with the (single) traced argument replaced."""
        def swap(item):
            if isinstance(item, Value):
                return substitute if item.traced else item.value
            if isinstance(item, (list, tuple)):
                return type(item)(swap(entry) for entry in item)
            if isinstance(item, dict):
                return {key: swap(entry) for key, entry in item.items()}
            return item
        args = swap(self.args)
        kwargs = swap(self.kwargs)
        if self.node.op == "call_module":
            return self.module(*args, **kwargs)
        if self.node.op == "call_method":
            return getattr(args[0], self.target)(*args[1:], **kwargs)
        return self.target(*args, **kwargs)

    @property
    def where(self) -> str:
        """``'layer1.0.conv1' (Conv2d)`` or ``'add_3' (operator.add)`` for messages."""
        return f"{self.node.target if self.module is not None else self.node.name!r} " \
               f"({describe_target(self.target)})"


@dataclass(frozen=True)
class Rule:
    """A registered rule: ``bound(ctx) -> NodeSpec`` and, optionally,
    ``local(ctx) -> Tensor of shape (B,)`` (Jacobian-norm bounds at each row)."""

    bound: Callable[[RuleContext], NodeSpec]
    local: Callable[[RuleContext], torch.Tensor] | None = None


_RULES: dict[Any, Rule] = {}


def describe_target(target) -> str:
    """A readable name of a module, function or method target."""
    if isinstance(target, str):
        return f"Tensor.{target}"
    if isinstance(target, nn.Module):
        return type(target).__name__
    if isinstance(target, type):
        return target.__name__
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", repr(target))
    if module in ("_operator", "operator"):
        return f"operator.{name}"
    if module.startswith("torch"):
        return f"{module.replace('torch.nn.functional', 'F')}.{name}"
    return f"{module}.{name}" if module else name


def register_rule(target, rule, *, local=None, overwrite: bool = False) -> None:
    """Register the Lipschitz rule of a module type, a function or a Tensor method.

    Parameters
    ----------
    target : type, callable or str
        An ``nn.Module`` subclass (its instances become leaves of the trace and every
        subclass without a rule of its own uses this one), a function as it appears in
        ``call_function`` nodes (``torch.cat``, ``operator.add``), or the name of a
        ``torch.Tensor`` method (``"view"``).
    rule : callable or Rule
        ``rule(ctx) -> NodeSpec`` with ``ctx`` a :class:`RuleContext`: return the op name
        of the graph vocabulary and a **certified** constant, e.g.
        ``NodeSpec("function", lipschitz=2.0, label="my block: ||J|| <= 2")``, or
        ``NodeSpec("identity", alias=True)`` for an identity map. Use
        ``certified=False`` for an estimate.
    local : callable, optional
        ``local(ctx) -> Tensor of shape (B,)``: a bound on the operation's Jacobian norm at
        each row of the batch (``ctx.input``, ``ctx.output`` are the actual tensors).
        Without it the global constant is used at every row.
    overwrite : bool, default False
        Replace an existing rule. Without it a second registration raises, so that a
        rule is never replaced silently.

    Raises
    ------
    InputError
        If ``target`` already has a rule and ``overwrite`` is False, or ``rule`` is not
        callable.

    Examples
    --------
    >>> import torch
    >>> from numeric.graph import NodeSpec, register_rule
    >>> class Doubler(torch.nn.Module):
    ...     def forward(self, x):
    ...         return 2 * x
    >>> register_rule(Doubler, lambda ctx: NodeSpec("scale", lipschitz=2.0))
    >>> register_rule(Doubler, lambda ctx: NodeSpec("scale", lipschitz=2.0))
    Traceback (most recent call last):
    ...
    numeric.errors.InputError: register_rule: Doubler already has a rule; pass overwrite=True to replace it.
    >>> register_rule(Doubler, lambda ctx: NodeSpec("scale", lipschitz=2.0), overwrite=True)
    """
    if not isinstance(rule, Rule):
        if not callable(rule):
            raise InputError(f"register_rule: expected a callable rule, got {rule!r}.")
        rule = Rule(rule, local)
    elif local is not None:
        rule = Rule(rule.bound, local)
    if target in _RULES and not overwrite:
        raise InputError(f"register_rule: {describe_target(target)} already has a rule; "
                         f"pass overwrite=True to replace it.")
    _RULES[target] = rule


def lookup_rule(target) -> Rule | None:
    """The rule of a module instance (along its type's MRO), function or method name."""
    if isinstance(target, nn.Module):
        for cls in type(target).__mro__:
            if cls in _RULES:
                return _RULES[cls]
            if cls is nn.Module:
                break
        return None
    try:
        return _RULES.get(target)
    except TypeError:  # unhashable target
        return None


def registered_module_types() -> tuple[type, ...]:
    """Module classes with a rule (their instances are leaves of the trace)."""
    return tuple(key for key in _RULES if isinstance(key, type))


def unsupported(ctx_or_target, reason: str = "") -> UnsupportedModuleError:
    """The error for an operation without a usable rule, saying how to register one."""
    target = getattr(ctx_or_target, "target", ctx_or_target)
    name = describe_target(target)
    where = ctx_or_target.where if isinstance(ctx_or_target, RuleContext) else name
    key = type(target).__name__ if isinstance(target, nn.Module) else (
        repr(target) if isinstance(target, str) else name)
    detail = f": {reason}" if reason else ": no Lipschitz rule is registered for it"
    return UnsupportedModuleError(
        f"module_graph: cannot bound {where}{detail}. If you can prove a bound on its "
        f"Jacobian norm, register one with numeric.register_rule({key}, rule) - see "
        f"help(numeric.register_rule).")
