"""Adversarial attacks: a strong minimum-norm L2 attack and PGD (L2 / L∞) with restarts.

Both measure the deployed network: the model is put in eval mode for the attack and every
module is restored to its own mode afterwards; gradients are taken with respect to the
input only, so no parameter ``.grad`` is touched (the attacks can run inside training).

Inputs are images: every adversarial example stays in the box ``bounds`` (default
``[0, 1]``, the range of :func:`numeric.data.load_data`); ``bounds=None`` removes the box.

Strength. Twenty-step PGD and CW (the paper's evaluation) over-estimate robustness
(Croce & Hein 2020). :func:`minimum_norm_attack` therefore runs an ensemble of
FMN-L2 (Pintor et al. 2021) and DDN (Rony et al. 2019) from the clean input plus FMN from
random starting points, keeps the smallest successful perturbation per sample, and
polishes it with a boundary search along its direction and DeepFool/FAB-style projections
onto the linearised decision boundary intersected with the box; every candidate is
verified by a forward pass before it is accepted, so a returned norm is always achieved.
Step sizes are relative to the current radius (FMN and DDN state theirs in absolute
units for images in [0, 1]), which makes the attack independent of the input scale.
:func:`pgd_attack` (Madry et al. 2018) restarts from random points, alternates the
cross-entropy and the margin (CW) loss across restarts and keeps, per sample, the first
iterate that is misclassified. A maintained library with the same attacks is ``adv-lib``
(FMN, DDN, APGD, FAB by the DDN/FMN authors) or ``torchattacks``/``foolbox``; none is a
dependency here.

References
----------
Pintor, Roli, Brendel, Biggio (2021), "Fast Minimum-norm Adversarial Attacks through
Adaptive Norm Constraints", NeurIPS.
Rony, Hafemann, Oliveira, Ben Ayed, Sabourin, Granger (2019), "Decoupling Direction and
Norm for Efficient Gradient-Based L2 Adversarial Attacks and Defenses", CVPR.
Madry, Makelov, Schmidt, Tsipras, Vladu (2018), "Towards Deep Learning Models Resistant
to Adversarial Attacks", ICLR.
Croce & Hein (2020), "Reliable evaluation of adversarial robustness with an ensemble of
diverse parameter-free attacks" (AutoAttack) and "Minimally distorted adversarial
examples with a fast adaptive boundary attack" (FAB), ICML.
Moosavi-Dezfooli, Fawzi, Frossard (2016), "DeepFool", CVPR.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from numeric.errors import InputError

__all__ = ["AttackResult", "minimum_norm_attack", "pgd_attack", "robust_accuracy"]

Bounds = tuple[float, float] | None

#: DeepFool's overshoot of the linear extrapolation to the boundary (lands past it, not on it)
_OVERSHOOT = 1.05

#: iterations of the bisection along a ray (relative precision 2**-24 of the norm)
_RAY_ITERATIONS = 24


@dataclass(frozen=True, eq=False)
class AttackResult:
    """Result of :func:`minimum_norm_attack` for a batch of B inputs.

    Attributes
    ----------
    delta : Tensor of shape (B, ...) like ``x``
        The smallest successful perturbation found (``x + delta`` is misclassified and in
        the box); zero where none was found or the input was already misclassified.
        ``x + delta`` lies on the adversarial side of the decision boundary within a
        relative 6e-8 of it, so re-evaluating it in float32 inside another batch (other
        kernels, other rounding) can occasionally flip back; rely on ``norms``.
    norms : Tensor of shape (B,)
        ``‖delta‖₂`` per sample: 0 for an input already misclassified, ``inf`` where no
        adversarial example was found. An upper bound on the true minimal radius.
    success : BoolTensor of shape (B,)
        Whether an adversarial example was found (``norms`` finite).
    """

    delta: torch.Tensor
    norms: torch.Tensor
    success: torch.Tensor


# ----------------------------------------------------------------------------- helpers

@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every module in eval mode, then restore each module's own mode."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in modes:
            module.training = training


def _view(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return values.view(-1, *([1] * (like.dim() - 1)))


def _norms(delta: torch.Tensor) -> torch.Tensor:
    return delta.flatten(1).norm(dim=1)


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``f_y − max_{j≠y} f_j`` per row: positive iff the true class wins. Shape (B,)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    others = logits.scatter(1, y[:, None], float("-inf"))
    return true - others.amax(dim=1)


def _misclassified(model: nn.Module, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(z).argmax(dim=1) != y


def _clip(x: torch.Tensor, delta: torch.Tensor, bounds: Bounds) -> torch.Tensor:
    """The perturbation that moves ``x`` to the box point nearest ``x + delta``."""
    if bounds is None:
        return delta
    return (x + delta).clamp(*bounds) - x


def _value_and_grad(loss: Callable[[torch.Tensor], torch.Tensor], model: nn.Module,
                    z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits (B, K), per-row loss (B,) and its input gradient (like z) at ``z``."""
    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        logits = model(z)
        values = loss(logits)
        grad, = torch.autograd.grad(values.sum(), z)
    return logits.detach(), values.detach(), grad


