"""Argument checks shared by the modules of :mod:`bounds`.

Every check takes the public function's name and the argument's name, so the message
reads ``"<function>: expected <what>, got <value>."``, and raises the ``error`` class it
is given: :class:`bounds.FamilyError` by default (the options of family builders, closed
forms and rankings, which are most of the callers), :class:`bounds.ArgumentError` for an
argument of the wrong type elsewhere.
"""

from __future__ import annotations

import numbers

from bounds.errors import FamilyError
from theory.validation import positive_integer

__all__ = ["integer", "integers", "choice", "flag"]


def integer(function: str, name: str, value, *, minimum: int = 1,
            error: type[Exception] = FamilyError) -> int:
    """``value`` as an int ``>= minimum`` (any integral type but bool;
    :func:`theory.validation.positive_integer` with this package's error).

    Examples
    --------
    >>> integer("vgg", "depth", 3)
    3
    >>> integer("vgg", "depth", 0)
    Traceback (most recent call last):
    ...
    bounds.errors.FamilyError: vgg: expected depth to be an integer >= 1, got 0.
    """
    return positive_integer(function, name, value, minimum=minimum, error=error)


def integers(function: str, name: str, value, *, error: type[Exception] = FamilyError
             ) -> tuple[int, ...]:
    """An int ``>= 1`` or a non-empty tuple (list) of them, as a tuple.

    Examples
    --------
    >>> integers("resnet", "depth", [2, 2])
    (2, 2)
    """
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, tuple | list) or not value:
        raise error(f"{function}: expected {name} to be an integer >= 1 or a non-empty "
                    f"tuple of them, got {value!r}.")
    return tuple(integer(function, name, item, error=error) for item in value)


def choice(function: str, name: str, value, choices, *,
           error: type[Exception] = FamilyError):
    """``value`` if it is one of ``choices``.

    Examples
    --------
    >>> choice("resnet", "block", "wide", ("basic", "bottleneck"))
    Traceback (most recent call last):
    ...
    bounds.errors.FamilyError: resnet: expected block to be one of 'basic', 'bottleneck', got 'wide'.
    """
    if not isinstance(value, str | int | type(None)) or value not in choices:
        raise error(f"{function}: expected {name} to be one of "
                    f"{', '.join(map(repr, choices))}, got {value!r}.")
    return value


def flag(function: str, name: str, value, *, error: type[Exception] = FamilyError) -> bool:
    """``value`` if it is a bool.

    Examples
    --------
    >>> flag("densenet", "stem", "yes")
    Traceback (most recent call last):
    ...
    bounds.errors.FamilyError: densenet: expected stem to be True or False, got 'yes'.
    """
    if not isinstance(value, bool):
        raise error(f"{function}: expected {name} to be True or False, got {value!r}.")
    return value
