"""module_graph: the traced schema, the registry, folding/centring and the error paths."""

from __future__ import annotations

import copy
import math

import networkx as nx
import pytest
import torch
from torch import nn

import bounds
import numeric
from numeric.errors import InputError, TraceError, UnsupportedModuleError
from numeric.graph import (NodeSpec, linear_operator_norm, lookup_rule, module_graph,
                           register_rule, trace_model)
from numeric.graph.selfcheck import exact_jacobian_norms
from tests.numeric.graph_models import exact_top_eigenvalue_vjp
from tests.reference import exact_top_eigenvalue


pytestmark = pytest.mark.usefixtures("one_thread")


def _ops(G) -> dict:
    return {node: data["op"] for node, data in G.nodes(data=True)}


def _both(model, x):
    """(global, local) Fisher bounds from one trace."""
    traced = trace_model(model, x, self_check=False)
    return traced.fisher_bound(), traced.local_fisher_bound(x)


def test_public_names_are_exported():
    for name in ("trace_model", "module_graph", "fisher_bound", "lipschitz_bound",
                 "register_rule", "linear_operator_norm", "conv_operator_norm_bound"):
        assert callable(getattr(numeric, name))


def test_chain_graph_schema():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(8, 3))
    G = module_graph(model, torch.zeros(1, 1, 4, 4))
    bounds.validate(G)
    ops = _ops(G)
    assert sorted(ops.values()) == sorted(["input", "conv", "relu", "maxpool", "reshape",
                                           "linear", "output"])
    assert all(G.nodes[n]["certified"] for n in G if "certified" in G.nodes[n])
    conv = next(n for n, op in ops.items() if op == "conv")
    assert G.nodes[conv]["module"] == "0"
    assert G.nodes[conv]["params"]["input_size"] == [4, 4]
    assert bounds.propagate(G) == pytest.approx(float(bounds.derive(G).evaluate().lipschitz),
                                                rel=1e-12)


def test_batchnorm_folding_and_plain_product():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                          nn.Linear(12, 2)).double().eval()
    model[1].running_var.uniform_(0.1, 3.0)
    model[1].weight.data.uniform_(-2, 2)
    x = torch.zeros(1, 1, 4, 4, dtype=torch.float64)
    folded = module_graph(model, x)
    plain = module_graph(model, x, fold_batchnorm=False, centre_logits=False)
    assert "batchnorm" not in _ops(folded).values()
    assert "batchnorm" in _ops(plain).values()
    scale = (model[1].weight / torch.sqrt(model[1].running_var + model[1].eps)).detach()
    bn_node = next(n for n, op in _ops(plain).items() if op == "batchnorm")
    assert plain.nodes[bn_node]["lipschitz"] == pytest.approx(float(scale.abs().max()))
    assert bounds.propagate(folded) <= bounds.propagate(plain)


def test_centred_last_layer():
    model = nn.Linear(4, 3).double()
    G = module_graph(model, torch.zeros(1, 4, dtype=torch.float64))
    W = model.weight.detach()
    centred = linear_operator_norm(W - W.mean(0, keepdim=True))
    (node,) = [n for n, op in _ops(G).items() if op == "linear"]
    assert G.nodes[node]["lipschitz"] == pytest.approx(centred, rel=1e-12)
    assert G.graph["centred_logits"]


def test_modes_are_taken_as_they_are():
    """Nothing switches the model to eval mode behind the user's back: dropout in training
    mode is refused, and the modes are untouched."""
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5), nn.Linear(3, 2))
    model.train()
    model[2].eval()
    with pytest.raises(UnsupportedModuleError, match="draws random numbers"):
        numeric.fisher_bound(model, torch.zeros(2, 3))
    assert model.training and model[0].training and not model[2].training
    model.eval()
    assert numeric.fisher_bound(model, torch.zeros(2, 3)) > 0


class Gated(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 3), nn.Linear(3, 2)

    def forward(self, x):
        return self.b(self.a(x) * x)


class Branchy(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x
        return -x


class Wrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(3, 3), Branchy())
        self.head = nn.Linear(3, 2)

    def forward(self, x):
        return self.head(self.inner(x))


