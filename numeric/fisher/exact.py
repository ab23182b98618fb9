r"""Exact Fisher spectrum from ``K`` batched vector-Jacobian products.

The nonzero eigenvalues of :math:`F = W^\top W` (``d x d``) are those of the ``K x K``
Gram matrix :math:`M = W W^\top = \Sigma_p^{1/2} J J^\top \Sigma_p^{1/2}` up to an
orthogonal similarity (see :mod:`numeric.fisher.operator` for the factor ``W``).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from numeric.fisher._validation import model_context
from numeric.fisher.operator import Linearization, prepare, softmax_complement_basis
from numeric.fisher._docs import DEVICE, MODEL_X
from theory.docstrings import fill_doc

__all__ = ["fisher_eigenvalues", "exact_spectrum", "exact_trace", "whitened_jacobian",
           "replicas", "MAX_JACOBIAN_ENTRIES", "TARGET_ROWS", "MAX_REPLICATED_ENTRIES"]

#: Largest number of entries of the whitened Jacobian (rows x K x d) held at once; larger
#: batches are processed in row chunks.
MAX_JACOBIAN_ENTRIES = 2 ** 26

#: Rows per backward pass the exact path aims for, by device type. Small batches leave the
#: kernels latency-bound: torchvision resnet18 at 32x32 on one CPU thread costs 4.5 ms per
#: VJP row at batch 2 and 1.0 ms at batch 64.
TARGET_ROWS = {"cpu": 64, "cuda": 512}

#: Largest replicated input (rows x d entries) built for one pass: a proxy for the memory
#: of its autograd graph where it cannot be measured (on CUDA it is, see :func:`replicas`).
MAX_REPLICATED_ENTRIES = 2 ** 23


def _row_chunks(model: nn.Module, x: torch.Tensor, dtype: torch.dtype, caller: str,
                device: torch.device, linearization: Linearization | None = None):
    """Yield a :class:`Linearization` per chunk of rows so that B K d stays bounded."""
    lin = linearization or Linearization(model, x, dtype=dtype, caller=caller, device=device)
    per_row = lin.num_classes * lin.num_features
    rows = max(1, MAX_JACOBIAN_ENTRIES // per_row)
    if rows >= lin.batch:
        yield lin
        return
    del lin
    for chunk in x.split(rows):
        yield Linearization(model, chunk, dtype=dtype, caller=caller, device=device)


def replicas(lin: Linearization, device: torch.device) -> int:
    """Copies ``c`` of each row in one backward pass, so that ``c`` VJPs share a pass.

    ``c = min(K - 1, TARGET_ROWS // B, memory cap)``, at least 1, then evened out so that
    the ``ceil((K - 1) / c)`` passes waste few rows. The memory cap is, on CUDA, that the
    replicated graph fits in half the free memory (from the measured size
    ``lin.graph_bytes`` of the graph of the ``B`` rows), elsewhere
    ``MAX_REPLICATED_ENTRIES // (B d)``.
    """
    batch, classes = lin.batch, lin.num_classes
    copies = min(classes - 1, TARGET_ROWS.get(device.type, TARGET_ROWS["cpu"]) // batch)
    if device.type == "cuda" and lin.graph_bytes:
        free, _ = torch.cuda.mem_get_info(device)
        copies = min(copies, free // (2 * lin.graph_bytes))
    else:
        copies = min(copies, MAX_REPLICATED_ENTRIES // (batch * lin.num_features))
    if copies <= 1:
        return 1
    passes = math.ceil((classes - 1) / copies)
    return math.ceil((classes - 1) / passes)


def whitened_jacobian(model: nn.Module, lin: Linearization, *, dtype: torch.dtype,
                      caller: str, device: torch.device) -> torch.Tensor:
    r"""``R = U^\top W`` for an orthonormal basis ``U`` of :math:`s^\perp`: (B, K-1, d).

    ``W`` (rows :math:`W_k = \sqrt{p_k}\nabla_x \log p_k`) satisfies
    :math:`W^\top s = J^\top A s = 0`, so :math:`W = U U^\top W` and
    :math:`R R^\top = U^\top M U` has the nonzero spectrum of ``M`` (and of ``F``) with
    one VJP fewer than ``W``. ``U`` is the Householder reflection sending ``s`` to
    :math:`-e_{k^*}`, :math:`k^* = \arg\max p`, minus that column
    (:func:`~numeric.fisher.operator.softmax_complement_basis`). ``K - 1`` VJPs: with
    ``c = replicas(...) > 1`` copies of every row, ``ceil((K - 1) / c)`` backward passes
    over ``B c`` rows (one extra forward pass builds the replicated graph, and the graph of
    ``lin`` is released); otherwise ``K - 1`` passes over the ``B`` rows of ``lin``.
    """
    batch, classes = lin.batch, lin.num_classes
    cotangents = softmax_complement_basis(lin.probabilities)         # (B, K-1, K)
    rows = lin.x.new_empty(batch, classes - 1, lin.num_features)
    copies = replicas(lin, device)
    if copies > 1:
        lin.release()  # only its probabilities are needed from here on
        try:
            return _replicated_vjps(model, lin, cotangents, rows, copies, dtype=dtype,
                                    caller=caller, device=device)
        except torch.OutOfMemoryError:  # the estimate was optimistic: one class per pass
            if device.type == "cuda":
                torch.cuda.empty_cache()
            lin = Linearization(model, lin.x, dtype=dtype, caller=caller, device=device)
    for j in range(classes - 1):
        rows[:, j] = lin.vjp(cotangents[:, j]).reshape(batch, -1)
    return rows


def _replicated_vjps(model, lin, cotangents, rows, copies, *, dtype, caller, device):
    batch, classes = lin.batch, lin.num_classes
    replicated = Linearization(model, lin.x.detach().repeat_interleave(copies, dim=0),
                               dtype=dtype, caller=caller, device=device)
    for start in range(0, classes - 1, copies):
        block = cotangents[:, start:start + copies]                    # (B, c', K)
        width = block.shape[1]
        if width < copies:
            block = torch.cat([block, block.new_zeros(batch, copies - width, classes)], 1)
        grads = replicated.vjp(block.reshape(batch * copies, classes))
        rows[:, start:start + width] = grads.reshape(batch, copies, -1)[:, :width]
    return rows


def exact_spectrum(model: nn.Module, x: torch.Tensor, dtype: torch.dtype, caller: str, *,
                   device: torch.device, linearization: Linearization | None = None
                   ) -> torch.Tensor:
    """Eigenvalues of ``M`` (B, K), descending; call inside :func:`model_context`.

    ``linearization`` (of the same ``x``) saves the first forward pass.
    """
    values = []
    for lin in _row_chunks(model, x, dtype, caller, device, linearization):
        r = whitened_jacobian(model, lin, dtype=dtype, caller=caller, device=device)
        r = r.to(torch.promote_types(dtype, torch.float32))
        gram = r @ r.transpose(1, 2)
        gram = (gram + gram.transpose(1, 2)) / 2
        spectrum = torch.linalg.eigvalsh(gram).flip(-1).to(dtype)  # half: solved in float32
        values.append(torch.cat([spectrum, spectrum.new_zeros(lin.batch, 1)], dim=1))
    return torch.cat(values)


def exact_trace(model: nn.Module, x: torch.Tensor, dtype: torch.dtype, caller: str, *,
                device: torch.device) -> torch.Tensor:
    r""":math:`\operatorname{tr} F = \|W\|_F^2` per row (B,); call inside :func:`model_context`."""
    return torch.cat([whitened_jacobian(model, lin, dtype=dtype, caller=caller,
                                        device=device).square().sum(dim=(1, 2))
                      for lin in _row_chunks(model, x, dtype, caller, device)])


@fill_doc(model_x=MODEL_X, device=DEVICE)
def fisher_eigenvalues(model: nn.Module, x: torch.Tensor, *,
                       dtype: torch.dtype | None = None,
                       device: str | torch.device | None = None) -> torch.Tensor:
    r"""All ``K`` eigenvalues of the input Fisher information that can be nonzero, exactly.

    .. math::

        F(x) = J^\top (\operatorname{diag} p - p p^\top) J, \qquad
        \operatorname{spec}(F) \setminus \{0\} =
        \operatorname{spec}(\Sigma_p^{1/2} J J^\top \Sigma_p^{1/2}) \setminus \{0\}.

    Parameters
    ----------
    %(model_x)s
    dtype : torch.dtype, optional
        Computation dtype (default: the model's; ``torch.float64`` for reference values).
    %(device)s

    Returns
    -------
    Tensor of shape (B, K)
        Eigenvalues in descending order, exact up to rounding (not an estimate; no
        autocast or TF32, :func:`numeric.device.full_precision`), on the computation
        device. Because
        :math:`\Sigma_p \mathbf 1 = 0`, ``rank F <= K - 1``: the last one is 0 (returned
        as an exact 0, since it is never computed), and the other ``d - K`` eigenvalues of
        ``F`` are 0 and not returned.

    Raises
    ------
    InputError
        Bad shapes, non-finite inputs or logits, a model returning probabilities, K = 1,
        a device that is unknown or not available.

    Notes
    -----
    Cost: ``K - 1`` VJPs per row, one per vector :math:`u_j` of an orthonormal basis of
    :math:`\sqrt p^\perp` (cotangent :math:`\sqrt p \odot u_j`, giving the rows of
    :math:`U^\top W`, where :math:`W_k = \sqrt{p_k}\nabla\log p_k`), then
    :math:`O(K^2 d + K^3)` per row for the Gram matrix and ``eigvalsh``. The VJPs of a
    small batch are packed ``c`` to a backward pass over ``c`` copies of each row
    (:func:`whitened_jacobian`, :func:`replicas`): one forward pass of the batch, one of
    its ``B c`` copies, and ``ceil((K - 1) / c)`` backward passes. Memory: ``B (K-1) d``
    entries, processed in row chunks of at most :data:`MAX_JACOBIAN_ENTRIES` entries, plus
    the graph of the copies. This is the paper's exact white-box recipe, batched over
    inputs and classes instead of one backward pass per input and class.

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
    x, dtype, device = prepare(caller, model, x, dtype, device)
    with model_context(model):
        return exact_spectrum(model, x, dtype, caller, device=device)
