r"""The explicit matrix of a convolution on its grid: the exact reference and small layers.

:math:`C = \sum_t W_t \otimes S_t`, :math:`S_t` the 0/1 matrix of tap t on the grid (any
padding mode, stride and dilation); its norm is exact up to rounding, at a cost cubic in
the grid size, so it serves tiny layers and the tests' references.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from numeric.graph.norms.geometry import ConvGeometry, as_tuple, output_size
from numeric.graph.norms.linear import spectral_norms

__all__ = ["conv_dense_matrix", "conv_dense_entries", "dense_cost", "dense_norm"]


def _source_positions(n: int, padding: int, mode: str) -> list[int]:
    """Input index read at each position of the padded signal (-1: a zero)."""
    if mode == "zeros":
        return [i - padding if 0 <= i - padding < n else -1 for i in range(n + 2 * padding)]
    index = torch.arange(n, dtype=torch.float64).reshape(1, 1, n)
    padded = F.pad(index, (padding, padding), mode=mode)
    return [int(v) for v in padded.reshape(-1)]


def _selection(n: int, k: int, s: int, d: int, p: int, mode: str) -> torch.Tensor:
    """(k, n_out, n) 0/1 matrices: tap t of output i reads input j (1-d, one dimension)."""
    source = _source_positions(n, p, mode)
    outputs = output_size(n, k, s, d, p)
    select = torch.zeros(k, outputs, n, dtype=torch.float64)
    for t in range(k):
        for i in range(outputs):
            j = source[s * i + d * t]
            if j >= 0:
                select[t, i, j] += 1
    return select


def _group_matrices(weight, spatial, geometry) -> list[torch.Tensor | None]:
    r"""The explicit matrix :math:`\sum_t W_t \otimes S_t` of each group; rows (out channel,
    out position), columns (in channel, in position), channels within the group.
    None: all zero."""
    weight = weight.detach().to("cpu", torch.float64)
    groups = geometry.groups
    taps = weight.shape[2:]
    per_dim = [_selection(n, k, s, d, p, geometry.padding_mode) for n, k, s, d, p in zip(
        spatial, taps, geometry.stride, geometry.dilation, geometry.padding)]
    blocks = weight.reshape(groups, weight.shape[0] // groups, weight.shape[1], -1)
    matrices = []
    for block in blocks:
        matrix = None
        for index, tap in enumerate(itertools.product(*(range(k) for k in taps))):
            select = per_dim[0][tap[0]]
            for dim in range(1, len(taps)):
                select = torch.kron(select, per_dim[dim][tap[dim]])
            if not select.any():
                continue
            term = torch.kron(block[:, :, index].contiguous(), select)
            matrix = term if matrix is None else matrix + term
        matrices.append(matrix)
    return matrices


def dense_norm(weight: torch.Tensor, spatial: Sequence[int], geometry: ConvGeometry) -> float:
    """Exact norm of the layer on its grid: the largest group's explicit matrix norm (not
    inflated; the caller multiplies by CERTIFICATION_FACTOR)."""
    return max((float(spectral_norms(m.unsqueeze(0))[0])
                for m in _group_matrices(weight, spatial, geometry) if m is not None),
               default=0.0)


def dense_cost(weight: torch.Tensor, spatial: Sequence[int],
               geometry: ConvGeometry) -> tuple[float, int]:
    """(flops, entries per group) of the exact dense route."""
    groups = geometry.groups
    n_in = weight.shape[1] * math.prod(spatial)
    n_out = weight.shape[0] // groups * math.prod(
        output_size(n, k, s, d, p) for n, k, s, d, p in zip(
            spatial, weight.shape[2:], geometry.stride, geometry.dilation, geometry.padding))
    small, large = sorted((n_in, n_out))
    taps = math.prod(weight.shape[2:])
    return groups * (float(small) ** 2 * large + 4.0 * small ** 3 + taps * n_in * n_out), \
        n_in * n_out


def conv_dense_matrix(weight: torch.Tensor, input_shape: Sequence[int], *, stride=1,
                      padding=0, dilation=1, groups=1, padding_mode="zeros") -> torch.Tensor:
    """The explicit matrix of a convolution on its grid, float64 on the CPU.

    Parameters
    ----------
    weight : Tensor of shape (c_out, c_in / groups, *kernel)
    input_shape : sequence of int
        The spatial size (a leading channel or batch dimension is dropped).
    stride, padding, dilation, groups, padding_mode
        As in ``torch.nn.Conv2d``.

    Returns
    -------
    Tensor of shape (c_out * prod(out_size), c_in * prod(input_shape))
        Rows and columns in the order of ``flatten`` of (channels, *spatial), so that
        elementwise factors before and after the layer are diagonal matrices on its
        columns and rows. Cost: :math:`O(c_{out} c_{in} n_{out} n_{in})` memory.

    Examples
    --------
    >>> import torch
    >>> conv_dense_matrix(torch.ones(1, 1, 2), (3,))
    tensor([[1., 1., 0.],
            [0., 1., 1.]], dtype=torch.float64)
    """
    dims = weight.dim() - 2
    spatial = tuple(int(n) for n in input_shape)[-dims:]
    geometry = ConvGeometry(as_tuple(stride, dims, "stride", "conv_dense_matrix"),
                            as_tuple(padding, dims, "padding", "conv_dense_matrix"),
                            as_tuple(dilation, dims, "dilation", "conv_dense_matrix"),
                            int(groups), padding_mode)
    outputs = math.prod(output_size(n, k, s, d, p) for n, k, s, d, p in zip(
        spatial, weight.shape[2:], geometry.stride, geometry.dilation, geometry.padding))
    rows = weight.shape[0] // groups * outputs
    columns = weight.shape[1] * math.prod(spatial)
    full = torch.zeros(groups * rows, groups * columns, dtype=torch.float64)
    for g, matrix in enumerate(_group_matrices(weight, spatial, geometry)):
        if matrix is not None:
            full[g * rows:(g + 1) * rows, g * columns:(g + 1) * columns] = matrix
    return full


def conv_dense_entries(weight: torch.Tensor, input_shape: Sequence[int], *, stride=1,
                       padding=0, dilation=1, groups=1) -> int:
    """Number of entries of :func:`conv_dense_matrix` (to decide whether to build it).

    >>> import torch
    >>> conv_dense_entries(torch.ones(1, 1, 2), (3,))
    6
    """
    dims = weight.dim() - 2
    spatial = tuple(int(n) for n in input_shape)[-dims:]
    outputs = math.prod(output_size(n, k, s, d, p) for n, k, s, d, p in zip(
        spatial, weight.shape[2:], as_tuple(stride, dims, "stride", "conv_dense_entries"),
        as_tuple(dilation, dims, "dilation", "conv_dense_entries"),
        as_tuple(padding, dims, "padding", "conv_dense_entries")))
    return weight.shape[0] * outputs * weight.shape[1] * groups * math.prod(spatial)
