"""Family builders and closed forms: closed_form(...).subs(n, k) == derive(builder(k))."""

import pytest
import sympy

import bounds
from bounds import FamilyError, closed_form, depth_symbol, derive, families

n = depth_symbol("n")
n1, n2 = depth_symbol("n_1"), depth_symbol("n_2")

CASES = [
    ("vgg", {}),
    ("vgg", {"classifier_layers": 0}),
    ("vgg", {"pool_after": (1,), "classifier_layers": 0}),
    ("resnet", {}),
    ("resnet", {"block": "bottleneck"}),
    ("resnet", {"projection": "all"}),
    ("resnet", {"block": "bottleneck", "projection": "stages", "stem": True, "head": True}),
    ("densenet", {}),
    ("densenet", {"bottleneck": True, "stem": True, "head": True}),
    ("transformer", {}),
    ("transformer", {"heads": 3}),
    ("transformer", {"mlp": False, "embedding": False, "final_norm": False, "head": False}),
    ("transformer", {"activation": "relu", "heads": 2}),
]
IDS = [f"{family}-{'-'.join(f'{k}={v}' for k, v in options.items()) or 'default'}"
       for family, options in CASES]


def equal(left, right):
    return left == right or sympy.simplify(left - right) == 0


@pytest.mark.parametrize("shared", [False, True], ids=["distinct", "shared"])
@pytest.mark.parametrize(("family", "options"), CASES, ids=IDS)
def test_closed_form_equals_derived_bound(family, options, shared):
    form = closed_form(family, n, shared=shared, **options)
    builder = getattr(families, family)
    for k in range(1, 7):
        derived = derive(builder(k, shared=shared, **options)).lipschitz
        assert equal(form.subs(n, k).doit(), derived), (family, options, shared, k)


@pytest.mark.parametrize("shared", [False, True], ids=["distinct", "shared"])
@pytest.mark.parametrize(("family", "options"), [
    ("resnet", {"projection": "stages"}), ("resnet", {"projection": "stages",
                                                      "block": "bottleneck"}),
    ("densenet", {}), ("densenet", {"transition": False, "bottleneck": True})],
    ids=["resnet-stages", "resnet-bottleneck-stages", "densenet", "densenet-no-transition"])
def test_closed_form_with_symbolic_stage_sizes(family, options, shared):
    form = closed_form(family, ("n_1", "n_2"), shared=shared, **options)
    builder = getattr(families, family)
    for k1, k2 in [(1, 1), (2, 3), (4, 1)]:
        derived = derive(builder((k1, k2), shared=shared, **options)).lipschitz
        assert equal(form.subs({n1: k1, n2: k2}).doit(), derived)


def test_closed_forms_are_the_documented_ones():
    h = sympy.Symbol("h", positive=True)
    hb, l, b = sympy.IndexedBase("h", positive=True), sympy.Symbol("l", integer=True,
                                                                    positive=True), \
        sympy.Symbol("b", integer=True, positive=True)
    assert closed_form("vgg") == sympy.Product(hb[l], (l, 1, n))
    assert closed_form("vgg", shared=True) == h**n
    assert closed_form("resnet") == sympy.Product(1 + hb[b, 1] * hb[b, 2], (b, 1, n))
    assert closed_form("resnet", shared=True) == (1 + h**2) ** n
    assert closed_form("resnet", projection="all") == sympy.Product(
        sympy.IndexedBase("p", positive=True)[b] + hb[b, 1] * hb[b, 2], (b, 1, n))
    assert closed_form("densenet") == sympy.Product(sympy.sqrt(1 + hb[l] ** 2), (l, 1, n))
    assert closed_form("densenet", shared=True) == (1 + h**2) ** (n / 2)


def test_presets_match_their_closed_forms():
    for name, (family, options) in bounds.PRESETS.items():
        options = dict(options)
        form = closed_form(family, options.pop("depth"), shared=True, **options)
        assert equal(form, derive(bounds.preset(name, shared=True)).lipschitz), name


def test_vgg16_and_vit_graphs():
    G = bounds.preset("vgg16")
    ops = [op for _, op in G.nodes(data="op")]
    assert ops.count("conv") == 13 and ops.count("linear") == 3 and ops.count("maxpool") == 5
    V = bounds.preset("vit_b_16")
    assert sum(op == "attention" for _, op in V.nodes(data="op")) == 12 * 12
    assert G.graph["name"] == "vgg16"


