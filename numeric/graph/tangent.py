r"""Exact Jacobians at the centre and certified bounds on how much they vary over a ball.

When the input is small enough (:data:`TANGENT_LIMIT` entries per row), the region pass
also pushes the identity basis of the input through the graph in forward mode
(:func:`torch.func.jvp`, batched over the basis with :func:`torch.func.vmap`), so that
every input-dependent value :math:`v` carries its exact Jacobian :math:`J_v(x)` at the
centre. It then bounds :math:`\Delta_v \ge \sup_{B}\|J_v(x') - J_v(x)\|_2` node by node:

- a map with a constant Jacobian :math:`M` (linear layers, convolutions, BatchNorm,
  average pooling, sums, scalings, data movements):
  :math:`J'_{out} - J_{out} = M(J'_{in} - J_{in})`, so :math:`\Delta` follows the graph's
  propagation with the node constants, exactly as the Jacobian bound does;
- an elementwise activation :math:`a = \phi(u)`: :math:`J'_a - J_a = D'(J'_u - J_u) +
  (D' - D)J_u`, so :math:`\Delta_a \le \sup|\phi'|\,\Delta_u + \|\operatorname{diag}
  (\delta) J_u(x)\|` with :math:`\delta_i \ge \sup|\phi'(t) - \phi'(u_i)|` over the entry's
  interval (for ReLU: 1 where the interval contains the kink, else 0), the second term
  computed exactly;
- anything else: :math:`\Delta \le \sup\|J'\| + \|J(x)\|` (the region bound and the exact
  centre norm).

Then :math:`\sup_B \|J_v\| \le \|J_v(x)\| + \Delta_v` and every entry moves by at most
:math:`\varepsilon(\|\nabla v_i(x)\| + \Delta_v)`: at small radii the bounds approach the
exact values at the centre, whatever the depth. Cost: ``d`` forward-mode products per
operation (``d`` the input size), memory ``B d`` times the largest activation.
"""

from __future__ import annotations

import warnings

import torch

__all__ = ["TANGENT_LIMIT", "input_tangents", "jvp_of", "row_norms", "frobenius",
           "spectral_of_rows", "LINEAR_OPS", "kinked"]

#: Largest number of input entries per row for which the region pass tracks exact
#: Jacobians (the tangents take ``B * d`` times an activation's memory).
TANGENT_LIMIT = 1024

#: Graph ops whose Jacobian is a constant matrix.
LINEAR_OPS = ("linear", "conv", "batchnorm", "avgpool", "scale", "identity", "reshape",
              "permute", "select", "flatten", "add", "concat")


#: Calls of piecewise-smooth operations without a region rule of their own (their Clarke
#: Jacobian at a kink holds several elements, so no chain rule for C^1 maps applies).
_KINKED_CALLS = {f"aten.{name}" for name in (
    "abs.default", "clamp.default", "clamp.Tensor", "clamp_min.default", "clamp_max.default",
    "clamp_min.Tensor", "clamp_max.Tensor", "maximum.default", "minimum.default",
    "fmax.default", "fmin.default")}


def kinked(spec) -> bool:
    """Whether a node may have a kink: the calls above, maxima over dimensions or windows
    (graph op ``maxpool``) and choices between operands (kind ``choose``); an unknown
    node counts as kinked."""
    if spec is None:
        return True
    return spec.kind == "choose" or spec.op == "maxpool" or \
        spec.params.get("call") in _KINKED_CALLS


def input_tangents(x: torch.Tensor) -> torch.Tensor:
    """The identity basis of one row, for every row: Tensor (B, d, *row shape)."""
    d = x[0].numel()
    basis = torch.eye(d, dtype=torch.float64, device=x.device).reshape(d, *x.shape[1:])
    return basis.unsqueeze(0).expand(x.shape[0], *basis.shape)


def jvp_of(function, primals: list[torch.Tensor], tangents: list[torch.Tensor]
           ) -> torch.Tensor:
    """Forward-mode products of ``function`` at ``primals`` along every tangent (dim 1 of
    each tangent tensor), stacked in dim 1 of the result."""
    def one(*directions):
        return torch.func.jvp(function, tuple(primals), tuple(directions))[1]
    with warnings.catch_warnings():   # forward mode loads its decompositions via torch.jit
        warnings.filterwarnings("ignore", message=".*torch.jit.script.*deprecated",
                                category=FutureWarning)
        return torch.func.vmap(one, in_dims=1, out_dims=1)(*tangents)


def row_norms(tangent: torch.Tensor) -> torch.Tensor:
    """:math:`\\|\\nabla v_i(x)\\|` for every entry: Tensor (B, *value shape)."""
    return tangent.pow(2).sum(dim=1).sqrt()


def frobenius(tangent: torch.Tensor, rows, batch: int) -> torch.Tensor:
    """:math:`\\|J_v(x)\\|_F` per row of the batch (an upper bound on the spectral norm),
    Tensor (B,): the squares of each entry's gradient summed over the entries of the
    row (``rows``: :class:`~numeric.graph.rows.Rows` of the value)."""
    squares = tangent.pow(2).sum(dim=1)
    if rows.is_standard and squares.shape[0] == batch:
        return squares.reshape(batch, -1).sum(dim=1).sqrt()
    index = rows.materialize().to(squares.device).reshape(-1)
    flat = squares.reshape(-1)
    keep = index >= 0
    total = torch.zeros(batch, dtype=squares.dtype, device=squares.device)
    return total.index_add(0, index[keep], flat[keep]).sqrt()


def gram_spectral_norm(matrix: torch.Tensor) -> float:
    r""":math:`\|M\|_2` of one 2-d float64 matrix from the top eigenvalue of its smaller
    Gram matrix, plus an allowance for the rounding of the Gram products and of the
    eigensolver (:math:`\max(10^{-12}, 16 n u)\|M\|_F^2` on the square, :math:`n` the
    longer side); 0 for an empty matrix. Cost: :math:`O(mn\min(m, n))`."""
    if matrix.numel() == 0:
        return 0.0
    gram = matrix @ matrix.T if matrix.shape[0] <= matrix.shape[1] else matrix.T @ matrix
    top = float(torch.linalg.eigvalsh(gram)[-1].clamp_min(0))
    slack = max(1e-12, 16 * max(matrix.shape) * 2.0 ** -53) * float(matrix.pow(2).sum())
    return (top + slack) ** 0.5


def spectral_of_rows(tangent: torch.Tensor, weights: torch.Tensor, rows, batch: int
                     ) -> torch.Tensor:
    """:math:`\\|\\operatorname{diag}(w) J_v(x)\\|_2` per row (``weights`` of the value's
    shape, per row), exact through the smaller Gram matrix when one side is small, else
    its Frobenius norm (also when the value's rows are not in the standard layout);
    widened for rounding."""
    if not rows.is_standard or tangent.shape[0] != batch:
        scaled = tangent * weights.unsqueeze(1).to(tangent)
        return frobenius(scaled, rows, batch) * (1 + 1e-9)
    B, d = tangent.shape[:2]
    scaled = tangent.reshape(B, d, -1) * weights.reshape(B, 1, -1).to(tangent)
    values = []
    for row in scaled:
        kept = row[:, row.abs().sum(dim=0) > 0]
        if kept.numel() == 0:
            values.append(0.0)
            continue
        if min(kept.shape) <= 512:
            values.append(gram_spectral_norm(kept))
        else:
            values.append(float(kept.norm()))
    return torch.tensor(values, dtype=torch.float64) * (1 + 1e-9)
