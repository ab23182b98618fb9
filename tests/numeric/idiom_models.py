"""Random models that mix the ordinary torch idioms the tracer must follow.

Each template is a small architecture built from a ``variant`` (0, 1 or 2) that fixes its
structure and the parameters of its activations; :func:`randomize` then draws new weights
for every case, from tiny to large, with BatchNorm variances down to 1e-6. Together they
exercise broadcasting, in-place writes through views, argument spellings, subclasses
overriding ``forward``, hooks, parameter scalars, activation parameters, LayerNorm ->
attention radii with shifts, scales, transposes and masks, data movements with copies,
pooling ties and ReLU kinks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TEMPLATES", "NAMES", "build", "randomize", "input_shape", "per_template"]


class ScaledLinear(nn.Linear):
    """A subclass overriding forward: its parent's rule must not apply."""

    def __init__(self, *args, factor: float = 3.0, **kwargs):
        super().__init__(*args, **kwargs)
        self.factor = factor

    def forward(self, x):
        return F.linear(x, self.weight * self.factor, self.bias)


class StandardizedConv(nn.Conv2d):
    def forward(self, x):
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (
            w.std(dim=(1, 2, 3), keepdim=True, unbiased=False) + 1e-3)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class Mlp(nn.Module):
    """Broadcast multiplications, in-place writes, axis= spellings, activation params."""

    def __init__(self, variant: int):
        super().__init__()
        self.variant = variant
        self.a = nn.Linear(6, 6)
        self.gate = nn.Parameter(torch.randn(3, 6))
        self.b = ScaledLinear(18, 5, factor=[0.5, 2.0, -3.0][variant])
        self.scale = nn.Parameter(torch.tensor(1.5))

    def forward(self, x):
        h = self.a(x)
        h.add_(h * [0.5, -2.0, 4.0][self.variant])             # in-place on a value
        if self.variant == 0:
            h = F.leaky_relu(h, -1.5)
        elif self.variant == 1:
            h = F.elu(h, alpha=-0.7)
        else:
            h = F.softplus(h, beta=3.0)
        wide = (h.unsqueeze(1) * self.gate).flatten(1)          # broadcast copies
        wide[:, :6] += 2 * x                                    # write through a view
        out = self.b(wide) * self.scale.item()
        spelled = torch.sum(out.reshape(out.shape[0], 5, 1), axis=-1, keepdim=False)
        return F.log_softmax(spelled, dim=-1) if self.variant == 2 else spelled


class Cnn(nn.Module):
    """Conv geometry, BatchNorm (eval), relu_, max-pool indices, hooks, padding modes."""

    def __init__(self, variant: int):
        super().__init__()
        stride, padding, dilation, groups = [(1, 1, 1, 1), (2, 1, 1, 2), (1, 2, 2, 1)][variant]
        self.conv = nn.Conv2d(2, 4, 3, stride=stride, padding=padding, dilation=dilation,
                              groups=groups, padding_mode=["zeros", "reflect", "circular"][
                                  variant])
        self.bn = nn.BatchNorm2d(4)
        self.conv.register_forward_pre_hook(lambda module, args: (args[0] * 2,))
        self.bn.register_forward_hook(lambda module, args, out: out - 0.5)
        size = [6, 3, 6][variant]
        pooled = size // 2
        self.head = nn.Linear(4 * pooled * pooled, 4)

    def forward(self, x):
        h = torch.relu_(self.bn(self.conv(x)))
        h, _ = F.max_pool2d(h, 2, return_indices=True)
        return self.head(torch.flatten(h, start_dim=1))


class Residual(nn.Module):
    """Residual sums, expand copies, concatenation, split, slice assignment, roll, flip,
    one value used twice under a sign flip (``cat([y, -y])``, CReLU)."""

    def __init__(self, variant: int):
        super().__init__()
        self.variant = variant
        self.a = nn.Linear(6, 6)
        self.b = nn.Linear(12, 6)
        self.c = nn.Linear(12, 6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        h = torch.tanh(self.a(x)) + x
        first = h[:, :1].expand_as(h)
        joined = torch.cat([h, first * 0.5], dim=-1)
        left, right = joined.split(6, dim=1)
        y = self.b(torch.cat([right.flip(1), torch.roll(left, 2, dims=1)], 1))
        out = y.clone()
        out[:, ::2] = 3 * y[:, ::2]
        if self.variant == 0:
            out = out + self.c(torch.cat([y, -y], dim=1))
        elif self.variant == 1:
            out = out - out.mean(dim=-1, keepdim=True)
        elif self.variant == 2:
            out = torch.maximum(out, torch.zeros_like(out) + 0.1) + torch.abs(x)
        return self.head(F.hardswish(out))


class Tokens(nn.Module):
    """LayerNorm -> (scale | shift | transpose) -> self-attention, class token, mask."""

    def __init__(self, variant: int):
        super().__init__()
        self.variant = variant
        self.embed = nn.Linear(4, 6)
        self.cls = nn.Parameter(torch.randn(1, 1, 6))
        self.norm = nn.LayerNorm(6)
        self.attn = nn.MultiheadAttention(6, 2, batch_first=variant != 2)
        self.norm2 = nn.LayerNorm(6)
        self.mlp = nn.Sequential(nn.Linear(6, 8), nn.GELU(approximate="tanh"), nn.Linear(8, 6))
        self.head = nn.Linear(6, 3)
        self.register_buffer("mask", torch.triu(torch.full((4, 4), -1e3), 1))

    def forward(self, x):
        tokens = self.embed(x.reshape(x.shape[0], 3, 4))
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1)
        h = self.norm(tokens)
        if self.variant == 0:
            h = h * 7.0
        elif self.variant == 1:
            h = h + self.cls
        if not self.attn.batch_first:
            h = h.transpose(0, 1)
        y, _ = self.attn(h, h, h, attn_mask=self.mask if self.variant == 1 else None)
        if not self.attn.batch_first:
            y = y.transpose(0, 1)
        tokens = tokens + y
        tokens = tokens + self.mlp(self.norm2(tokens))
        return self.head(tokens[:, 0])


