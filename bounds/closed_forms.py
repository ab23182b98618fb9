r"""Closed forms, with symbolic depth, of the bounds of the four families.

:func:`closed_form` takes the options of the builders in :mod:`bounds.families`, but the
depth may be a symbol :math:`n`; the result is written with :class:`~sympy.Product` over
indexed constants (``shared=False``) or with powers (``shared=True``). For every integer
depth ``k`` it equals ``derive(builder(k)).lipschitz``; the proofs are below, one per
family, and the test suite checks the equality exactly for ``k = 1..6``.

Notation: :math:`L(v)` is the bound :func:`bounds.derive` propagates to node :math:`v`;
"composition multiplies", "sums add" and "concatenations take root-sum-squares" are
:func:`theory.compose_rule`, :func:`theory.sum_rule` and :func:`theory.concat_rule`
(Scaman and Virmaux 2018). ReLU, flatten, dropout and select have constant 1, non-
overlapping 2x2 max pooling 1, 3x3 max pooling of stride 2 :math:`\sqrt{4} = 2` and 2x2
average pooling of stride 2 :math:`1/2` (:func:`theory.activation_lipschitz`,
:func:`theory.maxpool_lipschitz`, :func:`theory.avgpool_lipschitz`, which prove them).
"""

from __future__ import annotations

import sympy

import theory
from bounds.errors import FamilyError
from bounds.families import (
    _BLOCK_WIDTH,
    _MAXPOOL_STEM,
    _POOL_2X2,
    _PROJECTIONS,
    FAMILIES,
    _choice,
    _constant,
    _count,
    _flag,
    _symbol_name,
)
from bounds.schema import OPS

__all__ = ["closed_form", "depth_symbol"]


def depth_symbol(name: str = "n") -> sympy.Symbol:
    """The depth symbol :func:`closed_form` uses for a name: a positive integer symbol.

    Examples
    --------
    >>> from bounds import depth_symbol
    >>> n = depth_symbol()
    >>> n, n.is_integer, n.is_positive
    (n, True, True)
    """
    return sympy.Symbol(name, integer=True, positive=True)


def _depth(function: str, value, name: str = "depth") -> sympy.Expr:
    """An int >= 1, or a symbol (a string becomes :func:`depth_symbol`)."""
    if isinstance(value, str):
        if not value.isidentifier():
            raise FamilyError(f"{function}: expected {name} to be a symbol name, got "
                              f"{value!r}.")
        return depth_symbol(value)
    if isinstance(value, sympy.Expr) and not value.is_Number:
        if value.is_positive is False or value.is_integer is False:
            raise FamilyError(f"{function}: expected {name} to be a positive integer, got "
                              f"{value!r}.")
        return value
    return sympy.Integer(_count(function, name, int(value) if isinstance(
        value, sympy.Integer) else value))


def _sizes(function: str, value) -> tuple[sympy.Expr, ...]:
    if isinstance(value, tuple | list):
        if not value:
            raise FamilyError(f"{function}: expected depth to be a non-empty tuple, got "
                              f"{value!r}.")
        return tuple(_depth(function, item) for item in value)
    return (_depth(function, value),)


def _product(factor, index: sympy.Symbol, start, end, *, shared: bool) -> sympy.Expr:
    r""":math:`\prod_{i=start}^{end} factor(i)`: a power when shared, else a Product."""
    if shared:
        count = end - start + 1
        return sympy.Mul(*(arg**count for arg in sympy.Mul.make_args(factor(index))))
    if (end - start).is_Integer:
        return sympy.Mul(*(factor(start + i) for i in range(int(end - start) + 1)))
    return sympy.Product(factor(index), (index, start, end))


_l = sympy.Symbol("l", integer=True, positive=True)
_b = sympy.Symbol("b", integer=True, positive=True)


def _vgg(depth, *, classifier_layers=1, pool_after=None, shared=False, symbol="h"):
    r"""VGG: :math:`\prod_{l=1}^{n} h_l \cdot m^{P}` with :math:`m = 1`.

    *Proof.* The graph is a chain ``input -> conv1 -> relu1 [-> pool] -> ... -> flatten ->
    fc ... -> output`` in which every node has one predecessor, so by induction along the
    chain (composition multiplies) :math:`L(\text{output})` is the product of all node
    constants: :math:`h_1, \dots, h_n` for the weighted layers, 1 for ReLU, dropout and
    flatten, and :math:`m` = ``maxpool_lipschitz((2, 2), (2, 2))`` :math:`= 1` for each
    of the :math:`P` pools (:math:`P = \lfloor (n - c)/2 \rfloor` by default, ``c``
    classifier layers).
    """
    f = "closed_form('vgg')"
    n = _depth(f, depth)
    c = _count(f, "classifier_layers", classifier_layers, minimum=0)
    if (n - c).is_negative:
        raise FamilyError(f"{f}: expected classifier_layers <= depth = {n}, got {c}.")
    pools = sympy.floor((n - c) / 2) if pool_after is None else len(tuple(pool_after))
    m = theory.maxpool_lipschitz(_POOL_2X2["kernel_size"], _POOL_2X2["stride"])
    layers = _product(lambda l: _constant("layer", l, shared=shared, symbol=symbol),
                      _l, 1, n, shared=shared)
    return layers * m**pools


