r"""Builders of architecture graphs for four families, with symbolic per-layer constants.

Each builder returns a graph of the schema (:mod:`bounds.schema`) whose weighted nodes carry
positive SymPy symbols: with ``shared=True`` one symbol per role (every convolution and
linear layer has the constant ``h``), with ``shared=False`` (the default) one indexed
symbol per layer (``h[3]``, ``h[2, 1]``, ...), so that :func:`bounds.closed_form` can write
the bound with symbolic depth as a :class:`~sympy.Product`. Batch normalisation is folded
into the convolution before it (the constant of ``conv`` bounds conv followed by BN in
eval mode). Activations and pooling take their exact constants from :mod:`theory`.

=========  ===============================  ==============================================
role       distinct symbol                  shared symbol
=========  ===============================  ==============================================
layer      ``h[l]``, ``h[b, k]``            ``h`` (the ``symbol`` argument)
stem       ``s``                            ``h``
head       ``w``                            ``h``
shortcut   ``p[b]`` (projection)            ``h``
transition ``t[b]``                         ``h``
LayerNorm  ``ell[l, 1]``, ``ell[l, 2]``,    ``ell``
           ``ell_f`` (final)
attention  ``a[l, k]`` (head ``k``)         ``a``
=========  ===============================  ==============================================

References
----------
Simonyan and Zisserman, "Very Deep Convolutional Networks for Large-Scale Image
Recognition", ICLR 2015, arXiv:1409.1556.
He, Zhang, Ren and Sun, "Deep Residual Learning for Image Recognition", CVPR 2016,
arXiv:1512.03385.
Huang, Liu, van der Maaten and Weinberger, "Densely Connected Convolutional Networks",
CVPR 2017, arXiv:1608.06993.
Dosovitskiy et al., "An Image is Worth 16x16 Words: Transformers for Image Recognition at
Scale", ICLR 2021, arXiv:2010.11929.
"""

from __future__ import annotations

import numbers

import networkx as nx
import sympy

from bounds.errors import FamilyError
from bounds.schema import OPS

__all__ = ["FAMILIES", "PRESETS", "vgg", "resnet", "densenet", "transformer", "preset"]

#: The family names accepted by :func:`bounds.closed_form` and :func:`bounds.rank`.
FAMILIES = ("vgg", "resnet", "densenet", "transformer")

#: Named architectures: name -> (family, builder options). BN is folded into convs and
#: global average pooling (constant :math:`1/\sqrt{HW} \le 1`) is bounded by 1.
PRESETS = {
    "vgg11": ("vgg", {"depth": 11, "classifier_layers": 3, "pool_after": (1, 2, 4, 6, 8)}),
    "vgg16": ("vgg", {"depth": 16, "classifier_layers": 3, "pool_after": (2, 4, 7, 10, 13)}),
    "vgg19": ("vgg", {"depth": 19, "classifier_layers": 3, "pool_after": (2, 4, 8, 12, 16)}),
    "resnet18": ("resnet", {"depth": (2, 2, 2, 2), "block": "basic", "projection": "stages",
                            "stem": True, "head": True}),
    "resnet34": ("resnet", {"depth": (3, 4, 6, 3), "block": "basic", "projection": "stages",
                            "stem": True, "head": True}),
    "resnet50": ("resnet", {"depth": (3, 4, 6, 3), "block": "bottleneck",
                            "projection": "stages", "stem": True, "head": True}),
    "densenet121": ("densenet", {"depth": (6, 12, 24, 16), "bottleneck": True,
                                 "transition": True, "stem": True, "head": True}),
    "vit_b_16": ("transformer", {"depth": 12, "heads": 12}),
}

#: role -> (distinct name, shared name; None means the family's ``symbol``)
_ROLES = {"layer": (None, None), "stem": ("s", None), "head": ("w", None),
          "projection": ("p", None), "transition": ("t", None), "norm": ("ell", "ell"),
          "final_norm": ("ell_f", "ell"), "attention": ("a", "a")}

_MAXPOOL_STEM = {"kernel_size": [3, 3], "stride": [2, 2], "padding": [1, 1]}
_POOL_2X2 = {"kernel_size": [2, 2], "stride": [2, 2]}
_BLOCK_WIDTH = {"basic": 2, "bottleneck": 3}
_PROJECTIONS = ("none", "stages", "all")


# --------------------------------------------------------------------------- helpers


def _constant(role: str, *index, shared: bool, symbol: str) -> sympy.Expr:
    """The positive symbol of one weighted layer (see the table in the module docstring)."""
    distinct, common = _ROLES[role]
    if shared:
        return sympy.Symbol(common or symbol, positive=True)
    name = distinct or symbol
    if not index:
        return sympy.Symbol(name, positive=True)
    return sympy.IndexedBase(name, positive=True)[index]


