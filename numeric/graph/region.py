r"""Certified bounds over a ball: :math:`\sup_{\|x'-x\|_2 \le \varepsilon} \|J(x')\|_2` and
:math:`\sup \lambda_{\max}(F(x'))`, and the certified radius they give.

One float64 pass over the traced graph at the batch, in topological order. For every
input-dependent value :math:`v` it keeps :math:`L_v(\varepsilon)`, a bound on
:math:`\|J_v(x')\|` over the ball (the graph's propagation with *region constants*), so
that by the mean value inequality (Clarke's, at kinks) every entry moves by at most
:math:`\varepsilon L_v` over the ball: :math:`v_i(x') \in [v_i(x) \pm \varepsilon L_v]`.
Entries computed by a linear layer or a convolution :math:`z = W a` get the tighter
:math:`\varepsilon\,\|W_{i\cdot} \odot d\|\,L_u` when :math:`a = \phi(u)` is an activation
whose derivative is bounded entrywise by :math:`d` over the ball (the row's own norm,
:math:`\|W_{i\cdot}\| L_a`, otherwise); BatchNorm rescales them and data movements copy
them. Each rule's ``region`` form then bounds its Jacobian over these intervals:
activations by :math:`\sup|\phi'|` over each interval (kinks split it: both one-sided
derivatives count), max pooling by the entries that can be a window's maximum, LayerNorm
by the smallest token standard deviation over the ball (a :math:`1/\sqrt D`-Lipschitz
function of the token), attention by the global formula at the largest token norm over the
ball, products by :math:`\sup|a|\,\|db\| + \sup|b|\,\|da\|`; every other operation keeps
its global constant. The Fisher factor is :math:`\kappa` bounded over the ball from the
intervals of the centred logits (:func:`softmax_curvature_over_box`).

The propagation is the one of :func:`bounds.propagate`, row by row, with the masked
refinements of the local bound (:mod:`numeric.graph.bound`) using the derivative bounds
over the ball. At :math:`\varepsilon = 0` it is the local bound without the exact
softmax-weighted last layer.

The certified radius of a row with label :math:`y` is the largest :math:`\varepsilon`
(bisection) such that for every class :math:`j \ne y`:
:math:`m_j(x) > \varepsilon \sup_{B} \|\nabla (f_y - f_j)\|`, where
:math:`m_j = f_y - f_j` and the gradient bound is :math:`\|(w_y - w_j) \odot d\|\,L_u`
when the logits are :math:`W\phi(u) + b`, else :math:`\sqrt 2\,L` (the margin only depends
on the centred logits). Then no :math:`x'` in the ball changes the prediction.

References
----------
Weng et al., "Towards Fast Computation of Certified Robustness for ReLU Networks"
(Fast-Lip), ICML 2018. Zhang et al., "RecurJac", AAAI 2019. Shi et al., "Efficiently
Computing Local Lipschitz Constants of Neural Networks via Bound Propagation", NeurIPS
2022. Tsuzuku, Sato and Sugiyama, "Lipschitz-Margin Training", NeurIPS 2018.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from numeric.graph.norms import CERTIFICATION_FACTOR
from numeric.graph.passes import last_linear
from numeric.graph.rows import Rows
from numeric.graph.softmax import probabilities, weighted_rows
from numeric.graph.rules.attention import slow_forward
from numeric.graph.kinds import _substitute
from numeric.graph.tangent import (LINEAR_OPS, TANGENT_LIMIT, frobenius, input_tangents,
                                   jvp_of, kinked, row_norms, spectral_of_rows)
from numeric.graph.trace import TracedGraph, _Runner

__all__ = ["RegionResult", "region_pass", "softmax_curvature_over_box",
           "softmax_curvature_from_margins", "exact_centre_bounds"]

aten = torch.ops.aten


class RegionResult:
    """What one region pass found, per row (Tensors of shape (B,) or dicts of them).

    ``jacobian`` is the exact output Jacobian at the centres, (B, K, d), and ``variation``
    the bound on its change over the balls, (B,), when tangents were tracked (else None).
    """

    def __init__(self, constants, stashes, logits, lipschitz, margin_gradients,
                 jacobian=None, variation=None):
        self.constants = constants
        self.stashes = stashes
        self.logits = logits
        self.lipschitz = lipschitz
        self.margin_gradients = margin_gradients
        self.jacobian = jacobian
        self.variation = variation


def _expand(per_row: torch.Tensor, rows: Rows, shape, device) -> torch.Tensor:
    """A per-row quantity as a tensor of ``shape`` (0 for entries with no row)."""
    index = rows.materialize().to(device)
    values = per_row.to(device)[index.clamp_min(0)]
    return torch.where(index >= 0, values, torch.zeros_like(values)).reshape(shape)


class _RegionRunner(_Runner):
    def __init__(self, traced: TracedGraph, eps: torch.Tensor, constants_of: dict,
                 keep: set, tangents: bool, tangent_cache: dict | None = None) -> None:
        super().__init__(traced, local=True, keep=keep)
        self.eps = eps.to(torch.float64)
        self.tangent_cache = {} if tangent_cache is None else tangent_cache
        self.absorbing = set(traced.contracted.values())
        self.graph_constants = constants_of
        self.L: dict = {}
        self.refined: dict = {}
        self.derivatives: dict = {}
        self.tangents_on = tangents
        self.T: dict = {}
        self.delta: dict = {}
        self.variations: dict = {}

    def _per_node(self, table: dict, key: str | None, scaled: bool = True) -> torch.Tensor:
        """``table``'s entry for the value of graph node ``key`` (following contracted
        nodes), (B,); inf if there is none. The tables hold bounds for the graph's values;
        on a chain a BatchNorm or LayerNorm scale was folded across, the actual value is
        the graph's times a per-channel scale, and ``scaled`` multiplies by its largest
        magnitude (``value_factor``): a bound for the actual value."""
        factor = self.traced.value_factor.get(key, 1.0) if scaled else 1.0
        while key not in table and key in self.traced.contracted:
            key = self.traced.contracted[key]
        if key not in table:
            return torch.full((self.batch,), math.inf, dtype=torch.float64)
        return table[key] * factor

    def delta_of(self, key: str | None) -> torch.Tensor:
        """Bound on the variation of the Jacobian of the value of node ``key``, (B,)."""
        return self._per_node(self.delta, key)

    # ------------------------------------------------------------------ deviations

    def value_bound(self, key: str | None) -> torch.Tensor:
        """Bound on the Jacobian norm of the value whose graph node is ``key``, (B,)."""
        return self._per_node(self.L, key)

    def deviation(self, value) -> torch.Tensor:
        """Entrywise bound on how far ``value`` moves over the ball."""
        info = self._info_of(value.name)
        uniform = self.eps * self.value_bound(info.key)
        result = _expand(uniform, value.rows, value.value.shape, value.value.device)
        refined = self.refined.get(value.name)
        if refined is not None and refined.shape == result.shape:
            result = torch.minimum(result, refined.to(result.device))
        tangent = self.T.get(value.name)
        if tangent is not None and (tangent.shape[0], *tangent.shape[2:]) == result.shape:
            radius = _expand(self.eps, value.rows, result.shape, result.device)
            spread = _expand(self.eps * self.delta_of(info.key), value.rows, result.shape,
                             result.device)
            exact = radius * row_norms(tangent).to(result) + spread
            result = torch.minimum(result, exact * (1 + 1e-12))
        return result

    def _factor_magnitude(self, value) -> torch.Tensor:
        r""":math:`|v| + \delta`: every entry's magnitude over the ball."""
        return value.value.detach().to(torch.float64).abs() + self.deviation(value).to(
            torch.float64)

    # ------------------------------------------------------------------ hooks

    def _placeholder(self, node, value):
        info = super()._placeholder(node, value)
        if node.name == self.traced.exported.input_name:
            self.L[node.name] = torch.ones(value.shape[0], dtype=torch.float64)
            self.delta[node.name] = torch.zeros(value.shape[0], dtype=torch.float64)
            if self.tangents_on:
                self.T[node.name] = input_tangents(value)
        return info

    def _tangent_norms(self, value):
        tangent = self.T.get(value.name)
        return None if tangent is None else row_norms(tangent)

    def _tuple_item(self, node, result):
        pending = self.info[node.args[0]].pending
        info = super()._tuple_item(node, result)
        self._propagate_keys(node.name)
        source = node.args[0].name
        if info.kind == "traced" and source in self.T:
            self.T[node.name] = self.T[source]
        elif info.kind == "traced" and pending is not None and self.tangents_on:
            ctx, operands = pending[0], pending[1]
            names = list(operands)
            if all(name in self.T for name in names):
                tangent = self._moved_tangent(ctx, names, [self.T[n] for n in names],
                                              node.args[1])
                if tangent is not None:
                    self.T[node.name] = tangent
        return info

    def _evaluate_local(self, node, ctx, rule) -> None:
        key = self.traced.region_nodes.get(node.name)
        if key is None or key not in self.traced.G:
            return
        ctx.spec = self.traced.specs[key]
        ctx.deviation = self.deviation
        ctx.tangent_norms = self._tangent_norms
        ctx.batch = self.batch
        ctx.keep = True
        value = rule.region(ctx).detach().to(torch.float64).cpu()
        constant = ctx.spec.lipschitz
        if isinstance(constant, (int, float)) and math.isfinite(constant):
            value = value.clamp_max(constant)
        self.constants[key] = value
        if "derivative" in ctx.stash:
            source = ctx.traced()[0]
            self.derivatives[node.name] = (ctx.stash["derivative"],
                                           self.value_bound(self._info_of(source.name).key))
            if "variation" in ctx.stash:
                self.variations[node.name] = (ctx.stash["variation"], source.name,
                                              self._info_of(source.name).key)
        if "variation_exact" in ctx.stash:
            source = ctx.traced()[0]
            self.variations[node.name] = (ctx.stash["variation_exact"], None,
                                          self._info_of(source.name).key)
            if key in self.keep:
                self.stashes[key] = ctx.stash

    def _propagate_keys(self, name: str) -> None:
        """Jacobian bounds and variations of the graph nodes made for fx node ``name``."""
        G = self.traced.G
        for key in self.traced.created.get(name, ()):
            if key not in G:
                continue
            constant = self.constants.get(key)
            if constant is None:
                constant = self.graph_constants.get(key, G.nodes[key].get("lipschitz"))
            # the graph's own values: a folded scale is in the constants already
            self.L[key] = _combine(G.nodes[key]["op"],
                                   [self._per_node(self.L, p, scaled=False)
                                    for p in G.predecessors(key)], constant)
            self.delta[key] = _combine(G.nodes[key]["op"],
                                       [self._per_node(self.delta, p, scaled=False)
                                        for p in G.predecessors(key)], constant)

    def _after(self, node, ctx, info) -> None:
        self._propagate_keys(node.name)
        if self.tangents_on:
            self._track(node, ctx, info)
        self._refine(node, ctx, info)

    def _track(self, node, ctx, info) -> None:
        """Exact tangents of this operation's output and the variation of its Jacobian
        (:mod:`numeric.graph.tangent`)."""
        traced = {v.name: v for v in ctx.traced()}
        if info.kind not in ("traced", "tuple") or info.key is None or not traced or \
                any(name not in self.T for name in traced):
            return
        tangent = self._jvp(node, ctx, traced)
        key = info.key
        info_rows = info.rows if info.rows is not None else next(
            iter(info.entry_rows.values()))
        spec = self.traced.kinds.get(node.name)
        linear = spec is not None and (spec.kind in ("movement", "alias", "scale", "sum") or (
            spec.kind == "map" and (spec.op in LINEAR_OPS or spec.params.get("call") in (
                "sum",))))
        if key in self.traced.created.get(node.name, ()) and key in self.traced.G \
                and not linear:
            variation = self.variations.get(node.name)
            if variation is not None and (variation[1] is None or variation[1] in self.T):
                delta, source, source_key = variation
                exact = delta.cpu() if source is None else spectral_of_rows(
                    self.T[source], delta, self._info_of(source).rows, self.batch)
                constant = self.constants.get(key, self.traced.G.nodes[key]["lipschitz"])
                # the exact part is the actual values'; the graph's is at most
                # value_shrink times it (a per-channel scale folded across)
                shrink = self.traced.value_shrink.get(
                    source_key if source is not None else key, 1.0)
                self.delta[key] = constant * self._per_node(
                    self.delta, source_key, scaled=False) + _rescaled(exact, shrink)
            else:
                # at a point (eps = 0) a smooth operation spreads the Clarke Jacobian of its
                # input by at most its own Jacobian norm (chain rule for a C^1 outer map):
                # the recursion's value; over a ball, and at a point for an operation with
                # kinks (abs, clamps, maxima: its own Clarke Jacobian has several
                # elements there), only the triangle inequality
                trivial = self.L[key] + (_rescaled(frobenius(
                    tangent, info_rows, self.batch) * (1 + 1e-12),
                    self.traced.value_shrink.get(key, 1.0))
                    if tangent is not None else self.L[key])
                smooth = (self.eps == 0) & (not kinked(spec))
                self.delta[key] = torch.where(smooth, self.delta[key], trivial)
        if tangent is None:
            return
        self.T[node.name] = tangent
        # a graph node that absorbed the maps after it (a BatchNorm contracted into the
        # conv before it) stands for their output, not this node's: no tightening here;
        # on a folded chain the graph's value is the actual one divided by a per-channel
        # scale, so its Jacobian is at most value_shrink times the actual one's
        if key in self.L and key not in self.absorbing:
            tighter = (frobenius(tangent, info_rows, self.batch) + self.delta_of(key)) * (
                1 + 1e-12)
            shrink = self.traced.value_shrink.get(key, 1.0)
            if math.isfinite(shrink):
                self.L[key] = torch.minimum(self.L[key], tighter * shrink * (1 + 1e-12))

    def _jvp(self, node, ctx, traced: dict):
        """The exact tangents of ``node``'s output at the centres (None without forward
        mode), from those of its inputs; they do not depend on the radii, so passes at
        the same centres share them through ``tangent_cache``."""
        if node.name not in self.tangent_cache:
            self.tangent_cache[node.name] = self._jvp_at_centre(node, ctx, traced)
        return self.tangent_cache[node.name]

    def _jvp_at_centre(self, node, ctx, traced: dict):
        names = list(traced)
        primals = [traced[name].value.detach().to(torch.float64) for name in names]
        tangents = [self.T[name] for name in names]
        spec = self.traced.kinds.get(node.name)
        entry = None
        if spec is not None and spec.outputs is not None:
            entry = next(i for i, kind in spec.outputs.items() if kind == "traced")

        if ctx.call is not None:
            module = self.traced.leaf_module(ctx.call, torch.float64)

            def function(*values):
                substitutes = dict(zip(names, values))
                tensors = [substitutes.get(v.name, v.value) if v.traced else v.value
                           for v in ctx.arguments["tensors"]]
                if isinstance(module, torch.nn.MultiheadAttention):
                    args, kwargs = ctx.call.arguments(tensors)
                    return slow_forward(module, *args, **kwargs)[0]
                return _first_output(ctx.call.run(tensors, module), entry)
        else:
            def function(*values):
                out = ctx.replay(**_substitute(ctx, dict(zip(names, values))))
                return _first_output(out, entry)
        try:   # the math attention kernel has forward mode; the fused ones do not
            with sdpa_kernel(SDPBackend.MATH):
                result = jvp_of(function, primals, tangents)
        except Exception:   # noqa: BLE001 - no forward mode for it
            result = None
            if spec is not None and spec.kind in ("movement", "alias"):
                result = self._moved_tangent(ctx, names, tangents, entry)
            if result is None:   # the plain bounds stay
                return None
        return result if torch.isfinite(result).all() else None

    def _moved_tangent(self, ctx, names, tangents, index=None):
        """The tangent of a data movement, which is linear: ``f(T) - f(0)`` (the constant
        fills cancel), along every tangent."""
        zeros = {name: torch.zeros_like(tangent[:, 0]) for name, tangent in
                 zip(names, tangents)}
        base = _first_output(ctx.replay(**_substitute(ctx, zeros)), index)

        def apply(*directions):
            out = ctx.replay(**_substitute(ctx, dict(zip(names, directions))))
            return _first_output(out, index) - base
        try:
            return torch.func.vmap(apply, in_dims=1, out_dims=1)(*tangents)
        except Exception:   # noqa: BLE001 - one direction at a time
            try:
                columns = [apply(*(t[:, k] for t in tangents))
                           for k in range(tangents[0].shape[1])]
            except Exception:   # noqa: BLE001 - no tangent: the plain bounds stay
                return None
            return torch.stack(columns, dim=1)

    def _refine(self, node, ctx, info) -> None:
        """Entrywise deviations tighter than the uniform one (module docstring)."""
        traced = ctx.traced()
        if not traced or info.kind != "traced":
            return
        source = traced[0]
        target = node.target
        if target is aten.linear.default or (target is aten.convolution.default
                                             and not ctx.arg("transposed")):
            self.refined[node.name] = self._row_deviation(ctx, source, info)
            return
        spec = self.traced.kinds.get(node.name)
        if len({v.name for v in traced}) != 1:
            return
        self._carry_derivative(node, ctx, source, spec)
        refined = self.refined.get(source.name)
        if refined is None:
            return
        if target is aten._native_batch_norm_legit_no_training.default:
            shape = [1] * source.value.dim()
            shape[1] = -1
            scale = spec.channel_scale.abs().to(refined).reshape(shape)
            self.refined[node.name] = refined * scale
        elif spec is not None and spec.kind in ("alias", "movement"):
            try:   # the same copies of the same entries
                moved = ctx.replay(**_substitute(ctx, {source.name: refined}))
            except Exception:   # noqa: BLE001 - the uniform bound stays valid
                return
            if isinstance(moved, torch.Tensor) and moved.shape == ctx.output.shape:
                self.refined[node.name] = moved.abs()

    def _carry_derivative(self, node, ctx, source, spec) -> None:
        r"""Derivative bounds of an activation, moved with its output by a movement that
        copies each entry at most once (a flatten, a permutation, a selection): then
        :math:`\|w^\top P D\| = \|w \odot P d\|` entry for entry."""
        producer = self.derivatives.get(source.name)
        if producer is None or spec is None or spec.kind not in ("alias", "movement"):
            return
        keys = [k for k in self.traced.created.get(node.name, ()) if k in self.traced.G]
        if any(self.traced.G.nodes[k]["params"].get("copies", 1) > 1 for k in keys):
            return
        try:
            moved = ctx.replay(**_substitute(ctx, {source.name: producer[0]}))
        except Exception:   # noqa: BLE001 - without it the row norms are the plain ones
            return
        if isinstance(moved, torch.Tensor) and moved.shape == ctx.output.shape:
            self.derivatives[node.name] = (moved.abs(), producer[1])

    def _row_deviation(self, ctx, source, info) -> torch.Tensor:
        r""":math:`\varepsilon\|W_{i\cdot} \odot d\| L_u` (or :math:`\|W_{i\cdot}\| L_a`)
        for every output entry of a linear layer or a convolution."""
        weight = ctx.arg("weight").detach().to(torch.float64)
        producer = self.derivatives.get(source.name)
        if producer is not None and producer[0].shape == source.value.shape:
            d, bound = producer
            squares = d.to(torch.float64) ** 2
        else:
            bound = self.value_bound(self._info_of(source.name).key)
            squares = torch.ones(source.value.shape, dtype=torch.float64,
                                 device=source.value.device)
        if ctx.node.target is aten.linear.default:
            rows = squares @ (weight ** 2).T
        else:
            rows = _conv(squares, weight ** 2, ctx)
        grid = _expand(self.eps * bound, info.rows, ctx.output.shape, ctx.output.device)
        return grid * rows.clamp_min(0).sqrt() * (1 + 1e-12)

    def _info_of(self, name: str):
        return self.info[next(n for n in self.info if n.name == name)]