def test_transformer_block_matches_theory_pre_ln_constant():
    """One block's factor is theory's pre-LN attention constant 1 + ell*|W_o|*sqrt(sum a^2)."""
    from theory.transformer import layernorm_lipschitz, multihead_attention_lipschitz
    ell, wo, a1, a2 = sympy.symbols("ell w_o a_1 a_2", positive=True)
    block = 1 + multihead_attention_lipschitz([a1, a2], wo) * layernorm_lipschitz(ell, 1)
    G = families.transformer(1, heads=2, mlp=False, embedding=False, final_norm=False,
                             head=False)
    A, E, Hb = (sympy.IndexedBase(x, positive=True) for x in ("a", "ell", "h"))
    derived = derive(G).lipschitz.xreplace({A[1, 1]: a1, A[1, 2]: a2, E[1, 1]: ell,
                                            Hb[1, 1]: wo})
    assert equal(derived, block)


@pytest.mark.parametrize(("call", "match"), [
    (lambda: families.vgg(0), "vgg: expected depth to be an integer >= 1, got 0"),
    (lambda: families.vgg(2, classifier_layers=3), "classifier_layers <= depth"),
    (lambda: families.vgg(3, pool_after=(5,)), "pool_after to hold convolution indices"),
    (lambda: families.vgg(3, pool_after=(1, 1)), "distinct indices"),
    (lambda: families.resnet((2, 0)), "resnet: expected depth to be an integer >= 1"),
    (lambda: families.resnet(2, block="wide"), "block to be one of 'basic', 'bottleneck'"),
    (lambda: families.resnet(2, projection="some"), "projection to be one of"),
    (lambda: families.densenet(()), "non-empty tuple"),
    (lambda: families.densenet(2, stem="yes"), "stem to be True or False"),
    (lambda: families.transformer(2, heads=0), "heads to be an integer >= 1"),
    (lambda: families.transformer(2, activation="linear"), "activation to be one of"),
    (lambda: families.vgg(2, symbol="ell"), "symbol to be a name not used"),
    (lambda: bounds.preset("alexnet"), "unknown architecture 'alexnet'"),
    (lambda: closed_form("mlp"), "unknown family 'mlp'"),
    (lambda: closed_form("vgg", depth=-sympy.Symbol("k", positive=True)),
     "depth to be a positive integer"),
    (lambda: closed_form("vgg", depth="1n"), "depth to be a symbol name"),
    (lambda: closed_form("vgg", bottleneck=True), "unexpected keyword argument"),
], ids=lambda value: None if callable(value) else value[:30])
def test_invalid_options(call, match):
    with pytest.raises(FamilyError, match=match):
        call()


# --------------------------------------------------------------------------- VGG input size


@pytest.mark.parametrize(("input_size", "factor"), [
    (None, 7), (224, 1), ((224, 224), 1), (32, 7), (63, 7), (64, sympy.Rational(7, 2)),
    (448, sympy.Rational(1, 2)), ((32, 224), sympy.sqrt(7)),
], ids=["unknown", "224", "224x224", "32", "63", "64", "448", "32x224"])
def test_vgg16_preset_includes_the_adaptive_pool(input_size, factor):
    """torchvision's AdaptiveAvgPool2d((7, 7)) sees a (H/32)x(W/32) map; below 224 it
    upsamples (norm 7 on a 1x1 map); unknown input size: that worst case."""
    h = sympy.Symbol("h", positive=True)
    options = {} if input_size is None else {"input_size": input_size}
    derived = derive(bounds.preset("vgg16", shared=True, **options)).lipschitz
    assert equal(derived, factor * h**16)
    preset = dict(bounds.PRESETS["vgg16"][1])
    assert equal(closed_form("vgg", preset.pop("depth"), shared=True, **preset, **options),
                 derived)


@pytest.mark.parametrize("input_size", [None, 8, 20, (10, 40)])
@pytest.mark.parametrize("shared", [False, True], ids=["distinct", "shared"])
def test_vgg_closed_form_with_adaptive_pool_equals_derived(input_size, shared):
    options = {"adaptive_pool": (3, 3), "classifier_layers": 2, "pool_after": (1, 2)}
    if input_size is not None:
        options["input_size"] = input_size
    for k in range(4, 8):
        assert equal(closed_form("vgg", k, shared=shared, **options),
                     derive(families.vgg(k, shared=shared, **options)).lipschitz)


@pytest.mark.parametrize(("options", "match"), [
    ({"input_size": 224}, "input_size only matters with adaptive_pool"),
    ({"adaptive_pool": (7, 7), "input_size": 16}, "expected input_size of at least 32 pixels "
                                                   "per side \\(5 2x2 poolings\\)"),
    ({"adaptive_pool": (7, 7), "input_size": (224, 224, 3)}, "input_size with 2 entries"),
    ({"adaptive_pool": (7, 0)}, "adaptive_pool to be an integer >= 1"),
], ids=["no-pool", "too-small", "length", "zero-output"])
def test_vgg_input_size_refusals(options, match):
    with pytest.raises(FamilyError, match=match):
        families.vgg(16, classifier_layers=3, pool_after=(2, 4, 7, 10, 13), **options)
