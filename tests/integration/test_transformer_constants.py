"""The Transformer constants of ``theory.transformer`` never undercut an exact Jacobian.

Every case compares a certified bound with the exact spectral norm of the float64 Jacobian
from ``torch.func.jacrev`` (``torch.linalg.matrix_norm(ord=2)`` of the (N*D_out, N*D_in)
matrix) over seeded random problems built to stress each proof: tiny-variance and constant
LayerNorm inputs, eps from 1e-12 to 1, large weights (sharp softmax), tokens on the sphere,
duplicated and antipodal tokens, causal masks, unbounded inputs to a pre-LN block. A
violation means a proof is wrong. Each test also reports the tightness (exact / bound) it
saw; run with ``-s`` to print it.
"""

from __future__ import annotations

import math
import statistics

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from theory.transformer import (
    attention_head_lipschitz,
    attention_head_local_lipschitz,
    layernorm_lipschitz,
    layernorm_local_lipschitz,
    layernorm_output_radius,
    multihead_attention_lipschitz,
    pre_ln_attention_lipschitz,
)

# The bounds are exact real-number inequalities; the Jacobians, norms and measured
# activations carry float64 rounding, relative ~1e-15 at these sizes. This is that
# rounding allowance, not slack in any bound.
RTOL = 1e-9

pytestmark = pytest.mark.filterwarnings("ignore:There is a performance drop:UserWarning")


# --------------------------------------------------------------------------- helpers


def _batched_jacobian(func, inputs: torch.Tensor) -> torch.Tensor:
    """Exact Jacobian of every case: shape (B, out_numel, in_numel), float64.

    ``func`` maps a batch (B, ...) to a batch (B, ...) case by case, so the Jacobian of
    the batch-summed output with respect to the batch is the stack of per-case Jacobians.
    """
    jac = torch.func.jacrev(lambda batch: func(batch).sum(0))(inputs)
    out_ndim = jac.ndim - inputs.ndim
    jac = jac.movedim(out_ndim, 0)
    return jac.reshape(inputs.shape[0], -1, inputs[0].numel())


def _spectral(jac: torch.Tensor) -> torch.Tensor:
    return torch.linalg.matrix_norm(jac, ord=2)


def _log_uniform(generator, low: float, high: float, size=()) -> torch.Tensor:
    exponent = torch.empty(size, dtype=torch.float64).uniform_(low, high, generator=generator)
    return 10.0 ** exponent


def _spectral_norm(matrix: torch.Tensor) -> torch.Tensor:
    return torch.linalg.matrix_norm(matrix, ord=2)


class _Soundness:
    """Collects exact/bound ratios per named bound and fails on any violation."""

    def __init__(self):
        self.ratios: dict[str, list[float]] = {}

    def check(self, name: str, exact: torch.Tensor, bound: list[float] | torch.Tensor):
        exact = exact.detach().reshape(-1)
        bound = torch.as_tensor(bound, dtype=torch.float64).reshape(-1)
        assert torch.isfinite(bound).all(), f"{name}: non-finite bound {bound}"
        assert torch.isfinite(exact).all(), f"{name}: non-finite exact value {exact}"
        violated = exact > bound * (1 + RTOL)
        assert not violated.any(), (
            f"{name}: {int(violated.sum())} violations, e.g. exact {exact[violated][:3]} > "
            f"bound {bound[violated][:3]}")
        ratios = torch.where(bound > 0, exact / bound, torch.zeros_like(exact))
        self.ratios.setdefault(name, []).extend(ratios.tolist())

    def count(self) -> int:
        return max(len(ratios) for ratios in self.ratios.values())

    def report(self) -> dict[str, tuple[float, float]]:
        summary = {name: (statistics.median(r), max(r)) for name, r in self.ratios.items()}
        for name, (median, worst) in summary.items():
            print(f"{name}: cases={len(self.ratios[name])} exact/bound median={median:.3g} "
                  f"max={worst:.3g}")
        return summary


# --------------------------------------------------------------------------- LayerNorm