def _rescaled(values: torch.Tensor, shrink: float) -> torch.Tensor:
    """``values * shrink``, infinite where ``shrink`` is (a folded scale with a zero)."""
    if math.isfinite(shrink):
        return values * shrink
    return torch.full_like(values, math.inf)


def _first_output(out, entry):
    if entry is not None:
        return out[entry]
    return out[0] if isinstance(out, (list, tuple)) else out


def _combine(op: str, preds: list, constant) -> torch.Tensor:
    """The graph's propagation rule at one node, per row."""
    if op == "add":
        return sum(preds)
    if op == "concat":
        return torch.stack(preds).pow(2).sum(0).sqrt()
    return preds[0] * constant


def _conv(squares, kernel, ctx) -> torch.Tensor:
    dims = kernel.dim() - 2
    function = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
    return function(squares, kernel, None, tuple(ctx.arg("stride")), tuple(ctx.arg("padding")),
                    tuple(ctx.arg("dilation")), int(ctx.arg("groups")))


def _box_logs(lower: torch.Tensor, upper: torch.Tensor):
    r"""Logs of the entrywise bounds on softmax(z) over the box, and of 1 - the lower
    bound, all without cancellation:
    :math:`\bar p_i = e^{u_i}/(e^{u_i} + \sum_{j\ne i} e^{l_j})`,
    :math:`\underline p_i = e^{l_i}/(e^{l_i} + \sum_{j\ne i} e^{u_j})`."""
    lower, upper = lower.to(torch.float64), upper.to(torch.float64)
    K = lower.shape[-1]
    eye = torch.eye(K, dtype=torch.bool, device=lower.device)

    def others(z):   # log sum over j != i of e^{z_j}, for every i
        expanded = z.unsqueeze(-2).expand(*z.shape[:-1], K, K).masked_fill(eye, -torch.inf)
        return torch.logsumexp(expanded, dim=-1)

    rest_l, rest_u = others(lower), others(upper)
    log_upper = upper - torch.logaddexp(upper, rest_l)
    log_lower = lower - torch.logaddexp(lower, rest_u)
    log_rest_lower = rest_u - torch.logaddexp(lower, rest_u)
    return log_upper, log_lower, log_rest_lower


