"""Symbolic core of fimbound (SymPy only, never torch or networkx).

The input Fisher information of a softmax classifier, the curvature of the softmax,
and the Lipschitz calculus with the exact constants of activations and pooling.
"""

from theory.errors import TheoryError

__all__ = ["TheoryError"]
