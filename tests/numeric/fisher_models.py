"""Small float64 models for the Fisher-estimator tests, one per architecture family.

Each factory returns ``(model, x)``: a model in eval mode with random (seeded) weights and
a batch ``x``. Inputs are tiny (d <= 48) so that the dense references of
:mod:`tests.reference` are cheap; weights are scaled so that the softmax is far from
uniform and the Fisher spectrum is spread out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["MODELS", "build", "ViTStyle", "SDPAModel", "ProbabilityModel"]

NUM_CLASSES = 5


def _seeded(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


class MLP(nn.Module):
    def __init__(self, d: int = 12, hidden: int = 16, k: int = NUM_CLASSES) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(d, hidden), nn.Tanh(),
                                 nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, k))

    def forward(self, x):
        return self.net(x)


class ConvBatchNorm(nn.Module):
    """Conv -> BatchNorm (with non-trivial running statistics) -> smooth activations."""

    def __init__(self, k: int = NUM_CLASSES) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Softplus(),
            nn.Conv2d(4, 4, 3, stride=2, padding=1), nn.BatchNorm2d(4), nn.Tanh(),
            nn.AvgPool2d(2))
        self.head = nn.Linear(4, k)

    def forward(self, x):
        return self.head(self.features(x).flatten(1))


class Residual(nn.Module):
    def __init__(self, d: int = 12, k: int = NUM_CLASSES) -> None:
        super().__init__()
        self.inp = nn.Linear(d, 10)
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Linear(10, 10), nn.Tanh(), nn.Linear(10, 10)) for _ in range(2))
        self.out = nn.Linear(10, k)

    def forward(self, x):
        h = self.inp(x.flatten(1))
        for block in self.blocks:
            h = h + block(h)
        return self.out(torch.tanh(h))


class DenseConcat(nn.Module):
    """DenseNet-style: each layer sees the concatenation of everything before it."""

    def __init__(self, d: int = 12, growth: int = 4, k: int = NUM_CLASSES) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Linear(d + i * growth, growth) for i in range(3))
        self.out = nn.Linear(d + 3 * growth, k)

    def forward(self, x):
        h = x.flatten(1)
        for layer in self.layers:
            h = torch.cat([h, torch.sigmoid(layer(h))], dim=1)
        return self.out(h)


class ViTStyle(nn.Module):
    """Patch embedding, one pre-norm block with nn.MultiheadAttention, mean pooling."""

    def __init__(self, patch: int = 4, dim: int = 8, heads: int = 2,
                 k: int = NUM_CLASSES) -> None:
        super().__init__()
        self.patch = patch
        self.embed = nn.Linear(patch, dim)
        self.cls = nn.Parameter(torch.randn(1, 1, dim) * 0.5)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attention = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, k)

    def forward(self, x):
        tokens = self.embed(x.reshape(x.shape[0], -1, self.patch))
        tokens = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1)
        h = self.norm1(tokens)
        tokens = tokens + self.attention(h, h, h, need_weights=False)[0]
        tokens = tokens + self.mlp(self.norm2(tokens))
        return self.head(tokens[:, 0])


class SDPAModel(nn.Module):
    """Self-attention written with F.scaled_dot_product_attention."""

    def __init__(self, patch: int = 4, dim: int = 8, heads: int = 2,
                 k: int = NUM_CLASSES) -> None:
        super().__init__()
        self.patch, self.heads = patch, heads
        self.qkv = nn.Linear(patch, 3 * dim)
        self.head = nn.Linear(dim, k)

    def forward(self, x):
        b = x.shape[0]
        qkv = self.qkv(x.reshape(b, -1, self.patch))
        q, k, v = (t.reshape(b, t.shape[1], self.heads, -1).transpose(1, 2)
                   for t in qkv.chunk(3, dim=-1))
        out = F.scaled_dot_product_attention(q, k, v)
        return self.head(out.transpose(1, 2).reshape(b, -1, self.heads * q.shape[-1]).mean(1))


class ProbabilityModel(nn.Module):
    """A model that (wrongly) ends in softmax."""

    def __init__(self, d: int = 12, k: int = NUM_CLASSES) -> None:
        super().__init__()
        self.linear = nn.Linear(d, k)

    def forward(self, x):
        return torch.softmax(self.linear(x.flatten(1)), dim=-1)


def _scale_weights(model: nn.Module, factor: float) -> None:
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.Linear):
                module.weight.mul_(factor)


def _randomize_batchnorm(model: nn.Module, generator: torch.Generator) -> None:
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(0.3 * torch.randn(n, generator=generator,
                                                         dtype=torch.float64))
            module.running_var.copy_(0.5 + torch.rand(n, generator=generator,
                                                      dtype=torch.float64))
            with torch.no_grad():
                module.weight.copy_(0.5 + torch.rand(n, generator=generator,
                                                     dtype=torch.float64))


#: name -> (factory, input shape per row)
MODELS = {
    "mlp": (MLP, (12,)),
    "cnn-batchnorm": (ConvBatchNorm, (2, 4, 4)),
    "residual": (Residual, (3, 4)),
    "dense-concat": (DenseConcat, (12,)),
    "vit-mha": (ViTStyle, (12,)),
    "sdpa": (SDPAModel, (12,)),
}


def build(name: str, batch: int = 3, seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """Model ``name`` (float64, eval mode) and a batch of shape (batch, *input shape)."""
    factory, shape = MODELS[name]
    generator = _seeded(seed)
    model = factory().double()
    _scale_weights(model, 2.0)
    _randomize_batchnorm(model, generator)
    model.eval()
    x = torch.randn(batch, *shape, generator=generator, dtype=torch.float64)
    return model, x
