r"""Certified bounds on :math:`\lambda_{\max}` of the input Fisher information of a model.

:math:`F(x) = J(x)^\top \Sigma_p J(x)` with :math:`\Sigma_p = \operatorname{diag}(p) -
pp^\top`, so :math:`\lambda_{\max}(F(x)) = \|\Sigma_p^{1/2} J(x)\|_2^2`.

:func:`trace_model` exports the model once (:mod:`numeric.graph.export`), builds its graph
with certified constants (:mod:`numeric.graph.trace`, rules in :mod:`numeric.graph.rules`),
applies the exact tightenings of :mod:`numeric.graph.passes`, and returns a
:class:`TracedModel` that every bound reuses (one-call forms in
:mod:`numeric.graph.calls`):

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

import copy
import math
from typing import NamedTuple

import networkx as nx
import torch
from torch import nn

import bounds
from numeric.errors import InputError, UnsupportedModuleError
from numeric.graph.export import export_model, unwrapped
from numeric.graph.local import local_fisher, propagate_rows, stash_keys
from numeric.graph.norms import CERTIFICATION_FACTOR
from numeric.graph.preconditions import check_autograd_agrees, check_one_function
from numeric.graph.passes import (centring_plan, fold_normalizations, last_linear,
                                  merge_pooling)
from numeric.graph.radius import _UNCHECKED, CertifiedRadii
from numeric.graph.region import (exact_centre_bounds, region_pass,
                                  softmax_curvature_from_margins,
                                  softmax_curvature_over_box)
from numeric.graph.registry import GraphOptions, registered_module_types
from numeric.graph.switching import switching_jacobian_bound
from numeric.graph.tangent import TANGENT_LIMIT
from numeric.graph.selfcheck import (SELF_CHECK_ROWS, exact_fisher_top,
                                     exact_jacobian_norms, exact_jacobians, float64_copy,
                                     nearby_points, verify)
from numeric.graph.trace import TracedGraph, build_graph, evaluate_constants

__all__ = ["TracedModel", "RegionBound", "trace_model"]

#: Multiple of the forward/reverse-mode disagreement taken as the rounding of an exact
#: Jacobian (:meth:`TracedModel._with_rounding`).
ROUNDING_SPREAD = 10.0

#: Random nearby points added to the example rows for the global bounds' self-check.
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


class TracedModel(CertifiedRadii):
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
                 self_check: bool = True, exported=None) -> None:
        _check_arguments("trace_model", model, example_input)
        self.model = model
        self.options = options
        self.self_check = self_check
        parameter = next(model.parameters(), None)
        x = example_input if parameter is None else example_input.to(parameter.device,
                                                                     parameter.dtype)
        self.input_shape = tuple(x.shape[1:])
        fresh = exported is None
        if fresh:
            exported = export_model(model, x, registered_module_types())
        traced = build_graph(exported, x, GraphOptions(**{**options.__dict__,
                                                          "allow_unbounded": True}))
        fold_normalizations(traced)
        evaluate_constants(traced)
        merge_pooling(traced)
        if fresh:      # a retraced model was checked by its first trace
            inner = unwrapped(model)      # the function (no parallel or compiled wrapper)
            check_one_function(inner, x[:2].detach())
            check_autograd_agrees(inner, traced.exported, x[:2].detach())
        self._traced: TracedGraph = traced
        self._centring = centring_plan(traced)
        self._graphs: dict = {}
        self._example = x[:2].detach()
        self._float64 = None
        self._linear_reason = _UNCHECKED
        self._tangent_rows: torch.Tensor | None = None
        self._tangent_memo: dict = {}
        bounds.validate(self._graph(centred=False))

    def retraced(self, **options) -> TracedModel:
        """The same model with other :func:`trace_model` options (``fold_batchnorm``,
        ``centre_logits``, ``merge_pooling``, ``conv_method``), from the same export: the
        graph and its constants are rebuilt, ``torch.export`` is not run again."""
        known = ("fold_batchnorm", "centre_logits", "merge_pooling", "conv_method")
        if set(options) - set(known):
            raise InputError(f"retraced: expected options among {', '.join(known)}, got "
                             f"{', '.join(sorted(set(options) - set(known)))}.")
        return TracedModel(self.model, self._example, GraphOptions(
            **{**self.options.__dict__, **options}), self.self_check, self._traced.exported)

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

    def unbounded_reason(self) -> str | None:
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
        value = self._lipschitz_value(centred)
        if self.self_check and math.isfinite(value):
            points = self._check_points()
            measured = exact_jacobian_norms(self._reference(), points, centred)
            verify(f"lipschitz_bound({quantity!r})", torch.tensor(value), measured,
                   self._detail())
        return value

    def _lipschitz_value(self, centred: bool) -> float:
        """The propagated global bound, without the self-check (for callers that use it
        as one ingredient, once per call of theirs)."""
        return _certified(bounds.propagate(self._graph(centred), check=False))

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
            pass with the local rules, plus a propagation per row. When a row has at most
            :data:`~numeric.graph.tangent.TANGENT_LIMIT` entries, also the exact Jacobian
            at each row (``d`` forward-mode products per operation) widened by the spread
            of the Clarke Jacobian at kinks (:mod:`numeric.graph.tangent`) instead.
        """
        _check_arguments("local_fisher_bound", self.model, x)
        if tuple(x.shape[1:]) != self.input_shape:
            raise InputError(f"local_fisher_bound: expected rows of shape {self.input_shape} "
                             f"(the traced shape), got {tuple(x.shape[1:])}.")
        values = None
        if x[0].numel() <= TANGENT_LIMIT:   # the exact Jacobian at each row, Clarke-widened
            zero = torch.zeros(x.shape[0], dtype=torch.float64)
            result = region_pass(self._traced, self._fisher_overrides(), x, zero,
                                 tangents=True, tangent_cache=self._tangents_at(x))
            if result.jacobian is not None:
                values = exact_centre_bounds(self._with_rounding(result, x), zero)[1]
        if values is None:
            values = local_fisher(self._traced, self._centring if self.options.centre_logits
                                  else {}, x)
        global_value = _certified(
            0.5 * bounds.propagate(self._fisher_graph(), check=False) ** 2)
        values = values.clamp_max(global_value)
        if self.self_check:
            rows = x[:SELF_CHECK_ROWS]
            verify("local_fisher_bound", values[:rows.shape[0]],
                   exact_fisher_top(self._reference(), rows), self._detail())
        return values


    def _with_rounding(self, result, x: torch.Tensor):
        r"""``result`` with the rounding of its exact Jacobians at the centres added to
        their variation.

        Near a one-hot prediction :math:`\lambda_{\max}` rests on differences between
        Jacobian rows far below their own size, and a saturated softmax inside the network
        returns tangents below the rounding of its inputs' (a value of 1e-58 from rows of
        1e-21 with errors of 1e-22 was seen). The rounding is estimated as
        :data:`ROUNDING_SPREAD` times the distance between the forward-mode Jacobian and a
        reverse-mode one of the float64 model (the two round differently), plus
        :math:`10^{-15}\|J\|_F`: an estimate of floating-point error, like every
        rounding allowance of the toolkit, not a proof about it. Cost: ``K`` backward
        passes over the batch."""
        reverse, _ = exact_jacobians(self._reference(), x.to(self._example.device))
        forward = result.jacobian.to(torch.float64)
        spread = (forward - reverse.cpu()).flatten(1).norm(dim=1)
        rounding = ROUNDING_SPREAD * spread + 1e-15 * forward.flatten(1).norm(dim=1)
        widened = copy.copy(result)
        widened.variation = result.variation.to(torch.float64) + rounding
        return widened

    # ------------------------------------------------------------------ region

    def region_bound(self, x: torch.Tensor, eps, *, linear: bool | None = None
                     ) -> RegionBound:
        r"""Certified bounds over the ball :math:`\{x' : \|x' - x_b\|_2 \le \varepsilon_b\}`
        around each row (:mod:`numeric.graph.region`).

        Parameters
        ----------
        x : Tensor of shape (B, ...)
            Centres, rows of the traced shape.
        eps : float or Tensor of shape (B,)
            Radii (>= 0).
        linear : bool, optional
            Also bound the Jacobian from the exact one at the centre and the ReLUs and
            max-pool windows that the ball can switch, found by linear bound propagation
            (:mod:`numeric.graph.switching`), and keep the smaller. Default: when the
            model is in that method's domain (:meth:`linear_reason`); ``True`` outside it
            raises ``UnsupportedModuleError`` with the reason.

        Returns
        -------
        RegionBound
            ``jacobian`` (Tensor (B,)): :math:`\sup_{B}\|CJ(x')\|_2`, the centred output;
            ``fisher`` (Tensor (B,)): :math:`\sup_B \lambda_{\max}(F(x'))`; both
            certified, self-checked at the centres and at random points of each ball
            unless ``self_check=False``. Cost: one float64 pass over the graph with
            interval bookkeeping (about three local passes) plus a propagation per row;
            with ``linear``, per row the intervals of linear bound propagation and one
            backward pass per entry the ball can switch (0.2 to 2 s per row on the
            demo's CNNs).
        """
        x, eps = self._region_arguments("region_bound", x, eps)
        if linear and self.linear_reason(x) is not None:
            raise UnsupportedModuleError(f"region_bound(linear=True): "
                                         f"{self.linear_reason(x)}")
        result = region_pass(self._traced, self._fisher_overrides(), x, eps,
                             keep=stash_keys(self._traced), tangent_cache=self._tangents_at(x))
        jacobian, _ = propagate_rows(self._traced, self._fisher_overrides(),
                                     result.constants, result.stashes)
        jacobian = torch.minimum(jacobian, result.lipschitz) * CERTIFICATION_FACTOR
        ball = None
        if linear or (linear is None and self.linear_reason(x) is None):
            ball = switching_jacobian_bound(self._traced, x, eps)
            jacobian = torch.minimum(jacobian, ball.jacobian * CERTIFICATION_FACTOR)
        logits = result.logits.cpu()
        deviation = (eps.cpu() * jacobian).unsqueeze(1)
        kappa = softmax_curvature_over_box(logits - deviation, logits + deviation)
        if ball is not None:
            kappa = torch.minimum(kappa, softmax_curvature_from_margins(ball.margins))
        fisher = kappa * jacobian ** 2 * CERTIFICATION_FACTOR
        if result.jacobian is not None:
            exact_jacobian, exact_fisher = exact_centre_bounds(
                self._with_rounding(result, x), eps.cpu())
            jacobian = torch.minimum(jacobian, exact_jacobian)
            fisher = torch.minimum(fisher, exact_fisher)
        fisher = torch.minimum(fisher, torch.tensor(_certified(0.5 * bounds.propagate(
            self._fisher_graph(), check=False) ** 2), dtype=torch.float64))
        if self.self_check:
            self._check_region(x, eps, jacobian, fisher)
        return RegionBound(jacobian, fisher)

    def _fisher_overrides(self) -> dict:
        overrides = dict(self._centring) if self.options.centre_logits else {}
        _, passed = last_linear(self._traced)
        return {**overrides, **{key: 1.0 for key in passed}}

    def _tangents_at(self, x: torch.Tensor) -> dict:
        """The exact tangents of the region passes at the rows of ``x``, which do not
        depend on the radii: the local bound, the certified radius and the region bound
        of one batch compute them once. Only the last batch's are kept."""
        rows = x.detach().to("cpu", torch.float64)
        if self._tangent_rows is None or self._tangent_rows.shape != rows.shape or \
                not torch.equal(self._tangent_rows, rows):
            self._tangent_rows, self._tangent_memo = rows.clone(), {}
        return self._tangent_memo

    def _region_arguments(self, caller: str, x, eps):
        _check_arguments(caller, self.model, x)
        if tuple(x.shape[1:]) != self.input_shape:
            raise InputError(f"{caller}: expected rows of shape {self.input_shape} (the traced "
                             f"shape), got {tuple(x.shape[1:])}.")
        eps = torch.as_tensor(eps, dtype=torch.float64).reshape(-1).expand(x.shape[0]).clone()
        if bool((eps < 0).any()) or not bool(torch.isfinite(eps).all()):
            raise InputError(f"{caller}: expected finite radii >= 0, got {eps.tolist()}.")
        return x.detach(), eps

    def _check_region(self, x, eps, jacobian, fisher) -> None:
        rows = x[:SELF_CHECK_ROWS].detach().cpu().to(torch.float64)
        generator = torch.Generator().manual_seed(0)
        direction = torch.randn(rows.shape, generator=generator, dtype=torch.float64)
        norms = direction.reshape(rows.shape[0], -1).norm(dim=1).reshape(
            -1, *([1] * (rows.dim() - 1)))
        radius = eps[:rows.shape[0]].reshape(-1, *([1] * (rows.dim() - 1)))
        points = torch.cat([rows, rows + radius * direction / norms])
        count = rows.shape[0]
        measured_fisher = exact_fisher_top(self._reference(), points)
        measured_norms = exact_jacobian_norms(self._reference(), points, centred=True)
        for name, bound, measured in (("region_bound (fisher)", fisher, measured_fisher),
                                      ("region_bound (jacobian)", jacobian, measured_norms)):
            both = torch.cat([bound[:count], bound[:count]])
            verify(name, both, measured, self._detail())


class RegionBound(NamedTuple):
    """Bounds over balls: ``jacobian`` and ``fisher``, Tensors of shape (B,)."""

    jacobian: torch.Tensor
    fisher: torch.Tensor


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
