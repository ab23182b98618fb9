"""The toolkit's own minimum-norm L2 attack and its boundary polish.

Two ensemble members of :func:`numeric.attacks.minimum_norm_attack` live here:

``toolkit``
    FMN-L2 (Pintor et al. 2021) and DDN (Rony et al. 2019) from the clean input, then FMN
    from ``restarts`` random points on the sphere of the best radius so far. Step sizes
    are relative to the current radius (FMN and DDN state theirs in absolute units for
    images in [0, 1]), so the attack does not depend on the input scale; it needs no box.
``refine``
    polishes the best perturbation found by the members before it: a boundary search along
    its ray, then DeepFool/FAB-style projections of ``x`` onto the linearised decision
    boundary (intersected with the box) towards several classes (Moosavi-Dezfooli et al.
    2016; Croce & Hein 2020). Exact for affine classifiers.

Both work in the model's own dtype; :func:`numeric.attacks.minimum_norm_attack` re-verifies
every point they return in float64.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from numeric.attacks._common import (Bounds, clip, cosine, logit_margin, misclassified,
                                     random_direction, row_norms, unit, value_and_grad, view,
                                     worst_norm)

__all__ = ["toolkit_attack", "refine"]

#: DeepFool's overshoot of the linear extrapolation to the boundary (lands past it, not on it)
_OVERSHOOT = 1.05

#: iterations of the bisection along a ray (relative precision 2**-16 of the norm: enough
#: for the next linearisation point; the float64 verification then finds the boundary)
_RAY_ITERATIONS = 16


class _Best:
    """Smallest successful perturbation per sample seen so far."""

    def __init__(self, x: torch.Tensor) -> None:
        self.delta = torch.zeros_like(x)
        self.norms = torch.full((x.shape[0],), math.inf, dtype=x.dtype, device=x.device)

    def update(self, delta: torch.Tensor, adversarial: torch.Tensor) -> None:
        norms = row_norms(delta)
        better = adversarial & (norms < self.norms)
        self.norms = torch.where(better, norms, self.norms)
        self.delta = torch.where(view(better, delta), delta, self.delta)


def _fmn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor,
         steps: int, bounds: Bounds, best: _Best, *, gamma: tuple[float, float] = (0.05, 1e-3),
         alpha: tuple[float, float] = (1.0, 0.01)) -> None:
    """FMN-L2 (Pintor et al. 2021, Alg. 1) from ``delta``; updates ``best`` in place.

    The step size is ``alpha · ε`` (relative to the current radius) instead of absolute,
    which makes the attack independent of the input scale.
    """
    worst = worst_norm(x, bounds)
    epsilon = torch.full_like(worst, math.inf)
    found = torch.zeros_like(worst, dtype=torch.bool)
    for step in range(steps + 1):
        logits, margin, grad = value_and_grad(lambda out: logit_margin(out, y), model, x + delta)
        adversarial = logits.argmax(dim=1) != y
        best.update(delta, adversarial)
        if step == steps:
            break
        found |= adversarial
        norm = row_norms(delta)
        g = cosine(step, steps, *gamma)
        to_boundary = margin.abs() / row_norms(grad).clamp_min(1e-30)
        grown = torch.where(found, epsilon * (1 + g), norm + _OVERSHOOT * to_boundary)
        epsilon = torch.where(adversarial, torch.minimum(epsilon * (1 - g), best.norms), grown)
        epsilon = torch.minimum(epsilon, worst)
        step_size = cosine(step, steps, *alpha) * epsilon
        delta = delta - view(step_size, x) * unit(grad)
        delta = delta * view((epsilon / row_norms(delta).clamp_min(1e-30)).clamp(max=1.0), x)
        delta = clip(x, delta, bounds)


def _ddn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: torch.Tensor,
         steps: int, bounds: Bounds, best: _Best, *, gamma: float = 0.05,
         alpha: tuple[float, float] = (1.0, 0.01)) -> None:
    """DDN (Rony et al. 2019, Alg. 1) from ``x`` with initial radius ``epsilon`` (B,)."""
    worst = worst_norm(x, bounds)
    delta = torch.zeros_like(x)

    def cross_entropy(out: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, y, reduction="none")

    for step in range(steps + 1):
        logits, _, grad = value_and_grad(cross_entropy, model, x + delta)
        adversarial = logits.argmax(dim=1) != y
        best.update(delta, adversarial)
        if step == steps:
            break
        epsilon = torch.where(adversarial, epsilon * (1 - gamma), epsilon * (1 + gamma))
        epsilon = torch.minimum(epsilon, worst)
        step_size = cosine(step, steps, *alpha) * epsilon
        delta = delta + view(step_size, x) * unit(grad)
        delta = view(epsilon, x) * unit(delta)
        delta = clip(x, delta, bounds)


def _ray_search(model: nn.Module, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor,
                adversarial: torch.Tensor) -> torch.Tensor:
    """Shrink each adversarial ``delta`` to the first misclassified point on [x, x + delta].

    The segment lies in the box when both ends do. Rows not ``adversarial`` come back
    unchanged; the returned points are verified misclassified (the upper end of the
    bisection is only ever moved to a misclassified point).
    """
    low = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    high = torch.ones_like(low)
    for _ in range(_RAY_ITERATIONS):
        middle = (low + high) / 2
        hit = misclassified(model, x + view(middle, x) * delta, y)
        high = torch.where(hit, middle, high)
        low = torch.where(hit, low, middle)
    return torch.where(view(adversarial, x), view(high, x) * delta, delta)


def _project_onto_halfspace(x: torch.Tensor, normal: torch.Tensor, offset: torch.Tensor,
                            bounds: Bounds) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest point to ``x`` in ``{u : normal·u >= offset}`` ∩ box, and a feasibility mask.

    By the KKT conditions the solution is ``clip(x + λ·normal)`` with the smallest
    ``λ >= 0`` meeting the constraint; ``normal·clip(x + λ·normal)`` is non-decreasing in
    λ, so λ is found by bisection (exact in closed form without a box). Computed in float64.
    """
    x64, n64 = x.flatten(1).double(), normal.flatten(1).double()
    offset = offset.double()
    squared = (n64 * n64).sum(dim=1).clamp_min(1e-300)
    lam_high = ((offset - (n64 * x64).sum(dim=1)) / squared).clamp_min(0.0)
    if bounds is None:
        point = x64 + lam_high[:, None] * n64
        return point.view_as(x).to(x.dtype), squared > 1e-300

    def side(lam: torch.Tensor) -> torch.Tensor:
        return (n64 * (x64 + lam[:, None] * n64).clamp(*bounds)).sum(dim=1)

    for _ in range(64):  # grow until feasible (or give up: the box misses the halfspace)
        short = side(lam_high) < offset
        if not short.any():
            break
        lam_high = torch.where(short, lam_high * 2 + 1e-12, lam_high)
    feasible = side(lam_high) >= offset
    lam_low = torch.zeros_like(lam_high)
    for _ in range(64):
        middle = (lam_low + lam_high) / 2
        ok = side(middle) >= offset
        lam_high = torch.where(ok, middle, lam_high)
        lam_low = torch.where(ok, lam_low, middle)
    point = (x64 + lam_high[:, None] * n64).clamp(*bounds)
    return point.view_as(x).to(x.dtype), feasible


