r"""Certified operator norms of linear layers, convolutions and pooling, in float64.

Every function named ``*_norm``, ``*_norm_bound`` or ``*_norm_bounds`` returns a
**certified upper bound** on an operator 2-norm: floating point can never push it below
the true norm. Matrix norms are inflated by :data:`CERTIFICATION_FACTOR`, which dominates
their rounding error; the frequency-domain convolution bounds add an explicit rounding
bound (:mod:`~numeric.graph.norms.spectral`) and then the factor.
:func:`conv_operator_norm_estimate` is the one exception: power iteration converges from
below, its result is an *estimate* and is labelled so wherever it is used.

Layout: :mod:`~numeric.graph.norms.linear` (matrices, rounding constants),
:mod:`~numeric.graph.norms.geometry` (exact rewriting of groups, stride, dilation and
padding), :mod:`~numeric.graph.norms.dense` (the explicit matrix, the exact reference),
:mod:`~numeric.graph.norms.spectral` (certified symbol maxima by Cholesky tests),
:mod:`~numeric.graph.norms.conv` (the methods and ``'auto'``, with the torus bound's proof),
:mod:`~numeric.graph.norms.layers` (many layers or a whole model at once),
:mod:`~numeric.graph.norms.pooling`.
"""

from numeric.graph.norms.conv import (DEFAULT_RTOL, METHODS, conv_operator_norm_bound,
                                      conv_operator_norm_estimate)
from numeric.graph.norms.dense import conv_dense_entries, conv_dense_matrix
from numeric.graph.norms.geometry import ConvGeometry
from numeric.graph.norms.layers import (ConvLayer, conv_operator_norm_bounds,
                                        model_conv_norm_bounds)
from numeric.graph.norms.linear import CERTIFICATION_FACTOR, linear_operator_norm
from numeric.graph.norms.pooling import avgpool_operator_norm, pooling_coverage

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
    "conv_operator_norm_bounds",
    "model_conv_norm_bounds",
    "ConvLayer",
    "DEFAULT_RTOL",
    "METHODS",
]
