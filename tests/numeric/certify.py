"""Shared checks of certified bounds against exact float64 values.

:func:`assert_sound` traces a model and compares every certified quantity with the exact
value: the global Fisher and Lipschitz bounds at the example rows and at random points
(they hold for every input), the local Fisher bound at the rows, and every rule's constant
against the exact Jacobian of its own operation (``tests/numeric/node_check.py``). :func:`cached_exports`
lets a test re-trace one architecture with new weights without exporting it again (the
exported graph reads the module's own parameter tensors).
"""

from __future__ import annotations

import contextlib

import torch

import numeric.graph.bound as bound_module
from numeric.graph import trace_model
from numeric.graph.selfcheck import exact_fisher_top, exact_jacobian_norms

__all__ = ["assert_sound", "cached_exports", "Measured"]


class Measured:
    """Bounds and exact values of one model at some points."""

    def __init__(self, traced, model, x, points):
        self.traced = traced
        self.global_fisher = traced.fisher_bound()
        self.local_fisher = traced.local_fisher_bound(x)
        self.lipschitz = traced.lipschitz_bound("output")
        self.centred = traced.lipschitz_bound("centred_output")
        everywhere = torch.cat([x, points])
        self.exact_fisher = exact_fisher_top(model, everywhere)
        self.exact_norms = exact_jacobian_norms(model, everywhere, centred=False)
        self.exact_centred = exact_jacobian_norms(model, everywhere, centred=True)
        self.exact_local = self.exact_fisher[:x.shape[0]]

    def violations(self) -> list[str]:
        found = []
        checks = [("global Fisher", self.global_fisher, self.exact_fisher),
                  ("local Fisher", self.local_fisher, self.exact_local),
                  ("Lipschitz of the output", self.lipschitz, self.exact_norms),
                  ("Lipschitz of the centred output", self.centred, self.exact_centred)]
        for name, bound, exact in checks:
            bound = torch.as_tensor(bound, dtype=torch.float64)
            if bool((bound < exact).any()):
                found.append(f"{name}: bound {bound.tolist()} < exact {exact.tolist()}")
        if bool((self.local_fisher > self.global_fisher).any()):
            found.append("local Fisher bound above the global one")
        return found


def assert_sound(model: torch.nn.Module, x: torch.Tensor, *, points: int = 2, scale=1.0,
                 generator: torch.Generator | None = None, **options) -> Measured:
    """Trace ``model`` (float64) and assert that no certified bound is below the exact
    value at the rows of ``x`` and at ``points`` random points (``scale`` times standard
    normal)."""
    generator = generator or torch.Generator().manual_seed(0)
    model = model.double()
    x = x.double()
    traced = trace_model(model, x, self_check=False, **options)
    random = scale * torch.randn((points, *x.shape[1:]), generator=generator,
                                 dtype=torch.float64)
    measured = Measured(traced, model, x, random)
    from tests.numeric.node_check import rule_violations
    problems = measured.violations() + rule_violations(model, x, traced._traced.exported)
    assert not problems, f"{type(model).__name__}: " + "; ".join(problems)
    return measured


@contextlib.contextmanager
def cached_exports(monkeypatch):
    """Export each model object once (keyed by identity and input shape)."""
    cache = {}
    original = bound_module.export_model

    def export(model, x, leaf_types=()):
        key = (id(model), tuple(x.shape[1:]), x.dtype)
        if key not in cache:
            cache[key] = (model, original(model, x, leaf_types))
        return cache[key][1]

    monkeypatch.setattr(bound_module, "export_model", export)
    yield cache
