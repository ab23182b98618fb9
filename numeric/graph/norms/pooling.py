r"""Exact operator norms of pooling: window coverage and separable average pooling."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from numeric.graph.norms.linear import linear_operator_norm

__all__ = ["pooling_coverage", "avgpool_operator_norm"]


def pooling_coverage(length: int, out_length: int, kernel: int, stride: int, padding: int,
                     dilation: int = 1) -> int:
    """Largest number of pooling windows that contain one input position (1-d).

    Windows start at ``stride * i - padding`` for ``i < out_length`` (PyTorch's convention,
    ``ceil_mode`` included through ``out_length``) and read ``kernel`` taps ``dilation``
    apart; only positions inside ``[0, length)`` count.

    Examples
    --------
    >>> pooling_coverage(5, 4, kernel=2, stride=1, padding=0)
    2
    """
    counts = [0] * length
    for i in range(out_length):
        for t in range(kernel):
            position = stride * i - padding + dilation * t
            if 0 <= position < length:
                counts[position] += 1
    return max(counts, default=0)


def avgpool_operator_norm(pool_1d: Callable[[torch.Tensor, int], torch.Tensor],
                          input_sizes: Sequence[int]) -> float:
    r"""Certified norm of a separable average pooling on one channel.

    ``pool_1d(signal, dim)`` applies the pooling of spatial dimension ``dim`` to a batch of
    1-d signals ``(B, 1, n)``; applied to the identity it yields the 1-d pooling matrix
    :math:`P_d`. Average pooling (fixed or adaptive; divisors that depend on the window
    count factor per dimension) is :math:`P_1 \otimes \dots \otimes P_D` on every channel,
    so its norm is :math:`\prod_d \|P_d\|_2`, computed exactly here (each factor certified
    by :func:`linear_operator_norm`). Cost :math:`O(\sum_d n_d^3)`.
    """
    value = 1.0
    for dim, n in enumerate(input_sizes):
        eye = torch.eye(n, dtype=torch.float64).unsqueeze(1)
        matrix = pool_1d(eye, dim).reshape(n, -1).T
        value *= linear_operator_norm(matrix)
    return value
