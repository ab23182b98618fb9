"""The toolkit's own small VGG-, ResNet-, DenseNet- and ViT-style classifiers.

They are sized for the 8×8 digits (each has at most about 50 000 parameters, so training
on two CPU cores takes seconds and the exact Fisher spectrum is cheap) but accept any
square image size and channel count. Each keeps the defining structure of its family,
the structure the closed-form bounds of :mod:`bounds.families` are derived for:

``vgg``
    a plain chain of conv–BatchNorm–ReLU stacks with max pooling and a linear head
    (Simonyan & Zisserman 2015).
``resnet``
    basic residual blocks, two with an identity shortcut and one with a strided 1×1
    projection shortcut (He et al. 2016).
``densenet``
    two dense blocks whose layers see the concatenation of every earlier feature map,
    joined by a 1×1-conv + average-pool transition (Huang et al. 2017).
``vit``
    a Vision Transformer: convolutional patch embedding, class token, learned positional
    embedding, pre-LayerNorm blocks of :class:`torch.nn.MultiheadAttention` and a GELU
    MLP, a final LayerNorm and a linear head on the class token (Dosovitskiy et al. 2021).

Only standard modules (``Conv2d``, ``BatchNorm2d``, ``ReLU``, ``MaxPool2d``,
``AvgPool2d``, ``AdaptiveAvgPool2d``, ``Linear``, ``LayerNorm``, ``MultiheadAttention``,
``GELU``, ``Flatten``) and the operations ``+``, ``torch.cat``, ``expand``, ``transpose``
and indexing appear, and no forward has data-dependent control flow, so
:func:`torch.fx.symbolic_trace` traces every model (``MultiheadAttention`` is a leaf).

Examples
--------
>>> import torch
>>> model = build("resnet", num_classes=10).eval()
>>> model(torch.zeros(2, 1, 8, 8)).shape
torch.Size([2, 10])
>>> sorted(MODEL_NAMES)
['densenet', 'resnet', 'vgg', 'vit']
"""

from __future__ import annotations

import torch
from torch import nn

from numeric.errors import InputError

__all__ = ["MODEL_NAMES", "MODEL_FAMILIES", "build", "SmallVGG", "SmallResNet",
           "SmallDenseNet", "SmallViT", "parameter_count"]


def _conv_bn_relu(in_channels: int, out_channels: int) -> list[nn.Module]:
    return [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(out_channels), nn.ReLU()]


class SmallVGG(nn.Sequential):
    """VGG-style chain: [conv-BN-ReLU ×2, max-pool] ×2, then a two-layer linear head.

    Parameters
    ----------
    num_classes, in_channels : int
        Output logits K and input channels C.
    widths : tuple of int
        Channels of the two stages.

    Notes
    -----
    Input: Tensor of shape (B, C, H, W) with H, W >= 4; output: Tensor of shape (B, K).
    ``AdaptiveAvgPool2d((2, 2))`` makes the head size-independent; on 8×8 inputs it is
    the identity (the feature map is already 2×2).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1,
                 widths: tuple[int, int] = (16, 32)) -> None:
        a, b = widths
        super().__init__(
            *_conv_bn_relu(in_channels, a), *_conv_bn_relu(a, a), nn.MaxPool2d(2),
            *_conv_bn_relu(a, b), *_conv_bn_relu(b, b), nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d((2, 2)), nn.Flatten(),
            nn.Linear(4 * b, 64), nn.ReLU(), nn.Linear(64, num_classes))
        # family and closed-form depth (bounds.closed_form) for the theoretical ranking
        self.fimbound_family, self.fimbound_depth = "vgg", 6


class BasicBlock(nn.Module):
    """ResNet basic block ``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``.

    The shortcut is the identity when shape is kept and a strided 1×1 conv + BN
    (projection) otherwise. Input Tensor of shape (B, C_in, H, W); output
    (B, C_out, H / stride, W / stride).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1,
                               bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu2 = nn.ReLU()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels))
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class SmallResNet(nn.Module):
    """ResNet-style network: stem, blocks (16→16 identity, 16→32 projection, 32→32 identity).

    Input Tensor of shape (B, C, H, W); output Tensor of shape (B, K).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1,
                 widths: tuple[int, int] = (16, 32)) -> None:
        super().__init__()
        a, b = widths
        self.stem = nn.Sequential(*_conv_bn_relu(in_channels, a))
        self.blocks = nn.Sequential(BasicBlock(a, a), BasicBlock(a, b, stride=2),
                                    BasicBlock(b, b))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(b, num_classes)
        self.fimbound_family, self.fimbound_depth = "resnet", len(self.blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(self.blocks(self.stem(x)))))


class DenseLayer(nn.Module):
    """Pre-activation dense layer: ``cat([x, conv3x3(relu(bn(x)))], dim=1)``.

    Input Tensor of shape (B, C, H, W); output (B, C + growth, H, W).
    """

    def __init__(self, in_channels: int, growth: int) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(in_channels)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(in_channels, growth, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv(self.relu(self.bn(x)))], dim=1)


class SmallDenseNet(nn.Module):
    """DenseNet-style network: stem, dense block (4 layers), transition, dense block (3 layers).

    Growth rate 12; the transition is BN-ReLU-conv1×1 (halving channels) and 2×2 average
    pooling; the head is BN-ReLU, global average pooling and a linear layer. Input Tensor
    of shape (B, C, H, W); output Tensor of shape (B, K).
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, growth: int = 12,
                 layers: tuple[int, int] = (4, 3), stem_channels: int = 16) -> None:
        super().__init__()
        channels = stem_channels
        self.stem = nn.Conv2d(in_channels, channels, 3, padding=1, bias=False)
        block1 = []
        for _ in range(layers[0]):
            block1.append(DenseLayer(channels, growth))
            channels += growth
        self.block1 = nn.Sequential(*block1)
        half = channels // 2
        self.transition = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(),
                                        nn.Conv2d(channels, half, 1, bias=False),
                                        nn.AvgPool2d(2))
        channels = half
        block2 = []
        for _ in range(layers[1]):
            block2.append(DenseLayer(channels, growth))
            channels += growth
        self.block2 = nn.Sequential(*block2)
        self.head = nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten(), nn.Linear(channels, num_classes))
        self.fimbound_family, self.fimbound_depth = "densenet", tuple(layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block2(self.transition(self.block1(self.stem(x)))))


