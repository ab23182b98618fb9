"""Every preset has the layers of the torchvision model of its name.

The models are built on the meta device (no memory, no weights, no download); the test
counts what the bound depends on: convolutions, linear layers, poolings, attention blocks
and heads, and the adaptive pooling's output size.
"""

import pytest
import torch
import torchvision
from torch import nn
from torch.nn.modules.utils import _pair

import bounds


def _model(name):
    with torch.device("meta"):
        return getattr(torchvision.models, name)(weights=None)


def _count(model, kind):
    return sum(isinstance(module, kind) for module in model.modules())


def _ops(G, op):
    return sum(1 for _, value in G.nodes(data="op") if value == op)


@pytest.mark.parametrize("name", [name for name, (family, _) in bounds.PRESETS.items()
                                  if family in ("vgg", "resnet", "densenet")])
def test_convolutional_presets_have_torchvision_layers(name):
    model, G = _model(name), bounds.preset(name)
    assert _ops(G, "conv") == _count(model, nn.Conv2d)
    assert _ops(G, "linear") == _count(model, nn.Linear)
    assert _ops(G, "maxpool") == _count(model, nn.MaxPool2d)
    assert _ops(G, "avgpool") == _count(model, nn.AvgPool2d)
    adaptive = {_pair(m.output_size) for m in model.modules()
                if isinstance(m, nn.AdaptiveAvgPool2d)}
    nodes = {tuple(data["params"]["output_size"]) for _, data in G.nodes(data=True)
             if data["op"] == "adaptive_avgpool"}
    assert nodes == adaptive - {(1, 1)}  # VGG's (7, 7)
    # the global average pooling of the head (a module in ResNet, a function in DenseNet)
    assert ((1, 1) in adaptive) == (bounds.PRESETS[name][0] == "resnet")
    if bounds.PRESETS[name][0] != "vgg":
        assert G.nodes["head.pool"]["label"].startswith("global average pooling")


@pytest.mark.parametrize("name", [name for name, (family, _) in bounds.PRESETS.items()
                                  if family == "transformer"])
def test_vit_presets_have_torchvision_blocks(name):
    model, G = _model(name), bounds.preset(name)
    layers = model.encoder.layers
    depth, heads = bounds.PRESETS[name][1]["depth"], bounds.PRESETS[name][1]["heads"]
    assert len(layers) == depth
    assert {layer.self_attention.num_heads for layer in layers} == {heads}
    assert _ops(G, "attention") == depth * heads
    assert _ops(G, "layernorm") == _count(model, nn.LayerNorm) == 2 * depth + 1
    assert _ops(G, "linear") == _count(model, nn.Linear)  # MHA's out_proj is a Linear
    assert _ops(G, "embedding") == _count(model, nn.Conv2d) == 1
    assert {type(layer.mlp[1]) for layer in layers} == {nn.GELU}
