r"""Exact tightenings of a traced graph: folding, pooling merge, logit centring.

Each pass replaces a product of node constants by the norm of the product of the maps,
which is never larger (:math:`\|AB\| \le \|A\|\|B\|`), and only where the algebra is exact:

- **BatchNorm folding, backward**: BatchNorm :math:`S` right after a conv/linear layer
  :math:`W` that feeds nothing else: :math:`\|SW\|` replaces :math:`\|S\|\|W\|`.
- **BatchNorm folding, forward**: :math:`S` before a conv/linear layer :math:`W`, with only
  nodes in between whose Jacobians commute with a per-channel scaling (a rule declares it:
  elementwise activations, pooling; a channel-major flatten maps channel :math:`c` to a
  block of columns): :math:`W D S = (W S) D`, so :math:`\|WS\|\,\|D\|` bounds it.
- **LayerNorm** :math:`\gamma` (a diagonal map of the last dimension) into the next linear
  layer, through elementwise nodes and token selections that keep the last dimension
  whole.
- **Pooling merge**: an upsampling average pooling, a flatten, then a linear layer: the
  exact norm of the merged matrix.
- **Centring**: the Fisher information depends only on the centred logits
  (:math:`\Sigma_p = C\Sigma_p C`, :math:`C = I - 11^\top/K`), so the last linear layer may
  be replaced by :math:`CW`; through a final ``log_softmax`` over the classes, whose
  Jacobian :math:`I - 1p^\top` satisfies :math:`C(I - 1p^\top) = C`.
"""

from __future__ import annotations

import math

import networkx as nx
import torch

from numeric.graph.norms import linear_operator_norm
from numeric.graph.registry import NodeSpec

__all__ = ["fold_normalizations", "merge_pooling", "centring_plan", "last_linear"]


def _set(traced, key: str, spec: NodeSpec, label: str | None = None) -> None:
    """Replace the spec of ``key``; a callable constant stays lazy until
    :func:`~numeric.graph.trace.evaluate_constants`."""
    traced.specs[key] = spec
    if callable(spec.lipschitz):
        traced.lazy.add(key)
    else:
        traced.G.nodes[key]["lipschitz"] = float(spec.lipschitz)
    traced.G.nodes[key]["label"] = label or spec.label


def _merged(traced, key: str, into: str) -> None:
    traced.G.nodes[key]["lipschitz"] = 1.0
    traced.G.nodes[key]["label"] = f"folded into {into!r}, which carries the constant"
    traced.merged.add(key)


def _contract(traced, key: str, into: str) -> None:
    """Remove a node folded into ``into`` (its map is now part of ``into``'s constant),
    joining its predecessor to its successors."""
    G = traced.G
    (pred,) = G.predecessors(key)
    successors = list(G.successors(key))
    G.remove_node(key)
    for successor in successors:
        G.add_edge(pred, successor)
    G.nodes[into]["label"] += f" (folded {key!r})"
    traced.merged.add(key)
    traced.contracted[key] = pred


def _only_successor(G: nx.DiGraph, key: str) -> str | None:
    successors = list(G.successors(key))
    return successors[0] if len(successors) == 1 else None


def _fold_backward(traced, key: str, scale: torch.Tensor) -> bool:
    G = traced.G
    preds = list(G.predecessors(key))
    if len(preds) != 1 or key not in traced.standard_input:
        return False
    (pred,) = preds
    spec = traced.specs.get(pred)
    if spec is None or spec.fold is None or G.out_degree(pred) != 1 or pred in traced.merged:
        return False
    if spec.op == "linear" and traced.input_ndim.get(pred) != 2:
        return False
    if spec.matrix is not None and spec.matrix.shape[0] != scale.numel():
        return False
    module = G.nodes[key].get("module", "")
    _set(traced, pred, spec.fold(scale))
    _contract(traced, key, pred)
    G.nodes[pred]["module"] = f"{G.nodes[pred].get('module', '')}+{module}"
    return True


