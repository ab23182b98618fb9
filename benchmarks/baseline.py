"""The paper's released recipe, reimplemented faithfully as the benchmark baseline.

Zhang et al., arXiv:2606.04767 (code: github franz-chang/SRP), as described in
``shared/PAPER.md``:

- white-box: one input at a time; one backward pass per class builds
  ``Q = [grad_x log p_1, ..., grad_x log p_K]`` (d x K); the top eigenvalue of
  ``F = Q diag(p) Q^T`` comes from the K x K matrix ``diag(p)^{1/2} Q^T Q diag(p)^{1/2}``;
- black-box: ``m`` random unit directions, central differences with ``h = 1e-3`` of
  ``log p(y | x +- h v)``, quadratic form ``sum_y p_y (v^T grad log p_y)^2``, maximum over
  the directions (``2m + 1`` queries per input).

Nothing here is batched over inputs or classes: that is the point of the comparison.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["paper_top_eigenvalue", "paper_blackbox_top_eigenvalue"]


def paper_top_eigenvalue(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """lambda_max(F(x_b)) per row by the released white-box recipe: shape (B,)."""
    model.eval()
    values = []
    for row in x:
        point = row.unsqueeze(0).clone().requires_grad_(True)
        log_p = torch.log_softmax(model(point), dim=-1)[0]
        p = log_p.detach().exp()
        columns = [torch.autograd.grad(log_p[k], point, retain_graph=True)[0].flatten()
                   for k in range(log_p.shape[0])]
        q = torch.stack(columns, dim=1)                            # (d, K)
        root = p.sqrt()
        small = root.unsqueeze(1) * (q.T @ q) * root.unsqueeze(0)  # diag(p)^1/2 Q^T Q diag(p)^1/2
        values.append(torch.linalg.eigvalsh(small)[-1])
    return torch.stack(values)


def paper_blackbox_top_eigenvalue(predict_proba, x: torch.Tensor, num_directions: int = 100,
                                  step: float = 1e-3,
                                  generator: torch.Generator | None = None) -> torch.Tensor:
    """The released black-box recipe (max of random Rayleigh quotients): shape (B,).

    Uses ``2 * num_directions + 1`` evaluations of ``predict_proba`` per input.
    """
    values = []
    for row in x:
        point = row.unsqueeze(0)
        p = predict_proba(point)[0].double()
        best = torch.zeros((), dtype=torch.float64)
        for _ in range(num_directions):
            v = torch.randn(row.shape, generator=generator, dtype=torch.float64)
            v = (v / v.norm()).to(row.dtype).unsqueeze(0)
            plus = predict_proba(point + step * v)[0].double().log()
            minus = predict_proba(point - step * v)[0].double().log()
            derivative = (plus - minus) / (2 * step)               # v^T grad log p_y
            best = torch.maximum(best, (p * derivative.square()).sum())
        values.append(best)
    return torch.stack(values)