class EncoderBlock(nn.Module):
    """Pre-LN Transformer block: ``x + MHA(LN(x))``, then ``x + MLP(LN(x))``.

    Input and output Tensor of shape (B, T, D).
    """

    def __init__(self, dim: int, heads: int, mlp_dim: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.norm2(x))


def default_patch_size(image_size: int) -> int:
    """Smallest divisor p of ``image_size`` with at most 5×5 patches (8 → 2, 28 → 7, 32 → 8).

    >>> [default_patch_size(s) for s in (8, 25, 28, 32)]
    [2, 5, 7, 8]
    """
    return next(p for p in range(1, image_size + 1)
                if image_size % p == 0 and image_size // p <= 5)


class SmallViT(nn.Module):
    """Vision Transformer: conv patch embedding, class token, positional embedding, 3 blocks.

    Parameters
    ----------
    num_classes, in_channels, image_size : int
        K, C and the side H = W of the square input.
    patch_size : int, optional
        Side of a patch; must divide ``image_size``. Default :func:`default_patch_size`.
    dim, depth, heads, mlp_dim : int
        Token width D, number of blocks, attention heads and MLP hidden width.

    Notes
    -----
    Input Tensor of shape (B, C, H, W); tokens Tensor of shape (B, 1 + (H/p)², D);
    output Tensor of shape (B, K) from the class token after the final LayerNorm.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 8,
                 patch_size: int | None = None, dim: int = 32, depth: int = 3,
                 heads: int = 4, mlp_dim: int = 64) -> None:
        super().__init__()
        patch = default_patch_size(image_size) if patch_size is None else patch_size
        if image_size % patch:
            raise InputError(f"SmallViT: expected a patch size dividing the image size "
                             f"{image_size}, got {patch}.")
        tokens = (image_size // patch) ** 2
        self.patch_embed = nn.Conv2d(in_channels, dim, patch, stride=patch)
        self.flatten = nn.Flatten(2)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[EncoderBlock(dim, heads, mlp_dim) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        self.fimbound_family, self.fimbound_depth = "transformer", depth

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.flatten(self.patch_embed(x)).transpose(1, 2)
        cls = self.cls_token.expand(x.shape[0], -1, -1)
        tokens = torch.cat([cls, tokens], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(tokens))[:, 0])


#: Names accepted by :func:`build`, in the order the demo lists them.
MODEL_NAMES: tuple[str, ...] = ("vgg", "resnet", "densenet", "vit")

#: Model name -> the :mod:`bounds.families` family it belongs to (its ``fimbound_family``).
MODEL_FAMILIES: dict[str, str] = {"vgg": "vgg", "resnet": "resnet", "densenet": "densenet",
                                  "vit": "transformer"}


def build(name: str, num_classes: int = 10, in_channels: int = 1,
          image_size: int = 8) -> nn.Module:
    """Build one of the toolkit's small models with fresh (global-RNG) weights.

    Parameters
    ----------
    name : {"vgg", "resnet", "densenet", "vit"}
        The family.
    num_classes : int
        Number of logits K (at least 2).
    in_channels : int
        Input channels C (1 for grey images, 3 for colour).
    image_size : int
        Side H = W of the square input (at least 4); only the ViT's token count depends
        on it, the convolutional models pool adaptively.

    Returns
    -------
    nn.Module
        In train mode (as every fresh module); maps a Tensor of shape (B, C, H, W) to
        logits of shape (B, K).

    Raises
    ------
    InputError
        Unknown name, or a size or count out of range.

    Examples
    --------
    >>> parameter_count(build("vit")) < 50_000
    True
    """
    if name not in MODEL_NAMES:
        raise InputError(f"build: expected a model name in {', '.join(MODEL_NAMES)}, "
                         f"got {name!r}.")
    for label, value, low in (("num_classes", num_classes, 2), ("in_channels", in_channels, 1),
                              ("image_size", image_size, 4)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise InputError(f"build: expected an integer {label} >= {low}, got {value!r}.")
    if name == "vgg":
        return SmallVGG(num_classes, in_channels)
    if name == "resnet":
        return SmallResNet(num_classes, in_channels)
    if name == "densenet":
        return SmallDenseNet(num_classes, in_channels)
    return SmallViT(num_classes, in_channels, image_size)


def parameter_count(model: nn.Module) -> int:
    """Number of trainable scalars in ``model``.

    >>> parameter_count(torch.nn.Linear(3, 2))
    8
    """
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
