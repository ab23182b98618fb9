"""Each rule's global and local constants against the exact Jacobian norm of the op."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import theory
from numeric.graph import trace_model
from numeric.graph.local import _softmax_factor_norm
from tests.numeric.graph_models import ACTIVATIONS

#: the theory name and parameters of each activation module of ``ACTIVATIONS``
THEORY = {"relu": ("relu", {}), "leaky_relu": ("leaky_relu", {"negative_slope": 0.1}),
          "elu": ("elu", {"alpha": 1.0, "scale": 1.0, "input_scale": 1.0}),
          "tanh": ("tanh", {}), "sigmoid": ("sigmoid", {}),
          "softplus": ("softplus", {"beta": 1.0, "threshold": 20.0}), "gelu": ("gelu", {}),
          "silu": ("silu", {}), "hardswish": ("hardswish", {}), "mish": ("mish", {})}


pytestmark = pytest.mark.usefixtures("one_thread")


class Head(nn.Module):
    """``op`` followed by a fixed linear read-out, so that the op is a graph node."""

    def __init__(self, op: nn.Module, features: int):
        super().__init__()
        self.op = op
        self.readout = nn.Linear(features, 2)

    def forward(self, x):
        return self.readout(self.op(x).flatten(1))


def constants(op: nn.Module, x: torch.Tensor, module: str = "op"):
    """(global constant, local constants per row) of the module at ``module``: the product
    of the constants of the graph nodes it became (a chain), and the local constants of the
    one among them that has a local rule (None if none does)."""
    op = op.double().eval()
    with torch.no_grad():
        features = op(x[:1]).flatten(1).shape[1]
    model = Head(op, features).double().eval()
    traced = trace_model(model, x, centre_logits=False, fold_batchnorm=False,
                         self_check=False)
    G = traced.graph
    keys = [key for key, data in G.nodes(data=True) if data.get("module") == module]
    local, _, _ = traced._traced.local_constants(x)
    with_local = [key for key in keys if key in local]
    assert len(with_local) <= 1
    value = math.prod(G.nodes[key]["lipschitz"] for key in keys)
    return value, (local[with_local[0]] if with_local else None)


def exact_norms(op: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """||d op(x_b) / d x_b||_2 for every row, from the dense Jacobian."""
    op = op.double().eval()
    values = []
    for row in x:
        jacobian = torch.func.jacrev(lambda z: op(z.unsqueeze(0)).reshape(-1))(row)
        values.append(torch.linalg.matrix_norm(jacobian.reshape(-1, row.numel()), 2))
    return torch.stack(values).detach()


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activation_constants(name):
    x = 3 * torch.randn(4, 2, 3, 3, dtype=torch.float64,
                        generator=torch.Generator().manual_seed(0))
    x[0, 0, 0, 0] = 0.0                                   # a kink of relu-like ops
    global_value, local = constants(ACTIVATIONS[name](), x)
    exact = exact_norms(ACTIVATIONS[name](), x)
    assert bool((local >= exact).all())
    # the widening for rounding (1e-8 relative to the row's magnitude) is all the slack
    assert bool((local <= exact * (1 + 1e-6) + 1e-6).all())
    assert global_value >= float(local.max())
    theory_name, params = THEORY[name]
    assert global_value == pytest.approx(float(theory.activation_lipschitz(
        theory_name, **params)), rel=1e-7)


@pytest.mark.parametrize("kernel,stride,padding,dilation,ceil", [
    (2, 2, 0, 1, False), (3, 1, 1, 1, False), (3, 2, 1, 2, True), (2, 1, 0, 1, True)])
def test_maxpool_constants(kernel, stride, padding, dilation, ceil):
    x = torch.randn(3, 2, 6, 5, dtype=torch.float64,
                    generator=torch.Generator().manual_seed(kernel + stride))
    pool = nn.MaxPool2d(kernel, stride, padding, dilation, ceil_mode=ceil)
    global_value, local = constants(pool, x)
    exact = exact_norms(pool, x)
    assert bool((local >= exact * (1 - 1e-12)).all())
    assert torch.allclose(local, exact, rtol=1e-7)          # no ties: the exact selection
    assert global_value <= math.sqrt(theory.max_window_overlap(
        (kernel, kernel), (stride, stride), (dilation, dilation))) * (1 + 1e-7)
    tied = torch.zeros(1, 2, 6, 5, dtype=torch.float64)      # every entry ties
    assert float(constants(pool, tied)[1][0]) == pytest.approx(global_value, rel=1e-7)


@pytest.mark.parametrize("op", [
    nn.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
    nn.AdaptiveAvgPool2d((2, 3)), nn.AdaptiveAvgPool2d(1), nn.AdaptiveMaxPool2d((2, 2)),
    nn.Upsample(scale_factor=2), nn.ReflectionPad2d(1), nn.ZeroPad2d((1, 0, 2, 1)),
    nn.PixelShuffle(2), nn.Softmax(dim=-1), nn.BatchNorm2d(4)],
    ids=lambda op: type(op).__name__)
def test_linear_and_selection_ops(op):
    x = torch.randn(2, 4, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    if isinstance(op, nn.BatchNorm2d):
        op.running_var.uniform_(0.2, 4.0)
        op.weight.data.uniform_(-2, 2)
    global_value, local = constants(op, x)
    exact = exact_norms(op, x)
    assert global_value >= float(exact.max())
    if local is not None:
        assert bool((local >= exact).all())
    if not isinstance(op, (nn.AdaptiveMaxPool2d, nn.Softmax)):
        assert global_value == pytest.approx(float(exact.max()), rel=1e-6)


@pytest.mark.parametrize("stride,padding,output_padding,groups", [
    (1, 0, 0, 1), (2, 1, 1, 1), (2, 0, 0, 2), (3, 1, 2, 1)])
def test_conv_transpose(stride, padding, output_padding, groups):
    op = nn.ConvTranspose2d(4, 2, 3, stride, padding, output_padding, groups)
    x = torch.randn(1, 4, 4, 3, dtype=torch.float64)
    global_value, _ = constants(op, x)
    exact = exact_norms(op, x)
    assert global_value >= float(exact.max())
    assert global_value <= 2 * float(exact.max())


def test_layernorm_constants():
    x = torch.randn(3, 5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    x[:, 0] *= 0.01                                           # one low-variance token
    op = nn.LayerNorm(6, eps=1e-3)
    op.weight.data.uniform_(-2, 2)
    global_value, local = constants(op, x)
    exact = exact_norms(op, x)
    assert bool((local >= exact).all())
    assert global_value == pytest.approx(float(op.weight.detach().abs().max()) / math.sqrt(1e-3),
                                         rel=1e-7)


class SelfAttention(nn.Module):
    def __init__(self):
        super().__init__()
        self.op = nn.MultiheadAttention(6, 2, batch_first=True)

    def forward(self, x):
        return self.op(x, x, x, need_weights=False)[0]


@pytest.mark.filterwarnings("ignore:There is a performance drop")
def test_attention_local_constants():
    torch.manual_seed(5)
    x = torch.randn(3, 4, 6, dtype=torch.float64)
    op = SelfAttention()
    _, local = constants(op, x, module="op.op")
    exact = exact_norms(op, x)
    assert bool((local >= exact).all())
    assert bool((local <= 50 * exact).all())


def test_softmax_factor_norm_matches_the_square_root():
    generator = torch.Generator().manual_seed(6)
    A = torch.randn(5, 7, dtype=torch.float64, generator=generator)
    for p in (torch.softmax(torch.randn(5, dtype=torch.float64, generator=generator), 0),
              torch.tensor([1 - 4e-12, 1e-12, 1e-12, 1e-12, 1e-12], dtype=torch.float64),
              torch.full((5,), 0.2, dtype=torch.float64)):
        sigma = torch.diag(p) - torch.outer(p, p)
        w, v = torch.linalg.eigh(sigma)
        root = v @ torch.diag(w.clamp_min(0).sqrt()) @ v.T
        exact = float(torch.linalg.matrix_norm(root @ A, 2))
        value = _softmax_factor_norm(A, p)
        assert value >= exact
        assert value <= exact + 1e-5 * float(A.norm())
