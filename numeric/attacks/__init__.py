"""Adversarial attacks: the minimum-norm L2 ensemble (the ground-truth radius) and PGD.

Every attack measures the deployed network: the model is put in eval mode for the attack
and every module is restored to its own mode afterwards; gradients are taken with respect
to the input only, so no parameter ``.grad`` is touched (the attacks can run inside
training). Inputs are images: every adversarial example stays in the box ``bounds``
(default ``[0, 1]``, the range of :func:`numeric.data.load_data`); ``bounds=None``
removes the box.

Layout (one topic per module):

:mod:`numeric.attacks.minimum_norm`
    :func:`minimum_norm_attack`: the ensemble, its member registry (:data:`ATTACKS`,
    :func:`register_attack`) and :class:`AttackResult`.
:mod:`numeric.attacks.library`
    members from adv-lib (ALMA, DDN, FMN, FAB), an optional dependency.
:mod:`numeric.attacks.toolkit`
    the toolkit's own members: its FMN/DDN ensemble and the boundary-projection polish.
:mod:`numeric.attacks.verify`
    float64 re-verification of every adversarial example before its norm counts.
:mod:`numeric.attacks.pgd`
    :func:`pgd_attack` and :func:`robust_accuracy`.

Why an ensemble of library attacks: independent minimum-norm attacks beat any single one
on some samples (Croce & Hein 2020; Rony et al. 2021 compare them), and the maintained
implementations by the attacks' authors are stronger than a re-implementation.
"""

from numeric.attacks.minimum_norm import (ATTACKS, DEFAULT_ATTACKS, FALLBACK_ATTACKS,
                                          AttackBudget, AttackMember, AttackResult,
                                          available_attacks, minimum_norm_attack,
                                          register_attack)
from numeric.attacks.pgd import pgd_attack, robust_accuracy

__all__ = ["AttackResult", "AttackBudget", "AttackMember", "ATTACKS", "DEFAULT_ATTACKS",
           "FALLBACK_ATTACKS", "available_attacks", "register_attack", "minimum_norm_attack",
           "pgd_attack", "robust_accuracy"]
