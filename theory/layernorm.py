r"""Certified Jacobian-norm bounds for LayerNorm, each with its domain.

LayerNorm without its ``eps`` has a Jacobian that scales with :math:`1/\sigma` of its
input, so it is not globally Lipschitz; with ``eps > 0`` it is. The constants, each with
its **domain** stated at the top of its docstring and proved in its Notes:

- :func:`layernorm_lipschitz`: all of :math:`\mathbb{R}^D` (the variance is floored by eps);
- :func:`layernorm_local_lipschitz`: the Jacobian at one point;
- :func:`layernorm_output_radius`: the ball every output token lies in (what bounds the
  domain of an attention layer placed after a LayerNorm, :mod:`theory.attention`).

Norms of a sequence :math:`X \in \mathbb{R}^{N \times D}` (rows are tokens) are Frobenius
norms; token-wise LayerNorm has a block-diagonal Jacobian whose norm is the largest block's.
Every function accepts SymPy expressions or plain numbers and returns a SymPy expression;
arguments are refused (:class:`theory.errors.ParameterError`) only where a violation is
provable.
"""

from __future__ import annotations

import sympy

from theory.errors import ParameterError
from theory.validation import integer_expression, nonnegative, positive

__all__ = ["layernorm_lipschitz", "layernorm_local_lipschitz", "layernorm_output_radius"]


def layernorm_lipschitz(gamma_abs_max, eps) -> sympy.Expr:
    r"""Global Lipschitz constant of LayerNorm: :math:`\max_k|\gamma_k| / \sqrt{\varepsilon}`.

    **Domain: all of** :math:`\mathbb{R}^D`, for every ``eps > 0``. Certified bound on its
    domain. With ``eps = 0`` LayerNorm is not Lipschitz (its Jacobian grows like
    :math:`1/\sigma` as the input variance :math:`\sigma^2 \to 0`); the floor
    :math:`\sigma \ge \sqrt{\varepsilon}` is what makes it globally Lipschitz. The constant
    is honest but huge for the usual ``eps = 1e-5`` (about :math:`316 \max|\gamma|`): it is
    attained near constant inputs. For a tighter value at an actual activation use
    :func:`layernorm_local_lipschitz`.

    Token-wise LayerNorm on a sequence :math:`X \in \mathbb{R}^{N \times D}` has a
    block-diagonal Jacobian (one :math:`D \times D` block per token), whose norm is the
    largest block norm, so the same constant holds for the sequence map.

    Parameters
    ----------
    gamma_abs_max : SymPy expression or number
        :math:`\max_k |\gamma_k|`, the largest absolute elementwise scale (1 without affine
        parameters). Must be >= 0.
    eps : SymPy expression or number
        The variance floor :math:`\varepsilon`. Must be > 0.

    Returns
    -------
    SymPy expression
        :math:`\max_k|\gamma_k| / \sqrt{\varepsilon}`.

    Raises
    ------
    ParameterError
        If ``gamma_abs_max`` is provably negative or ``eps`` provably <= 0.

    Notes
    -----
    :math:`\mathrm{LN}(x) = \gamma \odot (x - \bar{x}\mathbf{1}) / \sigma + \beta` with
    :math:`\bar{x} = \mathbf{1}^\top x / D`, the biased variance
    :math:`v = \|Px\|^2 / D`, :math:`P = I - \mathbf{1}\mathbf{1}^\top / D` and
    :math:`\sigma = \sqrt{v + \varepsilon}`. Write :math:`c = Px` and
    :math:`y = c / \sigma`.

    *Jacobian.* :math:`d c = P\,dx`; since :math:`Pc = c`,
    :math:`dv = 2 c^\top dx / D` and :math:`d\sigma = c^\top dx / (D\sigma)`. Hence

    .. math::

        dy = \frac{P\,dx}{\sigma} - \frac{c\,d\sigma}{\sigma^2}
           = \frac{1}{\sigma}\Bigl(P - \frac{y y^\top}{D}\Bigr) dx,
        \qquad J(x) = \frac{1}{\sigma}\operatorname{diag}(\gamma)\, M,
        \quad M = P - \frac{y y^\top}{D}.

    *The middle factor has norm at most 1.* :math:`M` is symmetric. Because
    :math:`\mathbf{1}^\top y = 0` and :math:`\|y\|^2 = D v / (v + \varepsilon) < D`,
    :math:`\mathbb{R}^D` splits into orthogonal :math:`M`-invariant pieces:
    :math:`M\mathbf{1} = 0`; :math:`M y = (1 - \|y\|^2/D)\, y` with
    :math:`0 < 1 - \|y\|^2/D = \varepsilon/(v+\varepsilon) \le 1`; and :math:`M w = w`
    for :math:`w \perp \{\mathbf{1}, y\}`. All eigenvalues lie in :math:`[0, 1]`, so
    :math:`\|M\|_2 \le 1` and

    .. math::

        \|J(x)\|_2 \le \|\operatorname{diag}(\gamma)\|_2 \|M\|_2 / \sigma
        \le \max_k|\gamma_k| / \sqrt{v + \varepsilon}
        \le \max_k|\gamma_k| / \sqrt{\varepsilon}.

    LN is smooth on the convex set :math:`\mathbb{R}^D`, so the mean value inequality
    turns this uniform Jacobian bound into a Lipschitz constant. It is the exact global
    constant for a uniform :math:`\gamma` and :math:`D \ge 2`: at a constant input
    :math:`y = 0`, :math:`M = P` and :math:`\|J\|_2 = |\gamma|/\sqrt{\varepsilon}`.

    References
    ----------
    Ba, Kiros and Hinton, "Layer Normalization", arXiv:1607.06450, 2016.
    Kim, Papamakarios and Mnih, "The Lipschitz Constant of Self-Attention",
    ICML 2021, arXiv:2006.04710.

    Examples
    --------
    >>> import sympy
    >>> from theory import layernorm_lipschitz
    >>> layernorm_lipschitz(2, sympy.Rational(1, 100))
    20
    >>> gamma, eps = sympy.symbols("gamma epsilon", positive=True)
    >>> layernorm_lipschitz(gamma, eps)
    gamma/sqrt(epsilon)
    """
    func = "layernorm_lipschitz"
    gamma = nonnegative(func, "gamma_abs_max", gamma_abs_max)
    eps = positive(func, "eps", eps)
    return gamma / sympy.sqrt(eps)