class Unknown(nn.Module):
    def forward(self, x):
        return x


class Custom(nn.Module):
    """A leaf with a custom rule: x or |x| row by row (Jacobian norm at most 1), chosen by
    Python control flow on the values, which torch.export cannot trace."""

    def forward(self, x):
        return torch.stack([row if row.sum() > 0 else row.abs() for row in x])


def test_gating_is_refused():
    with pytest.raises(UnsupportedModuleError, match="product of two input-dependent"):
        module_graph(Gated(), torch.zeros(1, 3))


def test_untraceable_module_is_named():
    with pytest.raises(TraceError, match="Python value at test_graph_trace.py"):
        module_graph(Wrapper(), torch.zeros(1, 3))


def test_an_operator_without_a_rule_is_named():
    class Cumulative(nn.Module):
        def forward(self, x):
            return torch.cumsum(x, dim=1)
    with pytest.raises(UnsupportedModuleError, match="aten.cumsum.default .* no Lipschitz "
                                                     "rule"):
        module_graph(Cumulative(), torch.zeros(1, 3))


def test_register_rule_refuses_silent_replacement_and_keeps_a_module_whole():
    def rule(ctx):
        return NodeSpec("function", lipschitz=1.0, kind="leaf", batch_dim=0,
                        outputs={0: "traced"}, label="|x| or x: 1-Lipschitz")
    register_rule(Custom, rule, overwrite=True)
    with pytest.raises(InputError, match="already has a rule"):
        register_rule(Custom, rule)
    assert lookup_rule(Custom()) is not None
    model = nn.Sequential(nn.Linear(3, 3), Custom(), nn.Linear(3, 2)).double()
    G = module_graph(model, torch.zeros(1, 3, dtype=torch.float64))
    assert "function" in _ops(G).values()
    x = torch.randn(4, 3, dtype=torch.float64)
    g, local = _both(model, x)
    exact = exact_top_eigenvalue(copy.deepcopy(model), x).detach()
    assert g >= float(exact.max()) and bool((local >= exact).all())


def test_register_rule_for_an_operator():
    aten = torch.ops.aten
    previous = lookup_rule(aten.cumsum.default)
    register_rule(aten.cumsum.default, lambda ctx: NodeSpec(
        "function", lipschitz=math.sqrt(3) * 2, mixes=(1,), label="||cumsum_3|| <= 2 sqrt 3"))
    try:
        class Cumulative(nn.Module):
            def forward(self, x):
                return torch.cumsum(x, dim=1)
        G = module_graph(Cumulative(), torch.zeros(1, 3))
        assert "function" in _ops(G).values()
    finally:
        from numeric.graph import registry
        registry._RULES.pop(aten.cumsum.default)
        assert previous is None


def test_register_rule_rejects_a_non_callable_and_a_bad_target():
    with pytest.raises(InputError, match="callable"):
        register_rule(Unknown, 3)
    with pytest.raises(InputError, match="nn.Module subclass or an ATen operator"):
        register_rule(torch.cumsum, lambda ctx: None)


