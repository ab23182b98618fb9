"""The minimum-norm L2 attack: an ensemble of attacks, every example verified in float64.

The reported radius of a sample is the smallest ``‖δ‖₂`` over the adversarial examples
that any member of the ensemble found and that a float64 copy of the model confirms
(:mod:`numeric.attacks.verify`). Members are registered by name in :data:`ATTACKS`;
:func:`register_attack` adds one.
"""

from __future__ import annotations

import importlib.util
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from numeric.attacks._common import (Bounds, check_common, check_count, chunks, eval_mode,
                                     view)
from numeric.attacks.library import ADV_LIB_EXTRA, adv_lib_member
from numeric.attacks.toolkit import refine, toolkit_attack
from numeric.attacks.verify import adversarial_float64, float64_model, verify_float64
from numeric.errors import InputError

__all__ = ["AttackResult", "AttackBudget", "AttackMember", "ATTACKS", "DEFAULT_ATTACKS",
           "FALLBACK_ATTACKS", "available_attacks", "register_attack", "minimum_norm_attack"]


@dataclass(frozen=True)
class AttackBudget:
    """The budget handed to every ensemble member.

    Attributes
    ----------
    steps : int
        Iterations of each gradient attack.
    restarts : int
        Extra runs from random starting points (members that restart).
    refine_steps, candidates : int
        Rounds and target classes of the ``refine`` member's boundary projections.
    """

    steps: int
    restarts: int
    refine_steps: int
    candidates: int


@dataclass(frozen=True)
class AttackMember:
    """A registered ensemble member.

    Attributes
    ----------
    name : str
    function : callable
        ``function(model, x, y, *, start, budget, bounds, generator) -> Tensor``: candidate
        adversarial points like ``x`` (rows equal to ``x`` where it found none). ``x`` is
        a batch the float64 model classifies as ``y``; ``start`` holds the best verified
        points of the members before it (``x`` where none yet, in ``x``'s dtype).
    requires : tuple of str
        Modules that must be importable for the member to run.
    install : str
        What to run to get them (named in the error when they are missing).
    min_classes : int
        The member is skipped (its norms are ``inf``) for models with fewer classes.
    """

    name: str
    function: Callable[..., torch.Tensor]
    requires: tuple[str, ...] = ()
    install: str = ""
    min_classes: int = 2

    @property
    def available(self) -> bool:
        return all(importlib.util.find_spec(module) is not None for module in self.requires)


@dataclass(frozen=True, eq=False)
class AttackResult:
    """Result of :func:`minimum_norm_attack` for a batch of B inputs.

    Attributes
    ----------
    norms : Tensor of shape (B,), float64
        The reported radius: ``‖adversarial − x‖₂`` for the smallest verified example; 0
        where ``x`` itself is misclassified, ``inf`` where no member found one. An upper
        bound on the true minimal radius (of the float64 model).
    delta : Tensor of shape (B, ...) like ``x``
        ``adversarial − x`` rounded to ``x``'s dtype (zero where none was found or ``x``
        is misclassified). ``x + delta`` is within one rounding of the verified point, so
        in float32 it can occasionally sit on the other side of the boundary; rely on
        ``norms`` and ``adversarial``.
    adversarial : Tensor of shape (B, ...), float64
        The verified adversarial examples themselves (``x`` where none): inside the box,
        and misclassified by the float64 copy of the model (this exact tensor was checked).
    success : BoolTensor of shape (B,)
        Whether ``norms`` is finite.
    found_by : tuple of str, length B
        The member whose example is the smallest (the first in ``attacks`` on a tie);
        ``"clean"`` where ``x`` is misclassified, ``"none"`` where nothing was found.
    member_norms : dict of str to Tensor of shape (B,), float64
        Each member's own verified radius (0 where ``x`` is misclassified, ``inf`` where
        it found nothing); ``refine``'s is the polished best of the members before it.
    seconds : dict of str to float
        Wall-clock seconds each member took (summed over batches), verification included.
    attacks : tuple of str
        The members that ran, in order.
    """

    norms: torch.Tensor
    delta: torch.Tensor
    adversarial: torch.Tensor
    success: torch.Tensor
    found_by: tuple[str, ...]
    member_norms: dict[str, torch.Tensor]
    seconds: dict[str, float]
    attacks: tuple[str, ...]


def _toolkit(model, x, y, *, start, budget, bounds, generator):
    return toolkit_attack(model, x, y, steps=budget.steps, restarts=budget.restarts,
                          bounds=bounds, generator=generator)


def _refine(model, x, y, *, start, budget, bounds, generator):
    if budget.refine_steps == 0:
        return start
    return refine(model, x, y, start, iterations=budget.refine_steps,
                  candidates=budget.candidates, bounds=bounds)


