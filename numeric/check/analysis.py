"""Statistics of a check: soundness, tightness, correlations and rankings.

Correlations use :func:`scipy.stats.spearmanr` and :func:`scipy.stats.kendalltau` with
percentile bootstrap 95% intervals (:func:`scipy.stats.bootstrap`, paired resampling of
samples). Rankings order models from most to least robust by up to four criteria — the
closed-form family bound (:mod:`numeric.check.theory`), the instantiated certified bound,
the mean measured ``λ_max`` and the median attack radius — and compare every pair with
Kendall's τ. Only a pair involving a measured criterion gets a bootstrap interval (from
resampling the samples); two bound-based rankings do not depend on the samples, so their
τ is exact.

Every statistic copes with what real runs produce: zeros, infinities (an attack that finds
no adversarial, a model without a finite global bound), NaNs, one sample, one class, one
model, all samples misclassified. An undefined statistic is NaN (shown as "–" and
explained in the report), never an exception. Infinite attack radii are kept in rank
statistics (they are the largest radii); NaNs are left out.
"""

from __future__ import annotations

import math
import warnings
from itertools import combinations

import numpy as np
from scipy import stats

from numeric.check.results import CheckResult, ModelResult

__all__ = ["analyse", "soundness", "correlation", "rankings", "ROUNDING",
           "SOUNDNESS_CHECKS", "MEASURED_CRITERIA"]

#: Relative slack forgiven when comparing a measurement with a bound: floating-point
#: rounding of the measured value only (float64 eigensolvers are accurate to ~1e-13).
ROUNDING = 1e-9

#: Comparisons of a soundness check: ``(kind, measured key, bound key)``; a bound key
#: ``"info.X"`` is the model constant ``X``. Each must satisfy measured <= bound.
#: A new certified quantity is one line here.
SOUNDNESS_CHECKS: tuple[tuple[str, str, str], ...] = (
    ("global", "lambda_max", "info.global_bound"),
    ("local", "lambda_max", "local_bound"),
    ("radius", "certified_radius", "attack_radius"),
    ("global radius", "certified_radius_global", "attack_radius"),
    ("linear radius", "certified_radius_linear", "attack_radius"),
    ("region", "lambda_max", "region_bound"),
)

#: Ranking criteria that depend on the samples (the others are exact).
MEASURED_CRITERIA = ("measured", "attack")


def _values(records: list[dict], key: str) -> np.ndarray:
    """The field ``key`` of every record as floats (a missing or non-numeric value: NaN)."""
    out = np.full(len(records), np.nan)
    for i, record in enumerate(records):
        try:
            out[i] = float(record[key])
        except (KeyError, TypeError, ValueError):
            pass
    return out


def _known(values: np.ndarray) -> np.ndarray:
    return values[~np.isnan(values)]


def _median(values: np.ndarray) -> float:
    known = _known(values)
    return float(np.median(known)) if len(known) else math.nan


def _mean(values: np.ndarray) -> float:
    known = _known(values)
    if not len(known):
        return math.nan
    with np.errstate(invalid="ignore", over="ignore"):
        return float(np.mean(known))


def _max(values: np.ndarray) -> float:
    known = _known(values)
    return float(np.max(known)) if len(known) else math.nan


