"""fisher_eigenvalues and the exact trace against dense float64 references."""

import pytest
import torch

from numeric.fisher import fisher_eigenvalues, fisher_trace
from numeric.fisher import exact as exact_module
from tests.numeric.fisher_models import MODELS, NUM_CLASSES, build
from tests.reference import dense_fisher, exact_fisher_spectrum

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_eigenvalues_match_dense_spectrum(name):
    model, x = build(name)
    reference = exact_fisher_spectrum(model, x).detach()
    got = fisher_eigenvalues(model, x)
    assert got.shape == (x.shape[0], NUM_CLASSES)
    assert bool((got[:, :-1] >= got[:, 1:]).all())
    scale = reference[:, :1]
    torch.testing.assert_close(got / scale, reference[:, :NUM_CLASSES] / scale,
                               rtol=0, atol=1e-10)
    assert bool((got[:, -1] == 0).all())
    assert float(reference[:, NUM_CLASSES - 1:].abs().max() / scale.min()) < 1e-10


@pytest.mark.parametrize("name", ["mlp", "vit-mha"])
def test_exact_trace_matches_dense(name):
    model, x = build(name)
    expected = torch.diagonal(dense_fisher(model, x).detach(), dim1=1, dim2=2).sum(-1)
    torch.testing.assert_close(fisher_trace(model, x), expected, rtol=1e-10, atol=0)


def test_row_chunks_give_the_same_values(monkeypatch):
    model, x = build("residual", batch=5)
    whole = fisher_eigenvalues(model, x)
    monkeypatch.setattr(exact_module, "MAX_JACOBIAN_ENTRIES", 2 * NUM_CLASSES * 12)
    torch.testing.assert_close(fisher_eigenvalues(model, x), whole, rtol=1e-12, atol=1e-15)


def test_two_classes_single_eigenvalue_is_p1p2_gradient_gap():
    # K = 2: F = p1 p2 (g1 - g2)(g1 - g2)^T, one nonzero eigenvalue p1 p2 |W1 - W2|^2
    model = torch.nn.Linear(3, 2).double()
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    p = torch.softmax(model(x), -1).detach()
    gap = (model.weight[0] - model.weight[1]).detach().square().sum()
    values = fisher_eigenvalues(model, x)
    torch.testing.assert_close(values[:, 0], p[:, 0] * p[:, 1] * gap)
