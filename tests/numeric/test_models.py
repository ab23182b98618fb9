"""The toolkit's small models: shapes, size, torch.fx tracing, eval-mode behaviour."""

import pytest
import torch
import torch.fx as fx
from torch import nn

from numeric.errors import InputError
from numeric.models import MODEL_NAMES, SmallViT, build, default_patch_size, parameter_count


class LeafAttentionTracer(fx.Tracer):
    """The tracer the graph bridge uses: MultiheadAttention stays one node."""

    def is_leaf_module(self, module: nn.Module, qualified_name: str) -> bool:
        return (isinstance(module, nn.MultiheadAttention)
                or super().is_leaf_module(module, qualified_name))


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("channels, size", [(1, 8), (1, 25), (3, 28), (3, 32)],
                         ids=["digits", "lfw", "medmnist", "cifar"])
def test_forward_shape(name, channels, size):
    torch.manual_seed(0)
    model = build(name, num_classes=7, in_channels=channels, image_size=size).eval()
    out = model(torch.rand(3, channels, size, size))
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_small_enough(name):
    assert 10_000 < parameter_count(build(name)) <= 50_000


@pytest.mark.parametrize("name", MODEL_NAMES)
@pytest.mark.parametrize("tracer", ["default", "leaf_attention"])
def test_fx_traceable(name, tracer):
    torch.manual_seed(0)
    model = build(name).eval()
    if tracer == "default":
        traced = fx.symbolic_trace(model)
    else:
        traced = fx.GraphModule(model, LeafAttentionTracer().trace(model))
    x = torch.rand(5, 1, 8, 8)
    torch.testing.assert_close(traced(x), model(x), rtol=0, atol=0)
    targets = {node.target for node in traced.graph.nodes if node.op == "call_module"}
    kinds = {type(traced.get_submodule(t)) for t in targets}
    if name == "vit":
        assert nn.MultiheadAttention in kinds
    allowed = {nn.Conv2d, nn.BatchNorm2d, nn.ReLU, nn.MaxPool2d, nn.AvgPool2d,
               nn.AdaptiveAvgPool2d, nn.Linear, nn.LayerNorm, nn.MultiheadAttention,
               nn.GELU, nn.Flatten, nn.Identity}
    assert kinds <= allowed


def test_families_have_their_defining_structure():
    resnet = fx.symbolic_trace(build("resnet"))
    adds = [n for n in resnet.graph.nodes if n.op == "call_function" and "add" in str(n.target)]
    assert len(adds) == 3
    projections = [m for m in build("resnet").modules()
                   if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]
    assert len(projections) == 1
    densenet = fx.symbolic_trace(build("densenet"))
    cats = [n for n in densenet.graph.nodes if n.op == "call_function" and n.target is torch.cat]
    assert len(cats) == 7
    vgg = build("vgg")
    assert isinstance(vgg, nn.Sequential)
    assert not any(isinstance(m, nn.MultiheadAttention) for m in vgg.modules())


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_eval_mode_is_per_sample(name):
    """In eval mode a row's logits do not depend on the rest of the batch."""
    torch.manual_seed(1)
    model = build(name)
    model.train()
    model(torch.rand(16, 1, 8, 8))  # move BatchNorm running statistics off their init
    model.eval()
    x = torch.rand(6, 1, 8, 8)
    together = model(x)
    alone = torch.cat([model(x[i:i + 1]) for i in range(6)])
    torch.testing.assert_close(together, alone, rtol=1e-5, atol=1e-5)
    assert not model.training


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_build_is_deterministic_under_a_seed(name):
    torch.manual_seed(3)
    first = build(name).state_dict()
    torch.manual_seed(3)
    second = build(name).state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_default_patch_size():
    assert [default_patch_size(s) for s in (4, 8, 25, 28, 32, 224)] == [1, 2, 5, 7, 8, 56]


@pytest.mark.parametrize("kwargs, match", [
    (dict(name="alexnet"), "model name in vgg, resnet, densenet, vit, got 'alexnet'"),
    (dict(name="vgg", num_classes=1), "num_classes >= 2, got 1"),
    (dict(name="vit", image_size=3), "image_size >= 4, got 3"),
    (dict(name="resnet", in_channels=0), "in_channels >= 1, got 0"),
], ids=["name", "classes", "size", "channels"])
def test_build_errors(kwargs, match):
    with pytest.raises(InputError, match=match):
        build(**kwargs)


def test_vit_patch_must_divide():
    with pytest.raises(InputError, match="patch size dividing the image size 8, got 3"):
        SmallViT(image_size=8, patch_size=3)
