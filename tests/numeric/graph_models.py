"""Random small DAG networks for the soundness tests of the certified bounds.

:func:`networks` is a hypothesis strategy drawing a :class:`SpecNet` (chains, residual
adds, concatenations, convolutions with every stride/padding/dilation/groups combination
that fits, BatchNorm with random running statistics, ten activations, max and average
pooling) together with a batch of inputs. Everything is float64 and tiny (1-2 channels,
4x4 to 6x6 images, K <= 5), so the dense Jacobian of ``tests/reference.py`` costs
microseconds.

:func:`exact_top_eigenvalue_vjp` computes lambda_max(F) from K vector-Jacobian products
for models whose input is too large for a dense d x d Fisher matrix.
"""

from __future__ import annotations

import math

import torch
from hypothesis import strategies as st
from torch import nn

__all__ = ["ACTIVATIONS", "SpecNet", "networks", "exact_top_eigenvalue_vjp",
           "randomize_batchnorm"]

ACTIVATIONS = {
    "relu": nn.ReLU, "leaky_relu": lambda: nn.LeakyReLU(0.1), "elu": nn.ELU,
    "tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "softplus": nn.Softplus, "gelu": nn.GELU,
    "silu": nn.SiLU, "hardswish": nn.Hardswish, "mish": nn.Mish,
}


class Residual(nn.Module):
    """``x + inner(x)`` (or ``x - inner(x)``)."""

    def __init__(self, inner: nn.Module, subtract: bool = False) -> None:
        super().__init__()
        self.inner = inner
        self.subtract = subtract

    def forward(self, x):
        return x - self.inner(x) if self.subtract else x + self.inner(x)


class DenseConcat(nn.Module):
    """``cat([x, inner(x)], dim=1)``."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x):
        return torch.cat([x, self.inner(x)], dim=1)


class Scaled(nn.Module):
    """``factor * x`` (a scale node)."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x):
        return self.factor * x


class SpecNet(nn.Module):
    """``head(body(x))`` with the body a list of blocks; the spec is kept for messages."""

    def __init__(self, blocks: list[nn.Module], head: nn.Module, spec: list) -> None:
        super().__init__()
        self.body = nn.Sequential(*blocks)
        self.head = head
        self.spec = spec

    def forward(self, x):
        return self.head(self.body(x))

    def extra_repr(self) -> str:
        return f"spec={self.spec}"


def randomize_batchnorm(bn: nn.BatchNorm2d | nn.BatchNorm1d, generator: torch.Generator,
                        spread: float = 1.0) -> None:
    """Random running statistics and affine parameters (eval-mode BatchNorm)."""
    n = bn.num_features
    with torch.no_grad():
        bn.running_mean.copy_(torch.randn(n, generator=generator, dtype=torch.float64))
        bn.running_var.copy_(torch.exp(spread * torch.randn(n, generator=generator,
                                                            dtype=torch.float64)))
        bn.weight.copy_(torch.randn(n, generator=generator, dtype=torch.float64))
        bn.bias.copy_(torch.randn(n, generator=generator, dtype=torch.float64))