def _ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator`` for bounds over measurements: NaN when undefined
    (either NaN, 0/0, inf/inf), inf for a positive number over 0."""
    if math.isnan(numerator) or math.isnan(denominator):
        return math.nan
    if denominator == 0:
        return math.inf if numerator > 0 else math.nan
    if math.isinf(numerator) and math.isinf(denominator):
        return math.nan
    return numerator / denominator


def _ratios(numerators: np.ndarray, denominators: np.ndarray) -> np.ndarray:
    return np.array([_ratio(float(a), float(b)) for a, b in zip(numerators, denominators)])


def _bound_of(model: ModelResult, record: dict, key: str) -> float:
    if key.startswith("info."):
        return float(getattr(model.info, key[5:]))
    try:
        return float(record[key])
    except (KeyError, TypeError, ValueError):
        return math.nan


def soundness(result: CheckResult) -> dict:
    """Every violation of :data:`SOUNDNESS_CHECKS`, by sample.

    A bound that is NaN next to a known measurement is a violation (it certifies
    nothing); a NaN measurement is counted in ``unmeasured`` and is no violation; a bound
    the run did not compute (its key absent or ``None``: records of older runs, the region
    stage switched off) is no comparison.
    """
    violations, checked, unmeasured = [], 0, 0
    for model in result.models:
        for record in model.records:
            for kind, measured_key, bound_key in SOUNDNESS_CHECKS:
                if not bound_key.startswith("info.") and record.get(bound_key) is None:
                    continue
                try:
                    measured = float(record[measured_key])
                except (KeyError, TypeError, ValueError):
                    measured = math.nan
                bound = _bound_of(model, record, bound_key)
                if math.isnan(measured):
                    unmeasured += 1
                    continue
                checked += 1
                above = measured > bound * (1 + ROUNDING) if bound >= 0 else measured > bound
                if math.isnan(bound) or above:
                    violations.append({"model": model.info.name, "index": record.get("index"),
                                       "kind": kind, "measured": measured, "bound": bound})
    return {"violations": violations, "sound": not violations, "checked": checked,
            "unmeasured": unmeasured}


def _pearson_last_axis(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a - a.mean(axis=-1, keepdims=True)
    b = b - b.mean(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (a * b).sum(-1) / np.sqrt((a * a).sum(-1) * (b * b).sum(-1))


def _spearman(u: np.ndarray, v: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman's rho along ``axis`` (vectorised over resamples; ties get mid-ranks)."""
    u, v = np.moveaxis(u, axis, -1), np.moveaxis(v, axis, -1)
    return _pearson_last_axis(stats.rankdata(u, axis=-1), stats.rankdata(v, axis=-1))


def _kendall(u: np.ndarray, v: np.ndarray, axis: int = -1) -> np.ndarray:
    """Kendall's tau-b along ``axis``: sum s_u s_v / sqrt(sum s_u^2 sum s_v^2) over pairs,
    s the sign of the pairwise differences (the tie-corrected tau of scipy.stats.kendalltau)."""
    u, v = np.moveaxis(u, axis, -1), np.moveaxis(v, axis, -1)
    with np.errstate(invalid="ignore"):
        su = np.sign(u[..., :, None] - u[..., None, :])
        sv = np.sign(v[..., :, None] - v[..., None, :])
    su, sv = np.nan_to_num(su), np.nan_to_num(sv)  # inf - inf: a tie
    with np.errstate(invalid="ignore", divide="ignore"):
        return (su * sv).sum((-2, -1)) / np.sqrt((su * su).sum((-2, -1))
                                                 * (sv * sv).sum((-2, -1)))


