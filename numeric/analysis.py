"""Statistics of a check: soundness, tightness, correlations and rankings.

Correlations use :func:`scipy.stats.spearmanr` and :func:`scipy.stats.kendalltau` with
percentile bootstrap 95% intervals (:func:`scipy.stats.bootstrap`, paired resampling of
samples). Rankings order models from most to least robust by four criteria — the closed-form
family bound, the instantiated certified bound, the mean measured ``λ_max`` and the mean
attack radius — and compare every pair with Kendall's τ; its interval comes from resampling
the samples (the two bound-based rankings do not depend on the samples, the measured ones do).
"""

from __future__ import annotations

import math
import warnings
from itertools import combinations
from typing import TYPE_CHECKING

import numpy as np
from scipy import stats

if TYPE_CHECKING:
    from numeric.check import CheckResult

__all__ = ["analyse", "soundness", "correlation", "rankings", "ROUNDING"]

#: Relative slack forgiven when comparing a measurement with a bound: floating-point
#: rounding of the measured value only (float64 eigensolvers are accurate to ~1e-13).
ROUNDING = 1e-9


def _values(records: list[dict], key: str) -> np.ndarray:
    return np.array([float(r[key]) for r in records], dtype=float)


def soundness(result: "CheckResult") -> dict:
    """Every violation of global bound, local bound and certified radius, by sample."""
    violations = []
    for model in result.models:
        info = model.info
        for r in model.records:
            lam = r["lambda_max"]
            if lam > info.global_bound * (1 + ROUNDING):
                violations.append({"model": info.name, "index": r["index"], "kind": "global",
                                   "measured": lam, "bound": info.global_bound})
            if lam > r["local_bound"] * (1 + ROUNDING):
                violations.append({"model": info.name, "index": r["index"], "kind": "local",
                                   "measured": lam, "bound": r["local_bound"]})
            if r["certified_radius"] > r["attack_radius"] * (1 + ROUNDING):
                violations.append({"model": info.name, "index": r["index"],
                                   "kind": "radius", "measured": r["attack_radius"],
                                   "bound": r["certified_radius"]})
    return {"violations": violations, "sound": not violations,
            "checked": sum(3 * len(m.records) for m in result.models)}


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
    su = np.sign(u[..., :, None] - u[..., None, :])
    sv = np.sign(v[..., :, None] - v[..., None, :])
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


def correlation(a: np.ndarray, b: np.ndarray, *, resamples: int = 2000, seed: int = 0
                ) -> dict:
    """Spearman ρ and Kendall τ of ``a`` and ``b`` with bootstrap 95% intervals."""
    finite = np.isfinite(a) & np.isfinite(b)
    a, b = a[finite], b[finite]
    out = {"n": int(len(a))}
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return out | {"spearman": math.nan, "spearman_ci": [math.nan, math.nan],
                      "spearman_p": math.nan,
                      "kendall": math.nan, "kendall_ci": [math.nan, math.nan],
                      "kendall_p": math.nan}
    rho = stats.spearmanr(a, b)
    tau = stats.kendalltau(a, b)
    return out | {
        "spearman": float(rho.statistic), "spearman_p": float(rho.pvalue),
        "spearman_ci": _ci(_spearman, (a, b), resamples, seed),
        "kendall": float(tau.statistic), "kendall_p": float(tau.pvalue),
        "kendall_ci": _ci(_kendall, (a, b), resamples, seed),
    }


def _order(names: list[str], scores: list[float], reverse: bool = False) -> list[str]:
    """Names from most to least robust; smaller score is more robust unless reverse."""
    keyed = sorted(zip(scores, names), reverse=reverse)
    return [name for _, name in keyed]


