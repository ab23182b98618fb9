"""Ensemble members from adv-lib, the maintained attack library of the DDN/ALMA/FMN authors.

adv-lib (Rony et al., BSD-3-Clause) implements each attack as its authors published it;
this module only adapts the calling convention of
:func:`numeric.attacks.minimum_norm_attack`:

- adv-lib attacks images in ``[0, 1]``: another box ``[low, high]`` is mapped onto it
  affinely (``u = (x − low) / (high − low)``; every L2 distance scales by
  ``high − low``, so the minimiser is the same); without a box the attacks run in the box
  ``[min x − r, max x + r]`` with ``r`` the range of the batch (a point found there is an
  adversarial example without a box too, so the radius is still achieved);
- their random restarts draw from torch's global generator: each call runs inside
  :func:`torch.random.fork_rng` seeded from the caller's ``generator``, so a call is
  deterministic given it and leaves the global state as it was;
- each returns adversarial points (the input where it found none); the ensemble
  re-verifies every one of them in float64.

adv-lib is an optional dependency (``pip install 'fimbound[attacks]'``); it is imported
only when one of these members runs.

References
----------
Rony, Hafemann, Oliveira, Ben Ayed, Sabourin, Granger (2019), "Decoupling Direction and
Norm for Efficient Gradient-Based L2 Adversarial Attacks and Defenses", CVPR (DDN).
Rony, Granger, Pedersoli, Ben Ayed (2021), "Augmented Lagrangian Adversarial Attacks",
ICCV (ALMA).
Pintor, Roli, Brendel, Biggio (2021), "Fast Minimum-norm Adversarial Attacks through
Adaptive Norm Constraints", NeurIPS (FMN).
Croce & Hein (2020), "Minimally distorted adversarial examples with a fast adaptive
boundary attack", ICML (FAB).
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from numeric.attacks._common import Bounds

__all__ = ["ADV_LIB_EXTRA", "ALMA_STEPS_FACTOR", "adv_lib_member", "fab_schedule"]

#: what a user installs to get the library members
ADV_LIB_EXTRA = "pip install 'fimbound[attacks]'"


class _Unit(nn.Module):
    """``u ↦ model(low + scale · u)`` in float32: the model seen on the unit box.

    adv-lib keeps some state in float32, so its attacks run on float32 ``u``; the model
    gets its own input dtype ``dtype`` and its logits come back as float32.
    """

    def __init__(self, model: Callable, low: float, scale: float, dtype: torch.dtype) -> None:
        super().__init__()
        self.function, self.low, self.scale, self.dtype = model, low, scale, dtype

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        z = u.to(self.dtype)
        if self.low != 0.0 or self.scale != 1.0:
            z = self.low + self.scale * z
        return self.function(z).float()


def _box(x: torch.Tensor, bounds: Bounds) -> tuple[float, float]:
    """The (low, high) box the library attacks run in (see the module notes)."""
    if bounds is not None:
        return float(bounds[0]), float(bounds[1])
    low, high = float(x.min()), float(x.max())
    reach = high - low if high > low else max(1.0, abs(high))
    return low - reach, high + reach


@contextmanager
def _seeded(generator: torch.Generator, device: torch.device) -> Iterator[None]:
    """Seed torch's global generators from ``generator`` for the block, then restore them."""
    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    cuda = device.type == "cuda"
    with torch.random.fork_rng(devices=[device] if cuda else []):
        torch.default_generator.manual_seed(seed)
        if cuda:
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        yield


def adv_lib_member(name: str) -> Callable[..., torch.Tensor]:
    """The ensemble member running adv-lib's attack ``name`` ('fmn', 'ddn', 'alma', 'fab').

    The member's signature is that of every member (see
    :func:`numeric.attacks.register_attack`); budgets: FMN and DDN run ``budget.steps``
    iterations and ALMA ``ALMA_STEPS_FACTOR · budget.steps`` (one forward and backward pass
    each); FAB follows :func:`fab_schedule`, each iteration costing ``K − 1`` backward and
    2 forward passes.
    """
    run = _RUNNERS[name]

    def member(model: Callable, x: torch.Tensor, y: torch.Tensor, *, start: torch.Tensor,
               budget, bounds: Bounds, generator: torch.Generator) -> torch.Tensor:
        with warnings.catch_warnings():  # adv-lib's own DeprecationWarning on import
            warnings.simplefilter("ignore", DeprecationWarning)
            attacks = importlib.import_module("adv_lib.attacks")
        low, high = _box(x, bounds)
        scale = high - low
        unit_model = _Unit(model, low, scale, x.dtype)
        u = ((x - low) / scale).clamp(0.0, 1.0).float()
        with _seeded(generator, x.device):
            adversarial = run(attacks, unit_model, u, y, budget).detach().to(x.dtype)
        return (low + scale * adversarial).clamp(low, high)

    member.__name__ = member.__qualname__ = f"adv_lib_{name}"
    member.__doc__ = f"adv-lib's {name.upper()} (L2) as an ensemble member."
    return member


def _fmn(attacks, model, u, y, budget) -> torch.Tensor:
    return attacks.fmn(model, u, y, norm=2, steps=budget.steps)


def _ddn(attacks, model, u, y, budget) -> torch.Tensor:
    return attacks.ddn(model, u, y, steps=budget.steps, levels=None)


#: ALMA's penalty and learning-rate schedules are laid out for 1,000 steps (Rony et al.
#: 2021); on the demo's models it gains more from 10x the steps than any member gains from
#: 3x, so it runs this many times the budget's steps
ALMA_STEPS_FACTOR = 10


def _alma(attacks, model, u, y, budget) -> torch.Tensor:
    return attacks.alma(model, u, y, num_steps=ALMA_STEPS_FACTOR * budget.steps,
                        distance="l2")


def fab_schedule(steps: int, restarts: int) -> tuple[int, int]:
    """(runs, iterations per run) of the FAB member: ``1 + 2 · restarts`` runs (from ``x``,
    then from random points) of ``max(1, 3 · steps // 10)`` iterations. FAB's projection
    steps converge in tens of iterations while its random restarts reach other boundaries:
    on the demo's models 5 runs of 30 iterations beat 3 runs of 100 at half the cost."""
    return 1 + 2 * restarts, max(1, 3 * steps // 10)


def _fab(attacks, model, u, y, budget) -> torch.Tensor:
    runs, iterations = fab_schedule(budget.steps, budget.restarts)
    return attacks.fab(model, u, y, norm=2, n_iter=iterations, restarts=runs)


_RUNNERS = {"fmn": _fmn, "ddn": _ddn, "alma": _alma, "fab": _fab}