def _ci(statistic, data: tuple[np.ndarray, ...], resamples: int, seed: int) -> list[float]:
    """Percentile bootstrap 95% interval (scipy). Resamples repeat samples, so ties are
    expected and scipy's warnings about them are silenced; when the interval is undefined
    (for instance every resample constant) it comes back as NaN and reports show '–'."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = stats.bootstrap(data, statistic, paired=True, vectorized=True,
                                  n_resamples=resamples, method="percentile", batch=50,
                                  random_state=np.random.default_rng(seed))
    except ValueError:
        return [math.nan, math.nan]
    low, high = res.confidence_interval
    return [float(low), float(high)]


def _undefined(n: int, reason: str) -> dict:
    return {"n": n, "reason": reason,
            "spearman": math.nan, "spearman_ci": [math.nan, math.nan], "spearman_p": math.nan,
            "kendall": math.nan, "kendall_ci": [math.nan, math.nan], "kendall_p": math.nan}


def correlation(a: np.ndarray, b: np.ndarray, *, resamples: int = 2000, seed: int = 0
                ) -> dict:
    """Spearman ρ and Kendall τ of ``a`` and ``b`` with bootstrap 95% intervals.

    Pairs with a NaN are left out; infinities are kept (they rank highest). Undefined
    (fewer than 3 pairs, or one side constant): NaN statistics and a ``reason``.
    """
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = ~(np.isnan(a) | np.isnan(b))
    a, b = a[keep], b[keep]
    if len(a) < 3:
        return _undefined(len(a), f"{len(a)} sample(s) with both values; need 3")
    if len(np.unique(a)) < 2 or len(np.unique(b)) < 2:
        return _undefined(len(a), "one of the two is constant")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rho = stats.spearmanr(a, b)
        tau = stats.kendalltau(a, b)
    return {"n": int(len(a)), "reason": "",
            "spearman": float(rho.statistic), "spearman_p": float(rho.pvalue),
            "spearman_ci": _ci(_spearman, (a, b), resamples, seed),
            "kendall": float(tau.statistic), "kendall_p": float(tau.pvalue),
            "kendall_ci": _ci(_kendall, (a, b), resamples, seed)}


def _order(names: list[str], scores: list[float]) -> list[str]:
    """Names from most to least robust (smaller score first; NaN scores last)."""
    keyed = sorted(zip(scores, names), key=lambda p: (math.isnan(p[0]), p[0], p[1]))
    return [name for _, name in keyed]


def _attack_score(radii: np.ndarray) -> float:
    """Larger radius = more robust, so the score is minus the median radius."""
    median = _median(radii)
    return -median if not math.isnan(median) else math.nan


def _tau(first: list[float], second: list[float]) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        value = stats.kendalltau(first, second).statistic
    return float(value)


def _bootstrap_scores(lam: list[np.ndarray], rad: list[np.ndarray], resamples: int,
                      seed: int) -> dict[str, np.ndarray]:
    """The measured criteria's scores on ``resamples`` resamples of each model's samples:
    ``{criterion: array (resamples, models)}`` (NaN where a resample has nothing)."""
    rng = np.random.default_rng(seed)
    measured = np.full((resamples, len(lam)), np.nan)
    attack = np.full((resamples, len(lam)), np.nan)
    for m, (values, radii) in enumerate(zip(lam, rad)):
        if not len(values):
            continue
        picks = rng.integers(0, len(values), (resamples, len(values)))
        with warnings.catch_warnings(), np.errstate(invalid="ignore"):
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN resamples
            measured[:, m] = np.nanmean(values[picks], axis=1)
            attack[:, m] = -np.nanmedian(radii[picks], axis=1)
    return {"measured": measured, "attack": attack}


def rankings(result: CheckResult, theory_scores: dict[str, float] | None = None, *,
             resamples: int = 500, seed: int = 0) -> dict:
    """Rankings of the models and Kendall τ between every pair of criteria.

    ``theory_scores`` maps model name → closed-form family bound (smaller = more robust);
    the theory ranking is given only when every model has one. A pair of criteria gets a
    bootstrap interval only when one of them is in :data:`MEASURED_CRITERIA`
    (``"exact": True`` marks the others).
    """
    names = [m.info.name for m in result.models]
    if len(names) < 2:
        return {"orders": {}, "scores": {}, "agreement": [],
                "reason": "rankings need at least two models"}
    lam = [_values(m.records, "lambda_max") for m in result.models]
    rad = [_values(m.records, "attack_radius") for m in result.models]
    scores = {"bound": [float(m.info.global_bound) for m in result.models],
              "measured": [_mean(v) for v in lam],
              "attack": [_attack_score(v) for v in rad]}
    if theory_scores and all(n in theory_scores for n in names):
        scores = {"theory": [float(theory_scores[n]) for n in names]} | scores
    orders = {kind: _order(names, s) for kind, s in scores.items()}

    boot = _bootstrap_scores(lam, rad, resamples, seed)
    agreement = []
    for first, second in combinations(scores, 2):
        entry = {"first": first, "second": second,
                 "kendall": _tau(scores[first], scores[second])}
        if first in MEASURED_CRITERIA or second in MEASURED_CRITERIA:
            a = boot.get(first, np.tile(scores[first], (resamples, 1)))
            b = boot.get(second, np.tile(scores[second], (resamples, 1)))
            taus = _kendall(np.nan_to_num(a, nan=np.inf), np.nan_to_num(b, nan=np.inf))
            taus = taus[np.isfinite(taus)]
            entry["kendall_ci"] = ([float(np.quantile(taus, 0.025)),
                                    float(np.quantile(taus, 0.975))]
                                   if len(taus) else [math.nan, math.nan])
            entry["exact"] = False
        else:
            entry["kendall_ci"] = None
            entry["exact"] = True
        agreement.append(entry)
    return {"orders": orders, "scores": scores, "agreement": agreement, "reason": ""}


def _model_statistics(model: ModelResult, settings) -> dict:
    records = model.records
    lam = _values(records, "lambda_max")
    local = _values(records, "local_bound")
    rad = _values(records, "attack_radius")
    blackbox = _values(records, "blackbox")
    correct = _values(records, "correct")
    max_lam = _max(lam)
    positive = lam > 0
    with np.errstate(invalid="ignore", over="ignore"):
        blackbox_error = np.abs(blackbox[positive] - lam[positive]) / lam[positive]
    robust_keys = sorted({k for r in records for k in r if k.startswith("pgd_")})
    found_by: dict[str, int] = {}
    for record in records:
        if "attack_found_by" in record:
            member = str(record["attack_found_by"])
            found_by[member] = found_by.get(member, 0) + 1
    seconds: dict[str, float] = {}
    for record in records:
        for stage, value in (record.get("seconds") or {}).items():
            seconds[stage] = seconds.get(stage, 0.0) + float(value)
    return {
        "samples": len(records),
        "accuracy": _mean(correct),
        "lambda_max_mean": _mean(lam), "lambda_max_max": max_lam,
        "lambda_max_zero": int(np.sum(lam == 0)),
        "global_over_max": _ratio(float(model.info.global_bound), max_lam),
        "plain_over_max": _ratio(float(model.info.plain_bound), max_lam),
        "local_over_measured_median": _median(_ratios(local, lam)),
        "blackbox_relative_error_median": _median(blackbox_error),
        "attack_radius_median": _median(rad),
        "attack_found": int(np.sum(np.isfinite(rad))),
        "attack_found_by": found_by,
        "certified_radius_median": _median(_values(records, "certified_radius")),
        "certified_radius_global_median": _median(_values(records,
                                                          "certified_radius_global")),
        "certified_over_attack_median": _median(_ratios(_values(records, "certified_radius"),
                                                        rad)),
        "region_over_measured_median": _median(_ratios(_values(records, "region_bound"),
                                                       lam)),
        "robust_accuracy": {k: _mean(_values(records, k)) for k in robust_keys},
        "correlation_lambda_vs_radius": correlation(
            lam, rad, resamples=settings.bootstrap, seed=settings.seed),
        "seconds": seconds,
    }


def _theory(result: CheckResult) -> tuple[dict[str, float], str]:
    from numeric.check.theory import theory_scores
    try:
        return theory_scores([m.info for m in result.models])
    except Exception as err:  # never lose a finished check to the symbolic side
        from numeric.validation import first_line
        return {}, (f"No theory ranking: computing it failed ({type(err).__name__}: "
                    f"{first_line(err)}); this is a bug.")


def analyse(result: CheckResult, theory_scores: dict[str, float] | None = None) -> dict:
    """Soundness, tightness, correlations, rankings and robust accuracy of a check.

    ``theory_scores`` default: :func:`numeric.check.theory.theory_scores` of the models.
    """
    settings = result.settings
    note = ""
    if theory_scores is None:
        theory_scores, note = _theory(result)
    per_model = {m.info.name: _model_statistics(m, settings) for m in result.models}
    across = None
    if len(result.models) >= 3:
        across = correlation(
            np.array([per_model[m.info.name]["lambda_max_mean"] for m in result.models]),
            np.array([per_model[m.info.name]["attack_radius_median"]
                      for m in result.models]),
            resamples=settings.bootstrap, seed=settings.seed)
    ranks = rankings(result, theory_scores or None, resamples=min(settings.bootstrap, 500),
                     seed=settings.seed)
    ranks["theory_note"] = note
    ranks["theory_scores"] = theory_scores or {}
    return {"soundness": soundness(result), "models": per_model, "across_models": across,
            "rankings": ranks}
