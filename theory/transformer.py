r"""Certified Jacobian-norm bounds for LayerNorm and dot-product self-attention.

Neither block is globally Lipschitz in general: dot-product self-attention is not Lipschitz
on all of :math:`\mathbb{R}^{N \times D}` (Kim et al. 2021), and LayerNorm without its
``eps`` has a Jacobian that scales with :math:`1/\sigma` of its input. Every constant here
therefore comes with its **domain**, stated at the top of its docstring and proved in its
Notes:

- LayerNorm with ``eps > 0``: all of :math:`\mathbb{R}^D` (the variance is floored by eps),
  :func:`layernorm_lipschitz`; its Jacobian at a point, :func:`layernorm_local_lipschitz`;
  and the ball every output token lies in, :func:`layernorm_output_radius`.
- One attention head: sequences whose tokens have :math:`\|x_i\|_2 \le R`,
  :func:`attention_head_lipschitz`; the same bound evaluated from the activations at one
  sequence, :func:`attention_head_local_lipschitz`.
- Multi-head attention (concatenate heads, then the output projection),
  :func:`multihead_attention_lipschitz`.
- A pre-LN attention block :math:`X \mapsto X + \mathrm{MHA}(\mathrm{LN}(X))`: every input,
  because LayerNorm bounds the tokens attention sees, :func:`pre_ln_attention_lipschitz`.

Norms of a sequence :math:`X \in \mathbb{R}^{N \times D}` (rows are tokens) are Frobenius
norms, so a Jacobian norm is the operator 2-norm of the :math:`ND \times ND` Jacobian of
:math:`\operatorname{vec}(X)`. Weight norms are spectral norms (largest singular value).
A Jacobian-norm bound that holds on a convex set is a Lipschitz constant on that set (mean
value inequality); every domain above is convex.

The constants live in :mod:`theory.layernorm` and :mod:`theory.attention`; this module
gathers them under the name the Transformer bounds use.
"""

from theory.attention import (
    attention_head_lipschitz,
    attention_head_local_lipschitz,
    multihead_attention_lipschitz,
    pre_ln_attention_lipschitz,
)
from theory.layernorm import (
    layernorm_lipschitz,
    layernorm_local_lipschitz,
    layernorm_output_radius,
)

__all__ = [
    "layernorm_lipschitz",
    "layernorm_local_lipschitz",
    "layernorm_output_radius",
    "attention_head_lipschitz",
    "attention_head_local_lipschitz",
    "multihead_attention_lipschitz",
    "pre_ln_attention_lipschitz",
]
