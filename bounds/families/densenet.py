r"""DenseNet: in a dense block, every layer sees the concatenation of all before it.

The builder :func:`densenet`, its closed form :func:`closed_form`, the torchvision presets
(DenseNet121/161/169/201) and the model names it answers to.

**What the constants bound.** torchvision's DenseNet is pre-activation: a dense layer is
BN, ReLU, 1x1 convolution, BN, ReLU, 3x3 convolution; a transition is BN, ReLU, 1x1
convolution, 2x2 average pooling; the head is the final BN (``norm5``), ReLU, global
average pooling and the classifier. A BN in front of a ReLU cannot be folded into the
convolution after it, so each symbol bounds a product of norms: :math:`h_{l,1}` bounds
:math:`\|\mathrm{BN}_2 \circ \mathrm{conv}_1\| \cdot \|\mathrm{BN}_1\|` (the second BN
folds into the first convolution), :math:`h_{l,2}` bounds :math:`\|\mathrm{conv}_2\|`,
:math:`t_b` bounds :math:`\|\mathrm{conv}\|\,\|\mathrm{BN}\|` of the transition, :math:`s`
the stem's convolution with its BN folded, :math:`w` bounds
:math:`\|\mathrm{classifier}\|\,\|\mathrm{norm5}\|`. With these readings the graph is
torchvision's, and (global average pooling, norm at most 1) it holds for every input size.

References
----------
Huang, Liu, van der Maaten and Weinberger, "Densely Connected Convolutional Networks",
CVPR 2017, arXiv:1608.06993.
"""

from __future__ import annotations

import networkx as nx
import sympy

import theory
from bounds.families import _common as common
from bounds.families.registry import Family
from bounds.validation import flag, integers
from theory.docstrings import fill_doc

__all__ = ["densenet", "closed_form", "PRESETS", "PATTERNS", "FAMILY"]

_TORCHVISION = {"bottleneck": True, "transition": True, "stem": True, "head": True}

PRESETS = {
    "densenet121": {"depth": (6, 12, 24, 16), **_TORCHVISION},
    "densenet161": {"depth": (6, 12, 36, 24), **_TORCHVISION},
    "densenet169": {"depth": (6, 12, 32, 32), **_TORCHVISION},
    "densenet201": {"depth": (6, 12, 48, 32), **_TORCHVISION},
}
PATTERNS = (r"densenet\d*",)


@fill_doc(**common.DOCS)
def densenet(depth=2, *, bottleneck: bool = False, transition: bool = True,
             stem: bool = False, head: bool = False, shared: bool = False,
             symbol: str = "h") -> nx.DiGraph:
    r"""A DenseNet: in a dense block, every layer sees the concatenation of all before it.

    In a block with input :math:`u`, layer :math:`j` reads
    :math:`\mathrm{concat}(u, y_1, \dots, y_{j-1})` (just :math:`u` for :math:`j = 1`) and
    outputs :math:`y_j`; the block outputs :math:`\mathrm{concat}(u, y_1, \dots, y_m)`.
    A layer is ReLU then a 3x3 convolution (:math:`h_l`), or with ``bottleneck`` ReLU,
    1x1 convolution (:math:`h_{l,1}`), ReLU, 3x3 convolution (:math:`h_{l,2}`); layers
    are numbered through all blocks. Between blocks a transition: ReLU, 1x1 convolution
    (:math:`t_b`), 2x2 average pooling of stride 2 (constant 1/2,
    :func:`theory.avgpool_lipschitz`). The closed form (:func:`bounds.closed_form`) is

    .. math:: \operatorname{Lip}(f) \le [2 s] \prod_l \sqrt{1 + g_l^2}\,
              \prod_{b < B} \tfrac{t_b}{2}\, [w], \qquad g_l = h_l \text{ or }
              h_{l,1} h_{l,2}.

    Parameters
    ----------
    depth : int or tuple of int, default 2
        Layers per dense block (DenseNet121: ``(6, 12, 24, 16)``).
    bottleneck : bool, default False
        DenseNet-B layers (1x1 then 3x3 convolution).
    transition : bool, default True
        Transition layers between consecutive blocks.
    %(stem_head)s
    %(shared)s

    %(returns)s

    References
    ----------
    Huang et al., CVPR 2017, arXiv:1608.06993.

    Examples
    --------
    >>> from bounds import derive, densenet
    >>> derive(densenet(2)).lipschitz
    sqrt(h[1]**2 + 1)*sqrt(h[2]**2 + 1)
    >>> derive(densenet(3, shared=True)).lipschitz
    (h**2 + 1)**(3/2)
    """
    f = "densenet"
    blocks = integers(f, "depth", depth)
    bottleneck = flag(f, "bottleneck", bottleneck)
    transition = flag(f, "transition", transition)
    stem, head = flag(f, "stem", stem), flag(f, "head", head)
    c = common.constants(f, shared, symbol)

    add = common.Builder(f"densenet{'-'.join(map(str, blocks))}")
    u = add("x", "input")
    if stem:
        u = common.stem(add, u, c("stem"))
    l = 0
    for b, size in enumerate(blocks, start=1):
        features = [u]
        for j in range(1, size + 1):
            l += 1
            v = features[0] if j == 1 else add(f"layer{l}.in", "concat", *features)
            if bottleneck:
                v = add(f"layer{l}.relu1", "relu", v)
                v = add(f"layer{l}.conv1", "conv", v, label="1x1 convolution",
                        lipschitz=c("layer", l, 1))
                v = add(f"layer{l}.relu2", "relu", v)
                v = add(f"layer{l}.conv2", "conv", v, label="3x3 convolution",
                        lipschitz=c("layer", l, 2))
            else:
                v = add(f"layer{l}.relu", "relu", v)
                v = add(f"layer{l}.conv", "conv", v, label="3x3 convolution",
                        lipschitz=c("layer", l))
            features.append(v)
        u = add(f"block{b}.out", "concat", *features)
        if transition and b < len(blocks):
            u = add(f"transition{b}.relu", "relu", u)
            u = add(f"transition{b}.conv", "conv", u, label="1x1 convolution",
                    lipschitz=c("transition", b))
            u = add(f"transition{b}.pool", "avgpool", u, params=dict(common.POOL_2X2))
    if head:
        u = common.classifier(add, u, c("head"), relu=True)
    add("logits", "output", u)
    return add.G


