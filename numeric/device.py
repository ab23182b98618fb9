"""Device choice shared by the estimators and the commands, and full-precision arithmetic.

:func:`resolve_device` turns what a user typed (``--device cuda:1``) into a
:class:`torch.device` that this machine can run, or refuses in one line naming the culprit.
:func:`full_precision` is the context the estimators compute in: no autocast, no TF32, IEEE
float32 matmuls and convolutions on every backend, so that a value documented as exact up
to rounding is exact up to the rounding of its dtype on every device.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch

from numeric.errors import InputError

__all__ = ["resolve_device", "full_precision", "DEVICE_CHOICES"]

#: What :func:`resolve_device` accepts, as shown in its error messages.
DEVICE_CHOICES = "'cpu', 'cuda', 'cuda:N', 'mps' or 'auto'"

_PATTERN = re.compile(r"(cpu|cuda|mps|auto)(?::(\d+))?")


def resolve_device(spec: str | torch.device | None = "auto", *,
                   caller: str = "resolve_device") -> torch.device:
    """The :class:`torch.device` named by ``spec``, checked to exist on this machine.

    Parameters
    ----------
    spec : str, torch.device or None
        ``"cpu"`` (or ``"cpu:0"``); ``"cuda"`` (the current CUDA device) or ``"cuda:N"``;
        ``"mps"`` (Apple GPUs); ``"auto"`` or ``None``: the current CUDA device when one
        is available, else the CPU. Case and surrounding spaces are ignored. A
        :class:`torch.device` is checked the same way.
    caller : str
        Name used at the start of the error message (a command passes its own).

    Returns
    -------
    torch.device
        ``cuda`` devices always carry their index, so that two spellings of one GPU compare
        equal.

    Raises
    ------
    InputError
        An unknown or malformed name (``"tpu"``, ``"gpu"``, ``"cuda:x"``), the ``meta``
        device (it holds no values to measure), ``cuda`` when torch sees no CUDA device,
        ``cuda:N`` beyond the device count, ``mps`` when it is not available.

    Examples
    --------
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("tpu")
    Traceback (most recent call last):
    ...
    numeric.errors.InputError: resolve_device: expected a device 'cpu', 'cuda', 'cuda:N', \
'mps' or 'auto', got 'tpu'.
    """
    text = _spec_text(spec, caller)
    match = _PATTERN.fullmatch(text)
    if match is None or (match.group(2) is not None
                         and (match.group(1), match.group(2)) != ("cpu", "0")
                         and match.group(1) != "cuda"):
        hint = " (meta tensors hold no values to measure)" if text.startswith("meta") else ""
        raise InputError(f"{caller}: expected a device {DEVICE_CHOICES}, "
                         f"got {text!r}{hint}.")
    kind, index = match.group(1), match.group(2)
    if kind == "auto":
        return (torch.device("cuda", torch.cuda.current_device())
                if torch.cuda.is_available() else torch.device("cpu"))
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "mps":
        if not torch.backends.mps.is_available():
            raise InputError(f"{caller}: expected an available device, got 'mps' but torch "
                             f"sees no MPS device; use 'cpu'.")
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise InputError(f"{caller}: expected an available device, got {text!r} but torch "
                         f"sees no CUDA device (torch.cuda.is_available() is False); "
                         f"use 'cpu' or 'auto'.")
    count = torch.cuda.device_count()
    number = torch.cuda.current_device() if index is None else int(index)
    if number >= count:
        raise InputError(f"{caller}: expected a CUDA device index below {count}, "
                         f"got {text!r}.")
    return torch.device("cuda", number)


def _spec_text(spec, caller: str) -> str:
    if spec is None:
        return "auto"
    if isinstance(spec, torch.device):
        return spec.type if spec.index is None else f"{spec.type}:{spec.index}"
    if not isinstance(spec, str):
        raise InputError(f"{caller}: expected a device {DEVICE_CHOICES} as a str or "
                         f"torch.device, got {type(spec).__name__}.")
    return spec.strip().lower()


#: (backend, attribute) pairs of the per-backend float32 precision settings (torch >= 2.9)
_PRECISION_SETTINGS = (("cuda", "matmul"), ("cudnn", "conv"), ("cudnn", "rnn"),
                       ("mkldnn", "matmul"), ("mkldnn", "conv"), ("mkldnn", "rnn"))


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """Compute in the declared dtype only: no autocast, no TF32, no bfloat16 matmuls.

    Inside the block autocast is disabled on CPU and CUDA (a caller's ``torch.autocast``
    region does not reach the estimators) and float32 matmuls and convolutions run in IEEE
    float32 on every backend: ``fp32_precision = "ieee"`` for cuBLAS, cuDNN and oneDNN
    (torch >= 2.9; the legacy ``torch.backends.cuda.matmul.allow_tf32 = False`` and
    ``torch.backends.cudnn.allow_tf32 = False`` on older versions). TF32 rounds the inputs
    of float32 matmuls and cuDNN convolutions to 10 mantissa bits (relative error about
    1e-3, and cuDNN convolutions use it by default), and ``set_float32_matmul_precision
    ("medium")`` lets oneDNN use bfloat16 on CPU; either would turn "exact up to rounding"
    into "to three digits". Every setting is restored on exit, also after an exception,
    through the same interface it was read from, so that neither API sees a change.
    """
    restore = _set_ieee_precision()
    try:
        with torch.autocast("cpu", enabled=False), _cuda_autocast_off():
            yield
    finally:
        restore()


def _set_ieee_precision():
    """Switch TF32 / bfloat16 off; return the function that puts every setting back."""
    backends = torch.backends
    if hasattr(backends.cuda.matmul, "fp32_precision"):
        targets = [getattr(getattr(backends, name), kind) for name, kind in _PRECISION_SETTINGS
                   if hasattr(getattr(getattr(backends, name), kind, None), "fp32_precision")]
        saved = [target.fp32_precision for target in targets]
        for target in targets:
            target.fp32_precision = "ieee"

        def restore() -> None:
            for target, value in zip(targets, saved):
                target.fp32_precision = value
        return restore
    matmul, cudnn = backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32
    precision = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    backends.cuda.matmul.allow_tf32 = backends.cudnn.allow_tf32 = False

    def restore_legacy() -> None:
        torch.set_float32_matmul_precision(precision)
        backends.cuda.matmul.allow_tf32, backends.cudnn.allow_tf32 = matmul, cudnn
    return restore_legacy


def _cuda_autocast_off():
    if not torch.cuda.is_available():
        return contextlib.nullcontext()
    return torch.autocast("cuda", enabled=False)
