r"""Closed forms, with symbolic depth, of the bounds of the registered families.

:func:`closed_form` takes the options of a family's builder (:mod:`bounds.families`), but
the depth may be a symbol :math:`n`; the result is written with :class:`~sympy.Product`
over indexed constants (``shared=False``) or with powers (``shared=True``). For every
integer depth ``k`` it equals ``derive(builder(k)).lipschitz``; each family module proves
its form (in the docstring of its ``closed_form``) and the test suite checks the equality
exactly for ``k = 1..6``.

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

from bounds.families import get_family
from bounds.families._common import depth_symbol

__all__ = ["closed_form", "depth_symbol"]


def closed_form(family: str, depth="n", **options) -> sympy.Expr:
    r"""The Lipschitz bound of a family with symbolic depth, as a closed form.

    ================  =================================================================
    family            closed form (stems, heads, projections, transitions optional)
    ================  =================================================================
    ``vgg``           :math:`\prod_{l=1}^{n} h_l\; [\,\|A\|\,]` (adaptive pooling)
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
    family : str
        A registered family or alias (``vgg``, ``resnet``, ``densenet``, ``transformer``
        or ``vit``, and any family added with :func:`bounds.families.register_family`).
    depth : int, str, SymPy expression or tuple of them, default "n"
        The builder's ``depth`` (a tuple gives stage / block sizes for ``resnet`` and
        ``densenet``); a string is a :func:`depth_symbol`.
    **options
        The builder's keyword options (``shared``, ``block``, ``projection``, ``stem``,
        ``head``, ``bottleneck``, ``transition``, ``heads``, ``mlp``, ``adaptive_pool``,
        ``input_size``, ...).

    Returns
    -------
    sympy.Expr
        For every integer depth ``k``, ``closed_form(f, n, **o).subs(n, k).doit()``
        equals ``derive(builder(k, **o)).lipschitz``. A certified bound on the
        Lipschitz constant of the logits whenever the constants bound their layers, on
        the domain of the family's graph (``transformer``: every input, see
        :func:`bounds.transformer`; ``vgg`` with ``adaptive_pool`` and no ``input_size``:
        every input size).

    Raises
    ------
    FamilyError
        If the family is unknown (the message lists the registered ones) or an option is
        invalid.

    Notes
    -----
    The proofs, one per family (each an induction over the graph the builder makes), are
    the docstrings of ``bounds.families.<family>.closed_form``; in short:

    **VGG.** A chain: every node has one predecessor, so the propagated bound is the
    product of the node constants, :math:`\prod_l h_l` times 1 for each ReLU, dropout,
    flatten and non-overlapping max pooling, times the adaptive pooling's norm.

    **ResNet.** A block with input :math:`u` has branch :math:`\beta_b L(u)`
    (:math:`\beta_b = \prod_k h_{b,k}`, a chain) and shortcut :math:`q_b L(u)`; the sum
    rule gives :math:`(q_b + \beta_b) L(u)`. Induction over blocks gives
    :math:`\prod_b (q_b + \beta_b)`.

    **DenseNet.** With :math:`S_j` the bound of :math:`\mathrm{concat}(u, y_1..y_j)`,
    layer :math:`j+1` gives :math:`L(y_{j+1}) = g_{j+1} S_j` and the concatenation rule
    gives :math:`S_{j+1}^2 = S_j^2 + g_{j+1}^2 S_j^2 = S_j^2 (1 + g_{j+1}^2)`, hence
    :math:`S_m = L(u) \prod_j \sqrt{1 + g_j^2}`.

    **Transformer.** A pre-LN block maps :math:`L(u)` to
    :math:`L(u)(1 + \ell_{l,1} h_{l,1} \sqrt{\sum_k a_{l,k}^2})` (LayerNorm, heads
    concatenated, projection, residual sum) and the MLP sub-block multiplies by
    :math:`1 + \ell_{l,2} h_{l,2} \gamma h_{l,3}`.

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
    >>> closed_form("vgg", 16, classifier_layers=3, adaptive_pool=(7, 7), shared=True)
    7*h**16
    """
    return get_family(family).closed_form(depth, **options)
