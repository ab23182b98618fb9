r"""Trace of the input Fisher information: exact, Hutchinson and Hutch++.

.. math::

    \operatorname{tr} F(x) = \|W\|_F^2 = \sum_k p_k \|\nabla_x \log p_k\|^2
    = \mathbb E_{y \sim p}\|\nabla_x \log p(y|x)\|^2 .

The stochastic estimators use Rademacher probes :math:`v \in \{\pm 1\}^d` in input space,
for which :math:`v^\top F v = \|W v\|^2 = (Jv)^\top \Sigma_p (Jv)` costs one JVP.
"""

from __future__ import annotations

import torch
from torch import nn

from numeric.fisher._validation import (
    check_generator,
    check_integer,
    check_method,
    model_context,
)
from numeric.fisher.exact import exact_trace
from numeric.fisher.operator import Linearization, apply_factor_transpose, prepare
from numeric.fisher._docs import DEVICE, MODEL_X
from theory.docstrings import fill_doc

__all__ = ["fisher_trace", "rademacher"]


def rademacher(shape: tuple[int, ...], *, generator: torch.Generator | None,
               device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    """Independent uniform signs of the given shape, drawn with ``generator``."""
    draw_device = generator.device if generator is not None else device
    bits = torch.randint(0, 2, shape, generator=generator, device=draw_device)
    return (2 * bits - 1).to(device=device, dtype=dtype)


def _quadratic_form(lin: Linearization, v: torch.Tensor) -> torch.Tensor:
    r""":math:`v_b^\top F v_b = \|A^\top J v_b\|^2` for (B, d) probes: shape (B,)."""
    jv = lin.jvp(v.reshape(lin.x.shape))
    return apply_factor_transpose(lin.probabilities, jv).square().sum(dim=-1)


def _hutchinson(lin: Linearization, num_probes: int, generator) -> torch.Tensor:
    total = torch.zeros(lin.batch, dtype=lin.x.dtype, device=lin.x.device)
    for _ in range(num_probes):
        probe = rademacher((lin.batch, lin.num_features), generator=generator,
                           device=lin.x.device, dtype=lin.x.dtype)
        total += _quadratic_form(lin, probe)
    return total / num_probes


def _hutch_plus_plus(lin: Linearization, num_probes: int, generator) -> torch.Tensor:
    sketch_size = num_probes // 3
    remaining = num_probes - 2 * sketch_size

    def draw(count: int) -> torch.Tensor:
        return rademacher((lin.batch, count, lin.num_features), generator=generator,
                          device=lin.x.device, dtype=lin.x.dtype)

    sketch = draw(sketch_size)
    images = torch.stack([lin.fisher_product(sketch[:, j].reshape(lin.x.shape))
                          .reshape(lin.batch, -1) for j in range(sketch_size)], dim=-1)
    basis = torch.linalg.qr(images).Q                       # (B, d, min(d, s))
    low_rank = sum(_quadratic_form(lin, basis[:, :, j]) for j in range(basis.shape[-1]))
    probes = draw(remaining)
    probes = probes - (probes @ basis) @ basis.transpose(1, 2)       # (I - Q Q^T) g
    residual = sum(_quadratic_form(lin, probes[:, j]) for j in range(remaining))
    return low_rank + residual / remaining


@fill_doc(model_x=MODEL_X, device=DEVICE)
def fisher_trace(model: nn.Module, x: torch.Tensor, method: str = "exact", *,
                 num_probes: int | None = None, generator: torch.Generator | None = None,
                 dtype: torch.dtype | None = None,
                 device: str | torch.device | None = None) -> torch.Tensor:
    r"""Trace of the input Fisher information :math:`\operatorname{tr} F(x_b)` for every row.

    .. math::

        \operatorname{tr} F = \sum_k p_k \|\nabla_x \log p_k\|^2, \qquad
        \hat t_{\mathrm{H}} = \frac1m \sum_{i=1}^m v_i^\top F v_i, \quad
        v_i \in \{\pm1\}^d \text{ uniform}.

    Parameters
    ----------
    %(model_x)s
    method : {"exact", "hutchinson", "hutch++"}
        ``"exact"``: from ``K`` VJPs. ``"hutchinson"``: ``num_probes`` Rademacher probes,
        one JVP each. ``"hutch++"``: Meyer et al.'s variance-reduced estimator.
    num_probes : int, optional
        Probes (matrix-vector products) per row; default 64. ``"hutch++"`` needs at
        least 3 and splits them into thirds: ``s = m // 3`` products ``F S`` (VJP + JVP)
        for a sketch ``Q = orth(F S)``, ``s`` JVPs for :math:`\operatorname{tr}(Q^\top F Q)`
        and ``m - 2s`` probes of the deflated :math:`(I - QQ^\top) F (I - QQ^\top)`.
    generator : torch.Generator, optional
        Seeds the probes (independent across rows).
    dtype : torch.dtype, optional
        Computation dtype (default: the model's).
    %(device)s

    Returns
    -------
    Tensor of shape (B,)
        On the computation device. Exact up to rounding for ``"exact"`` (no autocast or
        TF32, :func:`numeric.device.full_precision`); otherwise an unbiased estimate.

    Raises
    ------
    InputError
        Bad shapes, non-finite inputs or logits, a model returning probabilities, K = 1,
        an unknown method, a bad ``num_probes`` or ``generator``, or a device that is
        unknown or not available.

    Notes
    -----
    Both stochastic estimators are unbiased. With Rademacher probes

    .. math::

        \operatorname{Var}\hat t_{\mathrm H}
        = \frac{2}{m}\Big(\|F\|_F^2 - \sum_i F_{ii}^2\Big) \le \frac{2}{m}\|F\|_F^2
        \le \frac{2}{m} (\operatorname{tr} F)^2 .

    Hutch++ is unbiased because :math:`\operatorname{tr} F = \operatorname{tr}(Q^\top F Q)
    + \operatorname{tr}((I-QQ^\top)F(I-QQ^\top))` for any orthonormal ``Q``; conditional on
    ``Q`` its variance is the formula above for the deflated matrix
    :math:`\tilde F = (I-QQ^\top)F(I-QQ^\top)` with ``m - 2s`` probes, at most
    :math:`\frac{2}{m-2s}\|\tilde F\|_F^2 \le \frac{2}{m-2s}\|F\|_F^2`. As
    :math:`\operatorname{rank} F \le K - 1`, ``s >= K - 1`` gives :math:`\tilde F = 0`
    almost surely, hence the exact trace.

    Cost: ``"exact"`` ``K - 1`` VJPs packed into few backward passes
    (:func:`~numeric.fisher.exact.whitened_jacobian`); ``"hutchinson"`` one forward,
    one backward with ``create_graph`` and ``m`` JVPs (about a backward pass each);
    ``"hutch++"`` adds ``s`` VJPs.

    References
    ----------
    Hutchinson, "A stochastic estimator of the trace of the influence matrix for Laplacian
    smoothing splines", 1989. Meyer, Musco, Musco & Woodruff, "Hutch++: Optimal stochastic
    trace estimation", SOSA 2021, arXiv:2010.09649. Avron & Toledo, J. ACM 58(2), 2011
    (the variance formula).

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Linear(3, 4).double()
    >>> x = torch.randn(2, 3, dtype=torch.float64)
    >>> exact = fisher_trace(model, x)
    >>> sketched = fisher_trace(model, x, "hutch++", num_probes=9,
    ...                         generator=torch.Generator().manual_seed(0))
    >>> bool(torch.allclose(exact, sketched))  # s = 3 = K - 1: exact
    True
    """
    caller = "fisher_trace"
    x, dtype, device = prepare(caller, model, x, dtype, device)
    check_method(caller, method, ("exact", "hutchinson", "hutch++"))
    num_probes = 64 if num_probes is None else num_probes
    check_integer(caller, "num_probes", num_probes, minimum=3 if method == "hutch++" else 1)
    check_generator(caller, generator)
    with model_context(model):
        if method == "exact":
            return exact_trace(model, x, dtype, caller, device=device).detach()
        lin = Linearization(model, x, dtype=dtype, caller=caller, device=device)
        estimate = _hutchinson if method == "hutchinson" else _hutch_plus_plus
        return estimate(lin, num_probes, generator).detach()
