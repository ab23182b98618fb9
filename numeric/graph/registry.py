"""The rule registry: ATen operator or module class -> Lipschitz rule.

A *rule* turns one operation of the exported ATen graph (:mod:`numeric.graph.export`)
into a :class:`NodeSpec`: the op of the graph vocabulary (``docs/internals.md``), a
certified constant, and how the operation moves entries, so that the tracer can check the
rows of a batch never mix. It may also give a *local* constant: a bound on the Jacobian
norm at the actual inputs, one value per row. BackPACK-style, the registry maps

- an ATen operator overload (``torch.ops.aten.convolution.default``) or packet
  (``torch.ops.aten.add``: every overload), the form every model takes once exported;
- a module class (``nn.MultiheadAttention``): its instances of *exactly* that class are
  kept whole while exporting (:func:`~numeric.graph.export.export_model`); a subclass is
  traced through unless it is registered itself, so a subclass that overrides ``forward``
  never inherits a rule proved for its parent.

Anything without a rule is refused by name. Arguments reach a rule normalised to the
operator's schema (:meth:`RuleContext.arg` by name, with the schema's defaults).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx, nn

from numeric.errors import InputError, UnsupportedModuleError

__all__ = ["NodeSpec", "Rule", "RuleContext", "Value", "GraphOptions", "register_rule",
           "lookup_rule", "registered_module_types", "describe_target", "unsupported"]


@dataclass(frozen=True)
class GraphOptions:
    """How :func:`numeric.trace_model` turns constants into a graph.

    Attributes
    ----------
    fold_batchnorm : bool
        Fold an eval-mode BatchNorm into the conv/linear layer right before it (when that
        layer feeds nothing else), or else into the conv/linear layer after it when only
        operations whose Jacobians commute with a per-channel scaling (elementwise ones,
        pooling, a channel-major flatten) lie in between; likewise LayerNorm's
        :math:`\\gamma` into a linear layer after it. The node constant becomes the norm
        of the rescaled weight, never larger than the product of the two norms.
    centre_logits : bool
        Replace the constant of a final linear layer :math:`W` by
        :math:`\\|C W\\|_2` with :math:`C = I - 11^\\top/K`: the Fisher information depends
        only on the centred logits (:math:`\\Sigma_p = C\\Sigma_p C`), so the graph then
        bounds the Lipschitz constant of the centred logits.
    merge_pooling : bool
        Merge an upsampling average pooling (e.g. torchvision VGG's 1x1 -> 7x7) with the
        linear layer after it into one exact matrix norm.
    conv_method : str
        ``method`` of :func:`numeric.conv_operator_norm_bound`.
    refine_limit : int
        Largest matrix (entries) for which the local bound uses the exact norm of the
        masked matrix :math:`\\|D_{next} W D_{prev}\\|_2` at each row.
    allow_unbounded : bool
        Give an infinite constant, instead of raising, to an op that has no global
        constant but has a local rule (attention on unbounded tokens).
    """

    fold_batchnorm: bool = True
    centre_logits: bool = True
    merge_pooling: bool = True
    conv_method: str = "auto"
    refine_limit: int = 2 ** 20
    allow_unbounded: bool = False


#: How an operation moves entries (``NodeSpec.kind``).
KINDS = ("map", "movement", "sum", "scale", "choose", "alias", "leaf", "product")


@dataclass(frozen=True)
class NodeSpec:
    r"""What a rule says about one operation.

    Attributes
    ----------
    op : str
        A name of ``bounds.OPS``.
    lipschitz : float, callable or None
        The certified node constant (``kind="map"``/``"leaf"``); None leaves it to
        :mod:`theory` (activation and pooling ops with ``params``). A zero-argument callable
        is evaluated once the whole model is traced (an expensive norm is not computed for
        a layer that a folding replaces).
    params, certified, label
        JSON parameters of the op; False for an estimate; one line on how the constant was
        obtained.
    kind : str
        How entries move, which the tracer uses to count copies and to check that rows
        never mix:

        - ``"map"``: one input-dependent operand; output entries combine input entries
          only along the input dimensions ``mixes`` (``elementwise`` if none: output entry
          ``i`` depends on input entry ``i``); the other dimensions keep their positions.
        - ``"movement"``: every output entry copies one input entry or is a constant fill
          (views, permutations, indexing, padding, concatenation); the tracer replays the
          operation on encoded entries, checks that it really is one, and counts copies.
        - ``"sum"``: :math:`\sum_i a_i x_i` + constants, with ``coefficients`` :math:`a_i`
          for the input-dependent operands in order; broadcasting is counted centrally.
        - ``"scale"``: one operand times a constant tensor ``factor`` (broadcast); the
          exact norm of the broadcast diagonal map is computed centrally.
        - ``"choose"``: each output entry is one of the operands' entries at that position,
          chosen by value (``maximum``, ``minimum``): the concatenation rule.
        - ``"product"``: the product of two input-dependent operands (``params["operands"]``
          names them; ``params["matmul"]`` for a batched matrix product): the product rule
          :math:`\|d(ab)\| \le \sup|b|\,\|da\| + \sup|a|\,\|db\|`, with the
          magnitudes of the actual values (local), of the intervals over the ball
          (region), or the operands' ``value_bound`` (global; infinite without one).
        - ``"alias"``: the identity map; no node.
        - ``"leaf"``: a registered module kept whole; it gives its own row check
          (``batch_dim``).
    mixes : tuple of int
        ``kind="map"``: the input dimensions whose entries combine (non-negative).
    keepdim : bool
        ``kind="map"``: the mixed dimensions stay in the output (possibly resized); False
        when they disappear (reductions without ``keepdim``).
    channelwise : bool
        The Jacobian commutes with a per-channel (dimension 1) diagonal scaling: elementwise
        ops and pooling (for BatchNorm folding).
    radius : callable or None
        Input token-norm bound -> output token-norm bound (``None`` -> unknown); tokens are
        last-dimension vectors. LayerNorm sets one; attention needs one.
    outputs : dict or None
        For an operation returning a tuple: entry index -> ``"traced"`` (the entry the node
        stands for), ``"meta"`` (input-dependent but without a derivative that matters:
        max-pool indices, LayerNorm's statistics). Using any other entry is refused.
    coefficients : tuple of float
        ``kind="sum"``.
    factor : Tensor or float
        ``kind="scale"``.
    batch_dim : int or None
        ``kind="leaf"``: the dimension of its (first) input that indexes the rows.
    value_bound : float or None
        A bound on every :math:`|v_i|` of the output for every input (sigmoid: 1), which
        the product rule uses for global constants.
    fold, fold_input, channel_scale, feature_scale, without_scale
        BatchNorm / LayerNorm folding: ``fold(scale)`` scales the output channels of a
        conv/linear layer, ``fold_input(scale)`` its input channels; ``channel_scale`` the
        per-channel factors of an affine channel map; ``feature_scale`` LayerNorm's
        :math:`\gamma` and ``without_scale()`` the spec without it.
    matrix : Tensor or None
        The weight of a linear map on the last dimension (centring, local refinement).
    dense : callable or None
        ``dense() -> Tensor``: the explicit matrix of a linear op on flattened coordinates
        (a convolution on its grid) for the local refinement; ``dense_entries`` its size.
    conv_layer : ConvLayer or None
        A convolution whose lazy constant is its norm: the tracer bounds all of them in
        one concurrent call (:func:`numeric.graph.norms.conv_operator_norm_bounds`).
    """

    op: str
    lipschitz: float | Callable[[], float] | None = None
    params: dict = field(default_factory=dict)
    certified: bool = True
    label: str = ""
    kind: str = "map"
    mixes: tuple[int, ...] = ()
    keepdim: bool = True
    channelwise: bool = False
    radius: Callable[[float | None], float | None] | None = None
    outputs: dict | None = None
    coefficients: tuple = ()
    factor: Any = None
    batch_dim: int | None = None
    value_bound: float | None = None
    fold: Callable[[torch.Tensor], NodeSpec] | None = None
    fold_input: Callable[[torch.Tensor], NodeSpec] | None = None
    channel_scale: torch.Tensor | None = None
    feature_scale: torch.Tensor | None = None
    without_scale: Callable[[], NodeSpec] | None = None
    matrix: torch.Tensor | None = None
    dense: Callable[[], torch.Tensor] | None = None
    dense_entries: int = 0
    conv_layer: Any = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"NodeSpec: expected kind in {KINDS}, got {self.kind!r}.")

    def replace(self, **changes) -> NodeSpec:
        return NodeSpec(**{**self.__dict__, **changes})


@dataclass(frozen=True)
class Value:
    """An argument of a traced operation as a rule sees it.

    ``value`` is the actual object; ``traced`` says whether it depends on the network input
    differentiably (else it is a constant: a parameter, a buffer, a number, a shape);
    ``dependent`` marks a value computed from the input without a derivative (a
    comparison, an index, a Python number from ``.item()``): rules never accept one;
    ``radius`` bounds the norm of every token (last-dimension vector) of a traced value
    for every input, when known; ``rows`` is its provenance (:mod:`numeric.graph.rows`).
    """

    value: Any
    traced: bool
    name: str = ""
    radius: float | None = None
    rows: torch.Tensor | None = None
    dependent: bool = False


@dataclass
class RuleContext:
    r"""Everything a rule may use about one operation.

    Attributes
    ----------
    node : torch.fx.Node
    target : object
        The ATen operator overload, or the module instance of a leaf call.
    module : nn.Module or None
        The module of a leaf call.
    arguments : dict
        Schema argument name -> :class:`Value` or Python value (defaults filled in); for a
        leaf call, ``{"tensors": [...]}`` plus :attr:`call`.
    output : object
        The actual output on the batch being run.
    options : GraphOptions
    where : str
        Readable location for messages (operator, module path, source line).
    spec : NodeSpec or None
        In a local rule: the node's global spec.
    stash : dict
        Where a local rule may leave per-entry data for later refinements (activations
        leave ``"derivative"``, a Tensor of the input's shape).
    keep : bool
        True when the tracer wants the stash filled.
    call : object
        The :class:`~numeric.graph.export.LeafCall` of a leaf call.
    deviation : callable or None
        In a region rule: ``deviation(value) -> Tensor`` of the value's shape, a bound on
        how far each entry of an input-dependent argument can move over the ball.
    tangent_norms : callable or None
        In a region rule, when exact Jacobians are tracked (:mod:`numeric.graph.tangent`):
        ``tangent_norms(value)`` gives :math:`\|\nabla v_i(x)\|` for every entry, or
        None; a rule may then stash ``"variation_exact"`` (Tensor (B,)), a bound on
        :math:`\|(M' - M)J_{in}(x)\|` for its Jacobian :math:`M` at the centre and
        :math:`M'` anywhere in the ball.
    """

    node: fx.Node
    target: Any
    module: nn.Module | None
    arguments: dict
    output: Any
    options: GraphOptions
    where: str = ""
    spec: NodeSpec | None = None
    stash: dict = field(default_factory=dict)
    keep: bool = False
    call: Any = None
    deviation: Any = None
    tangent_norms: Any = None
    batch: int = 0

    def values(self) -> Iterator[Value]:
        """Every :class:`Value` among the arguments, nested lists included, in order."""
        def walk(item):
            if isinstance(item, Value):
                yield item
            elif isinstance(item, (list, tuple)):
                for entry in item:
                    yield from walk(entry)
        for item in self.arguments.values():
            yield from walk(item)

    def traced(self) -> list[Value]:
        """The input-dependent arguments, in order."""
        return [value for value in self.values() if value.traced]

    @property
    def input(self) -> torch.Tensor:
        """The (first) input-dependent tensor."""
        return self.traced()[0].value

    def arg(self, name: str):
        """The argument ``name`` (Values unwrapped, the schema default when not given)."""
        item = self.arguments[name]
        if isinstance(item, (list, tuple)):
            return type(item)(entry.value if isinstance(entry, Value) else entry
                              for entry in item)
        return item.value if isinstance(item, Value) else item

    def constant(self, name: str):
        """The argument ``name``, refused if it depends on the input."""
        item = self.arguments[name]
        if isinstance(item, Value) and (item.traced or item.dependent):
            raise unsupported(self, f"its argument {name!r} depends on the input")
        return self.arg(name)

    def replay(context, /, **substitutes):
        """Run the operation again with arguments replaced (by schema name)."""
        def unwrap(item):
            if isinstance(item, Value):
                return item.value
            if isinstance(item, (list, tuple)):
                return type(item)(unwrap(entry) for entry in item)
            return item
        values = {name: unwrap(item) for name, item in context.arguments.items()}
        values.update(substitutes)
        return call_operator(context.target, values)


def bind_arguments(op, args: tuple, kwargs: dict) -> dict:
    """``op``'s arguments by schema name, the schema's defaults filled in."""
    schema = op._schema
    bound = {}
    positional = list(args)
    for i, argument in enumerate(schema.arguments):
        if i < len(positional) and not argument.kwarg_only:
            bound[argument.name] = positional[i]
        elif argument.name in kwargs:
            bound[argument.name] = kwargs[argument.name]
        elif argument.has_default_value():
            bound[argument.name] = argument.default_value
        else:
            bound[argument.name] = None
    return bound


def call_operator(op, values: dict):
    """Call ``op`` with arguments given by schema name."""
    args, kwargs = [], {}
    for argument in op._schema.arguments:
        if argument.kwarg_only:
            kwargs[argument.name] = values[argument.name]
        else:
            args.append(values[argument.name])
    return op(*args, **kwargs)


@dataclass(frozen=True)
class Rule:
    """A registered rule: ``bound(ctx) -> NodeSpec`` and, optionally,
    ``local(ctx) -> Tensor of shape (B,)`` (Jacobian-norm bounds at each row) and
    ``region(ctx) -> Tensor of shape (B,)`` (bounds over the ball around each row: the
    context gives each input's entrywise deviation over the ball,
    :meth:`RuleContext.deviation`)."""

    bound: Callable[[RuleContext], NodeSpec]
    local: Callable[[RuleContext], torch.Tensor] | None = None
    region: Callable[[RuleContext], torch.Tensor] | None = None


_RULES: dict[Any, Rule] = {}


def describe_target(target) -> str:
    """A readable name of an operator or module."""
    if isinstance(target, nn.Module):
        return type(target).__name__
    if isinstance(target, type):
        return target.__name__
    if isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return str(target)
    name = getattr(target, "__qualname__", None) or getattr(target, "__name__", repr(target))
    module = getattr(target, "__module__", None) or ""
    if module in ("_operator", "operator"):
        return f"operator.{name}"
    return f"{module}.{name}" if module else name


def _key(target):
    if isinstance(target, type) and issubclass(target, nn.Module):
        return target
    if isinstance(target, (torch._ops.OpOverload, torch._ops.OpOverloadPacket)):
        return target
    raise InputError(f"register_rule: expected an nn.Module subclass or an ATen operator "
                     f"(torch.ops.aten.NAME or torch.ops.aten.NAME.OVERLOAD), got "
                     f"{target!r}.")


def register_rule(target, rule, *, local=None, region=None, overwrite: bool = False) -> None:
    """Register the Lipschitz rule of an ATen operator or a module class.

    Parameters
    ----------
    target : nn.Module subclass or ATen operator
        A module class: its instances of exactly this class are kept whole while tracing
        (hooks still run around them) and the rule bounds the whole call. An operator
        overload (``torch.ops.aten.relu.default``) or packet (``torch.ops.aten.relu``,
        every overload): models are traced to ATen operators (``torch.export``), so this
        is the form every function and method takes.
    rule : callable or Rule
        ``rule(ctx) -> NodeSpec`` with ``ctx`` a :class:`RuleContext`: return the op name
        of the graph vocabulary and a **certified** constant, e.g.
        ``NodeSpec("function", lipschitz=2.0, label="my block: ||J|| <= 2")``; a module
        rule also gives ``kind="leaf"`` and the ``batch_dim`` of its input. Use
        ``certified=False`` for an estimate.
    local : callable, optional
        ``local(ctx) -> Tensor of shape (B,)``: a bound on the operation's Jacobian norm at
        each row of the batch. Without it the global constant is used at every row.
    region : callable, optional
        ``region(ctx) -> Tensor of shape (B,)``: a bound on the operation's Jacobian norm
        over every input within the ball around each row, where each input-dependent
        argument ``v`` lies entrywise within ``ctx.deviation(v)`` of its value. Without
        it the global constant is used.
    overwrite : bool, default False
        Replace an existing rule. Without it a second registration raises, so that a rule
        is never replaced silently.

    Raises
    ------
    InputError
        If ``target`` already has a rule and ``overwrite`` is False, ``target`` is neither
        a module class nor an operator, or ``rule`` is not callable.

    Examples
    --------
    >>> import torch
    >>> from numeric.graph import NodeSpec, register_rule
    >>> class Doubler(torch.nn.Module):
    ...     def forward(self, x):
    ...         return 2 * x
    >>> rule = lambda ctx: NodeSpec("scale", lipschitz=2.0, kind="leaf", batch_dim=0)
    >>> register_rule(Doubler, rule)
    >>> register_rule(Doubler, rule)
    Traceback (most recent call last):
    ...
    numeric.errors.InputError: register_rule: Doubler already has a rule; pass overwrite=True to replace it.
    >>> register_rule(Doubler, rule, overwrite=True)
    """
    key = _key(target)
    if not isinstance(rule, Rule):
        if not callable(rule):
            raise InputError(f"register_rule: expected a callable rule, got {rule!r}.")
        rule = Rule(rule, local, region)
    elif local is not None or region is not None:
        rule = Rule(rule.bound, local or rule.local, region or rule.region)
    if key in _RULES and not overwrite:
        raise InputError(f"register_rule: {describe_target(target)} already has a rule; "
                         f"pass overwrite=True to replace it.")
    _RULES[key] = rule


def lookup_rule(target) -> Rule | None:
    """The rule of an operator (overload first, then its packet) or of a module instance
    (its exact class)."""
    if isinstance(target, nn.Module):
        return _RULES.get(type(target))
    if isinstance(target, torch._ops.OpOverload):
        return _RULES.get(target) or _RULES.get(target.overloadpacket)
    try:
        return _RULES.get(target)
    except TypeError:
        return None


def registered_module_types() -> tuple[type, ...]:
    """Module classes with a rule (their exact instances are kept whole)."""
    return tuple(key for key in _RULES if isinstance(key, type))


def unsupported(ctx_or_target, reason: str = "") -> UnsupportedModuleError:
    """The refusal of an operation, in one line: what it is, where, and why."""
    if isinstance(ctx_or_target, RuleContext):
        where = ctx_or_target.where or describe_target(ctx_or_target.target)
    else:
        where = describe_target(ctx_or_target)
    detail = reason or "no Lipschitz rule is registered for it (see help(numeric.register_rule))"
    return UnsupportedModuleError(f"module_graph: cannot bound {where}: {detail}.")