class Duplicate(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(2, 2)

    def forward(self, x):
        h = self.fc(x)
        return h + h + torch.cat([h, h], dim=1)[:, :2]


def test_repeated_operands_are_not_merged_by_the_digraph():
    model = Duplicate().double()
    G = module_graph(model, torch.zeros(1, 2, dtype=torch.float64), centre_logits=False)
    bounds.validate(G)
    (fc,) = [data["lipschitz"] for _, data in G.nodes(data=True) if data["op"] == "linear"]
    # h + h + select(cat[h, h]) : (1 + 1) L + sqrt(2) L
    assert bounds.propagate(G) == pytest.approx((2 + math.sqrt(2)) * fc, rel=1e-9)


class Movement(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(9, 3)

    def forward(self, x):
        y = x.repeat(1, 2)                      # every entry twice: sqrt(2)
        y = y.view(-1, 3, 2).transpose(1, 2).flatten(1)
        a, b = y.chunk(2, dim=1)
        return self.fc(torch.cat([a, b, x.flip(1)], dim=1))


def test_data_movement_multiplicities_are_exact():
    model = Movement().double()
    x = torch.randn(3, 3, dtype=torch.float64)
    G = module_graph(model, x, centre_logits=False)
    values = {G.nodes[n]["params"].get("copies") for n in G}
    assert 2 in values
    global_bound, local = _both(model, x)
    exact = exact_top_eigenvalue(copy.deepcopy(model), x).detach()
    assert bool((local >= exact).all()) and global_bound >= float(exact.max())


def test_final_log_softmax_does_not_change_the_bound():
    torch.manual_seed(1)
    logits = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    model = nn.Sequential(logits, nn.LogSoftmax(dim=1))
    x = torch.randn(3, 4, dtype=torch.float64)
    assert numeric.fisher_bound(model, x) == numeric.fisher_bound(logits, x)
    assert torch.allclose(numeric.fisher_bound(model, x, local=True),
                          numeric.fisher_bound(logits, x, local=True), rtol=1e-12, atol=0)


def test_log_softmax_inside_has_its_own_constant():
    """Inside the network log_softmax has the Jacobian I - 1p^T, of norm <= 1 + sqrt(K)."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(4, 3), nn.LogSoftmax(dim=1), nn.Linear(3, 2)).double()
    G = module_graph(model, torch.zeros(1, 4, dtype=torch.float64))
    (value,) = [data["lipschitz"] for _, data in G.nodes(data=True)
                if data["params"].get("call") == "log_softmax"]
    assert value == pytest.approx(1 + math.sqrt(3), rel=1e-7)
    x = 5 * torch.randn(4, 4, dtype=torch.float64)
    global_bound, local = _both(model, x)
    exact = exact_top_eigenvalue(copy.deepcopy(model), x).detach()
    assert global_bound >= float(exact.max()) and bool((local >= exact).all())


class PlainAttention(nn.Module):
    def __init__(self, pre_norm: bool):
        super().__init__()
        self.norm = nn.LayerNorm(4) if pre_norm else nn.Identity()
        self.attn = nn.MultiheadAttention(4, 2, batch_first=True)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        h = self.norm(x)
        h = x + self.attn(h, h, h, need_weights=False)[0]
        return self.head(h.mean(dim=1))


@pytest.mark.filterwarnings("ignore:There is a performance drop")
def test_attention_needs_a_layernorm_for_a_global_bound():
    torch.manual_seed(0)
    model = PlainAttention(pre_norm=False).double()
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    with pytest.raises(UnsupportedModuleError, match="local=True"):
        numeric.fisher_bound(model, x)
    local = numeric.fisher_bound(model, x, local=True)
    assert bool((local >= exact_top_eigenvalue(copy.deepcopy(model), x).detach()).all())


@pytest.mark.filterwarnings("ignore:There is a performance drop")
def test_pre_ln_attention_global_and_local():
    torch.manual_seed(0)
    model = PlainAttention(pre_norm=True).double()
    x = torch.randn(3, 5, 4, dtype=torch.float64)
    G = module_graph(model, x)
    assert "attention" in _ops(G).values() and "layernorm" in _ops(G).values()
    global_bound, local = _both(model, x)
    exact = exact_top_eigenvalue(copy.deepcopy(model), x).detach()
    assert global_bound >= float(exact.max()) and bool((local >= exact).all())
    assert bool((local < global_bound).all())


def test_torchvision_vit_class_token_and_positions_are_constants():
    """The class token and positional embedding do not depend on the input: the class
    token's entries have no row, so the local rules leave them out, and the pre-LN blocks
    have a global bound."""
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=16, patch_size=8, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=8,
        num_classes=3).double().eval()
    x = torch.randn(2, 3, 16, 16, dtype=torch.float64)
    traced = trace_model(model, x, self_check=False)
    bounds.validate(traced.graph)
    assert "attention" in _ops(traced.graph).values()
    exact = exact_top_eigenvalue_vjp(copy.deepcopy(model), x).detach()
    assert traced.fisher_bound() >= float(exact.max())
    assert bool((traced.local_fisher_bound(x) >= exact).all())


def test_fimbound_small_models_are_sound():
    models = pytest.importorskip("numeric.models")
    torch.manual_seed(0)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    for name in models.MODEL_NAMES:
        model = models.build(name).double().eval()
        G = module_graph(model, x)
        bounds.validate(G)
        global_bound, local = _both(model, x)
        exact = exact_top_eigenvalue_vjp(copy.deepcopy(model), x).detach()
        assert global_bound >= float(exact.max()), name
        assert bool((local >= exact).all()), name


@pytest.mark.parametrize("bad,match", [
    ("model", "expected a torch.nn.Module"),
    ("shape", "batch dimension"),
    ("nan", "finite"),
    ("output", "logits of shape"),
])
def test_input_errors(bad, match):
    model = nn.Linear(3, 2)
    x = torch.zeros(1, 3)
    if bad == "model":
        model = "resnet"
    elif bad == "shape":
        x = torch.zeros(3)
    elif bad == "nan":
        x = torch.full((1, 3), math.nan)
    elif bad == "output":
        model = nn.Sequential(nn.Linear(3, 2), nn.Flatten(0))
    with pytest.raises(InputError, match=match):
        module_graph(model, x)


def test_graph_round_trips_through_json(tmp_path):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.GELU(), nn.Flatten(), nn.Linear(8, 2))
    G = module_graph(model, torch.zeros(1, 1, 4, 4))
    path = tmp_path / "g.json"
    bounds.write_graph(G, path)
    H = bounds.read_graph(path)
    assert nx.utils.graphs_equal(G, H)
    assert list(G.edges) == list(H.edges)


def test_in_place_activations_give_the_same_local_bounds():
    """An in-place op overwrites its input; the local rule must see the pre-activation."""
    bounds_by_mode = []
    for inplace in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 6), nn.ELU(inplace=inplace), nn.Linear(6, 6),
                              nn.ReLU(inplace=inplace), nn.Linear(6, 3)).double()
        x = 3 * torch.randn(3, 4, dtype=torch.float64)
        bounds_by_mode.append(_both(model, x)[1])
    assert torch.allclose(*bounds_by_mode, rtol=1e-12, atol=0)


def test_certified_radius_of_a_linear_model_is_the_exact_distance_up_to_the_grid():
    """Linear logits: the margin gradients are constant, so the region certificate is the
    exact distance min_j m_j / ||w_y - w_j|| to the decision boundary, up to one grid step
    (2 ** (8 / steps)), and never above it; the global certificate m / (sqrt 2 L) is below."""
    generator = torch.Generator().manual_seed(3)
    model = nn.Linear(6, 4).double()
    with torch.no_grad():
        model.weight.copy_(torch.randn(4, 6, generator=generator, dtype=torch.float64))
    x = torch.randn(16, 6, generator=generator, dtype=torch.float64)
    traced = numeric.trace_model(model, x)
    logits = model(x).detach()
    y = logits.argmax(dim=1)
    W = model.weight.detach()
    margins = logits.gather(1, y.unsqueeze(1)) - logits
    gaps = (W[y].unsqueeze(1) - W.unsqueeze(0)).norm(dim=2)
    exact = (margins / gaps).masked_fill(torch.arange(4) == y.unsqueeze(1), math.inf).amin(1)
    steps = 16
    radius = traced.certified_radius(x, steps=steps)
    assert bool((radius <= exact).all())
    assert bool((radius >= exact / 2 ** (8 / steps) * (1 - 1e-6)).all()), radius / exact
    global_radius = (logits.topk(2, dim=1).values @ torch.tensor([1.0, -1.0], dtype=torch.float64)
                     ) / (math.sqrt(2) * traced.lipschitz_bound("centred_output"))
    assert bool((radius >= global_radius * (1 - 1e-9)).all())   # the rounding allowance


def test_region_passes_of_one_batch_share_the_centres_tangents():
    """The local bound, the region bound and the certified radius of one batch reuse the
    exact tangents at its rows; each number equals that of a fresh trace, and another
    batch gets its own."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(12, 5), nn.Tanh(), nn.Linear(5, 4)
                          ).double().eval()
    x = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    other = torch.randn(3, 1, 4, 4, dtype=torch.float64)
    eps = torch.tensor([0.01, 0.05, 0.2], dtype=torch.float64)

    def fresh(call):
        return call(trace_model(model, x, self_check=False))

    shared = trace_model(model, x, self_check=False)
    local = shared.local_fisher_bound(x)
    assert shared._tangent_memo                                    # filled by the first
    region = shared.region_bound(x, eps)
    radius = shared.certified_radius(x, linear_steps=0)
    assert torch.equal(local, fresh(lambda t: t.local_fisher_bound(x)))
    assert torch.equal(region.fisher, fresh(lambda t: t.region_bound(x, eps)).fisher)
    assert torch.equal(radius, fresh(lambda t: t.certified_radius(x, linear_steps=0)))
    shifted = shared.region_bound(other, eps)
    assert torch.equal(shifted.fisher, trace_model(model, x, self_check=False)
                       .region_bound(other, eps).fisher)


def test_retraced_equals_a_fresh_trace_with_those_options():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(),
                          nn.AvgPool2d(2), nn.Flatten(), nn.Linear(12, 4)).double().eval()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_var.uniform_(0.1, 2.0)
    x = torch.randn(2, 1, 4, 4, dtype=torch.float64)
    options = {"fold_batchnorm": False, "centre_logits": False, "merge_pooling": False}
    traced = trace_model(model, x, self_check=False)
    plain = traced.retraced(**options)
    fresh = trace_model(model, x, self_check=False, **options)
    assert plain.fisher_bound() == fresh.fisher_bound() > traced.fisher_bound()
    assert torch.equal(plain.local_fisher_bound(x), fresh.local_fisher_bound(x))
    assert traced.retraced().fisher_bound() == traced.fisher_bound()    # untouched
    with pytest.raises(InputError, match="allow_unbounded"):
        traced.retraced(allow_unbounded=True)


