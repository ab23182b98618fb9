"""Symbolic core of fimbound (SymPy only, never torch, networkx or numpy).

The input Fisher information of a softmax classifier (:mod:`theory.fisher`), the
curvature of the softmax (:mod:`theory.softmax`), and the Lipschitz calculus
(:mod:`theory.lipschitz`) with the exact constants of activations
(:mod:`theory.activations`), pooling (:mod:`theory.pooling`), and LayerNorm and
dot-product attention on their stated domains (:mod:`theory.transformer`).

Examples
--------
A ReLU network with a 1-D max-pool (kernel 3, stride 1) between layers of norms ``a``
and ``b`` has Lipschitz constant at most ``a * sqrt(3) * b``; its input Fisher
information at a point where the softmax is ``p`` is at most
``softmax_curvature_bound(p)`` times its square.

>>> from sympy import Rational, symbols
>>> import theory
>>> a, b = symbols("a b", positive=True)
>>> L = theory.compose_rule(a, theory.activation_lipschitz("relu"),
...                         theory.maxpool_lipschitz((3,), (1,)), b)
>>> L
sqrt(3)*a*b
>>> theory.softmax_curvature_bound([Rational(1, 2), Rational(1, 2)]) * L**2
3*a**2*b**2/2
"""

from theory.activations import (
    ACTIVATIONS,
    Activation,
    activation_lipschitz,
    second_derivative_bound,
)
from theory.certification import certify_activation_constant, prove_derivative_bound
from theory.errors import (
    CertificationError,
    ParameterError,
    ProbabilityError,
    TheoryError,
    UnknownOperationError,
)
from theory.fisher import (
    FisherIdentities,
    KLExpansion,
    fisher_identities,
    fisher_information,
    kl_second_order,
)
from theory.lipschitz import compose_rule, concat_rule, sum_rule
from theory.pooling import (
    adaptive_avgpool_lipschitz,
    avgpool_lipschitz,
    global_avgpool_lipschitz,
    max_window_overlap,
    maxpool_lipschitz,
)
from theory.attention import (
    attention_head_lipschitz,
    attention_head_local_lipschitz,
    multihead_attention_lipschitz,
    pre_ln_attention_lipschitz,
)
from theory.layernorm import layernorm_lipschitz, layernorm_local_lipschitz, layernorm_output_radius
from theory.softmax import (
    SUM_TOLERANCE,
    centred_fisher_bound,
    centred_jacobian,
    centring_matrix,
    softmax_covariance,
    softmax_curvature_bound,
)

__all__ = [
    # errors
    "TheoryError", "ProbabilityError", "ParameterError", "UnknownOperationError",
    "CertificationError",
    # softmax curvature
    "SUM_TOLERANCE", "softmax_covariance", "softmax_curvature_bound", "centring_matrix",
    "centred_jacobian", "centred_fisher_bound",
    # Fisher identities
    "FisherIdentities", "KLExpansion", "fisher_identities", "fisher_information",
    "kl_second_order",
    # Lipschitz calculus
    "compose_rule", "sum_rule", "concat_rule",
    "Activation", "ACTIVATIONS", "activation_lipschitz", "second_derivative_bound",
    "certify_activation_constant", "prove_derivative_bound",
    "max_window_overlap", "maxpool_lipschitz", "avgpool_lipschitz",
    "global_avgpool_lipschitz", "adaptive_avgpool_lipschitz",
    # LayerNorm and attention on their stated domains
    "layernorm_lipschitz", "layernorm_local_lipschitz", "layernorm_output_radius",
    "attention_head_lipschitz", "attention_head_local_lipschitz",
    "multihead_attention_lipschitz", "pre_ln_attention_lipschitz",
]