def _refine(model: nn.Module, x: torch.Tensor, y: torch.Tensor, best: _Best,
            iterations: int, candidates: int, bounds: Bounds) -> None:
    """Polish ``best`` with linearised-boundary projections towards several classes.

    For the ``candidates`` classes j with the largest logits at ``x`` (and for the class
    the best perturbation so far crosses into, starting from its boundary point), each
    iteration linearises ``g_j = f_j − f_y`` at the current point ``z_j`` and projects
    ``x`` onto ``{u : g_j(z_j) + ∇g_j(z_j)·(u − z_j) >= 0}`` ∩ box (exact for an affine
    classifier; DeepFool / FAB). A projection, slightly overshot if needed, is shrunk by a
    boundary search along its ray and accepted only if verified misclassified and shorter
    than the best; otherwise the next linearisation starts from it. All rows of the B ×
    (candidates + 1) problems go through the model as one batch.
    """
    found = torch.isfinite(best.norms)
    best.delta = _ray_search(model, x, y, best.delta, found)
    best.norms = torch.where(found, row_norms(best.delta), best.norms)
    with torch.no_grad():
        logits = model(x)
        crossed = model(x + best.delta)
    count = min(candidates, logits.shape[1] - 1)
    targets = torch.cat([logits.scatter(1, y[:, None], -math.inf).topk(count, dim=1).indices,
                         crossed.scatter(1, y[:, None], -math.inf).argmax(1, keepdim=True)],
                        dim=1)
    rows = count + 1
    xr, yr, tr = x.repeat_interleave(rows, 0), y.repeat_interleave(rows), targets.flatten()
    zr = xr.clone()
    zr.view(x.shape[0], rows, *x.shape[1:])[:, -1] = x + best.delta

    def gap(out: torch.Tensor) -> torch.Tensor:
        return out.gather(1, tr[:, None]).squeeze(1) - out.gather(1, yr[:, None]).squeeze(1)

    for _ in range(iterations):
        _, value, grad = value_and_grad(gap, model, zr)
        offset = (grad * zr).flatten(1).sum(dim=1) - value
        point, feasible = _project_onto_halfspace(xr, grad, offset, bounds)
        base = point - xr
        candidate = base.clone()
        hit = torch.zeros_like(yr, dtype=torch.bool)
        for overshoot in (1.0, 1.001, 1.01, 1.1):
            trial = clip(xr, base * overshoot, bounds)
            trial_hit = misclassified(model, xr + trial, yr) & ~hit & feasible
            candidate = torch.where(view(trial_hit, xr), trial, candidate)
            hit |= trial_hit
        candidate = _ray_search(model, xr, yr, candidate, hit)
        norms = torch.where(hit, row_norms(candidate), math.inf).view(x.shape[0], rows)
        shortest, which = norms.min(dim=1)
        chosen = candidate.view(x.shape[0], rows, *x.shape[1:])[torch.arange(x.shape[0]), which]
        best.update(chosen, torch.isfinite(shortest))
        zr = torch.where(view(hit, xr), xr + candidate,
                         torch.where(view(feasible, xr), point, zr))



