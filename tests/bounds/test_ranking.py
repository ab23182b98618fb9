"""bounds.rank: the exact pairwise conditions agree with direct comparison everywhere."""

import itertools
import math
import random

import pytest
import sympy

import bounds
from bounds import FamilyError, rank

PRESETS = ["densenet121", "vgg16", "resnet18", "resnet50", "vit_b_16"]


@pytest.fixture(scope="module")
def symbolic():
    return rank()


@pytest.fixture(scope="module")
def presets():
    return rank(PRESETS)


def log_value(expr, point):
    return sympy.N(sympy.log(expr.xreplace(point)), 40)


def random_points(symbols, count, seed):
    rng = random.Random(seed)
    for _ in range(count):
        point = {}
        for s in symbols:
            name = str(s)
            point[s] = (sympy.Integer(rng.randint(1, 60)) if name.startswith("n")
                        else sympy.Float(math.exp(rng.uniform(math.log(0.05), math.log(4)))))
        yield point


def check_conditions(ranking, count, seed):
    symbols = set().union(*(b.free_symbols for b in ranking.bounds.values()))
    checked = 0
    for point in random_points(sorted(symbols, key=str), count, seed):
        for first, second in itertools.permutations(ranking.names, 2):
            gap = log_value(ranking.bounds[second], point) - log_value(
                ranking.bounds[first], point)
            if abs(gap) < 1e-12:
                continue
            truth = ranking.condition(first, second).xreplace(point)
            assert truth in (sympy.true, sympy.false)
            assert bool(truth) == (gap > 0), (first, second, point)
            checked += 1
    assert checked


def test_symbolic_conditions_agree_with_direct_comparison(symbolic):
    check_conditions(symbolic, count=25, seed=1)


def test_preset_conditions_agree_with_direct_comparison(presets):
    check_conditions(presets, count=8, seed=2)


def test_stored_pairs_are_the_conditions(symbolic):
    for pair in symbolic.pairs:
        assert pair.condition == symbolic.condition(pair.first, pair.second)
        assert isinstance(pair.log_form, sympy.Basic)


def test_same_depth_facts():
    r = rank(["vgg", "densenet", "resnet"], depths=dict.fromkeys(["vgg", "densenet",
                                                                  "resnet"], "n"))
    assert r.condition("vgg", "densenet") is sympy.true
    assert r.condition("densenet", "resnet") is sympy.true
    assert r.condition("resnet", "vgg") is sympy.false
    assert r.order_condition(["vgg", "densenet", "resnet"]) is sympy.true


def test_depth_conditions_are_explicit():
    r = rank(["vgg", "densenet"])
    n_v, n_d = bounds.depth_symbol("n_vgg"), bounds.depth_symbol("n_densenet")
    h = sympy.Symbol("h", positive=True)
    assert r.pairs[0].condition == sympy.Lt(n_v * sympy.log(h),
                                            n_d * sympy.log(h**2 + 1) / 2)
    r = rank(["resnet", "densenet"])
    assert r.pairs[0].condition == sympy.Lt(bounds.depth_symbol("n_resnet"), n_d / 2)


def test_paper_order_is_impossible_with_shared_constants(presets):
    assert presets.condition("densenet121", "vgg16") is sympy.false
    assert presets.order_condition(["densenet121", "vgg16", "resnet18", "vit_b_16"]) is \
        sympy.false


def test_univariate_conditions_are_solved_exactly(presets):
    condition = presets.condition("resnet18", "resnet50")
    h = sympy.Symbol("h", positive=True)
    assert condition.free_symbols == {h} and condition.atoms(sympy.CRootOf)
    root = next(iter(condition.atoms(sympy.CRootOf)))
    assert float(root) == pytest.approx(0.587419, abs=1e-6)


def test_order_with_values_matches_derived_bounds():
    values = {"h": 1.1, "ell": 0.9, "a": 1.3}
    r = rank(PRESETS, values=values)
    derived = {name: bounds.derive(bounds.preset(name, shared=True)).evaluate(values).lipschitz
               for name in PRESETS}
    assert list(r.order) == sorted(PRESETS, key=derived.__getitem__)
    for name in PRESETS:
        assert 10 ** r.log10_lipschitz[name] == pytest.approx(derived[name], rel=1e-9)
    for pair in r.pairs:
        assert pair.holds == (derived[pair.first] < derived[pair.second])
    assert r.order_holds(list(r.order)) is True
    assert "Order at h=1.1" in str(r)


def test_partial_values_give_no_order():
    r = rank(["vgg", "resnet"], values={"h": 2})
    assert r.order is None and r.pairs[0].holds is None
    assert "not evaluable" in str(r)


def test_depths_options_and_to_dict():
    r = rank(["resnet", "densenet"], depths={"resnet": "2,2", "densenet": (3, "m")},
             options={"resnet": {"block": "bottleneck"}})
    h, m = sympy.Symbol("h", positive=True), bounds.depth_symbol("m")
    assert r.bounds["resnet"] == (1 + h**3) ** 4
    assert r.bounds["densenet"] == h * (1 + h**2) ** (m / 2 + sympy.Rational(3, 2)) / 2
    data = r.to_dict()
    assert data["entries"]["resnet"]["options"] == {"depth": [2, 2], "block": "bottleneck"}
    assert data["pairs"][0]["first"] == "resnet" and "condition_latex" in data["pairs"][0]


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"families": ["vgg", "lenet"]}, FamilyError, "unknown family or preset 'lenet'"),
    ({"families": ["vgg", "vgg"]}, FamilyError, "entry 'vgg' appears twice"),
    ({"families": ["vgg"], "depths": {"resnet": 3}}, FamilyError, "given for 'resnet'"),
    ({"families": ["vgg"], "values": [1]}, bounds.ArgumentError, "values to be a mapping"),
    ({"families": ["vgg"], "values": {"h": 0}}, bounds.InvalidValueError,
     "expected the value of h to be a finite number > 0"),
    ({"families": ["vgg"], "values": {"h": float("nan")}}, bounds.InvalidValueError, "got nan"),
    ({"families": ["vgg"], "depths": {"vgg": 0}}, FamilyError, "integer >= 1"),
], ids=["unknown", "twice", "depth-of-absent", "values-list", "value-zero",
    "value-nan", "depth-zero"])
def test_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        rank(**kwargs)
    with pytest.raises(FamilyError, match="unknown entry 'x'"):
        rank(["vgg"]).condition("vgg", "x")