def rankings(result: "CheckResult", theory_scores: dict[str, float] | None = None, *,
             resamples: int = 2000, seed: int = 0) -> dict:
    """Rankings of the models and Kendall τ between every pair with a bootstrap interval.

    ``theory_scores`` maps model name → closed-form family bound (smaller = more robust);
    models without a family are left out of that ranking.
    """
    names = [m.info.name for m in result.models]
    if len(names) < 2:
        return {"orders": {}, "agreement": []}
    lam = [_values(m.records, "lambda_max") for m in result.models]
    rad = [_values(m.records, "attack_radius") for m in result.models]
    scores = {
        "bound": [m.info.global_bound for m in result.models],
        "measured": [float(np.mean(v)) for v in lam],
        # larger radius = more robust, so rank by the negative radius
        "attack": [-float(np.median(v[np.isfinite(v)])) if np.isfinite(v).any()
                   else math.inf for v in rad],
    }
    if theory_scores and all(n in theory_scores for n in names):
        scores = {"theory": [theory_scores[n] for n in names]} | scores
    orders = {kind: _order(names, s) for kind, s in scores.items()}

    rng = np.random.default_rng(seed)
    boot: dict[str, list[list[float]]] = {k: [] for k in scores}
    for _ in range(resamples):
        picks = [rng.integers(0, len(v), len(v)) for v in lam]
        boot_scores = dict(scores)
        boot_scores["measured"] = [float(np.mean(v[i])) for v, i in zip(lam, picks)]
        boot_scores["attack"] = [-float(np.median(v[i][np.isfinite(v[i])]))
                                 if np.isfinite(v[i]).any() else math.inf
                                 for v, i in zip(rad, picks)]
        for k in scores:
            boot[k].append(boot_scores[k])
    agreement = []
    for first, second in combinations(scores, 2):
        tau = stats.kendalltau(scores[first], scores[second]).statistic
        taus = [stats.kendalltau(a, b).statistic for a, b in zip(boot[first], boot[second])]
        taus = np.array([t for t in taus if np.isfinite(t)])
        ci = ([float(np.quantile(taus, 0.025)), float(np.quantile(taus, 0.975))]
              if len(taus) else [math.nan, math.nan])
        agreement.append({"first": first, "second": second, "kendall": float(tau),
                          "kendall_ci": ci})
    return {"orders": orders, "scores": scores, "agreement": agreement}


def analyse(result: "CheckResult", theory_scores: dict[str, float] | None = None) -> dict:
    """Soundness, tightness, correlations, rankings and robust accuracy of a check."""
    settings = result.settings
    per_model = {}
    for m in result.models:
        lam = _values(m.records, "lambda_max")
        local = _values(m.records, "local_bound")
        rad = _values(m.records, "attack_radius")
        bb = _values(m.records, "blackbox")
        robust_keys = [k for k in m.records[0] if k.startswith("pgd_")] if m.records else []
        per_model[m.info.name] = {
            "samples": len(m.records),
            "accuracy": float(np.mean([r["correct"] for r in m.records])),
            "lambda_max_mean": float(lam.mean()), "lambda_max_max": float(lam.max()),
            "global_over_max": m.info.global_bound / float(lam.max())
            if lam.max() > 0 else math.inf,
            "plain_over_max": m.info.plain_bound / float(lam.max())
            if lam.max() > 0 else math.inf,
            "local_over_measured_median": float(np.median(local / lam)),
            "blackbox_relative_error_median": float(np.median(np.abs(bb - lam) / lam)),
            "attack_radius_median": float(np.median(rad[np.isfinite(rad)]))
            if np.isfinite(rad).any() else math.inf,
            "certified_radius_median": float(np.median(_values(m.records,
                                                                "certified_radius"))),
            "robust_accuracy": {k: float(np.mean([r[k] for r in m.records]))
                                for k in robust_keys},
            "correlation_lambda_vs_radius": correlation(
                lam, rad, resamples=settings.bootstrap, seed=settings.seed),
        }
    across = None
    if len(result.models) >= 3:
        across = correlation(
            np.array([per_model[m.info.name]["lambda_max_mean"] for m in result.models]),
            np.array([per_model[m.info.name]["attack_radius_median"]
                      for m in result.models]),
            resamples=settings.bootstrap, seed=settings.seed)
    return {"soundness": soundness(result), "models": per_model, "across_models": across,
            "rankings": rankings(result, theory_scores, resamples=min(settings.bootstrap, 500),
                                 seed=settings.seed)}
