"""Closed-form bounds on the input-Fisher spectral norm from architecture graphs.

networkx + SymPy + :mod:`theory`; never torch. An architecture is a
:class:`networkx.DiGraph` of the schema in :mod:`bounds.schema` (``docs/internals.md``);
:func:`derive` turns it into a :class:`Bound` on the Lipschitz constant of the logits and
on :math:`\\lambda_{\\max}(F(x)) \\le \\tfrac12 \\operatorname{Lip}(f)^2`;
:mod:`bounds.families` builds VGG, ResNet, DenseNet and Transformer graphs (a registry:
one module per family),
:func:`closed_form` gives their bounds with symbolic depth and :func:`rank` compares them.

Examples
--------
>>> import bounds
>>> bounds.derive(bounds.densenet(2, shared=True)).lipschitz
h**2 + 1
>>> bounds.closed_form("densenet", "n", shared=True)
(h**2 + 1)**(n/2)
"""

from bounds import families
from bounds.closed_forms import closed_form, depth_symbol
from bounds.derive import Bound, EvaluatedBound, derive, propagate
from bounds.errors import (
    ArgumentError,
    BoundsError,
    FamilyError,
    GraphFormatError,
    GraphValidationError,
    InvalidValueError,
    UnboundSymbolError,
)
from bounds.families import (
    Family,
    densenet,
    family_of,
    get_family,
    preset,
    register_family,
    resnet,
    transformer,
    unregister_family,
    vgg,
)
from bounds.io import graph_from_data, graph_to_data, read_graph, write_graph
from bounds.ranking import PairCondition, Ranking, rank
from bounds.schema import KINDS, OPS, OpSpec, node_lipschitz, parse_constant, validate

__all__ = [
    # errors
    "BoundsError", "FamilyError", "GraphFormatError", "GraphValidationError",
    "UnboundSymbolError", "InvalidValueError", "ArgumentError",
    # schema and files
    "OPS", "KINDS", "OpSpec", "validate", "node_lipschitz", "parse_constant",
    "read_graph", "write_graph", "graph_to_data", "graph_from_data",
    # derivation
    "Bound", "EvaluatedBound", "derive", "propagate",
    # families, closed forms, rankings
    "families", "Family", "register_family", "unregister_family", "get_family", "family_of",
    "FAMILIES", "PRESETS", "vgg", "resnet", "densenet", "transformer", "preset",
    "closed_form", "depth_symbol", "rank", "Ranking", "PairCondition",
]


def __getattr__(name: str):
    # FAMILIES and PRESETS follow the registry (bounds.families.register_family)
    if name in ("FAMILIES", "PRESETS"):
        return getattr(families, name)
    raise AttributeError(f"module 'bounds' has no attribute {name!r}")
