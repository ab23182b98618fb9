"""Exceptions raised by :mod:`theory`."""

__all__ = ["TheoryError"]


class TheoryError(Exception):
    """Base class of every error raised by :mod:`theory`."""