@pytest.mark.parametrize("first", ["conv_then_batchnorm", "batchnorm_then_flatten"])
@pytest.mark.parametrize("gain", [0.05, 3.0])
def test_region_bounds_hold_on_folded_batchnorm_chains(first, gain):
    """A BatchNorm folded into the conv before it (contracted: the conv's graph value is
    the BatchNorm's output) or into the linear layer after a flatten (the values between
    are the graph's times its scale): the exact tangents of the actual values are
    converted, never read as the graph's (found by the switching sweep: both bounds
    were below the exact Jacobian by the BatchNorm's scale)."""
    torch.manual_seed(5)
    channels = 1 if first == "conv_then_batchnorm" else 2
    norm = nn.BatchNorm2d(channels).double().eval()
    with torch.no_grad():
        norm.weight.copy_(torch.tensor([gain, -0.5 * gain][:channels], dtype=torch.float64))
        norm.running_var.copy_(torch.tensor([0.75, 1.3][:channels], dtype=torch.float64))
    if first == "conv_then_batchnorm":
        layers = [nn.Conv2d(1, 1, 1, stride=2), norm, nn.ReLU(), nn.Flatten(),
                  nn.Linear(4, 2)]
    else:
        layers = [norm, nn.Flatten(), nn.Linear(32, 2)]
    model = nn.Sequential(*layers).double().eval()
    x = torch.randn(3, channels, 4, 4, dtype=torch.float64)
    traced = trace_model(model, x, self_check=False)
    exact = exact_jacobian_norms(model, x, centred=True)
    for eps in (0.0, 0.1, 3.0):
        bound = traced.region_bound(x, eps, linear=False).jacobian
        assert bool((exact <= bound).all()), (eps, bound, exact)
    radius = traced.certified_radius(x, linear_steps=0)
    with torch.no_grad():
        labels = model(x).argmax(1)
    direction = torch.randn(x.shape, dtype=torch.float64)
    direction = direction / direction.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
    with torch.no_grad():
        moved = model(x + 0.999 * radius.reshape(-1, 1, 1, 1) * direction).argmax(1)
    assert bool((moved == labels).all())