def _unit(grad: torch.Tensor) -> torch.Tensor:
    return grad / _view(_norms(grad).clamp_min(1e-30), grad)


def _random_direction(like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(like.shape, generator=generator, dtype=like.dtype, device="cpu")
    return _unit(noise.to(like.device))


def _worst_norm(x: torch.Tensor, bounds: Bounds) -> torch.Tensor:
    """Largest L2 distance from ``x`` to a box point (inf without a box). Shape (B,)."""
    if bounds is None:
        return torch.full((x.shape[0],), math.inf, dtype=x.dtype, device=x.device)
    lo, hi = bounds
    return _norms(torch.maximum(x - lo, hi - x))


def _cosine(step: int, steps: int, start: float, end: float) -> float:
    return end + (start - end) * (1 + math.cos(math.pi * step / steps)) / 2


# ------------------------------------------------------------------ minimum-norm attacks

class _Best:
    """Smallest successful perturbation per sample seen so far."""

    def __init__(self, x: torch.Tensor) -> None:
        self.delta = torch.zeros_like(x)
        self.norms = torch.full((x.shape[0],), math.inf, dtype=x.dtype, device=x.device)

    def update(self, delta: torch.Tensor, adversarial: torch.Tensor) -> None:
        norms = _norms(delta)
        better = adversarial & (norms < self.norms)
        self.norms = torch.where(better, norms, self.norms)
        self.delta = torch.where(_view(better, delta), delta, self.delta)


def _fmn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor,
         steps: int, bounds: Bounds, best: _Best, *, gamma: tuple[float, float] = (0.05, 1e-3),
         alpha: tuple[float, float] = (1.0, 0.01)) -> None:
    """FMN-L2 (Pintor et al. 2021, Alg. 1) from ``delta``; updates ``best`` in place.

    The step size is ``alpha · ε`` (relative to the current radius) instead of absolute,
    which makes the attack independent of the input scale.
    """
    worst = _worst_norm(x, bounds)
    epsilon = torch.full_like(worst, math.inf)
    found = torch.zeros_like(worst, dtype=torch.bool)
    for step in range(steps + 1):
        logits, margin, grad = _value_and_grad(lambda out: _margin(out, y), model, x + delta)
        adversarial = logits.argmax(dim=1) != y
        best.update(delta, adversarial)
        if step == steps:
            break
        found |= adversarial
        norm = _norms(delta)
        g = _cosine(step, steps, *gamma)
        to_boundary = margin.abs() / _norms(grad).clamp_min(1e-30)
        grown = torch.where(found, epsilon * (1 + g), norm + _OVERSHOOT * to_boundary)
        epsilon = torch.where(adversarial, torch.minimum(epsilon * (1 - g), best.norms), grown)
        epsilon = torch.minimum(epsilon, worst)
        step_size = _cosine(step, steps, *alpha) * epsilon
        delta = delta - _view(step_size, x) * _unit(grad)
        delta = delta * _view((epsilon / _norms(delta).clamp_min(1e-30)).clamp(max=1.0), x)
        delta = _clip(x, delta, bounds)


