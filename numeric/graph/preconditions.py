"""What every bound presumes of a model, checked once per trace (:func:`~numeric.graph.
trace_model`): that it is one function of its input, and that autograd's Jacobian, which
every estimator and self-check measures, is the derivative of the function the exported
graph computes, which every bound is about. Each check costs one or two calls of the
model at two example rows; a model that fails one is refused with
:class:`~numeric.errors.UnsupportedModuleError`, saying which.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from numeric.errors import UnsupportedModuleError

__all__ = ["check_one_function", "check_autograd_agrees"]


def check_one_function(model: nn.Module, x: torch.Tensor) -> None:
    """Refuse a model whose two calls on the same input differ.

    The export records one call; a forward that draws random numbers outside torch's
    random operators (Python's ``random``), changes its own state (a counter buffer, a
    hook editing weights, ``spectral_norm`` in training mode) or otherwise depends on
    more than its input would be bounded for that call only. Two calls of the model
    itself (as the user calls it; a pure model is left unchanged) must agree to within
    rounding (``1e-6`` of the largest logit: kernels may round differently between calls
    on some devices).
    """
    with torch.no_grad():
        first = model(x)
        second = model(x)
    if not (isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor)) or \
            first.shape != second.shape:
        return          # the export has already refused what is not one tensor of logits
    if not first.numel():
        return
    both_nan = torch.isnan(first) & torch.isnan(second)
    finite = torch.isfinite(first)
    scale = float(first[finite].abs().max()) if bool(finite.any()) else 0.0
    gap = float(torch.where(both_nan | (first == second), torch.zeros_like(first),
                            (first - second).abs()).max())
    if not gap <= 1e-6 * scale + 1e-30:
        raise UnsupportedModuleError(
            f"trace_model: two calls of {type(model).__name__} on the same input gave "
            f"logits {gap:.3g} apart (largest {scale:.3g}): its forward draws random numbers "
            f"(dropout in training mode, torch.rand, Python's random) or changes its own "
            f"state (a counter buffer, a hook that edits weights, spectral_norm in training "
            f"mode), so it is not one function of its input and no bound holds for the "
            f"next call; call model.eval() or make the forward pure.")


def _graph_function(exported):
    """The exported graph as a function of the input (autograd runs through it)."""
    placeholders = [n for n in exported.module.graph.nodes if n.op == "placeholder"]
    output = next(n for n in exported.module.graph.nodes if n.op == "output")
    results = output.args[0]
    results = list(results) if isinstance(results, (list, tuple)) else [results]
    index = next(i for i, n in enumerate(results)
                 if getattr(n, "name", None) == exported.output_name)

    def run(x):
        args = [x if n.name == exported.input_name else exported.inputs[n.name]
                for n in placeholders]
        out = exported.module(*args)
        return out[index] if isinstance(out, (list, tuple)) else out
    return run


def check_autograd_agrees(model: nn.Module, exported, x: torch.Tensor) -> None:
    """Refuse a model whose autograd Jacobian is not the derivative of what it computes.

    Every bound is derived from the exported graph (the function's derivative); every
    estimator, the self-checks and the user's own gradients use autograd on the model.
    They differ when a derivative is cut or replaced on an input-dependent path
    (``torch.no_grad()`` blocks, a custom ``autograd.Function`` whose backward is not its
    forward's derivative, straight-through estimators), and then no bound is right for
    both. One vector-Jacobian product of each, with the same random cotangent, must agree
    to within rounding (``1e-9`` relative in float64, ``1e-3`` in lower precision).
    Graphs with modules kept whole (registered rules) are not compared.
    """
    if exported.calls or not x.is_floating_point():
        return
    graph = _graph_function(exported)
    gradients = []
    for function in (model, graph):
        point = x.detach().clone().requires_grad_(True)
        try:
            with torch.enable_grad():
                out = function(point)
                if not isinstance(out, torch.Tensor) or not out.requires_grad:
                    return
                cotangent = torch.randn(out.shape, dtype=torch.float64,     # the same twice
                                        generator=torch.Generator().manual_seed(0))
                (gradient,) = torch.autograd.grad(out, point, cotangent.to(out),
                                                  allow_unused=True)
        except (RuntimeError, NotImplementedError):
            return      # an operator of the functional graph without a derivative formula
        gradients.append(torch.zeros_like(point) if gradient is None else gradient)
    mine, theirs = (g.detach().to(torch.float64) for g in gradients)
    tolerance = 1e-9 if x.dtype == torch.float64 else 1e-3
    gap = float((mine - theirs).norm())
    size = float(mine.norm() + theirs.norm())
    if not gap <= tolerance * size + 1e-30 and math.isfinite(size):
        raise UnsupportedModuleError(
            f"trace_model: autograd's gradient of {type(model).__name__} differs from the "
            f"derivative of the function it computes (relative gap {gap / size:.3g}): a "
            f"torch.no_grad() block, a detach(), or a custom autograd.Function whose "
            f"backward is not its forward's derivative sits on an input-dependent path, so "
            f"no bound holds for both; remove it.")
