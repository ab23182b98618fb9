"""The certified bounds over random models that mix ordinary torch idioms.

A hypothesis sweep over :mod:`tests.numeric.idiom_models`: each case draws a template and
a variant (the structure, exported once and cached), then new weights from tiny to large
(BatchNorm variances down to 1e-6) and inputs that are random, all zero (every ReLU on its
kink, every max-pool window tied) or huge. Every certified quantity is compared with the
exact float64 value (``tests/numeric/certify.py``): the global Fisher and Lipschitz bounds
at the rows and at random points, the local Fisher bound at the rows; and every rule's
constant is compared with the exact Jacobian of its own operation at its actual inputs
(``tests/numeric/node_check.py``, on a quarter of the cases), which a loose bound
elsewhere cannot hide. One
violation fails.
The default tier runs 1,001 cases (143 per template); ``-m slow`` runs 5,000 more.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.numeric import idiom_models
from tests.numeric.certify import Measured, cached_exports
from tests.numeric.node_check import rule_violations
from numeric.graph import trace_model

_MODELS: dict = {}


def _model(name: str, variant: int):
    key = (name, variant)
    if key not in _MODELS:
        _MODELS[key] = idiom_models.build(name, variant)
    return _MODELS[key]


@st.composite
def cases(draw, names=tuple(idiom_models.NAMES)):
    name = draw(st.sampled_from(names))
    variant = draw(st.integers(0, 2))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    scale = draw(st.sampled_from([1e-2, 1.0, 30.0, 1e3]))
    tiny_variance = draw(st.booleans())
    inputs = draw(st.sampled_from(["random", "zeros", "huge"]))
    return name, variant, seed, scale, tiny_variance, inputs


def _check(case) -> None:
    name, variant, seed, scale, tiny_variance, inputs = case
    model = _model(name, variant)
    generator = torch.Generator().manual_seed(seed)
    idiom_models.randomize(model, generator, scale, tiny_variance)
    shape = idiom_models.input_shape(name)
    x = torch.randn((2, *shape), generator=generator, dtype=torch.float64)
    if inputs == "zeros":
        x = torch.zeros_like(x)
    elif inputs == "huge":
        x = 1e3 * x
    traced = trace_model(model, x, self_check=False)
    points = 3 * torch.randn((2, *shape), generator=generator, dtype=torch.float64)
    measured = Measured(traced, model, x, points)
    problems = measured.violations()
    if seed % 4 == 0:   # rule by rule on a quarter of the cases (the costly part)
        problems += rule_violations(model, x)
    assert not problems, f"{case}: " + "; ".join(problems)


class _Cache:
    """The export cache of the module (a short repr for hypothesis' reports)."""

    def __repr__(self) -> str:
        return "<export cache>"


@pytest.fixture(scope="module")
def export_cache():
    monkeypatch = pytest.MonkeyPatch()
    with cached_exports(monkeypatch):
        yield _Cache()
    monkeypatch.undo()


# one test per template (a share of the cases each): parallel workers split the sweep,
# each exporting only its own template's structures
@pytest.mark.parametrize("template", idiom_models.NAMES)
@settings(max_examples=idiom_models.per_template(1000))
@given(data=st.data())
def test_random_idiom_models_are_never_below_exact(export_cache, template, data):
    _check(data.draw(cases((template,)), label="case"))


@pytest.mark.slow
@settings(max_examples=5000, derandomize=False)
@given(cases())
def test_random_idiom_models_are_never_below_exact_heavy(export_cache, case):
    _check(case)
