r"""Certified bounds on :math:`\lambda_{\max}` of the input Fisher information of a model.

:math:`F(x) = J(x)^\top \Sigma_p J(x)` with :math:`\Sigma_p = \operatorname{diag}(p) -
pp^\top`, so :math:`\lambda_{\max}(F(x)) = \|\Sigma_p^{1/2} J(x)\|_2^2`.

*Global* (every input of the example's shape): :math:`\lambda_{\max}(F(x)) \le
\tfrac12 L^2`, with :math:`\|\Sigma_p\| \le 1/2` (:func:`theory.softmax_curvature_bound`)
and :math:`L` the graph bound on :math:`\sup_x \|J(x)\|` (:func:`bounds.propagate` of
:func:`module_graph`). With ``centre_logits`` the last linear layer contributes
:math:`\|CW\|`, :math:`C = I - 11^\top/K`, which is valid because
:math:`\Sigma_p = C\Sigma_p C`.

*Local* (at each row :math:`x_b`): the same propagation with node constants bounding the
Jacobian norm *at that point* (chain rule; ``docs/internals.md``): activations by their
largest actual derivative, max pooling by the actual selection, LayerNorm and attention by
the measured forms of :mod:`theory.transformer` (entries that do not depend on the input,
such as a class token before the first attention, are left out). Two exact refinements
use the actual derivative vectors :math:`d` of the activations around a linear layer or a
convolution :math:`W` (its explicit matrix on the grid, when it has at most
``refine_limit`` entries):

- :math:`\|\operatorname{diag}(d_{next}) W \operatorname{diag}(d_{prev})\|` replaces
  :math:`\|d_{next}\|_\infty \|W\| \|d_{prev}\|_\infty`: the activations keep their
  constants :math:`c`, the layer gets the norm of the matrix rescaled by :math:`d/c`; an
  activation between two such layers lends :math:`(d/c)^{1/2}` to each, since it occurs
  once in the Jacobian;
- when the logits are :math:`W h + b`, :math:`\|\Sigma_p^{1/2} J\| \le
  \|\Sigma_p^{1/2} W \operatorname{diag}(d_{prev})\|\, \|J_{h}\|` is computed exactly
  from the actual :math:`p`, so the bound is :math:`L_b^2` with that constant on the last
  layer; otherwise it is :math:`\kappa(p) L_b^2` with
  :math:`\kappa(p) = \min(1/2, \max p, 1 - \|p\|^2)`.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import networkx as nx
import torch
from torch import nn

import bounds
import theory
from numeric.errors import InputError
from numeric.graph.norms import CERTIFICATION_FACTOR, linear_operator_norm
from numeric.graph.registry import GraphOptions
from numeric.graph.trace import ACTIVATION_OPS, UNIT_OPS, Traced, last_linear
from numeric.graph.trace import trace_model as _trace_graph

__all__ = ["module_graph", "fisher_bound", "fisher_bounds", "lipschitz_bound", "trace_model",
           "TracedModel"]


@contextlib.contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Evaluate in eval mode; restore every submodule's own train/eval flag after."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        yield
    finally:
        for module, mode in modes.items():
            module.training = mode


def _check(caller: str, model, example_input) -> None:
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


def _trace(caller, model, example_input, options: GraphOptions) -> Traced:
    _check(caller, model, example_input)
    parameter = next(model.parameters(), None)
    x = example_input if parameter is None else example_input.to(parameter.device,
                                                                 parameter.dtype)
    with _eval_mode(model):
        return _trace_graph(model, x, options)


def module_graph(model: nn.Module, example_input: torch.Tensor, *,
                 fold_batchnorm: bool = True, centre_logits: bool = True,
                 merge_pooling: bool = True, conv_method: str = "auto") -> nx.DiGraph:
    r"""Trace a model into an architecture graph with certified numeric constants.

    Parameters
    ----------
    model : nn.Module
        A classifier mapping a Tensor of shape (B, ...) to logits of shape (B, K). It is
        evaluated in eval mode (BatchNorm with running statistics, dropout off); its modes
        are restored afterwards.
    example_input : Tensor of shape (B, ...)
        Fixes the input shape (convolution grids, pooling windows, sequence lengths); the
        graph's constants hold for every input of that shape.
    fold_batchnorm, centre_logits, merge_pooling : bool
        Exact tightenings (see :class:`~numeric.graph.registry.GraphOptions`); with all
        three False every module keeps its own constant ("plain product of layer norms").
    conv_method : {'auto', 'grid', 'torus'}
        How convolutions are bounded (:func:`conv_operator_norm_bound`).

    Returns
    -------
    networkx.DiGraph
        A graph of the schema of ``docs/internals.md`` (``bounds.validate`` passes): node
        keys are the torch.fx node names, ``module`` the qualified module names, every
        ``lipschitz`` a certified float (``certified=True``), ``label`` says how it was
        obtained. ``bounds.derive(G)`` gives the closed form, ``bounds.propagate(G)`` its
        value.

    Raises
    ------
    TraceError
        torch.fx cannot trace the model; the message names the module.
    UnsupportedModuleError
        An operation has no rule (the message says how to register one), or has no global
        constant (attention without a LayerNorm before it: use ``fisher_bound(...,
        local=True)``).
    InputError
        Bad arguments, or a model without exactly one tensor input and one logits output.

    Examples
    --------
    >>> import torch, bounds
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(),
    ...                             torch.nn.Linear(4, 2))
    >>> G = module_graph(model, torch.zeros(1, 3))
    >>> [G.nodes[n]["op"] for n in ("_0", "_1", "_2")]
    ['linear', 'relu', 'linear']
    >>> bounds.validate(G)
    """
    options = GraphOptions(fold_batchnorm, centre_logits, merge_pooling, conv_method)
    G = _trace("module_graph", model, example_input, options).G
    bounds.validate(G)
    return G


def graph_lipschitz_bound(G: nx.DiGraph) -> float:
    """Certified Lipschitz bound of a graph from :func:`module_graph`: the float propagation
    (:func:`bounds.propagate`) widened by :data:`CERTIFICATION_FACTOR` for its rounding."""
    return bounds.propagate(G, check=False) * CERTIFICATION_FACTOR


def lipschitz_bound(model: nn.Module, example_input: torch.Tensor, **options) -> float:
    """Certified bound on :math:`\\sup_x \\|J(x)\\|_2` (the Lipschitz constant of the
    logits, centred if ``centre_logits``), from :func:`module_graph`."""
    return graph_lipschitz_bound(module_graph(model, example_input, **options))


def fisher_bound(model: nn.Module, example_input: torch.Tensor, local: bool = False, *,
                 fold_batchnorm: bool = True, centre_logits: bool = True,
                 merge_pooling: bool = True, conv_method: str = "auto"
                 ) -> float | torch.Tensor:
    r"""Certified upper bound on :math:`\lambda_{\max}(F(x))`, for all inputs or per row.

    Parameters
    ----------
    model : nn.Module
        Classifier, Tensor of shape (B, ...) -> logits (B, K); evaluated in eval mode.
    example_input : Tensor of shape (B, ...)
        Global: fixes the input shape only. Local: the points.
    local : bool, default False
        False: one bound valid at every input of that shape,
        :math:`\tfrac12 L^2`. True: one bound per row from the actual activations and
        probabilities (module docstring), computed on a float64 copy of the model.
    fold_batchnorm, centre_logits, merge_pooling, conv_method
        As in :func:`module_graph`.

    Returns
    -------
    float or Tensor of shape (B,), float64
        Certified: every constant is an upper bound (SVD/FFT in float64, inflated by
        :data:`~numeric.graph.norms.CERTIFICATION_FACTOR`).

    Raises
    ------
    As :func:`module_graph`. Attention without a LayerNorm before it has no global
    bound; ``local=True`` works.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Linear(3, 2, bias=False)
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.tensor([[1.0, 0, 0], [-1.0, 0, 0]]))
    >>> round(fisher_bound(model, torch.zeros(1, 3)), 6)  # ||C W||^2 / 2 = 2 / 2
    1.0
    >>> x = torch.tensor([[0.0, 0, 0], [2.0, 0, 0]])  # p = (1/2, 1/2), then (0.98, 0.02)
    >>> fisher_bound(model, x, local=True)           # exact: 4 p_1 p_2
    tensor([1.0000, 0.0707], dtype=torch.float64)
    """
    options = dict(fold_batchnorm=fold_batchnorm, centre_logits=centre_logits,
                   merge_pooling=merge_pooling, conv_method=conv_method)
    if not local:
        traced = _trace("fisher_bound", model, example_input, GraphOptions(**options))
        bounds.validate(traced.G)
        return _global_fisher(traced)
    return fisher_bounds(model, example_input, **options)[1]


def _global_fisher(traced: Traced) -> float:
    lipschitz = bounds.propagate(traced.G, check=False)
    return 0.5 * lipschitz ** 2 * CERTIFICATION_FACTOR


def fisher_bounds(model: nn.Module, example_input: torch.Tensor, **options
                  ) -> tuple[float, torch.Tensor]:
    """Both bounds of :func:`fisher_bound` from one trace: ``(global, local)``.

    ``global`` is ``math.inf`` when the model has no global bound (attention without a
    LayerNorm before it); ``local`` is a Tensor of shape (B,), float64, never above
    ``global``. Options as in :func:`module_graph`.
    """
    traced = _trace("fisher_bound", model, example_input,
                    GraphOptions(**options, allow_unbounded=True))
    bounds.validate(traced.G)
    global_value = _global_fisher(traced)
    with _eval_mode(model):
        values = _local_fisher(traced, example_input)
    return global_value, values.clamp_max(global_value)


# =========================================================================== local


def _walk_back(G: nx.DiGraph, node: str, merged: set) -> str | None:
    """The elementwise activation feeding ``node`` through unit (or merged) nodes."""
    (pred,) = G.predecessors(node)
    while G.nodes[pred]["op"] in UNIT_OPS or pred in merged:
        preds = list(G.predecessors(pred))
        if len(preds) != 1:
            return None
        pred = preds[0]
    return pred if G.nodes[pred]["op"] in ACTIVATION_OPS else None


def _walk_forward(G: nx.DiGraph, node: str) -> str | None:
    """The activation that is the only consumer of ``node`` (through unit nodes)."""
    current = node
    while True:
        successors = list(G.successors(current))
        if len(successors) != 1:
            return None
        current = successors[0]
        op = G.nodes[current]["op"]
        if op in ACTIVATION_OPS:
            return current
        if op not in UNIT_OPS:
            return None


def _refinement_plan(traced: Traced) -> dict[str, tuple[str | None, str | None]]:
    """Linear/conv node -> (activation before, activation after) for the masked
    refinement. Linear layers qualify on a 2-d input (one row per sample); convolutions
    when their explicit matrix has at most ``refine_limit`` entries."""
    G, plan = traced.G, {}
    last = last_linear(G, traced)
    limit = traced.options.refine_limit
    for key, spec in traced.specs.items():
        if key not in G:
            continue
        if spec.op == "linear" and spec.matrix is not None:
            if traced.input_ndim.get(key) != 2 or spec.matrix.numel() > limit:
                continue
        elif spec.op != "conv" or spec.dense is None or spec.dense_entries > limit \
                or key in traced.merged:
            continue
        before = _walk_back(G, key, traced.merged)
        after = None if key == last else _walk_forward(G, key)
        if before is not None or after is not None or key == last:
            plan[key] = (before, after)
    return plan


def _plan_matrix(traced: Traced, key: str) -> torch.Tensor:
    spec = traced.specs[key]
    return spec.matrix.cpu() if spec.op == "linear" else spec.dense()


def _scaled_derivative(stashes, constants, key, row, size, power=1.0
                       ) -> torch.Tensor | None:
    r"""``min(1, d / c) ** power`` for the activation ``key`` at ``row``: the derivative
    bounds :math:`d` divided by the node's local constant :math:`c`, so that the true
    :math:`|\phi'| \le c \cdot \tilde d` entrywise (also when c was clamped to the global
    constant). An activation between two refined linear layers lends
    :math:`\tilde d^{1/2}` to each, since :math:`\tilde D = \tilde D^{1/2}\tilde D^{1/2}`
    appears once in the Jacobian."""
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
    """Certified :math:`\\|\\operatorname{diag}(r) W \\operatorname{diag}(c)\\|_2` (zero rows and
    columns dropped first)."""
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
    r"""Certified :math:`\|\Sigma_p^{1/2} A\|_2` for :math:`A` (K x n).

    :math:`\Sigma_p = R R^\top` with :math:`R = \operatorname{diag}(u)(I - uu^\top)`,
    :math:`u = \sqrt p` (:math:`I - uu^\top` is a projection since :math:`\|u\| = 1`), so
    the value is :math:`\|R^\top A\|_2` and needs no matrix square root. The rounding of
    :math:`R^\top A = \operatorname{diag}(u)A - u (p^\top A)` and of :math:`p` itself is
    covered by an absolute :math:`10^{-12}\|A\|_F^2` under the square.
    """
    u = p.sqrt()
    product = u.unsqueeze(1) * matrix - u.unsqueeze(1) * (p @ matrix).unsqueeze(0)
    value = linear_operator_norm(product) if product.numel() else 0.0
    slack = 1e-12 * float(matrix.pow(2).sum())
    return math.sqrt(value ** 2 + slack)


def _local_fisher(traced: Traced, x: torch.Tensor) -> torch.Tensor:
    G = traced.G
    plan = _refinement_plan(traced)
    keep = {key for pair in plan.values() for key in pair if key is not None}
    before_of = {before for before, _ in plan.values()}
    after_of = {after for _, after in plan.values()}
    power = {key: 0.5 if key in before_of and key in after_of else 1.0 for key in keep}
    constants, stashes, logits = traced.local_constants(x, keep)
    probabilities = torch.softmax(logits, dim=-1).cpu()
    last = last_linear(G, traced)
    exact_last = last is not None and last in plan
    matrices = {key: _plan_matrix(traced, key) for key in plan}
    values = []
    for row in range(x.shape[0]):
        H = G.copy()
        for key, per_row in constants.items():
            H.nodes[key]["lipschitz"] = min(float(per_row[row]),
                                            H.nodes[key].get("lipschitz", math.inf))
        for key, (before, after) in plan.items():
            matrix = matrices[key]
            prev = _scaled_derivative(stashes, constants, before, row, matrix.shape[1],
                                      power.get(before, 1.0))
            if key == last:
                masked = matrix if prev is None else matrix * prev
                H.nodes[key]["lipschitz"] = _softmax_factor_norm(masked,
                                                                 probabilities[row])
                continue
            nxt = _scaled_derivative(stashes, constants, after, row, matrix.shape[0],
                                     power.get(after, 1.0))
            refined = _masked_norm(matrix, nxt, prev)
            H.nodes[key]["lipschitz"] = min(refined, H.nodes[key]["lipschitz"])
        jacobian = bounds.propagate(H, check=False)
        if exact_last:
            value = jacobian ** 2
        else:
            kappa = theory.softmax_curvature_bound(probabilities[row].tolist())
            value = kappa * jacobian ** 2
        values.append(value * CERTIFICATION_FACTOR)
    return torch.tensor(values, dtype=torch.float64)


# =========================================================================== public trace


class TracedModel:
    """A model traced once, with every certified bound the toolkit derives from it.

    Build it with :func:`trace_model`; reuse it for every chunk of a run.

    Attributes
    ----------
    graph : networkx.DiGraph
        The architecture graph with certified constants (:func:`module_graph`).
    certified : bool
        False if any node constant is an estimate.
    """

    def __init__(self, model: nn.Module, example_input: torch.Tensor, options: GraphOptions):
        self.model = model
        self.options = options
        self._traced = _trace("trace_model", model, example_input,
                              GraphOptions(**{**options.__dict__, "allow_unbounded": True}))
        bounds.validate(self._traced.G)

    @property
    def graph(self) -> nx.DiGraph:
        return self._traced.G

    @property
    def certified(self) -> bool:
        return all(data.get("certified", True) for _, data in self.graph.nodes(data=True))

    def fisher_bound(self) -> float:
        """Certified bound on :math:`\\lambda_{\\max}(F(x))` for every input (``inf`` when
        the model has none)."""
        return _global_fisher(self._traced)

    def local_fisher_bound(self, x: torch.Tensor) -> torch.Tensor:
        """Certified bound on :math:`\\lambda_{\\max}(F(x_b))` at each row, Tensor (B,)."""
        with _eval_mode(self.model):
            values = _local_fisher(self._traced, x)
        return values.clamp_max(self.fisher_bound())

    def lipschitz_bound(self, quantity: str) -> float:
        """Certified bound on :math:`\\sup_x \\|J(x)\\|_2`: ``quantity="centred_output"`` for
        the centred output :math:`(I - 11^T/K) f` (what the Fisher information and the
        margin between two classes depend on); ``"output"`` for the output itself."""
        if quantity not in ("output", "centred_output"):
            raise InputError(f"lipschitz_bound: expected quantity 'output' or "
                             f"'centred_output', got {quantity!r}.")
        return graph_lipschitz_bound(self.graph)


def trace_model(model: nn.Module, example_input: torch.Tensor, *, fold_batchnorm: bool = True,
                centre_logits: bool = True, merge_pooling: bool = True,
                conv_method: str = "auto") -> TracedModel:
    """Trace ``model`` once at the shape of ``example_input``; see :class:`TracedModel`."""
    return TracedModel(model, example_input,
                       GraphOptions(fold_batchnorm, centre_logits, merge_pooling, conv_method))
