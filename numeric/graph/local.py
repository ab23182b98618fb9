r"""Per-row propagation of local and region constants, with the exact masked refinements.

Both the local bound (constants at a point) and the region bound (constants over a ball)
end the same way: the graph's propagation (:func:`bounds.propagate`) row by row, where a
linear layer or a convolution :math:`W` between activations with entrywise derivative
bounds :math:`d` gets :math:`\|\operatorname{diag}(d_{next}) W
\operatorname{diag}(d_{prev})\|` instead of the product of norms (the activations keep
their constants :math:`c`, the layer gets the norm of the matrix rescaled by :math:`d/c`; an
activation between two such layers lends :math:`(d/c)^{1/2}` to each, since it occurs once
in the Jacobian), and, when the probabilities are fixed (a point), the last linear layer
gets :math:`\|\Sigma_p^{1/2} W \operatorname{diag}(d_{prev})\|` exactly.
"""

from __future__ import annotations

import math

import torch

import bounds
from numeric.graph.norms import CERTIFICATION_FACTOR, linear_operator_norm
from numeric.graph.passes import last_linear
from numeric.graph.softmax import curvature, probabilities, weighted_rows
from numeric.graph.trace import ACTIVATION_OPS, UNIT_OPS, TracedGraph

__all__ = ["refinement_plan", "propagate_rows", "local_fisher"]


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


def refinement_plan(traced: TracedGraph) -> dict[str, tuple[str | None, str | None]]:
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
    product = weighted_rows(matrix, p)
    value = linear_operator_norm(product) if product.numel() else 0.0
    slack = 1e-12 * float(matrix.pow(2).sum())
    return math.sqrt(value ** 2 + slack)


def propagate_rows(traced: TracedGraph, overrides: dict, constants: dict, stashes: dict,
                   p: torch.Tensor | None = None) -> tuple[torch.Tensor, bool]:
    r"""Per-row Jacobian bounds of the graph with per-row ``constants`` (graph key ->
    Tensor (B,)) and the masked refinements (module docstring).

    ``overrides``: graph key -> constant for every row (centring). With probabilities ``p``
    (B, K) the last linear layer is weighted by :math:`\Sigma_p^{1/2}` exactly when the
    plan allows it; the second value says whether it did (the bound is then on
    :math:`\|\Sigma_p^{1/2}J\|`, else on :math:`\|J\|`).
    """
    G = traced.G
    plan = refinement_plan(traced)
    keep = {key for pair in plan.values() for key in pair if key is not None}
    before_of = {before for before, _ in plan.values()}
    after_of = {after for _, after in plan.values()}
    power = {key: 0.5 if key in before_of and key in after_of else 1.0 for key in keep}
    last, passed = last_linear(traced)
    exact_last = p is not None and last is not None and last in plan
    overrides = {**overrides, **{key: 1.0 for key in passed}}
    matrices = {key: (traced.specs[key].matrix if traced.specs[key].op == "linear"
                      else traced.specs[key].dense()).cpu() for key in plan
                if all(k is None or k in stashes for k in plan[key])}
    batch = next(iter(constants.values())).shape[0] if constants else (
        p.shape[0] if p is not None else 1)
    values = []
    for row in range(batch):
        H = G.copy()
        for key, value in overrides.items():
            H.nodes[key]["lipschitz"] = value
        for key, per_row in constants.items():
            if key in H:
                H.nodes[key]["lipschitz"] = min(float(per_row[row]),
                                                H.nodes[key].get("lipschitz", math.inf))
        for key, matrix in matrices.items():
            before, after = plan[key]
            prev = _scaled_derivative(stashes, constants, before, row, matrix.shape[1],
                                      power.get(before, 1.0))
            if key == last and exact_last:
                masked = matrix if prev is None else matrix * prev
                H.nodes[key]["lipschitz"] = _softmax_factor_norm(masked, p[row])
                continue
            nxt = None if key == last else _scaled_derivative(
                stashes, constants, after, row, matrix.shape[0], power.get(after, 1.0))
            H.nodes[key]["lipschitz"] = min(_masked_norm(matrix, nxt, prev),
                                            H.nodes[key]["lipschitz"])
        values.append(bounds.propagate(H, check=False))
    return torch.tensor(values, dtype=torch.float64), exact_last


def stash_keys(traced: TracedGraph) -> set:
    """The activations whose derivative vectors the refinements use."""
    return {key for pair in refinement_plan(traced).values() for key in pair
            if key is not None}


def local_fisher(traced: TracedGraph, centring: dict, x: torch.Tensor) -> torch.Tensor:
    r"""Certified :math:`\lambda_{\max}(F(x_b))` bounds at each row (Tensor (B,))."""
    constants, stashes, logits = traced.local_constants(x, stash_keys(traced))
    p, rest = probabilities(logits.cpu())
    jacobian, exact_last = propagate_rows(traced, centring, constants, stashes, p)
    values = jacobian ** 2 if exact_last else curvature(p, rest) * jacobian ** 2
    return values * CERTIFICATION_FACTOR
