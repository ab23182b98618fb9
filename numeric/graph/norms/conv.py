r"""Certified operator norms of convolutions: one layer, many layers, and an estimate.

After the exact rewriting of :mod:`~numeric.graph.norms.geometry` (groups, stride,
dilation, padding modes), a layer is a stride-1 "valid" correlation with kernel
:math:`K_t` of a zero-padded signal. Its norm is bounded by one of:

``'dense'``
    the exact norm of the explicit matrix on the layer's grid
    (:mod:`~numeric.graph.norms.dense`); cubic in the grid size, tiny layers only.
``'grid'``
    :math:`\max_\omega \|\hat K(\omega)\|_2` over the DFT frequencies of a grid of
    :math:`N_d \ge` the padded length: the layer is a restriction of the circular
    correlation on that grid, whose norm is this maximum (Sedghi, Gupta and Long 2019).
    Certified per frequency by :func:`~numeric.graph.norms.spectral.certified_symbol_maximum`
    (at most about 0.1 % above the exact maximum).
``'torus'``
    a bound on :math:`S = \sup_{\omega \in \mathbb{T}^D} \|\hat K(\omega)\|_2`, which bounds
    the layer at *every* input size, from a lattice of frequencies with weighted covering
    radius :math:`\sigma` (:func:`~numeric.graph.norms.spectral.torus_points`):

    .. math:: S \le \max_{\text{lattice}} \|\hat K\|_2 \,/\, (1 - \sigma^2/2).

    Proof: centre the taps (a phase, norms unchanged), so every tap offset satisfies
    :math:`|t_d - c_d| \le c_d = (k_d - 1)/2`. Let :math:`\omega^*` attain :math:`S` with
    singular vectors :math:`u, v` and let :math:`\omega^* + \delta` be the lattice point
    nearest in :math:`\sum_d c_d|\delta_d| \le \sigma`. :math:`g(s) = \mathrm{Re}\,
    e^{i\theta} u^H \hat K_c(\omega^* + s\delta) v` is a real exponential sum of type
    :math:`\le \sigma`, bounded by :math:`S` on :math:`\mathbb{R}`, with its maximum
    :math:`S` at 0; Bernstein's inequality applied twice gives :math:`|g''| \le \sigma^2 S`,
    so :math:`\|\hat K(\omega^* + \delta)\| \ge g(1) \ge S(1 - \sigma^2/2)`. ``rtol`` sets
    :math:`\sigma` so that :math:`1/(1 - \sigma^2/2) \le 1 + \mathrm{rtol}`.
``'auto'``
    the dense matrix when it has at most :math:`2^{23}` entries and costs at most 8 times a
    frequency method (or the padding mode is not zeros), else the grid unless it costs
    more than about 5 GFLOP beyond the torus lattice (the grid is tighter), else the torus.

Cost of ``'grid'`` and ``'torus'``: the Gram kernel, :math:`O(a d^2 |t|^2/2)` flops
(:math:`d \le a` the channel counts of a group), then per frequency one
:math:`d \times d` complex Cholesky factorisation (:math:`O(d^3/3)`); the number of
frequencies is :math:`\approx \prod_d N_d / 2` for the grid and
:math:`\approx \prod_d M_d / 4` for the torus (:math:`M_d \approx 2 D c_d \pi/\sigma`), so
the torus is independent of the input size.

References
----------
H. Sedghi, V. Gupta and P. M. Long, "The Singular Values of Convolutional Layers",
ICLR 2019, arXiv:1805.10408.
A. Araujo, B. Negrevergne, Y. Chevaleyre and J. Atif, "On Lipschitz Regularization of
Convolutional Layers using Toeplitz Matrix Theory", AAAI 2021, arXiv:2006.08391.
B. Delattre, Q. Barthélemy, A. Araujo and A. Allauzen, "Efficient Bound of Lipschitz
Constant for Convolutional Layers by Gram Iteration", ICML 2023, arXiv:2305.16173.
R. P. Boas, *Entire Functions*, Academic Press 1954, Thm 11.1.2 (Bernstein's inequality).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from numeric.errors import InputError
from numeric.graph.norms.dense import dense_cost, dense_norm
from numeric.graph.norms.geometry import (ConvGeometry, Reduced, as_tuple,
                                          padding_multiplicity, reduce_kernel)
from numeric.graph.norms.linear import CERTIFICATION_FACTOR, UNIT_ROUNDOFF
from numeric.graph.norms.spectral import (certified_symbol_maximum, grid_frequencies,
                                          torus_frequencies, torus_points)

__all__ = ["DEFAULT_RTOL", "METHODS", "conv_operator_norm_bound", "conv_operator_norm_estimate",
           "resolve_geometry", "choose_method"]

#: Default slack of the torus method: its bound is at most 2 % above the supremum.
DEFAULT_RTOL = 0.02

#: The values of ``method``.
METHODS = ("auto", "dense", "grid", "torus")

#: Largest dense operator (entries) that method 'auto' builds.
_DENSE_ENTRIES = 2 ** 23

#: Flops 'auto' spends beyond the torus to get the grid (about 0.3 s of one core): the
#: grid is within 0.1 % of the circulant norm, the torus within ``rtol`` of the supremum.
_GRID_ALLOWANCE = 5e9

#: 'auto' takes the exact dense route when it costs at most this many times a frequency
#: method: on grids not much larger than the kernel the circular embedding is loose (1.5x
#: on vgg16's 2x2 layers at 32x32 input), the dense norm exact.
_DENSE_PREFERENCE = 8


def resolve_geometry(weight, input_shape, stride, padding, dilation, groups, padding_mode,
                     caller: str = "conv_operator_norm_bound",
                     ) -> tuple[torch.Tensor, tuple[int, ...], ConvGeometry]:
    """Validate one layer: (float64 kernel, spatial size, geometry), or an ``InputError``."""
    if isinstance(weight, nn.Module):
        geometry = ConvGeometry.of(weight)
        weight = weight.weight
    else:
        dims = weight.dim() - 2
        geometry = ConvGeometry(as_tuple(stride, dims, "stride", caller),
                                as_tuple(padding, dims, "padding", caller),
                                as_tuple(dilation, dims, "dilation", caller), int(groups),
                                padding_mode)
    dims = weight.dim() - 2
    spatial = tuple(int(n) for n in input_shape)[-dims:] if dims > 0 else ()
    if (dims < 1 or len(spatial) != dims or geometry.groups < 1
            or weight.shape[0] % geometry.groups or min(spatial) < 1):
        raise InputError(f"{caller}: expected a kernel (c_out, c_in/groups, *k) with c_out "
                         f"divisible by groups={geometry.groups} and a positive {dims}-d "
                         f"input size, got kernel {tuple(weight.shape)} and input "
                         f"{tuple(input_shape)}.")
    if weight.is_complex() or not bool(torch.isfinite(weight).all()):
        raise InputError(f"{caller}: expected finite real weights, got "
                         f"{'complex' if weight.is_complex() else 'non-finite'} entries.")
    if geometry.padding_mode not in ("zeros", "reflect", "replicate", "circular"):
        raise InputError(f"{caller}: expected padding_mode 'zeros', 'reflect', 'replicate' "
                         f"or 'circular', got {geometry.padding_mode!r}.")
    return weight.detach().to("cpu", torch.float64), spatial, geometry


def _grid_sizes(reduced: Reduced) -> list[int]:
    taps = reduced.kernel.shape[3:]
    return [1 if t == 1 else max(n, t) for n, t in zip(reduced.grid, taps)]


def _reaches(reduced: Reduced) -> list[float]:
    return [(t - 1) / 2 for t in reduced.kernel.shape[3:]]


def _radius(rtol: float) -> float:
    r""":math:`\sigma` with :math:`1/(1 - \sigma^2/2) = 1 + \mathrm{rtol}`."""
    return math.sqrt(2 * rtol / (1 + rtol))


def _point_counts(reduced: Reduced, rtol: float) -> tuple[float, float]:
    """About how many frequencies the grid and the torus lattice certify (one of each
    conjugate pair; the torus lattice is a checkerboard in two or more dimensions)."""
    sizes, _ = torus_points(_reaches(reduced), _radius(rtol))
    checkerboard = 2 if sum(m > 1 for m in sizes) >= 2 else 1
    return math.prod(_grid_sizes(reduced)) / 2, math.prod(sizes) / checkerboard / 2


def _frequency_cost(reduced: Reduced, points: float) -> float:
    """Flops of a frequency method certifying ``points`` frequencies."""
    groups, m, n = reduced.kernel.shape[:3]
    taps = math.prod(reduced.kernel.shape[3:])
    small, large = sorted((m, n))
    offsets = math.prod(2 * t - 1 for t in reduced.kernel.shape[3:])
    gram = large * small ** 2 * taps * (taps + 1) / 2
    return groups * (gram + points * (2 * offsets * small ** 2 + 3.0 * small ** 3))


def choose_method(reduced: Reduced, rtol: float) -> str:
    """``'grid'`` (tighter: within 0.1 % of the circulant norm) unless it costs more than
    :data:`_GRID_ALLOWANCE` flops beyond the torus lattice, else ``'torus'``."""
    grid, torus = _point_counts(reduced, rtol)
    extra = _frequency_cost(reduced, grid) - _frequency_cost(reduced, torus)
    return "grid" if extra <= _GRID_ALLOWANCE else "torus"


def _check_options(method: str, rtol: float, caller: str) -> None:
    if method not in METHODS:
        raise InputError(f"{caller}: expected method 'auto', 'dense', 'grid' or 'torus', "
                         f"got {method!r}.")
    if not (isinstance(rtol, (int, float)) and 1e-6 <= rtol <= 0.5):
        raise InputError(f"{caller}: expected rtol in [1e-6, 0.5], got {rtol!r}.")


def conv_operator_norm_bound(weight: torch.Tensor | nn.Module,
                             input_shape: Sequence[int], *,
                             stride: int | Sequence[int] = 1,
                             padding: int | Sequence[int] = 0,
                             dilation: int | Sequence[int] = 1,
                             groups: int = 1,
                             padding_mode: str = "zeros",
                             method: str = "auto",
                             rtol: float = DEFAULT_RTOL) -> float:
    r"""Certified upper bound on the operator 2-norm of a convolution on a given input grid.

    Parameters
    ----------
    weight : Tensor of shape (c_out, c_in / groups, *kernel), or an ``nn.Conv{1,2,3}d``
        The kernel, finite and real. A module supplies its own stride, padding, dilation,
        groups and padding mode (the keyword arguments are then ignored).
    input_shape : sequence of int
        The spatial size of the input, ``(H, W)`` for a 2-d convolution (a leading channel
        or batch dimension is dropped when given).
    stride, padding, dilation, groups, padding_mode
        As in ``torch.nn.Conv2d``. ``padding_mode`` other than ``'zeros'`` multiplies the
        zero-padding bound by the exact norm of the padding operator,
        :math:`\sqrt{\text{largest number of copies of one input entry}}`.
    method : {'auto', 'dense', 'grid', 'torus'}
        See :mod:`numeric.graph.norms.conv`: the exact dense norm; the circular embedding
        on the layer's grid; a bound valid at every input size; the cheapest of these.
    rtol : float
        Largest relative slack of ``'torus'`` over the supremum of the symbol norm (it also
        decides between grid and torus under ``'auto'``).

    Returns
    -------
    float
        A certified upper bound on :math:`\|\mathrm{conv}\|_2` (the bias does not enter),
        multiplied by :data:`CERTIFICATION_FACTOR` after the explicit rounding bounds.
        Cost: see the module docstring (for vgg16's 512-channel 3x3 layers at 224x224,
        130 to 260 complex Cholesky factorisations of size 512 each, about 2 to 4 s of
        one CPU core).

    Raises
    ------
    InputError
        If the shapes do not fit together, the weights are not finite and real, or
        ``method`` / ``rtol`` / ``padding_mode`` is unknown.

    Examples
    --------
    A 1x1 convolution is the matrix applied at every pixel, so the bound is its norm:

    >>> import torch
    >>> w = torch.tensor([[3.0, 4.0]]).reshape(1, 2, 1, 1)
    >>> round(conv_operator_norm_bound(w, (5, 5)), 6)
    5.0
    """
    _check_options(method, rtol, "conv_operator_norm_bound")
    weight, spatial, geometry = resolve_geometry(weight, input_shape, stride, padding,
                                                 dilation, groups, padding_mode)
    if weight.numel() == 0 or not bool(weight.any()):
        return 0.0
    if method == "dense":
        return dense_norm(weight, spatial, geometry) * CERTIFICATION_FACTOR
    padding_factor = 1.0
    zero_padded_spatial, zero_padded = spatial, geometry
    if geometry.padding_mode != "zeros":
        padding_factor = math.sqrt(padding_multiplicity(spatial, geometry))
        zero_padded_spatial = tuple(n + 2 * p for n, p in zip(spatial, geometry.padding))
        zero_padded = ConvGeometry(geometry.stride, (0,) * len(spatial), geometry.dilation,
                                   geometry.groups)
    reduced = reduce_kernel(weight, zero_padded_spatial, zero_padded)
    if reduced.kernel.numel() == 0 or not bool(reduced.kernel.any()):
        return 0.0
    if method == "auto":
        method = choose_method(reduced, rtol)
        cost, size = dense_cost(weight, spatial, geometry)
        points = _point_counts(reduced, rtol)[0 if method == "grid" else 1]
        if size <= _DENSE_ENTRIES and (cost <= _DENSE_PREFERENCE * _frequency_cost(
                reduced, points) or padding_factor > 1):
            return dense_norm(weight, spatial, geometry) * CERTIFICATION_FACTOR
    if method == "grid":
        value = certified_symbol_maximum(reduced.kernel,
                                         grid_frequencies(_grid_sizes(reduced)))
    else:
        frequencies, sigma = torus_frequencies(_reaches(reduced), _radius(rtol))
        shrink = 1 - sigma * sigma / 2 - 4 * UNIT_ROUNDOFF      # rounded down
        value = certified_symbol_maximum(reduced.kernel, frequencies) / shrink
    return value * padding_factor * CERTIFICATION_FACTOR


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
        The estimate :math:`\|C v\|` at the last iterate. Cost: two convolutions per
        iteration.
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
