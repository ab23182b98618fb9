r"""VGG: a chain of convolutions and ReLUs with max pooling, then linear layers.

The builder :func:`vgg`, its closed form :func:`closed_form`, the torchvision presets
(VGG11/13/16/19; the ``_bn`` variants have the same graph with BatchNorm folded into the
convolutions) and the model names it answers to. torchvision's VGG ends its features with
``AdaptiveAvgPool2d((7, 7))``, which *upsamples* below 224x224 (norm up to 7 on a 1x1
feature map); the presets include it, with its norm computed from the input size when
one is given (``input_size``) and the worst case otherwise.

References
----------
Simonyan and Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015, arXiv:1409.1556.
"""

from __future__ import annotations

import numbers

import networkx as nx
import sympy

import theory
from bounds.errors import FamilyError
from bounds.families import _common as common
from bounds.families.registry import Family
from bounds.validation import integer, integers
from theory.docstrings import fill_doc

__all__ = ["vgg", "closed_form", "PRESETS", "PATTERNS", "FAMILY"]

_TORCHVISION = {"adaptive_pool": (7, 7), "classifier_layers": 3}

#: torchvision's configurations: convolutions followed by a 2x2 max pooling, numbered 1..
PRESETS = {
    "vgg11": {"depth": 11, "pool_after": (1, 2, 4, 6, 8), **_TORCHVISION},
    "vgg13": {"depth": 13, "pool_after": (2, 4, 6, 8, 10), **_TORCHVISION},
    "vgg16": {"depth": 16, "pool_after": (2, 4, 7, 10, 13), **_TORCHVISION},
    "vgg19": {"depth": 19, "pool_after": (2, 4, 8, 12, 16), **_TORCHVISION},
}
PATTERNS = (r"vgg\d*(_bn)?",)


def _pool_positions(function: str, pool_after, convs: int) -> frozenset[int]:
    if pool_after is None:
        return frozenset(range(2, convs + 1, 2))
    positions = tuple(pool_after)
    for position in positions:
        if isinstance(position, bool) or not isinstance(position, numbers.Integral) or not (
                1 <= position <= convs):
            raise FamilyError(f"{function}: expected pool_after to hold convolution indices "
                              f"in 1..{convs}, got {pool_after!r}.")
    if len(set(positions)) != len(positions):
        raise FamilyError(f"{function}: expected distinct indices in pool_after, got "
                          f"{pool_after!r}.")
    return frozenset(positions)


