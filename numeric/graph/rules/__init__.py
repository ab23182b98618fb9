"""The built-in rules, one module per family of operators.

- :mod:`~numeric.graph.rules.linear`: ``linear``, matrix products, convolutions;
- :mod:`~numeric.graph.rules.normalization`: BatchNorm, LayerNorm, GroupNorm, InstanceNorm;
- :mod:`~numeric.graph.rules.activations`: elementwise activations, clamps, softmax;
- :mod:`~numeric.graph.rules.pooling`: max/average pooling and reductions;
- :mod:`~numeric.graph.rules.attention`: ``nn.MultiheadAttention`` kept whole;
- :mod:`~numeric.graph.rules.arithmetic`: sums, scalings, and the refusals of products;
- :mod:`~numeric.graph.rules.movement`: views, indexing, padding, concatenation.

Each module documents why every constant it gives is an upper bound, on which domain.
"""

from numeric.graph.rules import (activations, arithmetic, attention, linear, movement,
                                 normalization, pooling)
from numeric.graph.rules.common import TOLERANCE

__all__ = ["install_default_rules", "TOLERANCE"]


def install_default_rules() -> None:
    """Register every built-in rule (called once on import of :mod:`numeric.graph`)."""
    for module in (linear, normalization, activations, pooling, attention, arithmetic,
                   movement):
        module.register()
