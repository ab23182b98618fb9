r"""``nn.MultiheadAttention`` kept whole: self-attention on tokens of bounded norm.

Global: :func:`theory.attention_head_lipschitz` per head on the ball of radius :math:`R`
that the tracer has carried to the attention's input (a LayerNorm sets it; scalings,
constant shifts, residual sums and linear maps in between update it, and anything the
tracer cannot follow forgets it), combined by :func:`theory.multihead_attention_lipschitz`.
Without a radius there is no global constant (Kim et al. 2021): refused, or infinite for
local bounds. Locally: the same proof with the measured attention matrix, spreads and token
norms (:func:`theory.attention_head_local_lipschitz`).

Covered: exactly ``nn.MultiheadAttention`` (a subclass is traced through), self-attention
(query, key and value the same tensor), equal q/k/v dimensions, no ``add_bias_kv`` or
``add_zero_attn``, masks (``attn_mask``, ``key_padding_mask``, ``is_causal``) that do not
depend on the input and leave every query at least one key: the proof only uses that each
attention row is a probability vector. The attention weights may be returned but not
used.
"""

from __future__ import annotations

import functools
import inspect
import math

import sympy
import torch
from torch import nn

from numeric.graph.norms import CERTIFICATION_FACTOR, linear_operator_norm
from numeric.graph.registry import NodeSpec, RuleContext, Value, register_rule, unsupported
from numeric.graph.rows import map_rows, per_row
from numeric.graph.rules.common import certify
from theory import transformer as tt

__all__ = ["register", "slow_forward"]

_SIGNATURE = inspect.signature(nn.MultiheadAttention.forward)


def _call(ctx: RuleContext) -> dict:
    args, kwargs = ctx.call.arguments(ctx.arguments["tensors"])
    bound = _SIGNATURE.bind(ctx.module, *args, **kwargs)
    bound.apply_defaults()
    return dict(bound.arguments)


def _unwrap(item):
    return item.value if isinstance(item, Value) else item


def _check(ctx: RuleContext) -> tuple[nn.MultiheadAttention, dict]:
    mha = ctx.module
    call = _call(ctx)
    query, key, value = call["query"], call["key"], call["value"]
    if not all(isinstance(v, Value) and v.traced for v in (query, key, value)) or \
            len({query.name, key.name, value.name}) != 1:
        raise unsupported(ctx, "only self-attention (query, key and value the same "
                               "input-dependent tensor) is covered by the proof")
    if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
        raise unsupported(ctx, "separate k/v dimensions, add_bias_kv and add_zero_attn are "
                               "not covered by the proof")
    if mha.training and mha.dropout > 0:
        raise unsupported(ctx, "attention dropout in training mode is random; call "
                               "model.eval()")
    for name in ("attn_mask", "key_padding_mask"):
        item = call[name]
        if isinstance(item, Value) and (item.traced or item.dependent):
            raise unsupported(ctx, f"its {name} depends on the input")
    if query.value.dim() != 3:
        raise unsupported(ctx, f"expected a batched input (3 dimensions), got shape "
                               f"{tuple(query.value.shape)}")
    mask = _additive_mask(mha, call, query.value)
    if mask is not None and not bool(torch.isfinite(mask).any(-1).all()):
        raise unsupported(ctx, "its masks leave a query with no key to attend to")
    return mha, call


def _additive_mask(mha, call, x) -> torch.Tensor | None:
    """The constant masks as one additive (B, H, N, N) mask (-inf where masked)."""
    n = x.shape[1] if mha.batch_first else x.shape[0]
    batch = x.shape[0] if mha.batch_first else x.shape[1]
    mask = torch.zeros(batch, mha.num_heads, n, n, dtype=torch.float64, device=x.device)
    attn, padding = _unwrap(call["attn_mask"]), _unwrap(call["key_padding_mask"])
    if attn is None and call["is_causal"]:
        attn = torch.triu(torch.ones(n, n, dtype=torch.bool, device=x.device), 1)
    for item, shape in ((attn, None), (padding, (batch, 1, 1, n))):
        if item is None:
            continue
        item = item.to(x.device)
        additive = torch.zeros(item.shape, dtype=torch.float64, device=x.device)
        if item.dtype == torch.bool:
            additive = additive.masked_fill(item, -math.inf)
        else:
            additive = item.to(torch.float64)
        if shape is not None:
            additive = additive.reshape(shape)
        elif additive.dim() == 3:
            additive = additive.reshape(batch, mha.num_heads, n, n)
        mask = mask + additive
    if attn is None and padding is None:
        return None
    return mask