def _count(function: str, name: str, value, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise FamilyError(f"{function}: expected {name} to be an integer >= {minimum}, got "
                          f"{value!r}.")
    return int(value)


def _sizes(function: str, name: str, value) -> tuple[int, ...]:
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value,)
    if not isinstance(value, tuple | list) or not value:
        raise FamilyError(f"{function}: expected {name} to be an integer >= 1 or a non-empty "
                          f"tuple of them, got {value!r}.")
    return tuple(_count(function, name, item) for item in value)


def _choice(function: str, name: str, value, choices) -> str:
    if value not in choices:
        raise FamilyError(f"{function}: expected {name} to be one of "
                          f"{', '.join(map(repr, choices))}, got {value!r}.")
    return value


def _flag(function: str, name: str, value) -> bool:
    if not isinstance(value, bool):
        raise FamilyError(f"{function}: expected {name} to be True or False, got {value!r}.")
    return value


def _symbol_name(function: str, symbol) -> str:
    if not isinstance(symbol, str) or not symbol.isidentifier() or symbol in (
            "s", "w", "p", "t", "ell", "ell_f", "a"):
        raise FamilyError(f"{function}: expected symbol to be a name not used by another role "
                          f"(s, w, p, t, ell, ell_f, a), got {symbol!r}.")
    return symbol


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


def _projected(projection: str, block: str, stage: int, index: int) -> bool:
    """Whether block ``index`` (1-based) of ``stage`` has a projection shortcut."""
    if projection == "all":
        return True
    return projection == "stages" and index == 1 and (stage > 1 or block == "bottleneck")


class _Builder:
    """Adds nodes with their edges; returns each node's key."""

    def __init__(self, name: str):
        self.G = nx.DiGraph(name=name)

    def __call__(self, key: str, op: str, *preds: str, **attrs) -> str:
        self.G.add_node(key, op=op, **{k: v for k, v in attrs.items() if v is not None})
        self.G.add_edges_from((pred, key) for pred in preds)
        return key


def _stem(add: _Builder, u: str, constant) -> str:
    u = add("stem.conv", "conv", u, lipschitz=constant, label="7x7 convolution, stride 2")
    u = add("stem.relu", "relu", u)
    return add("stem.pool", "maxpool", u, params=dict(_MAXPOOL_STEM))


def _classifier(add: _Builder, u: str, constant, relu: bool = False) -> str:
    if relu:
        u = add("head.relu", "relu", u)
    u = add("head.pool", "flatten", u,
            label="global average pooling: constant 1/sqrt(H*W), bounded by 1")
    return add("fc", "linear", u, lipschitz=constant)


# --------------------------------------------------------------------------- builders


