"""Exceptions raised by :mod:`numeric`."""

__all__ = [
    "NumericError",
    "ConvergenceError",
    "InputError",
    "UnsupportedModuleError",
    "TraceError",
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
    """torch.fx could not trace a model; the message names the untraceable part."""
