"""Estimators of the input Fisher information ``F(x) = J^T (diag p - p p^T) J``.

The folder layout follows the computation: :mod:`~numeric.fisher.operator` holds the
batched Jacobian products every estimator is built on; the quantities built on them live
in :mod:`~numeric.fisher.exact` (all nonzero eigenvalues), :mod:`~numeric.fisher.iterative`
(Lanczos and power iteration, whose float64 linear algebra is
:mod:`~numeric.fisher.krylov`), :mod:`~numeric.fisher.trace` (exact, Hutchinson, Hutch++)
and :mod:`~numeric.fisher.blackbox` (probabilities only, with the statistics of its sketch
in :mod:`~numeric.fisher.sketch`). Every estimator takes a model and a batch ``x`` of
shape (B, ...) and returns one value per row, on the model's device (or ``device=``) and
in the model's dtype unless ``dtype=`` says otherwise, computed without autocast or TF32
(:func:`numeric.device.full_precision`); the black-box estimator, which sees only a
probability callable, returns float64 values on the CPU.
"""

from numeric.fisher.blackbox import BlackboxEstimate, blackbox_fisher_top_eigenvalue
from numeric.fisher.exact import fisher_eigenvalues
from numeric.fisher.iterative import fisher_top_eigenvalue
from numeric.fisher.operator import fisher_vector_product
from numeric.fisher.trace import fisher_trace

__all__ = [
    "fisher_vector_product",
    "fisher_eigenvalues",
    "fisher_top_eigenvalue",
    "fisher_trace",
    "blackbox_fisher_top_eigenvalue",
    "BlackboxEstimate",
]
