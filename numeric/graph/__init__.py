"""torch model -> architecture graph with certified constants, and certified Fisher bounds.

- :func:`module_graph` traces a model with torch.fx into the schema of
  ``docs/internals.md``; every constant is a certified upper bound.
- :func:`fisher_bound` bounds :math:`\\lambda_{\\max}(F(x))` for every input, or at each
  row of a batch (``local=True``).
- :func:`register_rule` adds the rule of a module type, function or Tensor method.
- :func:`linear_operator_norm`, :func:`conv_operator_norm_bound` are the certified norms
  (:func:`conv_operator_norm_estimate` is the labelled power-iteration estimate).

Layout: :mod:`~numeric.graph.norms` (operator norms), :mod:`~numeric.graph.registry`
(the registry), :mod:`~numeric.graph.rules` (built-in rules), :mod:`~numeric.graph.trace`
(tracing and graph building), :mod:`~numeric.graph.bound` (global and local bounds).
"""

from numeric.graph.bound import (TracedModel, fisher_bound, fisher_bounds,
                                 graph_lipschitz_bound, lipschitz_bound, module_graph,
                                 trace_model)
from numeric.graph.norms import (
    CERTIFICATION_FACTOR,
    conv_operator_norm_bound,
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
    "fisher_bounds",
    "lipschitz_bound",
    "graph_lipschitz_bound",
    "register_rule",
    "lookup_rule",
    "linear_operator_norm",
    "conv_operator_norm_bound",
    "conv_operator_norm_estimate",
    "CERTIFICATION_FACTOR",
    "GraphOptions",
    "NodeSpec",
    "Rule",
    "RuleContext",
    "Value",
]
