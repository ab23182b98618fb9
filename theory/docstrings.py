"""Docstring blocks shared by several public functions, filled in at import time.

A placeholder is a line holding only ``%(name)s``; :func:`fill_doc` replaces it with the
block of that name, indented like the placeholder, so the rendered docstring (and its
doctests) reads as if the block were written in place. One block, one wording: a fix to
a shared ``Raises`` or ``References`` section is made once.
"""

from __future__ import annotations

import textwrap
from collections.abc import Callable

__all__ = ["fill_doc", "SCAMAN_VIRMAUX"]

#: The AutoLip reference cited by every rule and pooling constant.
SCAMAN_VIRMAUX = """\
.. [1] K. Scaman and A. Virmaux, "Lipschitz regularity of deep neural networks:
   analysis and efficient estimation", NeurIPS 2018, arXiv:1805.10965."""


def fill_doc(**blocks: str) -> Callable:
    """Decorator replacing each line ``%(name)s`` of a docstring by ``blocks[name]``.

    Raises
    ------
    KeyError
        At import time, if a placeholder names no block (a typo never reaches a user).

    Examples
    --------
    >>> @fill_doc(notes="Line one.\\nLine two.")
    ... def f():
    ...     '''Title.
    ...
    ...     %(notes)s
    ...     '''
    >>> print(f.__doc__.strip())
    Title.
    <BLANKLINE>
        Line one.
        Line two.
    """
    def decorate(function: Callable) -> Callable:
        lines = []
        for line in (function.__doc__ or "").split("\n"):
            stripped = line.strip()
            if stripped.startswith("%(") and stripped.endswith(")s"):
                indent = line[:len(line) - len(line.lstrip())]
                lines.append(textwrap.indent(blocks[stripped[2:-2]], indent))
            else:
                lines.append(line)
        function.__doc__ = "\n".join(lines)
        return function
    return decorate
