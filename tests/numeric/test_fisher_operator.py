"""fisher_vector_product and the Jacobian machinery against dense float64 references."""

import pytest
import torch
from torch import nn

from numeric.fisher import fisher_vector_product
from numeric.fisher.operator import (apply_factor, apply_factor_transpose,
                                     apply_softmax_covariance, softmax_complement_basis)
from tests.numeric.fisher_models import MODELS, build
from tests.reference import dense_fisher, dense_jacobian

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")


@pytest.mark.parametrize("name", sorted(MODELS))
def test_fisher_vector_product_matches_dense(name):
    model, x = build(name)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=x.dtype)
    expected = (dense_fisher(model, x).detach() @ v.flatten(1).unsqueeze(-1)).squeeze(-1)
    got = fisher_vector_product(model, x, v).flatten(1)
    torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-14)


def test_factor_identities():
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(3 * torch.randn(4, 6, generator=g, dtype=torch.float64), dim=-1)
    eye = torch.eye(6, dtype=torch.float64).expand(4, 6, 6)
    a = torch.stack([apply_factor(p, eye[:, :, j]) for j in range(6)], dim=-1)
    sigma = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
    torch.testing.assert_close(a @ a.transpose(1, 2), sigma)
    u = torch.randn(4, 6, generator=g, dtype=torch.float64)
    torch.testing.assert_close(apply_factor_transpose(p, u),
                               (a.transpose(1, 2) @ u.unsqueeze(-1)).squeeze(-1))
    torch.testing.assert_close(apply_softmax_covariance(p, u),
                               (sigma @ u.unsqueeze(-1)).squeeze(-1))


def test_complement_basis_is_orthonormal_and_orthogonal_to_sqrt_p():
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(4 * torch.randn(5, 7, generator=g, dtype=torch.float64), dim=-1)
    s = p.sqrt()
    basis = softmax_complement_basis(p) / s.unsqueeze(1)            # (B, K-1, K)
    gram = basis @ basis.transpose(1, 2)
    torch.testing.assert_close(gram, torch.eye(6, dtype=torch.float64).expand(5, 6, 6))
    torch.testing.assert_close((basis * s.unsqueeze(1)).sum(-1), torch.zeros(5, 6),
                               atol=1e-15, rtol=0, check_dtype=False)


def test_model_mode_and_parameters_are_restored():
    model, x = build("cnn-batchnorm")
    model.train()
    model.features[1].eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fisher_vector_product(model, x.float(), torch.ones_like(x.float()), dtype=torch.float64)
    assert model.training and not model.features[1].training and model.head.training
    for key, value in model.state_dict().items():
        assert value.dtype == before[key].dtype and torch.equal(value, before[key])


def test_float32_model_in_float64():
    model, x = build("mlp")
    expected = (dense_fisher(model, x).detach() @ torch.ones(3, 12, 1, dtype=x.dtype))
    model32 = model.float()
    got = fisher_vector_product(model32, x.float(), torch.ones(3, 12), dtype=torch.float64)
    assert got.dtype == torch.float64 and next(model32.parameters()).dtype == torch.float32
    torch.testing.assert_close(got, expected.squeeze(-1), rtol=1e-5, atol=1e-8)


class _OnceDifferentiableTanh(torch.autograd.Function):
    """tanh without double backward, but with a forward-mode rule."""

    @staticmethod
    def forward(ctx, x):
        y = torch.tanh(x)
        ctx.save_for_backward(y)
        ctx.save_for_forward(y)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        (y,) = ctx.saved_tensors
        return grad * (1 - y * y)

    @staticmethod
    def jvp(ctx, tangent):
        (y,) = ctx.saved_tensors
        return tangent * (1 - y * y)


class _NoDoubleBackward(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 3)

    def forward(self, x):
        return self.b(_OnceDifferentiableTanh.apply(self.a(x)))


def test_forward_mode_fallback_when_double_backward_is_missing():
    torch.manual_seed(0)
    model = _NoDoubleBackward().double().eval()
    x = torch.randn(2, 4, dtype=torch.float64)
    v = torch.randn(2, 4, dtype=torch.float64)
    reference = nn.Sequential(model.a, nn.Tanh(), model.b)
    expected = (dense_fisher(reference, x).detach() @ v.unsqueeze(-1)).squeeze(-1)
    torch.testing.assert_close(fisher_vector_product(model, x, v), expected)


def test_dense_jacobian_reference_agrees_with_linear_model():
    model = nn.Linear(3, 4).double()
    x = torch.zeros(2, 3, dtype=torch.float64)
    torch.testing.assert_close(dense_jacobian(model, x).detach(),
                               model.weight.detach().expand(2, 4, 3))
