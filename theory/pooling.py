r"""Exact Lipschitz constants of max pooling and average pooling.

Both bounds come from one count: how many pooling windows can contain the same input
entry. Along one spatial dimension with kernel :math:`k`, stride :math:`s` and dilation
:math:`\mathrm{dil}`, window :math:`j` covers positions :math:`j s + i\,\mathrm{dil}`,
:math:`0 \le i < k`, and an input at position :math:`t` lies in window :math:`j` for the
pairs :math:`(i, j)` with :math:`j s = t - i\,\mathrm{dil}`. As :math:`i` runs over
:math:`0, \dots, k-1` the residue :math:`i\,\mathrm{dil} \bmod s` has period
:math:`s / g`, :math:`g = \gcd(\mathrm{dil}, s)`, so at most

.. math::

   n = \Big\lceil \frac{k\, g}{s} \Big\rceil
     \;\le\; \min\Big(k, \Big\lceil \frac{(k-1)\,\mathrm{dil} + 1}{s} \Big\rceil\Big)

windows contain one input, with equality in the interior of a long enough grid. Windows
in several dimensions are products of one-dimensional windows, so the count is
:math:`N = \prod_d n_d`. Padding and ``ceil_mode`` only add or remove windows on the
same stride lattice, so :math:`N` bounds the count for every padding.

Sizes are tuples (or lists) with one entry per spatial dimension, or ints. An int
stands for the same value in every dimension, so the number of dimensions must come from
somewhere: from a tuple among the sizes, or from ``ndim``. When every size is an int and
``ndim`` is not given, the functions raise :class:`~theory.errors.ParameterError` rather
than guess, because no default is safe: the factor per dimension is at least 1 for max
pooling and at most 1 for average pooling, so too few dimensions under-estimate max
pooling (``MaxPool2d(3, 2)`` has constant 2, a 1-D reading gives :math:`\sqrt 2`) and
too many under-estimate average pooling (``AvgPool1d(2)`` has :math:`1/\sqrt 2`, a 2-D
reading gives :math:`1/2`). So write ``maxpool_lipschitz((3, 3), (2, 2))`` or
``maxpool_lipschitz(3, 2, ndim=2)``.
"""

from __future__ import annotations

import math

import sympy

from theory.docstrings import SCAMAN_VIRMAUX, fill_doc
from theory.errors import ParameterError
from theory.validation import positive, positive_integer

__all__ = ["max_window_overlap", "maxpool_lipschitz", "avgpool_lipschitz",
           "global_avgpool_lipschitz", "adaptive_avgpool_lipschitz"]

_POOLING_DOCS = {
    "ndim": "ndim : int, optional\n    Number of spatial dimensions. Required when every size "
            "is an int (an int alone\n    does not say how many dimensions it repeats over, "
            "and a wrong guess can\n    under-estimate the constant); otherwise, if given, it "
            "must match the tuples.",
    "raises": "Raises\n------\nParameterError\n    If a size is not a positive integer, the "
              "tuples disagree in length or with\n    ``ndim``, ``ndim`` is not a positive "
              "integer, or every size is an int and\n    ``ndim`` is missing (the number of "
              "spatial dimensions would be a guess).",
    "references": "References\n----------\n" + SCAMAN_VIRMAUX,
}


def _sizes(function: str, ndim: int | None, **sizes) -> dict[str, tuple[int, ...]]:
    """Broadcast int-or-tuple sizes to one positive int per spatial dimension."""
    lengths = {len(value) for value in sizes.values() if isinstance(value, (tuple, list))}
    if len(lengths) > 1:
        raise ParameterError(f"{function}: expected sizes with one entry per spatial dimension, "
                             f"got {sizes}.")
    if ndim is not None:
        ndim = positive_integer(function, "ndim", ndim)
    if not lengths and ndim is None:
        # 3 for MaxPool2d(3) means (3, 3): guessing the dimension could silently halve
        # the constant, so plain integers need ndim.
        raise ParameterError(f"{function}: expected tuples with one entry per spatial "
                             f"dimension or ndim=, got only integers {sizes}.")
    count = lengths.pop() if lengths else ndim
    if ndim is not None and count != ndim:
        raise ParameterError(f"{function}: expected {ndim} entries per size (ndim={ndim}), "
                             f"got {sizes}.")
    broadcast = {}
    for name, value in sizes.items():
        entries = tuple(value) if isinstance(value, (tuple, list)) else (value,) * count
        broadcast[name] = tuple(positive_integer(function, name, entry) for entry in entries)
    return broadcast