def softmax_curvature_over_box(lower: torch.Tensor, upper: torch.Tensor) -> torch.Tensor:
    r"""Upper bound on :math:`\kappa(p) = \min(1/2, \max p, 1 - \|p\|^2)` for every
    :math:`p = \operatorname{softmax}(z)` with :math:`z` in the box ``[lower, upper]``
    (Tensors (B, K)): :math:`\max p \le \max_i \bar p_i` and, since
    :math:`\|p\|^2 \ge (\max p)^2 \ge \underline p_i^2` for every :math:`i`,
    :math:`1 - \|p\|^2 \le (1 - \underline p_i)(1 + \underline p_i)` at the largest
    :math:`\underline p_i`, with :math:`1 - \underline p_i` computed as the others' share
    (no cancellation when one class dominates)."""
    log_upper, log_lower, log_rest_lower = _box_logs(lower, upper)
    best = log_lower.argmax(dim=-1, keepdim=True)
    rest = torch.take_along_dim(log_rest_lower, best, dim=-1).squeeze(-1).exp()
    top = torch.take_along_dim(log_lower, best, dim=-1).squeeze(-1).exp()
    kappa = torch.minimum(log_upper.amax(dim=-1).exp(), rest * (1 + top)).clamp(0, 0.5)
    return kappa * (1 + 1e-9) + 1e-300