def layernorm_local_lipschitz(gamma_abs_max, variance, eps) -> sympy.Expr:
    r"""Jacobian norm of LayerNorm at a point: :math:`\max|\gamma| / \sqrt{v + \varepsilon}`.

    **Domain: one input** :math:`x` whose biased variance is at least ``variance``
    (:math:`v \ge 0`); ``eps`` may be 0 here when :math:`v > 0`. Certified bound on the
    Jacobian norm :math:`\|J_{\mathrm{LN}}(x)\|_2` at that point (not a Lipschitz constant
    on a neighbourhood). For token-wise LayerNorm on a sequence the Jacobian is block
    diagonal, so its norm is the largest token's: pass the **smallest** token variance.
    The bound decreases in ``variance``, so any lower bound on it may be passed.

    Parameters
    ----------
    gamma_abs_max : SymPy expression or number
        :math:`\max_k |\gamma_k|`. Must be >= 0.
    variance : SymPy expression or number
        The biased variance :math:`v = \|x - \bar{x}\mathbf{1}\|^2 / D` of the input (or
        the minimum over tokens, or a lower bound). May be a measured value. Must be >= 0.
    eps : SymPy expression or number
        The variance floor :math:`\varepsilon`. Must be >= 0, and ``variance + eps > 0``.

    Returns
    -------
    SymPy expression
        :math:`\max_k|\gamma_k| / \sqrt{v + \varepsilon}`.

    Raises
    ------
    ParameterError
        If an argument is provably negative or ``variance + eps`` provably 0.

    Notes
    -----
    From the proof in :func:`layernorm_lipschitz`,
    :math:`J(x) = \operatorname{diag}(\gamma)(P - y y^\top/D)/\sigma` with
    :math:`\sigma = \sqrt{v + \varepsilon}` and :math:`\|P - y y^\top / D\|_2 \le 1`
    (that argument needs only :math:`\sigma > 0`; with :math:`\varepsilon = 0` the
    eigenvalue on :math:`y` is 0). Hence
    :math:`\|J(x)\|_2 \le \max_k|\gamma_k| / \sqrt{v + \varepsilon}`. On a sequence,
    :math:`J = \operatorname{blockdiag}(J(x_1), \dots, J(x_N))` and
    :math:`\|J\|_2 = \max_i \|J(x_i)\|_2 \le \max_k|\gamma_k| / \sqrt{\min_i v_i + \varepsilon}`.

    References
    ----------
    Castin, Ablin and Peyré, "How Smooth Is Attention?", ICML 2024, arXiv:2312.14820
    (local constants at actual activations).

    Examples
    --------
    >>> from theory import layernorm_local_lipschitz
    >>> layernorm_local_lipschitz(1, 3, 1)
    1/2
    """
    func = "layernorm_local_lipschitz"
    gamma = nonnegative(func, "gamma_abs_max", gamma_abs_max)
    variance = nonnegative(func, "variance", variance)
    eps = nonnegative(func, "eps", eps)
    if (variance + eps).is_zero:
        raise ParameterError(
            f"{func}: expected variance + eps > 0, got variance={variance}, eps={eps}.")
    return gamma / sympy.sqrt(variance + eps)