def _overlap(kernel: int, stride: int, dilation: int) -> int:
    """Largest number of windows containing one input along one dimension."""
    return -(-kernel * math.gcd(dilation, stride) // stride)


@fill_doc(**_POOLING_DOCS)
def max_window_overlap(kernel_size, stride=None, dilation=1, *, ndim=None) -> int:
    r"""Largest number :math:`N` of pooling windows that contain one input entry.

    Parameters
    ----------
    kernel_size, stride, dilation : int or tuple of int
        Pooling geometry, tuples (or lists) with one entry per spatial dimension; an int
        repeats over every dimension. ``stride`` defaults to ``kernel_size``.
    %(ndim)s

    Returns
    -------
    int
        :math:`N = \prod_d \lceil k_d \gcd(\mathrm{dil}_d, s_d) / s_d \rceil`, exact on an
        unbounded grid (see the module notes); an upper bound on every finite or padded
        grid. Without dilation :math:`N = \prod_d \lceil k_d / s_d \rceil`.

    %(raises)s

    Examples
    --------
    >>> max_window_overlap((3,), (1,))
    3
    >>> max_window_overlap((3, 3), (2, 2))
    4
    >>> max_window_overlap(3, 2, ndim=2)
    4
    >>> max_window_overlap(2, 2, dilation=3, ndim=1)
    1
    >>> max_window_overlap(3, 2)
    Traceback (most recent call last):
    ...
    theory.errors.ParameterError: max_window_overlap: expected tuples with one entry per spatial dimension or ndim=, got only integers {'kernel_size': 3, 'stride': 2, 'dilation': 1}.
    """
    return _window_overlap("max_window_overlap", kernel_size, stride, dilation, ndim)


def _window_overlap(function: str, kernel_size, stride, dilation, ndim) -> int:
    sizes = _sizes(function, ndim, kernel_size=kernel_size,
                   stride=kernel_size if stride is None else stride, dilation=dilation)
    return math.prod(_overlap(k, s, dil) for k, s, dil in
                     zip(sizes["kernel_size"], sizes["stride"], sizes["dilation"]))


@fill_doc(**_POOLING_DOCS)
def maxpool_lipschitz(kernel_size, stride=None, dilation=1, *, ndim=None) -> sympy.Expr:
    r"""Lipschitz constant :math:`\sqrt{N}` of max pooling, :math:`N` the window overlap.

    Parameters
    ----------
    kernel_size, stride, dilation : int or tuple of int
        Pooling geometry as in ``torch.nn.MaxPool{1,2,3}d``: tuples (or lists) with one
        entry per spatial dimension; an int repeats over every dimension.
        ``stride`` defaults to ``kernel_size``. Any padding and
        ``ceil_mode`` are covered.
    %(ndim)s

    Returns
    -------
    sympy.Expr
        :math:`\sqrt{N}` with :math:`N = \prod_d n_d` from :func:`max_window_overlap`. A
        certified bound, attained (take two inputs differing in one interior entry
        that is the maximum of all its windows), so it is the exact constant on a grid
        large enough to have an input covered :math:`N` times.

    %(raises)s

    Notes
    -----
    For any window :math:`w`, :math:`|\max_{i \in w} a_i - \max_{i \in w} b_i| \le
    \max_{i \in w} |a_i - b_i|` (if :math:`a_{i^*}` is the larger maximum,
    :math:`\max a - \max b \le a_{i^*} - b_{i^*}`). Squaring and summing over windows,

    .. math::

       \|\mathrm{MP}(a) - \mathrm{MP}(b)\|^2
       \le \sum_w \max_{i \in w} (a_i - b_i)^2
       \le \sum_w \sum_{i \in w} (a_i - b_i)^2
       \le N \|a - b\|^2 ,

    since each input is counted in at most :math:`N` windows. Padding with
    :math:`-\infty` never becomes a maximum, so it changes nothing. Along one
    dimension :math:`n = \lceil k/s \rceil` without dilation; for instance kernel 3,
    stride 1 gives :math:`\sqrt 3`, and non-overlapping windows give 1.

    %(references)s

    Examples
    --------
    >>> maxpool_lipschitz((2,))
    1
    >>> maxpool_lipschitz(3, 1, ndim=1)
    sqrt(3)
    >>> maxpool_lipschitz((3, 3), (2, 2))
    2
    >>> maxpool_lipschitz(3, 2, ndim=2)
    2
    """
    overlap = _window_overlap("maxpool_lipschitz", kernel_size, stride, dilation, ndim)
    return sympy.sqrt(sympy.Integer(overlap))


@fill_doc(**_POOLING_DOCS)
def avgpool_lipschitz(kernel_size, stride=None, *, ndim=None) -> sympy.Expr:
    r"""Bound :math:`\sqrt{\prod_d \lceil k_d/s_d \rceil / k_d}` on the norm of average pooling.

    Parameters
    ----------
    kernel_size, stride : int or tuple of int
        Pooling geometry as in ``torch.nn.AvgPool{1,2,3}d``: tuples (or lists) with one
        entry per spatial dimension; an int repeats over every dimension.
        ``stride`` defaults to ``kernel_size``.
    %(ndim)s

    Returns
    -------
    sympy.Expr
        A certified upper bound on the spectral norm (= Lipschitz constant) of the
        linear pooling operator :math:`A` whose divisor is the full window size
        :math:`\prod_d k_d`. Exact for non-overlapping windows (:math:`s_d = k_d`:
        :math:`1/\sqrt{\prod k_d}`), approached on long grids when every
        :math:`s_d` divides :math:`k_d`.

    %(raises)s

    Notes
    -----
    Each row of :math:`A` (a window) has at most :math:`\prod k_d` entries
    :math:`1/\prod k_d`, so :math:`\|A\|_\infty \le 1`; each column (an input) has at
    most :math:`N = \prod_d \lceil k_d/s_d \rceil` such entries, so
    :math:`\|A\|_1 \le N / \prod k_d`. By the Schur test (Riesz–Thorin),

    .. math::

       \|A\|_2 \le \sqrt{\|A\|_1 \|A\|_\infty} \le \sqrt{N / \textstyle\prod_d k_d} .

    Zero padding counted in the divisor (``count_include_pad=True``, the default) only
    removes entries from rows, so it does not increase the bound. A different divisor
    (``count_include_pad=False``, the partial windows of ``ceil_mode=True``,
    ``divisor_override``) enlarges entries near the border; such operators are the
    caller's business and are not covered.

    %(references)s
    .. [2] I. Schur, "Bemerkungen zur Theorie der beschränkten Bilinearformen mit
       unendlich vielen Veränderlichen", J. reine angew. Math. 140 (1911).

    Examples
    --------
    >>> avgpool_lipschitz((2,))
    sqrt(2)/2
    >>> avgpool_lipschitz((2, 2))
    1/2
    >>> avgpool_lipschitz(2, ndim=2)
    1/2
    >>> avgpool_lipschitz((3,), (1,))
    1
    """
    sizes = _sizes("avgpool_lipschitz", ndim, kernel_size=kernel_size,
                   stride=kernel_size if stride is None else stride)
    overlap = math.prod(_overlap(k, s, 1) for k, s in zip(sizes["kernel_size"], sizes["stride"]))
    return sympy.sqrt(sympy.Rational(overlap, math.prod(sizes["kernel_size"])))


def global_avgpool_lipschitz(n) -> sympy.Expr:
    r"""Norm :math:`1/\sqrt{n}` of the average of :math:`n` entries (global average pooling).

    Parameters
    ----------
    n : int or sympy.Expr
        Number of averaged entries per channel (e.g. ``H * W``); symbols are accepted
        and rejected only if provably not positive.

    Returns
    -------
    sympy.Expr
        :math:`1/\sqrt n`, the exact spectral norm of :math:`x \mapsto \frac1n
        \mathbf 1^\top x`, applied channel by channel (a block-diagonal operator has the
        norm of its largest block).

    Raises
    ------
    ParameterError
        If ``n`` is a number that is not a positive integer, or an expression that is
        provably not positive.

    Notes
    -----
    :math:`\|\tfrac1n \mathbf 1^\top\|_2 = \|\mathbf 1\|/n = \sqrt n / n`.

    Examples
    --------
    >>> global_avgpool_lipschitz(49)
    1/7
    >>> from sympy import Symbol
    >>> global_avgpool_lipschitz(Symbol("H", positive=True) * Symbol("W", positive=True))
    1/(sqrt(H)*sqrt(W))
    """
    function = "global_avgpool_lipschitz"
    value = positive(function, "n", n)
    if value.is_number:
        value = sympy.Integer(positive_integer(function, "n", n))
    return 1 / sympy.sqrt(value)


def _adaptive_bins(size_in: int, size_out: int) -> list[range]:
    """torch's bins: output i averages inputs floor(i n/m) .. ceil((i+1) n/m) - 1."""
    return [range(i * size_in // size_out, -(-(i + 1) * size_in // size_out))
            for i in range(size_out)]


def _adaptive_norm_squared(size_in: int, size_out: int) -> sympy.Expr:
    """lambda_max(A A^T) of the 1-D adaptive average pooling matrix A (m x n): exact when
    it is rational, else the upper end of a rational isolating interval of width 1e-15."""
    bins = _adaptive_bins(size_in, size_out)
    gram = sympy.Matrix(size_out, size_out, lambda i, j: sympy.Rational(
        len(set(bins[i]) & set(bins[j])), len(bins[i]) * len(bins[j])))
    best = sympy.Integer(0)
    for factor, _ in gram.charpoly().factor_list()[1]:
        if factor.degree() == 1:
            root = -factor.nth(0) / factor.nth(1)
        else:
            root = max(high for (_, high), _ in factor.intervals(eps=sympy.Rational(1, 10**15)))
        best = max(best, root)
    return best


def adaptive_avgpool_lipschitz(output_size, input_size=None, *, ndim=None) -> sympy.Expr:
    r"""Norm of adaptive average pooling (``torch.nn.AdaptiveAvgPool{1,2,3}d``) on a grid.

    Parameters
    ----------
    output_size : int or tuple of int
        The pooled size, one entry per spatial dimension (an int repeats; then ``ndim``
        or a tuple ``input_size`` must say how many dimensions).
    input_size : int or tuple of int, optional
        The spatial size of the grid the pooling sees. Omitted: the bound holds for every
        input size (the worst case, reached on a 1-pixel grid).
    ndim : int, optional
        Number of spatial dimensions, as for :func:`maxpool_lipschitz`.

    Returns
    -------
    sympy.Expr
        With ``input_size``: :math:`\prod_d \|A_d\|_2`, where :math:`A_d` averages the
        inputs :math:`\lfloor i n_d/m_d floor, \dots, \lceil (i+1) n_d/m_d ceil - 1`
        into output :math:`i`; exact when :math:`\lambda_{\max}(A_d A_d^	op)` is rational
        (identity 1, upsampling from 1 pixel :math:`\sqrt{m_d}`, downsampling by an integer
        factor :math:`k`: :math:`1/\sqrt k`), otherwise a rational upper bound on it within
        :math:`10^{-15}`. Without it: :math:`\sqrt{\prod_d m_d}` (7 for torchvision VGG's
        ``AdaptiveAvgPool2d((7, 7))``). A certified bound in both cases.

    Raises
    ------
    ParameterError
        If a size is not a positive integer, the sizes disagree in length or with
        ``ndim``, or every size is an int and ``ndim`` is missing.

    Notes
    -----
    Each output is the mean over a product of one-dimensional bins, so the operator is
    the Kronecker product :math:`A_1 \otimes \dots \otimes A_D` and its norm is
    :math:`\prod_d \|A_d\|_2`; :math:`\|A_d\|_2^2 = \lambda_{\max}(A_d A_d^	op)`, and
    :math:`(A A^	op)_{ij} = |b_i \cap b_j| / (|b_i||b_j|)` for bins :math:`b_i, b_j`.
    Worst case: by the Schur test :math:`\|A\|_2^2 \le \|A\|_1 \|A\|_\infty`; every row
    sums to 1 and a column sums to :math:`\sum_{i: j \in b_i} 1/|b_i| \le m`, so
    :math:`\|A_d\|_2 \le \sqrt{m_d}`, attained when :math:`n_d = 1` (every output copies
    the one input). Below 224x224, torchvision's VGG feature map is smaller than 7x7 and
    this pooling *upsamples*: its norm exceeds 1 (7 on a 1x1 map).

    Cost: a :math:`m_d 	imes m_d` characteristic polynomial per dimension.

    Examples
    --------
    >>> adaptive_avgpool_lipschitz((7, 7))
    7
    >>> adaptive_avgpool_lipschitz((7, 7), (7, 7))
    1
    >>> adaptive_avgpool_lipschitz((7, 7), (1, 1))
    7
    >>> adaptive_avgpool_lipschitz((7, 7), (14, 14))
    1/2
    >>> adaptive_avgpool_lipschitz(1, 10, ndim=1)
    sqrt(10)/10
    """
    function = "adaptive_avgpool_lipschitz"
    if input_size is None:
        sizes = _sizes(function, ndim, output_size=output_size)
        return sympy.sqrt(sympy.Integer(math.prod(sizes["output_size"])))
    sizes = _sizes(function, ndim, output_size=output_size, input_size=input_size)
    squared = sympy.Mul(*(_adaptive_norm_squared(n, m) for n, m in
                          zip(sizes["input_size"], sizes["output_size"])))
    return sympy.sqrt(squared)