def _resnet(depth=2, *, block="basic", projection="none", stem=False, head=False,
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
    stages = _sizes(f, depth)
    block = _choice(f, "block", block, tuple(_BLOCK_WIDTH))
    projection = _choice(f, "projection", projection, _PROJECTIONS)
    width = _BLOCK_WIDTH[block]

    def c(role, *index):
        return _constant(role, *index, shared=shared, symbol=symbol)

    def branch(b):
        return sympy.Mul(*(c("layer", b, k) for k in range(1, width + 1)))

    result = sympy.Integer(1)
    if _flag(f, "stem", stem):
        result *= c("stem") * theory.maxpool_lipschitz(_MAXPOOL_STEM["kernel_size"],
                                                       _MAXPOOL_STEM["stride"])
    start = sympy.Integer(1)
    for stage, size in enumerate(stages, start=1):
        end = start + size - 1
        if projection == "all":
            result *= _product(lambda b: c("projection", b) + branch(b), _b, start, end,
                               shared=shared)
        else:
            first = start
            if projection == "stages" and (stage > 1 or block == "bottleneck"):
                result *= c("projection", start) + branch(start)
                first = start + 1
            result *= _product(lambda b: 1 + branch(b), _b, first, end, shared=shared)
        start = end + 1
    if _flag(f, "head", head):
        result *= c("head")
    return result


def _densenet(depth=2, *, bottleneck=False, transition=True, stem=False, head=False,
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
    blocks = _sizes(f, depth)

    def c(role, *index):
        return _constant(role, *index, shared=shared, symbol=symbol)

    def layer(l):
        if _flag(f, "bottleneck", bottleneck):
            return sympy.sqrt(1 + (c("layer", l, 1) * c("layer", l, 2)) ** 2)
        return sympy.sqrt(1 + c("layer", l) ** 2)

    result = sympy.Integer(1)
    if _flag(f, "stem", stem):
        result *= c("stem") * theory.maxpool_lipschitz(_MAXPOOL_STEM["kernel_size"],
                                                       _MAXPOOL_STEM["stride"])
    avg = theory.avgpool_lipschitz(_POOL_2X2["kernel_size"], _POOL_2X2["stride"])
    start = sympy.Integer(1)
    for b, size in enumerate(blocks, start=1):
        end = start + size - 1
        result *= _product(layer, _l, start, end, shared=shared)
        if _flag(f, "transition", transition) and b < len(blocks):
            result *= c("transition", b) * avg
        start = end + 1
    if _flag(f, "head", head):
        result *= c("head")
    return result


def _transformer(depth=1, *, heads=1, mlp=True, activation="gelu", embedding=True,
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
    n = _depth(f, depth)
    heads = _count(f, "heads", heads)
    activations = tuple(op for op, spec in OPS.items() if spec.kind == "activation")
    gamma = theory.activation_lipschitz(_choice(f, "activation", activation, activations))

    def c(role, *index):
        return _constant(role, *index, shared=shared, symbol=symbol)

    def block(l):
        alpha = sympy.sqrt(sum(c("attention", l, k) ** 2 for k in range(1, heads + 1)))
        factor = 1 + c("norm", l, 1) * c("layer", l, 1) * alpha
        if mlp:
            factor *= 1 + c("norm", l, 2) * c("layer", l, 2) * gamma * c("layer", l, 3)
        return factor

    _flag(f, "mlp", mlp)
    result = _product(block, _l, 1, n, shared=shared)
    if _flag(f, "embedding", embedding):
        result *= c("stem")
    if _flag(f, "final_norm", final_norm):
        result *= c("final_norm")
    if _flag(f, "head", head):
        result *= c("head")
    return result


_FORMS = {"vgg": _vgg, "resnet": _resnet, "densenet": _densenet,
          "transformer": _transformer}


def closed_form(family: str, depth="n", **options) -> sympy.Expr:
    r"""The Lipschitz bound of a family with symbolic depth, as a closed form.

    ================  =================================================================
    family            closed form (stems, heads, projections, transitions optional)
    ================  =================================================================
    ``vgg``           :math:`\prod_{l=1}^{n} h_l`
    ``resnet``        :math:`[2s] \prod_{b=1}^{n} (q_b + \prod_k h_{b,k})\, [w]`,
                      :math:`q_b \in \{1, p_b\}`
    ``densenet``      :math:`[2s] \prod_{l=1}^{n} \sqrt{1 + g_l^2}\,
                      \prod_{b<B} \tfrac{t_b}{2}\, [w]`
    ``transformer``   :math:`s \prod_{l=1}^{n} (1 + \ell_{l,1} h_{l,1}
                      \sqrt{\textstyle\sum_k a_{l,k}^2})(1 + \ell_{l,2} h_{l,2}
                      \gamma h_{l,3})\, \ell_f\, w`
    ================  =================================================================

    Parameters
    ----------
    family : {"vgg", "resnet", "densenet", "transformer"}
    depth : int, str, SymPy expression or tuple of them, default "n"
        The builder's ``depth`` (a tuple gives stage / block sizes for ``resnet`` and
        ``densenet``); a string is a :func:`depth_symbol`.
    **options
        The builder's keyword options (``shared``, ``block``, ``projection``, ``stem``,
        ``head``, ``bottleneck``, ``transition``, ``heads``, ``mlp``, ...).

    Returns
    -------
    sympy.Expr
        For every integer depth ``k``, ``closed_form(f, n, **o).subs(n, k).doit()``
        equals ``derive(builder(k, **o)).lipschitz``. A certified bound on the
        Lipschitz constant of the logits whenever the constants bound their layers
        (for ``transformer`` on the domain stated in :func:`bounds.transformer`, which
        is every input).

    Raises
    ------
    FamilyError
        If the family is unknown or an option is invalid.

    Notes
    -----
    The proofs, one per family (each an induction over the graph the builder makes):

    **VGG.** A chain: every node has one predecessor, so the propagated bound is the
    product of the node constants, :math:`\prod_l h_l` times 1 for each ReLU, dropout,
    flatten and non-overlapping max pooling.

    **ResNet.** A block with input :math:`u` has branch :math:`\beta_b L(u)`
    (:math:`\beta_b = \prod_k h_{b,k}`, a chain) and shortcut :math:`q_b L(u)`; the sum
    rule gives :math:`(q_b + \beta_b) L(u)`. Induction over blocks gives
    :math:`\prod_b (q_b + \beta_b)`; with identity shortcuts :math:`\prod_b(1 + \beta_b)`,
    with projections :math:`\prod_b (p_b + \beta_b)`.

    **DenseNet.** With :math:`S_j` the bound of :math:`\mathrm{concat}(u, y_1..y_j)`,
    layer :math:`j+1` gives :math:`L(y_{j+1}) = g_{j+1} S_j` and the concatenation rule
    gives :math:`S_{j+1}^2 = S_j^2 + g_{j+1}^2 S_j^2 = S_j^2 (1 + g_{j+1}^2)`, hence
    :math:`S_m = L(u) \prod_j \sqrt{1 + g_j^2}`.

    **Transformer.** A pre-LN block maps :math:`L(u)` to
    :math:`L(u)(1 + \ell_{l,1} h_{l,1} \sqrt{\sum_k a_{l,k}^2})` (LayerNorm, heads
    concatenated, projection, residual sum) and the MLP sub-block multiplies by
    :math:`1 + \ell_{l,2} h_{l,2} \gamma h_{l,3}`.

    The detailed inductions are the docstrings of ``_vgg``, ``_resnet``, ``_densenet``
    and ``_transformer`` in this module.

    References
    ----------
    Scaman and Virmaux, NeurIPS 2018, arXiv:1805.10965 (the rules).
    He et al. 2016, arXiv:1512.03385; Huang et al. 2017, arXiv:1608.06993;
    Dosovitskiy et al. 2021, arXiv:2010.11929 (the architectures).

    Examples
    --------
    >>> import sympy
    >>> from bounds import closed_form, depth_symbol, derive, densenet
    >>> closed_form("vgg")
    Product(h[l], (l, 1, n))
    >>> closed_form("resnet", shared=True)
    (h**2 + 1)**n
    >>> closed_form("densenet", shared=True)
    (h**2 + 1)**(n/2)
    >>> n = depth_symbol("n")
    >>> form = closed_form("densenet", n)
    >>> form.subs(n, 3).doit() == derive(densenet(3)).lipschitz
    True
    >>> closed_form("resnet", ("n_1", "n_2"), projection="stages", shared=True)
    (h**2 + 1)**(n_1 + n_2 - 1)*(h**2 + h)
    """
    if family not in _FORMS:
        raise FamilyError(f"closed_form: unknown family {family!r}; known: "
                          f"{', '.join(FAMILIES)}.")
    shared = _flag(f"closed_form({family!r})", "shared", options.pop("shared", False))
    symbol = _symbol_name(f"closed_form({family!r})", options.pop("symbol", "h"))
    try:
        form = _FORMS[family](depth, shared=shared, symbol=symbol, **options)
    except TypeError as err:
        raise FamilyError(f"closed_form({family!r}): {err}.") from err
    # shared constants: gather powers of one base, (1 + h^2)^n1 (1 + h^2)^n2 -> (..)^(n1+n2)
    return sympy.powsimp(form, combine="exp") if shared else form