def _walk_chain(traced, key: str, classify):
    """Follow the single-input, single-successor chain after ``key`` until
    ``classify(node, spec, params)`` says ``"target"``; ``"through"`` and ``"skip"`` (a
    movement that changes what counts as a channel) pass the node, anything else gives up.
    Returns ``(target, its spec, chain)`` (the chain starts with ``key`` and holds every
    node passed: their values are the ones the fold rescales) or None."""
    G = traced.G
    node, chain = key, [key]
    while True:
        node = _only_successor(G, node)
        if node is None or node == "output" or G.in_degree(node) != 1:
            return None
        spec = traced.specs.get(node)
        if spec is None:
            return None
        verdict = classify(node, spec, G.nodes[node].get("params", {}))
        if verdict == "target":
            return node, spec, chain
        if verdict not in ("through", "skip"):
            return None
        chain.append(node)


def _fold_forward(traced, key: str, scale: torch.Tensor) -> bool:
    if key not in traced.standard_input or traced.input_ndim.get(key) not in (2, 3, 4, 5):
        return False
    flattened = traced.input_ndim.get(key) == 2

    def classify(node, spec, params):
        nonlocal flattened
        if spec.op == "conv" and not flattened and spec.fold_input is not None:
            return "target"
        if spec.op == "linear" and spec.fold_input is not None and flattened and \
                traced.input_ndim.get(node) == 2 and spec.matrix is not None and \
                spec.matrix.shape[1] % scale.numel() == 0:
            return "target"
        if spec.kind == "movement" and spec.op == "reshape" and params.get("identity_order") \
                and params.get("copies") == 1 and not flattened and \
                traced.input_ndim.get(node, 0) > 2:
            flattened = True
            return "skip"
        return "through" if spec.channelwise else "stop"

    found = _walk_chain(traced, key, classify)
    if found is None:
        return False
    node, spec, chain = found
    _set(traced, node, spec.fold_input(scale))
    _contract(traced, key, node)
    _scaled_values(traced, chain, scale)
    return True


def _scaled_values(traced, chain: list, scale: torch.Tensor) -> None:
    """The values along a folded chain are the graph's times a per-channel ``scale`` (the
    folded map moved into the layer after them), so a Jacobian norm of the graph's value
    is at most ``max|scale|`` times smaller than the actual value's (``value_factor``: the
    region bounds' deviations carry it) and at most ``1 / min|scale|`` times larger
    (``value_shrink``: what an exact norm of the actual value gives the graph's)."""
    magnitudes = scale.detach().abs()
    factor = float(magnitudes.max())
    smallest = float(magnitudes.min())
    shrink = 1.0 / smallest if smallest > 0 else math.inf
    for key in chain:
        traced.value_factor[key] = traced.value_factor.get(key, 1.0) * factor
        traced.value_shrink[key] = traced.value_shrink.get(key, 1.0) * shrink


def _fold_layernorm(traced, key: str, spec: NodeSpec) -> bool:
    def classify(node, target, params):
        if target.op == "linear" and target.fold_input is not None and \
                target.matrix is not None and \
                target.matrix.shape[1] == spec.feature_scale.numel():
            return "target"
        elementwise = target.kind == "map" and not target.mixes and target.channelwise
        kept = target.kind == "movement" and params.get("last_dim_kept") and \
            params.get("copies") == 1
        return "through" if elementwise or kept else "stop"

    found = _walk_chain(traced, key, classify)
    if found is None:
        return False
    node, target, chain = found
    _set(traced, node, target.fold_input(spec.feature_scale))
    _set(traced, key, spec.without_scale())
    _scaled_values(traced, chain, spec.feature_scale)
    return True


def fold_normalizations(traced) -> None:
    """BatchNorm into its neighbours, LayerNorm's gamma into the next linear layer."""
    if not traced.options.fold_batchnorm:
        return
    for key, spec in list(traced.specs.items()):
        if key in traced.G and spec.channel_scale is not None:
            _fold_backward(traced, key, spec.channel_scale) or \
                _fold_forward(traced, key, spec.channel_scale)
    for key, spec in list(traced.specs.items()):
        if key in traced.G and spec.feature_scale is not None and key not in traced.merged:
            _fold_layernorm(traced, key, spec)


