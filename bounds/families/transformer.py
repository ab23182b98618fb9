r"""ViT-style pre-LN Transformer: patch embedding, blocks, final LayerNorm, head.

The builder :func:`transformer`, its closed form :func:`closed_form`, the torchvision
presets (ViT-B/16, B/32, L/16, L/32, H/14; the input size is fixed by the model, 224 or
518) and the model names it answers to (also under the alias ``vit``). torchvision's
``EncoderBlock`` is pre-LN (``ln_1`` -> attention -> residual, ``ln_2`` -> MLP with GELU ->
residual), followed by ``encoder.ln``, the class token and the head: the graph below.

References
----------
Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition at
Scale", ICLR 2021, arXiv:2010.11929.
"""

from __future__ import annotations

import networkx as nx
import sympy

import theory
from bounds.families import _common as common
from bounds.families.registry import Family
from bounds.schema import OPS
from bounds.validation import choice, flag, integer
from theory.docstrings import fill_doc

__all__ = ["transformer", "closed_form", "PRESETS", "PATTERNS", "FAMILY"]

PRESETS = {
    "vit_b_16": {"depth": 12, "heads": 12},
    "vit_b_32": {"depth": 12, "heads": 12},
    "vit_l_16": {"depth": 24, "heads": 16},
    "vit_l_32": {"depth": 24, "heads": 16},
    "vit_h_14": {"depth": 32, "heads": 16},
}
PATTERNS = (r"vit(_\w+)?",)


def _activations() -> tuple[str, ...]:
    return tuple(op for op, spec in OPS.items() if spec.kind == "activation")


@fill_doc(**common.DOCS)
def transformer(depth: int = 1, *, heads: int = 1, mlp: bool = True,
                activation: str = "gelu", embedding: bool = True, final_norm: bool = True,
                head: bool = True, shared: bool = False, symbol: str = "h") -> nx.DiGraph:
    r"""A ViT-style pre-LN Transformer: patch embedding, blocks, final LayerNorm, head.

    Embedding: a linear patch embedding (:math:`s`), concatenated with a learned class
    token and added to a learned position embedding (``constant`` nodes, :math:`L = 0`).
    Block :math:`l`: :math:`u \leftarrow u + W_{l,1}\,\mathrm{concat}_k
    A_{l,k}(\mathrm{LN}_{l,1}(u))` and, with ``mlp``,
    :math:`u \leftarrow u + W_{l,3}\,\sigma(W_{l,2}\,\mathrm{LN}_{l,2}(u))`. Then a final
    LayerNorm (:math:`\ell_f`), the class token (``select``) and a linear head (:math:`w`).

    **Domain.** LayerNorm and dot-product attention are not globally Lipschitz. The
    constants mean: :math:`\ell_{l,j}` bounds LayerNorm with variance floor
    :math:`\varepsilon > 0`, which is globally :math:`\max|\gamma|/\sqrt{\varepsilon}`
    -Lipschitz (:func:`theory.layernorm_lipschitz`); :math:`a_{l,k}` bounds
    head :math:`k` on token sequences whose tokens have norm at most
    :math:`R_l = \max|\gamma_{l,1}|\sqrt{D} + \|\beta_{l,1}\|`
    (:func:`theory.attention_head_lipschitz`). Every output token of
    :math:`\mathrm{LN}_{l,1}` lies in that ball whatever the input
    (:func:`theory.layernorm_output_radius`), so attention is only ever
    evaluated on its domain and the derived bound holds for **every** input :math:`x`
    (:func:`theory.pre_ln_attention_lipschitz` gives one block's constant,
    :math:`1 + \ell\, \|W_o\| \sqrt{\sum_k a_k^2}`, the same as the graph's).
    The argument needs pre-LN: in a post-LN block attention sees unbounded tokens.

    The closed form (:func:`bounds.closed_form`) is

    .. math:: \operatorname{Lip}(f) \le s \prod_{l=1}^{n}
        \Bigl(1 + \ell_{l,1} h_{l,1} \sqrt{\textstyle\sum_k a_{l,k}^2}\Bigr)
        \bigl(1 + \ell_{l,2} h_{l,2}\, \gamma_\sigma\, h_{l,3}\bigr)\, \ell_f\, w,

    :math:`\gamma_\sigma` the activation's constant (:func:`theory.activation_lipschitz`).
    With ``shared=True`` the linear layers share ``h``, the LayerNorms ``ell`` and the
    attention heads ``a``.

    Parameters
    ----------
    depth : int, default 1
        Number of blocks :math:`n` (ViT-B/16: 12).
    heads : int, default 1
        Attention heads :math:`H` (one ``attention`` node each, concatenated).
    mlp : bool, default True
        Include the MLP sub-block.
    activation : str, default "gelu"
        An activation op of the schema for the MLP (at its default parameters).
    embedding, final_norm, head : bool, default True
        Include the patch embedding, the final LayerNorm, the classifier head.
    %(shared)s

    %(returns)s

    References
    ----------
    Dosovitskiy et al., ICLR 2021, arXiv:2010.11929.
    Xiong et al., "On Layer Normalization in the Transformer Architecture", ICML 2020,
    arXiv:2002.04745.
    Kim, Papamakarios and Mnih, "The Lipschitz Constant of Self-Attention", ICML 2021,
    arXiv:2006.04710.

    Examples
    --------
    >>> from bounds import derive, transformer
    >>> derive(transformer(1, mlp=False, embedding=False, head=False,
    ...                    final_norm=False)).lipschitz
    a[1, 1]*ell[1, 1]*h[1, 1] + 1
    >>> derive(transformer(2, heads=4, mlp=False, shared=True)).lipschitz
    ell*h**2*(2*a*ell*h + 1)**2
    """
    f = "transformer"
    depth, heads = integer(f, "depth", depth), integer(f, "heads", heads)
    activation = choice(f, "activation", activation, _activations())
    mlp, embedding = flag(f, "mlp", mlp), flag(f, "embedding", embedding)
    final_norm, head = flag(f, "final_norm", final_norm), flag(f, "head", head)
    c = common.constants(f, shared, symbol)

    add = common.Builder(f"transformer{depth}")
    u = add("x", "input")
    if embedding:
        e = add("patch_embedding", "embedding", u, lipschitz=c("stem"))
        token = add("class_token", "constant")
        position = add("position_embedding", "constant")
        u = add("embedding", "add", add("tokens", "concat", token, e), position)
    for l in range(1, depth + 1):
        v = add(f"block{l}.norm1", "layernorm", u, lipschitz=c("norm", l, 1))
        if heads == 1:
            v = add(f"block{l}.attention", "attention", v, lipschitz=c("attention", l, 1))
        else:
            v = add(f"block{l}.heads", "concat", *(
                add(f"block{l}.head{k}", "attention", v, lipschitz=c("attention", l, k))
                for k in range(1, heads + 1)))
        v = add(f"block{l}.projection", "linear", v, lipschitz=c("layer", l, 1))
        u = add(f"block{l}.add1", "add", u, v)
        if mlp:
            v = add(f"block{l}.norm2", "layernorm", u, lipschitz=c("norm", l, 2))
            v = add(f"block{l}.fc1", "linear", v, lipschitz=c("layer", l, 2))
            v = add(f"block{l}.{activation}", activation, v)
            v = add(f"block{l}.fc2", "linear", v, lipschitz=c("layer", l, 3))
            u = add(f"block{l}.add2", "add", u, v)
    if final_norm:
        u = add("norm", "layernorm", u, lipschitz=c("final_norm"))
    if head:
        u = add("head", "linear", add("class_token_out", "select", u), lipschitz=c("head"))
    add("logits", "output", u)
    return add.G