def _head_weights(mha: nn.MultiheadAttention):
    """Per-head weights (H, d, E) of q, k, v, biases (H, d) and W_o, float64."""
    E, H = mha.embed_dim, mha.num_heads
    d = E // H
    weight = mha.in_proj_weight.detach().to("cpu", torch.float64)
    bias = (mha.in_proj_bias.detach().to("cpu", torch.float64)
            if mha.in_proj_bias is not None else torch.zeros(3 * E, dtype=torch.float64))
    wq, wk, wv = (weight[i * E:(i + 1) * E].reshape(H, d, E) for i in range(3))
    bq, bk, bv = (bias[i * E:(i + 1) * E].reshape(H, d) for i in range(3))
    return wq, wk, wv, bq, bk, bv, mha.out_proj.weight.detach().to("cpu", torch.float64)


def _head_norms(mha: nn.MultiheadAttention) -> dict:
    wq, wk, wv, bq, _, bv, wo = _head_weights(mha)
    norms = {"wq": [], "wk": [], "wv": [], "qk": [], "bq": [], "bv": []}
    for h in range(mha.num_heads):
        norms["wq"].append(linear_operator_norm(wq[h]))
        norms["wk"].append(linear_operator_norm(wk[h]))
        norms["wv"].append(linear_operator_norm(wv[h]))
        # ||W_q W_k^T|| (E x E, rank d) = ||R_q R_k^T|| with W^T = Q R (torch W is d x E)
        r_q = torch.linalg.qr(wq[h].T).R
        r_k = torch.linalg.qr(wk[h].T).R
        norms["qk"].append(linear_operator_norm(r_q @ r_k.T))
        norms["bq"].append(certify(bq[h].norm()))
        norms["bv"].append(certify(bv[h].norm()))
    norms["wo"] = linear_operator_norm(wo)
    bias = mha.out_proj.bias
    norms["bo"] = 0.0 if bias is None else certify(bias.detach().double().norm())
    return norms


def _output_radius(norms: dict, heads: int):
    """Every output token is W_o times the concatenation over heads of convex combinations
    of value tokens (norm <= ||W_v,h|| R + ||b_v,h||), plus b_o."""
    def radius(r):
        if r is None:
            return None
        per_head = [(norms["wv"][h] * r + norms["bv"][h]) ** 2 for h in range(heads)]
        return (norms["wo"] * math.sqrt(sum(per_head)) + norms["bo"]) * (1 + 1e-12)
    return radius


def _attention(ctx: RuleContext) -> NodeSpec:
    mha, call = _check(ctx)
    x = call["query"]
    batch_dim = 0 if mha.batch_first else 1
    tokens = x.value.shape[1 - batch_dim]
    norms = _head_norms(mha)
    params = {"heads": mha.num_heads, "embed_dim": mha.embed_dim, "seq_len": tokens}
    common = dict(kind="leaf", batch_dim=batch_dim, outputs={0: "traced"},
                  radius=_output_radius(norms, mha.num_heads))
    radius = x.radius
    if radius is None:
        reason = ("dot-product self-attention has no global Lipschitz constant on unbounded "
                  "inputs (Kim et al. 2021); the proved bound needs tokens of bounded norm, "
                  "which a LayerNorm before the attention guarantees when nothing in "
                  "between can grow them without bound")
        if ctx.options.allow_unbounded:
            return NodeSpec("attention", lipschitz=math.inf, params=params, **common,
                            label=f"{ctx.where}: {reason}")
        raise unsupported(ctx, reason + "; use fisher_bound(..., local=True) for a bound at "
                                        "given inputs")
    heads = [tt.attention_head_lipschitz(radius, tokens, mha.head_dim, norms["wq"][h],
                                         norms["wk"][h], norms["wv"][h], norms["bq"][h],
                                         qk_norm=norms["qk"][h])
             for h in range(mha.num_heads)]
    value = tt.multihead_attention_lipschitz(heads, norms["wo"])
    return NodeSpec("attention", lipschitz=certify(value), params={**params, "radius": radius},
                    **common, label="theory.attention_head_lipschitz on tokens of norm <= R "
                                    "(carried from a LayerNorm)")


