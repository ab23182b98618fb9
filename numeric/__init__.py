"""Numeric half of fimbound: torch models, estimators, certified constants, checks."""

from numeric.errors import (
    ConvergenceError,
    InputError,
    NumericError,
    TraceError,
    UnsupportedModuleError,
)

__version__ = "0.1.0"

__all__ = [
    "ConvergenceError",
    "InputError",
    "NumericError",
    "TraceError",
    "UnsupportedModuleError",
    "__version__",
]
