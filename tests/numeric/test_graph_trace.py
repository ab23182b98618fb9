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
from numeric.graph import (NodeSpec, fisher_bounds, linear_operator_norm, lookup_rule,
                           module_graph, register_rule)
from tests.numeric.graph_models import exact_top_eigenvalue_vjp
from tests.reference import exact_top_eigenvalue


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _ops(G) -> dict:
    return {node: data["op"] for node, data in G.nodes(data=True)}


def test_public_names_are_exported():
    for name in ("module_graph", "fisher_bound", "register_rule", "linear_operator_norm",
                 "conv_operator_norm_bound"):
        assert callable(getattr(numeric, name))


def test_chain_graph_schema():
    model = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(8, 3))
    G = module_graph(model, torch.zeros(1, 1, 4, 4))
    bounds.validate(G)
    ops = _ops(G)
    assert sorted(ops.values()) == sorted(["input", "conv", "relu", "maxpool", "flatten",
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


def test_train_mode_is_restored():
    model = nn.Sequential(nn.Linear(3, 3), nn.Dropout(0.5), nn.Linear(3, 2))
    model.train()
    model[2].eval()
    numeric.fisher_bound(model, torch.zeros(2, 3))
    numeric.fisher_bound(model, torch.zeros(2, 3), local=True)
    assert model.training and model[0].training and not model[2].training


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
    """A leaf with a custom rule: |x| - like (1-Lipschitz), untraceable forward."""

    def forward(self, x):
        return x if x.sum() > 0 else x.abs()


def test_gating_is_refused():
    with pytest.raises(UnsupportedModuleError, match="product of two input-dependent"):
        module_graph(Gated(), torch.zeros(1, 3))


def test_untraceable_module_is_named():
    with pytest.raises(TraceError, match=r"'inner\.1' \(Branchy\).*register_rule"):
        module_graph(Wrapper(), torch.zeros(1, 3))


def test_unknown_leaf_module_says_how_to_register(monkeypatch):
    from numeric.graph import trace
    monkeypatch.setattr(trace, "registered_module_types", lambda: (Unknown,))
    model = nn.Sequential(Unknown(), nn.Linear(3, 2))
    with pytest.raises(UnsupportedModuleError,
                       match=r"no Lipschitz rule.*numeric\.register_rule\(Unknown, rule\)"):
        module_graph(model, torch.zeros(1, 3))


def test_register_rule_refuses_silent_replacement_and_makes_a_leaf():
    register_rule(Custom, lambda ctx: NodeSpec("function", lipschitz=1.0,
                                               label="|x| or x: 1-Lipschitz"),
                  overwrite=True)
    with pytest.raises(InputError, match="already has a rule"):
        register_rule(Custom, lambda ctx: NodeSpec("function", lipschitz=2.0))
    model = nn.Sequential(nn.Linear(3, 3), Custom(), nn.Linear(3, 2)).double()
    G = module_graph(model, torch.zeros(1, 3, dtype=torch.float64))
    assert "function" in _ops(G).values()
    x = torch.randn(4, 3, dtype=torch.float64)
    g, local = fisher_bounds(model, x)
    assert bool((local >= exact_top_eigenvalue(copy.deepcopy(model), x).detach()).all())
    assert lookup_rule(Custom()) is not None


def test_register_rule_rejects_a_non_callable():
    with pytest.raises(InputError, match="callable"):
        register_rule(Unknown, 3)


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
    fc = G.nodes["fc"]["lipschitz"]
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
    global_bound, local = fisher_bounds(model, x)
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


def test_log_softmax_inside_is_refused():
    model = nn.Sequential(nn.Linear(4, 3), nn.LogSoftmax(dim=1), nn.Linear(3, 2))
    with pytest.raises(UnsupportedModuleError, match="last operation"):
        module_graph(model, torch.zeros(1, 4))


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
    global_bound, local = fisher_bounds(model, x)
    exact = exact_top_eigenvalue(copy.deepcopy(model), x).detach()
    assert global_bound >= float(exact.max()) and bool((local >= exact).all())
    assert bool((local < global_bound).all())


def test_vit_constants_are_constant_nodes():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=16, patch_size=8, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=8,
        num_classes=3)
    G = module_graph(model, torch.zeros(1, 3, 16, 16))
    bounds.validate(G)
    constants = [n for n, op in _ops(G).items() if op == "constant"]
    assert len(constants) == 2       # class token and positional embedding
    assert {G.nodes[n]["op"] for n in G.successors(constants[0])} <= {"concat", "add"}


def test_fimbound_small_models_are_sound():
    models = pytest.importorskip("numeric.models")
    torch.manual_seed(0)
    x = torch.randn(2, 1, 8, 8, dtype=torch.float64)
    for name in models.MODEL_NAMES:
        model = models.build(name).double().eval()
        G = module_graph(model, x)
        bounds.validate(G)
        global_bound, local = fisher_bounds(model, x)
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
    assert nx.utils.graphs_equal(G, H) or bounds.propagate(H) == pytest.approx(
        bounds.propagate(G))


def test_in_place_activations_give_the_same_local_bounds():
    """An in-place op overwrites its input; the local rule must see the pre-activation."""
    bounds_by_mode = []
    for inplace in (False, True):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 6), nn.ELU(inplace=inplace), nn.Linear(6, 6),
                              nn.ReLU(inplace=inplace), nn.Linear(6, 3)).double()
        x = 3 * torch.randn(3, 4, dtype=torch.float64)
        bounds_by_mode.append(fisher_bounds(model, x)[1])
    assert torch.allclose(*bounds_by_mode, rtol=1e-12, atol=0)