#: above this many multiply-adds per row the token spreads use the trace bound
_SPREAD_EXACT_LIMIT = 5e7


def _spread(p: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    r"""Upper bound on :math:`\max_i \lambda_{\max}(X^\top \Sigma_i X)^{1/2}`, (B, H).

    ``p`` (B, H, N, N) attention rows, ``x`` (B, H, N, D). Exact through the Gram matrix of
    :math:`\operatorname{diag}(\sqrt{p_i})(X - 1\bar x_i^T)` when cheap; else its trace
    (the weighted variance), which is larger.
    """
    B, H, N, D = x.shape
    if N * N * min(N, D) * D * H <= _SPREAD_EXACT_LIMIT:
        mean = p @ x
        centred = x.unsqueeze(2) - mean.unsqueeze(3)
        weighted = p.sqrt().unsqueeze(-1) * centred
        gram = weighted @ weighted.transpose(-1, -2) if N <= D else \
            weighted.transpose(-1, -2) @ weighted
        top = torch.linalg.eigvalsh(gram)[..., -1].clamp_min(0)
        slack = 1e-12 * (p.unsqueeze(-1) * x.unsqueeze(2) ** 2).sum((-1, -2))
        return (top + slack).sqrt().amax(-1) * CERTIFICATION_FACTOR
    second = p @ (x ** 2).sum(-1, keepdim=True)
    mean = p @ x
    variance = second.squeeze(-1) - (mean ** 2).sum(-1)
    slack = 1e-10 * second.squeeze(-1)
    return (variance.clamp_min(0) + slack).sqrt().amax(-1) * CERTIFICATION_FACTOR


@functools.cache
def _local_function():
    names = ("R", "d", "wq", "wk", "wv", "bq", "qk", "P", "c", "sx", "sv", "g")
    symbols = sympy.symbols(" ".join(names), positive=True)
    N = sympy.Symbol("N", positive=True, integer=True)
    R, d, wq, wk, wv, bq, qk, P, c, sx, sv, g = symbols
    expr = tt.attention_head_local_lipschitz(
        R, N, d, wq, wk, wv, bq, qk_norm=qk, attention_norm=P, attention_column_sum=c,
        token_spread=sx, value_spread=sv, query_key_norm=g)
    return sympy.lambdify((N, *symbols), expr, "numpy")


def _attention_local(ctx: RuleContext) -> torch.Tensor:
    mha, call = _check(ctx)
    value = call["query"]
    x = value.value.detach().to(torch.float64)
    if not mha.batch_first:
        x = x.transpose(0, 1)
    B, N, E = x.shape
    H, d = mha.num_heads, mha.head_dim
    wq, wk, wv, bq, bk, bv, _ = (t.to(x.device) for t in _head_weights(mha))
    q = torch.einsum("bne,hde->bhnd", x, wq) + bq[None, :, None]
    k = torch.einsum("bne,hde->bhnd", x, wk) + bk[None, :, None]
    v = torch.einsum("bne,hde->bhnd", x, wv) + bv[None, :, None]
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)
    mask = _additive_mask(mha, call, value.value)
    if mask is not None:
        scores = scores + mask.to(scores)
    p = torch.softmax(scores, dim=-1)
    attention_norm = torch.linalg.matrix_norm(p, ord=2) * CERTIFICATION_FACTOR
    column = p.sum(-2).amax(-1) * CERTIFICATION_FACTOR
    s_x = _spread(p, x.unsqueeze(1).expand(B, H, N, E))
    s_v = _spread(p, v)
    g = torch.einsum("bhnd,hde->bhne", q, wk).norm(dim=-1).amax(-1) * CERTIFICATION_FACTOR
    radius = x.norm(dim=-1).amax(-1) * CERTIFICATION_FACTOR
    norms = _head_norms(mha)
    function = _local_function()
    radius, attention_norm, column, s_x, s_v, g = (
        t.detach().cpu() for t in (radius, attention_norm, column, s_x, s_v, g))
    per_head = []
    for h in range(H):
        head = function(N, radius.numpy(), d, norms["wq"][h], norms["wk"][h],
                        norms["wv"][h], norms["bq"][h], norms["qk"][h],
                        attention_norm[:, h].numpy(), column[:, h].numpy(),
                        s_x[:, h].numpy(), s_v[:, h].numpy(), g[:, h].numpy())
        per_head.append(torch.as_tensor(head, dtype=torch.float64).expand(B))
    heads = torch.stack(per_head, dim=1)
    # theory.multihead_attention_lipschitz: ||W_o|| sqrt(sum_h L_h^2)
    values = norms["wo"] * heads.pow(2).sum(1).sqrt() * CERTIFICATION_FACTOR   # (B_mha,)
    batch_dim = 0 if mha.batch_first else 1
    shape = [1, 1, 1]
    shape[batch_dim] = B
    rows = map_rows(value.rows, tuple(d for d in range(3) if d != batch_dim), True,
                    tuple(shape))
    return per_row(values.reshape(shape), rows, ctx.batch)


