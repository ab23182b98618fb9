r"""Exact Fisher spectrum from ``K`` batched vector-Jacobian products.

The nonzero eigenvalues of :math:`F = W^\top W` (``d x d``) are those of the ``K x K``
Gram matrix :math:`M = W W^\top = \Sigma_p^{1/2} J J^\top \Sigma_p^{1/2}` up to an
orthogonal similarity (see :mod:`numeric.fisher.operator` for the factor ``W``).
"""

from __future__ import annotations

import torch
from torch import nn

from numeric.fisher._validation import model_context
from numeric.fisher.operator import Linearization, prepare

__all__ = ["fisher_eigenvalues", "exact_spectrum", "exact_trace", "MAX_JACOBIAN_ENTRIES"]

#: Largest number of entries of the whitened Jacobian (rows x K x d) held at once; larger
#: batches are processed in row chunks.
MAX_JACOBIAN_ENTRIES = 2 ** 26


def _row_chunks(model: nn.Module, x: torch.Tensor, dtype: torch.dtype, caller: str,
                linearization: Linearization | None = None):
    """Yield a :class:`Linearization` per chunk of rows so that B K d stays bounded."""
    lin = linearization or Linearization(model, x, dtype=dtype, caller=caller)
    per_row = lin.num_classes * lin.num_features
    rows = max(1, MAX_JACOBIAN_ENTRIES // per_row)
    if rows >= lin.batch:
        yield lin
        return
    del lin
    for chunk in x.split(rows):
        yield Linearization(model, chunk, dtype=dtype, caller=caller)


def exact_spectrum(model: nn.Module, x: torch.Tensor, dtype: torch.dtype, caller: str, *,
                   linearization: Linearization | None = None) -> torch.Tensor:
    """Eigenvalues of ``M`` (B, K), descending; call inside :func:`model_context`.

    ``linearization`` (of the same ``x``) saves the first forward pass.
    """
    values = []
    for lin in _row_chunks(model, x, dtype, caller, linearization):
        r = lin.whitened_jacobian().to(torch.promote_types(dtype, torch.float32))
        gram = r @ r.transpose(1, 2)
        gram = (gram + gram.transpose(1, 2)) / 2
        spectrum = torch.linalg.eigvalsh(gram).flip(-1).to(dtype)  # half: solved in float32
        values.append(torch.cat([spectrum, spectrum.new_zeros(lin.batch, 1)], dim=1))
    return torch.cat(values)


def exact_trace(model: nn.Module, x: torch.Tensor, dtype: torch.dtype,
                caller: str) -> torch.Tensor:
    r""":math:`\operatorname{tr} F = \|W\|_F^2` per row (B,); call inside :func:`model_context`."""
    return torch.cat([lin.whitened_jacobian().square().sum(dim=(1, 2))
                      for lin in _row_chunks(model, x, dtype, caller)])


def fisher_eigenvalues(model: nn.Module, x: torch.Tensor, *,
                       dtype: torch.dtype | None = None) -> torch.Tensor:
    r"""All ``K`` eigenvalues of the input Fisher information that can be nonzero, exactly.

    .. math::

        F(x) = J^\top (\operatorname{diag} p - p p^\top) J, \qquad
        \operatorname{spec}(F) \setminus \{0\} =
        \operatorname{spec}(\Sigma_p^{1/2} J J^\top \Sigma_p^{1/2}) \setminus \{0\}.

    Parameters
    ----------
    model : nn.Module
        Returns logits of shape (B, K); evaluated in eval mode (its mode is restored).
    x : Tensor of shape (B, *S)
        A batch of inputs; moved to the model's device.
    dtype : torch.dtype, optional
        Computation dtype (default: the model's; ``torch.float64`` for reference values).

    Returns
    -------
    Tensor of shape (B, K)
        Eigenvalues in descending order, exact up to rounding (not an estimate). Because
        :math:`\Sigma_p \mathbf 1 = 0`, ``rank F <= K - 1``: the last one is 0 (returned
        as an exact 0, since it is never computed), and the other ``d - K`` eigenvalues of
        ``F`` are 0 and not returned.

    Raises
    ------
    InputError
        Bad shapes, non-finite inputs or logits, a model returning probabilities, K = 1.

    Notes
    -----
    Cost: one forward pass and ``K - 1`` backward passes over the batch, one VJP per
    vector :math:`u_j` of an orthonormal basis of :math:`\sqrt p^\perp` (cotangent
    :math:`\sqrt p \odot u_j`, giving the rows of :math:`U^\top W`, where
    :math:`W_k = \sqrt{p_k}\nabla\log p_k`), then :math:`O(K^2 d + K^3)` per row for the
    Gram matrix and ``eigvalsh``. Memory: ``B (K-1) d`` entries, processed in row chunks
    of at most
    :data:`MAX_JACOBIAN_ENTRIES` entries. This is the paper's exact white-box recipe,
    batched over inputs instead of one input at a time.

    References
    ----------
    Zhang et al., "Measuring Model Robustness via Fisher Information", arXiv:2606.04767.

    Examples
    --------
    >>> import torch
    >>> _ = torch.manual_seed(0)
    >>> model = torch.nn.Linear(3, 2).double()
    >>> values = fisher_eigenvalues(model, torch.zeros(5, 3, dtype=torch.float64))
    >>> values.shape, bool((values[:, 0] >= values[:, 1]).all())
    (torch.Size([5, 2]), True)
    """
    caller = "fisher_eigenvalues"
    x, dtype = prepare(caller, model, x, dtype)
    with model_context(model):
        return exact_spectrum(model, x, dtype, caller)