def test_a_data_parallel_wrapper_is_traced_as_its_module():
    torch.manual_seed(0)
    inner = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)).double().eval()
    x = torch.randn(3, 6, dtype=torch.float64)
    wrapped = trace_model(nn.DataParallel(inner), x).fisher_bound()
    assert wrapped == trace_model(inner, x).fisher_bound()


def _kink_model(name: str) -> nn.Module:
    """Linear(8, 12) without bias -> an operation with a kink at 0 -> Linear(12, 4)."""
    class Kinked(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 12, bias=False)
            self.c = nn.Linear(8, 12, bias=False)
            self.b = nn.Linear(12, 4)

        def forward(self, x):
            h = self.a(x)
            if name == "abs":
                return self.b(h.abs())
            if name == "clamp_min":
                return self.b(h.clamp_min(0.0))
            if name == "maximum_of_two":
                return self.b(torch.maximum(h, self.c(x)))
            return self.b(torch.cat([h, -h], dim=1).reshape(-1, 12, 2).amax(dim=2))
    return Kinked()


@pytest.mark.parametrize("name", ["abs", "clamp_min", "maximum_of_two", "amax"])
def test_local_bounds_cover_both_sides_of_kinks(name):
    # every pre-activation exactly on its kink (zero input, no bias): the local bound must
    # cover the one-sided Jacobians a hair away (Clarke), not only autograd's choice at 0
    torch.manual_seed(5)
    model = _kink_model(name).double().eval()
    x = torch.zeros(1, 8, dtype=torch.float64)
    bound = float(trace_model(model, x).local_fisher_bound(x)[0])
    generator = torch.Generator().manual_seed(0)
    near = torch.zeros(30, 8, dtype=torch.float64)
    near += 1e-10 * torch.randn(near.shape, generator=generator, dtype=torch.float64)
    assert bound >= float(exact_top_eigenvalue(model, near).max()) * (1 - 1e-9)


