r"""The last line of defence: every certified number is checked at the inputs it was given.

Before a certified entry point returns, it measures the exact quantity it bounds at a few
points, in float64 (:func:`exact_jacobian_norms`, :func:`exact_fisher_top`), and raises
:class:`~numeric.errors.UnsoundBoundError` instead of returning a number below a
measured one. Such an error is always a bug in a rule, never a tolerance question: the
bounds are inflated for rounding and the measurements are exact up to float64 rounding
(relative :math:`\sim 10^{-13}`, far below the :math:`10^{-8}` inflation).

Cost: one forward pass and ``K`` backward passes of a float64 copy of the model per
checked point (``K`` the number of classes), plus a ``K x d`` singular value problem; pass
``self_check=False`` to the entry point for very large models.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from numeric.errors import UnsoundBoundError
from numeric.graph.softmax import probabilities, weighted_rows

__all__ = ["float64_copy", "exact_jacobians", "exact_jacobian_norms", "exact_fisher_top",
           "nearby_points", "verify", "SELF_CHECK_ROWS"]

#: Rows of a batch measured by the self-check of a local or region bound or a radius.
SELF_CHECK_ROWS = 4


def float64_copy(model: nn.Module) -> nn.Module:
    """A float64 copy of ``model`` in the same train/eval modes."""
    return copy.deepcopy(model).to(torch.float64)


def exact_jacobians(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Jacobians of the outputs, (B, K, d), and the outputs (B, K), float64, by K
    vector-Jacobian products over the batch (rows are independent for the models the
    tracer accepts)."""
    x = x.detach().to(torch.float64).requires_grad_(True)
    with torch.enable_grad():
        out = model(x)
        rows = []
        for k in range(out.shape[1]):
            (grad,) = torch.autograd.grad(out[:, k].sum(), x, retain_graph=True)
            rows.append(grad.reshape(x.shape[0], -1))
    return torch.stack(rows, dim=1).detach(), out.detach()


def exact_jacobian_norms(model: nn.Module, x: torch.Tensor, centred: bool) -> torch.Tensor:
    """:math:`\\|J(x_b)\\|_2` (or :math:`\\|CJ(x_b)\\|_2`), Tensor (B,), float64."""
    jacobian, _ = exact_jacobians(model, x)
    if centred:
        jacobian = jacobian - jacobian.mean(dim=1, keepdim=True)
    return torch.linalg.matrix_norm(jacobian, ord=2)


def exact_fisher_top(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """:math:`\\lambda_{\\max}(F(x_b)) = \\|\\Sigma_p^{1/2}J\\|_2^2`, Tensor (B,), float64,
    with :math:`p` the softmax of the model's output."""
    jacobian, out = exact_jacobians(model, x)
    p, _ = probabilities(out)
    # Sigma_p = R R^T: lambda_max = ||R^T J||^2 (numeric.graph.softmax, no cancellation)
    return torch.linalg.matrix_norm(weighted_rows(jacobian, p), ord=2) ** 2


def nearby_points(x: torch.Tensor, count: int, generator: torch.Generator) -> torch.Tensor:
    """``count`` random points near the rows of ``x`` (relative distance 1e-2)."""
    rows = x[torch.arange(count) % x.shape[0]].detach().to(torch.float64)
    direction = torch.randn(rows.shape, generator=generator, dtype=torch.float64)
    scale = rows.reshape(count, -1).norm(dim=1).clamp_min(1.0)
    direction = direction / direction.reshape(count, -1).norm(dim=1).reshape(
        -1, *([1] * (rows.dim() - 1)))
    return rows + 1e-2 * scale.reshape(-1, *([1] * (rows.dim() - 1))) * direction


def verify(what: str, bounds: torch.Tensor, measured: torch.Tensor, detail: str) -> None:
    """Raise :class:`UnsoundBoundError` where a bound is below the measured value or NaN."""
    bounds = torch.as_tensor(bounds, dtype=torch.float64).reshape(-1)
    measured = measured.reshape(-1).to(torch.float64).cpu()
    bounds = bounds.expand_as(measured) if bounds.numel() == 1 else bounds
    # a NaN bound bounds nothing (and passes every comparison): a bug like one below
    bad = torch.nonzero((bounds < measured) | torch.isnan(bounds)).reshape(-1)
    if bad.numel():
        i = int(bad[0])
        raise UnsoundBoundError(
            f"{what}: the certified bound {float(bounds[i]):.6g} is below the exact value "
            f"{float(measured[i]):.6g} measured at point {i}; this is a bug in a rule of "
            f"the traced graph ({detail}). Please report it with the model; "
            f"self_check=False skips this check.")
