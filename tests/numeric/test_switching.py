"""The Jacobian bound over a ball from switching sets (numeric.graph.switching).

Soundness: on random ReLU networks (convolutions, BatchNorm, residual sums, concatenation,
average and max pooling, scalings; weights over five decades) and radii over 4.5 decades,
the bound is never below the exact float64 norm of the centred logits' Jacobian at the
centre, at random points of the ball (inside and on its sphere) and at the ends of
projected descents on every margin (which cross the switching surfaces); the margin bounds
are never above the margins there, and ``region_bound``, which uses both (the Jacobian,
and the softmax factor from the margins), is never below :math:`\lambda_{\max}(F)` there. Exactness: where
the ball switches nothing (a tiny radius, an affine model) the bound is the exact norm at
the centre.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from numeric.graph import trace_model
from numeric.graph.crown import supported_reason
from numeric.graph.region import softmax_curvature_from_margins
from numeric.graph.selfcheck import exact_fisher_top, exact_jacobian_norms
from numeric.graph.switching import switching_jacobian_bound
from tests.numeric.graph_models import networks
from tests.numeric.test_crown import _points

pytestmark = pytest.mark.usefixtures("one_thread")


def _sphere_points(x, eps, generator, count=16):
    """Random points of the balls, half of them on the spheres."""
    points = []
    for k in range(count):
        direction = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        norms = direction.flatten(1).norm(dim=1).clamp_min(1e-300)
        scale = torch.ones_like(eps) if k % 2 else torch.rand(
            eps.shape, generator=generator, dtype=x.dtype)
        step = direction * (eps * scale / norms).reshape(-1, *([1] * (x.dim() - 1)))
        points.append(x + step)
    return points


@settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=networks(activations=["relu"], ceil_modes=(False,)),
       log_eps=st.floats(-4, 0.5))
def test_bound_is_never_below_the_jacobian_in_the_ball(case, log_eps):
    model, x = case
    traced_model = trace_model(model, x, self_check=False)
    traced = traced_model._traced
    if supported_reason(traced, x) is not None:
        return
    eps = torch.full((x.shape[0],), 10 ** log_eps, dtype=torch.float64) * float(
        x.flatten(1).norm(dim=1).mean())
    bound, margins = switching_jacobian_bound(traced, x, eps)
    region = traced_model.region_bound(x, eps, linear=True)       # uses both
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        labels = model(x).argmax(1)
    points = _sphere_points(x, eps, generator) + _points(model, x, labels, eps, None,
                                                         generator)
    for point in points:
        measured = exact_jacobian_norms(model, point, centred=True)
        assert bool((measured <= bound * (1 + 1e-9) + 1e-12).all()), (bound, measured)
        fisher = exact_fisher_top(model, point)
        assert bool((fisher <= region.fisher).all()), (region.fisher, fisher)
        with torch.no_grad():
            logits = model(point)
        actual = logits.gather(1, labels.unsqueeze(1)) - logits
        finite = torch.isfinite(margins)           # the prediction's own column is inf
        assert bool((margins <= actual + 1e-9 * (1 + actual.abs()))[finite].all()), (
            margins, actual)


def test_nothing_switches_in_a_tiny_ball_so_the_bound_is_the_centre_norm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                          nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16, 8), nn.ReLU(),
                          nn.Linear(8, 5)).double().eval()
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    traced = trace_model(model, x, self_check=False)._traced
    bound = switching_jacobian_bound(traced, x, 1e-9).jacobian
    exact = exact_jacobian_norms(model, x, centred=True)
    assert bool((bound >= exact).all())
    assert bound == pytest.approx(exact, rel=1e-7)


def test_an_affine_model_gets_its_exact_norm_at_any_radius():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.AvgPool2d(2), nn.Flatten(),
                          nn.Linear(12, 4)).double().eval()
    x = torch.randn(2, 1, 6, 6, dtype=torch.float64)
    traced = trace_model(model, x, self_check=False)._traced
    bound = switching_jacobian_bound(traced, x, 100.0).jacobian
    assert bound == pytest.approx(exact_jacobian_norms(model, x, centred=True), rel=1e-7)


def test_a_ball_that_switches_gets_more_than_the_centre_norm():
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(6, 12), nn.ReLU(), nn.Linear(12, 12), nn.ReLU(),
                          nn.Linear(12, 3)).double().eval()
    x = torch.randn(2, 6, dtype=torch.float64)
    traced = trace_model(model, x, self_check=False)._traced
    exact = exact_jacobian_norms(model, x, centred=True)
    assert switching_jacobian_bound(traced, x, 1e-9).jacobian == pytest.approx(exact, rel=1e-7)
    assert bool((switching_jacobian_bound(traced, x, 10.0).jacobian > 1.01 * exact).all())


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2 ** 31 - 1), classes=st.integers(2, 12),
       spread=st.sampled_from([0.1, 3.0, 30.0, 300.0]))
def test_softmax_curvature_from_margins_bounds_kappa(seed, classes, spread):
    """kappa(p) = min(1/2, max p, 1 - |p|^2) at random logits, against the bound from
    any margins at or below theirs."""
    generator = torch.Generator().manual_seed(seed)
    logits = spread * torch.randn(16, classes, generator=generator, dtype=torch.float64)
    label = torch.randint(classes, (16,), generator=generator)
    margins = logits.gather(1, label.unsqueeze(1)) - logits
    slack = torch.rand(margins.shape, generator=generator, dtype=torch.float64) * spread
    lower = (margins - slack).scatter(1, label.unsqueeze(1), math.inf)
    p = torch.softmax(logits, dim=1)
    kappa = torch.minimum(torch.minimum(torch.full((16,), 0.5, dtype=torch.float64),
                                        p.amax(1)), 1 - p.pow(2).sum(1))
    bound = softmax_curvature_from_margins(lower)
    assert bool((kappa <= bound).all()), (kappa, bound)
    exact = softmax_curvature_from_margins(margins.scatter(1, label.unsqueeze(1), math.inf))
    confident = p.gather(1, label.unsqueeze(1))[:, 0] > 1 - 1e-6
    assert bool((exact[confident] <= 3e-6).all())
