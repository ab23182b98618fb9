"""Region bounds and certified radii, against the largest values found inside each ball.

For random models mixing the torch idioms (``tests/numeric/idiom_models.py``, exported
once per structure, new weights per case) and a random radius, the region bounds over the
ball must be at least the exact float64 values at random points of the ball and at the end
of a 50-step projected gradient ascent on :math:`\\lambda_{\\max}(F)` inside it; the
certified radius must hold against a 50-step projected gradient descent on the margin
inside it (on the cases that run the ascent). One violation fails: a region bound below a
point in its ball is a bug.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from numeric.errors import UnsupportedModuleError
from numeric.graph import trace_model
from numeric.graph.selfcheck import exact_fisher_top, exact_jacobian_norms
from tests.numeric import idiom_models
from tests.numeric.certify import cached_exports

_MODELS: dict = {}
ASCENT_STEPS = 50


def _model(name: str, variant: int):
    if (name, variant) not in _MODELS:
        _MODELS[(name, variant)] = idiom_models.build(name, variant)
    return _MODELS[(name, variant)]


def _fisher_top(model, x: torch.Tensor) -> torch.Tensor:
    """Differentiable lambda_max(F) per row (dense Jacobian, tiny models only)."""
    def logits(row):
        return model(row.unsqueeze(0))[0]
    jacobian = torch.vmap(torch.func.jacrev(logits))(x).reshape(x.shape[0], -1, x[0].numel())
    p = torch.softmax(model(x), dim=1)
    u = p.sqrt()
    projected = u.unsqueeze(2) * jacobian - u.unsqueeze(2) * (p.unsqueeze(1) @ jacobian)
    return torch.linalg.matrix_norm(projected, ord=2) ** 2


def _project(points, centre, eps):
    step = points - centre
    norms = step.reshape(step.shape[0], -1).norm(dim=1).clamp_min(1e-300)
    scale = torch.clamp(eps / norms, max=1.0).reshape(-1, *([1] * (step.dim() - 1)))
    return centre + step * scale


def _ascent(model, centre, eps, generator, steps=ASCENT_STEPS):
    """Projected gradient ascent on lambda_max(F) in the ball (random start)."""
    start = torch.randn(centre.shape, generator=generator, dtype=torch.float64)
    points = _project(centre + start, centre, eps)
    size = eps.reshape(-1, *([1] * (centre.dim() - 1))) / 4
    for _ in range(steps):
        points = points.detach().requires_grad_(True)
        try:
            value = _fisher_top(model, points).sum()
            (grad,) = torch.autograd.grad(value, points)
        except RuntimeError:       # an operator without vmap/jacrev support: stop here
            break
        if not bool(torch.isfinite(grad).all()):   # the SVD's gradient at a repeated top
            break                                  # singular value: stop at this point
        norms = grad.reshape(grad.shape[0], -1).norm(dim=1).clamp_min(1e-300)
        points = _project(points + size * grad / norms.reshape(size.shape), centre, eps)
    return points.detach()


def _margin_descent(model, centre, labels, radius, generator, steps=ASCENT_STEPS):
    """Projected gradient descent on the smallest margin of ``labels`` inside the balls of
    ``radius`` (random start): the smallest margin found per row."""
    start = torch.randn(centre.shape, generator=generator, dtype=torch.float64)
    points = _project(centre + start, centre, radius)
    size = radius.reshape(-1, *([1] * (centre.dim() - 1))) / 4
    lowest = None
    for _ in range(steps + 1):
        points = points.detach().requires_grad_(True)
        logits = model(points)
        own = logits.gather(1, labels.unsqueeze(1))
        others = logits.scatter(1, labels.unsqueeze(1), -torch.inf)
        margin = (own.squeeze(1) - others.amax(dim=1))
        lowest = margin.detach() if lowest is None else torch.minimum(lowest, margin.detach())
        (grad,) = torch.autograd.grad(margin.sum(), points)
        norms = grad.reshape(grad.shape[0], -1).norm(dim=1).clamp_min(1e-300)
        points = _project(points - size * grad / norms.reshape(size.shape), centre, radius)
    return lowest


def _check_radius(model, traced, x: torch.Tensor, generator) -> None:
    """No point the descent finds within the certified radius changes the prediction."""
    with torch.no_grad():
        labels = model(x).argmax(dim=1)
    if traced.radius_reason() is not None:       # a jump (softplus's switch): refused
        with pytest.raises(UnsupportedModuleError, match="no certified radius"):
            traced.certified_radius(x)
        return
    radius = traced.certified_radius(x)
    assert bool((radius >= 0).all()) and bool(torch.isfinite(radius).all()), radius
    lowest = _margin_descent(model, x, labels, radius, generator)
    assert bool((lowest > -1e-10).all()), (radius, lowest)    # rounding of the logits


@st.composite
def cases(draw, names=tuple(idiom_models.NAMES)):
    name = draw(st.sampled_from(names))
    return (name, draw(st.integers(0, 2)), draw(st.integers(0, 2 ** 31 - 1)),
            draw(st.sampled_from([1e-3, 1e-2, 0.1, 1.0])), draw(st.booleans()))


def _check(case, ascent: bool) -> None:
    name, variant, seed, radius, ascend = case
    model = _model(name, variant)
    generator = torch.Generator().manual_seed(seed)
    idiom_models.randomize(model, generator, 1.0, tiny_variance=False)
    shape = idiom_models.input_shape(name)
    x = torch.randn((2, *shape), generator=generator, dtype=torch.float64)
    eps = torch.full((2,), radius, dtype=torch.float64)
    traced = trace_model(model, x, self_check=False)
    bound = traced.region_bound(x, eps)
    direction = torch.randn((6, *shape), generator=generator, dtype=torch.float64)
    lengths = torch.rand(6, generator=generator, dtype=torch.float64) * radius
    centres = x.repeat(3, *([1] * len(shape)))
    points = centres + direction / direction.reshape(6, -1).norm(dim=1).reshape(
        -1, *([1] * len(shape))) * lengths.reshape(-1, *([1] * len(shape)))
    if ascent and ascend:
        points = torch.cat([points, _ascent(model, x, eps, generator)])
        centres = torch.cat([centres, x])
        _check_radius(model, traced, x, generator)
    rows = torch.arange(points.shape[0]) % 2
    fisher = exact_fisher_top(model, points)
    norms = exact_jacobian_norms(model, points, centred=True)
    assert bool((fisher <= bound.fisher[rows]).all()), (case, fisher, bound.fisher)
    assert bool((norms <= bound.jacobian[rows]).all()), (case, norms, bound.jacobian)


@pytest.fixture(scope="module")
def export_cache():
    monkeypatch = pytest.MonkeyPatch()
    with cached_exports(monkeypatch):
        yield "<export cache>"
    monkeypatch.undo()


# one test per template (a share of the cases each): parallel workers split the sweep,
# each exporting only its own template's structures
@pytest.mark.parametrize("template", idiom_models.NAMES)
@settings(max_examples=idiom_models.per_template(500))
@given(data=st.data())
def test_region_bounds_are_never_below_points_of_the_ball(export_cache, template, data):
    case = data.draw(cases((template,)), label="case")
    _check(case, ascent=case[2] % 5 == 0)


@pytest.mark.slow
@settings(max_examples=2000, derandomize=False)
@given(cases())
def test_region_bounds_are_never_below_points_of_the_ball_heavy(export_cache, case):
    _check(case, ascent=True)
