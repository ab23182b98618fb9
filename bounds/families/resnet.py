r"""ResNet: residual blocks ``relu(shortcut(u) + branch(u))``, optional stem and head.

The builder :func:`resnet`, its closed form :func:`closed_form`, the torchvision presets
(ResNet18/34/50/101/152; Wide ResNet and ResNeXt have the same graph, wider or grouped
convolutions) and the model names it answers to. BatchNorm follows each convolution in
torchvision and is folded into it: a constant bounds the convolution followed by its BN in
eval mode. The head's ``AdaptiveAvgPool2d((1, 1))`` averages the whole feature map (norm
:math:`1/\sqrt{HW} \le 1` for every input size), so the presets hold for every input size.

References
----------
He, Zhang, Ren and Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
arXiv:1512.03385.
"""

from __future__ import annotations

import networkx as nx
import sympy

import theory
from bounds.families import _common as common
from bounds.families.registry import Family
from bounds.validation import choice, flag, integers
from theory.docstrings import fill_doc

__all__ = ["resnet", "closed_form", "PRESETS", "PATTERNS", "FAMILY"]

_BLOCK_WIDTH = {"basic": 2, "bottleneck": 3}
_PROJECTIONS = ("none", "stages", "all")
_TORCHVISION = {"projection": "stages", "stem": True, "head": True}

PRESETS = {
    "resnet18": {"depth": (2, 2, 2, 2), "block": "basic", **_TORCHVISION},
    "resnet34": {"depth": (3, 4, 6, 3), "block": "basic", **_TORCHVISION},
    "resnet50": {"depth": (3, 4, 6, 3), "block": "bottleneck", **_TORCHVISION},
    "resnet101": {"depth": (3, 4, 23, 3), "block": "bottleneck", **_TORCHVISION},
    "resnet152": {"depth": (3, 8, 36, 3), "block": "bottleneck", **_TORCHVISION},
}
PATTERNS = (r"(wide_)?resnet\d*(_\d+)?", r"resnext\d*(_\w+)?")


def _projected(projection: str, block: str, stage: int, index: int) -> bool:
    """Whether block ``index`` (1-based) of ``stage`` has a projection shortcut."""
    if projection == "all":
        return True
    return projection == "stages" and index == 1 and (stage > 1 or block == "bottleneck")


@fill_doc(**common.DOCS)
def resnet(depth=2, *, block: str = "basic", projection: str = "none", stem: bool = False,
           head: bool = False, shared: bool = False, symbol: str = "h") -> nx.DiGraph:
    r"""A ResNet: residual blocks ``relu(shortcut(u) + branch(u))``, optional stem and head.

    Block :math:`b` (numbered through all stages) has a branch of convolutions with
    constants :math:`h_{b,1}, \dots, h_{b,k}` and ReLUs between (``basic``: 3x3, 3x3,
    :math:`k = 2`; ``bottleneck``: 1x1, 3x3, 1x1, :math:`k = 3`) and an identity shortcut,
    or a 1x1 projection convolution with constant :math:`p_b`. The closed form
    (:func:`bounds.closed_form`) is

    .. math:: \operatorname{Lip}(f) \le [s \cdot 2] \prod_b (q_b + \textstyle\prod_k
              h_{b,k}) \, [w], \qquad q_b \in \{1, p_b\}.

    Parameters
    ----------
    depth : int or tuple of int, default 2
        Blocks per stage; an int is one stage (ResNet18: ``(2, 2, 2, 2)``).
    block : {"basic", "bottleneck"}
    projection : {"none", "stages", "all"}
        Where shortcuts are 1x1 projections: nowhere; at the first block of every stage
        that changes the width (stages 2.. for basic blocks, every stage for bottleneck
        blocks, as in He et al.); everywhere.
    %(stem_head)s
    %(shared)s

    %(returns)s

    References
    ----------
    He et al., CVPR 2016, arXiv:1512.03385.

    Examples
    --------
    >>> from bounds import derive, resnet
    >>> derive(resnet(2)).lipschitz
    (h[1, 1]*h[1, 2] + 1)*(h[2, 1]*h[2, 2] + 1)
    >>> derive(resnet(1, block="bottleneck", projection="all", shared=True)).lipschitz
    h*(h**2 + 1)
    """
    f = "resnet"
    stages = integers(f, "depth", depth)
    block = choice(f, "block", block, tuple(_BLOCK_WIDTH))
    projection = choice(f, "projection", projection, _PROJECTIONS)
    stem, head = flag(f, "stem", stem), flag(f, "head", head)
    c = common.constants(f, shared, symbol)

    add = common.Builder(f"resnet{'-'.join(map(str, stages))}-{block}")
    u = add("x", "input")
    if stem:
        u = common.stem(add, u, c("stem"))
    b = 0
    for stage, size in enumerate(stages, start=1):
        for index in range(1, size + 1):
            b += 1
            v = u
            for k in range(1, _BLOCK_WIDTH[block] + 1):
                if k > 1:
                    v = add(f"block{b}.relu{k - 1}", "relu", v)
                v = add(f"block{b}.conv{k}", "conv", v, lipschitz=c("layer", b, k))
            shortcut = u
            if _projected(projection, block, stage, index):
                shortcut = add(f"block{b}.projection", "conv", u, label="1x1 projection",
                               lipschitz=c("projection", b))
            v = add(f"block{b}.add", "add", shortcut, v)
            u = add(f"block{b}.relu", "relu", v)
    if head:
        u = common.classifier(add, u, c("head"))
    add("logits", "output", u)
    return add.G