def _layernorm_inputs(generator, batch: int, tokens: int, dim: int) -> torch.Tensor:
    """Tokens of five kinds: generic at any scale, near constant, constant, tiny variance."""
    kind = torch.randint(0, 5, (batch, tokens, 1), generator=generator)
    offset = torch.randn(batch, tokens, 1, generator=generator, dtype=torch.float64)
    noise = torch.randn(batch, tokens, dim, generator=generator, dtype=torch.float64)
    generic = noise * _log_uniform(generator, -4, 4, (batch, tokens, 1)) + offset * 10
    near_constant = offset + noise * _log_uniform(generator, -9, -2, (batch, tokens, 1))
    constant = offset.expand(batch, tokens, dim)
    tiny = noise * _log_uniform(generator, -7, -3, (batch, tokens, 1))
    unit = noise
    return torch.stack([generic, near_constant, constant, tiny, unit])[
        kind.squeeze(-1), torch.arange(batch)[:, None], torch.arange(tokens)]


def _layernorm_affine(generator, batch: int, dim: int):
    """Per-case gamma (uniform or random, signs mixed, up to 1e3) and beta (up to 1e3)."""
    scale = _log_uniform(generator, -2, 3, (batch, 1))
    uniform = torch.ones(batch, dim, dtype=torch.float64)
    random = torch.randn(batch, dim, generator=generator, dtype=torch.float64)
    is_uniform = torch.rand(batch, 1, generator=generator) < 0.3
    gamma = scale * torch.where(is_uniform, uniform, random)
    beta = torch.randn(batch, dim, generator=generator, dtype=torch.float64) * \
        _log_uniform(generator, -2, 3, (batch, 1))
    return gamma, beta


@pytest.mark.parametrize("dim", [1, 2, 3, 5, 8, 16])
def test_layernorm_constants_bound_the_exact_jacobian(dim):
    generator = torch.Generator().manual_seed(1000 + dim)
    soundness = _Soundness()
    eps_values = [1e-12, 1.0, *_log_uniform(generator, -12, 0, (4,)).tolist()]
    for eps in eps_values:
        tokens = int(torch.randint(1, 4, (), generator=generator))
        batch = 12
        x = _layernorm_inputs(generator, batch, tokens, dim)
        gamma, beta = _layernorm_affine(generator, batch, dim)

        def layernorm(x_batch):
            return torch.func.vmap(
                lambda x, g, b: F.layer_norm(x, (dim,), g, b, eps))(x_batch, gamma, beta)

        exact = _spectral(_batched_jacobian(layernorm, x))
        gamma_abs_max = gamma.abs().amax(-1).tolist()
        min_variance = x.var(-1, unbiased=False).amin(-1).tolist()
        beta_norm = beta.norm(dim=-1).tolist()
        soundness.check("layernorm_lipschitz", exact,
                        [float(layernorm_lipschitz(g, eps)) for g in gamma_abs_max])
        soundness.check("layernorm_local_lipschitz", exact,
                        [float(layernorm_local_lipschitz(g, v, eps))
                         for g, v in zip(gamma_abs_max, min_variance)])
        with torch.no_grad():
            out_norms = layernorm(x).norm(dim=-1).amax(-1)
        soundness.check("layernorm_output_radius", out_norms,
                        [float(layernorm_output_radius(g, b, dim))
                         for g, b in zip(gamma_abs_max, beta_norm)])
    summary = soundness.report()
    assert soundness.count() == batch * len(eps_values)
    if dim >= 2:  # the global constant is attained at constant inputs with uniform gamma
        assert summary["layernorm_lipschitz"][1] > 0.999


# --------------------------------------------------------------------------- one head


def _tokens(generator, batch: int, n: int, dim: int, radius: torch.Tensor) -> torch.Tensor:
    """Tokens with norm <= radius: in the ball, on the sphere, clustered, duplicated, ±x."""
    direction = torch.randn(batch, n, dim, generator=generator, dtype=torch.float64)
    direction = direction / direction.norm(dim=-1, keepdim=True)
    kind = torch.randint(0, 5, (batch,), generator=generator)
    lengths = torch.rand(batch, n, 1, generator=generator, dtype=torch.float64)
    lengths = torch.where((kind == 1)[:, None, None], torch.ones_like(lengths), lengths)
    clustered = direction[:, :1] + 0.05 * direction
    clustered = clustered / clustered.norm(dim=-1, keepdim=True)
    direction = torch.where((kind == 2)[:, None, None], clustered, direction)
    direction = torch.where((kind == 3)[:, None, None], direction[:, :1].expand_as(direction),
                            direction)
    signs = (-1.0) ** torch.arange(n, dtype=torch.float64)[None, :, None]
    direction = torch.where((kind == 4)[:, None, None], direction[:, :1] * signs, direction)
    return direction * lengths * radius[:, None, None]


