r"""Certified bounds on :math:`\lambda_{\max}` of the input Fisher information of a model.

:math:`F(x) = J(x)^\top \Sigma_p J(x)` with :math:`\Sigma_p = \operatorname{diag}(p) -
pp^\top`, so :math:`\lambda_{\max}(F(x)) = \|\Sigma_p^{1/2} J(x)\|_2^2`.

:func:`trace_model` exports the model once (:mod:`numeric.graph.export`), builds its graph
with certified constants (:mod:`numeric.graph.trace`, rules in :mod:`numeric.graph.rules`),
applies the exact tightenings of :mod:`numeric.graph.passes`, and returns a
:class:`TracedModel` that every bound reuses:

*Global* (every input of the example's shape): :math:`\lambda_{\max}(F(x)) \le
\tfrac12 L^2`, with :math:`\|\Sigma_p\| \le 1/2` (:func:`theory.softmax_curvature_bound`)
and :math:`L` the graph bound (:func:`bounds.propagate`) on :math:`\sup_x \|CJ(x)\|`,
:math:`C = I - 11^\top/K` (the Fisher information depends on the centred output only).

*Local* (at each row :math:`x_b`): the same propagation with node constants bounding the
Jacobian norm *at that point* (chain rule): activations by their largest derivative over
the measured pre-activations (Clarke: both sides of a kink within the tolerance), max
pooling by the actual selection (ties counted), LayerNorm and attention by the measured
forms of :mod:`theory`; entries that do not depend on the input are left out. Two exact
refinements use the derivative vectors :math:`d` of the activations around a linear layer
or a convolution :math:`W` (its explicit matrix on the grid, when it has at most
``refine_limit`` entries):

- :math:`\|\operatorname{diag}(d_{next}) W \operatorname{diag}(d_{prev})\|` replaces
  :math:`\|d_{next}\|_\infty \|W\| \|d_{prev}\|_\infty`: the activations keep their
  constants :math:`c`, the layer gets the norm of the matrix rescaled by :math:`d/c`; an
  activation between two such layers lends :math:`(d/c)^{1/2}` to each;
- when the logits are :math:`W h + b`, :math:`\|\Sigma_p^{1/2} J\| \le
  \|\Sigma_p^{1/2} W \operatorname{diag}(d_{prev})\|\, \|J_{h}\|` is computed exactly
  from the actual :math:`p`; otherwise the bound is :math:`\kappa(p) L_b^2` with
  :math:`\kappa(p) = \min(1/2, \max p, 1 - \|p\|^2)`.

Rounding: node constants are certified where they are computed; the propagated value is
widened once, by :data:`~numeric.graph.norms.CERTIFICATION_FACTOR`, in :func:`_certified`.
"""

from __future__ import annotations

import math

import networkx as nx
import torch
from torch import nn

import bounds
import theory
from numeric.errors import InputError, UnsupportedModuleError
from numeric.graph.export import export_model
from numeric.graph.norms import CERTIFICATION_FACTOR, linear_operator_norm
from numeric.graph.passes import (centring_plan, fold_normalizations, last_linear,
                                  merge_pooling)
from numeric.graph.registry import GraphOptions, registered_module_types
from numeric.graph.selfcheck import (exact_fisher_top, exact_jacobian_norms, float64_copy,
                                     nearby_points, verify)
from numeric.graph.trace import (ACTIVATION_OPS, UNIT_OPS, TracedGraph, build_graph,
                                 evaluate_constants)

__all__ = ["TracedModel", "trace_model", "module_graph", "fisher_bound", "lipschitz_bound"]

#: Rows of a batch measured by the self-check of a local bound, and random nearby points
#: added to the example rows for the global bounds.
SELF_CHECK_ROWS = 4
SELF_CHECK_NEARBY = 2

QUANTITIES = ("output", "centred_output")


def _certified(value: float) -> float:
    """The one widening of a propagated float for its rounding (see the module docstring)."""
    return value * CERTIFICATION_FACTOR


