"""The family registry: one Family per module, found by name, alias or model name; a toy
family from the test folder goes through derive, closed_form, preset and rank."""

import pytest
import sympy

import bounds
from bounds import FamilyError, closed_form, depth_symbol, derive, rank
from bounds.families import Family, family_of, get_family, register_family, unregister_family
from tests.bounds import toy_family


@pytest.fixture
def toy():
    register_family(toy_family.FAMILY)
    yield toy_family.FAMILY
    unregister_family("mlp")


def test_the_four_families_are_registered_in_order():
    assert bounds.FAMILIES == ("vgg", "resnet", "densenet", "transformer")
    assert bounds.families.FAMILIES == bounds.FAMILIES
    for name in bounds.FAMILIES:
        family = get_family(name)
        assert isinstance(family, Family) and family.name == name
        assert callable(family.build) and callable(family.closed_form)
    assert {name: spec[0] for name, spec in bounds.PRESETS.items()}["vit_b_16"] == "transformer"


@pytest.mark.parametrize(("model", "family"), [
    ("torchvision:resnet18", "resnet"), ("resnet50", "resnet"), ("wide_resnet50_2", "resnet"),
    ("resnext50_32x4d", "resnet"), ("torchvision:vgg16_bn", "vgg"), ("fimbound:vgg", "vgg"),
    ("VGG11", "vgg"), ("densenet121", "densenet"), ("fimbound:densenet", "densenet"),
    ("vit_b_16", "transformer"), ("vit", "transformer"), ("fimbound:vit", "transformer"),
    ("torchvision:alexnet", None), ("net.py:build", None), ("resnet18x", None),
])
def test_family_of_matches_model_names(model, family):
    found = family_of(model)
    assert (found.name if found else None) == family


def test_aliases_and_unknown_names():
    assert get_family("vit") is get_family("transformer")
    assert closed_form("vit", 2, shared=True) == closed_form("transformer", 2, shared=True)
    with pytest.raises(FamilyError, match=r"get_family: unknown family 'lenet'; known: vgg, "
                                          r"resnet, densenet, transformer \(vit\)\."):
        get_family("lenet")
    with pytest.raises(FamilyError, match="family_of: expected a model name, got 3"):
        family_of(3)


def test_toy_family_through_every_entry_point(toy):
    assert "mlp" in bounds.FAMILIES and "mlp3" in bounds.PRESETS
    assert get_family("perceptron") is toy and family_of("tiny_mlp2") is toy
    n = depth_symbol("n")
    form = closed_form("mlp", n)
    for k in range(1, 5):
        assert form.subs(n, k).doit() == derive(bounds.families.get_family("mlp").build(
            k)).lipschitz
    h = sympy.Symbol("h", positive=True)
    assert derive(bounds.preset("mlp3", shared=True)).lipschitz == h**3
    ranking = rank(["mlp", "resnet"], depths={"mlp": "n", "resnet": "n"})
    assert ranking.condition("mlp", "resnet") == sympy.true
    assert rank(["mlp3", "vgg"]).bounds["mlp3"] == h**3
    with pytest.raises(FamilyError, match=r"closed_form\('mlp'\): expected one depth"):
        closed_form("mlp", (1, 2))
    with pytest.raises(FamilyError, match=r"closed_form\('mlp'\): got an unexpected keyword "
                                          r"argument 'heads'"):
        closed_form("mlp", heads=2)
    unregister_family("mlp")
    assert "mlp" not in bounds.FAMILIES and "mlp3" not in bounds.PRESETS
    register_family(toy)  # the fixture unregisters it


def test_registration_refuses_silent_replacement_and_clashes(toy):
    with pytest.raises(FamilyError, match="a family named 'mlp' is registered; pass "
                                          "overwrite=True"):
        register_family(toy)
    replaced = Family("mlp", toy.build, toy.closed_form, presets={"mlp5": {"depth": 5}})
    assert register_family(replaced, overwrite=True) is replaced
    assert "mlp5" in bounds.PRESETS and "mlp3" not in bounds.PRESETS
    clash = Family("other", toy.build, toy.closed_form, presets={"vgg16": {"depth": 1}})
    with pytest.raises(FamilyError, match="'vgg16' of family 'other' already names family "
                                          "'vgg'"):
        register_family(clash)
    with pytest.raises(FamilyError, match="expected a Family, got dict"):
        register_family({"name": "x"})


@pytest.mark.parametrize(("fields", "match"), [
    ({"name": "two words"}, "expected name to be an identifier"),
    ({"build": None}, "expected build and closed_form to be callables"),
    ({"presets": {"p": {"heads": 2}}}, "presets to map names to builder options with a "
                                       "depth"),
    ({"patterns": "mlp"}, "expected patterns to be a tuple of strings"),
    ({"patterns": ("mlp(",)}, "does not compile"),
], ids=["name", "build", "presets", "patterns-string", "pattern-regex"])
def test_family_fields_are_checked(fields, match):
    arguments = {"name": "mlp", "build": toy_family.mlp, "closed_form": toy_family.closed_form,
                 **fields}
    with pytest.raises(FamilyError, match=match):
        Family(**arguments)
