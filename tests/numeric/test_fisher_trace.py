"""fisher_trace: Hutchinson and Hutch++ within bounds derived from their variances.

The light tier (default) checks single seeded estimates against a 5-sigma band built from
the dense F; the heavy tier (``-m montecarlo``) repeats with many seeds and checks the
mean (unbiasedness) and the empirical variance against the stated formula.
"""

import math

import pytest
import torch

from numeric.fisher import fisher_trace
from tests.numeric.fisher_models import build
from tests.reference import dense_fisher

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")


def _moments(model, x):
    """tr F and the Rademacher single-probe variance 2 (||F||_F^2 - sum F_ii^2), per row."""
    f = dense_fisher(model, x).detach()
    diagonal = torch.diagonal(f, dim1=1, dim2=2)
    return diagonal.sum(-1), 2 * (f.square().sum((1, 2)) - diagonal.square().sum(-1)), f


@pytest.mark.parametrize("name", ["mlp", "cnn-batchnorm", "vit-mha"])
def test_hutchinson_within_five_sigma(name):
    model, x = build(name)
    trace, variance, _ = _moments(model, x)
    probes = 100
    got = fisher_trace(model, x, "hutchinson", num_probes=probes,
                       generator=torch.Generator().manual_seed(0))
    assert bool(((got - trace).abs() <= 5 * (variance / probes).sqrt()).all())


@pytest.mark.parametrize("name", ["mlp", "residual", "sdpa"])
def test_hutch_plus_plus_within_five_sigma_of_its_bound(name):
    model, x = build(name)
    trace, _, f = _moments(model, x)
    probes = 9  # sketch of 3 < K - 1 = 4: a genuinely random estimate
    got = fisher_trace(model, x, "hutch++", num_probes=probes,
                       generator=torch.Generator().manual_seed(0))
    bound = (2 / (probes - 2 * (probes // 3)) * f.square().sum((1, 2))).sqrt()
    assert bool(((got - trace).abs() <= 5 * bound).all())


def test_hutch_plus_plus_is_exact_once_the_sketch_spans_the_range():
    model, x = build("dense-concat")
    trace, _, _ = _moments(model, x)
    got = fisher_trace(model, x, "hutch++", num_probes=12,  # sketch of 4 = K - 1
                       generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(got, trace, rtol=1e-9, atol=0)


def test_probes_are_seeded():
    model, x = build("mlp")
    run = lambda: fisher_trace(model, x, "hutchinson", num_probes=5,  # noqa: E731
                               generator=torch.Generator().manual_seed(3))
    assert torch.equal(run(), run())


@pytest.mark.montecarlo
@pytest.mark.parametrize("method", ["hutchinson", "hutch++"])
def test_unbiased_with_the_stated_variance(method):
    model, x = build("mlp")
    trace, variance, f = _moments(model, x)
    probes, repeats = 6, 400
    estimates = torch.stack([
        fisher_trace(model, x, method, num_probes=probes,
                     generator=torch.Generator().manual_seed(seed)) for seed in range(repeats)])
    mean, spread = estimates.mean(0), estimates.var(0)
    if method == "hutchinson":
        assert bool(((mean - trace).abs() <= 4 * (variance / probes / repeats).sqrt()).all())
        # sample variance of n draws: relative sd about sqrt(2 / n) (+ kurtosis), use 5x
        ratio = spread / (variance / probes)
        assert bool((ratio - 1).abs().max() <= 5 * math.sqrt(2 / repeats) + 0.2)
    else:
        assert bool(((mean - trace).abs() <= 4 * (spread / repeats).sqrt() + 1e-12).all())
        # stated bound 2 ||F||_F^2 / (m - 2s), with slack for the sample variance
        bound = 2 * f.square().sum((1, 2)) / (probes - 2 * (probes // 3))
        assert bool((spread <= 1.5 * bound).all())


def test_hutch_plus_plus_with_a_sketch_wider_than_the_input_is_exact():
    """A sketch of more than d columns spans the whole space: the estimate is exact."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3)).double()
    x = torch.randn(2, 4, dtype=torch.float64)
    gen = torch.Generator().manual_seed(1)
    estimate = fisher_trace(model, x, method="hutch++", num_probes=30, generator=gen)
    exact = fisher_trace(model, x, method="exact")
    torch.testing.assert_close(estimate, exact, rtol=1e-10, atol=1e-12)