@common.closed_form_function("transformer")
def closed_form(depth=1, *, heads=1, mlp=True, activation="gelu", embedding=True,
                final_norm=True, head=True, shared=False, symbol="h"):
    r"""Transformer: :math:`s \prod_l (1 + \ell_{l,1} h_{l,1} \alpha_l)(1 + \ell_{l,2}
    h_{l,2} \gamma h_{l,3})\, \ell_f\, w`, :math:`\alpha_l = \sqrt{\sum_k a_{l,k}^2}`.

    *Proof.* Embedding: the patch embedding gives :math:`s`; concatenating the class
    token (a constant, :math:`L = 0`) gives :math:`\sqrt{0 + s^2} = s`; adding the
    position embedding (:math:`L = 0`) gives :math:`s + 0`. Block :math:`l` with input
    :math:`u`: the LayerNorm gives :math:`\ell_{l,1} L(u)`, head :math:`k`
    :math:`a_{l,k} \ell_{l,1} L(u)`, their concatenation
    :math:`\ell_{l,1} L(u) \sqrt{\sum_k a_{l,k}^2}` (concatenation rule; one head:
    :math:`a_{l,1}`), the projection multiplies by :math:`h_{l,1}`, and the residual
    ``add`` gives :math:`L(u)(1 + \ell_{l,1} h_{l,1} \alpha_l)`. The MLP sub-block
    likewise gives :math:`(1 + \ell_{l,2} h_{l,2} \gamma h_{l,3})` with :math:`\gamma`
    the activation's constant (:func:`theory.activation_lipschitz`). Induction over
    the blocks, then the final LayerNorm :math:`\ell_f`, the class-token ``select``
    (constant 1) and the head :math:`w`. The domain of validity (every input, thanks to
    pre-LN and :math:`\varepsilon > 0`) is argued in :func:`bounds.transformer`.
    """
    f = "closed_form('transformer')"
    n = common.depth_value(f, depth)
    heads = integer(f, "heads", heads)
    gamma = theory.activation_lipschitz(choice(f, "activation", activation, _activations()))
    mlp = flag(f, "mlp", mlp)
    c = common.constants(f, shared, symbol)

    def block(l):
        alpha = sympy.sqrt(sum(c("attention", l, k) ** 2 for k in range(1, heads + 1)))
        factor = 1 + c("norm", l, 1) * c("layer", l, 1) * alpha
        if mlp:
            factor *= 1 + c("norm", l, 2) * c("layer", l, 2) * gamma * c("layer", l, 3)
        return factor

    result = common.product(block, common.LAYER, 1, n, shared=shared)
    if flag(f, "embedding", embedding):
        result *= c("stem")
    if flag(f, "final_norm", final_norm):
        result *= c("final_norm")
    if flag(f, "head", head):
        result *= c("head")
    return result


FAMILY = Family("transformer", transformer, closed_form, presets=PRESETS, patterns=PATTERNS,
                aliases=("vit",))
