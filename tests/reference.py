"""Dense float64 references shared by the numeric tests.

Everything here is the slow, obviously-correct way: the full Jacobian from
``torch.func.jacrev`` and a dense symmetric eigensolver. Tests compare the fast estimators
and the certified bounds against these values.
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["dense_jacobian", "dense_fisher", "exact_fisher_spectrum", "exact_top_eigenvalue"]


def dense_jacobian(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Jacobian of the logits at each row of ``x``: shape (B, K, d) with d = x[0].numel()."""
    model = model.double().eval()
    x = x.double()
    rows = []
    for row in x:
        jac = torch.func.jacrev(lambda z: model(z.unsqueeze(0)).squeeze(0))(row)
        rows.append(jac.reshape(jac.shape[0], -1))
    return torch.stack(rows)


def dense_fisher(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """F(x) = J^T (diag p - p p^T) J for every row: shape (B, d, d), float64."""
    model = model.double().eval()
    x = x.double()
    jac = dense_jacobian(model, x)
    with torch.no_grad():
        p = torch.softmax(model(x), dim=-1)
    sigma = torch.diag_embed(p) - p.unsqueeze(-1) * p.unsqueeze(-2)
    return jac.transpose(1, 2) @ sigma @ jac


def exact_fisher_spectrum(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """All d eigenvalues of F(x), descending: shape (B, d)."""
    return torch.linalg.eigvalsh(dense_fisher(model, x)).flip(-1)


def exact_top_eigenvalue(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """lambda_max(F(x)) for every row: shape (B,)."""
    return exact_fisher_spectrum(model, x)[:, 0]