def _head_parts(x, wq, wk, wv, bq, bk, bv, head_dim, causal=False):
    """Queries, values and attention matrix of a batch of heads (shapes (B, N, .))."""
    queries = x @ wq + bq.unsqueeze(-2)
    keys = x @ wk + bk.unsqueeze(-2)
    values = x @ wv + bv.unsqueeze(-2)
    scores = queries @ keys.mT / math.sqrt(head_dim)
    if causal:  # an additive mask independent of x: the proofs cover it
        n = x.shape[-2]
        future = torch.ones(n, n, dtype=torch.bool).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    attention = torch.softmax(scores, dim=-1)
    return queries, values, attention


def _measured(x, queries, values, attention, wk) -> dict[str, list[float]]:
    """The activation-dependent quantities that ``attention_head_local_lipschitz`` accepts."""
    covariance_weights = torch.diag_embed(attention) - attention[..., :, None] * \
        attention[..., None, :]  # (B, N, N, N): Sigma_i for each query row i

    def spread(z):  # max_i sqrt(lambda_max(Z^T Sigma_i Z))
        covariance = z[:, None].mT @ covariance_weights @ z[:, None]
        return torch.linalg.eigvalsh(covariance).amax(-1).clamp_min(0).sqrt().amax(-1)

    return {
        "attention_norm": _spectral_norm(attention).tolist(),
        "attention_column_sum": attention.sum(-2).amax(-1).tolist(),
        "token_spread": spread(x).tolist(),
        "value_spread": spread(values).tolist(),
        "query_key_norm": (queries @ wk.mT).norm(dim=-1).amax(-1).tolist(),
    }


def _random_head(generator, batch, dim, head_dim, value_dim):
    """Per-case projections, scaled up to ~30x (sharp softmax), biases zero or random."""
    def weight(cols):
        scale = _log_uniform(generator, -1, 1.5, (batch, 1, 1))
        return torch.randn(batch, dim, cols, generator=generator, dtype=torch.float64) * \
            scale / math.sqrt(dim)

    def bias(cols):
        scale = _log_uniform(generator, -2, 1, (batch, 1))
        scale = torch.where(torch.rand(batch, 1, generator=generator) < 0.25, 0.0, scale)
        return torch.randn(batch, cols, generator=generator, dtype=torch.float64) * scale

    return (weight(head_dim), weight(head_dim), weight(value_dim),
            bias(head_dim), bias(head_dim), bias(value_dim))


def test_attention_head_constants_bound_the_exact_jacobian():
    generator = torch.Generator().manual_seed(2024)
    soundness = _Soundness()
    batch = 8
    shapes = [(1, 1, 1, 1), (1, 16, 4, 4), (16, 1, 1, 1), (16, 16, 8, 8), (2, 2, 1, 1)]
    shapes += [tuple(int(torch.randint(1, high, (), generator=generator))
                     for high in (17, 17, 9, 9)) for _ in range(40)]
    for index, (n, dim, head_dim, value_dim) in enumerate(shapes):
        causal = index % 3 == 2
        wq, wk, wv, bq, bk, bv = _random_head(generator, batch, dim, head_dim, value_dim)
        radius = _log_uniform(generator, -1, 1, (batch,))
        x = _tokens(generator, batch, n, dim, radius)

        def head(x_batch):
            _, values, attention = _head_parts(x_batch, wq, wk, wv, bq, bk, bv, head_dim,
                                               causal)
            return attention @ values

        exact = _spectral(_batched_jacobian(head, x))
        norms = {name: _spectral_norm(w).tolist()
                 for name, w in (("wq_norm", wq), ("wk_norm", wk), ("wv_norm", wv))}
        norms |= {name: b.norm(dim=-1).tolist()
                  for name, b in (("bq_norm", bq), ("bk_norm", bk), ("bv_norm", bv))}
        norms["qk_norm"] = _spectral_norm(wq @ wk.mT).tolist()
        with torch.no_grad():
            measured = _measured(x, *_head_parts(x, wq, wk, wv, bq, bk, bv, head_dim, causal),
                                 wk)
        actual_radius = x.norm(dim=-1).amax(-1).tolist()
        global_default, global_qk, local = [], [], []
        for case in range(batch):
            args = {name: values[case] for name, values in norms.items()}
            qk_norm = args.pop("qk_norm")
            global_default.append(float(attention_head_lipschitz(
                radius[case].item(), n, head_dim, **args)))
            global_qk.append(float(attention_head_lipschitz(
                radius[case].item(), n, head_dim, **args, qk_norm=qk_norm)))
            local.append(float(attention_head_local_lipschitz(
                actual_radius[case], n, head_dim, **args, qk_norm=qk_norm,
                **{name: values[case] for name, values in measured.items()})))
        soundness.check("attention_head_lipschitz", exact, global_default)
        soundness.check("attention_head_lipschitz(qk_norm)", exact, global_qk)
        soundness.check("attention_head_local_lipschitz", exact, local)
    soundness.report()
    assert soundness.count() == batch * len(shapes)



