"""Exceptions raised by :mod:`theory`.

Every error derives from :class:`TheoryError` and from the builtin a caller would
naturally catch (``ValueError``, ``KeyError``, ``RuntimeError``), so both
``except TheoryError`` and ``except ValueError`` work.
"""

__all__ = [
    "TheoryError",
    "ProbabilityError",
    "ParameterError",
    "UnknownOperationError",
    "CertificationError",
]


class TheoryError(Exception):
    """Base class of every error raised by :mod:`theory`."""


class ProbabilityError(TheoryError, ValueError):
    """A vector handed in as a probability vector is not one (empty, NaN, negative, bad sum)."""


class ParameterError(TheoryError, ValueError):
    """A parameter (a class count, a kernel size, a slope, a constant) is out of its domain."""


class UnknownOperationError(TheoryError, KeyError):
    """An operation name is not in a registry; the message lists the known names."""

    def __str__(self) -> str:
        # KeyError would show the message with quotes around it; print it as written.
        return str(self.args[0]) if self.args else ""


class CertificationError(TheoryError, RuntimeError):
    """An interval-arithmetic proof neither proved nor refuted a bound within its budget."""