def _ddn(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epsilon: torch.Tensor,
         steps: int, bounds: Bounds, best: _Best, *, gamma: float = 0.05,
         alpha: tuple[float, float] = (1.0, 0.01)) -> None:
    """DDN (Rony et al. 2019, Alg. 1) from ``x`` with initial radius ``epsilon`` (B,)."""
    worst = _worst_norm(x, bounds)
    delta = torch.zeros_like(x)

    def cross_entropy(out: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(out, y, reduction="none")

    for step in range(steps + 1):
        logits, _, grad = _value_and_grad(cross_entropy, model, x + delta)
        adversarial = logits.argmax(dim=1) != y
        best.update(delta, adversarial)
        if step == steps:
            break
        epsilon = torch.where(adversarial, epsilon * (1 - gamma), epsilon * (1 + gamma))
        epsilon = torch.minimum(epsilon, worst)
        step_size = _cosine(step, steps, *alpha) * epsilon
        delta = delta + _view(step_size, x) * _unit(grad)
        delta = _view(epsilon, x) * _unit(delta)
        delta = _clip(x, delta, bounds)


def _ray_search(model: nn.Module, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor,
                adversarial: torch.Tensor) -> torch.Tensor:
    """Shrink each adversarial ``delta`` to the first misclassified point on [x, x + delta].

    The segment lies in the box when both ends do. Rows not ``adversarial`` come back
    unchanged; the returned points are verified misclassified (the upper end of the
    bisection is only ever moved to a misclassified point).
    """
    low = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
    high = torch.ones_like(low)
    for _ in range(_RAY_ITERATIONS):
        middle = (low + high) / 2
        hit = _misclassified(model, x + _view(middle, x) * delta, y)
        high = torch.where(hit, middle, high)
        low = torch.where(hit, low, middle)
    return torch.where(_view(adversarial, x), _view(high, x) * delta, delta)


def _project_onto_halfspace(x: torch.Tensor, normal: torch.Tensor, offset: torch.Tensor,
                            bounds: Bounds) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest point to ``x`` in ``{u : normal·u >= offset}`` ∩ box, and a feasibility mask.

    By the KKT conditions the solution is ``clip(x + λ·normal)`` with the smallest
    ``λ >= 0`` meeting the constraint; ``normal·clip(x + λ·normal)`` is non-decreasing in
    λ, so λ is found by bisection (exact in closed form without a box). Computed in float64.
    """
    x64, n64 = x.flatten(1).double(), normal.flatten(1).double()
    offset = offset.double()
    squared = (n64 * n64).sum(dim=1).clamp_min(1e-300)
    lam_high = ((offset - (n64 * x64).sum(dim=1)) / squared).clamp_min(0.0)
    if bounds is None:
        point = x64 + lam_high[:, None] * n64
        return point.view_as(x).to(x.dtype), squared > 1e-300

    def side(lam: torch.Tensor) -> torch.Tensor:
        return (n64 * (x64 + lam[:, None] * n64).clamp(*bounds)).sum(dim=1)

    for _ in range(64):  # grow until feasible (or give up: the box misses the halfspace)
        short = side(lam_high) < offset
        if not short.any():
            break
        lam_high = torch.where(short, lam_high * 2 + 1e-12, lam_high)
    feasible = side(lam_high) >= offset
    lam_low = torch.zeros_like(lam_high)
    for _ in range(64):
        middle = (lam_low + lam_high) / 2
        ok = side(middle) >= offset
        lam_high = torch.where(ok, middle, lam_high)
        lam_low = torch.where(ok, lam_low, middle)
    point = (x64 + lam_high[:, None] * n64).clamp(*bounds)
    return point.view_as(x).to(x.dtype), feasible


def _refine(model: nn.Module, x: torch.Tensor, y: torch.Tensor, best: _Best,
            iterations: int, candidates: int, bounds: Bounds) -> None:
    """Polish ``best`` with linearised-boundary projections towards several classes.

    For the ``candidates`` classes j with the largest logits at ``x`` (and for the class
    the best perturbation so far crosses into, starting from its boundary point), each
    iteration linearises ``g_j = f_j − f_y`` at the current point ``z_j`` and projects
    ``x`` onto ``{u : g_j(z_j) + ∇g_j(z_j)·(u − z_j) >= 0}`` ∩ box (exact for an affine
    classifier; DeepFool / FAB). A projection, slightly overshot if needed, is shrunk by a
    boundary search along its ray and accepted only if verified misclassified and shorter
    than the best; otherwise the next linearisation starts from it. All rows of the B ×
    (candidates + 1) problems go through the model as one batch.
    """
    found = torch.isfinite(best.norms)
    best.delta = _ray_search(model, x, y, best.delta, found)
    best.norms = torch.where(found, _norms(best.delta), best.norms)
    with torch.no_grad():
        logits = model(x)
        crossed = model(x + best.delta)
    count = min(candidates, logits.shape[1] - 1)
    targets = torch.cat([logits.scatter(1, y[:, None], -math.inf).topk(count, dim=1).indices,
                         crossed.scatter(1, y[:, None], -math.inf).argmax(1, keepdim=True)],
                        dim=1)
    rows = count + 1
    xr, yr, tr = x.repeat_interleave(rows, 0), y.repeat_interleave(rows), targets.flatten()
    zr = xr.clone()
    zr.view(x.shape[0], rows, *x.shape[1:])[:, -1] = x + best.delta

    def gap(out: torch.Tensor) -> torch.Tensor:
        return out.gather(1, tr[:, None]).squeeze(1) - out.gather(1, yr[:, None]).squeeze(1)

    for _ in range(iterations):
        _, value, grad = _value_and_grad(gap, model, zr)
        offset = (grad * zr).flatten(1).sum(dim=1) - value
        point, feasible = _project_onto_halfspace(xr, grad, offset, bounds)
        base = point - xr
        candidate = base.clone()
        hit = torch.zeros_like(yr, dtype=torch.bool)
        for overshoot in (1.0, 1.001, 1.01, 1.1):
            trial = _clip(xr, base * overshoot, bounds)
            trial_hit = _misclassified(model, xr + trial, yr) & ~hit & feasible
            candidate = torch.where(_view(trial_hit, xr), trial, candidate)
            hit |= trial_hit
        candidate = _ray_search(model, xr, yr, candidate, hit)
        norms = torch.where(hit, _norms(candidate), math.inf).view(x.shape[0], rows)
        shortest, which = norms.min(dim=1)
        chosen = candidate.view(x.shape[0], rows, *x.shape[1:])[torch.arange(x.shape[0]), which]
        best.update(chosen, torch.isfinite(shortest))
        zr = torch.where(_view(hit, xr), xr + candidate,
                         torch.where(_view(feasible, xr), point, zr))


def _check_common(function: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  bounds: Bounds) -> None:
    if not callable(model):
        raise InputError(f"{function}: expected a callable model, got {type(model).__name__}.")
    if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dim() < 2:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise InputError(f"{function}: expected x as a floating Tensor of shape (B, ...), "
                         f"got {shape}.")
    if (not isinstance(y, torch.Tensor) or y.dtype != torch.long
            or tuple(y.shape) != (x.shape[0],)):
        got = (f"{y.dtype} of shape {tuple(y.shape)}" if isinstance(y, torch.Tensor)
               else type(y).__name__)
        raise InputError(f"{function}: expected y as an int64 Tensor of shape "
                         f"({x.shape[0]},), got {got}.")
    if bounds is not None:
        lo, hi = bounds
        if not lo < hi:
            raise InputError(f"{function}: expected bounds (low, high) with low < high, "
                             f"got {bounds!r}.")
        if x.numel() and (x.min() < lo or x.max() > hi):
            raise InputError(f"{function}: expected x inside bounds {bounds!r}, got values "
                             f"in [{x.min().item():.4g}, {x.max().item():.4g}].")


def _check_count(function: str, name: str, value: int, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise InputError(f"{function}: expected an integer {name} >= {low}, got {value!r}.")


def _chunks(size: int, batch_size: int | None) -> Iterator[slice]:
    step = size if batch_size is None else batch_size
    for start in range(0, size, max(step, 1)):
        yield slice(start, start + step)


def minimum_norm_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                        steps: int = 100, restarts: int = 2, refine_steps: int = 5,
                        candidates: int = 9, bounds: Bounds = (0.0, 1.0),
                        generator: torch.Generator | None = None,
                        batch_size: int | None = None) -> AttackResult:
    """Smallest L2 perturbation that changes the prediction, from an attack ensemble.

    For each sample the attack looks for ``δ`` minimising ``‖δ‖₂`` subject to
    ``argmax f(x + δ) ≠ y`` and ``x + δ ∈ [low, high]^d``. It runs, on the samples that
    are correctly classified,

    1. FMN-L2 (Pintor et al. 2021) from ``x``: the margin ``f_y − max_{j≠y} f_j`` is
       decreased by normalised gradient steps inside an L2 ball whose radius shrinks by
       ``1 − γ`` after a success and grows by ``1 + γ`` after a failure (γ cosine-annealed
       0.05 → 0.001), first set by a linear (DeepFool) extrapolation to the boundary;
    2. DDN (Rony et al. 2019) from ``x``: cross-entropy ascent, projected onto the sphere
       of an adaptive radius;
    3. ``restarts`` further FMN runs from random points on the sphere of the best radius
       so far;

    keeps the smallest successful perturbation per sample and refines it: a boundary
    search along its ray, then ``refine_steps`` rounds of DeepFool/FAB-style projections
    of ``x`` onto the linearised boundary (intersected with the box) towards each of the
    ``candidates`` classes with the largest logits and towards the class the best
    perturbation crosses into. The gradient runs follow the class whose logit is
    closest, which need not be the class whose boundary is nearest; the per-class
    projections catch that. Every returned ``x + delta`` has been checked misclassified by
    a forward pass, so each norm is an achieved radius, an upper bound on the true
    minimum, and it is exact for affine classifiers (up to the bisection precision,
    relative 6e-8, when the nearest boundary belongs to one of the candidate classes).

    Parameters
    ----------
    model : nn.Module
        Maps Tensor of shape (B, ...) to logits of shape (B, K). Evaluated in eval mode;
        each module's mode is restored afterwards.
    x : Tensor of shape (B, ...)
        Inputs, inside ``bounds``.
    y : LongTensor of shape (B,)
        Labels whose change counts as success (pass the predictions to measure the
        distance to the decision boundary).
    steps : int
        Iterations of each FMN / DDN run. Cost: about ``(2 + restarts) · steps`` forward
        and backward passes of the batch, plus ``refine_steps`` backward and
        ``28 · refine_steps`` forward passes of a batch ``candidates + 1`` times larger.
    restarts : int
        FMN runs from random starting points in addition to the two runs from ``x``.
    refine_steps : int
        Rounds of linearised-boundary projections in the final refinement.
    candidates : int
        Classes (largest logits at ``x``) the refinement projects towards.
    bounds : (float, float) or None
        The box every ``x + delta`` stays in; ``None`` for no box.
    generator : torch.Generator, optional
        Source of the random starting points (CPU); default a fresh generator seeded 0,
        so a call is deterministic either way.
    batch_size : int, optional
        Attack at most this many samples at once (the generator is shared, in order).

    Returns
    -------
    AttackResult
        ``delta`` (like ``x``), ``norms`` (B,), ``success`` (B,). Samples already
        misclassified get ``norms = 0``, ``success = True`` and ``delta = 0``; samples for
        which nothing was found get ``norms = inf``, ``success = False`` and ``delta = 0``.

    Raises
    ------
    InputError
        Malformed ``x`` or ``y``, ``x`` outside ``bounds``, or a count out of range.

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Linear(2, 2).double()
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    ...     _ = model.bias.copy_(torch.tensor([-0.5, 0.5]))
    >>> x = torch.tensor([[0.8, 0.5]], dtype=torch.float64)
    >>> result = minimum_norm_attack(model, x, torch.tensor([0]), steps=20)
    >>> round(result.norms.item(), 6)  # the margin 0.6 over ‖w_0 − w_1‖ = 2
    0.3
    """
    _check_common("minimum_norm_attack", model, x, y, bounds)
    _check_count("minimum_norm_attack", "steps", steps, 1)
    _check_count("minimum_norm_attack", "restarts", restarts, 0)
    _check_count("minimum_norm_attack", "refine_steps", refine_steps, 0)
    _check_count("minimum_norm_attack", "candidates", candidates, 1)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    x = x.detach()
    deltas, norms = [], []
    with _eval_mode(model):
        for part in _chunks(x.shape[0], batch_size):
            delta, norm = _minimum_norm(model, x[part], y[part], steps, restarts,
                                        refine_steps, candidates, bounds, generator)
            deltas.append(delta)
            norms.append(norm)
    norms_all = torch.cat(norms)
    return AttackResult(delta=torch.cat(deltas), norms=norms_all,
                        success=torch.isfinite(norms_all))


def _minimum_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int,
                  restarts: int, refine_steps: int, candidates: int, bounds: Bounds,
                  generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    delta = torch.zeros_like(x)
    norms = torch.full((x.shape[0],), math.inf, dtype=x.dtype, device=x.device)
    with torch.no_grad():
        correct = model(x).argmax(dim=1) == y
    norms[~correct] = 0.0
    if not correct.any():
        return delta, norms
    xs, ys = x[correct], y[correct]
    best = _Best(xs)
    _, margin, grad = _value_and_grad(lambda out: _margin(out, ys), model, xs)
    start = (margin / _norms(grad).clamp_min(1e-30)).clamp_min(1e-6)
    start = torch.minimum(start, _worst_norm(xs, bounds))
    _fmn(model, xs, ys, torch.zeros_like(xs), steps, bounds, best)
    _ddn(model, xs, ys, start.clone(), steps, bounds, best)
    for _ in range(restarts):
        radius = torch.where(torch.isfinite(best.norms), best.norms, start)
        initial = _view(radius, xs) * _random_direction(xs, generator)
        _fmn(model, xs, ys, _clip(xs, initial, bounds), steps, bounds, best)
    _refine(model, xs, ys, best, refine_steps, candidates, bounds)
    found = torch.isfinite(best.norms)
    best.delta[~found] = 0.0
    delta[correct] = best.delta
    norms[correct] = best.norms
    return delta, norms


# ------------------------------------------------------------------------------- PGD

_LOSSES = ("ce", "margin", "alternate")


def _pgd_loss(name: str, y: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    if name == "ce":
        return lambda out: F.cross_entropy(out, y, reduction="none")
    return lambda out: -_margin(out, y)


def _random_start(x: torch.Tensor, eps: float, norm: str,
                  generator: torch.Generator) -> torch.Tensor:
    """Uniform sample of the L∞ cube or the L2 ball of radius ``eps``, like ``x``."""
    if norm == "linf":
        noise = torch.rand(x.shape, generator=generator, dtype=x.dtype, device="cpu")
        return ((2 * noise - 1) * eps).to(x.device)
    dim = x[0].numel()
    radius = torch.rand(x.shape[0], generator=generator, dtype=x.dtype, device="cpu")
    radius = eps * radius.pow(1.0 / dim).to(x.device)
    return _view(radius, x) * _random_direction(x, generator)


def _project_ball(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    scale = (eps / _norms(delta).clamp_min(1e-30)).clamp(max=1.0)
    return delta * _view(scale, delta)


def _pgd_step(delta: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, eps: float,
              norm: str, step_size: float, bounds: Bounds) -> torch.Tensor:
    direction = grad.sign() if norm == "linf" else _unit(grad)
    return _clip(x, _project_ball(delta + step_size * direction, eps, norm), bounds)


def _pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, norm: str,
         steps: int, step_size: float, restarts: int, loss: str, random_start: bool,
         bounds: Bounds, generator: torch.Generator, keep: str) -> torch.Tensor:
    found = _misclassified(model, x, y)
    adversarial = x.clone()
    best_gap = torch.full((x.shape[0],), -math.inf, dtype=x.dtype, device=x.device)
    for restart in range(restarts):
        objective = _pgd_loss(loss if loss != "alternate" else ("ce", "margin")[restart % 2], y)
        delta = torch.zeros_like(x)
        if random_start:
            delta = _clip(x, _random_start(x, eps, norm, generator), bounds)
        if keep == "last":
            for _ in range(steps):
                _, _, grad = _value_and_grad(objective, model, x + delta)
                delta = _pgd_step(delta, grad, x, eps, norm, step_size, bounds)
            adversarial = x + delta
            continue
        for step in range(steps + 1):
            logits, _, grad = _value_and_grad(objective, model, x + delta)
            # keep the first misclassified iterate; until then the one nearest to it
            gap = -_margin(logits, y)
            hit = (logits.argmax(dim=1) != y) & ~found
            take = hit | (~found & (gap > best_gap))
            adversarial = torch.where(_view(take, x), x + delta, adversarial)
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
    _check_count(function, "steps", steps, 1)
    _check_count(function, "restarts", restarts, 1)
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
    _check_common("pgd_attack", model, x, y, bounds)
    _check_pgd("pgd_attack", eps, norm, steps, step_size, restarts, loss, keep)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    alpha = 2.5 * eps / steps if step_size is None else step_size
    x = x.detach()
    parts = []
    with _eval_mode(model):
        for part in _chunks(x.shape[0], batch_size):
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
    _check_common("robust_accuracy", model, x, y, bounds)
    _check_pgd("robust_accuracy", eps, norm, steps, step_size, restarts, loss)
    if x.shape[0] == 0:
        raise InputError("robust_accuracy: expected at least one sample, got 0.")
    adversarial = pgd_attack(model, x, y, eps=eps, norm=norm, steps=steps,
                             step_size=step_size, restarts=restarts, loss=loss,
                             bounds=bounds, generator=generator, batch_size=batch_size)
    with _eval_mode(model):
        wrong = _misclassified(model, adversarial, y)
    return 1.0 - wrong.double().mean().item()