class Pools(nn.Module):
    """A standardised-conv subclass, average pooling (upsampling), GELU, group norm."""

    def __init__(self, variant: int):
        super().__init__()
        self.variant = variant
        self.conv = StandardizedConv(2, 4, 3, padding=1)
        self.norm = nn.GroupNorm(2, 4) if variant == 1 else nn.InstanceNorm2d(4, affine=True)
        self.pool = nn.AdaptiveAvgPool2d([(3, 3), (2, 2), (8, 8)][variant])
        side = [3, 2, 8][variant]
        self.head = nn.Linear(4 * side * side, 3)

    def forward(self, x):
        h = F.gelu(self.norm(self.conv(x)))
        h = F.avg_pool2d(h, 2, stride=1, padding=1, count_include_pad=self.variant != 0)
        return self.head(self.pool(h).flatten(1))


class Products(nn.Module):
    """Batched products against stacked constant matrices, einsum, smooth activations."""

    def __init__(self, variant: int):
        super().__init__()
        self.variant = variant
        self.w = nn.Parameter(torch.randn(3, 6, 2))
        self.v = nn.Parameter(torch.randn(2, 2))

    def forward(self, x):
        stacked = torch.matmul(x.reshape(x.shape[0], 1, 1, 6), self.w).flatten(1)  # (B, 6)
        other = torch.einsum("bi,kij->bkj", x, self.w).flatten(1)
        h = [F.silu, F.mish, F.celu][self.variant](stacked + other)
        h = torch.clamp(h, min=-2.0, max=3.0) if self.variant != 1 else F.selu(h)
        return (h.reshape(h.shape[0], 3, 2) @ self.v).flatten(1)


class Dense(nn.Module):
    """A dense (concatenating) block with a softmax inside and a pixel shuffle."""

    def __init__(self, variant: int):
        super().__init__()
        self.variant = variant
        self.conv1 = nn.Conv2d(2, 2, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 1)
        self.head = nn.Linear(16 * 4, 3)

    def forward(self, x):
        h = torch.cat([x, F.relu6(self.conv1(x))], dim=1)
        h = self.conv2(h)
        if self.variant == 1:
            h = torch.softmax(h, dim=1) * 5
        elif self.variant == 2:
            h = F.pad(h, (1, 1, 0, 0), mode="replicate")[..., 1:-1]
        h = F.pixel_shuffle(h, 2)                             # (B, 1, 8, 8)
        return self.head(F.pixel_unshuffle(h, 2).reshape(h.shape[0], -1))


TEMPLATES = {"mlp": Mlp, "cnn": Cnn, "residual": Residual, "tokens": Tokens,
             "pools": Pools, "products": Products, "dense": Dense}
_SHAPES = {"mlp": (6,), "cnn": (2, 6, 6), "residual": (6,), "tokens": (12,),
           "pools": (2, 4, 4), "products": (6,), "dense": (2, 4, 4)}


#: The template names in a fixed order (one parametrized test each in the sweeps).
NAMES = sorted(TEMPLATES)


def per_template(total: int) -> int:
    """Cases per template so that a sweep split by template runs at least ``total``."""
    return -(-total // len(NAMES))


def input_shape(name: str) -> tuple[int, ...]:
    return _SHAPES[name]


def build(name: str, variant: int) -> nn.Module:
    torch.manual_seed(variant)
    return TEMPLATES[name](variant).double().eval()


@torch.no_grad()
def randomize(model: nn.Module, generator: torch.Generator, scale: float,
              tiny_variance: bool) -> None:
    """New weights in place (the export reads the same tensors): normal times ``scale``
    (spread over the layers), BatchNorm running variances in [1e-6, 1e-3] or [0.1, 10]."""
    parameters = [p for p in model.parameters()]
    per_layer = scale ** (1 / max(1, math.ceil(len(parameters) / 2)))
    for p in parameters:
        p.copy_(torch.randn(p.shape, generator=generator, dtype=p.dtype) * per_layer)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            low, high = (1e-6, 1e-3) if tiny_variance else (0.1, 10.0)
            module.running_var.copy_(low + (high - low) * torch.rand(
                module.running_var.shape, generator=generator, dtype=torch.float64))
            module.running_mean.copy_(torch.randn(module.running_mean.shape,
                                                  generator=generator, dtype=torch.float64))
