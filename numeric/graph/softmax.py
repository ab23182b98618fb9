r"""Softmax quantities computed without cancellation, for nearly one-hot predictions.

When one class takes almost all the probability, :math:`1 - p_{\max}` and
:math:`1 - \|p\|^2` are differences of numbers that round to 1, and
:math:`J_i - p^\top J` loses the other classes' share: computed naively they come out as
0 (or too small) and a bound built on them would be below the truth. Here

- :math:`1 - p_i` is the sum of the other probabilities, from a log-sum-exp over the other
  logits (:func:`probabilities`);
- :math:`\kappa(p) = \min(1/2, \max p, \sum_i p_i (1 - p_i))` uses it
  (:math:`1 - \|p\|^2 = \sum_i p_i(1 - p_i)`);
- :math:`\Sigma_p^{1/2}`-weighted products use :math:`R^\top A = \operatorname{diag}(u)(A -
  1 p^\top A)`, :math:`u = \sqrt p` (:math:`\Sigma_p = RR^\top`), with
  :math:`p^\top A = A_m + \sum_{j \ne m} p_j (A_j - A_m)` around the top class :math:`m`.
"""

from __future__ import annotations

import torch

__all__ = ["probabilities", "curvature", "weighted_rows"]


def probabilities(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(p, rest)`` with ``rest[..., i] = 1 - p[..., i]`` computed as the mass of the
    other classes (float64, last dimension the classes)."""
    z = logits.to(torch.float64)
    total = torch.logsumexp(z, dim=-1, keepdim=True)
    p = (z - total).exp()
    K = z.shape[-1]
    if K == 1:
        return p, torch.zeros_like(p)
    others = z.unsqueeze(-2).expand(*z.shape[:-1], K, K).clone()
    eye = torch.eye(K, dtype=torch.bool, device=z.device)
    others = others.masked_fill(eye, -torch.inf)
    rest = (torch.logsumexp(others, dim=-1) - total).exp()
    return p, rest


def curvature(p: torch.Tensor, rest: torch.Tensor) -> torch.Tensor:
    r""":math:`\kappa(p) = \min(1/2, \max_i p_i, \sum_i p_i(1 - p_i))` per row, an upper
    bound on :math:`\lambda_{\max}(\Sigma_p)` (:func:`theory.softmax_curvature_bound`),
    widened for rounding."""
    value = torch.minimum(p.amax(dim=-1), (p * rest).sum(dim=-1)).clamp(0, 0.5)
    return value * (1 + 1e-12)


def weighted_rows(matrix: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    r""":math:`R^\top A` for :math:`A` of shape (..., K, n): its spectral norm is
    :math:`\|\Sigma_p^{1/2} A\|_2`; the mean :math:`p^\top A` is taken around the top
    class, so that a nearly one-hot :math:`p` keeps the other classes' share."""
    top = p.argmax(dim=-1, keepdim=True)
    anchor = torch.take_along_dim(matrix, top.unsqueeze(-1), dim=-2)        # (..., 1, n)
    differences = matrix - anchor
    mean = anchor + (p.unsqueeze(-2) @ differences)
    return p.sqrt().unsqueeze(-1) * (matrix - mean)
