"""Many convolutions at once: the same certified values as one call per layer."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from numeric.errors import InputError
from numeric.graph.norms import (ConvLayer, conv_operator_norm_bound,
                                 conv_operator_norm_bounds, model_conv_norm_bounds)


def _exact(module: nn.Module, x: torch.Tensor) -> float:
    """Norm of the (bias-free) module's Jacobian at x, by jacrev and SVD."""
    jacobian = torch.func.jacrev(lambda z: module(z.unsqueeze(0)).reshape(-1))(x[0])
    return float(torch.linalg.matrix_norm(jacobian.detach().reshape(-1, x[0].numel()), ord=2))


def _layers() -> list[ConvLayer]:
    generator = torch.Generator().manual_seed(0)
    return [ConvLayer(torch.randn(6, 4, 3, 3, dtype=torch.float64, generator=generator),
                      (9, 9), padding=1),
            ConvLayer(torch.randn(8, 2, 3, dtype=torch.float64, generator=generator),
                      (20,), stride=2, groups=2),
            ConvLayer(torch.randn(3, 3, 2, 2, 2, dtype=torch.float64, generator=generator),
                      (4, 5, 6), dilation=2, padding=1, padding_mode="replicate")]


@pytest.mark.parametrize("workers", [1, 2])
def test_batched_values_equal_one_call_per_layer(workers):
    layers = _layers()
    single = [conv_operator_norm_bound(layer.weight, layer.input_shape, stride=layer.stride,
                                       padding=layer.padding, dilation=layer.dilation,
                                       groups=layer.groups, padding_mode=layer.padding_mode)
              for layer in layers]
    threads = torch.get_num_threads()
    # Each value is a certificate on its own; worker threads may run LAPACK with another
    # thread count, which changes the rounding of the eigensolvers, not the value.
    assert conv_operator_norm_bounds(layers, workers=workers) == pytest.approx(single,
                                                                               rel=1e-12)
    assert torch.get_num_threads() == threads          # restored after the call


def test_modules_supply_their_geometry():
    conv = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2).double()
    value, = conv_operator_norm_bounds([(conv, (11, 11))], workers=1)
    assert value == conv_operator_norm_bound(conv, (11, 11))


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.first = nn.Conv2d(3, 4, 3, padding=1, bias=False)
        self.strided = nn.Conv2d(4, 6, 3, stride=2, groups=2, bias=False)
        self.up = nn.ConvTranspose2d(6, 3, 3, stride=2, output_padding=1, bias=False)
        self.line = nn.Conv1d(3, 2, 2, dilation=2, bias=False)

    def forward(self, x):
        x = self.up(self.strided(torch.relu(self.first(x))))
        return self.line(x.flatten(2))


def test_every_conv_of_a_model_is_bounded_at_its_own_input_size():
    torch.manual_seed(0)
    model = _Net().double().eval()
    x = torch.randn(2, 3, 7, 6, dtype=torch.float64)
    values = model_conv_norm_bounds(model, x, workers=2)
    assert set(values) == {"first", "strided", "up", "line"}
    inputs = {}

    def keep(name):
        def hook(module, args, output):
            inputs[name] = args[0]
        return hook

    hooks = [getattr(model, name).register_forward_hook(keep(name)) for name in values]
    model(x[:1])
    for hook in hooks:
        hook.remove()
    for name, value in values.items():
        assert value >= _exact(getattr(model, name), inputs[name]), name


def test_a_module_called_twice_gets_its_larger_bound():
    conv = nn.Conv2d(2, 2, 3, padding=1, bias=False).double()

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, x):
            return self.conv(x).sum() + self.conv(x[..., :2, :2]).sum()

    values = model_conv_norm_bounds(Twice(), torch.zeros(1, 2, 8, 8, dtype=torch.float64),
                                    workers=1)
    assert values["conv"] == max(conv_operator_norm_bound(conv, (8, 8)),
                                 conv_operator_norm_bound(conv, (2, 2)))


@pytest.mark.parametrize("items,match", [
    ([torch.ones(2, 2, 3, 3)], "expected ConvLayer items"),
    ([(nn.Linear(2, 2), (3, 3))], "expected ConvLayer items"),
    ([ConvLayer(torch.ones(2, 2, 3), (0,))], "positive 1-d input"),
])
def test_batched_errors_name_the_culprit(items, match):
    with pytest.raises(InputError, match=match):
        conv_operator_norm_bounds(items, workers=1)


def test_batched_options_are_checked_first():
    with pytest.raises(InputError, match="conv_operator_norm_bounds: expected method"):
        conv_operator_norm_bounds([], method="exact")
    with pytest.raises(InputError, match="model_conv_norm_bounds: expected rtol"):
        model_conv_norm_bounds(nn.Conv2d(1, 1, 1), torch.zeros(1, 1, 2, 2), rtol=2.0)
