r"""Certified operator norms of linear layers, convolutions and pooling, in float64.

Every function named ``*_norm`` or ``*_norm_bound`` returns a **certified upper bound** on an
operator 2-norm: the float64 value is multiplied by :data:`CERTIFICATION_FACTOR`, which
dominates the rounding error of the computation (see its comment), so that floating point
can never push a bound below the true norm. :func:`conv_operator_norm_estimate` is the one
exception: power iteration converges from below, its result is an *estimate* and is labelled
so wherever it is used.

Convolutions
------------
A convolution with zero padding, stride, dilation and groups is bounded in three exact
steps, each of which can only increase the norm:

1. *Groups* make the operator block diagonal: its norm is the largest group's.
2. *Stride and dilation* (per spatial dimension, :math:`s`, :math:`\delta`, :math:`g =
   \gcd(s, \delta)`): only input positions :math:`\equiv 0 \pmod g` are ever read, so the
   layer is a convolution with stride :math:`s/g` and dilation :math:`\delta/g` on that
   sub-grid. With stride 1 the dilated convolution splits into :math:`\delta` interleaved
   undilated ones with the same kernel (a direct sum). With stride :math:`s > 1` the
   *polyphase* rewriting is exact: tap :math:`t` reads phase :math:`(\delta t) \bmod s` at
   offset :math:`\lfloor \delta t / s \rfloor` of the phase sub-grids, so the layer is a
   stride-1 correlation with :math:`c_{in} s` input channels and a kernel of
   :math:`\lfloor \delta (k-1)/s \rfloor + 1` taps.
3. A stride-1 "valid" correlation of a zero-padded signal of length :math:`n` is a
   restriction of the circular correlation on any grid of length :math:`N \ge n` (no
   wrap-around reaches a valid output), so its norm is at most
   :math:`\max_\omega \|\hat K(\omega)\|_2` over the :math:`N`-point DFT frequencies
   (Sedghi, Gupta and Long 2019): ``method="grid"``, batched Hermitian eigenvalue problems,
   one per frequency. It is also at most the supremum over the continuous torus, which
   bounds the layer at *every* input size; ``method="torus"`` bounds that supremum from a
   coarse :math:`M`-point grid plus a certified second-order remainder (see
   :func:`_torus_bound`). ``method="auto"`` takes the grid when it is not larger than the
   torus grid.

References
----------
H. Sedghi, V. Gupta and P. M. Long, "The Singular Values of Convolutional Layers",
ICLR 2019, arXiv:1805.10408.
A. Araujo, B. Negrevergne, Y. Chevaleyre and J. Atif, "On Lipschitz Regularization of
Convolutional Layers using Toeplitz Matrix Theory", AAAI 2021, arXiv:2006.08391.
B. Delattre, Q. Barthélemy, A. Araujo and A. Allauzen, "Efficient Bound of Lipschitz
Constant for Convolutional Layers by Gram Iteration", ICML 2023, arXiv:2305.16173.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from numeric.errors import InputError

__all__ = [
    "CERTIFICATION_FACTOR",
    "linear_operator_norm",
    "conv_operator_norm_bound",
    "conv_operator_norm_estimate",
    "ConvGeometry",
    "conv_dense_matrix",
    "conv_dense_entries",
    "pooling_coverage",
    "avgpool_operator_norm",
]

#: Relative inflation applied to every certified float64 norm. The rounding error of a
#: Gram matrix with inner dimension m and of its Hermitian eigensolver is at most about
#: (m + n) * 2**-53 * ||A||**2 relative; 1e-8 dominates it for m + n up to 10**7, and the
#: DFT-by-matmul error (taps * 2**-53) as well. Multiplying a certified bound by a factor
#: >= 1 keeps it certified, and 1e-8 is invisible at the precision anyone reports.
CERTIFICATION_FACTOR = 1.0 + 1e-8

#: Largest number of complex entries of one chunk of per-frequency matrices.
_CHUNK_ENTRIES = 2 ** 22


def _spectral_norms(matrices: torch.Tensor) -> torch.Tensor:
    """Largest singular value of each matrix in a batch (B, m, n), through the smaller Gram."""
    if matrices.shape[-2] > matrices.shape[-1]:
        matrices = matrices.mH
    gram = matrices @ matrices.mH
    top = torch.linalg.eigvalsh(gram)[..., -1]
    return top.clamp_min(0).sqrt()


def linear_operator_norm(weight: torch.Tensor | nn.Module) -> float:
    r"""Certified spectral norm :math:`\|W\|_2` of a weight matrix (exact up to rounding).

    Parameters
    ----------
    weight : Tensor of shape (out, in), or an ``nn.Linear``
        The matrix; a tensor with more than two dimensions is read as
        ``weight.reshape(weight.shape[0], -1)``.

    Returns
    -------
    float
        :math:`\|W\|_2 \cdot` :data:`CERTIFICATION_FACTOR`, computed in float64 from the
        eigenvalues of the smaller Gram matrix. Cost :math:`O(mn\min(m, n))`.

    Examples
    --------
    >>> import torch
    >>> linear_operator_norm(torch.diag(torch.tensor([3.0, -4.0])))  # doctest: +ELLIPSIS
    4.00000...
    """
    if isinstance(weight, nn.Module):
        weight = weight.weight
    matrix = weight.detach().to("cpu", torch.float64)
    if matrix.dim() < 2:
        raise InputError(f"linear_operator_norm: expected a matrix, got shape "
                         f"{tuple(matrix.shape)}.")
    matrix = matrix.reshape(matrix.shape[0], -1)
    if matrix.numel() == 0:
        return 0.0
    return float(_spectral_norms(matrix.unsqueeze(0))[0]) * CERTIFICATION_FACTOR


@dataclass(frozen=True)
class ConvGeometry:
    """Stride, padding, dilation, groups and padding mode of an N-d convolution."""

    stride: tuple[int, ...]
    padding: tuple[int, ...]
    dilation: tuple[int, ...]
    groups: int = 1
    padding_mode: str = "zeros"

    @classmethod
    def of(cls, conv: nn.Module) -> ConvGeometry:
        """The geometry of an ``nn.Conv{1,2,3}d`` (``padding='same'`` resolved)."""
        padding = conv.padding
        if isinstance(padding, str):
            padding = _resolve_padding(padding, conv.kernel_size, conv.dilation)
        return cls(tuple(conv.stride), tuple(padding), tuple(conv.dilation), conv.groups,
                   conv.padding_mode)


def _resolve_padding(padding: str, kernel_size, dilation) -> tuple[int, ...]:
    """Left padding of ``'valid'``/``'same'``; 'same' may pad one more on the right, which is
    covered because we take the larger (right) amount on both sides."""
    if padding == "valid":
        return tuple(0 for _ in kernel_size)
    return tuple(math.ceil(d * (k - 1) / 2) for k, d in zip(kernel_size, dilation))


def _as_tuple(value, dims: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * dims
    value = tuple(int(v) for v in value)
    if len(value) != dims:
        raise InputError(f"conv_operator_norm_bound: expected {name} with {dims} entries, "
                         f"got {value}.")
    return value


@dataclass(frozen=True)
class _Reduced:
    """A stride-1, undilated correlation equivalent (up to isometries) to the layer."""

    kernel: torch.Tensor          # (groups, c_out/g, c_in', *taps), float64
    grid: tuple[int, ...]         # length of the sub-grids the correlation runs on


def _reduce(weight: torch.Tensor, spatial: Sequence[int], geometry: ConvGeometry,
            ) -> _Reduced:
    """Rewrite stride and dilation away (module docstring, step 2)."""
    c_out, c_in_group = weight.shape[:2]
    taps = weight.shape[2:]
    groups = geometry.groups
    kernel = weight.detach().to("cpu", torch.float64).reshape(groups, c_out // groups,
                                                              c_in_group, *taps)
    kernel = _mask_unreachable(kernel, spatial, geometry)
    phases, offsets, new_taps, grid = [], [], [], []
    for k, n, s, d, p in zip(taps, spatial, geometry.stride, geometry.dilation,
                             geometry.padding):
        g = math.gcd(s, d)
        length = -(-(n + 2 * p) // g)           # positions = 0 (mod g) of the padded input
        s, d = s // g, d // g
        if s == 1:
            phases.append([0] * k)
            offsets.append(list(range(k)))
            new_taps.append((1, k))
            grid.append(-(-length // d))        # the longest of the d interleaved grids
        else:
            phases.append([(d * t) % s for t in range(k)])
            offsets.append([(d * t) // s for t in range(k)])
            new_taps.append((s, (d * (k - 1)) // s + 1))
            grid.append(-(-length // s))
    shape = [n_phase for n_phase, _ in new_taps] + [n_tap for _, n_tap in new_taps]
    reduced = kernel.new_zeros(*kernel.shape[:3], *shape)
    dims = len(taps)
    for tap in itertools.product(*(range(k) for k in taps)):
        phase = tuple(phases[i][t] for i, t in enumerate(tap))
        offset = tuple(offsets[i][t] for i, t in enumerate(tap))
        reduced[(slice(None),) * 3 + phase + offset] = kernel[(slice(None),) * 3 + tap]
    reduced = reduced.reshape(*kernel.shape[:2], -1, *shape[dims:])
    return _Reduced(_crop(reduced), tuple(grid))


def _mask_unreachable(kernel: torch.Tensor, spatial: Sequence[int],
                      geometry: ConvGeometry) -> torch.Tensor:
    """Zero the taps that read only padding at every output (an identical operator)."""
    kernel = kernel.clone()
    for dim, (k, n, s, d, p) in enumerate(zip(kernel.shape[3:], spatial, geometry.stride,
                                              geometry.dilation, geometry.padding)):
        outputs = (n + 2 * p - d * (k - 1) - 1) // s + 1
        for t in range(k):
            first = p - d * t                     # s * i must lie in [first, first + n)
            lowest = max(0, -(-first // s))
            if not (lowest < outputs and s * lowest < first + n):
                kernel.select(3 + dim, t).zero_()
    return kernel


def _crop(kernel: torch.Tensor) -> torch.Tensor:
    """Drop all-zero taps at the edges: a correlation with kernel support [a, b] is the
    correlation with the cropped kernel on the signal shifted by a (a restriction)."""
    for dim in range(3, kernel.dim()):
        other = [d for d in range(kernel.dim()) if d != dim]
        used = kernel.abs().amax(dim=other) > 0
        if not used.any():
            return kernel.narrow(dim, 0, 0)
        index = used.nonzero().reshape(-1)
        kernel = kernel.narrow(dim, int(index[0]), int(index[-1] - index[0] + 1))
    return kernel


def _frequency_norms(kernel: torch.Tensor, frequencies: torch.Tensor) -> torch.Tensor:
    r"""max over groups of :math:`\|\hat K(\omega)\|_2` for each row of ``frequencies``.

    ``kernel`` (G, m, n, *taps); ``frequencies`` (F, dims) in radians. The DFT is a matmul
    with the phase matrix, chunked so memory stays bounded.
    """
    groups, m, n = kernel.shape[:3]
    taps = kernel.shape[3:]
    positions = torch.cartesian_prod(*(torch.arange(t, dtype=torch.float64) for t in taps))
    positions = positions.reshape(-1, len(taps))
    flat = kernel.reshape(groups * m * n, -1).to(torch.complex128)
    chunk = max(1, _CHUNK_ENTRIES // max(1, groups * m * n))
    norms = []
    for start in range(0, frequencies.shape[0], chunk):
        omega = frequencies[start:start + chunk]
        phase = torch.exp(-1j * (positions @ omega.T))          # (taps, F)
        symbol = (flat @ phase).reshape(groups, m, n, -1).permute(3, 0, 1, 2)
        norms.append(_spectral_norms(symbol).amax(dim=1))
    return torch.cat(norms)


def _grid_frequencies(sizes: Sequence[int]) -> torch.Tensor:
    """DFT frequencies of a grid, keeping one of each conjugate pair (the last dimension
    halved), since a real kernel has :math:`\\hat K(-\\omega) = \\overline{\\hat K(\\omega)}`."""
    axes = [2 * math.pi * torch.arange(n, dtype=torch.float64) / n for n in sizes[:-1]]
    last = sizes[-1]
    axes.append(2 * math.pi * torch.arange(last // 2 + 1, dtype=torch.float64) / last)
    return torch.cartesian_prod(*axes).reshape(-1, len(sizes))


def _grid_bound(reduced: _Reduced) -> float:
    return float(_frequency_norms(reduced.kernel,
                                  _grid_frequencies(_grid_sizes(reduced))).max())


def _torus_resolution(taps: Sequence[int]) -> list[int]:
    return [1 if t == 1 else max(32, 8 * t) for t in taps]


def _torus_bound(reduced: _Reduced) -> float:
    r"""Certified bound on :math:`S = \sup_{\omega \in \mathbb{T}^D}\|\hat K(\omega)\|_2`.

    Let :math:`\omega^*` attain S with unit singular vectors u, v, and centre the taps at
    :math:`c = (k - 1)/2` (a phase factor, which leaves every singular value unchanged).
    :math:`g(\omega) = \mathrm{Re}\, u^H \hat K_c(\omega) v \le \|\hat K(\omega)\| \le S`
    with equality at :math:`\omega^*`, so :math:`\nabla g(\omega^*) = 0` and Taylor's
    theorem at the nearest grid point :math:`\omega^* + \delta`,
    :math:`|\delta_d| \le \pi / M_d`, gives

    .. math::
        S \le \max_{\text{grid}} \|\hat K\| + \tfrac12 \sum_t \|K_t\|_2
              \Bigl(\sum_d \pi |t_d - c_d| / M_d\Bigr)^2 .
    """
    kernel = reduced.kernel
    taps = kernel.shape[3:]
    resolution = _torus_resolution(taps)
    top = float(_frequency_norms(kernel, _grid_frequencies(resolution)).max())
    tap_matrices = kernel.permute(*range(3, kernel.dim()), 0, 1, 2).reshape(
        -1, kernel.shape[0], kernel.shape[1], kernel.shape[2])
    tap_norms = _spectral_norms(tap_matrices.reshape(-1, *kernel.shape[1:3])).reshape(
        -1, kernel.shape[0]).amax(dim=1) * CERTIFICATION_FACTOR
    positions = torch.cartesian_prod(*(torch.arange(t, dtype=torch.float64) for t in taps))
    positions = positions.reshape(-1, len(taps))
    centre = torch.tensor([(t - 1) / 2 for t in taps], dtype=torch.float64)
    spacing = torch.tensor([math.pi / m for m in resolution], dtype=torch.float64)
    reach = ((positions - centre).abs() * spacing).sum(dim=1)
    return top + 0.5 * float((tap_norms * reach ** 2).sum())


def conv_operator_norm_bound(weight: torch.Tensor | nn.Module,
                             input_shape: Sequence[int], *,
                             stride: int | Sequence[int] = 1,
                             padding: int | Sequence[int] = 0,
                             dilation: int | Sequence[int] = 1,
                             groups: int = 1,
                             padding_mode: str = "zeros",
                             method: str = "auto") -> float:
    r"""Certified upper bound on the operator 2-norm of a convolution on a given input grid.

    Parameters
    ----------
    weight : Tensor of shape (c_out, c_in / groups, *kernel), or an ``nn.Conv{1,2,3}d``
        The kernel. A module supplies its own stride, padding, dilation, groups and
        padding mode (the keyword arguments are then ignored).
    input_shape : sequence of int
        The spatial size of the input, ``(H, W)`` for a 2-d convolution (a leading channel
        or batch dimension is dropped when given).
    stride, padding, dilation, groups, padding_mode
        As in ``torch.nn.Conv2d``. ``padding_mode`` other than ``'zeros'`` multiplies the
        zero-padding bound by the exact norm of the padding operator,
        :math:`\sqrt{\text{largest number of copies of one input entry}}`.
    method : {'auto', 'dense', 'grid', 'torus'}
        ``'dense'``: the exact norm of the explicit matrix of the layer on its grid (small
        layers only); ``'grid'``: exact spectrum of the circular embedding on the layer's
        own grid; ``'torus'``: a size-independent bound (valid at every input size), see
        :func:`_torus_bound`; ``'auto'``: the dense matrix when it is small and not more
        expensive, else the grid when its size does not exceed the torus grid, else the
        torus.

    Returns
    -------
    float
        A certified upper bound on :math:`\|\mathrm{conv}\|_2` (the bias does not enter).
        Cost: one batched Hermitian eigenvalue problem of size
        :math:`\min(c_{out}, c_{in} s^D)/\text{groups}` per frequency.

    Raises
    ------
    InputError
        If the shapes do not fit together or ``method`` is unknown.

    Examples
    --------
    A 1x1 convolution is the matrix applied at every pixel, so the bound is its norm:

    >>> import torch
    >>> w = torch.tensor([[3.0, 4.0]]).reshape(1, 2, 1, 1)
    >>> round(conv_operator_norm_bound(w, (5, 5)), 6)
    5.0
    """
    if isinstance(weight, nn.Module):
        geometry = ConvGeometry.of(weight)
        weight = weight.weight
    else:
        dims = weight.dim() - 2
        geometry = ConvGeometry(_as_tuple(stride, dims, "stride"),
                                _as_tuple(padding, dims, "padding"),
                                _as_tuple(dilation, dims, "dilation"), int(groups),
                                padding_mode)
    dims = weight.dim() - 2
    spatial = tuple(int(n) for n in input_shape)[-dims:] if dims else ()
    if dims < 1 or len(spatial) != dims or weight.shape[0] % geometry.groups:
        raise InputError(f"conv_operator_norm_bound: expected a kernel (c_out, c_in/groups, "
                         f"*k) with c_out divisible by groups={geometry.groups} and a "
                         f"{dims}-d input size, got kernel {tuple(weight.shape)} and input "
                         f"{tuple(input_shape)}.")
    if method not in ("auto", "dense", "grid", "torus"):
        raise InputError(f"conv_operator_norm_bound: expected method 'auto', 'dense', "
                         f"'grid' or 'torus', got {method!r}.")
    if weight.numel() == 0:
        return 0.0
    dense_cost, dense_size = _dense_cost(weight, spatial, geometry)
    if method == "dense":
        return _dense_norm(weight, spatial, geometry) * CERTIFICATION_FACTOR
    padding_factor = 1.0
    zero_padded_spatial, zero_padded = spatial, geometry
    if geometry.padding_mode != "zeros":
        padding_factor = math.sqrt(_padding_multiplicity(spatial, geometry))
        zero_padded_spatial = tuple(n + 2 * p for n, p in zip(spatial, geometry.padding))
        zero_padded = ConvGeometry(geometry.stride, (0,) * dims, geometry.dilation,
                                   geometry.groups)
    reduced = _reduce(weight, zero_padded_spatial, zero_padded)
    if reduced.kernel.numel() == 0:
        return 0.0
    taps = reduced.kernel.shape[3:]
    grid_sizes = _grid_sizes(reduced)
    torus_sizes = _torus_resolution(taps)
    if method == "auto":
        grid_cost = _frequency_cost(reduced, grid_sizes)
        torus_cost = _frequency_cost(reduced, torus_sizes)
        if dense_size <= _DENSE_ENTRIES and (dense_cost <= 2 * min(grid_cost, torus_cost)
                                             or padding_factor > 1):
            return _dense_norm(weight, spatial, geometry) * CERTIFICATION_FACTOR
        method = "grid" if math.prod(grid_sizes) <= math.prod(torus_sizes) else "torus"
    value = _grid_bound(reduced) if method == "grid" else _torus_bound(reduced)
    return value * padding_factor * CERTIFICATION_FACTOR


#: Largest dense operator (entries) that method 'auto' builds.
_DENSE_ENTRIES = 2 ** 23


def _output_size(n: int, k: int, s: int, d: int, p: int) -> int:
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def _dense_cost(weight, spatial, geometry) -> tuple[float, int]:
    """(flops, entries per group) of the exact dense route."""
    groups = geometry.groups
    n_in = weight.shape[1] * math.prod(spatial)
    n_out = weight.shape[0] // groups * math.prod(
        _output_size(n, k, s, d, p) for n, k, s, d, p in zip(
            spatial, weight.shape[2:], geometry.stride, geometry.dilation, geometry.padding))
    small, large = sorted((n_in, n_out))
    taps = math.prod(weight.shape[2:])
    return groups * (float(small) ** 2 * large + 4.0 * small ** 3 + taps * n_in * n_out), \
        n_in * n_out


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
    outputs = _output_size(n, k, s, d, p)
    select = torch.zeros(k, outputs, n, dtype=torch.float64)
    for t in range(k):
        for i in range(outputs):
            j = source[s * i + d * t]
            if j >= 0:
                select[t, i, j] += 1
    return select


def _group_matrices(weight, spatial, geometry) -> list[torch.Tensor | None]:
    r"""The explicit matrix :math:`\sum_t W_t \otimes S_t` of each group (:math:`S_t` the
    0/1 matrix of tap t on the grid, any padding mode); rows (out channel, out position),
    columns (in channel, in position), channels within the group. None: all zero."""
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


def _dense_norm(weight, spatial, geometry) -> float:
    """Exact norm of the layer on its grid: the largest group's explicit matrix norm."""
    return max((float(_spectral_norms(m.unsqueeze(0))[0])
                for m in _group_matrices(weight, spatial, geometry) if m is not None),
               default=0.0)