_ADV_LIB = ("adv_lib", "visdom")

#: the registered members, by name
ATTACKS: dict[str, AttackMember] = {
    "alma": AttackMember("alma", adv_lib_member("alma"), _ADV_LIB, ADV_LIB_EXTRA, 3),
    "ddn": AttackMember("ddn", adv_lib_member("ddn"), _ADV_LIB, ADV_LIB_EXTRA),
    "fmn": AttackMember("fmn", adv_lib_member("fmn"), _ADV_LIB, ADV_LIB_EXTRA),
    "fab": AttackMember("fab", adv_lib_member("fab"), _ADV_LIB, ADV_LIB_EXTRA),
    "toolkit": AttackMember("toolkit", _toolkit),
    "refine": AttackMember("refine", _refine),
}

#: the ensemble ``minimum_norm_attack`` runs by default (adv-lib installed)
DEFAULT_ATTACKS = ("toolkit", "alma", "fab", "refine")

#: the ensemble it runs when adv-lib is not installed (with a warning naming the extra)
FALLBACK_ATTACKS = ("toolkit", "refine")


def available_attacks() -> tuple[str, ...]:
    """Names of the registered members whose dependencies are installed."""
    return tuple(name for name, member in ATTACKS.items() if member.available)


def register_attack(name: str, function: Callable[..., torch.Tensor], *,
                    requires: Sequence[str] = (), install: str = "", min_classes: int = 2,
                    overwrite: bool = False) -> None:
    """Register an ensemble member under ``name`` (see :class:`AttackMember`).

    Raises
    ------
    InputError
        ``name`` is taken and ``overwrite`` is False, or ``function`` is not callable.

    Examples
    --------
    >>> def unchanged(model, x, y, *, start, budget, bounds, generator):
    ...     return x  # finds nothing
    >>> register_attack("nothing", unchanged)
    >>> "nothing" in ATTACKS
    True
    >>> del ATTACKS["nothing"]
    """
    if not isinstance(name, str) or not name:
        raise InputError(f"register_attack: expected a non-empty name, got {name!r}.")
    if name in ATTACKS and not overwrite:
        raise InputError(f"register_attack: expected a new name (or overwrite=True), got "
                         f"{name!r}, already registered.")
    if not callable(function):
        raise InputError(f"register_attack: expected a callable function, got "
                         f"{type(function).__name__}.")
    ATTACKS[name] = AttackMember(name, function, tuple(requires), install, min_classes)


def _members(attacks: Sequence[str] | None) -> tuple[AttackMember, ...]:
    function = "minimum_norm_attack"
    if attacks is None:
        default = tuple(ATTACKS[name] for name in DEFAULT_ATTACKS)
        if all(member.available for member in default):
            return default
        warnings.warn(f"{function}: adv-lib is not installed, so only the toolkit's own "
                      f"attack runs (weaker on some models); {ADV_LIB_EXTRA}.", stacklevel=3)
        return tuple(ATTACKS[name] for name in FALLBACK_ATTACKS)
    if isinstance(attacks, str) or not isinstance(attacks, Sequence) or not attacks:
        raise InputError(f"{function}: expected attacks as a non-empty sequence of names "
                         f"from {', '.join(ATTACKS)}, got {attacks!r}.")
    for name in attacks:
        if name not in ATTACKS:
            raise InputError(f"{function}: expected attack names from {', '.join(ATTACKS)}, "
                             f"got {name!r}.")
        member = ATTACKS[name]
        if not member.available:
            raise InputError(f"{function}: expected an installed attack, got {name!r}, "
                             f"which needs {', '.join(member.requires)}: {member.install}.")
    if len(set(attacks)) != len(attacks):
        raise InputError(f"{function}: expected distinct attack names, got {list(attacks)}.")
    return tuple(ATTACKS[name] for name in attacks)


