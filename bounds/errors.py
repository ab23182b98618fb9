"""Exceptions raised by :mod:`bounds`."""

__all__ = ["BoundsError", "GraphValidationError", "UnboundSymbolError"]


class BoundsError(Exception):
    """Base class of every error raised by :mod:`bounds`."""


class GraphValidationError(BoundsError, ValueError):
    """An architecture graph breaks the schema; the message names the node."""


class UnboundSymbolError(BoundsError, ValueError):
    """A bound was evaluated while some of its symbols had no value."""