def merge_pooling(traced) -> None:
    """Upsampling adaptive average pooling -> flatten -> linear: one exact matrix norm."""
    if not traced.options.merge_pooling:
        return
    G = traced.G
    for key, spec in list(traced.specs.items()):
        if key not in G or spec.op != "linear" or spec.matrix is None or \
                traced.input_ndim.get(key) != 2:
            continue
        (flat,) = G.predecessors(key)
        flat_params = G.nodes[flat].get("params", {})
        if G.nodes[flat]["op"] != "reshape" or not flat_params.get("identity_order") or \
                G.out_degree(flat) != 1:
            continue
        (pool,) = G.predecessors(flat)
        params = G.nodes[pool].get("params", {})
        if G.nodes[pool]["op"] != "avgpool" or G.out_degree(pool) != 1 or \
                "output_size" not in params:
            continue
        out, spatial = params["output_size"], params["input_size"]
        if math.prod(out) <= math.prod(spatial):
            continue
        n_in = math.prod(spatial)
        basis = torch.eye(n_in, dtype=torch.float64).reshape(n_in, 1, *spatial)
        pool_fn = {1: torch.nn.functional.adaptive_avg_pool1d,
                   2: torch.nn.functional.adaptive_avg_pool2d,
                   3: torch.nn.functional.adaptive_avg_pool3d}[len(spatial)]
        P = pool_fn(basis, out).reshape(n_in, -1).T
        W = spec.matrix
        if W.shape[1] % P.shape[0]:
            continue
        channels = W.shape[1] // P.shape[0]
        merged = (W.reshape(W.shape[0], channels, P.shape[0]) @ P).reshape(W.shape[0], -1)
        value = linear_operator_norm(merged)
        if value >= G.nodes[pool]["lipschitz"] * G.nodes[key]["lipschitz"]:
            continue
        _merged(traced, pool, key)
        G.nodes[key]["lipschitz"] = value
        G.nodes[key]["label"] = "exact SVD of the weight times the upsampling pooling"
        traced.specs[key] = spec.replace(lipschitz=value, matrix=merged)
        traced.merged.add(flat)
        traced.local_nodes = {k: v for k, v in traced.local_nodes.items() if v != pool}


def _final_log_softmax(G: nx.DiGraph, traced, node: str) -> bool:
    params = G.nodes[node].get("params", {})
    return (G.nodes[node]["op"] == "function" and params.get("call") == "log_softmax"
            and traced.input_ndim.get(node) == 2 and params.get("dim") == 1
            and G.out_degree(node) == 1)


def last_linear(traced) -> tuple[str | None, list[str]]:
    """The linear node whose output is the logits, and the final ``log_softmax`` nodes
    between it and the output."""
    G = traced.G
    (node,) = G.predecessors("output")
    passed = []
    while True:
        if G.nodes[node]["op"] in ("identity", "dropout") and G.out_degree(node) == 1:
            (node,) = G.predecessors(node)
        elif _final_log_softmax(G, traced, node):
            passed.append(node)
            (node,) = G.predecessors(node)
        else:
            break
    spec = traced.specs.get(node)
    if (G.nodes[node]["op"] == "linear" and G.out_degree(node) == 1 and spec is not None
            and spec.matrix is not None and traced.input_ndim.get(node) == 2):
        return node, passed
    return None, passed


def centring_plan(traced) -> dict:
    """Node -> constant once the logits are centred (the last linear layer :math:`CW`, a
    final ``log_softmax`` 1); empty when there is nothing to centre."""
    if not traced.options.centre_logits:
        return {}
    node, passed = last_linear(traced)
    plan = {key: 1.0 for key in passed}
    if node is not None:
        W = traced.specs[node].matrix
        value = linear_operator_norm(W - W.mean(dim=0, keepdim=True))
        plan[node] = min(value, traced.G.nodes[node]["lipschitz"])
    return plan
