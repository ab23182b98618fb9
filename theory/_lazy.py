"""Lazy public names of a package (PEP 562 module ``__getattr__`` and ``__dir__``).

Imports nothing but :mod:`importlib`, so that a package using it stays cheap to import.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, MutableMapping

__all__ = ["lazy_names"]


def lazy_names(package: str, lazy: Mapping[str, str], namespace: MutableMapping
               ) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of a package whose public names are imported on
    first use.

    Parameters
    ----------
    package : str
        The package's name (its ``__name__``), for the message of an unknown name.
    lazy : mapping
        Public name -> the submodule that defines it.
    namespace : mutable mapping
        The package's ``globals()``: a name, once imported, is stored there so that
        ``__getattr__`` is not asked for it again.

    Returns
    -------
    __getattr__ : callable
        ``__getattr__(name)``: the attribute ``name`` of its submodule; raises
        ``AttributeError("module '<package>' has no attribute '<name>'")`` for a name
        not in ``lazy``.
    __dir__ : callable
        ``__dir__()``: the sorted names of ``namespace`` and ``lazy``.

    Examples
    --------
    >>> namespace = {}
    >>> getattr_, dir_ = lazy_names("pkg", {"sqrt": "math"}, namespace)
    >>> getattr_("sqrt")(4.0), "sqrt" in namespace, dir_()
    (2.0, True, ['sqrt'])
    >>> getattr_("cbrt")
    Traceback (most recent call last):
    ...
    AttributeError: module 'pkg' has no attribute 'cbrt'
    """
    def __getattr__(name: str):
        try:
            module = lazy[name]
        except KeyError:
            raise AttributeError(f"module {package!r} has no attribute {name!r}") from None
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(lazy))

    return __getattr__, __dir__
