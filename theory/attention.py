r"""Certified Jacobian-norm bounds for dot-product self-attention, each with its domain.

Dot-product self-attention is not Lipschitz on all of :math:`\mathbb{R}^{N \times D}`
(Kim et al. 2021), so every constant here comes with its **domain**, stated at the top of
its docstring and proved in its Notes:

- one head on sequences whose tokens have :math:`\|x_i\|_2 \le R`,
  :func:`attention_head_lipschitz`; the same bound from the activations at one sequence,
  :func:`attention_head_local_lipschitz`;
- multi-head attention (concatenate heads, then the output projection),
  :func:`multihead_attention_lipschitz`;
- the pre-LN block :math:`X \mapsto X + \mathrm{MHA}(\mathrm{LN}(X))`: every input, because
  LayerNorm bounds the tokens attention sees (:mod:`theory.layernorm`),
  :func:`pre_ln_attention_lipschitz`.

Norms of a sequence are Frobenius norms, so a Jacobian norm is the operator 2-norm of the
:math:`ND \times ND` Jacobian of :math:`\operatorname{vec}(X)`; weight norms are spectral
norms. A Jacobian-norm bound on a convex set is a Lipschitz constant there (mean value
inequality); every domain above is convex. Arguments are refused
(:class:`theory.errors.ParameterError`) only where a violation is provable.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import sympy

from theory.errors import ParameterError
from theory.layernorm import layernorm_lipschitz, layernorm_output_radius
from theory.validation import integer_expression, nonnegative, positive

__all__ = [
    "attention_head_lipschitz",
    "attention_head_local_lipschitz",
    "multihead_attention_lipschitz",
    "pre_ln_attention_lipschitz",
]


def _head_bound(wv, qk, s_x, s_v, g, column_sum, attention_norm, head_dim) -> sympy.Expr:
    """The pointwise bound of the Notes; every argument already validated."""
    return attention_norm * wv + s_v * (s_x * qk + g * sympy.sqrt(column_sum)) / sympy.sqrt(
        head_dim)


def _head_weights(func, head_dim, wq_norm, wk_norm, wv_norm, bq_norm, bk_norm, bv_norm,
                  qk_norm):
    """Validated (head_dim, wk, wv, bq, qk); bk and bv are checked but do not enter."""
    head_dim = positive(func, "head_dim", head_dim)
    wq = nonnegative(func, "wq_norm", wq_norm)
    wk = nonnegative(func, "wk_norm", wk_norm)
    wv = nonnegative(func, "wv_norm", wv_norm)
    bq = nonnegative(func, "bq_norm", bq_norm)
    nonnegative(func, "bk_norm", bk_norm)
    nonnegative(func, "bv_norm", bv_norm)
    qk = wq * wk if qk_norm is None else nonnegative(func, "qk_norm", qk_norm)
    return head_dim, wk, wv, bq, qk


def attention_head_lipschitz(radius, seq_len, head_dim, wq_norm, wk_norm, wv_norm,
                             bq_norm=0, bk_norm=0, bv_norm=0, *, qk_norm=None) -> sympy.Expr:
    r"""Lipschitz constant of one dot-product self-attention head on tokens of norm <= R.

    **Domain:** sequences :math:`X \in \mathbb{R}^{N \times D}` whose every token satisfies
    :math:`\|x_i\|_2 \le R` (a product of balls, convex). Certified bound on its domain:
    :math:`\|J_h(X)\|_2 \le L_h(R)` for every such :math:`X`, hence
    :math:`\|h(X) - h(X')\|_F \le L_h(R)\|X - X'\|_F` on it. No finite constant exists
    on all of :math:`\mathbb{R}^{N\times D}` (Kim et al. 2021); after a LayerNorm the
    domain is bounded automatically (:func:`layernorm_output_radius`).

    The head is :math:`h(X) = \operatorname{softmax}\bigl((XW_q + b_q)(XW_k + b_k)^\top
    / \sqrt{d}\bigr)(XW_v + b_v)` with the softmax over each row, and

    .. math::

        L_h(R) = \|W_v\|\sqrt{N} + \frac{R\,\|W_v\|}{\sqrt{d}}
            \Bigl(R\,\|W_q W_k^\top\| + \bigl(R\,\|W_q W_k^\top\| + \|W_k\|\,\|b_q\|\bigr)
            \sqrt{N}\Bigr),

    with :math:`\|W_q W_k^\top\| \le \|W_q\|\|W_k\|` used unless ``qk_norm`` is given.

    Parameters
    ----------
    radius : SymPy expression or number
        :math:`R`, a bound on every token norm. Must be >= 0.
    seq_len : SymPy expression or integer
        :math:`N`, the number of tokens. Must be an integer >= 1.
    head_dim : SymPy expression or number
        :math:`d`; the scores are scaled by :math:`1/\sqrt{d}` (for another scale
        :math:`s`, pass :math:`1/s^2`). Must be > 0.
    wq_norm, wk_norm, wv_norm : SymPy expression or number
        Spectral norms of the head's :math:`D \times d` query, key and value projections
        (``torch.nn.MultiheadAttention`` stores their transposes; the norm is the same).
        Must be >= 0.
    bq_norm : SymPy expression or number, default 0
        :math:`\|b_q\|_2`, the query bias of this head. Must be >= 0.
    bk_norm, bv_norm : SymPy expression or number, default 0
        :math:`\|b_k\|_2`, :math:`\|b_v\|_2`. Validated but **do not enter the bound**:
        softmax is invariant to :math:`b_k` (it adds a per-row constant to the scores) and
        :math:`b_v` shifts every output row by the same constant (proof in Notes).
    qk_norm : SymPy expression or number, optional
        :math:`\|W_q W_k^\top\|_2` (:math:`D \times D`), which may be much smaller than
        ``wq_norm * wk_norm``; must itself be a certified upper bound (e.g. an exact SVD).

    Returns
    -------
    SymPy expression
        :math:`L_h(R)`.

    Raises
    ------
    ParameterError
        If a norm, the radius or ``head_dim`` is provably out of range, or ``seq_len`` is
        provably not an integer >= 1.

    See Also
    --------
    attention_head_local_lipschitz : the same bound from the activations at one X.
    multihead_attention_lipschitz : heads concatenated, then the output projection.

    Notes
    -----
    The proof bounds the Jacobian at one point from quantities measured there, then
    replaces each by its worst case on the domain.

    One head, with tokens as rows of :math:`X \in \mathbb{R}^{N \times D}`:
    :math:`q_i = W_q^\top x_i + b_q`, :math:`k_j = W_k^\top x_j + b_k`,
    :math:`v_j = W_v^\top x_j + b_v`,
    :math:`A_{ij} = q_i^\top k_j / \sqrt{d}`, :math:`p_i = \operatorname{softmax}(A_{i\cdot})`,
    :math:`y_i = \sum_j p_{ij} v_j` (so :math:`Y = P V`). Domain :math:`\mathcal{D}_R`:
    :math:`\|x_i\|_2 \le R` for every :math:`i`; it is convex and :math:`h` is smooth, so a
    Jacobian-norm bound on it is a Lipschitz constant on it.

    *Differential.* With :math:`\Sigma_i = \operatorname{diag}(p_i) - p_i p_i^\top` (the
    softmax Jacobian), :math:`dp_i = \Sigma_i\, dA_{i\cdot}` and

    .. math::

        dy_i = \underbrace{\sum_j p_{ij}\, W_v^\top dx_j}_{T_1}
             + \underbrace{V^\top \Sigma_i\, dA_{i\cdot}}_{T_2},
        \qquad
        dA_{ij} = \frac{(W_q^\top dx_i)^\top k_j + q_i^\top W_k^\top dx_j}{\sqrt{d}} .

    *First term.* :math:`T_1 = P\,dX\,W_v`, so
    :math:`\|T_1\|_F \le \|P\|_2 \|W_v\|_2 \|dX\|_F`. :math:`P` is row-stochastic,
    :math:`\|P\|_\infty = 1`, and :math:`\|P\|_2 \le \sqrt{\|P\|_1\|P\|_\infty} = \sqrt{c}`
    with :math:`c = \|P\|_1 = \max_j \sum_i p_{ij} \le N`.

    *Second term as a covariance.* For a unit :math:`u`,
    :math:`u^\top V^\top \Sigma_i\, dA_{i\cdot}
    = \operatorname{Cov}_{j \sim p_i}(v_j^\top u,\ dA_{ij})`, so by Cauchy–Schwarz

    .. math::

        \|V^\top \Sigma_i\, dA_{i\cdot}\|_2
        \le \sigma_{v,i}\ \sqrt{\operatorname{Var}_{j\sim p_i}(dA_{ij})},
        \qquad
        \sigma_{v,i}^2 = \lambda_{\max}(V^\top \Sigma_i V)
        = \max_{\|u\|=1} \operatorname{Var}_{j\sim p_i}(v_j^\top u).

    Variance is shift invariant, so :math:`b_v` drops out:
    :math:`\operatorname{Var}(v_j^\top u) = \operatorname{Var}(x_j^\top W_v u)
    \le \sigma_{x,i}^2 \|W_v\|_2^2`, where
    :math:`\sigma_{x,i}^2 = \lambda_{\max}(X^\top \Sigma_i X)`. And
    :math:`\sigma_{x,i} \le R`: for a unit :math:`w`,
    :math:`\operatorname{Var}(x_j^\top w) \le \mathbb{E}(x_j^\top w)^2 \le R^2`
    (equivalently Popoviciu: the values lie in :math:`[-R, R]`).

    *Variance of the score differential.* By Minkowski's inequality for standard
    deviations, :math:`\sqrt{\operatorname{Var}(a + b)} \le \sqrt{\operatorname{Var} a}
    + \sqrt{\operatorname{Var} b}` with, writing :math:`M = W_q W_k^\top`
    (:math:`D \times D`, :math:`\|M\|_2 \le \|W_q\|_2\|W_k\|_2`):

    - :math:`a_j = (W_q^\top dx_i)^\top k_j / \sqrt{d} = (M^\top dx_i)^\top x_j/\sqrt{d}
      + \text{const}` (the constant carries :math:`b_k`, which drops out), so
      :math:`\operatorname{Var}(a) \le \sigma_{x,i}^2 \|M\|_2^2 \|dx_i\|^2 / d`;
    - :math:`b_j = (W_k q_i)^\top dx_j / \sqrt{d}`, so
      :math:`\operatorname{Var}(b) \le \mathbb{E}_{j\sim p_i} b_j^2
      \le g_i^2 \sum_j p_{ij}\|dx_j\|^2 / d` with :math:`g_i = \|W_k q_i\|_2
      \le \|M\|_2 \|x_i\| + \|W_k\|_2\|b_q\|_2 \le R\|M\|_2 + \|W_k\|_2\|b_q\|_2`.

    *Summing the rows.* With :math:`s_v \ge \max_i \sigma_{v,i}`,
    :math:`s_x \ge \max_i \sigma_{x,i}`, :math:`g \ge \max_i g_i`,
    :math:`\|T_2\|_F^2 = \sum_i \|T_{2,i}\|^2` and Minkowski's inequality over :math:`i`,

    .. math::

        \|T_2\|_F \le \frac{s_v}{\sqrt{d}}\Bigl(s_x \|M\|_2 \|dX\|_F
            + g \sqrt{\textstyle\sum_i \sum_j p_{ij} \|dx_j\|^2}\Bigr)
        \le \frac{s_v}{\sqrt{d}}\bigl(s_x \|M\|_2 + g\sqrt{c}\bigr)\|dX\|_F ,

    because :math:`\sum_i\sum_j p_{ij}\|dx_j\|^2 = \sum_j (\sum_i p_{ij})\|dx_j\|^2
    \le c\,\|dX\|_F^2`. Adding :math:`T_1`:

    .. math::

        \|J_h(X)\|_2 \le \|P\|_2\|W_v\|_2
            + \frac{s_v}{\sqrt{d}}\bigl(s_x \|M\|_2 + g\sqrt{c}\bigr).

    Every quantity is evaluated at the one point :math:`X`, so this is a bound on the
    Jacobian norm at :math:`X`. Substituting the a-priori bounds valid on all of
    :math:`\mathcal{D}_R` (:math:`\|P\|_2 \le \sqrt{N}`, :math:`c \le N`,
    :math:`s_x = R`, :math:`s_v = R\|W_v\|_2`, :math:`g = R\|M\|_2 + \|W_k\|_2\|b_q\|_2`)
    gives the global form

    .. math::

        L_h(R) = \|W_v\|_2\sqrt{N} + \frac{R\,\|W_v\|_2}{\sqrt{d}}
            \Bigl(R\,\|M\|_2 + \bigl(R\,\|M\|_2 + \|W_k\|_2\|b_q\|_2\bigr)\sqrt{N}\Bigr).

    It grows like :math:`R^2\sqrt{N}`, consistent with attention not being globally
    Lipschitz (Kim et al. 2021) and with the :math:`R^2` growth of local constants in
    Castin et al. (2024). Nothing in the proof uses more than "each :math:`p_i` is a
    probability vector", so an additive attention mask that does not depend on
    :math:`X` (e.g. causal) is covered. Only self-attention (queries, keys and values
    from the same :math:`X`) is covered.

    *Tightness* (exact Jacobian norm / bound on the seeded random cases of
    ``tests/integration/test_transformer_constants.py``): median 0.07, max 0.98 for
    this global form, the large ratios coming from :math:`N = 1` or small :math:`R`, where
    the head is nearly linear; where the softmax dominates
    (:math:`R^2\|W_q\|\|W_k\|/\sqrt{d} > 1`) the median is about 0.02 and the max 0.2,
    because the Popoviciu steps assume maximally spread tokens and a softmax split
    evenly between them at once. The local form
    (:func:`attention_head_local_lipschitz`) has median 0.78.

    References
    ----------
    Kim, Papamakarios and Mnih, "The Lipschitz Constant of Self-Attention", ICML 2021,
    arXiv:2006.04710.
    Castin, Ablin and Peyré, "How Smooth Is Attention?", ICML 2024, arXiv:2312.14820.
    Popoviciu, "Sur les équations algébriques ayant toutes leurs racines réelles",
    Mathematica (Cluj) 9, 1935 (:math:`\operatorname{Var} \le (\max - \min)^2/4`).

    Examples
    --------
    >>> import sympy
    >>> from theory import attention_head_lipschitz
    >>> attention_head_lipschitz(1, 4, 4, 1, 1, 1)
    7/2
    >>> R, N, d = sympy.symbols("R N d", positive=True)
    >>> attention_head_lipschitz(R, N, d, 1, 1, 1)
    sqrt(N) + R*(sqrt(N)*R + R)/sqrt(d)
    """
    func = "attention_head_lipschitz"
    radius = nonnegative(func, "radius", radius)
    seq_len = integer_expression(func, "seq_len", seq_len)
    head_dim, wk, wv, bq, qk = _head_weights(func, head_dim, wq_norm, wk_norm, wv_norm,
                                             bq_norm, bk_norm, bv_norm, qk_norm)
    return _head_bound(wv=wv, qk=qk, s_x=radius, s_v=radius * wv, g=radius * qk + wk * bq,
                       column_sum=seq_len, attention_norm=sympy.sqrt(seq_len),
                       head_dim=head_dim)


def attention_head_local_lipschitz(radius, seq_len, head_dim, wq_norm, wk_norm, wv_norm,
                                   bq_norm=0, bk_norm=0, bv_norm=0, *, qk_norm=None,
                                   attention_norm=None, attention_column_sum=None,
                                   token_spread=None, value_spread=None,
                                   query_key_norm=None) -> sympy.Expr:
    r"""Jacobian norm of one self-attention head at an actual sequence X.

    **Domain: one sequence** :math:`X`, with ``radius`` :math:`= \max_i\|x_i\|_2` of its
    actual tokens (or any upper bound). Certified bound on the Jacobian norm
    :math:`\|J_h(X)\|_2` at that point: it is the pointwise inequality from the proof of
    :func:`attention_head_lipschitz`, before the worst case over the domain is taken,

    .. math::

        \|J_h(X)\|_2 \le \|P\|_2\,\|W_v\| + \frac{s_v}{\sqrt{d}}
            \bigl(s_x \|W_q W_k^\top\| + g\,\sqrt{c}\bigr).

    Each measured quantity below may be passed as a value computed at :math:`X` (exactly,
    or any upper bound of it); an omitted one falls back to its worst case on the ball of
    radius ``radius``, so with nothing measured this equals
    :func:`attention_head_lipschitz`. It is a bound at :math:`X` only, not a Lipschitz
    constant on a neighbourhood.

    Parameters
    ----------
    radius, seq_len, head_dim, wq_norm, wk_norm, wv_norm, bq_norm, bk_norm, bv_norm, qk_norm
        As in :func:`attention_head_lipschitz` (``radius`` may be the measured
        :math:`\max_i \|x_i\|_2`).
    attention_norm : SymPy expression or number, optional, measured
        :math:`\|P\|_2`, the spectral norm of the :math:`N \times N` attention matrix at
        :math:`X`. Default :math:`\sqrt{c}` (:math:`\le \sqrt{N}`).
    attention_column_sum : SymPy expression or number, optional, measured
        :math:`c = \|P\|_1 = \max_j \sum_i p_{ij}`, the largest attention a token receives.
        Default :math:`N`.
    token_spread : SymPy expression or number, optional, measured
        :math:`s_x = \max_i \lambda_{\max}(X^\top \Sigma_i X)^{1/2}`, the largest
        attention-weighted standard deviation of the tokens
        (:math:`\Sigma_i = \operatorname{diag}(p_i) - p_i p_i^\top`). Default :math:`R`.
    value_spread : SymPy expression or number, optional, measured
        :math:`s_v = \max_i \lambda_{\max}(V^\top \Sigma_i V)^{1/2}` with
        :math:`V = XW_v + b_v`. Default :math:`s_x \|W_v\|`.
    query_key_norm : SymPy expression or number, optional, measured
        :math:`g = \max_i \|W_k q_i\|_2` with :math:`q_i = W_q^\top x_i + b_q` (in torch
        terms ``(q @ W_k_torch).norm(dim=-1).max()``). Default
        :math:`R\|W_q W_k^\top\| + \|W_k\|\|b_q\|`.

    Returns
    -------
    SymPy expression
        The bound on :math:`\|J_h(X)\|_2`.

    Raises
    ------
    ParameterError
        As :func:`attention_head_lipschitz`, and if a measured quantity is provably
        negative.

    Notes
    -----
    See the proof in :func:`attention_head_lipschitz`: its final pointwise inequality
    holds with :math:`\|P\|_2`, :math:`c`, :math:`s_x`, :math:`s_v`, :math:`g` taken at
    :math:`X`, and every default above is one of the a-priori bounds proved there
    (:math:`\|P\|_2 \le \sqrt{c}`, :math:`c \le N`, :math:`\sigma_{x,i} \le R`,
    :math:`\sigma_{v,i} \le \sigma_{x,i}\|W_v\|`, :math:`g_i \le R\|W_qW_k^\top\| +
    \|W_k\|\|b_q\|`). A sharp softmax makes :math:`s_x, s_v` small, which is where the
    local form gains most; a uniform one makes :math:`\|P\|_2 = 1`.

    References
    ----------
    Castin, Ablin and Peyré, "How Smooth Is Attention?", ICML 2024, arXiv:2312.14820.

    Examples
    --------
    A sharp softmax (every row one-hot on distinct tokens) has zero spread:

    >>> from theory import attention_head_local_lipschitz
    >>> attention_head_local_lipschitz(1, 4, 4, 1, 1, 1, attention_norm=1,
    ...                                attention_column_sum=1, token_spread=0)
    1
    """
    func = "attention_head_local_lipschitz"
    radius = nonnegative(func, "radius", radius)
    seq_len = integer_expression(func, "seq_len", seq_len)
    head_dim, wk, wv, bq, qk = _head_weights(func, head_dim, wq_norm, wk_norm, wv_norm,
                                             bq_norm, bk_norm, bv_norm, qk_norm)

    def measured(name, value, default):
        return default if value is None else nonnegative(func, name, value)

    column_sum = measured("attention_column_sum", attention_column_sum, seq_len)
    attention_norm = measured("attention_norm", attention_norm, sympy.sqrt(column_sum))
    s_x = measured("token_spread", token_spread, radius)
    s_v = measured("value_spread", value_spread, s_x * wv)
    g = measured("query_key_norm", query_key_norm, radius * qk + wk * bq)
    return _head_bound(wv=wv, qk=qk, s_x=s_x, s_v=s_v, g=g, column_sum=column_sum,
                       attention_norm=attention_norm, head_dim=head_dim)


def multihead_attention_lipschitz(head_constants: Iterable, wo_norm) -> sympy.Expr:
    r"""Multi-head attention from its heads: :math:`\|W_o\|_2 \sqrt{\sum_h L_h^2}`.

    **Domain:** the intersection of the heads' domains (for heads from
    :func:`attention_head_lipschitz` with one radius :math:`R`: tokens of norm
    :math:`\le R`). Certified bound on its domain when every :math:`L_h` is; it is also a
    bound on the Jacobian norm at one :math:`X` when every :math:`L_h` is a local constant
    at that :math:`X` (:func:`attention_head_local_lipschitz`).

    Parameters
    ----------
    head_constants : iterable of SymPy expressions or numbers
        :math:`L_1, \dots, L_H`, one per head, all >= 0; at least one.
    wo_norm : SymPy expression or number
        Spectral norm of the output projection :math:`W_o` (:math:`H d_v \times E`).
        Must be >= 0. Its bias does not enter (a constant shift).

    Returns
    -------
    SymPy expression
        :math:`\|W_o\|_2 \sqrt{\sum_h L_h^2}`.

    Raises
    ------
    ParameterError
        If there is no head or a constant is provably negative.

    Notes
    -----
    :math:`\mathrm{MHA}(X) = [h_1(X), \dots, h_H(X)]\, W_o + \mathbf{1} b_o^\top`. The
    Jacobian of the concatenation maps :math:`dX` to :math:`[dY_1, \dots, dY_H]`, and

    .. math::

        \|[dY_1, \dots, dY_H]\|_F^2 = \sum_h \|dY_h\|_F^2
        \le \Bigl(\sum_h L_h^2\Bigr) \|dX\|_F^2

    (the concatenation rule: :math:`\|[A; B]\| \le \sqrt{\|A\|^2 + \|B\|^2}` for
    operators fed by one input). Right-multiplication by :math:`W_o` has norm
    :math:`\|W_o\|_2` on the Frobenius norm (:math:`\|CW\|_F \le \|C\|_F\|W\|_2`), and
    :math:`b_o` has zero derivative. Chain rule:
    :math:`\|J_{\mathrm{MHA}}(X)\|_2 \le \|W_o\|_2\sqrt{\sum_h L_h^2}` at every :math:`X`
    where each :math:`\|J_{h}(X)\|_2 \le L_h`; on a convex domain this is a Lipschitz
    constant.

    References
    ----------
    Scaman and Virmaux, "Lipschitz regularity of deep neural networks", NeurIPS 2018,
    arXiv:1805.10965.
    Vaswani et al., "Attention Is All You Need", NeurIPS 2017, arXiv:1706.03762.

    Examples
    --------
    >>> from theory import multihead_attention_lipschitz
    >>> multihead_attention_lipschitz([3, 4], 2)
    10
    """
    func = "multihead_attention_lipschitz"
    constants = [nonnegative(func, f"head_constants[{h}]", value)
                 for h, value in enumerate(head_constants)]
    if not constants:
        raise ParameterError(
            f"{func}: expected at least one head constant, got {head_constants!r}.")
    wo = nonnegative(func, "wo_norm", wo_norm)
    return wo * sympy.sqrt(sum(constant**2 for constant in constants))


_HEAD_KEYS = frozenset({"head_dim", "wq_norm", "wk_norm", "wv_norm", "bq_norm", "bk_norm",
                        "bv_norm", "qk_norm"})


def pre_ln_attention_lipschitz(gamma_abs_max, beta_norm, eps, dim, seq_len,
                               heads: Iterable[Mapping], wo_norm, *,
                               residual: bool = True) -> sympy.Expr:
    r"""Global Lipschitz constant of the pre-LN block :math:`X + \mathrm{MHA}(\mathrm{LN}(X))`.

    **Domain: every input** :math:`X \in \mathbb{R}^{N \times D}`, unbounded, for
    ``eps > 0``. Certified bound on its domain. LayerNorm maps every token into the ball of
    radius :math:`R_{\mathrm{LN}} = \max|\gamma|\sqrt{D} + \|\beta\|`, where attention has
    the constant of :func:`attention_head_lipschitz`, so

    .. math::

        L = [1] + \frac{\max_k|\gamma_k|}{\sqrt{\varepsilon}}\;
            \|W_o\|_2 \sqrt{\textstyle\sum_h L_h(R_{\mathrm{LN}})^2},

    the leading 1 only with ``residual=True``.

    Parameters
    ----------
    gamma_abs_max, beta_norm, eps
        The LayerNorm, as in :func:`layernorm_lipschitz` and
        :func:`layernorm_output_radius`.
    dim : SymPy expression or integer
        :math:`D`, the model (token) dimension. Must be an integer >= 1.
    seq_len : SymPy expression or integer
        :math:`N`. Must be an integer >= 1.
    heads : iterable of mappings
        One mapping per head with the keyword arguments of
        :func:`attention_head_lipschitz` except ``radius`` and ``seq_len``:
        ``head_dim``, ``wq_norm``, ``wk_norm``, ``wv_norm`` (required) and ``bq_norm``,
        ``bk_norm``, ``bv_norm``, ``qk_norm`` (optional).
    wo_norm : SymPy expression or number
        Spectral norm of the output projection.
    residual : bool, default True
        Add the identity branch (sum rule: :math:`+1`).

    Returns
    -------
    SymPy expression
        The constant :math:`L` above.

    Raises
    ------
    ParameterError
        If a parameter is out of range (see the functions above), ``heads`` is empty or a
        head mapping has an unknown or missing key.

    Notes
    -----
    Let :math:`Z = \mathrm{LN}(X)` token-wise. By :func:`layernorm_output_radius` every
    row of :math:`Z` has norm :math:`\le R_{\mathrm{LN}}`, whatever :math:`X`; so
    :math:`Z \in \mathcal{D}_{R_{\mathrm{LN}}}`, where
    :math:`\|J_{\mathrm{MHA}}(Z)\|_2 \le L_{\mathrm{MHA}} = \|W_o\|_2\sqrt{\sum_h
    L_h(R_{\mathrm{LN}})^2}` (:func:`attention_head_lipschitz`,
    :func:`multihead_attention_lipschitz`). The token-wise LN Jacobian is block diagonal
    with norm :math:`\le \max|\gamma|/\sqrt{\varepsilon}` (:func:`layernorm_lipschitz`).
    By the chain rule, at every :math:`X`,

    .. math::

        \|I + J_{\mathrm{MHA}}(Z) J_{\mathrm{LN}}(X)\|_2
        \le 1 + L_{\mathrm{MHA}} \max|\gamma|/\sqrt{\varepsilon},

    and :math:`\mathbb{R}^{N\times D}` is convex, so this is a global Lipschitz constant.
    The argument needs the LayerNorm *before* attention: in a post-LN block
    :math:`\mathrm{LN}(X + \mathrm{MHA}(X))` attention sees the raw, unbounded tokens and
    no global constant exists. For a local value at one :math:`X`, compose the local
    forms the same way: :func:`layernorm_local_lipschitz` at :math:`X` times
    :func:`multihead_attention_lipschitz` of :func:`attention_head_local_lipschitz` at
    :math:`Z`, plus 1.

    *Tightness.* The global constant is certified but very loose in practice: on the
    random blocks of the integration tests the exact Jacobian norm is a median
    :math:`3 \times 10^{-6}` of it (the :math:`1/\sqrt{\varepsilon}` LN factor is attained
    only at near-constant tokens, and attention is bounded at the worst radius
    :math:`R_{\mathrm{LN}}`); the local composition has median 0.10, max 0.97.

    References
    ----------
    Xiong et al., "On Layer Normalization in the Transformer Architecture", ICML 2020,
    arXiv:2002.04745 (pre-LN blocks).
    Kim, Papamakarios and Mnih, ICML 2021, arXiv:2006.04710.

    Examples
    --------
    >>> from theory import pre_ln_attention_lipschitz
    >>> head = {"head_dim": 4, "wq_norm": 1, "wk_norm": 1, "wv_norm": 1}
    >>> pre_ln_attention_lipschitz(1, 0, 1, 4, 4, [head], 1, residual=False)
    8
    """
    func = "pre_ln_attention_lipschitz"
    heads = list(heads)
    if not heads:
        raise ParameterError(f"{func}: expected at least one head, got [].")
    for index, head in enumerate(heads):
        if not isinstance(head, Mapping) or not _HEAD_KEYS.issuperset(head) or not {
                "head_dim", "wq_norm", "wk_norm", "wv_norm"}.issubset(head):
            raise ParameterError(
                f"{func}: expected heads[{index}] to be a mapping with keys head_dim, "
                f"wq_norm, wk_norm, wv_norm (optional: bq_norm, bk_norm, bv_norm, qk_norm), "
                f"got {head!r}.")
    radius = layernorm_output_radius(gamma_abs_max, beta_norm, dim)
    constants = [attention_head_lipschitz(radius, seq_len, **head) for head in heads]
    block = multihead_attention_lipschitz(constants, wo_norm) * layernorm_lipschitz(
        gamma_abs_max, eps)
    return block + 1 if residual else block
