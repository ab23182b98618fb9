"""Float64 re-verification of adversarial examples.

An attack run in float32 returns points within a relative 1e-7 of the decision boundary,
on the side float32 rounding put them. Before its norm counts, every point an ensemble
member returns is evaluated by a float64 copy of the model: the label must really change
there (some other logit strictly above the label's). Points that fail are nudged outwards
along their ray (by 1e-7 up to 1e-3, relative) and tried again; points that pass are moved
to the float64 boundary along the ray from ``x`` by bisection, whose upper end only ever
moves to a point the float64 model misclassifies. The reported norm is the distance from
``x`` (in float64) to that verified point.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from numeric.attacks._common import Bounds, logit_margin, row_norms, view

__all__ = ["float64_model", "adversarial_float64", "verify_float64"]

#: relative nudges tried on a point the float64 model does not misclassify
_NUDGES = (1 + 1e-7, 1 + 1e-5, 1 + 1e-3)

#: bisection steps along the ray: the verified norm exceeds the float64 boundary along the
#: ray by at most a relative 2**-30 of the candidate's norm
_ITERATIONS = 30


def float64_model(model: Callable) -> Callable[[torch.Tensor], torch.Tensor]:
    """The model evaluated in float64, without copying or modifying it.

    An ``nn.Module`` runs through :func:`torch.func.functional_call` with float64 copies
    of its floating parameters and buffers; any other callable is called on float64
    inputs as it is. Inputs are cast to float64.
    """
    if not isinstance(model, nn.Module):
        return lambda z: model(z.double())
    tensors = {name: (t.detach().double() if t.is_floating_point() else t)
               for name, t in (*model.named_parameters(), *model.named_buffers())}

    def forward(z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.func.functional_call(model, tensors, (z.double(),))

    return forward


def adversarial_float64(model64: Callable, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Whether some logit ``j ≠ y`` is strictly above ``f_y`` at ``z`` in float64: (B,)."""
    with torch.no_grad():
        logits = model64(z).double()
    return logit_margin(logits, y) < 0


def verify_float64(model64: Callable, x: torch.Tensor, y: torch.Tensor,
                   points: torch.Tensor, bounds: Bounds) -> tuple[torch.Tensor, torch.Tensor]:
    """Float64-verified adversarial examples from candidate ``points``.

    Parameters
    ----------
    model64 : callable
        :func:`float64_model` of the model.
    x : Tensor of shape (B, ...)
        Clean inputs, each classified ``y`` by ``model64``.
    y : LongTensor of shape (B,)
    points : Tensor of shape (B, ...)
        Candidate adversarial points (any dtype; ``x`` where a member found none).
    bounds : (float, float) or None
        The box; candidates are clamped into it first.

    Returns
    -------
    adversarial : Tensor of shape (B, ...), float64
        Points inside the box that ``model64`` misclassifies (this exact tensor was
        evaluated); ``x`` (in float64) where no candidate could be verified.
    norms : Tensor of shape (B,), float64
        ``‖adversarial − x‖₂`` (float64), ``inf`` where nothing was verified.

    Notes
    -----
    Cost: at most 3 + 30 float64 forward passes of the batch.
    """
    x64 = x.detach().double()
    point = points.detach().to(device=x.device, dtype=torch.float64)
    if bounds is not None:
        point = point.clamp(*bounds)
    delta = point - x64
    hit = adversarial_float64(model64, point, y)
    for nudge in _NUDGES:
        missed = ~hit & (row_norms(delta) > 0)
        if not missed.any():
            break
        trial = x64 + nudge * delta
        if bounds is not None:
            trial = trial.clamp(*bounds)
        good = missed & adversarial_float64(model64, trial, y)
        point = torch.where(view(good, x64), trial, point)
        hit |= good
    delta = point - x64
    low = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    high = torch.ones_like(low)
    for _ in range(_ITERATIONS if hit.any() else 0):
        middle = (low + high) / 2
        trial = x64 + view(middle, x64) * delta
        if bounds is not None:  # a convex combination of box points; clamp against rounding
            trial = trial.clamp(*bounds)
        good = hit & adversarial_float64(model64, trial, y)
        point = torch.where(view(good, x64), trial, point)
        high = torch.where(good, middle, high)
        low = torch.where(good, low, middle)
    point = torch.where(view(hit, x64), point, x64)
    return point, torch.where(hit, row_norms(point - x64), math.inf)
