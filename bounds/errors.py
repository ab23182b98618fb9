"""Exceptions raised by :mod:`bounds`.

Every error inherits :class:`BoundsError` and a builtin (:class:`ValueError`), so callers
may catch either; messages name the culprit (a node, a symbol, a family, a file).
"""

__all__ = [
    "BoundsError",
    "GraphValidationError",
    "GraphFormatError",
    "UnboundSymbolError",
    "FamilyError",
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
