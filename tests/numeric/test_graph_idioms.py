"""Ordinary torch idioms the tracer must follow exactly (or refuse), class by class.

Every accepted model is checked against exact float64 Jacobians (``tests/numeric/
certify.py``): no certified bound below the exact value, at the example rows and at random
points. Shapes and parameters are drawn from a seeded generator per case; out-of-domain
parameters are tested in ``test_graph_refusals.py``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from numeric.graph import trace_model
from numeric.graph.selfcheck import exact_jacobian_norms
from tests.numeric.certify import assert_sound

SEEDS = [0, 1, 2]


def _rand(generator, *shape, scale=1.0):
    return scale * torch.randn(shape, generator=generator, dtype=torch.float64)


# =========================================================================== 1. broadcasting


class BroadcastMul(nn.Module):
    """x (B, d) copied k times by broadcasting against w (k, d): the norm of the map is
    max_j sqrt(sum_k w_kj^2), not max |w|."""

    def __init__(self, k, d, generator):
        super().__init__()
        self.w = nn.Parameter(_rand(generator, k, d))

    def forward(self, x):
        return (x.unsqueeze(1) * self.w).flatten(1)


class BroadcastAdd(nn.Module):
    """x + w with w of shape (k, 1, d): each entry copied k times, norm sqrt(k)."""

    def __init__(self, k, d, generator):
        super().__init__()
        self.w = nn.Parameter(_rand(generator, k, 1, d))

    def forward(self, x):
        return (x.unsqueeze(1).unsqueeze(1) + self.w).flatten(1)


class BranchBroadcast(nn.Module):
    """A branch (B, 1, d) added to another (B, k, d): the first is copied k times."""

    def __init__(self, k, d, generator):
        super().__init__()
        self.a = nn.Linear(d, d)
        self.b = nn.Linear(d, k * d)
        self.k = k

    def forward(self, x):
        wide = self.b(x).reshape(x.shape[0], self.k, -1)
        return (wide + self.a(x).unsqueeze(1)).flatten(1)


class BatchedMatmul(nn.Module):
    """x (B, 1, 1, d) @ W (k, d, m): one input against k matrices, the stacked operator."""

    def __init__(self, k, d, generator):
        super().__init__()
        self.w = nn.Parameter(_rand(generator, k, d, 3))

    def forward(self, x):
        return torch.matmul(x.reshape(x.shape[0], 1, 1, -1), self.w).flatten(1)


class Einsum(nn.Module):
    def __init__(self, k, d, generator):
        super().__init__()
        self.w = nn.Parameter(_rand(generator, k, d, 3))

    def forward(self, x):
        return torch.einsum("bi,kij->bkj", x, self.w).flatten(1)


class ExpandCopies(nn.Module):
    """``x[:, :1].expand_as(x)``: the first entry copied d times."""

    def __init__(self, k, d, generator):
        super().__init__()
        self.scale = float(k)

    def forward(self, x):
        return x[:, :1].expand_as(x) * self.scale + x


LINEAR_BROADCASTS = [BroadcastMul, BroadcastAdd, BatchedMatmul, Einsum, ExpandCopies]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("factory", LINEAR_BROADCASTS + [BranchBroadcast],
                         ids=lambda f: getattr(f, "__name__", str(f)))
def test_broadcasting_is_counted(factory, seed):
    generator = torch.Generator().manual_seed(seed)
    k = 2 + seed
    d = 3 + seed
    model = factory(k, d, generator).double().eval()
    assert_sound(model, _rand(generator, 2, d), points=2)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("factory", LINEAR_BROADCASTS, ids=lambda f: f.__name__)
def test_broadcast_of_a_linear_map_is_exact(factory, seed):
    """For a linear model the Lipschitz bound equals the exact norm: the central broadcast
    count is exact, not merely sound."""
    generator = torch.Generator().manual_seed(seed)
    model = factory(2 + seed, 3 + seed, generator).double().eval()
    x = _rand(generator, 1, 3 + seed)
    bound = trace_model(model, x, self_check=False).lipschitz_bound("output")
    exact = float(exact_jacobian_norms(model, x, centred=False)[0])
    if factory is ExpandCopies:   # (1 + k) on the first entry: two operands summed
        assert exact <= bound <= (1 + 1e-6) * (math.sqrt(3 + seed) * (2 + seed) + 1)
    elif factory in (BatchedMatmul, Einsum):
        # the copies and the block-diagonal product are bounded separately:
        # sqrt(k) max_i ||W_i||, at most sqrt(k) times the stacked operator's norm
        largest = max(float(torch.linalg.matrix_norm(w, ord=2)) for w in model.w.detach())
        assert exact <= bound <= (1 + 1e-6) * math.sqrt(2 + seed) * largest
    else:
        assert exact <= bound <= exact * (1 + 1e-6)


# =========================================================================== 2. in-place


class InplaceAdd(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.a, self.b = nn.Linear(d, d), nn.Linear(d, 3)

    def forward(self, x):
        out = self.a(x)
        out.add_(5 * out)          # the graph must see out * 6
        return self.b(torch.relu_(out))


class InplaceSlice(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.a, self.b = nn.Linear(d, d), nn.Linear(d, 3)

    def forward(self, x):
        out = self.a(x).clone()
        out[:, :2] = 10 * x[:, :2]     # overwrite part of out with a larger map
        return self.b(out)


class InplaceAlias(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.a, self.b = nn.Linear(d, d), nn.Linear(d, 3)

    def forward(self, x):
        out = self.a(x)
        view = out[:, 1:]
        view += 20 * x[:, 1:]          # writes through the alias into out
        return self.b(out)


class InplaceOnInputCopy(nn.Module):
    def forward(self, x):
        y = x.clone()
        y.mul_(7)
        y[:, 0] += y[:, 1]
        return y[:, :3]


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("factory", [InplaceAdd, InplaceSlice, InplaceAlias,
                                     lambda d: InplaceOnInputCopy()],
                         ids=["add_", "slice_assign", "view_iadd", "mul_then_index_iadd"])
def test_in_place_mutations_are_seen(factory, seed):
    generator = torch.Generator().manual_seed(seed)
    d = 4 + seed
    torch.manual_seed(seed)
    model = factory(d).double().eval()
    measured = assert_sound(model, _rand(generator, 3, d), points=2)
    assert measured.lipschitz >= measured.exact_norms.max()


# =========================================================================== 3. spelling


class Reductions(nn.Module):
    def __init__(self, spelling):
        super().__init__()
        self.spelling = spelling

    def forward(self, x):
        y = x.reshape(x.shape[0], 2, -1)
        if self.spelling == "axis":
            total = torch.sum(y, axis=-1)
        elif self.spelling == "dim_keyword":
            total = torch.sum(y, dim=2)
        elif self.spelling == "positional":
            total = torch.sum(y, 2)
        elif self.spelling == "method_keepdim":
            total = y.sum(-1, keepdim=True).squeeze(-1)
        else:
            total = torch.mean(y, dim=(-1,)) * y.shape[-1]
        return F.softmax(total, dim=-1) * 4 + total


@pytest.mark.parametrize("spelling", ["axis", "dim_keyword", "positional", "method_keepdim",
                                      "mean_tuple"])
def test_argument_spellings_give_the_same_bound(spelling):
    generator = torch.Generator().manual_seed(0)
    x = _rand(generator, 2, 6)
    reference = assert_sound(Reductions("axis"), x).lipschitz
    assert assert_sound(Reductions(spelling), x).lipschitz == pytest.approx(reference,
                                                                          rel=1e-9)


# =========================================================================== 4. subclasses


class WeightStandardizedConv(nn.Conv2d):
    def forward(self, x):
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True)
                                                         + 1e-5) * 3
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


class ScaledLinear(nn.Linear):
    def forward(self, x):
        return super().forward(x) * 11


class Wrapper(nn.Module):
    def __init__(self, inner, head):
        super().__init__()
        self.inner, self.head = inner, head

    def forward(self, x):
        return self.head(self.inner(x).flatten(1))


def _hooked(d):
    layer = nn.Linear(d, 3)
    layer.register_forward_pre_hook(lambda module, args: (args[0] * 4,))
    layer.register_forward_hook(lambda module, args, out: out * 5)
    return layer


@pytest.mark.parametrize("case", ["weight_standardised_conv", "scaled_linear", "hooks"])
def test_subclasses_and_hooks_are_traced_through(case):
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    if case == "weight_standardised_conv":
        model = Wrapper(WeightStandardizedConv(1, 2, 3, padding=1), nn.Linear(2 * 16, 3))
        x = _rand(generator, 2, 1, 4, 4)
    elif case == "scaled_linear":
        model = Wrapper(ScaledLinear(5, 4), nn.Identity())
        x = _rand(generator, 2, 5)
    else:
        model = _hooked(5)
        x = _rand(generator, 2, 5)
    measured = assert_sound(model.eval(), x)
    # the exact norm would exceed a bound that used the parent's rule or ignored the hooks
    assert measured.lipschitz >= measured.exact_norms.max()


# =========================================================================== 5. scalars


class ParameterScalar(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(3.5))

    def forward(self, x):
        return x[:, :3] * self.scale.item()


def test_a_python_number_from_a_parameter_is_a_constant():
    measured = assert_sound(ParameterScalar(), torch.ones(2, 4))
    assert measured.lipschitz == pytest.approx(3.5, rel=1e-6)


# =========================================================================== 6-8, 12


class StochasticDepth(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.a, self.b = nn.Linear(d, d), nn.Linear(d, 3)

    def forward(self, x):
        from torchvision.ops import stochastic_depth
        return self.b(x + stochastic_depth(self.a(x), 0.5, "row", training=self.training))


class Tokens(nn.Module):
    """LayerNorm -> (a scale, a constant shift, a transpose) -> self-attention."""

    def __init__(self, between: str, batch_first=True, mask=False, unused_weights=True):
        super().__init__()
        self.norm = nn.LayerNorm(4)
        self.attn = nn.MultiheadAttention(4, 2, batch_first=batch_first)
        self.head = nn.Linear(12, 3)
        self.between = between
        self.shift = nn.Parameter(torch.randn(4))
        if mask:
            self.register_buffer("mask", torch.triu(torch.full((3, 3), -1e3), 1))
        else:
            self.mask = None

    def forward(self, x):
        t = self.norm(x.reshape(x.shape[0], 3, 4))
        if self.between == "scale":
            t = t * 30
        elif self.between == "shift":
            t = t + self.shift
        if not self.attn.batch_first:
            t = t.transpose(0, 1)
        y, _ = self.attn(t, t, t, attn_mask=self.mask)
        if not self.attn.batch_first:
            y = y.transpose(0, 1)
        return self.head(y.flatten(1))


@pytest.mark.parametrize("between", ["nothing", "scale", "shift"])
@pytest.mark.parametrize("batch_first", [True, False])
def test_layernorm_radius_follows_the_ops_to_attention(between, batch_first):
    torch.manual_seed(1)
    model = Tokens(between, batch_first=batch_first).eval()
    measured = assert_sound(model, torch.randn(2, 12), points=2, scale=3.0)
    assert math.isfinite(measured.global_fisher)


def test_fixed_attention_mask_and_unused_weights_are_accepted():
    torch.manual_seed(2)
    measured = assert_sound(Tokens("nothing", mask=True).eval(), torch.randn(2, 12))
    assert math.isfinite(measured.global_fisher)


def test_stochastic_depth_in_eval_mode_is_the_identity():
    torch.manual_seed(0)
    assert_sound(StochasticDepth(5).eval(), torch.randn(2, 5))


def test_maxpool_indices_may_be_computed_and_left_unused():
    class Pool(nn.Module):
        def forward(self, x):
            values, _ = F.max_pool2d(x, 2, return_indices=True)
            return values.flatten(1)
    assert_sound(Pool(), torch.randn(2, 1, 4, 4))


# =========================================================================== 9. names


class LogSoftmaxHead(nn.Module):
    def __init__(self, final):
        super().__init__()
        self.linear = nn.Linear(4, 5)
        self.final = final

    def forward(self, x):
        return self.final(self.linear(x) * 6, dim=-1)


@pytest.mark.parametrize("final", [F.log_softmax, F.softmax], ids=["log_softmax", "softmax"])
def test_a_final_softmax_is_part_of_the_output(final):
    torch.manual_seed(0)
    measured = assert_sound(LogSoftmaxHead(final), torch.randn(3, 4), points=3)
    # "output" bounds the model's own output, final op included
    assert measured.lipschitz >= measured.exact_norms.max()


def test_lipschitz_quantity_is_required():
    from numeric import InputError
    from numeric.graph import lipschitz_bound
    model = nn.Linear(3, 2).double()
    with pytest.raises(TypeError, match="quantity"):
        lipschitz_bound(model, torch.zeros(1, 3, dtype=torch.float64))
    traced = trace_model(model, torch.zeros(1, 3, dtype=torch.float64), self_check=False)
    with pytest.raises(InputError, match="expected quantity"):
        traced.lipschitz_bound("logits")


# =========================================================================== 10. kinks


class KinkNet(nn.Module):
    def __init__(self, pool):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.pool = pool
        self.head = nn.Linear(2 * 4 if pool else 2 * 16, 3, bias=False)

    def forward(self, x):
        h = F.relu(self.conv(x))
        if self.pool:
            h = F.max_pool2d(h, 2)
        return self.head(h.flatten(1))


@pytest.mark.parametrize("pool", [False, True], ids=["relu_kinks", "maxpool_ties"])
@pytest.mark.parametrize("seed", SEEDS)
def test_local_bound_covers_every_one_sided_derivative(pool, seed):
    """At x = 0 (zero biases) every ReLU sits on its kink and every max-pool window is
    tied; points a tiny step away realise the one-sided derivatives, and the local bound
    at 0 must cover all of them (the Clarke generalized Jacobian)."""
    torch.manual_seed(seed)
    model = KinkNet(pool).double().eval()
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    traced = trace_model(model, x, self_check=False)
    local = float(traced.local_fisher_bound(x)[0])
    generator = torch.Generator().manual_seed(seed)
    steps = 1e-9 * torch.randn((16, 1, 4, 4), generator=generator, dtype=torch.float64)
    from numeric.graph.selfcheck import exact_fisher_top
    nearby = exact_fisher_top(model, steps)
    assert bool((nearby <= local).all()), (local, nearby.max())
