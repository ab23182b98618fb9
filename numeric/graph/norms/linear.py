r"""Certified spectral norms of matrices, and the rounding constants every norm here uses.

Rounding model (Higham, *Accuracy and Stability of Numerical Algorithms*, 2nd ed., 2002,
§2.2 and §3.1): every float64 operation returns the exact result times :math:`1 + \delta`,
:math:`|\delta| \le u = 2^{-53}` (plus an absolute :math:`2^{-1074}` on underflow), so an
inner product of length :math:`n` is off by at most :math:`\gamma_n\,|a|^\top|b|`,
:math:`\gamma_n = nu/(1 - nu)`, in any summation order.
"""

from __future__ import annotations

import torch
from torch import nn

from numeric.errors import InputError

__all__ = ["CERTIFICATION_FACTOR", "UNIT_ROUNDOFF", "gamma", "linear_operator_norm",
           "power_of_two_scale", "spectral_norms"]

#: Relative inflation applied to every certified float64 norm. The rounding error of a
#: Gram matrix with inner dimension m and of its Hermitian eigensolver is at most about
#: (m + n) * 2**-53 * ||A||**2 relative; 1e-8 dominates it for m + n up to 10**7, and the
#: DFT-by-matmul error (taps * 2**-53) as well. Multiplying a certified bound by a factor
#: >= 1 keeps it certified, and 1e-8 is invisible at the precision anyone reports. The
#: frequency-domain convolution bounds add their own explicit rounding bound first
#: (:mod:`numeric.graph.norms.spectral`) and apply this factor to the last few scalar
#: operations only.
CERTIFICATION_FACTOR = 1.0 + 1e-8

#: Unit roundoff of float64 (round to nearest).
UNIT_ROUNDOFF = 2.0 ** -53


def gamma(n: int) -> float:
    r""":math:`\gamma_n = nu/(1 - nu)`, Higham's bound on the relative error of n roundings.

    >>> gamma(1) > 2.0 ** -53
    True
    """
    product = n * UNIT_ROUNDOFF
    if product >= 0.5:
        raise InputError(f"gamma: expected n * 2**-53 < 1/2, got n = {n}.")
    return product / (1.0 - product)


def power_of_two_scale(tensor: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
    """``tensor * 2**exponents`` in two exact half steps (one factor ``2**e`` with
    ``|e| > 1023`` is not a float64)."""
    half = torch.div(exponents, 2, rounding_mode="floor")
    return torch.ldexp(torch.ldexp(tensor, half), exponents - half)


def spectral_norms(matrices: torch.Tensor) -> torch.Tensor:
    """Largest singular value of each matrix in a batch (B, m, n), through the smaller Gram.

    Each matrix is first scaled by the power of two that brings its largest entry into
    [1/2, 1), so the Gram matrix neither overflows nor underflows; entries that underflow
    in that scaling change the norm by less than ``sqrt(mn) 2**-1074`` of its value (the
    norm is at least the largest entry). Not inflated: callers multiply by
    :data:`CERTIFICATION_FACTOR`.
    """
    if matrices.shape[-2] > matrices.shape[-1]:
        matrices = matrices.mH
    largest = matrices.abs().amax(dim=(-2, -1), keepdim=True)
    exponents = torch.frexp(largest.real if largest.is_complex() else largest).exponent
    scaled = power_of_two_scale(matrices, -exponents)
    gram = scaled @ scaled.mH
    top = torch.linalg.eigvalsh(gram)[..., -1].clamp_min(0).sqrt()
    return power_of_two_scale(top, exponents.reshape(top.shape))


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

    Raises
    ------
    InputError
        If ``weight`` has fewer than two dimensions.

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
    return float(spectral_norms(matrix.unsqueeze(0))[0]) * CERTIFICATION_FACTOR
