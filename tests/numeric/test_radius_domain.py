"""Certified radii are about the float64 function, and refused where it jumps.

Red-team cases: a float32 model's own margins can exceed the exact ones by orders of
magnitude (large logits), and torch's softplus jumps where it switches to the identity,
which no derivative bound sees.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from numeric import UnsupportedModuleError
from numeric.graph import trace_model


def _near_boundary(model: nn.Linear, reference: nn.Linear, generator: torch.Generator):
    """A float32 point just on class 0's side of a linear model's boundary whose float32
    margin is at least 3 times the exact one (the case the old code got wrong)."""
    w = (reference.weight[0] - reference.weight[1]).detach()
    for _ in range(20000):
        x = torch.randn(1, w.numel(), dtype=torch.float64, generator=generator) * 10
        with torch.no_grad():
            margin = float(reference(x)[0, 0] - reference(x)[0, 1])
            offset = 1e-4 * float(torch.rand((), generator=generator))
            x = (x - (margin - offset) * w / w.norm() ** 2).float()
            exact = float(reference(x.double())[0, 0] - reference(x.double())[0, 1])
            out = model(x)
            rounded = float(out[0, 0] - out[0, 1])
        if exact > 0 and rounded > 3 * exact and rounded > 1e-3:
            return x, exact
    raise AssertionError("no such point found")


@pytest.mark.parametrize("seed", range(3))
def test_a_float32_models_radius_uses_the_exact_margin(seed):
    generator = torch.Generator().manual_seed(seed)
    model = nn.Linear(64, 2)
    with torch.no_grad():        # logits of order 1e4: float32 margins are off by ~1e-3
        model.weight.copy_(torch.randn(2, 64, generator=generator) * 300)
        model.bias.copy_(torch.randn(2, generator=generator) * 300)
    reference = nn.Linear(64, 2).double()
    reference.load_state_dict(model.state_dict())
    x, margin = _near_boundary(model, reference, generator)
    w = (reference.weight[0] - reference.weight[1]).detach()
    distance = margin / float(w.norm())          # exact distance to the boundary
    radius = float(trace_model(model, x).certified_radius(x, torch.tensor([0]))[0])
    assert radius <= distance * (1 + 1e-9)


def test_softplus_jump_refuses_radii_but_keeps_bounds():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 1), nn.Softplus(beta=1.0, threshold=0.0),
                          nn.Linear(1, 2)).double().eval()
    x = torch.randn(3, 8, dtype=torch.float64)
    traced = trace_model(model, x)
    assert "jumps by 0.693" in traced.radius_reason()
    with pytest.raises(UnsupportedModuleError, match="no certified radius: softplus"):
        traced.certified_radius(x)
    assert traced.fisher_bound() > 0        # derivative bounds hold wherever J exists
    # a threshold past exp's overflow has no jump at it, but is inf before it
    overflowing = nn.Sequential(nn.Linear(8, 1), nn.Softplus(threshold=800.0),
                                nn.Linear(1, 2)).double().eval()
    assert torch.isinf(overflowing[1](torch.tensor([720.0], dtype=torch.float64))).all()
    assert "overflows to inf" in trace_model(overflowing, x).radius_reason()
