"""Numeric half of fimbound: torch models, estimators, certified constants, checks.

Public names are resolved lazily from their submodules so that ``import numeric`` stays
cheap and a command that needs one estimator does not import the attack suite.

Examples
--------
>>> import torch, numeric
>>> model = torch.nn.Linear(3, 4).double()
>>> x = torch.zeros(2, 3, dtype=torch.float64)
>>> numeric.fisher_eigenvalues(model, x).shape[0]
2
"""

from __future__ import annotations

from theory._lazy import lazy_names
from numeric.errors import (
    ConvergenceError,
    InputError,
    NumericError,
    TraceError,
    UnsoundBoundError,
    UnsupportedModuleError,
)

__version__ = "0.1.0"

#: public name -> submodule that defines it
_LAZY = {
    # estimators (numeric.fisher)
    "fisher_vector_product": "numeric.fisher",
    "fisher_eigenvalues": "numeric.fisher",
    "fisher_top_eigenvalue": "numeric.fisher",
    "fisher_trace": "numeric.fisher",
    "blackbox_fisher_top_eigenvalue": "numeric.fisher",
    "BlackboxEstimate": "numeric.fisher",
    # torch -> graph bridge and certified bounds (numeric.graph)
    "trace_model": "numeric.graph",
    "TracedModel": "numeric.graph",
    "module_graph": "numeric.graph",
    "fisher_bound": "numeric.graph",
    "lipschitz_bound": "numeric.graph",
    "register_rule": "numeric.graph",
    "linear_operator_norm": "numeric.graph",
    "conv_operator_norm_bound": "numeric.graph",
    "conv_operator_norm_bounds": "numeric.graph",
    "model_conv_norm_bounds": "numeric.graph",
    "region_bound": "numeric.graph",
    # models, data, attacks
    "load_model": "numeric.loading",
    "load_data": "numeric.data",
    "minimum_norm_attack": "numeric.attacks",
    "pgd_attack": "numeric.attacks",
    "robust_accuracy": "numeric.attacks",
}

__all__ = [
    "ConvergenceError",
    "InputError",
    "NumericError",
    "TraceError",
    "UnsoundBoundError",
    "UnsupportedModuleError",
    "__version__",
    *sorted(_LAZY),
]


__getattr__, __dir__ = lazy_names(__name__, _LAZY, globals())