@common.closed_form_function("resnet")
def closed_form(depth=2, *, block="basic", projection="none", stem=False, head=False,
                shared=False, symbol="h"):
    r"""ResNet: :math:`[2s] \prod_b (q_b + \beta_b) [w]`, :math:`\beta_b = \prod_k h_{b,k}`.

    *Proof.* Let :math:`u` be the input of block :math:`b`. Its branch is a chain of
    convolutions and ReLUs, so (composition) its output has
    :math:`L = \beta_b L(u)` with :math:`\beta_b = \prod_{k} h_{b,k}`; its shortcut
    has :math:`L = q_b L(u)` with :math:`q_b = 1` (identity) or :math:`p_b`
    (projection). The ``add`` node sums them: :math:`(q_b + \beta_b) L(u)`, and the ReLU
    after it keeps this. By induction over the blocks, in order,
    :math:`L(\text{last block}) = L(\text{first input}) \prod_b (q_b + \beta_b)`. The stem
    contributes :math:`s \cdot 1 \cdot 2` (convolution, ReLU, 3x3/2 max pooling), the head
    :math:`1 \cdot w` (pooling bounded by 1, linear layer). With stage sizes
    :math:`n_1, \dots, n_S` blocks :math:`N_{i-1} + 1, \dots, N_i` form stage :math:`i`
    (:math:`N_i = n_1 + \dots + n_i`); with ``projection="stages"`` block
    :math:`N_{i-1} + 1` has :math:`q = p` for :math:`i \ge 2` (every :math:`i` for
    bottleneck blocks), which splits that factor off the stage's product.
    """
    f = "closed_form('resnet')"
    stages = common.depth_values(f, depth)
    block = choice(f, "block", block, tuple(_BLOCK_WIDTH))
    projection = choice(f, "projection", projection, _PROJECTIONS)
    width = _BLOCK_WIDTH[block]
    c = common.constants(f, shared, symbol)

    def branch(b):
        return sympy.Mul(*(c("layer", b, k) for k in range(1, width + 1)))

    result = sympy.Integer(1)
    if flag(f, "stem", stem):
        result *= c("stem") * theory.maxpool_lipschitz(common.MAXPOOL_STEM["kernel_size"],
                                                       common.MAXPOOL_STEM["stride"])
    start = sympy.Integer(1)
    for stage, size in enumerate(stages, start=1):
        end = start + size - 1
        if projection == "all":
            result *= common.product(lambda b: c("projection", b) + branch(b), common.BLOCK,
                                     start, end, shared=shared)
        else:
            first = start
            if projection == "stages" and (stage > 1 or block == "bottleneck"):
                result *= c("projection", start) + branch(start)
                first = start + 1
            result *= common.product(lambda b: 1 + branch(b), common.BLOCK, first, end,
                                     shared=shared)
        start = end + 1
    if flag(f, "head", head):
        result *= c("head")
    return result


FAMILY = Family("resnet", resnet, closed_form, presets=PRESETS, patterns=PATTERNS)
