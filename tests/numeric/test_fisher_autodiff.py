"""numeric.fisher._autodiff: the cheap double backwards give torch's values exactly.

Every case is compared in float64 with plain autograd on the same module: the outputs,
the VJP ``J^T u`` and the JVP ``J v`` computed as a double VJP, for convolutions of every
dimension with strides that leave rows unreached (output padding), dilation, groups and
bias, and for batch norm in eval mode.
"""

import pytest
import torch
from torch import nn

from numeric.fisher._autodiff import linearization_friendly
from numeric.fisher.operator import Linearization

CONVOLUTIONS = {
    "conv1d-stride3": (nn.Conv1d(4, 6, 3, stride=3, padding=1), (2, 4, 11)),
    "conv2d-dilated-groups": (nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2,
                                        groups=2), (2, 4, 9, 8)),
    "conv2d-asymmetric": (nn.Conv2d(3, 5, (3, 1), stride=(2, 3), padding=(1, 0)),
                          (2, 3, 7, 10)),
    "conv3d-no-bias": (nn.Conv3d(2, 3, 2, stride=2, bias=False), (2, 2, 5, 4, 5)),
    "conv2d-padding-same": (nn.Conv2d(3, 4, 3, padding="same"), (2, 3, 6, 6)),
    "conv2d-reflect": (nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), (2, 3, 6, 5)),
}


def _norm(channels, dims):
    norm = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[dims](channels)
    generator = torch.Generator().manual_seed(channels)
    norm.running_mean.copy_(torch.randn(channels, generator=generator))
    norm.running_var.copy_(0.5 + torch.rand(channels, generator=generator))
    with torch.no_grad():
        norm.weight.copy_(torch.randn(channels, generator=generator))
        norm.bias.copy_(torch.randn(channels, generator=generator))
    return norm.eval()


def _model(name):
    torch.manual_seed(0)
    conv, shape = CONVOLUTIONS[name]
    dims = len(shape) - 2
    model = nn.Sequential(conv, _norm(conv.out_channels, dims), nn.Tanh(), nn.Flatten(),
                          nn.LazyLinear(5))
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    model(x)  # materialise the lazy layer
    return model.double().eval(), x.double()


def _plain_products(model, x, u, v):
    """Logits, J^T u and J v by plain autograd (the double VJP through torch's kernels)."""
    x = x.clone().requires_grad_(True)
    logits = model(x)
    (vjp,) = torch.autograd.grad(logits, x, u, retain_graph=True)
    cotangent = torch.zeros_like(logits, requires_grad=True)
    (grad,) = torch.autograd.grad(logits, x, cotangent, create_graph=True)
    (jvp,) = torch.autograd.grad(grad, cotangent, v)
    return logits.detach(), vjp, jvp


@pytest.mark.parametrize("name", sorted(CONVOLUTIONS))
def test_products_match_plain_autograd(name):
    model, x = _model(name)
    generator = torch.Generator().manual_seed(2)
    u = torch.randn(x.shape[0], 5, generator=generator, dtype=torch.float64)
    v = torch.randn(x.shape, generator=generator, dtype=torch.float64)
    logits, vjp, jvp = _plain_products(model, x, u, v)
    lin = Linearization(model, x, dtype=torch.float64, caller="test")
    torch.testing.assert_close(lin.logits, logits, rtol=1e-13, atol=1e-13)
    torch.testing.assert_close(lin.vjp(u), vjp, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(lin.jvp(v), jvp, rtol=1e-12, atol=1e-13)


def test_convolutions_and_batch_norm_are_rerouted_only_when_asked():
    conv = nn.Conv2d(2, 3, 3).double()
    norm = _norm(3, 2).double().requires_grad_(False)   # as the estimators' copies
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64, requires_grad=True)
    with linearization_friendly():
        rerouted = norm(nn.functional.conv2d(x, conv.weight.detach(), None))
        with_parameter_grad = nn.functional.conv2d(x, conv.weight, None)   # weight needs grad
        no_input_grad = nn.functional.conv2d(x.detach(), conv.weight.detach(), None)
    assert type(rerouted.grad_fn).__name__ == "AddBackward0"              # affine batch norm
    assert type(rerouted.grad_fn.next_functions[0][0].next_functions[0][0]).__name__ == \
        "_ConvolutionInputGradientBackward"
    assert type(with_parameter_grad.grad_fn).__name__ == "ConvolutionBackward0"
    assert no_input_grad.grad_fn is None
    train = _norm(3, 2).double().requires_grad_(False).train()
    with linearization_friendly():
        batch_statistics = train(torch.randn(4, 3, 2, 2, dtype=torch.float64,
                                             requires_grad=True))
    assert type(batch_statistics.grad_fn).__name__ == "NativeBatchNormBackward0"
    with linearization_friendly():
        trainable = _norm(3, 2).double()(torch.randn(1, 3, 2, 2, dtype=torch.float64,
                                                     requires_grad=True))
    assert type(trainable.grad_fn).__name__ == "NativeBatchNormBackward0"
