"""The refusal catalogue: construct -> the one-line message that refuses it.

Every construct the tracer cannot certify is refused with an error naming the operation,
where it is, and why; never a number. Each message is one line, without torch's internal
noise.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from numeric import TraceError, UnsupportedModuleError
from numeric.graph import trace_model


class Lambda(nn.Module):
    def __init__(self, function, *modules):
        super().__init__()
        self.function = function
        self.layers = nn.ModuleList(modules)

    def forward(self, x):
        return self.function(self, x)


def _bn_training():
    model = Lambda(lambda self, x: self.layers[0](x)[:, :3], nn.BatchNorm1d(6))
    return model.train()


def _dropout_module_training():
    model = Lambda(lambda self, x: self.layers[0](x)[:, :3], nn.Dropout(0.5))
    return model.train()


class AttentionSubclass(nn.MultiheadAttention):
    def forward(self, query, key, value, **kwargs):
        out, weights = super().forward(query, key, value, **kwargs)
        return out * 2, weights


def _attention(module_class=nn.MultiheadAttention, norm=True, residual=False):
    norm_layer = nn.LayerNorm(6) if norm else nn.Identity()
    attention = module_class(6, 2, batch_first=True)

    def forward(self, x):
        t = x.reshape(x.shape[0], 2, 3).repeat(1, 1, 2)
        h = self.layers[0](t)
        if residual:
            h = h + t
        y, _ = self.layers[1](h, h, h)
        return y.flatten(1)[:, :4]
    return Lambda(forward, norm_layer, attention)


class _Counter(nn.Module):
    """A step counter used as a temperature: every call changes the function."""

    def __init__(self):
        super().__init__()
        self.register_buffer("calls", torch.zeros(()))

    def forward(self, x):
        self.calls += 1
        return x[:, :3] * self.calls


def _weight_editing_hook():
    model = Lambda(lambda self, x: self.layers[0](x), nn.Linear(6, 3))

    def hook(module, args):
        with torch.no_grad():
            module.layers[0].weight.mul_(2)
    model.register_forward_pre_hook(hook)
    return model


def _python_random():
    import random
    return Lambda(lambda self, x: x[:, :3] * (1 + random.random()))


class _WrongBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x * 3

    @staticmethod
    def backward(ctx, grad):
        return grad


def _detach_after_attention():
    # a module kept whole (attention) skips the autograd comparison: the rule itself must
    # see the detach, which the export writes as an alias
    def forward(self, x):
        t = self.layers[0](x.reshape(-1, 2, 3))
        y = self.layers[1](t, t, t)[0].flatten(1)
        return (y + (y.relu() - y).detach())[:, :3]
    return Lambda(forward, nn.LayerNorm(3), nn.MultiheadAttention(3, 1, batch_first=True))


def _no_grad_branch(self, x):
    with torch.no_grad():
        cut = self.layers[0](x)
    return cut - self.layers[0](x) + x[:, :3]


CATALOGUE = [
    # 13. not one function of the input, or autograd not its derivative (red team)
    ("scale_drawn_without_input", Lambda(lambda self, x: x[:, :3] * (1 + torch.rand(()))),
     UnsupportedModuleError, r"draws random numbers"),
    ("dropout2d_training", Lambda(lambda self, x: F.dropout2d(
        x.reshape(-1, 6, 1, 1), 0.5, True).flatten(1)[:, :3]),
     UnsupportedModuleError, r"draws random numbers"),
    ("alpha_dropout_training", Lambda(lambda self, x: F.alpha_dropout(x, 0.5, True)[:, :3]),
     UnsupportedModuleError, r"draws random numbers"),
    ("python_random", _python_random(), UnsupportedModuleError,
     r"two calls of .* gave logits .* apart"),
    ("counter_buffer", _Counter(), UnsupportedModuleError, r"two calls .* changes its own"),
    ("hook_editing_weights", _weight_editing_hook(), UnsupportedModuleError,
     r"two calls .* changes its own"),
    ("straight_through_detach", Lambda(lambda self, x: (x + (x.relu() - x).detach())[:, :3]),
     UnsupportedModuleError, r"autograd's gradient .* differs|detach\(\) cuts"),
    ("detach_beside_a_module_kept_whole", _detach_after_attention(), UnsupportedModuleError,
     r"detach\(\) cuts"),
    ("no_grad_branch", Lambda(_no_grad_branch, nn.Linear(6, 3)), UnsupportedModuleError,
     r"autograd's gradient .* differs"),
    ("custom_function_wrong_backward", Lambda(lambda self, x: _WrongBackward.apply(x)[:, :3]),
     UnsupportedModuleError, r"autograd's gradient .* differs"),
    ("fft_of_input", Lambda(lambda self, x: torch.fft.rfft(x).abs()[:, :3]),
     UnsupportedModuleError, r"a complex tensor computed from the input"),
    ("bfloat16_round_trip", Lambda(lambda self, x: x.to(torch.bfloat16).to(x.dtype)[:, :3]),
     UnsupportedModuleError, r"rounds an input-dependent value to torch.bfloat16"),

    # 5. Python numbers computed from the input
    ("item_of_input", Lambda(lambda self, x: x[:, :3] * x[0].abs().sum().item()),
     UnsupportedModuleError, r"computed from the input but has no derivative"),
    ("float_of_input", Lambda(lambda self, x: x[:, :3] * float(x[0, 0])),
     TraceError, r"turns an input-dependent tensor into a Python value"),
    ("tolist_of_input", Lambda(lambda self, x: x[:, :3] * x[0].tolist()[1]),
     UnsupportedModuleError, r"computed from the input but has no derivative"),
    ("python_if_on_tensor", Lambda(lambda self, x: x[:, :3] if x.sum() > 0 else -x[:, :3]),
     TraceError, r"turns an input-dependent tensor into a Python value"),
    # 6. rows of the batch mixed
    ("mean_over_batch", Lambda(lambda self, x: (x - x.mean(0))[:, :3]),
     UnsupportedModuleError, r"combines entries along the batch dimension"),
    ("batchnorm_training", _bn_training(), UnsupportedModuleError,
     r"BatchNorm in training mode .* couples its rows"),
    ("functional_dropout_training", Lambda(lambda self, x: F.dropout(x, 0.5, True)[:, :3]),
     UnsupportedModuleError, r"draws random numbers"),
    ("dropout_module_training", _dropout_module_training(), UnsupportedModuleError,
     r"draws random numbers"),
    ("roll_along_batch", Lambda(lambda self, x: torch.roll(x, 1, 0)[:, :3]),
     UnsupportedModuleError, r"row b of the output depends on another row"),
    ("first_row_broadcast", Lambda(lambda self, x: (x + x[:1])[:, :3]),
     UnsupportedModuleError, r"different rows of the batch"),
    # 7. parameters outside a proved domain
    ("celu_negative_alpha", Lambda(lambda self, x: F.celu(x[:, :3], -1.0)),
     UnsupportedModuleError, r"alpha"),
    ("softplus_negative_beta", Lambda(lambda self, x: F.softplus(x[:, :3], beta=-2.0)),
     UnsupportedModuleError, r"beta"),
    ("elu_negative_input_scale", Lambda(
        lambda self, x: torch.ops.aten.elu(x[:, :3], 1.0, 1.0, -1.0)),
     UnsupportedModuleError, r"input_scale"),
    # 8. attention whose token radius is lost
    ("attention_without_layernorm", _attention(norm=False), UnsupportedModuleError,
     r"no global Lipschitz constant on unbounded inputs"),
    ("attention_after_residual", _attention(residual=True), UnsupportedModuleError,
     r"no global Lipschitz constant on unbounded inputs"),
    # 4. a subclass does not inherit its parent's rule: traced through, then refused
    ("attention_subclass", _attention(AttentionSubclass), UnsupportedModuleError,
     r"product of two input-dependent tensors"),
    # 12. silently accepted before
    ("floor_division", Lambda(lambda self, x: torch.div(x, 3, rounding_mode="floor")[:, :3]),
     UnsupportedModuleError, r"rounding_mode='floor' .* no Lipschitz constant"),
    ("gating_global", Lambda(lambda self, x: (x * torch.sigmoid(x))[:, :3]),
     UnsupportedModuleError, r"product of two input-dependent tensors has no global"),
    ("hand_written_relu", Lambda(lambda self, x: torch.where(x > 0, x, 0.0)[:, :3]),
     UnsupportedModuleError, r"computed from the input but has no derivative"),
    ("exp", Lambda(lambda self, x: torch.exp(x)[:, :3]), UnsupportedModuleError,
     r"derivative is unbounded"),
    ("input_dependent_index", Lambda(
        lambda self, x: torch.gather(x, 1, x.argsort(dim=1))[:, :3]),
     UnsupportedModuleError, r"aten.sort.default .* no Lipschitz rule"),
]


@pytest.mark.parametrize("name, model, error, pattern", CATALOGUE,
                         ids=[entry[0] for entry in CATALOGUE])
def test_refusal_catalogue(name, model, error, pattern):
    model = model.double()
    x = torch.randn(3, 6, dtype=torch.float64)
    with pytest.raises(error, match=pattern) as info:
        traced = trace_model(model, x, self_check=False)
        traced.fisher_bound()
        if name.startswith(("attention", "gating")):
            from numeric.graph import fisher_bound
            fisher_bound(model, x, self_check=False)
    message = str(info.value)
    assert "\n" not in message and "While executing" not in message
    assert "Original traceback" not in message


def test_attention_without_global_bound_still_has_local_bounds():
    torch.manual_seed(0)
    model = _attention(norm=False).double().eval()
    x = torch.randn(3, 6, dtype=torch.float64)
    traced = trace_model(model, x, self_check=True)
    assert traced.fisher_bound() == float("inf")
    local = traced.local_fisher_bound(x)      # self-checked against the exact values
    assert bool(torch.isfinite(local).all())


def test_refusals_name_the_module_and_the_source_line():
    model = _bn_training().double()
    with pytest.raises(UnsupportedModuleError) as info:
        trace_model(model, torch.randn(3, 6, dtype=torch.float64), self_check=False)
    message = str(info.value)
    assert "module 'layers.0' (BatchNorm1d)" in message
    assert "test_graph_refusals.py" in message
