"""The certified Lipschitz constant of the logits (used for certified radii) is never
below the exact Jacobian norm, from a float64 Jacobian, on random networks and inputs."""

import torch
from hypothesis import given, settings

from numeric.graph import graph_lipschitz_bound, lipschitz_bound, module_graph
from tests.numeric.graph_models import networks
from tests.reference import dense_jacobian


@settings(max_examples=60)
@given(networks())
def test_uncentred_lipschitz_bound_is_above_the_exact_jacobian_norm(case):
    model, x = case
    bound = lipschitz_bound(model, x[:1], centre_logits=False)
    norms = torch.linalg.matrix_norm(dense_jacobian(model, x), ord=2)
    assert (norms <= bound).all(), (norms.max().item(), bound)


@settings(max_examples=60)
@given(networks())
def test_centred_bound_covers_the_centred_jacobian(case):
    model, x = case
    G = module_graph(model, x[:1])
    jacobian = dense_jacobian(model, x)
    classes = jacobian.shape[1]
    centring = torch.eye(classes, dtype=torch.float64) - 1.0 / classes
    norms = torch.linalg.matrix_norm(centring @ jacobian, ord=2)
    assert (norms <= graph_lipschitz_bound(G)).all()