def softmax_curvature_from_margins(margins: torch.Tensor) -> torch.Tensor:
    r"""Upper bound on :math:`\kappa(p)` (as :func:`softmax_curvature_over_box`) for every
    :math:`p = \operatorname{softmax}(z)` whose margins satisfy
    :math:`z_y - z_j \ge \mu_j` (``margins`` (B, K), the label's own entry inf): then
    :math:`p_y \ge 1/(1 + t)`, :math:`t = \sum_{j \ne y} e^{-\mu_j}`, so
    :math:`1 - \|p\|^2 \le 1 - p_y^2 \le s(2 - s)` with :math:`s = t/(1+t) \ge 1 - p_y`
    (any :math:`\mu`, of any sign)."""
    log_t = torch.logsumexp(-margins.to(torch.float64), dim=-1)
    s = torch.exp(log_t - torch.nn.functional.softplus(log_t))      # t / (1 + t)
    kappa = (s * (2 - s)).clamp(0, 0.5)
    return kappa * (1 + 1e-9) + 1e-300


def region_pass(traced: TracedGraph, centring: dict, x: torch.Tensor, eps: torch.Tensor,
                keep=(), tangents: bool | None = None,
                tangent_cache: dict | None = None) -> RegionResult:
    """Run the region pass at the rows of ``x`` with radii ``eps`` (Tensor (B,));
    ``tangents`` (default: when a row has at most :data:`TANGENT_LIMIT` entries) tracks
    exact Jacobians at the centres. Passes at the same ``x`` (only the radii differ) may
    share one ``tangent_cache`` dict: the first fills it, the others skip the forward-mode
    products (most of a pass's cost on small inputs)."""
    G = traced.G
    constants_of = dict(centring)
    if tangents is None:
        tangents = x[0].numel() <= TANGENT_LIMIT
    runner = _RegionRunner(traced, eps, constants_of, set(keep), tangents, tangent_cache)
    with torch.no_grad():
        logits = runner.run(x.detach().to(torch.float64))
    (output_key,) = G.predecessors("output")
    lipschitz = runner.value_bound(output_key)
    jacobian = variation = None
    output_name = traced.exported.output_name
    if output_name in runner.T:
        jacobian = runner.T[output_name].transpose(1, 2).detach().cpu()      # (B, K, d)
        variation = runner.delta_of(output_key).cpu()
    margins = _margin_gradients(traced, runner, logits, lipschitz)
    if jacobian is not None:
        predicted = logits.argmax(dim=1).cpu()
        rows = jacobian[torch.arange(len(predicted)), predicted].unsqueeze(1) - jacobian
        exact = rows.norm(dim=2) * (1 + 1e-12) + math.sqrt(2) * variation.unsqueeze(1)
        exact[torch.arange(len(predicted)), predicted] = 0
        margins = torch.minimum(margins.cpu(), exact)
    return RegionResult(runner.constants, runner.stashes, logits, lipschitz, margins,
                        jacobian, variation)