def _attention_region(ctx: RuleContext) -> torch.Tensor:
    """The global formula on the ball of radius R(x) + (how far the tokens move): every
    token of every input in the ball has at most that norm."""
    mha, call = _check(ctx)
    value = call["query"]
    x = value.value.detach().to(torch.float64)
    batch_dim = 0 if mha.batch_first else 1
    moved = ctx.deviation(value).to(x).pow(2).sum(dim=-1).sqrt()      # per token
    radius = (x.norm(dim=-1) + moved).amax(dim=1 - batch_dim)          # per batch entry
    tokens = x.shape[1 - batch_dim]
    norms = _head_norms(mha)
    values = []
    for r in radius.tolist():
        if not math.isfinite(r):   # the ball reaches unbounded tokens: no bound here
            values.append(math.inf)
            continue
        heads = [tt.attention_head_lipschitz(r, tokens, mha.head_dim, norms["wq"][h],
                                             norms["wk"][h], norms["wv"][h], norms["bq"][h],
                                             qk_norm=norms["qk"][h])
                 for h in range(mha.num_heads)]
        values.append(certify(tt.multihead_attention_lipschitz(heads, norms["wo"])))
    shape = [1, 1, 1]
    shape[batch_dim] = len(values)
    rows = map_rows(value.rows, tuple(d for d in range(3) if d != batch_dim), True,
                    tuple(shape))
    values = torch.tensor(values, dtype=torch.float64).reshape(shape)
    return per_row(values, rows, ctx.batch)


def slow_forward(mha: nn.MultiheadAttention, query, key, value, key_padding_mask=None,
                 need_weights=True, attn_mask=None, average_attn_weights=True,
                 is_causal=False):
    """``nn.MultiheadAttention.forward`` without its fused fast path (which has no
    forward-mode derivative): the same computation through
    ``F.multi_head_attention_forward``, in eval mode (no dropout)."""
    import torch.nn.functional as F
    if mha.batch_first:
        query, key, value = (t.transpose(0, 1) for t in (query, key, value))
    out, weights = F.multi_head_attention_forward(
        query, key, value, mha.embed_dim, mha.num_heads, mha.in_proj_weight,
        mha.in_proj_bias, mha.bias_k, mha.bias_v, mha.add_zero_attn, 0.0,
        mha.out_proj.weight, mha.out_proj.bias, training=False,
        key_padding_mask=key_padding_mask, need_weights=need_weights, attn_mask=attn_mask,
        average_attn_weights=average_attn_weights, is_causal=is_causal)
    return (out.transpose(0, 1) if mha.batch_first else out), weights


def register() -> None:
    register_rule(nn.MultiheadAttention, _attention, local=_attention_local,
                  region=_attention_region, overwrite=True)