def toolkit_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int,
                   restarts: int, bounds: Bounds, generator: torch.Generator
                   ) -> torch.Tensor:
    """The toolkit's FMN + DDN + restarted FMN; adversarial points like ``x``.

    Cost: ``(2 + restarts) · steps`` forward and backward passes of the batch. Rows for
    which nothing was found come back equal to ``x``. All rows must be classified ``y``.
    """
    best = _Best(x)
    _, gap, grad = value_and_grad(lambda out: logit_margin(out, y), model, x)
    start = (gap / row_norms(grad).clamp_min(1e-30)).clamp_min(1e-6)
    start = torch.minimum(start, worst_norm(x, bounds))
    _fmn(model, x, y, torch.zeros_like(x), steps, bounds, best)
    _ddn(model, x, y, start.clone(), steps, bounds, best)
    for _ in range(restarts):
        radius = torch.where(torch.isfinite(best.norms), best.norms, start)
        initial = view(radius, x) * random_direction(x, generator)
        _fmn(model, x, y, clip(x, initial, bounds), steps, bounds, best)
    return x + best.delta


def refine(model: nn.Module, x: torch.Tensor, y: torch.Tensor, start: torch.Tensor, *,
           iterations: int, candidates: int, bounds: Bounds) -> torch.Tensor:
    """Polish the adversarial points ``start`` (like ``x``; rows equal to ``x`` where
    none is known) by :func:`_refine`; adversarial points like ``x`` (``x`` where none).

    Cost: 20 forward passes of the batch, then per iteration one backward and up to 20
    forward passes of a batch ``candidates + 1`` times larger.
    """
    best = _Best(x)
    delta = (start - x).to(x.dtype)
    # a point verified on the float64 boundary may round to the clean side here
    for nudge in (1.0, 1 + 1e-6, 1 + 1e-4, 1 + 1e-2):
        trial = clip(x, nudge * delta, bounds)
        best.update(trial, misclassified(model, x + trial, y) & ~torch.isfinite(best.norms))
    _refine(model, x, y, best, iterations, candidates, bounds)
    return x + best.delta
