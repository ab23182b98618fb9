"""Checks at the public entry points of :mod:`numeric.fisher`, and the model context.

Every estimator validates its arguments here, once, and then runs inside
:func:`model_context`, which puts the model in eval mode, selects attention kernels that
support second-order and forward-mode autodiff, switches mixed precision off
(:func:`numeric.device.full_precision`), and restores everything afterwards.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from numeric.device import full_precision, resolve_device
from numeric.errors import InputError

__all__ = [
    "check_batch",
    "check_logits",
    "check_method",
    "check_integer",
    "check_positive",
    "check_model",
    "check_generator",
    "resolve_dtype",
    "resolve_compute_device",
    "model_device_dtype",
    "model_context",
]


def check_method(caller: str, method: str, allowed: tuple[str, ...]) -> str:
    """Return ``method`` if it is one of ``allowed``, else raise :class:`InputError`."""
    if method not in allowed:
        raise InputError(f"{caller}: expected method in {', '.join(map(repr, allowed))}, "
                         f"got {method!r}.")
    return method


def check_integer(caller: str, name: str, value, minimum: int = 1) -> None:
    """Raise :class:`InputError` unless ``value`` is an integer >= ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise InputError(f"{caller}: expected {name} to be an integer >= {minimum}, "
                         f"got {value!r}.")


def check_positive(caller: str, name: str, value) -> None:
    """Raise :class:`InputError` unless ``value`` is a finite number > 0."""
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or not 0 < value < float("inf")):
        raise InputError(f"{caller}: expected {name} to be a positive number, got {value!r}.")


def check_generator(caller: str, generator) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise InputError(f"{caller}: expected generator to be a torch.Generator or None, "
                         f"got {type(generator).__name__}.")


def check_batch(caller: str, x) -> None:
    """``x`` must be a finite floating tensor of shape (B, ...) with B >= 1."""
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{caller}: expected x to be a torch.Tensor, got {type(x).__name__}.")
    if not x.is_floating_point():
        raise InputError(f"{caller}: expected a floating-point x, got dtype {x.dtype}.")
    if x.dim() < 2:
        raise InputError(f"{caller}: expected x of shape (B, ...) with a batch dimension, "
                         f"got shape {tuple(x.shape)}; use x.unsqueeze(0) for one input.")
    if x.shape[0] == 0:
        raise InputError(f"{caller}: expected a batch of at least one input, "
                         f"got shape {tuple(x.shape)}.")
    if x[0].numel() == 0:
        raise InputError(f"{caller}: expected inputs with at least one feature, "
                         f"got shape {tuple(x.shape)}.")
    bad = ~torch.isfinite(x.reshape(x.shape[0], -1)).all(dim=1)
    if bad.any():
        rows = bad.nonzero().flatten().tolist()
        raise InputError(f"{caller}: expected finite inputs, got NaN or inf in rows "
                         f"{_rows_text(rows)}.")


def check_logits(caller: str, logits, batch: int, *, source: str = "the model") -> None:
    """Logits must be finite, of shape (B, K) with K >= 2, and not probabilities.

    Probability outputs are recognised by every row lying in [0, 1] and summing to 1;
    log-softmax outputs are valid logits (their softmax is the same distribution).
    """
    if not isinstance(logits, torch.Tensor):
        raise InputError(f"{caller}: expected {source} to return a Tensor of logits, "
                         f"got {type(logits).__name__}.")
    if logits.dim() != 2 or logits.shape[0] != batch:
        raise InputError(f"{caller}: expected {source} to return logits of shape "
                         f"(B, K) = ({batch}, K), got shape {tuple(logits.shape)}.")
    if logits.shape[1] < 2:
        raise InputError(f"{caller}: expected at least K = 2 classes, got K = "
                         f"{logits.shape[1]}; with one class softmax is constant and the "
                         f"Fisher information is identically zero.")
    values = logits.detach()
    bad = ~torch.isfinite(values).all(dim=1)
    if bad.any():
        raise InputError(f"{caller}: {source} returned NaN or inf logits in rows "
                         f"{_rows_text(bad.nonzero().flatten().tolist())}.")
    looks_like_probabilities = (
        bool((values >= 0).all()) and bool((values <= 1).all())
        and bool(((values.sum(dim=1) - 1).abs() <= 1e-4).all()))
    if looks_like_probabilities:
        raise InputError(f"{caller}: {source} seems to return probabilities (every row is in "
                         f"[0, 1] and sums to 1); it must return logits. Drop the final "
                         f"softmax (log-probabilities are fine).")


def model_device_dtype(model: nn.Module, x: torch.Tensor) -> tuple[torch.device, torch.dtype]:
    """The device and floating dtype of the model's first floating tensor (else of ``x``)."""
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return x.device, x.dtype


def resolve_compute_device(caller: str, model: nn.Module, x: torch.Tensor,
                           device) -> torch.device:
    """``device`` checked by :func:`numeric.device.resolve_device`; None: the model's."""
    if device is None:
        return model_device_dtype(model, x)[0]
    return resolve_device(device, caller=caller)


def resolve_dtype(caller: str, dtype, default: torch.dtype) -> torch.dtype:
    if dtype is None:
        return default
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise InputError(f"{caller}: expected dtype to be None or a floating torch.dtype "
                         f"(e.g. torch.float64), got {dtype!r}.")
    return dtype


def check_model(caller: str, model) -> None:
    if not isinstance(model, nn.Module):
        raise InputError(f"{caller}: expected model to be a torch.nn.Module returning logits, "
                         f"got {type(model).__name__}; for a probability-only callable use "
                         f"blackbox_fisher_top_eigenvalue.")


@contextlib.contextmanager
def model_context(model: nn.Module) -> Iterator[None]:
    """Eval mode, attention kernels with full autodiff support, full precision; restored.

    Fused attention kernels (flash / memory-efficient ``scaled_dot_product_attention`` and
    the ``nn.MultiheadAttention`` inference fast path) implement neither forward-mode AD
    nor double backward, so the estimators select the math kernel and disable the fast
    path while they run. Autocast, TF32 and bfloat16 matmuls are off
    (:func:`numeric.device.full_precision`), so that results are exact up to the rounding
    of the computation dtype on every device. The training flag of every submodule is
    restored afterwards.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    modes = [(module, module.training) for module in model.modules()]
    fastpath = torch.backends.mha.get_fastpath_enabled()
    model.eval()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel(SDPBackend.MATH), full_precision():
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for module, training in modes:
            module.training = training


def _rows_text(rows: list[int]) -> str:
    shown = ", ".join(map(str, rows[:8]))
    return f"[{shown}{', ...' if len(rows) > 8 else ''}]"
