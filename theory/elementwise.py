r"""The machinery of elementwise operations: :class:`Activation` and its parameter checks.

An activation :math:`\phi` applied entrywise has the diagonal Jacobian
:math:`\operatorname{diag}(\phi'(x_i))`, so its Lipschitz constant in the Euclidean norm
is :math:`\sup_t |\phi'(t)|` when :math:`\phi` is continuous and piecewise
:math:`C^1` (mean value theorem on each piece). An :class:`Activation` holds the SymPy
function, that constant, :math:`\sup |\phi''|` over the smooth pieces, the proofs of
both, and the domain of its parameters. The concrete operations are in
:mod:`theory.activation_types`; the user-facing functions in :mod:`theory.activations`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

import sympy

from theory.errors import ParameterError
from theory.validation import describe, finite_real

__all__ = ["Activation"]


class Activation:
    """An elementwise operation with its exact (or certified) derivative bounds.

    Parameters
    ----------
    name : str
        The op name in the graph vocabulary.
    function : callable
        ``function(x, **params)`` returning the SymPy expression of the operation.
    constant : callable
        ``constant(**params)``: :math:`\\sup_t |\\phi'(t)|` as a SymPy expression.
    derivation : str
        Why the constant is right on the parameters' domain (and where it is attained).
    curvature : callable
        ``curvature(**params)``: :math:`\\sup |\\phi''|` over the smooth pieces (0 for a
        piecewise-linear operation) as a SymPy expression.
    curvature_derivation : str
        Why that bound is right.
    defaults : mapping, optional
        Accepted parameter names and their defaults. A ``str`` default makes a choice
        parameter, a ``tuple`` default a vector of reals (PReLU's weights), anything else
        a finite real number (or SymPy expression).
    check : callable, optional
        ``check(function, params)``: raises :class:`ParameterError` naming the parameter
        and its value when the merged parameters lie outside the proved domain.
    any_parameters : bool, optional
        Accept and ignore any keyword (shape arguments of identity-like ops).

    Attributes
    ----------
    name, derivation, curvature_derivation, defaults
        As given.
    """

    def __init__(self, name: str, function: Callable, constant: Callable, derivation: str,
                 *, curvature: Callable, curvature_derivation: str,
                 defaults: Mapping | None = None, check: Callable | None = None,
                 any_parameters: bool = False) -> None:
        self.name = name
        self.derivation = derivation
        self.curvature_derivation = curvature_derivation
        self.defaults = MappingProxyType(dict(defaults or {}))
        self._function = function
        self._constant = constant
        self._curvature = curvature
        self._check = check
        self._any_parameters = any_parameters

    def __repr__(self) -> str:
        return f"Activation({self.name!r})"

    def parameters(self, params: Mapping, function: str) -> dict:
        """The validated parameters, defaults filled in; raise naming a bad one.

        Parameters
        ----------
        params : mapping
            Parameter name -> value, as given by the caller.
        function : str
            The public function's name, for the message.

        Returns
        -------
        dict
            Name -> SymPy expression (a tuple of them for vectors, a str for choices).

        Raises
        ------
        ParameterError
            If a name is not accepted, a value is not real and finite (NaN, complex,
            infinite), or the values lie outside the proved domain.
        """
        if self._any_parameters:
            return {}
        label = f"{function}({self.name!r})"
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            accepted = ", ".join(self.defaults) or "none"
            raise ParameterError(f"{label}: expected parameters among ({accepted}), got "
                                 f"{unknown}.")
        merged = {**self.defaults, **params}
        for key, value in merged.items():
            default = self.defaults[key]
            if isinstance(default, str):
                if not isinstance(value, str):
                    raise ParameterError(f"{label}: expected {key} to be a string, got "
                                         f"{value!r}.")
            elif isinstance(default, tuple):
                merged[key] = _vector(label, key, value)
            else:
                merged[key] = finite_real(label, key, value)
        if self._check is not None:
            self._check(label, merged)
        return merged

    def function(self, x: sympy.Symbol, **params) -> sympy.Expr:
        """The SymPy expression of the operation at the scalar ``x``."""
        return self._function(x, **self.parameters(params, "Activation.function"))

    def constant(self, **params) -> sympy.Expr:
        """The Lipschitz constant, :math:`\\sup_t |\\phi'(t)|`, as a SymPy expression."""
        return self._constant(**self.parameters(params, "Activation.constant"))

    def curvature(self, **params) -> sympy.Expr:
        """:math:`\\sup |\\phi''|` over the smooth pieces, as a SymPy expression."""
        return self._curvature(**self.parameters(params, "Activation.curvature"))


def _vector(label: str, key: str, value) -> tuple:
    """A non-empty tuple of finite reals from a number or a sequence (array) of numbers."""
    if hasattr(value, "tolist"):  # NumPy arrays and tensors
        value = value.tolist()
    items = list(value) if isinstance(value, list | tuple) else [value]
    if not items:
        raise ParameterError(f"{label}: expected {key} to hold at least one number, got "
                             f"{describe(value)}.")
    return tuple(finite_real(label, f"{key}[{i}]", item) for i, item in enumerate(items))
