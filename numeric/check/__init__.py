"""The main job: bounds vs measured Fisher spectra vs adversarial vulnerability.

Layout (data flows top to bottom; only :mod:`~numeric.check.pipeline` and
:mod:`~numeric.check.run` use torch):

:mod:`~numeric.check.results`
    the data: :class:`CheckSettings`, :class:`ModelInfo`, :class:`ModelResult`,
    :class:`CheckResult` and their JSON round-trip.
:mod:`~numeric.check.pipeline`
    the computing: per-model certified constants (one trace per model) and the per-sample
    stages (exact spectrum, local bound, black-box estimate, attack, PGD, certified
    radius).
:mod:`~numeric.check.store`
    the results log in ``OUT/.progress``, keyed on the weights' hash and the settings.
:mod:`~numeric.check.theory`
    the family knowledge behind the theoretical ranking.
:mod:`~numeric.check.analysis`, :mod:`~numeric.check.report`, :mod:`~numeric.check.figures`
    statistics, ``report.md`` / ``results.json`` and figures, from results only.
:mod:`~numeric.check.run`
    the orchestration used by ``fimbound check`` and ``fimbound demo``
    (:func:`run_check`) and ``fimbound report`` (:func:`rebuild_report`).

Soundness is a hard requirement: every measured ``λ_max`` must be at most the global bound
and its own local bound, and every certified radius at most the attack radius; a violation
is reported by sample and makes ``fimbound check`` exit with status 3.
"""

from __future__ import annotations

from theory._lazy import lazy_names
from numeric.check.results import (CheckResult, CheckSettings, ModelInfo, ModelResult,
                                   RunInfo, json_ready)

#: public name -> submodule (imported on first use: most need torch or scipy)
_LAZY = {
    "ModelToCheck": "numeric.check.pipeline",
    "validate_model": "numeric.check.pipeline",
    "run_check": "numeric.check.run",
    "rebuild_report": "numeric.check.run",
    "exit_status": "numeric.check.run",
    "EXIT_UNSOUND": "numeric.check.run",
    "analyse": "numeric.check.analysis",
    "write_report": "numeric.check.report",
    "summary_table": "numeric.check.report",
}

__all__ = ["CheckResult", "CheckSettings", "ModelInfo", "ModelResult", "RunInfo",
           "json_ready", *sorted(_LAZY)]


__getattr__, __dir__ = lazy_names(__name__, _LAZY, globals())