def layernorm_output_radius(gamma_abs_max, beta_norm, dim) -> sympy.Expr:
    r"""Radius of a ball holding every LayerNorm output: :math:`\max|\gamma|\sqrt{D} + \|\beta\|`.

    **Domain: all of** :math:`\mathbb{R}^D` **with** ``eps > 0`` (with ``eps = 0`` the
    bound still holds wherever LN is defined). Certified bound: every output token satisfies
    :math:`\|\mathrm{LN}(x)\|_2 \le` the returned radius. This is what bounds the domain of
    an attention layer placed after a LayerNorm (pre-LN blocks), see
    :func:`pre_ln_attention_lipschitz`.

    Parameters
    ----------
    gamma_abs_max : SymPy expression or number
        :math:`\max_k |\gamma_k|` (1 without affine parameters). Must be >= 0.
    beta_norm : SymPy expression or number
        :math:`\|\beta\|_2` (0 without affine parameters). Must be >= 0.
    dim : SymPy expression or integer
        The normalised dimension :math:`D`. Must be an integer >= 1.

    Returns
    -------
    SymPy expression
        :math:`\max_k|\gamma_k| \sqrt{D} + \|\beta\|_2`.

    Raises
    ------
    ParameterError
        If a norm is provably negative or ``dim`` provably not an integer >= 1.

    Notes
    -----
    With :math:`y = (x - \bar{x}\mathbf{1})/\sqrt{v+\varepsilon}`,
    :math:`\|y\|_2^2 = D v / (v + \varepsilon) < D` (and :math:`\le D` when
    :math:`\varepsilon = 0`), so by the triangle inequality

    .. math::

        \|\gamma \odot y + \beta\|_2 \le \max_k|\gamma_k|\,\|y\|_2 + \|\beta\|_2
        < \max_k|\gamma_k|\sqrt{D} + \|\beta\|_2 .

    The supremum is approached for :math:`\varepsilon \ll v`, a uniform :math:`\gamma`
    and :math:`\beta` parallel to :math:`y`.

    Examples
    --------
    >>> from theory import layernorm_output_radius
    >>> layernorm_output_radius(1, 0, 16)
    4
    """
    func = "layernorm_output_radius"
    gamma = nonnegative(func, "gamma_abs_max", gamma_abs_max)
    beta = nonnegative(func, "beta_norm", beta_norm)
    dim = integer_expression(func, "dim", dim)
    return gamma * sympy.sqrt(dim) + beta
