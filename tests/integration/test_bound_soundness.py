"""Soundness of the certified Fisher bounds: never below the exact lambda_max(F).

A bound below the true value is a bug, never a tolerance question: the comparisons here
are exact (``bound >= exact``) except for the float64 rounding of the *reference*, which
is allowed a relative 1e-9 plus an absolute 1e-300.

- Random DAG networks (tests/numeric/graph_models.py: every conv geometry, pooling,
  BatchNorm statistics, ten activations): 60 cases in the default tier (each is a fresh
  export), 2500 more behind ``@pytest.mark.slow``; global and local Fisher bounds and the
  Lipschitz bounds of the output and of the centred output, at the rows and at random
  points, and every rule against the exact Jacobian of its operation.
- Random small Transformers (pre- and post-LN blocks, attention, LayerNorm with random
  affine parameters, class token or mean pooling): 15 cases by default, 1000 slow; the
  local bound always, the global one where it exists (pre-LN), and the documented error
  where it does not.
- torchvision models at small input sizes, with the exact value from K VJPs.

The random models mixing ordinary torch idioms are in ``test_certified_sweep.py``.
"""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings

import numeric
from numeric.errors import UnsupportedModuleError
from numeric.graph import trace_model
from tests.numeric.certify import Measured
from tests.numeric.graph_models import exact_top_eigenvalue_vjp, networks, \
    randomize_batchnorm, token_networks
from tests.numeric.node_check import rule_violations
from tests.reference import exact_top_eigenvalue

REFERENCE_SLACK = 1e-9


pytestmark = pytest.mark.usefixtures("one_thread")


def _check(model, x, exact):
    traced = trace_model(model, x, self_check=False)
    global_bound, local_bound = traced.fisher_bound(), traced.local_fisher_bound(x)
    limit = exact * (1 - REFERENCE_SLACK) - 1e-300
    spec = getattr(model, "spec", type(model).__name__)
    assert global_bound >= float(limit.max()), (spec, global_bound, exact)
    assert local_bound.shape == exact.shape
    assert bool((local_bound >= limit).all()), (spec, local_bound, exact)
    assert bool((local_bound <= global_bound).all())


def _soundness_case(case):
    model, x = case
    traced = trace_model(model, x, self_check=False)
    points = 3 * torch.randn((2, *x.shape[1:]), generator=torch.Generator().manual_seed(0),
                             dtype=torch.float64)
    problems = Measured(traced, model, x, points).violations()
    problems += rule_violations(model, x, traced._traced.exported)
    assert not problems, (getattr(model, "spec", ""), problems)


@settings(max_examples=60)
@given(networks())
def test_random_networks_bounds_never_below_exact(case):
    _soundness_case(case)


@pytest.mark.slow
@settings(max_examples=2500)
@given(networks(max_blocks=6))
def test_random_networks_bounds_never_below_exact_heavy(case):
    _soundness_case(case)


def _token_case(case):
    model, x = case
    exact = exact_top_eigenvalue(copy.deepcopy(model), x).detach()
    limit = exact * (1 - REFERENCE_SLACK) - 1e-300
    traced = trace_model(model, x, self_check=False)
    global_bound, local_bound = traced.fisher_bound(), traced.local_fisher_bound(x)
    assert bool((local_bound >= limit).all()), (model.spec, local_bound, exact)
    if model.spec[-1][1]:                       # pre-LN everywhere: a global bound exists
        assert global_bound >= float(limit.max()), (model.spec, global_bound, exact)
        assert numeric.fisher_bound(model, x, self_check=False) == global_bound
    else:
        assert global_bound == float("inf")
        with pytest.raises(UnsupportedModuleError, match="local=True"):
            numeric.fisher_bound(model, x, self_check=False)


@pytest.mark.filterwarnings("ignore:There is a performance drop")
@settings(max_examples=15)
@given(token_networks())
def test_random_transformers_bounds_never_below_exact(case):
    _token_case(case)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:There is a performance drop")
@settings(max_examples=1000)
@given(token_networks(max_blocks=3))
def test_random_transformers_bounds_never_below_exact_heavy(case):
    _token_case(case)


# --------------------------------------------------------------------------- torchvision


def _randomize(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Random BatchNorm statistics and a non-zero classification head (torchvision ViT
    initialises its head to zero, which would make F = 0)."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            randomize_batchnorm(module, generator, spread=0.3)
            with torch.no_grad():
                module.weight.abs_()
        if isinstance(module, torch.nn.Linear) and not module.weight.any():
            with torch.no_grad():
                module.weight.normal_(0, 0.3, generator=generator)
    return model.double().eval()


def _torchvision(name: str) -> torch.nn.Module:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    if name == "vit_small":
        return torchvision.models.VisionTransformer(
            image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
            mlp_dim=64, num_classes=10)
    if name == "vit_b_16":
        return torchvision.models.vit_b_16(weights=None, image_size=32, num_classes=10)
    return getattr(torchvision.models, name)(weights=None, num_classes=10)


@pytest.mark.parametrize("name", [
    "vit_small",
    "resnet18",
    pytest.param("vgg16", marks=pytest.mark.slow),
    "densenet121",
    pytest.param("vit_b_16", marks=pytest.mark.slow),
])
def test_torchvision_bounds_never_below_exact(name):
    model = _randomize(_torchvision(name), seed=1)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(2),
                    dtype=torch.float64)
    exact = exact_top_eigenvalue_vjp(copy.deepcopy(model), x).detach()
    _check(model, x, exact)