def _out(n: int, k: int, s: int, p: int, d: int = 1, ceil: bool = False) -> int:
    size = n + 2 * p - d * (k - 1) - 1
    return (-(-size // s) if ceil else size // s) + 1


@st.composite
def _conv(draw, channels: int, size: int):
    """A conv layer (and its spec) that fits a (channels, size, size) input."""
    options = []
    for k in (1, 2, 3):
        for s in (1, 2):
            for p in (0, 1, 2):
                for d in (1, 2):
                    if p < k * d and _out(size, k, s, p, d) >= 1:
                        options.append((k, s, p, d))
    k, s, p, d = draw(st.sampled_from(options))
    out_channels = draw(st.integers(1, 4))
    groups = draw(st.sampled_from([g for g in (1, 2) if channels % g == 0
                                   and out_channels % g == 0]))
    mode = draw(st.sampled_from(["zeros", "zeros", "zeros", "reflect", "circular"]))
    if mode != "zeros" and (p == 0 or p >= size):
        mode = "zeros"
    spec = ("conv", out_channels, k, s, p, d, groups, mode)
    layer = nn.Conv2d(channels, out_channels, k, stride=s, padding=p, dilation=d,
                      groups=groups, padding_mode=mode)
    return layer, spec, out_channels, _out(size, k, s, p, d)


@st.composite
def _pool(draw, size: int, ceil_modes=(False, True)):
    kind = draw(st.sampled_from(["max", "avg"]))
    k = draw(st.integers(1, min(3, size)))
    s = draw(st.integers(1, 2))
    p = draw(st.integers(0, k // 2))
    ceil = draw(st.sampled_from(ceil_modes))
    out = _out(size, k, s, p, ceil=ceil)
    if ceil and (out - 1) * s >= size + p:   # PyTorch drops a window starting in padding
        out -= 1
    if kind == "max":
        layer = nn.MaxPool2d(k, s, p, ceil_mode=ceil)
    else:
        layer = nn.AvgPool2d(k, s, p, ceil_mode=ceil,
                             count_include_pad=draw(st.booleans()))
    return layer, (kind + "pool", k, s, p, ceil), out


@st.composite
def _block(draw, channels: int, size: int, generator: torch.Generator,
           activations=None, ceil_modes=(False, True)):
    """One body block: returns (module, spec, channels, size)."""
    kind = draw(st.sampled_from(["conv", "conv", "residual", "concat", "pool",
                                 "activation", "batchnorm", "scale"]))
    activation = draw(st.sampled_from(activations or sorted(ACTIVATIONS)))
    if kind == "conv":
        layer, spec, channels, size = draw(_conv(channels, size))
        parts = [layer]
        if draw(st.booleans()):
            bn = nn.BatchNorm2d(channels)
            randomize_batchnorm(bn, generator)
            parts.append(bn)
            spec = (*spec, "bn")
        parts.append(ACTIVATIONS[activation]())
        return nn.Sequential(*parts), (*spec, activation), channels, size
    if kind in ("residual", "concat"):
        d = draw(st.integers(1, 2))
        out_channels = channels if kind == "residual" else draw(st.integers(1, 3))
        inner = nn.Sequential(nn.Conv2d(channels, out_channels, 3, padding=d, dilation=d),
                              ACTIVATIONS[activation]())
        if kind == "residual":
            return Residual(inner, draw(st.booleans())), ("residual", d, activation), \
                channels, size
        return DenseConcat(inner), ("concat", out_channels, d, activation), \
            channels + out_channels, size
    if kind == "pool":
        layer, spec, size = draw(_pool(size, ceil_modes))
        return layer, spec, channels, size
    if kind == "batchnorm":
        bn = nn.BatchNorm2d(channels)
        randomize_batchnorm(bn, generator)
        return bn, ("batchnorm",), channels, size
    if kind == "scale":
        factor = draw(st.sampled_from([-2.0, 0.5, 3.0]))
        return Scaled(factor), ("scale", factor), channels, size
    return ACTIVATIONS[activation](), (activation,), channels, size


def _scale_weights(model: nn.Module, generator: torch.Generator, overall: float) -> None:
    """Multiply each weight by 10**u (u uniform in [-0.5, 0.5]) and the last by overall."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    with torch.no_grad():
        for layer in layers:
            u = float(torch.rand((), generator=generator, dtype=torch.float64)) - 0.5
            layer.weight.mul_(10 ** u)
        layers[-1].weight.mul_(overall)


@st.composite
def networks(draw, max_blocks: int = 4, activations=None, ceil_modes=(False, True)):
    """Draw ``(model, x)``: a random SpecNet in float64 eval mode and a batch of 2 inputs
    (activations from ``activations``, default all of :data:`ACTIVATIONS`)."""
    seed = draw(st.integers(0, 2 ** 31 - 1))
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    channels = draw(st.integers(1, 2))
    size = draw(st.integers(4, 6))
    classes = draw(st.integers(2, 5))
    input_shape = (channels, size, size)
    blocks, spec = [], []
    for _ in range(draw(st.integers(1, max_blocks))):
        if channels * size * size > 72 or size < 1:
            break
        block, block_spec, channels, size = draw(_block(channels, size, generator,
                                                        activations, ceil_modes))
        blocks.append(block)
        spec.append(block_spec)
    head_kind = draw(st.sampled_from(["linear", "mlp", "gap"]))
    features = channels * size * size
    if head_kind == "gap":
        head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels,
                                                                              classes))
    elif head_kind == "mlp":
        hidden = draw(st.integers(2, 6))
        activation = draw(st.sampled_from(activations or sorted(ACTIVATIONS)))
        head = nn.Sequential(nn.Flatten(), nn.Linear(features, hidden),
                             ACTIVATIONS[activation](), nn.Linear(hidden, classes))
        head_kind = f"mlp-{activation}"
    else:
        head = nn.Sequential(nn.Flatten(), nn.Linear(features, classes))
    spec.append(("head", head_kind, classes))
    model = SpecNet(blocks, head, spec).double().eval()
    overall = 10 ** draw(st.floats(-3, 2))
    _scale_weights(model, generator, overall)
    scale = 10 ** draw(st.floats(-1, 1))
    x = scale * torch.randn(2, *input_shape, generator=generator, dtype=torch.float64)
    return model, x


def exact_top_eigenvalue_vjp(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    r"""lambda_max(F(x)) per row from K vector-Jacobian products, in float64.

    The nonzero eigenvalues of :math:`F = J^\top \Sigma_p J` are those of the K x K matrix
    :math:`R^\top J J^\top R` with :math:`\Sigma_p = R R^\top`; the K x K eigenproblem is
    solved densely. Returns a Tensor of shape (B,).
    """
    model = model.double().eval()
    values = []
    for row in x.double():
        point = row.unsqueeze(0).clone().requires_grad_(True)
        logits = model(point)[0]
        rows = [torch.autograd.grad(logits[k], point, retain_graph=True)[0].reshape(-1)
                for k in range(logits.shape[0])]
        jacobian = torch.stack(rows)
        p = torch.softmax(logits.detach(), dim=-1)
        sigma = torch.diag(p) - torch.outer(p, p)
        w, v = torch.linalg.eigh(sigma)
        root = v @ torch.diag(w.clamp_min(0).sqrt()) @ v.T
        gram = root @ (jacobian @ jacobian.T) @ root
        values.append(torch.linalg.eigvalsh(gram)[-1].clamp_min(0))
    return torch.stack(values)


def relative_gap(bound: float, exact: float) -> float:
    """``bound / exact`` with 0/0 read as 1 (both vanish) and x/0 as inf."""
    if exact <= 0:
        return 1.0 if bound <= 0 else math.inf
    return bound / exact


class TokenBlock(nn.Module):
    """Pre-LN (or post-LN) Transformer block on (B, N, E) tokens."""

    def __init__(self, dim: int, heads: int, hidden: int, activation: str, pre_norm: bool,
                 mlp: bool) -> None:
        super().__init__()
        self.pre_norm = pre_norm
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), ACTIVATIONS[activation](),
                                 nn.Linear(hidden, dim)) if mlp else None

    def forward(self, x):
        h = self.norm1(x) if self.pre_norm else x
        x = x + self.attn(h, h, h, need_weights=False)[0]
        if not self.pre_norm:
            x = self.norm1(x)
        if self.mlp is not None:
            x = x + self.mlp(self.norm2(x))
        return x


class TokenNet(nn.Module):
    """Linear embedding, optional class token, blocks, final LayerNorm, a linear head on
    the class token or on the mean token."""

    def __init__(self, features: int, dim: int, blocks: list[nn.Module], classes: int,
                 class_token: bool, spec: list) -> None:
        super().__init__()
        self.embed = nn.Linear(features, dim)
        self.class_token = nn.Parameter(0.1 * torch.randn(1, 1, dim)) if class_token \
            else None
        self.blocks = nn.Sequential(*blocks)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)
        self.spec = spec

    def forward(self, x):
        tokens = self.embed(x)
        if self.class_token is not None:
            tokens = torch.cat([self.class_token.expand(x.shape[0], -1, -1), tokens], dim=1)
        tokens = self.norm(self.blocks(tokens))
        pooled = tokens[:, 0] if self.class_token is not None else tokens.mean(dim=1)
        return self.head(pooled)


def _randomize_layernorm(norm: nn.LayerNorm, generator: torch.Generator) -> None:
    with torch.no_grad():
        norm.weight.copy_(1 + 0.5 * torch.randn(norm.weight.shape, generator=generator,
                                                dtype=torch.float64))
        norm.bias.copy_(0.3 * torch.randn(norm.bias.shape, generator=generator,
                                          dtype=torch.float64))


@st.composite
def token_networks(draw, max_blocks: int = 2):
    """Draw ``(model, x)``: a random small Transformer on (B, N, F) token inputs, float64.

    Pre-LN blocks give a global bound; a post-LN block has none (only ``local``), so
    ``model.spec[-1]`` says whether a global bound is expected.
    """
    seed = draw(st.integers(0, 2 ** 31 - 1))
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    tokens, features = draw(st.integers(1, 4)), draw(st.integers(1, 3))
    heads = draw(st.integers(1, 2))
    dim = heads * draw(st.integers(1, 3))
    classes = draw(st.integers(2, 4))
    blocks, spec = [], []
    for _ in range(draw(st.integers(1, max_blocks))):
        activation = draw(st.sampled_from(sorted(ACTIVATIONS)))
        pre_norm, mlp = draw(st.booleans()) or draw(st.booleans()), draw(st.booleans())
        blocks.append(TokenBlock(dim, heads, draw(st.integers(1, 6)), activation, pre_norm,
                                 mlp))
        spec.append(("block", heads, activation, "pre" if pre_norm else "post", mlp))
    class_token = draw(st.booleans())
    model = TokenNet(features, dim, blocks, classes, class_token,
                     spec + [("head", "class token" if class_token else "mean")])
    model = model.double().eval()
    for module in model.modules():
        if isinstance(module, nn.LayerNorm):
            _randomize_layernorm(module, generator)
    _scale_weights(model, generator, 10 ** draw(st.floats(-2, 1)))
    scale = 10 ** draw(st.floats(-1, 1))
    x = scale * torch.randn(2, tokens, features, generator=generator, dtype=torch.float64)
    model.spec.append(("global", all(s[3] == "pre" for s in spec)))
    return model, x
