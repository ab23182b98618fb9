"""Checks and helpers shared by the modules of :mod:`numeric`.

Validation happens at the public entry point; every check raises
:class:`numeric.errors.InputError` with the message ``"<function>: expected <what>, got
<value or shape>."``. This module imports no torch at import time (the command line uses
:func:`first_line` where torch may be missing).

============================  ==============================================================
name                          what
============================  ==============================================================
:func:`eval_mode`             context: a model in eval mode, every submodule's own flag back
:func:`first_line`            one clean line of an exception's message
:func:`check_batch`           a floating, non-empty, finite batch of at least ``min_dim`` dims
:func:`check_positive_int`    an int ``>= 1`` (not a bool)
============================  ==============================================================
"""

from __future__ import annotations

import contextlib
import numbers
import re
from collections.abc import Iterator

from numeric.errors import InputError

__all__ = ["eval_mode", "first_line", "check_batch", "check_positive_int"]

#: Lines that torch (fx, export, the weights-only unpickler) appends to a message.
_NOISE = re.compile(r"^\s*(While executing|Original traceback|Traceback \(most recent call|"
                    r"File \"|from user code|Set TORCH_LOGS|For more information|"
                    r"Check the documentation of torch\.load|Please file an issue|"
                    r"\(Triggered internally)")


@contextlib.contextmanager
def eval_mode(model) -> Iterator:
    """Put ``model`` and all its submodules in eval mode; afterwards give every submodule
    back its own ``training`` flag (a model with some submodules frozen in eval mode is
    restored exactly, also when the body raises).

    Parameters
    ----------
    model : torch.nn.Module

    Yields
    ------
    torch.nn.Module
        ``model``, in eval mode.

    Raises
    ------
    InputError
        If ``model`` is not a module (has no ``modules()``).

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Sequential(torch.nn.Dropout(), torch.nn.Linear(2, 2))
    >>> model[0].eval()  # a submodule kept in eval mode on purpose
    Dropout(p=0.5, inplace=False)
    >>> with eval_mode(model):
    ...     model.training, model[1].training
    (False, False)
    >>> model.training, model[0].training, model[1].training
    (True, False, True)
    """
    if not callable(getattr(model, "modules", None)) or not hasattr(model, "eval"):
        raise InputError(f"eval_mode: expected a torch.nn.Module, got "
                         f"{type(model).__name__}.")
    flags = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in flags:
            module.training = training


def first_line(error: BaseException) -> str:
    """One clean line describing ``error``: its first meaningful message line.

    torch appends explanations to messages (``While executing %x ...``, ``Original
    traceback:``, the weights-only unpickler's advice); those lines and empty ones are
    skipped. An exception without a message gives its type's name.

    Examples
    --------
    >>> first_line(ValueError("shape mismatch (3 vs 4)\\n\\nWhile executing %add : ..."))
    'shape mismatch (3 vs 4)'
    >>> first_line(KeyError("fc.weight"))
    "'fc.weight'"
    >>> first_line(RuntimeError())
    'RuntimeError'
    """
    for line in str(error).splitlines():
        if line.strip() and not _NOISE.match(line):
            return line.strip()
    return type(error).__name__


def check_batch(function: str, x, *, min_dim: int = 2):
    """Check a batch of inputs: a floating tensor with ``min_dim`` dims or more, at least
    one row and one entry per row, and no NaN or infinity.

    Parameters
    ----------
    function : str
        The public function's name, for the message.
    x : torch.Tensor of shape (B, ...)
    min_dim : int, default 2
        The fewest dimensions (2: a batch of vectors).

    Returns
    -------
    torch.Tensor
        ``x``, unchanged.

    Raises
    ------
    InputError
        Naming what is wrong, e.g. ``fisher_trace: expected a floating tensor, got
        torch.int64.`` or ``...: expected finite entries, got NaN in row 3.``

    Examples
    --------
    >>> import torch
    >>> check_batch("f", torch.zeros(2, 3)).shape
    torch.Size([2, 3])
    >>> check_batch("f", torch.zeros(3))
    Traceback (most recent call last):
    ...
    numeric.errors.InputError: f: expected a batch of shape (B, ...) with at least 2 dimensions, got shape (3,).
    """
    import torch

    if not isinstance(x, torch.Tensor):
        raise InputError(f"{function}: expected a torch.Tensor, got {type(x).__name__}.")
    if not x.is_floating_point():
        raise InputError(f"{function}: expected a floating tensor, got {x.dtype}.")
    if x.ndim < min_dim:
        raise InputError(f"{function}: expected a batch of shape (B, ...) with at least "
                         f"{min_dim} dimensions, got shape {tuple(x.shape)}.")
    if x.numel() == 0:
        raise InputError(f"{function}: expected a non-empty batch, got shape "
                         f"{tuple(x.shape)}.")
    finite = torch.isfinite(x).reshape(x.shape[0], -1).all(dim=1)
    if not bool(finite.all()):
        row = int((~finite).nonzero()[0, 0])
        kind = "NaN" if bool(torch.isnan(x[row]).any()) else "an infinite entry"
        raise InputError(f"{function}: expected finite entries, got {kind} in row {row}.")
    return x


def check_positive_int(function: str, name: str, value) -> int:
    """``value`` as an int ``>= 1`` (any integral type, a whole float refused, no bool).

    Examples
    --------
    >>> check_positive_int("fisher_trace", "num_probes", 10)
    10
    >>> check_positive_int("fisher_trace", "num_probes", 0)
    Traceback (most recent call last):
    ...
    numeric.errors.InputError: fisher_trace: expected num_probes to be an integer >= 1, got 0.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise InputError(f"{function}: expected {name} to be an integer >= 1, got "
                         f"{value!r}.")
    return int(value)