def conv_dense_matrix(weight: torch.Tensor, input_shape: Sequence[int], *, stride=1,
                      padding=0, dilation=1, groups=1, padding_mode="zeros") -> torch.Tensor:
    """The explicit matrix of a convolution on its grid, float64 on the CPU.

    Shape ``(c_out * prod(out_size), c_in * prod(input_shape))``: rows and columns in the
    order of ``flatten`` of (channels, *spatial), so that elementwise factors before and
    after the layer are diagonal matrices on its columns and rows.
    """
    dims = weight.dim() - 2
    spatial = tuple(int(n) for n in input_shape)[-dims:]
    geometry = ConvGeometry(_as_tuple(stride, dims, "stride"),
                            _as_tuple(padding, dims, "padding"),
                            _as_tuple(dilation, dims, "dilation"), int(groups), padding_mode)
    outputs = math.prod(_output_size(n, k, s, d, p) for n, k, s, d, p in zip(
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
    """Number of entries of :func:`conv_dense_matrix` (to decide whether to build it)."""
    dims = weight.dim() - 2
    spatial = tuple(int(n) for n in input_shape)[-dims:]
    outputs = math.prod(_output_size(n, k, s, d, p) for n, k, s, d, p in zip(
        spatial, weight.shape[2:], _as_tuple(stride, dims, "stride"),
        _as_tuple(dilation, dims, "dilation"), _as_tuple(padding, dims, "padding")))
    return weight.shape[0] * outputs * weight.shape[1] * groups * math.prod(spatial)


def _grid_sizes(reduced: _Reduced) -> list[int]:
    taps = reduced.kernel.shape[3:]
    return [1 if t == 1 else max(n, t) for n, t in zip(reduced.grid, taps)]


def _frequency_cost(reduced: _Reduced, sizes: Sequence[int]) -> float:
    groups, m, n = reduced.kernel.shape[:3]
    taps = math.prod(reduced.kernel.shape[3:])
    small, large = sorted((m, n))
    frequencies = math.prod(sizes[:-1]) * (sizes[-1] // 2 + 1)
    return frequencies * groups * 4.0 * (m * n * taps + small ** 2 * large + 10 * small ** 3)


def _padding_multiplicity(spatial: Sequence[int], geometry: ConvGeometry) -> float:
    """Largest number of copies of one input entry made by a non-zero padding mode."""
    mode = {"reflect": "reflect", "replicate": "replicate", "circular": "circular"}.get(
        geometry.padding_mode)
    if mode is None:
        raise InputError(f"conv_operator_norm_bound: unknown padding_mode "
                         f"{geometry.padding_mode!r}.")
    index = torch.arange(math.prod(spatial), dtype=torch.float64).reshape(1, 1, *spatial)
    pad = [p for p in reversed(geometry.padding) for _ in range(2)]
    padded = F.pad(index, pad, mode=mode)
    return float(torch.bincount(padded.reshape(-1).long()).max())


def conv_operator_norm_estimate(weight: torch.Tensor | nn.Module,
                                input_shape: Sequence[int], *, stride=1, padding=0,
                                dilation=1, groups=1, max_iter: int = 200,
                                tol: float = 1e-10,
                                generator: torch.Generator | None = None) -> float:
    r"""Power-iteration **estimate** (a lower bound, not a certificate) of a conv's norm.

    Iterates :math:`v \leftarrow C^\top C v / \|C^\top C v\|` with the convolution and its
    adjoint on the actual ``input_shape`` (channels first, no batch), in float64. The
    Rayleigh quotient converges to :math:`\|C\|_2^2` from below; use it to see how close
    :func:`conv_operator_norm_bound` is, never in place of it.

    Parameters
    ----------
    weight : Tensor or ``nn.Conv{1,2,3}d``
    input_shape : sequence of int
        ``(c_in, *spatial)``.
    max_iter, tol, generator
        Iteration budget, relative change at which to stop, random start.

    Returns
    -------
    float
        The estimate :math:`\|C v\|` at the last iterate.
    """
    if isinstance(weight, nn.Module):
        module = weight
        weight = module.weight
        stride, dilation, groups = module.stride, module.dilation, module.groups
        padding = module.padding
    weight = weight.detach().to(torch.float64)
    dims = weight.dim() - 2
    conv = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[dims]
    vector = torch.randn(1, *input_shape, dtype=torch.float64, generator=generator)

    def forward(v):
        return conv(v, weight, stride=stride, padding=padding, dilation=dilation,
                    groups=groups)

    estimate = 0.0
    for _ in range(max_iter):
        vector = vector / vector.norm()
        vector.requires_grad_(True)
        out = forward(vector)
        new = float(out.detach().norm())
        (gram_vector,) = torch.autograd.grad(0.5 * out.pow(2).sum(), vector)
        vector = gram_vector.detach()
        if new == 0.0 or abs(new - estimate) <= tol * new:
            return new
        estimate = new
    return estimate


def pooling_coverage(length: int, out_length: int, kernel: int, stride: int, padding: int,
                     dilation: int = 1) -> int:
    """Largest number of pooling windows that contain one input position (1-d).

    Windows start at ``stride * i - padding`` for ``i < out_length`` (PyTorch's convention,
    ``ceil_mode`` included through ``out_length``) and read ``kernel`` taps ``dilation``
    apart; only positions inside ``[0, length)`` count.
    """
    counts = [0] * length
    for i in range(out_length):
        for t in range(kernel):
            position = stride * i - padding + dilation * t
            if 0 <= position < length:
                counts[position] += 1
    return max(counts, default=0)


def avgpool_operator_norm(pool_1d, input_sizes: Sequence[int]) -> float:
    r"""Certified norm of a separable average pooling on one channel.

    ``pool_1d(signal, dim)`` applies the pooling of spatial dimension ``dim`` to a batch of
    1-d signals ``(B, 1, n)``; applied to the identity it yields the 1-d pooling matrix
    :math:`P_d`. Average pooling (fixed or adaptive; divisors that depend on the window
    count factor per dimension) is :math:`P_1 \otimes \dots \otimes P_D` on every channel,
    so its norm is :math:`\prod_d \|P_d\|_2`, computed exactly here.
    """
    value = 1.0
    for dim, n in enumerate(input_sizes):
        eye = torch.eye(n, dtype=torch.float64).unsqueeze(1)
        matrix = pool_1d(eye, dim).reshape(n, -1).T
        value *= linear_operator_norm(matrix)
    return value
