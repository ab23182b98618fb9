"""A brute-force oracle for the minimum-norm attack tests: the minimal L2 perturbation of a
2-D input that changes a model's prediction, found by scanning every ray from the input."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

__all__ = ["first_crossing", "brute_force_minimum"]

#: ``radii(directions)``: the radii scanned along unit directions (N, 2), ascending, of
#: shape (G,) for all directions alike or (N, G) for each direction.
Radii = Callable[[torch.Tensor], torch.Tensor]


def first_crossing(model, x: torch.Tensor, label, angles: torch.Tensor,
                   radii: Radii) -> torch.Tensor:
    """Per direction, the radius where the prediction first leaves ``label`` (inf if it
    never does within the scanned radii): grid scan, then 45 bisection steps.

    Parameters
    ----------
    model : callable
        Maps inputs (M, 2) to logits (M, K).
    x : Tensor of shape (2,)
        The input.
    label : int or Tensor
        Its predicted class.
    angles : Tensor of shape (N,)
        The directions, as angles.
    radii : callable
        ``radii(directions)``, the scanned radii along the unit directions (N, 2): shape
        (G,) for all directions alike or (N, G) for each direction.

    Returns
    -------
    Tensor of shape (N,)
    """
    directions = torch.stack([angles.cos(), angles.sin()], dim=1)
    grid = radii(directions).expand(len(angles), -1)
    points = x + grid[:, :, None] * directions[:, None, :]
    with torch.no_grad():
        off = model(points.reshape(-1, 2)).argmax(1).reshape(len(angles), -1) != label
    index = off.double().argmax(dim=1)
    rows = torch.arange(len(angles))
    high, low = grid[rows, index], grid[rows, (index - 1).clamp(min=0)]
    for _ in range(45):
        middle = (low + high) / 2
        with torch.no_grad():
            hit = model(x + middle[:, None] * directions).argmax(1) != label
        high, low = torch.where(hit, middle, high), torch.where(hit, low, middle)
    return torch.where(off.any(dim=1), high, math.inf)


def brute_force_minimum(model, x: torch.Tensor, label, radii: Radii) -> float:
    """The minimal L2 perturbation of a 2-D input within the scanned radii: every ray from
    ``x`` (720 angles), then the best four rays finely; parameters as for
    :func:`first_crossing`."""
    coarse = torch.linspace(0, 2 * math.pi, 721, dtype=torch.float64)[:-1]
    values = first_crossing(model, x, label, coarse, radii)
    step = 2 * math.pi / 720
    best = values.min()
    for k in values.argsort()[:4]:
        fine = coarse[k] + torch.linspace(-step, step, 201, dtype=torch.float64)
        best = torch.minimum(best, first_crossing(model, x, label, fine, radii).min())
    return float(best)