def _check_arguments(caller: str, model, example_input) -> None:
    if not isinstance(model, nn.Module):
        raise InputError(f"{caller}: expected a torch.nn.Module, got {type(model).__name__}.")
    if not isinstance(example_input, torch.Tensor) or example_input.dim() < 2:
        shape = tuple(example_input.shape) if isinstance(example_input, torch.Tensor) else \
            type(example_input).__name__
        raise InputError(f"{caller}: expected example_input of shape (B, ...) with a batch "
                         f"dimension, got {shape}.")
    if example_input.shape[0] < 1 or not example_input.is_floating_point():
        raise InputError(f"{caller}: expected a non-empty floating-point batch, got shape "
                         f"{tuple(example_input.shape)} and dtype {example_input.dtype}.")
    if not torch.isfinite(example_input).all():
        raise InputError(f"{caller}: expected finite inputs, got NaN or infinity.")


class TracedModel:
    """A model traced once, with every certified bound the toolkit derives from it.

    Build it with :func:`trace_model`; reuse it for every chunk of a run. The model is
    taken as it is: BatchNorm or dropout in training mode (which couple or randomise the
    rows of a batch) are refused, not silently switched to eval mode.

    Attributes
    ----------
    graph : networkx.DiGraph
        The architecture graph with certified constants (centred logits when
        ``centre_logits``).
    certified : bool
        False if any node constant is an estimate.
    input_shape : tuple
        The shape of one input row the bounds hold for.
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor, options: GraphOptions,
                 self_check: bool = True) -> None:
        _check_arguments("trace_model", model, example_input)
        self.model = model
        self.options = options
        self.self_check = self_check
        parameter = next(model.parameters(), None)
        x = example_input if parameter is None else example_input.to(parameter.device,
                                                                     parameter.dtype)
        self.input_shape = tuple(x.shape[1:])
        exported = export_model(model, x, registered_module_types())
        traced = build_graph(exported, x, GraphOptions(**{**options.__dict__,
                                                          "allow_unbounded": True}))
        fold_normalizations(traced)
        evaluate_constants(traced)
        merge_pooling(traced)
        self._traced: TracedGraph = traced
        self._centring = centring_plan(traced)
        self._graphs: dict = {}
        self._example = x[:2].detach()
        self._float64 = None
        bounds.validate(self._graph(centred=False))

    # ------------------------------------------------------------------ graphs

    def _graph(self, centred: bool) -> nx.DiGraph:
        if centred not in self._graphs:
            G = self._traced.G.copy()
            if centred:
                for key, value in self._centring.items():
                    G.nodes[key]["lipschitz"] = value
                    G.nodes[key]["label"] += "; centred output"
                G.graph["centred_logits"] = bool(self._centring)
            G.graph["name"] = type(self.model).__name__
            G.graph["input_shape"] = list(self.input_shape)
            G.graph["options"] = dict(self.options.__dict__)
            self._graphs[centred] = G
        return self._graphs[centred]

    @property
    def graph(self) -> nx.DiGraph:
        return self._graph(centred=self.options.centre_logits)

    def _fisher_graph(self) -> nx.DiGraph:
        r"""The graph the Fisher bound propagates: centred when ``centre_logits``, and a
        final ``log_softmax`` over the classes with constant 1 in any case, since
        :math:`\Sigma_p^{1/2}(I - 1p^\top) = \Sigma_p^{1/2}`."""
        G = self.graph
        _, passed = last_linear(self._traced)
        if all(G.nodes[key]["lipschitz"] == 1.0 for key in passed):
            return G
        G = G.copy()
        for key in passed:
            G.nodes[key]["lipschitz"] = 1.0
        return G

    @property
    def certified(self) -> bool:
        return all(data.get("certified", True) for _, data in self.graph.nodes(data=True))

    def _unbounded_reason(self) -> str | None:
        """Why the model has no global bound (the label of its first infinite node)."""
        for key in nx.topological_sort(self._traced.G):
            data = self._traced.G.nodes[key]
            if data.get("lipschitz") == math.inf:
                return data.get("label", key)
        return None

    def _reference(self) -> nn.Module:
        if self._float64 is None:
            self._float64 = float64_copy(self.model)
        return self._float64

    def _check_points(self, x: torch.Tensor | None = None) -> torch.Tensor:
        base = self._example if x is None else x
        generator = torch.Generator().manual_seed(0)
        nearby = nearby_points(base.cpu(), SELF_CHECK_NEARBY, generator)
        return torch.cat([base.detach().cpu().to(torch.float64), nearby]).to(
            self._example.device)

    def _detail(self) -> str:
        ops = sorted({data.get("aten", data["op"]) for _, data in self._traced.G.nodes(
            data=True) if data["op"] not in ("input", "output")})
        return "operators: " + ", ".join(ops)

    # ------------------------------------------------------------------ bounds

    def lipschitz_bound(self, quantity: str) -> float:
        r"""Certified bound on :math:`\sup_x \|J(x)\|_2` over every input of the traced
        shape.

        Parameters
        ----------
        quantity : {'output', 'centred_output'}
            ``'output'``: the Jacobian of the model's output itself (a final
            ``log_softmax`` or ``softmax`` included). ``'centred_output'``: of
            :math:`Cf`, :math:`C = I - 11^\top/K`, which is what the Fisher information and
            the margin between two classes depend on (:math:`f_y - f_j = (Cf)_y - (Cf)_j`),
            never larger.

        Returns
        -------
        float
            Certified (``math.inf`` when the model has no global bound, e.g. attention on
            unbounded tokens). Self-checked against the exact float64 Jacobian norm at the
            example rows and nearby points unless ``self_check=False``.
        """
        if quantity not in QUANTITIES:
            raise InputError(f"lipschitz_bound: expected quantity 'output' or "
                             f"'centred_output', got {quantity!r}.")
        centred = quantity == "centred_output"
        value = _certified(bounds.propagate(self._graph(centred), check=False))
        if self.self_check and math.isfinite(value):
            points = self._check_points()
            measured = exact_jacobian_norms(self._reference(), points, centred)
            verify(f"lipschitz_bound({quantity!r})", torch.tensor(value), measured,
                   self._detail())
        return value

    def fisher_bound(self) -> float:
        r"""Certified bound on :math:`\lambda_{\max}(F(x))` for every input of the traced
        shape: :math:`\tfrac12 L^2` with :math:`L` the centred-output Lipschitz bound
        (``math.inf`` when the model has none). Self-checked like
        :meth:`lipschitz_bound`."""
        lipschitz = bounds.propagate(self._fisher_graph(), check=False)
        value = _certified(0.5 * lipschitz ** 2)
        if self.self_check and math.isfinite(value):
            points = self._check_points()
            verify("fisher_bound", torch.tensor(value),
                   exact_fisher_top(self._reference(), points), self._detail())
        return value

    def local_fisher_bound(self, x: torch.Tensor) -> torch.Tensor:
        r"""Certified bound on :math:`\lambda_{\max}(F(x_b))` at each row (module
        docstring), never above :meth:`fisher_bound`.

        Parameters
        ----------
        x : Tensor of shape (B, ...)
            Rows of the traced shape.

        Returns
        -------
        Tensor of shape (B,), float64
            Certified; self-checked at the first rows against the exact float64
            :math:`\lambda_{\max}` unless ``self_check=False``. Cost: one float64 forward
            pass with the local rules, plus a propagation per row.
        """
        _check_arguments("local_fisher_bound", self.model, x)
        if tuple(x.shape[1:]) != self.input_shape:
            raise InputError(f"local_fisher_bound: expected rows of shape {self.input_shape} "
                             f"(the traced shape), got {tuple(x.shape[1:])}.")
        values = _local_fisher(self._traced, self._centring if self.options.centre_logits
                               else {}, x)
        global_value = _certified(
            0.5 * bounds.propagate(self._fisher_graph(), check=False) ** 2)
        values = values.clamp_max(global_value)
        if self.self_check:
            rows = x[:SELF_CHECK_ROWS]
            verify("local_fisher_bound", values[:rows.shape[0]],
                   exact_fisher_top(self._reference(), rows), self._detail())
        return values


def trace_model(model: nn.Module, example_input: torch.Tensor, *, fold_batchnorm: bool = True,
                centre_logits: bool = True, merge_pooling: bool = True,
                conv_method: str = "auto", self_check: bool = True) -> TracedModel:
    """Trace ``model`` once at the shape of ``example_input``; see :class:`TracedModel`.

    Parameters
    ----------
    model : nn.Module
        A classifier mapping a Tensor of shape (B, ...) to logits of shape (B, K), taken as
        it is (call ``model.eval()`` first if it has BatchNorm or dropout).
    example_input : Tensor of shape (B, ...)
        Fixes the input shape (convolution grids, pooling windows, sequence lengths); the
        bounds hold for every input of that shape. Its first rows are also where the
        self-check measures.
    fold_batchnorm, centre_logits, merge_pooling : bool
        Exact tightenings (:class:`~numeric.graph.registry.GraphOptions`); with all three
        False every operation keeps its own constant ("plain product of layer norms").
    conv_method : str
        How convolutions are bounded (:func:`numeric.conv_operator_norm_bound`).
    self_check : bool, default True
        Measure the exact quantity at the example rows (and nearby points) before returning
        each certified number, raising :class:`~numeric.errors.UnsoundBoundError` rather
        than returning a number below a measurement (cost: ``K`` float64 backward passes
        per point; turn it off for very large models).

    Raises
    ------
    TraceError
        The model cannot be exported (the message says why and where in its code).
    UnsupportedModuleError
        An operation has no rule, is outside a rule's proved domain, or mixes the rows of a
        batch; the message names it, where it is, and why.
    InputError
        Bad arguments, or a model without one tensor input and one (B, K) output.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(),
    ...                             torch.nn.Linear(4, 2)).double()
    >>> traced = trace_model(model, torch.zeros(1, 3, dtype=torch.float64))
    >>> sorted(op for _, op in traced.graph.nodes(data="op"))
    ['input', 'linear', 'linear', 'output', 'relu']
    >>> traced.fisher_bound() <= 0.5 * traced.lipschitz_bound("centred_output") ** 2 * 1.01
    True
    """
    options = GraphOptions(fold_batchnorm, centre_logits, merge_pooling, conv_method)
    return TracedModel(model, example_input, options, self_check=self_check)


def module_graph(model: nn.Module, example_input: torch.Tensor, *,
                 fold_batchnorm: bool = True, centre_logits: bool = True,
                 merge_pooling: bool = True, conv_method: str = "auto") -> nx.DiGraph:
    """The architecture graph of ``model`` with certified numeric constants:
    ``trace_model(...).graph`` (see :func:`trace_model` for the arguments and errors).

    The graph follows the schema of ``docs/internals.md`` (``bounds.validate`` passes):
    node keys are the ATen node names, ``module`` the qualified module names, ``aten`` the
    operator, every ``lipschitz`` a certified float and ``label`` how it was obtained.

    Examples
    --------
    >>> import torch, bounds
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(),
    ...                             torch.nn.Linear(4, 2))
    >>> G = module_graph(model, torch.zeros(1, 3))
    >>> [G.nodes[n]["module"] for n in nx.topological_sort(G) if G.nodes[n]["op"] == "linear"]
    ['0', '2']
    >>> bounds.validate(G)
    """
    return trace_model(model, example_input, fold_batchnorm=fold_batchnorm,
                       centre_logits=centre_logits, merge_pooling=merge_pooling,
                       conv_method=conv_method, self_check=False).graph


def lipschitz_bound(model: nn.Module, example_input: torch.Tensor, *, quantity: str,
                    self_check: bool = True, **options) -> float:
    """Certified bound on :math:`\\sup_x\\|J(x)\\|_2` of ``quantity`` (``'output'`` or
    ``'centred_output'``, required): :meth:`TracedModel.lipschitz_bound`."""
    traced = trace_model(model, example_input, self_check=self_check, **options)
    return traced.lipschitz_bound(quantity)


def fisher_bound(model: nn.Module, example_input: torch.Tensor, local: bool = False, *,
                 self_check: bool = True, **options) -> float | torch.Tensor:
    r"""Certified upper bound on :math:`\lambda_{\max}(F(x))`, for all inputs or per row.

    Parameters
    ----------
    model : nn.Module
        Classifier, Tensor of shape (B, ...) -> logits (B, K), taken as it is.
    example_input : Tensor of shape (B, ...)
        Global: fixes the input shape. Local: the points.
    local : bool, default False
        False: one bound valid at every input of that shape, :math:`\tfrac12 L^2`. True:
        one bound per row from the actual activations and probabilities.
    self_check, **options
        As in :func:`trace_model`.

    Returns
    -------
    float or Tensor of shape (B,), float64
        Certified (module docstring).

    Raises
    ------
    As :func:`trace_model`; a model without a global bound (attention on unbounded tokens)
    raises UnsupportedModuleError for ``local=False`` (``local=True`` works).

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Linear(3, 2, bias=False).double()
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.tensor([[1.0, 0, 0], [-1.0, 0, 0]]))
    >>> x = torch.tensor([[0.0, 0, 0], [2.0, 0, 0]], dtype=torch.float64)
    >>> round(fisher_bound(model, x), 6)  # ||C W||^2 / 2 = 2 / 2
    1.0
    >>> fisher_bound(model, x, local=True)           # exact: 4 p_1 p_2
    tensor([1.0000, 0.0707], dtype=torch.float64)
    """
    traced = trace_model(model, example_input, self_check=self_check, **options)
    if local:
        return traced.local_fisher_bound(example_input)
    value = traced.fisher_bound()
    if math.isinf(value):
        raise UnsupportedModuleError(f"fisher_bound: no global bound: "
                                     f"{traced._unbounded_reason()}; use "
                                     f"fisher_bound(..., local=True).")
    return value


# =========================================================================== local


def _walk_back(traced: TracedGraph, node: str) -> str | None:
    """The elementwise activation feeding ``node`` through unit nodes that keep the
    memory order (or merged nodes)."""
    G = traced.G
    (pred,) = G.predecessors(node)
    while pred in traced.merged or (G.nodes[pred]["op"] in UNIT_OPS and G.nodes[pred].get(
            "params", {}).get("identity_order", G.nodes[pred]["op"] == "identity")):
        preds = list(G.predecessors(pred))
        if len(preds) != 1:
            return None
        pred = preds[0]
    return pred if G.nodes[pred]["op"] in ACTIVATION_OPS and \
        pred in traced.standard_input else None


def _walk_forward(traced: TracedGraph, node: str) -> str | None:
    """The activation that is the only consumer of ``node`` (through order-keeping unit
    nodes)."""
    G = traced.G
    current = node
    while True:
        successors = list(G.successors(current))
        if len(successors) != 1:
            return None
        current = successors[0]
        op = G.nodes[current]["op"]
        if op in ACTIVATION_OPS:
            return current if current in traced.standard_input else None
        keeps = G.nodes[current].get("params", {}).get("identity_order",
                                                        op == "identity")
        if op not in UNIT_OPS or not keeps:
            return None


def _refinement_plan(traced: TracedGraph) -> dict[str, tuple[str | None, str | None]]:
    """Linear/conv node -> (activation before, activation after) for the masked
    refinement, for nodes whose input is in the standard row layout."""
    G, plan = traced.G, {}
    last, _ = last_linear(traced)
    limit = traced.options.refine_limit
    for key, spec in traced.specs.items():
        if key not in G or key not in traced.standard_input:
            continue
        if spec.op == "linear" and spec.matrix is not None:
            if traced.input_ndim.get(key) != 2 or spec.matrix.numel() > limit:
                continue
        elif spec.op != "conv" or spec.dense is None or spec.dense_entries > limit \
                or key in traced.merged:
            continue
        before = _walk_back(traced, key)
        after = None if key == last else _walk_forward(traced, key)
        if before is not None or after is not None or key == last:
            plan[key] = (before, after)
    return plan


def _scaled_derivative(stashes, constants, key, row, size, power=1.0
                       ) -> torch.Tensor | None:
    r"""``min(1, d / c) ** power`` for the activation ``key`` at ``row``: the derivative
    bounds :math:`d` divided by the node's local constant :math:`c`, so that the true
    :math:`|\phi'| \le c \cdot \tilde d` entrywise."""
    if key is None:
        return None
    derivative = stashes[key]["derivative"][row].reshape(-1).to(torch.float64).cpu()
    if derivative.numel() != size:
        return None
    constant = float(constants[key][row])
    if constant == 0:
        return torch.zeros_like(derivative)
    return (derivative / constant).clamp_max(1.0) ** power


def _masked_norm(matrix: torch.Tensor, rows: torch.Tensor | None,
                 columns: torch.Tensor | None) -> float:
    """Certified :math:`\\|\\operatorname{diag}(r) W \\operatorname{diag}(c)\\|_2`."""
    if rows is not None:
        keep = rows > 0
        matrix = matrix[keep] * rows[keep].unsqueeze(1)
    if columns is not None:
        keep = columns > 0
        matrix = matrix[:, keep] * columns[keep]
    if matrix.numel() == 0:
        return 0.0
    return linear_operator_norm(matrix)


def _softmax_factor_norm(matrix: torch.Tensor, p: torch.Tensor) -> float:
    r"""Certified :math:`\|\Sigma_p^{1/2} A\|_2` for :math:`A` (K x n):
    :math:`\Sigma_p = R R^\top` with :math:`R = \operatorname{diag}(u)(I - uu^\top)`,
    :math:`u = \sqrt p`, so the value is :math:`\|R^\top A\|_2`; the rounding of
    :math:`R^\top A` and of :math:`p` is covered by an absolute
    :math:`10^{-12}\|A\|_F^2` under the square."""
    u = p.sqrt()
    product = u.unsqueeze(1) * matrix - u.unsqueeze(1) * (p @ matrix).unsqueeze(0)
    value = linear_operator_norm(product) if product.numel() else 0.0
    slack = 1e-12 * float(matrix.pow(2).sum())
    return math.sqrt(value ** 2 + slack)


def _local_fisher(traced: TracedGraph, centring: dict, x: torch.Tensor) -> torch.Tensor:
    G = traced.G
    plan = _refinement_plan(traced)
    keep = {key for pair in plan.values() for key in pair if key is not None}
    before_of = {before for before, _ in plan.values()}
    after_of = {after for _, after in plan.values()}
    power = {key: 0.5 if key in before_of and key in after_of else 1.0 for key in keep}
    constants, stashes, logits = traced.local_constants(x, keep)
    probabilities = torch.softmax(logits, dim=-1).cpu()
    last, passed = last_linear(traced)
    exact_last = last is not None and last in plan
    centring = {**centring, **{key: 1.0 for key in passed}}
    matrices = {key: (traced.specs[key].matrix if traced.specs[key].op == "linear"
                      else traced.specs[key].dense()).cpu() for key in plan}
    values = []
    for row in range(x.shape[0]):
        H = G.copy()
        for key, value in centring.items():
            H.nodes[key]["lipschitz"] = value
        for key, per_row in constants.items():
            if key in H:
                H.nodes[key]["lipschitz"] = min(float(per_row[row]),
                                                H.nodes[key].get("lipschitz", math.inf))
        for key, (before, after) in plan.items():
            matrix = matrices[key]
            prev = _scaled_derivative(stashes, constants, before, row, matrix.shape[1],
                                      power.get(before, 1.0))
            if key == last:
                masked = matrix if prev is None else matrix * prev
                H.nodes[key]["lipschitz"] = _softmax_factor_norm(masked, probabilities[row])
                continue
            nxt = _scaled_derivative(stashes, constants, after, row, matrix.shape[0],
                                     power.get(after, 1.0))
            H.nodes[key]["lipschitz"] = min(_masked_norm(matrix, nxt, prev),
                                            H.nodes[key]["lipschitz"])
        jacobian = bounds.propagate(H, check=False)
        if exact_last:
            value = jacobian ** 2
        else:
            kappa = theory.softmax_curvature_bound(probabilities[row].tolist())
            value = kappa * jacobian ** 2
        values.append(_certified(value))
    return torch.tensor(values, dtype=torch.float64)
