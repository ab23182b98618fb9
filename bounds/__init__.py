"""Closed-form bounds on the input-Fisher spectral norm from architecture graphs.

networkx + SymPy + :mod:`theory`; never torch.
"""

from bounds.errors import BoundsError, GraphValidationError, UnboundSymbolError

__all__ = ["BoundsError", "GraphValidationError", "UnboundSymbolError"]
