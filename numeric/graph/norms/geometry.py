r"""The geometry of a convolution and its exact rewriting as a stride-1, undilated one.

Every step here maps the layer to an operator with the same norm, or to one that contains
it as a restriction (a restriction can only lower the norm), without rounding:

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
3. Taps that read only padding at every output are zeroed (the operator is unchanged) and
   all-zero edge taps are cropped (a shift of the signal, an isometry).
4. A padding mode other than ``'zeros'`` is zero padding of the padded signal composed with
   the padding map :math:`P`, whose norm is exactly :math:`\sqrt{m}`, ``m`` the largest
   number of copies of one input entry (:math:`P^\top P` is diagonal with the copy counts).
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

__all__ = ["ConvGeometry", "Reduced", "as_tuple", "output_size", "padding_multiplicity",
           "reduce_kernel"]


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


def as_tuple(value, dims: int, name: str,
             caller: str = "conv_operator_norm_bound") -> tuple[int, ...]:
    """``value`` repeated over ``dims`` dimensions, or checked to have ``dims`` entries."""
    if isinstance(value, int):
        return (value,) * dims
    value = tuple(int(v) for v in value)
    if len(value) != dims:
        raise InputError(f"{caller}: expected {name} with {dims} entries, got {value}.")
    return value


def output_size(n: int, k: int, s: int, d: int, p: int) -> int:
    """Output length of a 1-d convolution (PyTorch's formula)."""
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


@dataclass(frozen=True)
class Reduced:
    """A stride-1, undilated correlation equivalent (up to isometries) to the layer."""

    kernel: torch.Tensor          # (groups, c_out/g, c_in', *taps), float64
    grid: tuple[int, ...]         # length of the sub-grids the correlation runs on


def reduce_kernel(weight: torch.Tensor, spatial: Sequence[int],
                  geometry: ConvGeometry) -> Reduced:
    """Rewrite groups, stride and dilation away (module docstring, steps 1-3)."""
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
    return Reduced(_crop(reduced), tuple(grid))


def _mask_unreachable(kernel: torch.Tensor, spatial: Sequence[int],
                      geometry: ConvGeometry) -> torch.Tensor:
    """Zero the taps that read only padding at every output (an identical operator)."""
    kernel = kernel.clone()
    for dim, (k, n, s, d, p) in enumerate(zip(kernel.shape[3:], spatial, geometry.stride,
                                              geometry.dilation, geometry.padding)):
        outputs = output_size(n, k, s, d, p)
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


def padding_multiplicity(spatial: Sequence[int], geometry: ConvGeometry) -> float:
    """Largest number of copies of one input entry made by a non-zero padding mode."""
    if geometry.padding_mode not in ("reflect", "replicate", "circular"):
        raise InputError(f"conv_operator_norm_bound: expected padding_mode 'zeros', "
                         f"'reflect', 'replicate' or 'circular', got "
                         f"{geometry.padding_mode!r}.")
    index = torch.arange(math.prod(spatial), dtype=torch.float64).reshape(1, 1, *spatial)
    pad = [p for p in reversed(geometry.padding) for _ in range(2)]
    padded = F.pad(index, pad, mode=geometry.padding_mode)
    return float(torch.bincount(padded.reshape(-1).long()).max())