def minimum_norm_attack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                        attacks: Sequence[str] | None = None, steps: int = 100,
                        restarts: int = 2, refine_steps: int = 5, candidates: int = 9,
                        bounds: Bounds = (0.0, 1.0), generator: torch.Generator | None = None,
                        batch_size: int | None = None) -> AttackResult:
    """Smallest L2 perturbation that changes the label, from an ensemble of attacks.

    For each sample the ensemble looks for ``δ`` minimising ``‖δ‖₂`` subject to
    ``max_{j≠y} f_j(x + δ) > f_y(x + δ)`` and ``x + δ ∈ [low, high]^d``. Each member runs
    on the samples the float64 model classifies as ``y``; every point it returns is
    re-verified on a float64 copy of the model and moved to the float64 boundary along its
    ray (:func:`numeric.attacks.verify.verify_float64`) before its norm counts; the
    reported radius is the smallest verified norm over the members. It is an achieved
    radius: an upper bound on the true minimum (an estimate of it, never a certificate).

    Members (``attacks``; :data:`ATTACKS`, :func:`register_attack`), with their budgets
    (``s = steps``, ``r = restarts``; one iteration is one forward and one backward pass
    of the batch unless stated):

    ``"alma"``
        adv-lib's ALMA-L2 (Rony et al. 2021): ``10 s`` iterations, the 1,000 its
        authors use at the default. Needs K >= 3 classes (skipped otherwise).
    ``"fab"``
        adv-lib's FAB-L2 (Croce & Hein 2020): ``1 + 2 r`` runs (from ``x``, then from
        random points) of ``3 s // 10`` iterations, each costing ``K − 1`` backward passes.
    ``"ddn"``, ``"fmn"``
        adv-lib's DDN (Rony et al. 2019) and FMN-L2 (Pintor et al. 2021): ``s``
        iterations each (not in the default: on the demo's models they add nothing to it).
    ``"toolkit"``
        the toolkit's own FMN and DDN from ``x`` and ``r`` FMN runs from random points,
        ``s`` iterations each, with step sizes relative to the current radius (so they do
        not depend on the input scale; :mod:`numeric.attacks.toolkit`). The strongest
        single member at equal steps on the demo's models; needs no library.
    ``"refine"``
        polishes the best example of the members before it (run it last): ``refine_steps``
        rounds of projections of ``x`` onto the boundary linearised at the current point
        (∩ box), towards the ``candidates`` most likely classes and the class the best
        example crosses into; each round costs ``candidates + 1`` backward and about 20
        times as many forward passes. Exact for affine classifiers.

    Every member's points then cost up to 33 float64 forward passes of verification.
    The default, :data:`DEFAULT_ATTACKS`, is toolkit, ALMA, FAB and refine: on the demo's
    eight models at the defaults, the share of samples on which any of adv-lib FMN, DDN
    and ALMA at 1,000 steps, FAB with 5 restarts or foolbox's C&W (9 x 1,000) finds a
    radius more than 1 % smaller is at most 2 % (``benchmarks/attacks.py``, whose figures
    are in ``benchmarks/RESULTS.md``). Without adv-lib the default is
    :data:`FALLBACK_ATTACKS` (toolkit and refine), with a warning naming the extra
    ``pip install 'fimbound[attacks]'``.

    Parameters
    ----------
    model : nn.Module
        Maps Tensor of shape (B, ...) to logits of shape (B, K). Evaluated in eval mode;
        each module's mode is restored afterwards; no parameter ``.grad`` is touched.
        Its floating parameters and buffers are cast to float64 for the verification
        (:func:`torch.func.functional_call`; the model itself is not modified).
    x : Tensor of shape (B, ...)
        Inputs, inside ``bounds``.
    y : LongTensor of shape (B,)
        Labels whose change counts as success (pass the predictions to measure the
        distance to the decision boundary).
    attacks : sequence of str, optional
        The ensemble members, run in this order; default see above.
    steps : int
        The iteration budget ``s`` of the members (see above). At the default the
        ensemble costs about ``1000 + 400 + 150 (K − 1)`` gradient passes per batch plus
        the refinement.
    restarts : int
        The restart budget ``r`` of FAB and the toolkit (see above).
    refine_steps : int
        Rounds of linearised-boundary projections of the ``refine`` member (0 turns it
        into a no-op).
    candidates : int
        Classes (largest logits at ``x``) the refinement projects towards.
    bounds : (float, float) or None
        The box every adversarial example stays in; ``None`` for no box.
    generator : torch.Generator, optional
        The only source of randomness (CPU): the toolkit's random starts and, through
        :func:`torch.random.fork_rng`, the library members' global-RNG draws. Default a
        fresh generator seeded 0, so a call on the CPU is deterministic either way.
    batch_size : int, optional
        Attack at most this many samples at once (the generator is shared, in order).

    Returns
    -------
    AttackResult
        ``norms`` (B,), ``delta`` and ``adversarial`` (B, ...), ``success``, per-sample
        ``found_by``, per-member ``member_norms`` and ``seconds``, the ``attacks`` run.

    Raises
    ------
    InputError
        Malformed ``x`` or ``y``, ``x`` outside ``bounds``, a count out of range, an
        unknown attack name, or an attack whose library is not installed.

    References
    ----------
    Rony, Granger, Pedersoli, Ben Ayed (2021), "Augmented Lagrangian Adversarial Attacks",
    ICCV (ALMA). Croce & Hein (2020), "Minimally distorted adversarial examples with a
    fast adaptive boundary attack", ICML (FAB). Pintor, Roli, Brendel, Biggio (2021),
    "Fast Minimum-norm Adversarial Attacks through Adaptive Norm Constraints", NeurIPS
    (FMN). Rony et al. (2019), "Decoupling Direction and Norm for Efficient Gradient-Based
    L2 Adversarial Attacks and Defenses", CVPR (DDN). Moosavi-Dezfooli, Fawzi, Frossard
    (2016), "DeepFool", CVPR (the linearised projections of refine).

    Examples
    --------
    >>> import torch
    >>> model = torch.nn.Linear(2, 2).double()
    >>> with torch.no_grad():
    ...     _ = model.weight.copy_(torch.tensor([[1.0, 0.0], [-1.0, 0.0]]))
    ...     _ = model.bias.copy_(torch.tensor([-0.5, 0.5]))
    >>> x = torch.tensor([[0.8, 0.5]], dtype=torch.float64)
    >>> result = minimum_norm_attack(model, x, torch.tensor([0]), steps=20,
    ...                              attacks=("toolkit", "refine"))
    >>> round(result.norms.item(), 6)  # the margin 0.6 over ‖w_0 − w_1‖ = 2
    0.3
    >>> result.found_by
    ('toolkit',)
    """
    function = "minimum_norm_attack"
    check_common(function, model, x, y, bounds)
    check_count(function, "steps", steps, 1)
    check_count(function, "restarts", restarts, 0)
    check_count(function, "refine_steps", refine_steps, 0)
    check_count(function, "candidates", candidates, 1)
    if batch_size is not None:
        check_count(function, "batch_size", batch_size, 1)
    members = _members(attacks)
    if generator is None:
        generator = torch.Generator().manual_seed(0)
    budget = AttackBudget(steps, restarts, refine_steps, candidates)
    x = x.detach()
    seconds = {member.name: 0.0 for member in members}
    parts = []
    with eval_mode(model):
        model64 = float64_model(model)
        for part in chunks(x.shape[0], batch_size):
            parts.append(_ensemble(model, model64, x[part], y[part], members, budget,
                                   bounds, generator, seconds))
    adversarial = torch.cat([p[0] for p in parts])
    norms = torch.cat([p[1] for p in parts])
    names = tuple(member.name for member in members)
    return AttackResult(
        norms=norms, delta=(adversarial - x.double()).to(x.dtype), adversarial=adversarial,
        success=torch.isfinite(norms), found_by=tuple(n for p in parts for n in p[2]),
        member_norms={name: torch.cat([p[3][name] for p in parts]) for name in names},
        seconds=seconds, attacks=names)


