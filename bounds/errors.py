"""Exceptions raised by :mod:`bounds`.

Every error inherits :class:`BoundsError` and a builtin (:class:`ValueError`, or
:class:`TypeError` for an argument of the wrong type), so callers may catch either;
messages name the culprit (a node, a symbol, a family, a file).
"""

__all__ = [
    "BoundsError",
    "GraphValidationError",
    "GraphFormatError",
    "UnboundSymbolError",
    "FamilyError",
    "InvalidValueError",
    "ArgumentError",
]


class BoundsError(Exception):
    """Base class of every error raised by :mod:`bounds`."""


class GraphValidationError(BoundsError, ValueError):
    """An architecture graph breaks the schema; the message names the node."""


class GraphFormatError(BoundsError, ValueError):
    """A graph file is not valid JSON or not a node-link document; the message names the file."""


class UnboundSymbolError(BoundsError, ValueError):
    """A bound was evaluated while some of its symbols had no value."""


class FamilyError(BoundsError, ValueError):
    """An unknown architecture family or preset, or an invalid option of a family builder."""


class InvalidValueError(BoundsError, ValueError):
    """A value given for a symbol, or a constant evaluated at the given values, is not a
    real number >= 0 (negative, NaN, complex); the message names the symbol or the node."""


class ArgumentError(BoundsError, TypeError):
    """An argument of the wrong type, e.g. symbol values that are not a mapping."""
