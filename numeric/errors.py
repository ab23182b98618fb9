"""Exceptions raised by :mod:`numeric`."""

__all__ = [
    "NumericError",
    "ConvergenceError",
    "InputError",
    "UnsupportedModuleError",
    "TraceError",
    "UnsoundBoundError",
]


class NumericError(Exception):
    """Base class of every error raised by :mod:`numeric`."""


class InputError(NumericError, ValueError):
    """A tensor, model or argument handed to a public function is unusable."""


class ConvergenceError(NumericError, RuntimeError):
    """An iterative method did not reach its tolerance within ``max_iter``."""

    def __init__(self, message: str, *, iterations: int | None = None,
                 residual: float | None = None) -> None:
        super().__init__(message)
        self.iterations = iterations
        self.residual = residual


class UnsupportedModuleError(NumericError, TypeError):
    """No Lipschitz rule is registered for a module or function in a traced model."""


class TraceError(NumericError, RuntimeError):
    """A model could not be traced; the message names the untraceable part."""


class UnsoundBoundError(NumericError, ArithmeticError):
    """A certified bound came out below a value measured at the inputs it was given.

    Raised by the self-check of the certified entry points instead of returning the number;
    it always means a bug in a rule (the message names the node chain), never a tolerance.
    """
