"""The theory ranking of `check` reads the family registry of bounds.families: a family
registered from the test folder is ranked with no change to numeric.check."""

import json
import math

import pytest
import sympy

from bounds.families import get_family, register_family, unregister_family
from numeric.check.results import ModelInfo
from numeric.check.theory import closed_form_for, describe_family, theory_scores
from numeric.models import MODEL_FAMILIES, build
from tests.bounds import toy_family


@pytest.fixture
def toy():
    register_family(toy_family.FAMILY)
    yield toy_family.FAMILY
    unregister_family(toy_family.FAMILY.name)


class _Declared:
    fimbound_family, fimbound_depth = "perceptron", 3  # an alias of the toy family


def test_a_declared_alias_resolves_to_its_family(toy):
    assert describe_family("net.py:build", _Declared()) == ("mlp", 3, None)


def test_a_model_named_like_a_preset_gets_the_preset(toy):
    assert describe_family("models.py:mlp3") == ("mlp", None, "mlp3")
    info = ModelInfo(name="m", spec="models.py:mlp3", num_classes=3, family="mlp",
                     preset="mlp3")
    h = sympy.Symbol("h", positive=True)
    assert sympy.simplify(closed_form_for(info) - h ** 3) == 0


def test_the_toy_family_is_ranked_at_one_shared_constant(toy):
    infos = [ModelInfo(name=f"d{d}", spec="x.py:f", num_classes=3, family="mlp",
                       family_depth=d, layer_constant=c) for d, c in ((2, 2.0), (3, 8.0))]
    scores, note = theory_scores(infos)
    h = math.sqrt(2.0 * 8.0)  # the geometric mean of the models' layer constants
    assert scores == pytest.approx({"d2": 0.5 * h ** 4, "d3": 0.5 * h ** 6})
    assert "h = 4" in note


def test_a_model_without_a_closed_form_leaves_the_ranking_out(toy):
    infos = [ModelInfo(name="a", spec="x.py:f", num_classes=3, family="mlp", family_depth=2,
                       layer_constant=1.5),
             ModelInfo(name="b", spec="x.py:g", num_classes=3, layer_constant=1.5)]
    scores, note = theory_scores(infos)
    assert scores == {} and "no family closed form for b" in note


@pytest.mark.parametrize("name", sorted(MODEL_FAMILIES))
def test_every_toolkit_model_declares_its_family_and_depth(name):
    family, depth, preset = describe_family(f"fimbound:{name}", build(name))
    assert family == MODEL_FAMILIES[name] == get_family(name).name  # "vit" is an alias
    assert depth is not None and preset is None
    info = ModelInfo(name=name, spec=f"fimbound:{name}", num_classes=10, family=family,
                     family_depth=depth)
    assert closed_form_for(info).free_symbols


def test_a_toy_family_model_goes_through_a_whole_check(toy, tmp_path, capsys):
    from numeric.cli import main
    path = tmp_path / "mlps.py"
    path.write_text(
        "from torch import nn\n"
        "def mlp(depth):\n"
        "    layers = [nn.Flatten(), nn.Linear(64, 16)]\n"
        "    for _ in range(depth - 2):\n"
        "        layers += [nn.Tanh(), nn.Linear(16, 16)]\n"
        "    model = nn.Sequential(*layers, nn.Tanh(), nn.Linear(16, 10))\n"
        "    model.fimbound_family, model.fimbound_depth = 'perceptron', depth\n"
        "    return model\n"
        "def two():\n    return mlp(2)\n"
        "def three():\n    return mlp(3)\n")
    status = main(["check", "--model", f"{path}:two", "--model", f"{path}:three",
                   "--samples", "3", "--chunk-size", "3", "--queries", "10",
                   "--attack-steps", "5", "--attack-restarts", "1", "--pgd-steps", "2",
                   "--pgd-restarts", "1", "--pgd-l2", "0.5", "--pgd-linf", "0.05",
                   "--bootstrap", "20", "--quiet", "--json", "--out", str(tmp_path / "out")])
    assert status == 0
    document = json.loads(capsys.readouterr().out)
    infos = [ModelInfo.from_dict(m["info"]) for m in document["models"]]
    assert [(i.family, i.family_depth) for i in infos] == [("mlp", 2), ("mlp", 3)]
    rankings = document["analysis"]["rankings"]
    assert rankings["theory_scores"] == pytest.approx(theory_scores(infos)[0])
    assert list(rankings["orders"])[0] == "theory"


def test_demo_families_by_name_or_alias(toy):
    from bounds.errors import FamilyError
    from numeric.commands.demo import _model_names
    from numeric.errors import InputError
    assert _model_names(["vit", "transformer", "vgg"]) == ["vit", "vgg"]
    with pytest.raises(InputError, match="expected a family with a toolkit model"):
        _model_names(["perceptron"])
    with pytest.raises(FamilyError, match="unknown family 'lenet'"):
        _model_names(["lenet"])