def _margin_gradients(traced: TracedGraph, runner: _RegionRunner, logits, lipschitz):
    r"""(B, K) bounds on :math:`\sup_B\|\nabla(f_y - f_j)\|` for :math:`y` the predicted
    class of each row (0 at :math:`j = y`)."""
    B, K = logits.shape
    predicted = logits.argmax(dim=1)
    fallback = math.sqrt(2) * lipschitz.unsqueeze(1).expand(B, K).clone()
    node, passed = last_linear(traced)
    if node is None or passed:
        fallback[torch.arange(B), predicted] = 0
        return fallback
    fx_name = next((name for name, keys in traced.created.items() if node in keys), None)
    producer_name = None
    if fx_name is not None:
        fx_node = next(n for n in traced.exported.module.graph.nodes if n.name == fx_name)
        producer_name = fx_node.args[0].name if fx_node.args else None
    W = traced.specs[node].matrix.to(torch.float64)
    producer = runner.derivatives.get(producer_name)
    if producer is None or producer[0].dim() != 2 or producer[0].shape[1] != W.shape[1]:
        fallback[torch.arange(B), predicted] = 0
        return fallback
    d, bound = producer
    rows = W[predicted].unsqueeze(1) - W.unsqueeze(0)          # (B, K, in)
    norms = (rows * d.unsqueeze(1)).norm(dim=2) * bound.unsqueeze(1) * CERTIFICATION_FACTOR
    return torch.minimum(norms, fallback)