@common.closed_form_function("densenet")
def closed_form(depth=2, *, bottleneck=False, transition=True, stem=False, head=False,
                shared=False, symbol="h"):
    r"""DenseNet: :math:`[2s] \prod_l \sqrt{1 + g_l^2} \prod_{b<B} (t_b/2) [w]`.

    *Proof.* Take a dense block with input :math:`u` and layers :math:`1, \dots, m`,
    layer :math:`j` with constant :math:`g_j` (:math:`h_j`, or :math:`h_{j,1} h_{j,2}`
    for bottleneck layers: a chain ReLU-conv[-ReLU-conv], composition multiplies). Let
    :math:`S_j = L(\mathrm{concat}(u, y_1, \dots, y_j))`, so :math:`S_0 = L(u)`.
    Layer :math:`j + 1` reads that concatenation, so :math:`L(y_{j+1}) = g_{j+1} S_j`.
    By the concatenation rule,

    .. math::

        S_{j+1}^2 = L(u)^2 + \sum_{i \le j+1} L(y_i)^2
                  = S_j^2 + L(y_{j+1})^2 = S_j^2 (1 + g_{j+1}^2),

    using :math:`S_j^2 = L(u)^2 + \sum_{i \le j} L(y_i)^2` (the rule at step :math:`j`).
    By induction :math:`S_m = L(u) \prod_{j=1}^{m} \sqrt{1 + g_j^2}`, the block's
    output. A transition (ReLU, 1x1 convolution :math:`t_b`, 2x2/2 average pooling of
    norm :math:`1/2`) multiplies by :math:`t_b / 2`; the stem by :math:`2 s`, the head
    by :math:`w`. Layers are numbered through the blocks, block :math:`b` holding
    :math:`N_{b-1} + 1, \dots, N_b`.
    """
    f = "closed_form('densenet')"
    blocks = common.depth_values(f, depth)
    bottleneck = flag(f, "bottleneck", bottleneck)
    c = common.constants(f, shared, symbol)

    def layer(l):
        if bottleneck:
            return sympy.sqrt(1 + (c("layer", l, 1) * c("layer", l, 2)) ** 2)
        return sympy.sqrt(1 + c("layer", l) ** 2)

    result = sympy.Integer(1)
    if flag(f, "stem", stem):
        result *= c("stem") * theory.maxpool_lipschitz(common.MAXPOOL_STEM["kernel_size"],
                                                       common.MAXPOOL_STEM["stride"])
    average = theory.avgpool_lipschitz(common.POOL_2X2["kernel_size"],
                                       common.POOL_2X2["stride"])
    start = sympy.Integer(1)
    for b, size in enumerate(blocks, start=1):
        end = start + size - 1
        result *= common.product(layer, common.LAYER, start, end, shared=shared)
        if flag(f, "transition", transition) and b < len(blocks):
            result *= c("transition", b) * average
        start = end + 1
    if flag(f, "head", head):
        result *= c("head")
    return result


FAMILY = Family("densenet", densenet, closed_form, presets=PRESETS, patterns=PATTERNS)
