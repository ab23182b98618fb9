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

from theory._lazy import lazy_names

#: Public name -> the submodule that defines it (imported on first use, with SymPy).
_LAZY = {name: module for module, names in {
    "theory.activations": (
        "ACTIVATIONS", "Activation", "activation_lipschitz", "second_derivative_bound"),
    "theory.certification": ("certify_activation_constant", "prove_derivative_bound"),
    "theory.errors": (
        "CertificationError", "ParameterError", "ProbabilityError", "TheoryError",
        "UnknownOperationError"),
    "theory.fisher": (
        "FisherIdentities", "KLExpansion", "fisher_identities", "fisher_information",
        "kl_second_order"),
    "theory.lipschitz": ("compose_rule", "concat_rule", "sum_rule"),
    "theory.pooling": (
        "adaptive_avgpool_lipschitz", "avgpool_lipschitz", "global_avgpool_lipschitz",
        "max_window_overlap", "maxpool_lipschitz"),
    "theory.attention": (
        "attention_head_lipschitz", "attention_head_local_lipschitz",
        "multihead_attention_lipschitz", "pre_ln_attention_lipschitz"),
    "theory.layernorm": (
        "layernorm_lipschitz", "layernorm_local_lipschitz", "layernorm_output_radius"),
    "theory.softmax": (
        "SUM_TOLERANCE", "centred_fisher_bound", "centred_jacobian", "centring_matrix",
        "softmax_covariance", "softmax_curvature_bound"),
}.items() for name in names}

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

# the submodules (and SymPy) load on first use: `theory.docstrings` alone stays cheap
__getattr__, __dir__ = lazy_names(__name__, _LAZY, globals())