def vgg(depth: int, *, classifier_layers: int = 1, pool_after=None, shared: bool = False,
        symbol: str = "h") -> nx.DiGraph:
    r"""A VGG-style chain: ``depth`` weighted layers with ReLU, max pooling between stages.

    The first ``depth - classifier_layers`` layers are convolutions, each followed by a
    ReLU and, after the convolutions listed in ``pool_after``, a 2x2 max pooling of stride
    2; then a flatten and ``classifier_layers`` linear layers (ReLU and dropout between).
    Layer :math:`l` has constant :math:`h_l` (``h[l]``, or ``h`` when shared), so

    .. math:: \operatorname{Lip}(f) \le \prod_{l=1}^{n} h_l

    (:func:`bounds.closed_form` proves it).

    Parameters
    ----------
    depth : int
        Number of weighted layers :math:`n \ge 1` (VGG16: 16).
    classifier_layers : int, default 1
        How many of them are linear layers at the end (VGG16: 3); ``0 <= . <= depth``.
    pool_after : iterable of int, optional
        Convolution indices followed by max pooling; default every second convolution.
        Non-overlapping 2x2 max pooling has constant 1 (:func:`theory.maxpool_lipschitz`).
    shared : bool, default False
        One symbol ``h`` for every layer instead of ``h[1], ..., h[n]``.
    symbol : str, default "h"
        Name of the layer symbol.

    Returns
    -------
    networkx.DiGraph

    Raises
    ------
    FamilyError
        If an option is out of range.

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
    """
    f = "vgg"
    depth = _count(f, "depth", depth)
    classifier_layers = _count(f, "classifier_layers", classifier_layers, minimum=0)
    if classifier_layers > depth:
        raise FamilyError(f"{f}: expected classifier_layers <= depth = {depth}, got "
                          f"{classifier_layers}.")
    shared, symbol = _flag(f, "shared", shared), _symbol_name(f, symbol)
    convs = depth - classifier_layers
    pools = _pool_positions(f, pool_after, convs)
    add = _Builder(f"vgg{depth}")
    u = add("x", "input")
    for l in range(1, convs + 1):
        u = add(f"conv{l}", "conv", u,
                lipschitz=_constant("layer", l, shared=shared, symbol=symbol))
        u = add(f"relu{l}", "relu", u)
        if l in pools:
            u = add(f"pool{l}", "maxpool", u, params=dict(_POOL_2X2))
    u = add("flatten", "flatten", u)
    for j in range(1, classifier_layers + 1):
        u = add(f"fc{j}", "linear", u,
                lipschitz=_constant("layer", convs + j, shared=shared, symbol=symbol))
        if j < classifier_layers:
            u = add(f"fc{j}.relu", "relu", u)
            u = add(f"fc{j}.dropout", "dropout", u)
    add("logits", "output", u)
    return add.G


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
    stem : bool, default False
        7x7 convolution (``s``), ReLU, 3x3 max pooling of stride 2 (constant 2,
        :func:`theory.maxpool_lipschitz`).
    head : bool, default False
        Global average pooling (bounded by 1) and a linear classifier (``w``).
    shared : bool, default False
        Every convolution and linear layer has the constant ``h``.
    symbol : str, default "h"

    Returns
    -------
    networkx.DiGraph

    Raises
    ------
    FamilyError
        If an option is out of range.

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
    stages = _sizes(f, "depth", depth)
    block = _choice(f, "block", block, tuple(_BLOCK_WIDTH))
    projection = _choice(f, "projection", projection, _PROJECTIONS)
    stem, head = _flag(f, "stem", stem), _flag(f, "head", head)
    shared, symbol = _flag(f, "shared", shared), _symbol_name(f, symbol)
    add = _Builder(f"resnet{'-'.join(map(str, stages))}-{block}")
    u = add("x", "input")
    if stem:
        u = _stem(add, u, _constant("stem", shared=shared, symbol=symbol))
    b = 0
    for stage, size in enumerate(stages, start=1):
        for index in range(1, size + 1):
            b += 1
            v = u
            for k in range(1, _BLOCK_WIDTH[block] + 1):
                if k > 1:
                    v = add(f"block{b}.relu{k - 1}", "relu", v)
                v = add(f"block{b}.conv{k}", "conv", v,
                        lipschitz=_constant("layer", b, k, shared=shared, symbol=symbol))
            shortcut = u
            if _projected(projection, block, stage, index):
                shortcut = add(f"block{b}.projection", "conv", u, label="1x1 projection",
                               lipschitz=_constant("projection", b, shared=shared,
                                                   symbol=symbol))
            v = add(f"block{b}.add", "add", shortcut, v)
            u = add(f"block{b}.relu", "relu", v)
    if head:
        u = _classifier(add, u, _constant("head", shared=shared, symbol=symbol))
    add("logits", "output", u)
    return add.G


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
    stem : bool, default False
        7x7 convolution (``s``), ReLU, 3x3 max pooling of stride 2 (constant 2).
    head : bool, default False
        ReLU, global average pooling (bounded by 1), linear classifier (``w``).
    shared : bool, default False
        Every convolution and linear layer has the constant ``h``.
    symbol : str, default "h"

    Returns
    -------
    networkx.DiGraph

    Raises
    ------
    FamilyError
        If an option is out of range.

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
    blocks = _sizes(f, "depth", depth)
    bottleneck, transition = _flag(f, "bottleneck", bottleneck), _flag(f, "transition",
                                                                      transition)
    stem, head = _flag(f, "stem", stem), _flag(f, "head", head)
    shared, symbol = _flag(f, "shared", shared), _symbol_name(f, symbol)
    add = _Builder(f"densenet{'-'.join(map(str, blocks))}")
    u = add("x", "input")
    if stem:
        u = _stem(add, u, _constant("stem", shared=shared, symbol=symbol))
    l = 0
    for b, size in enumerate(blocks, start=1):
        features = [u]
        for j in range(1, size + 1):
            l += 1
            v = features[0] if j == 1 else add(f"layer{l}.in", "concat", *features)
            if bottleneck:
                v = add(f"layer{l}.relu1", "relu", v)
                v = add(f"layer{l}.conv1", "conv", v, label="1x1 convolution",
                        lipschitz=_constant("layer", l, 1, shared=shared, symbol=symbol))
                v = add(f"layer{l}.relu2", "relu", v)
                v = add(f"layer{l}.conv2", "conv", v, label="3x3 convolution",
                        lipschitz=_constant("layer", l, 2, shared=shared, symbol=symbol))
            else:
                v = add(f"layer{l}.relu", "relu", v)
                v = add(f"layer{l}.conv", "conv", v, label="3x3 convolution",
                        lipschitz=_constant("layer", l, shared=shared, symbol=symbol))
            features.append(v)
        u = add(f"block{b}.out", "concat", *features)
        if transition and b < len(blocks):
            u = add(f"transition{b}.relu", "relu", u)
            u = add(f"transition{b}.conv", "conv", u, label="1x1 convolution",
                    lipschitz=_constant("transition", b, shared=shared, symbol=symbol))
            u = add(f"transition{b}.pool", "avgpool", u, params=dict(_POOL_2X2))
    if head:
        u = _classifier(add, u, _constant("head", shared=shared, symbol=symbol), relu=True)
    add("logits", "output", u)
    return add.G


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
    -Lipschitz (:func:`theory.transformer.layernorm_lipschitz`); :math:`a_{l,k}` bounds
    head :math:`k` on token sequences whose tokens have norm at most
    :math:`R_l = \max|\gamma_{l,1}|\sqrt{D} + \|\beta_{l,1}\|`
    (:func:`theory.transformer.attention_head_lipschitz`). Every output token of
    :math:`\mathrm{LN}_{l,1}` lies in that ball whatever the input
    (:func:`theory.transformer.layernorm_output_radius`), so attention is only ever
    evaluated on its domain and the derived bound holds for **every** input :math:`x`
    (:func:`theory.transformer.pre_ln_attention_lipschitz` gives one block's constant,
    :math:`1 + \ell\, \|W_o\| \sqrt{\sum_k a_k^2}`, the same as the graph's).
    The argument needs pre-LN: in a post-LN block attention sees unbounded tokens.

    The closed form (:func:`bounds.closed_form`) is

    .. math:: \operatorname{Lip}(f) \le s \prod_{l=1}^{n}
        \Bigl(1 + \ell_{l,1} h_{l,1} \sqrt{\textstyle\sum_k a_{l,k}^2}\Bigr)
        \bigl(1 + \ell_{l,2} h_{l,2}\, \gamma_\sigma\, h_{l,3}\bigr)\, \ell_f\, w,

    :math:`\gamma_\sigma` the activation's constant (:func:`theory.activation_lipschitz`).

    Parameters
    ----------
    depth : int, default 1
        Number of blocks :math:`n` (ViT-B/16: 12).
    heads : int, default 1
        Attention heads :math:`H` (one ``attention`` node each, concatenated).
    mlp : bool, default True
        Include the MLP sub-block.
    activation : str, default "gelu"
        An activation op of the schema for the MLP.
    embedding, final_norm, head : bool, default True
        Include the patch embedding, the final LayerNorm, the classifier head.
    shared : bool, default False
        One symbol per role: ``h`` (linear layers), ``ell`` (LayerNorms), ``a`` (heads).
    symbol : str, default "h"

    Returns
    -------
    networkx.DiGraph

    Raises
    ------
    FamilyError
        If an option is out of range.

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
    depth, heads = _count(f, "depth", depth), _count(f, "heads", heads)
    activations = tuple(op for op, spec in OPS.items() if spec.kind == "activation")
    activation = _choice(f, "activation", activation, activations)
    mlp, embedding = _flag(f, "mlp", mlp), _flag(f, "embedding", embedding)
    final_norm, head = _flag(f, "final_norm", final_norm), _flag(f, "head", head)
    shared, symbol = _flag(f, "shared", shared), _symbol_name(f, symbol)

    def c(role, *index):
        return _constant(role, *index, shared=shared, symbol=symbol)

    add = _Builder(f"transformer{depth}")
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


_BUILDERS = {"vgg": vgg, "resnet": resnet, "densenet": densenet, "transformer": transformer}


def preset(name: str, **options) -> nx.DiGraph:
    """The graph of a named architecture from :data:`PRESETS` (options override it).

    Parameters
    ----------
    name : str
        ``vgg11``, ``vgg16``, ``vgg19``, ``resnet18``, ``resnet34``, ``resnet50``,
        ``densenet121`` or ``vit_b_16``.
    **options
        Builder options replacing the preset's (e.g. ``shared=True``).

    Returns
    -------
    networkx.DiGraph

    Raises
    ------
    FamilyError
        If the name is unknown.

    Examples
    --------
    >>> from bounds import derive, preset
    >>> derive(preset("resnet18", shared=True)).lipschitz
    2*h**5*(h + 1)**3*(h**2 + 1)**5
    """
    if name not in PRESETS:
        raise FamilyError(f"preset: unknown architecture {name!r}; known: "
                          f"{', '.join(PRESETS)}.")
    family, defaults = PRESETS[name]
    G = _BUILDERS[family](**{**defaults, **options})
    G.graph["name"] = name
    return G