def _adaptive(function: str, adaptive_pool, input_size, pools):
    """``(output size, size of the grid the pooling sees or None)``, or None."""
    if adaptive_pool is None:
        if input_size is not None:
            raise FamilyError(f"{function}: input_size only matters with adaptive_pool; got "
                              f"input_size={input_size!r} and no adaptive_pool.")
        return None
    output = integers(function, "adaptive_pool", adaptive_pool)
    if input_size is None:
        return output, None
    size = integers(function, "input_size", input_size)
    size = size * len(output) if len(size) == 1 else size
    if len(size) != len(output):
        raise FamilyError(f"{function}: expected input_size with {len(output)} entries like "
                          f"adaptive_pool, got {input_size!r}.")
    if pools is None:
        raise FamilyError(f"{function}: input_size needs the number of poolings: give an "
                          f"integer depth or pool_after.")
    feature = tuple(side // 2**pools for side in size)
    if min(feature) < 1:
        raise FamilyError(f"{function}: expected input_size of at least {2**pools} pixels "
                          f"per side ({pools} 2x2 poolings), got {input_size!r}.")
    return output, feature


def _adaptive_params(adaptive) -> dict:
    output, feature = adaptive
    params = {"output_size": list(output)}
    if feature is not None:
        params["input_size"] = list(feature)
    return params


@fill_doc(**common.DOCS)
def vgg(depth: int, *, classifier_layers: int = 1, pool_after=None, adaptive_pool=None,
        input_size=None, shared: bool = False, symbol: str = "h") -> nx.DiGraph:
    r"""A VGG-style chain: ``depth`` weighted layers with ReLU, max pooling between stages.

    The first ``depth - classifier_layers`` layers are convolutions, each followed by a
    ReLU and, after the convolutions listed in ``pool_after``, a 2x2 max pooling of stride
    2; then, with ``adaptive_pool``, an adaptive average pooling to that size; then a
    flatten and ``classifier_layers`` linear layers (ReLU and dropout between). Layer
    :math:`l` has constant :math:`h_l` (``h[l]``, or ``h`` when shared), so

    .. math:: \operatorname{Lip}(f) \le \prod_{l=1}^{n} h_l \; [\,\|A\|\,]

    with :math:`\|A\|` the norm of the adaptive pooling
    (:func:`theory.adaptive_avgpool_lipschitz`; :func:`bounds.closed_form` proves it).

    Parameters
    ----------
    depth : int
        Number of weighted layers :math:`n \ge 1` (VGG16: 16).
    classifier_layers : int, default 1
        How many of them are linear layers at the end (VGG16: 3); ``0 <= . <= depth``.
    pool_after : iterable of int, optional
        Convolution indices followed by max pooling; default every second convolution.
        Non-overlapping 2x2 max pooling has constant 1 (:func:`theory.maxpool_lipschitz`).
    adaptive_pool : int or tuple of int, optional
        Output size of an adaptive average pooling after the convolutions (torchvision:
        ``(7, 7)``). Omitted: none.
    input_size : int or tuple of int, optional
        Spatial size of the network input (224 or ``(224, 224)``); the feature map the
        adaptive pooling sees is that divided by :math:`2^P` (:math:`P` poolings, rounded
        down as torch does). Omitted: the adaptive pooling's worst case over every input
        size, :math:`\sqrt{\prod_d m_d}` (7 for ``(7, 7)``), so the graph holds for every
        input. Needs at least :math:`2^P` pixels per side.
    %(shared)s

    %(returns)s

    References
    ----------
    Simonyan and Zisserman, ICLR 2015, arXiv:1409.1556.

    Examples
    --------
    >>> from bounds import derive, vgg
    >>> derive(vgg(3)).lipschitz
    h[1]*h[2]*h[3]
    >>> derive(vgg(16, classifier_layers=3, shared=True)).lipschitz
    h**16
    >>> derive(vgg(3, adaptive_pool=(7, 7), shared=True)).lipschitz
    7*h**3
    >>> derive(vgg(3, adaptive_pool=(7, 7), input_size=14, shared=True)).lipschitz
    h**3
    >>> derive(vgg(3, adaptive_pool=(7, 7), input_size=28, shared=True)).lipschitz
    h**3/2
    """
    f = "vgg"
    depth = integer(f, "depth", depth)
    classifier_layers = integer(f, "classifier_layers", classifier_layers, minimum=0)
    if classifier_layers > depth:
        raise FamilyError(f"{f}: expected classifier_layers <= depth = {depth}, got "
                          f"{classifier_layers}.")
    constant = common.constants(f, shared, symbol)
    convs = depth - classifier_layers
    pools = _pool_positions(f, pool_after, convs)
    adaptive = _adaptive(f, adaptive_pool, input_size, len(pools))

    def layer(index):
        return constant("layer", index)

    add = common.Builder(f"vgg{depth}")
    u = add("x", "input")
    for l in range(1, convs + 1):
        u = add(f"conv{l}", "conv", u, lipschitz=layer(l))
        u = add(f"relu{l}", "relu", u)
        if l in pools:
            u = add(f"pool{l}", "maxpool", u, params=dict(common.POOL_2X2))
    if adaptive is not None:
        u = add("avgpool", "adaptive_avgpool", u, params=_adaptive_params(adaptive))
    u = add("flatten", "flatten", u)
    for j in range(1, classifier_layers + 1):
        u = add(f"fc{j}", "linear", u, lipschitz=layer(convs + j))
        if j < classifier_layers:
            u = add(f"fc{j}.relu", "relu", u)
            u = add(f"fc{j}.dropout", "dropout", u)
    add("logits", "output", u)
    return add.G


@common.closed_form_function("vgg")
def closed_form(depth="n", *, classifier_layers=1, pool_after=None, adaptive_pool=None,
                input_size=None, shared=False, symbol="h"):
    r"""VGG: :math:`\prod_{l=1}^{n} h_l \cdot m^{P} [\,\|A\|\,]` with :math:`m = 1`.

    *Proof.* The graph is a chain ``input -> conv1 -> relu1 [-> pool] -> ... [-> adaptive
    pooling] -> flatten -> fc ... -> output`` in which every node has one predecessor, so
    by induction along the chain (composition multiplies) :math:`L(\text{output})` is the
    product of all node constants: :math:`h_1, \dots, h_n` for the weighted layers, 1 for
    ReLU, dropout and flatten, :math:`m` = ``maxpool_lipschitz((2, 2), (2, 2))``
    :math:`= 1` for each of the :math:`P` pools (:math:`P = \lfloor (n - c)/2 \rfloor`
    by default, ``c`` classifier layers), and the adaptive pooling's norm
    :math:`\|A\|` (:func:`theory.adaptive_avgpool_lipschitz` on the feature map, or its
    worst case :math:`\sqrt{\prod_d m_d}` without ``input_size``).
    """
    f = "closed_form('vgg')"
    n = common.depth_value(f, depth)
    c = integer(f, "classifier_layers", classifier_layers, minimum=0)
    if (n - c).is_negative:
        raise FamilyError(f"{f}: expected classifier_layers <= depth = {n}, got {c}.")
    if pool_after is None:
        pools = sympy.floor((n - c) / 2)
        known = int(pools) if pools.is_Integer else None
    else:
        pools = known = len(tuple(pool_after))
    adaptive = _adaptive(f, adaptive_pool, input_size, known)
    m = theory.maxpool_lipschitz(common.POOL_2X2["kernel_size"], common.POOL_2X2["stride"])
    layers = common.product(lambda l: common.constant("layer", l, shared=shared,
                                                      symbol=symbol),
                            common.LAYER, 1, n, shared=shared)
    result = layers * m**pools
    if adaptive is not None:
        result *= theory.adaptive_avgpool_lipschitz(*adaptive)
    return result


FAMILY = Family("vgg", vgg, closed_form, presets=PRESETS, patterns=PATTERNS)
