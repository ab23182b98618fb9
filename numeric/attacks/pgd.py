"""Projected gradient descent (Madry et al. 2018) in an L2 or L∞ ball, with restarts.

Twenty-step PGD (the paper's evaluation) over-estimates robustness (Croce & Hein 2020);
:func:`pgd_attack` restarts from random points, alternates the cross-entropy and the margin
(CW) loss across restarts and keeps, per sample, the first iterate that is misclassified.

References
----------
Madry, Makelov, Schmidt, Tsipras, Vladu (2018), "Towards Deep Learning Models Resistant
to Adversarial Attacks", ICLR.
Croce & Hein (2020), "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks", ICML.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from numeric.attacks._common import (Bounds, check_common, check_count, chunks, clip,
                                     eval_mode, logit_margin, misclassified,
                                     random_direction, row_norms, unit, value_and_grad, view)
from numeric.errors import InputError

__all__ = ["pgd_attack", "robust_accuracy"]

_LOSSES = ("ce", "margin", "alternate")


def _pgd_loss(name: str, y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    if name == "ce":
        return lambda out: F.cross_entropy(out, y, reduction="none")
    return lambda out: -logit_margin(out, y)


def _random_start(x: torch.Tensor, eps: float, norm: str,
                  generator: torch.Generator) -> torch.Tensor:
    """Uniform sample of the L∞ cube or the L2 ball of radius ``eps``, like ``x``."""
    if norm == "linf":
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype, device="cpu")
        return ((2 * noise - 1) * eps).to(x.device)
    dim = x[0].numel()
    radius = torch.rand(x.shape[0], generator=generator, dtype=x.dtype, device="cpu")
    radius = eps * radius.pow(1.0 / dim).to(x.device)
    return view(radius, x) * random_direction(x, generator)


def _project_ball(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    scale = (eps / row_norms(delta).clamp_min(1e-30)).clamp(max=1.0)
    return delta * view(scale, delta)


def _pgd_step(delta: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, eps: float,
              norm: str, step_size: float, bounds: Bounds) -> torch.Tensor:
    direction = grad.sign() if norm == "linf" else unit(grad)
    return clip(x, _project_ball(delta + step_size * direction, eps, norm), bounds)


def _pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str,
         steps: int, step_size: float, restarts: int, loss: str, random_start: bool,
         bounds: Bounds, generator: torch.Generator, keep: str) -> torch.Tensor:
    found = misclassified(model, x, y)
    adversarial = x.clone()
    best_gap = torch.full((x.shape[0],), -math.inf, dtype=x.dtype, device=x.device)
    for restart in range(restarts):
        objective = _pgd_loss(loss if loss != "alternate" else ("ce", "margin")[restart % 2], y)
        delta = torch.zeros_like(x)
        if random_start:
            delta = clip(x, _random_start(x, eps, norm, generator), bounds)
        if keep == "last":
            for _ in range(steps):
                _, _, grad = value_and_grad(objective, model, x + delta)
                delta = _pgd_step(delta, grad, x, eps, norm, step_size, bounds)
            adversarial = x + delta
            continue
        for step in range(steps + 1):
            logits, _, grad = value_and_grad(objective, model, x + delta)
            # keep the first misclassified iterate; until then the one nearest to it
            gap = -logit_margin(logits, y)
            hit = (logits.argmax(dim=1) != y) & ~found
            take = hit | (~found & (gap > best_gap))
            adversarial = torch.where(view(take, x), x + delta, adversarial)
            best_gap = torch.where(take, gap, best_gap)
            found |= hit
            if step == steps or found.all():
                break
            delta = _pgd_step(delta, grad, x, eps, norm, step_size, bounds)
        if found.all():
            break
    return adversarial


def _check_pgd(function: str, eps: float, norm: str, steps: int, step_size: float | None,
               restarts: int, loss: str, keep: str = "first") -> None:
    if not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise InputError(f"{function}: expected a finite eps >= 0, got {eps!r}.")
    if norm not in ("l2", "linf"):
        raise InputError(f"{function}: expected norm 'l2' or 'linf', got {norm!r}.")
    check_count(function, "steps", steps, 1)
    check_count(function, "restarts", restarts, 1)
    if step_size is not None and not step_size > 0:
        raise InputError(f"{function}: expected a step_size > 0, got {step_size!r}.")
    if loss not in _LOSSES:
        raise InputError(f"{function}: expected loss in {', '.join(_LOSSES)}, got {loss!r}.")
    if keep not in ("first", "last"):
        raise InputError(f"{function}: expected keep 'first' or 'last', got {keep!r}.")


def pgd_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float,
               norm: str = "l2", steps: int = 50, step_size: float | None = None,
               restarts: int = 1, loss: str = "alternate", random_start: bool = True,
               bounds: Bounds = (0.0, 1.0), generator: torch.Generator | None = None,
               batch_size: int | None = None, keep: str = "first") -> torch.Tensor:
    """Projected gradient ascent (Madry et al. 2018) in an L2 or L∞ ball, with restarts.

    Each restart starts at a uniform random point of the ball (or at ``x``), takes
    ``steps`` steps ``δ ← Π(δ + α·s)`` with ``s`` the normalised gradient (L2) or its
    sign (L∞), projects onto the ball and then into the box, and keeps per sample the
    first iterate that is misclassified (else the one with the smallest margin). Restarts
    stop early once every sample is misclassified.

    Parameters
    ----------
    model : nn.Module
        Maps Tensor of shape (B, ...) to logits (B, K); run in eval mode, modes restored.
    x : Tensor of shape (B, ...)
        Clean inputs inside ``bounds``.
    y : LongTensor of shape (B,)
        True labels.
    eps : float
        Radius of the ball; ``‖x_adv − x‖ <= eps`` always (in the chosen norm).
    norm : {"l2", "linf"}
        The threat model.
    steps : int
        Gradient steps per restart (each one forward and one backward pass).
    step_size : float, optional
        α; default ``2.5 · eps / steps`` (Madry et al.).
    restarts : int
        Independent runs; at least 1.
    loss : {"alternate", "ce", "margin"}
        Ascended objective: cross-entropy, the CW margin ``max_{j≠y} f_j − f_y``, or the
        two alternated across restarts (cross-entropy first).
    random_start : bool
        Start each restart at a uniform random point of the ball instead of ``x``.
    bounds : (float, float) or None
        Box for the adversarial examples; ``None`` for none.
    generator : torch.Generator, optional
        Source of the random starts (CPU); default a fresh generator seeded 0.
    batch_size : int, optional
        Attack at most this many samples at once.
    keep : {"first", "last"}
        ``"first"`` (for evaluation) returns per sample the first misclassified iterate of
        any restart, else the iterate with the smallest margin; ``"last"`` (for
        adversarial training, Madry et al.) returns the final iterate of the last restart.

    Returns
    -------
    Tensor of shape (B, ...) like ``x``
        Adversarial examples (with ``keep="first"``, equal to ``x`` where ``x`` is already
        misclassified).

    Raises
    ------
    InputError
        Malformed inputs, ``x`` outside ``bounds``, or an invalid parameter.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Linear(2, 2).double()
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    ...     _ = model.bias.copy_(torch.tensor([-0.5, 0.5]))
    >>> x = torch.tensor([[0.6, 0.5]], dtype=torch.float64)
    >>> adv = pgd_attack(model, x, torch.tensor([0]), eps=0.05, norm="linf", steps=10,
    ...                  random_start=False)
    >>> [round(v, 6) for v in adv[0].tolist()]  # the optimum x − eps·sign(w_0 − w_1)
    [0.55, 0.5]
    """
    check_common("pgd_attack", model, x, y, bounds)
    _check_pgd("pgd_attack", eps, norm, steps, step_size, restarts, loss, keep)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    alpha = 2.5 * eps / steps if step_size is None else step_size
    x = x.detach()
    parts = []
    with eval_mode(model):
        for part in chunks(x.shape[0], batch_size):
            parts.append(_pgd(model, x[part], y[part], float(eps), norm, steps, alpha,
                              restarts, loss, random_start, bounds, generator, keep))
    return torch.cat(parts)


def robust_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float,
                    norm: str = "l2", *, steps: int = 50, step_size: float | None = None,
                    restarts: int = 2, loss: str = "alternate", bounds: Bounds = (0.0, 1.0),
                    generator: torch.Generator | None = None,
                    batch_size: int | None = None) -> float:
    """Fraction of samples still classified correctly after :func:`pgd_attack`.

    An upper bound (an estimate from one attack) on the true robust accuracy at radius
    ``eps``; ``eps = 0`` gives the clean accuracy. Parameters as for :func:`pgd_attack`;
    ``x`` is a Tensor of shape (B, ...), ``y`` a LongTensor of shape (B,).

    Returns
    -------
    float
        In [0, 1].

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Linear(2, 2).double()
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    ...     _ = model.bias.copy_(torch.tensor([-0.5, 0.5]))
    >>> x = torch.tensor([[0.6, 0.5], [0.52, 0.5]], dtype=torch.float64)
    >>> robust_accuracy(model, x, torch.tensor([0, 0]), 0.05, "linf", steps=10)
    0.5
    """
    check_common("robust_accuracy", model, x, y, bounds)
    _check_pgd("robust_accuracy", eps, norm, steps, step_size, restarts, loss)
    if x.shape[0] == 0:
        raise InputError("robust_accuracy: expected at least one sample, got 0.")
    adversarial = pgd_attack(model, x, y, eps=eps, norm=norm, steps=steps,
                             step_size=step_size, restarts=restarts, loss=loss,
                             bounds=bounds, generator=generator, batch_size=batch_size)
    with eval_mode(model):
        wrong = misclassified(model, adversarial, y)
    return 1.0 - wrong.double().mean().item()
