"""torch model -> architecture graph with certified constants, and certified Fisher bounds.

- :func:`trace_model` exports a model once (``torch.export``: functional ATen graph,
  normalised arguments, hooks and subclasses traced through) and returns a
  :class:`TracedModel` with every certified bound: global and local Fisher bounds,
  Lipschitz bounds of the output or the centred output; each self-checks against exact
  float64 values at the inputs it was given.
- :func:`fisher_bound`, :func:`lipschitz_bound`, :func:`module_graph` are one-call forms.
- :func:`register_rule` adds the rule of an ATen operator or a module class.
- :func:`linear_operator_norm`, :func:`conv_operator_norm_bound` are the certified norms
  (:func:`conv_operator_norm_estimate` is the labelled power-iteration estimate).

Layout: :mod:`~numeric.graph.export` (torch.export), :mod:`~numeric.graph.registry` (the
registry), :mod:`~numeric.graph.rules` (built-in rules by operator family),
:mod:`~numeric.graph.rows` (rows of the batch), :mod:`~numeric.graph.trace` (graph
building), :mod:`~numeric.graph.passes` (exact tightenings), :mod:`~numeric.graph.bound`
(bounds; one-call forms in :mod:`~numeric.graph.calls`), :mod:`~numeric.graph.crown`
(linear bound propagation of the margins: the certified radius of ReLU networks), :mod:`~numeric.graph.selfcheck` (the last line of defence),
:mod:`~numeric.graph.norms` (operator norms).
"""

from numeric.graph.bound import RegionBound, TracedModel, trace_model
from numeric.graph.calls import fisher_bound, lipschitz_bound, module_graph, region_bound
from numeric.graph.norms import (
    CERTIFICATION_FACTOR,
    ConvLayer,
    conv_operator_norm_bound,
    conv_operator_norm_bounds,
    model_conv_norm_bounds,
    conv_operator_norm_estimate,
    linear_operator_norm,
)
from numeric.graph.registry import (
    GraphOptions,
    NodeSpec,
    Rule,
    RuleContext,
    Value,
    lookup_rule,
    register_rule,
)
from numeric.graph.rules import install_default_rules

install_default_rules()

__all__ = [
    "trace_model",
    "TracedModel",
    "module_graph",
    "fisher_bound",
    "lipschitz_bound",
    "region_bound",
    "RegionBound",
    "register_rule",
    "lookup_rule",
    "linear_operator_norm",
    "conv_operator_norm_bound",
    "conv_operator_norm_bounds",
    "model_conv_norm_bounds",
    "ConvLayer",
    "conv_operator_norm_estimate",
    "CERTIFICATION_FACTOR",
    "GraphOptions",
    "NodeSpec",
    "Rule",
    "RuleContext",
    "Value",
]