def exact_centre_bounds(result: RegionResult, eps: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    r"""Region bounds from the exact Jacobian :math:`J = J(x)` at the centre and the bound
    :math:`\Delta` on its change over the ball (:mod:`numeric.graph.tangent`).

    :math:`\sup_B\|CJ'\| \le \|CJ\| + \Delta`. For the Fisher information,
    :math:`\|\Sigma_{p'}^{1/2}J'\| \le \|\Sigma_{p'}^{1/2} CJ\| + \sqrt{\kappa'}\,\Delta`
    and :math:`\Sigma_{p'} \preceq \Sigma_p + s I` with
    :math:`s = \max_i|\Delta p_i| + 2\|\Delta p\| \ge \|\Sigma_{p'} - \Sigma_p\|`, where
    :math:`p'` ranges over the softmax of the box of centred logits
    :math:`(Cf)_i \pm \varepsilon(\|\nabla (Cf)_i\| + \Delta)`, so
    :math:`\sup_B \lambda_{\max}(F) \le (\sqrt{\|\Sigma_p^{1/2}J\|^2 + s\|CJ\|^2} +
    \sqrt{\kappa'}\Delta)^2`, which is :math:`\lambda_{\max}(F(x))` itself at
    :math:`\varepsilon = 0` away from kinks. Returns ``(jacobian, fisher)``, (B,) each."""
    J = result.jacobian.to(torch.float64)
    centred = J - J.mean(dim=1, keepdim=True)
    delta = result.variation.to(torch.float64)
    norm = torch.linalg.matrix_norm(centred, ord=2) * (1 + 1e-9)
    jacobian = (norm + delta) * CERTIFICATION_FACTOR
    logits = result.logits.cpu().to(torch.float64)
    p, _ = probabilities(logits)
    exact = torch.linalg.matrix_norm(weighted_rows(J, p), ord=2) ** 2 * (1 + 1e-9) + 1e-300
    moves = eps.unsqueeze(1) * (centred.norm(dim=2) + delta.unsqueeze(1)) * (1 + 1e-9)
    centre = logits - logits.mean(dim=1, keepdim=True)
    lower, upper = centre - moves, centre + moves
    kappa = softmax_curvature_over_box(lower, upper)
    log_upper, log_lower, _ = _box_logs(lower, upper)
    change = torch.maximum(log_upper.exp() - p, p - log_lower.exp()).clamp_min(0)
    # the top class moves by the others' total (the probabilities sum to 1), which its own
    # difference, of numbers near 1, would lose
    top = p.argmax(dim=1, keepdim=True)
    own = torch.take_along_dim(change, top, dim=1)
    others = change.sum(dim=1, keepdim=True) - own
    change = change.scatter(1, top, torch.maximum(own, others))
    spread = change.amax(dim=1) + 2 * change.norm(dim=1)
    root = (exact + spread * norm ** 2).sqrt() + kappa.sqrt() * delta
    # no variation bound (no region form): infinity, not 0 * inf = NaN above
    unknown, infinite = ~torch.isfinite(delta), torch.full_like(jacobian, math.inf)
    return (torch.where(unknown, infinite, jacobian),
            torch.where(unknown, infinite, root ** 2 * CERTIFICATION_FACTOR))
