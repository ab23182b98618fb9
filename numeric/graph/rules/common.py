"""Helpers shared by the built-in rules: certified floats and local tolerances."""

from __future__ import annotations

import sympy
import torch

from numeric.graph.norms import CERTIFICATION_FACTOR

__all__ = ["TOLERANCE", "certify", "tolerance", "aten"]

aten = torch.ops.aten

#: Width of the interval around each measured activation value over which local constants
#: take their maximum (kinks of ReLU-like functions, ties of max pooling, the smallest
#: LayerNorm variance): a value is known only up to the rounding of the forward pass, which
#: differs between batch sizes and devices. Relative to the largest magnitude of the row,
#: with an absolute floor of the same size, so that an input sitting exactly on a kink
#: (``x = 0`` with zero biases, where every magnitude is 0) is counted on both sides: the
#: local bound then covers the Clarke generalized Jacobian there, every one-sided
#: derivative included.
TOLERANCE = 1e-8


def certify(value) -> float:
    """A float upper bound of ``value``: exact for a number a float represents exactly,
    else inflated by :data:`~numeric.graph.norms.CERTIFICATION_FACTOR`."""
    number = float(value)
    if isinstance(value, sympy.Basic):
        if value.is_Rational and sympy.Rational(number) == value:
            return number
    elif isinstance(value, int) or (isinstance(value, float) and number.is_integer()):
        return number
    return number * CERTIFICATION_FACTOR


def tolerance(values: torch.Tensor, rows=None, batch: int | None = None) -> torch.Tensor:
    """:data:`TOLERANCE` times (1 + the largest magnitude of each row), broadcastable to
    ``values``; one scale for the whole tensor when its rows are not in the standard
    layout."""
    magnitude = values.detach().abs()
    if rows is not None and rows.is_standard and values.dim() >= 1:
        scale = magnitude.reshape(values.shape[0], -1).amax(dim=1) if values.numel() else \
            torch.zeros(values.shape[0], dtype=values.dtype, device=values.device)
        return (TOLERANCE * (1 + scale)).reshape(-1, *([1] * (values.dim() - 1)))
    scale = magnitude.max() if values.numel() else torch.zeros((), dtype=values.dtype)
    return TOLERANCE * (1 + scale)