# --------------------------------------------------------------------------- torch MHA


def _random_mha(generator, dim: int, heads: int) -> nn.MultiheadAttention:
    """A float64 ``nn.MultiheadAttention`` with seeded weights, biases everywhere and
    query/key weights up to ~10x the default scale (sharp softmax)."""
    mha = nn.MultiheadAttention(dim, heads, batch_first=True, dtype=torch.float64).eval()
    scale = _log_uniform(generator, -0.5, 1, ())
    with torch.no_grad():
        for parameter, factor in ((mha.in_proj_weight, scale / math.sqrt(dim)),
                                  (mha.in_proj_bias, _log_uniform(generator, -2, 0.5, ())),
                                  (mha.out_proj.weight, 1 / math.sqrt(dim)),
                                  (mha.out_proj.bias, 1.0)):
            parameter.copy_(torch.randn(parameter.shape, generator=generator,
                                        dtype=torch.float64) * factor)
    return mha


def _mha_heads(mha: nn.MultiheadAttention) -> list[dict[str, torch.Tensor]]:
    """Per-head (D x d) projections and biases in the row convention X @ W + b."""
    head_dim = mha.embed_dim // mha.num_heads
    weights = mha.in_proj_weight.detach().chunk(3)
    biases = mha.in_proj_bias.detach().chunk(3)
    heads = []
    for h in range(mha.num_heads):
        rows = slice(h * head_dim, (h + 1) * head_dim)
        heads.append({"wq": weights[0][rows].T, "wk": weights[1][rows].T,
                      "wv": weights[2][rows].T, "bq": biases[0][rows], "bk": biases[1][rows],
                      "bv": biases[2][rows]})
    return heads


def _head_norms(head: dict[str, torch.Tensor]) -> dict[str, float]:
    """The keyword arguments of ``attention_head_lipschitz`` for one extracted head."""
    return {"head_dim": head["wq"].shape[1],
            "wq_norm": _spectral_norm(head["wq"]).item(),
            "wk_norm": _spectral_norm(head["wk"]).item(),
            "wv_norm": _spectral_norm(head["wv"]).item(),
            "bq_norm": head["bq"].norm().item(), "bk_norm": head["bk"].norm().item(),
            "bv_norm": head["bv"].norm().item(),
            "qk_norm": _spectral_norm(head["wq"] @ head["wk"].T).item()}


def _mha_local_bounds(mha: nn.MultiheadAttention, z: torch.Tensor) -> list[float]:
    """Local multi-head bound at each sequence of ``z`` (B, N, E), from its activations."""
    heads = _mha_heads(mha)
    wo_norm = _spectral_norm(mha.out_proj.weight.detach()).item()
    radius = z.norm(dim=-1).amax(-1).tolist()
    per_head = []
    for head in heads:
        norms = _head_norms(head)
        head_dim = norms.pop("head_dim")
        parts = _head_parts(z, head["wq"], head["wk"], head["wv"], head["bq"], head["bk"],
                            head["bv"], head_dim)
        measured = _measured(z, *parts, head["wk"])
        per_head.append([
            attention_head_local_lipschitz(radius[case], z.shape[1], head_dim, **norms,
                                           **{k: v[case] for k, v in measured.items()})
            for case in range(z.shape[0])])
    return [float(multihead_attention_lipschitz(constants, wo_norm))
            for constants in zip(*per_head)]


def _mha_global_bound(mha: nn.MultiheadAttention, radius: float, seq_len: int) -> float:
    constants = [attention_head_lipschitz(radius, seq_len, **_head_norms(head))
                 for head in _mha_heads(mha)]
    return float(multihead_attention_lipschitz(
        constants, _spectral_norm(mha.out_proj.weight.detach()).item()))