def _ensemble(model: nn.Module, model64: Callable, x: torch.Tensor, y: torch.Tensor,
              members: tuple[AttackMember, ...], budget: AttackBudget, bounds: Bounds,
              generator: torch.Generator, seconds: dict[str, float]):
    """One batch: (adversarial (B, ...), norms (B,), found_by, member norms)."""
    batch = x.shape[0]
    adversarial = x.to(torch.float64, copy=True)  # never a view of the caller's x
    norms = torch.full((batch,), math.inf, dtype=torch.float64, device=x.device)
    member_norms = {member.name: norms.clone() for member in members}
    found_by = ["none"] * batch
    clean = adversarial_float64(model64, x, y) if batch else norms.bool()
    norms[clean] = 0.0
    for name in member_norms:
        member_norms[name][clean] = 0.0
    for row in clean.nonzero().flatten().tolist():
        found_by[row] = "clean"
    rows = (~clean).nonzero().flatten()
    if rows.numel() == 0:
        return adversarial, norms, found_by, member_norms
    xs, ys = x[rows], y[rows]
    num_classes = model64(xs[:1]).shape[1]
    best, best_norms = xs.double(), torch.full((len(rows),), math.inf, dtype=torch.float64,
                                               device=x.device)
    for member in members:
        if num_classes < member.min_classes:
            continue
        began = time.perf_counter()
        start = torch.where(view(torch.isfinite(best_norms), xs), best.to(xs.dtype), xs)
        points = member.function(model, xs, ys, start=start, budget=budget, bounds=bounds,
                                 generator=generator)
        verified, verified_norms = verify_float64(model64, xs, ys, points, bounds)
        seconds[member.name] += time.perf_counter() - began
        member_norms[member.name][rows] = verified_norms
        better = verified_norms < best_norms
        best = torch.where(view(better, best), verified, best)
        best_norms = torch.where(better, verified_norms, best_norms)
        for index in better.nonzero().flatten().tolist():
            found_by[int(rows[index])] = member.name
    adversarial[rows] = best
    norms[rows] = best_norms
    return adversarial, norms, found_by, member_norms
