"""Helpers shared by the attacks: modes, norms, margins, the box, argument checks."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from numeric.errors import InputError

#: the box every adversarial example stays in: (low, high), or None for no box
Bounds = tuple[float, float] | None


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every module in eval mode, then restore each module's own mode."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def view(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Per-row ``values`` (B,) shaped to broadcast against ``like`` (B, ...)."""
    return values.view(-1, *([1] * (like.dim() - 1)))


def row_norms(delta: torch.Tensor) -> torch.Tensor:
    """L2 norm of each row of ``delta`` (B, ...): shape (B,)."""
    return delta.flatten(1).norm(dim=1)


def logit_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``f_y − max_{j≠y} f_j`` per row: positive iff the true class wins. Shape (B,)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return true - others.amax(dim=1)


def misclassified(model: Callable, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Whether ``argmax model(z) ≠ y`` per row (no gradient): BoolTensor (B,)."""
    with torch.no_grad():
        return model(z).argmax(dim=1) != y


def clip(x: torch.Tensor, delta: torch.Tensor, bounds: Bounds) -> torch.Tensor:
    """The perturbation that moves ``x`` to the box point nearest ``x + delta``."""
    if bounds is None:
        return delta
    return (x + delta).clamp(*bounds) - x


def value_and_grad(loss: Callable[[torch.Tensor], torch.Tensor], model: nn.Module,
                   z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits (B, K), per-row loss (B,) and its input gradient (like z) at ``z``."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        logits = model(z)
        values = loss(logits)
        grad, = torch.autograd.grad(values.sum(), z)
    return logits.detach(), values.detach(), grad


def unit(grad: torch.Tensor) -> torch.Tensor:
    """Each row scaled to unit L2 norm (zero rows stay zero)."""
    return grad / view(row_norms(grad).clamp_min(1e-30), grad)


def random_direction(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Uniform random unit rows like ``like``, drawn on the CPU from ``generator``."""
    noise = torch.randn(like.shape, generator=generator, dtype=like.dtype, device="cpu")
    return unit(noise.to(like.device))


def worst_norm(x: torch.Tensor, bounds: Bounds) -> torch.Tensor:
    """Largest L2 distance from ``x`` to a box point (inf without a box). Shape (B,)."""
    if bounds is None:
        return torch.full((x.shape[0],), math.inf, dtype=x.dtype, device=x.device)
    lo, hi = bounds
    return row_norms(torch.maximum(x - lo, hi - x))


def cosine(step: int, steps: int, start: float, end: float) -> float:
    """Cosine annealing from ``start`` (step 0) to ``end`` (step ``steps``)."""
    return end + (start - end) * (1 + math.cos(math.pi * step / steps)) / 2


def check_common(function: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                 bounds: Bounds) -> None:
    """Validate the arguments every attack takes; raise InputError naming the culprit."""
    if not callable(model):
        raise InputError(f"{function}: expected a callable model, got {type(model).__name__}.")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"{function}: expected x as a floating Tensor of shape (B, ...), "
                         f"got {shape}.")
    if (not isinstance(y, torch.Tensor) or y.dtype != torch.long
            or tuple(y.shape) != (x.shape[0],)):
        got = (f"{y.dtype} of shape {tuple(y.shape)}" if isinstance(y, torch.Tensor)
               else type(y).__name__)
        raise InputError(f"{function}: expected y as an int64 Tensor of shape "
                         f"({x.shape[0]},), got {got}.")
    if bounds is not None:
        if (not isinstance(bounds, (tuple, list)) or len(bounds) != 2
                or not all(isinstance(b, (int, float)) and math.isfinite(b) for b in bounds)
                or not bounds[0] < bounds[1]):
            raise InputError(f"{function}: expected bounds (low, high) with low < high, "
                             f"got {bounds!r}.")
        lo, hi = bounds
        if x.numel() and (x.min() < lo or x.max() > hi):
            raise InputError(f"{function}: expected x inside bounds {tuple(bounds)!r}, got "
                             f"values in [{x.min().item():.4g}, {x.max().item():.4g}].")
    if x.numel() and not torch.isfinite(x).all():
        raise InputError(f"{function}: expected finite x, got NaN or inf values.")


def check_count(function: str, name: str, value: int, low: int) -> None:
    """Refuse anything but an int >= ``low`` (bool included) with a one-line message."""
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise InputError(f"{function}: expected an integer {name} >= {low}, got {value!r}.")


def chunks(size: int, batch_size: int | None) -> Iterator[slice]:
    """Slices of ``range(size)`` of at most ``batch_size`` rows (all at once if None)."""
    step = size if batch_size is None else batch_size
    for start in range(0, size, max(step, 1)):
        yield slice(start, start + step)
