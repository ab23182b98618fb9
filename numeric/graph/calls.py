"""One-call forms of the traced bounds: each traces the model (:func:`trace_model`) and
asks the :class:`~numeric.graph.bound.TracedModel` once. To ask several questions of one
model, trace it once and keep the :class:`TracedModel`: every call here pays the trace."""

from __future__ import annotations

import math

import networkx as nx
import torch
from torch import nn

from numeric.errors import UnsupportedModuleError
from numeric.graph.bound import RegionBound, trace_model

__all__ = ["module_graph", "fisher_bound", "lipschitz_bound", "region_bound"]


def module_graph(model: nn.Module, example_input: torch.Tensor, *,
                 fold_batchnorm: bool = True, centre_logits: bool = True,
                 merge_pooling: bool = True, conv_method: str = "auto") -> nx.DiGraph:
    """The architecture graph of ``model`` with certified numeric constants:
    ``trace_model(...).graph`` (see :func:`trace_model` for the arguments and errors).

    The graph follows the schema of ``docs/internals.md`` (``bounds.validate`` passes):
    node keys are the ATen node names, ``module`` the qualified module names, ``aten`` the
    operator, every ``lipschitz`` a certified float and ``label`` how it was obtained.

    Examples
    --------
    >>> import torch, bounds
    >>> model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(),
    ...                             torch.nn.Linear(4, 2))
    >>> G = module_graph(model, torch.zeros(1, 3))
    >>> [G.nodes[n]["module"] for n in nx.topological_sort(G) if G.nodes[n]["op"] == "linear"]
    ['0', '2']
    >>> bounds.validate(G)

    Raises
    ------
    As :func:`trace_model`; UnsupportedModuleError when a constant is infinite (a product
    of two unbounded input-dependent tensors, attention on unbounded tokens): the graph
    format holds finite certified constants only.
    """
    traced = trace_model(model, example_input, fold_batchnorm=fold_batchnorm,
                         centre_logits=centre_logits, merge_pooling=merge_pooling,
                         conv_method=conv_method, self_check=False)
    reason = traced.unbounded_reason()
    if reason is not None:
        raise UnsupportedModuleError(f"module_graph: no global bound: {reason}; local and "
                                     f"region bounds: trace_model(model, x).local_fisher_bound"
                                     f"(x) or .region_bound(x, eps).")
    return traced.graph


def lipschitz_bound(model: nn.Module, example_input: torch.Tensor, *, quantity: str,
                    self_check: bool = True, **options) -> float:
    """Certified bound on :math:`\\sup_x\\|J(x)\\|_2` of ``quantity`` (``'output'`` or
    ``'centred_output'``, required): :meth:`TracedModel.lipschitz_bound`."""
    traced = trace_model(model, example_input, self_check=self_check, **options)
    return traced.lipschitz_bound(quantity)


def region_bound(model: nn.Module, x: torch.Tensor, eps, *, self_check: bool = True,
                 **options) -> RegionBound:
    """Certified bounds over the balls of radii ``eps`` around the rows of ``x``:
    :meth:`TracedModel.region_bound` (one trace, then one region pass)."""
    return trace_model(model, x, self_check=self_check, **options).region_bound(x, eps)


def fisher_bound(model: nn.Module, example_input: torch.Tensor, local: bool = False, *,
                 self_check: bool = True, **options) -> float | torch.Tensor:
    r"""Certified upper bound on :math:`\lambda_{\max}(F(x))`, for all inputs or per row.

    Parameters
    ----------
    model : nn.Module
        Classifier, Tensor of shape (B, ...) -> logits (B, K), taken as it is.
    example_input : Tensor of shape (B, ...)
        Global: fixes the input shape. Local: the points.
    local : bool, default False
        False: one bound valid at every input of that shape, :math:`\tfrac12 L^2`. True:
        one bound per row from the actual activations and probabilities.
    self_check, **options
        As in :func:`trace_model`.

    Returns
    -------
    float or Tensor of shape (B,), float64
        Certified (module docstring).

    Raises
    ------
    As :func:`trace_model`; a model without a global bound (attention on unbounded tokens)
    raises UnsupportedModuleError for ``local=False`` (``local=True`` works).

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Linear(3, 2, bias=False).double()
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.tensor([[1.0, 0, 0], [-1.0, 0, 0]]))
    >>> x = torch.tensor([[0.0, 0, 0], [2.0, 0, 0]], dtype=torch.float64)
    >>> round(fisher_bound(model, x), 6)  # ||C W||^2 / 2 = 2 / 2
    1.0
    >>> fisher_bound(model, x, local=True)           # exact: 4 p_1 p_2
    tensor([1.0000, 0.0707], dtype=torch.float64)
    """
    traced = trace_model(model, example_input, self_check=self_check, **options)
    if local:
        return traced.local_fisher_bound(example_input)
    value = traced.fisher_bound()
    if math.isinf(value):
        raise UnsupportedModuleError(f"fisher_bound: no global bound: "
                                     f"{traced.unbounded_reason()}; use "
                                     f"fisher_bound(..., local=True).")
    return value