def _mha_configs(generator, count: int) -> list[tuple[int, int, int]]:
    """(seq_len, embed_dim, heads) with heads in 1..4 dividing embed_dim <= 16."""
    configs = [(1, 4, 4), (16, 16, 4), (16, 1, 1), (2, 2, 2)]
    while len(configs) < count:
        heads = int(torch.randint(1, 5, (), generator=generator))
        dim = heads * int(torch.randint(1, 16 // heads + 1, (), generator=generator))
        configs.append((int(torch.randint(1, 17, (), generator=generator)), dim, heads))
    return configs


def test_multihead_attention_constants_bound_torch_mha():
    generator = torch.Generator().manual_seed(7)
    soundness = _Soundness()
    batch = 6
    configs = _mha_configs(generator, 50)
    for n, dim, heads in configs:
        mha = _random_mha(generator, dim, heads)
        radius = _log_uniform(generator, -1, 1, (batch,))
        x = _tokens(generator, batch, n, dim, radius)

        def attention(x_batch):
            return mha(x_batch, x_batch, x_batch, need_weights=False)[0]

        with torch.no_grad():  # the extracted heads reproduce the module exactly
            manual = torch.cat([
                _head_parts(x, h["wq"], h["wk"], h["wv"], h["bq"], h["bk"], h["bv"],
                            dim // heads)[2] @ (x @ h["wv"] + h["bv"]) for h in _mha_heads(mha)],
                dim=-1) @ mha.out_proj.weight.T + mha.out_proj.bias
            torch.testing.assert_close(manual, attention(x), rtol=1e-10, atol=1e-10)
        exact = _spectral(_batched_jacobian(attention, x))
        soundness.check("multihead_attention_lipschitz", exact,
                        [_mha_global_bound(mha, r, n) for r in radius.tolist()])
        with torch.no_grad():
            local = _mha_local_bounds(mha, x)
        soundness.check("multihead_attention_lipschitz(local heads)", exact, local)
    soundness.report()
    assert soundness.count() == batch * len(configs)


# --------------------------------------------------------------------------- pre-LN block


def test_pre_ln_attention_constant_bounds_unbounded_inputs():
    generator = torch.Generator().manual_seed(11)
    soundness = _Soundness()
    batch = 5
    configs = _mha_configs(generator, 40)
    for n, dim, heads in configs:
        mha = _random_mha(generator, dim, heads)
        eps = _log_uniform(generator, -12, 0, ()).item()
        norm = nn.LayerNorm(dim, eps=eps, dtype=torch.float64)
        gamma, beta = _layernorm_affine(generator, 1, dim)
        with torch.no_grad():
            norm.weight.copy_(gamma[0])
            norm.bias.copy_(beta[0])
        scale = _log_uniform(generator, -2, 3, (batch, 1, 1))  # token norms up to ~1e8
        x = _layernorm_inputs(generator, batch, n, dim) * scale

        def branch(x_batch):
            z = norm(x_batch)
            return mha(z, z, z, need_weights=False)[0]

        branch_jacobian = _batched_jacobian(branch, x)
        identity = torch.eye(branch_jacobian.shape[-1], dtype=torch.float64)
        exact_branch = _spectral(branch_jacobian)
        exact_block = _spectral(identity + branch_jacobian)

        gamma_abs_max = norm.weight.detach().abs().max().item()
        beta_norm = norm.bias.detach().norm().item()
        wo_norm = _spectral_norm(mha.out_proj.weight.detach()).item()
        head_norms = [_head_norms(head) for head in _mha_heads(mha)]
        block = pre_ln_attention_lipschitz(gamma_abs_max, beta_norm, eps, dim, n, head_norms,
                                           wo_norm)
        without = pre_ln_attention_lipschitz(gamma_abs_max, beta_norm, eps, dim, n,
                                             head_norms, wo_norm, residual=False)
        soundness.check("pre_ln_attention_lipschitz", exact_block, [float(block)] * batch)
        soundness.check("pre_ln_attention_lipschitz(residual=False)", exact_branch,
                        [float(without)] * batch)

        with torch.no_grad():  # local composition: LN at x, heads at z = LN(x), plus 1
            z = norm(x)
            min_variance = x.var(-1, unbiased=False).amin(-1).tolist()
            local_attention = _mha_local_bounds(mha, z)
        local = [1 + float(layernorm_local_lipschitz(gamma_abs_max, v, eps)) * a
                 for v, a in zip(min_variance, local_attention)]
        soundness.check("pre-LN local composition", exact_block, local)
    soundness.report()
    assert soundness.count() == batch * len(configs)
