"""Rule by rule: every node constant against the exact Jacobian of its own operation.

A bound on a whole network can hide a wrong rule behind looseness elsewhere. This checker
re-runs the tracer with a runner that, after each operation with input-dependent operands,
computes the exact float64 Jacobian of that one operation at its actual inputs, operand by
operand, and compares its norm with what the graph claims for it: the AutoLip value of the
nodes the rule created, from that operand to the operation's output. Kinks are no
exception: autograd returns one element of the Clarke Jacobian there, which the constants
must also cover.
"""

from __future__ import annotations

import math

import networkx as nx
import torch
from torch import fx

import numeric.graph.bound as bound_module
from numeric.graph.export import LEAF_OP
from numeric.graph.registry import GraphOptions, Value, registered_module_types
from numeric.graph.kinds import _substitute
from numeric.graph.trace import TracedGraph, _Runner

__all__ = ["rule_violations"]


class _CheckingRunner(_Runner):
    def __init__(self, traced: TracedGraph) -> None:
        super().__init__(traced, local=False)
        self.created: dict = {}
        self.problems: list[str] = []

    def _add_node(self, key, spec, preds, node):
        super()._add_node(key, spec, preds, node)
        self.created.setdefault(node.name, []).append(key)

    def _apply_rule(self, node: fx.Node, result):
        sources = {m.name: self.info[m].key for m in node.all_input_nodes
                   if self.info[m].kind == "traced"}
        info = super()._apply_rule(node, result)
        if node.target is not LEAF_OP and info.kind in ("traced", "tuple"):
            self._check(node, result, sources, info)
        return info

    def _claimed(self, source_key: str, output_key: str) -> float:
        """AutoLip value at ``output_key`` with 1 at ``source_key``, over this op's nodes."""
        G = self.traced.G
        if source_key == output_key:
            return 1.0
        values = {source_key: 1.0}
        order = [k for k in nx.topological_sort(G) if k in nx.descendants(G, source_key)
                 and (k == output_key or nx.has_path(G, k, output_key))]
        for key in order:
            data = G.nodes[key]
            preds = [values.get(p, 0.0) for p in G.predecessors(key)]
            constant = self.traced.specs[key].lipschitz
            constant = constant() if callable(constant) else constant
            op = data["op"]
            if op == "add":
                values[key] = sum(preds)
            elif op == "concat":
                values[key] = math.sqrt(sum(p * p for p in preds))
            else:
                values[key] = preds[0] * (1.0 if constant is None else float(constant))
        return values.get(output_key, 0.0)

    def _check(self, node, result, sources: dict, info) -> None:
        ctx = self._context(node, result)
        spec = self.traced.kinds.get(node.name)
        entry = None
        if spec is not None and spec.outputs is not None:
            entry = next(i for i, kind in spec.outputs.items() if kind == "traced")
        values = {v.name: v for v in ctx.values() if isinstance(v, Value) and v.traced}
        for name, value in values.items():
            source_key = sources.get(name)
            if source_key is None or info.key is None:
                continue

            def function(z, name=name):
                substitutes = {n: v.value for n, v in values.items()}
                substitutes[name] = z
                out = ctx.replay(**_substitute(ctx, substitutes))
                return out[entry] if entry is not None else out

            point = value.value.detach().to(torch.float64)
            try:
                jacobian = torch.autograd.functional.jacobian(function, point)
            except RuntimeError as err:   # no autograd formula (aten.copy): replay-checked
                if "not implemented" in str(err):
                    continue
                raise
            matrix = jacobian.reshape(-1, point.numel())
            exact = float(torch.linalg.matrix_norm(matrix, ord=2)) if matrix.numel() else 0.0
            claimed = self._claimed(source_key, info.key)
            if exact > claimed * (1 + 1e-9) + 1e-12:
                self.problems.append(f"{node.name} ({node.target}) w.r.t. {name}: exact "
                                     f"{exact:.6g} > claimed {claimed:.6g}")


def rule_violations(model: torch.nn.Module, x: torch.Tensor, exported=None) -> list[str]:
    """Operations whose exact Jacobian at the first two rows of ``x`` (float64) exceeds
    what their rules claim; empty when every rule holds there. ``exported``: the model's
    export, if already made."""
    x = x.detach().to(torch.float64)
    if exported is None:
        exported = bound_module.export_model(model, x, registered_module_types())
    traced = TracedGraph(nx.DiGraph(), exported, GraphOptions(allow_unbounded=True))
    runner = _CheckingRunner(traced)
    row = x[:2]
    with torch.no_grad():
        runner.run(row if row.shape[0] == 2 else row.expand(2, *row.shape[1:]).clone())
    return runner.problems