_SHARED_USES = {
    "cat_with_negation": lambda h: torch.cat([h, -h], 1),
    "difference_with_negation": lambda h: torch.cat([h - (-h), h], 1),
    "maximum_with_negation": lambda h: torch.cat([torch.maximum(h, -h), h], 1),
}


@pytest.mark.parametrize("name", sorted(_SHARED_USES))
def test_one_value_used_twice_is_counted_twice(name):
    # a sign flip adds no graph node, so cat([h, -h]) once had one edge from h: counted
    # once, its bound fell below the exact norm by sqrt(2) when the next layer adds both
    # copies (rank-one weights aligned so the product attains the product of norms)
    generator = torch.Generator().manual_seed(0)
    u, v, w = (torch.randn(n, generator=generator, dtype=torch.float64) for n in (12, 8, 4))

    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(8, 12)
            self.b = nn.Linear(24, 4)

        def forward(self, x):
            return self.b(_SHARED_USES[name](self.a(x)))

    model = Shared().double().eval()
    with torch.no_grad():
        model.a.weight.copy_(torch.outer(u, v))
        sign = -1.0 if name == "cat_with_negation" else 1.0
        model.b.weight.copy_(torch.cat([torch.outer(w, u), sign * torch.outer(w, u)], 1))
    x = torch.randn(3, 8, generator=generator, dtype=torch.float64)
    traced = trace_model(model, x, self_check=False)
    assert traced.lipschitz_bound("output") >= float(
        exact_jacobian_norms(model, x, centred=False).max()) * (1 - 1e-12)
    centred = exact_jacobian_norms(model, x, centred=True)
    assert bool((traced.region_bound(x, 0.0).jacobian >= centred * (1 - 1e-12)).all())


def test_float32_circular_padding_runs_in_the_float64_passes():
    # the export makes circular padding's buffer with dtype=float32 written in; the float64
    # passes met float64 weights with it ("Input type ... and weight type ... should be
    # the same")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1, padding_mode="circular"),
                          nn.Flatten(), nn.Linear(128, 3)).eval()
    x = torch.rand(2, 1, 8, 8)
    traced = trace_model(model, x)
    assert bool((traced.region_bound(x, 0.1).jacobian > 0).all())
    assert bool((traced.certified_radius(x) > 0).all())
