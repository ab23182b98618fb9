"""Soundness detection, statistics and the atomic report, on synthetic check results."""

import json
import math

import numpy as np
import pytest

from numeric.check.analysis import analyse, correlation, soundness
from numeric.check.report import describe_gap, markdown_report, summary_table, write_report
from numeric.check.results import CheckResult, CheckSettings, ModelInfo, ModelResult


def _records(n, rng, scale=1.0, shift=0.0):
    lam = scale * rng.uniform(0.1, 2.0, n)
    radius = 1.0 / np.sqrt(lam) + shift
    return [{"index": i, "label": i % 3, "pred": i % 3, "correct": True, "margin": 1.0,
             "lambda_max": float(lam[i]), "trace": float(2 * lam[i]),
             "local_bound": float(3 * lam[i]), "blackbox": float(lam[i] * 1.05),
             "blackbox_queries": 200, "attack_radius": float(radius[i]),
             "certified_radius": float(radius[i] / 10), "spectrum": [float(lam[i]), 0.01],
             "pgd_l2_0.5": bool(i % 2)} for i in range(n)]


def _result(n=30, models=3, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for m in range(models):
        info = ModelInfo(name=f"m{m}", spec=f"fimbound:m{m}", family="vgg", parameters=10,
                         num_classes=3, global_bound=100.0 * (m + 1), lipschitz=5.0,
                         plain_bound=1000.0 * (m + 1), certified=True, family_depth=m + 2,
                         layer_constant=2.0)
        out.append(ModelResult(info=info, records=_records(n, rng, scale=m + 1)))
    result = CheckResult(settings=CheckSettings(bootstrap=200), data_name="synthetic",
                         models=out)
    result.analysis = analyse(result)
    return result


def test_correlation_of_a_monotone_decreasing_relation_is_minus_one():
    a = np.linspace(0.1, 3, 25)
    stats = correlation(a, 1 / a, resamples=200)
    assert stats["spearman"] == pytest.approx(-1.0)
    assert stats["kendall"] == pytest.approx(-1.0)
    assert stats["spearman_ci"][1] <= -0.99


def test_correlation_of_constant_data_is_undefined_not_an_error():
    stats = correlation(np.ones(10), np.arange(10.0))
    assert math.isnan(stats["spearman"])


def test_sound_result_has_no_violations_and_negative_correlation():
    result = _result()
    assert result.analysis["soundness"]["sound"]
    for name, stats in result.analysis["models"].items():
        assert stats["correlation_lambda_vs_radius"]["spearman"] == pytest.approx(-1.0)


@pytest.mark.parametrize("kind, field, value", [
    ("global", "lambda_max", 1e6),
    ("local", "local_bound", 1e-9),
    ("radius", "certified_radius", 1e9),
], ids=["measured-above-global", "local-below-measured", "certified-above-attack"])
def test_each_kind_of_violation_is_reported_with_its_sample(kind, field, value):
    result = _result()
    result.models[1].records[7][field] = value
    report = soundness(result)
    assert not report["sound"]
    assert {"model": "m1", "index": 7, "kind": kind} == {
        k: report["violations"][0][k] for k in ("model", "index", "kind")}


def test_rankings_agree_when_every_criterion_orders_the_models_alike():
    rk = _result().analysis["rankings"]
    assert rk["orders"]["bound"] == ["m0", "m1", "m2"]
    assert rk["orders"]["measured"] == ["m0", "m1", "m2"]
    assert rk["orders"]["attack"] == ["m0", "m1", "m2"]
    for pair in rk["agreement"]:
        assert pair["kendall"] == pytest.approx(1.0)


def test_rankings_between_bounds_are_exact_and_get_no_interval():
    rk = _result().analysis["rankings"]
    assert list(rk["orders"]) == ["theory", "bound", "measured", "attack"]
    by_pair = {(g["first"], g["second"]): g for g in rk["agreement"]}
    assert by_pair[("theory", "bound")]["exact"] is True
    assert by_pair[("theory", "bound")]["kendall_ci"] is None
    assert by_pair[("bound", "measured")]["exact"] is False
    assert len(by_pair[("bound", "measured")]["kendall_ci"]) == 2
    text = markdown_report(_result(), {})
    assert "| theory | bound | 1 | exact (no sampling) |" in text


def test_a_model_where_no_adversarial_exists_ranks_most_robust_by_attack():
    result = _result()
    for record in result.models[2].records:
        record["attack_radius"] = math.inf
    result.analysis = analyse(result)
    assert result.analysis["rankings"]["orders"]["attack"][0] == "m2"
    assert result.analysis["models"]["m2"]["attack_found"] == 0


@pytest.mark.parametrize("bound, measured, words", [
    (300.0, 3.0, "2.0 orders of magnitude"),
    (3.2, 3.0, "tight"),
    (9.0, 3.0, "factor of 3"),
    (math.inf, 3.0, "infinite"),
    (2.0, 3.0, "BELOW"),
    (5.0, 0.0, "every measured λ_max is 0"),
    (5.0, math.nan, "nothing was measured"),
    (math.nan, 3.0, "undefined"),
])
def test_looseness_is_said_in_words(bound, measured, words):
    assert words in describe_gap(bound, measured)


def test_report_is_written_with_figures_and_json(tmp_path):
    result = _result()
    path = write_report(result, tmp_path / "out")
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert {"report.md", "results.json", "bounds_vs_measured.png", "lambda_vs_radius.png",
            "rankings.png", "spectra.png"} <= files
    assert not any(name.startswith(".staging") for name in files)
    document = json.loads((tmp_path / "out" / "results.json").read_text())
    assert document["analysis"]["soundness"]["sound"] is True
    text = path.read_text()
    assert "No violations" in text and "m2" in text
    assert "m1" in summary_table(result)


def test_failed_report_leaves_nothing_behind(tmp_path, monkeypatch):
    import numeric.check.report as report
    result = _result()

    def broken(*args, **kwargs):
        raise OSError("disk full")
    monkeypatch.setattr(report, "markdown_report", broken)
    with pytest.raises(OSError, match="disk full"):
        write_report(result, tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []


def test_a_figure_that_fails_is_reported_and_the_rest_is_written(tmp_path, monkeypatch):
    import numeric.check.figures as figures
    result = _result()

    def broken(result, path):
        raise ValueError("Data cannot be log-scaled")
    monkeypatch.setitem(figures.FIGURES, "spectra.png",
                        (broken, figures.FIGURES["spectra.png"][1]))
    text = write_report(result, tmp_path / "out").read_text()
    assert "`spectra.png` is not drawn: drawing it failed (ValueError: Data cannot be " \
           "log-scaled); this is a bug" in text
    files = {p.name for p in (tmp_path / "out").iterdir()}
    assert "spectra.png" not in files and "rankings.png" in files


def test_markdown_lists_violations():
    result = _result()
    result.models[0].records[3]["lambda_max"] = 1e9
    result.analysis = analyse(result)
    assert "VIOLATIONS" in markdown_report(result, {})


def test_vectorised_rank_statistics_match_scipy_with_ties():
    from scipy import stats

    from numeric.check.analysis import _kendall, _spearman
    rng = np.random.default_rng(3)
    u = rng.integers(0, 6, size=(7, 25)).astype(float)   # many ties
    v = u + rng.normal(size=(7, 25))
    for row in range(7):
        assert _spearman(u, v)[row] == pytest.approx(stats.spearmanr(u[row], v[row]).statistic)
        assert _kendall(u, v)[row] == pytest.approx(stats.kendalltau(u[row], v[row]).statistic)


def test_the_attack_that_found_each_minimum_is_counted_in_the_report():
    result = _result()
    for i, record in enumerate(result.models[0].records):
        record["attack_found_by"] = "fmn" if i % 3 else "alma"
    result.analysis = analyse(result)
    assert result.analysis["models"]["m0"]["attack_found_by"] == {"fmn": 20, "alma": 10}
    assert "m0: fmn 20, alma 10" in markdown_report(result, {})


def test_ranking_intervals_match_a_plain_loop_over_resamples():
    from scipy import stats

    from numeric.check.analysis import rankings
    result = _result(n=12)
    result.models[1].records[0]["attack_radius"] = math.inf
    out = rankings(result, resamples=200, seed=7)
    rng = np.random.default_rng(7)
    lam = [np.array([r["lambda_max"] for r in m.records]) for m in result.models]
    rad = [np.array([r["attack_radius"] for r in m.records]) for m in result.models]
    picks = [rng.integers(0, len(v), (200, len(v))) for v in lam]
    measured = np.array([[v[p[i]].mean() for v, p in zip(lam, picks)] for i in range(200)])
    attack = np.array([[-np.median(v[p[i]]) for v, p in zip(rad, picks)] for i in range(200)])
    bound = [m.info.global_bound for m in result.models]
    taus = np.array([stats.kendalltau(measured[i], attack[i]).statistic for i in range(200)])
    taus = taus[np.isfinite(taus)]
    pair = next(g for g in out["agreement"] if (g["first"], g["second"]) == ("measured",
                                                                          "attack"))
    assert pair["kendall_ci"] == pytest.approx([np.quantile(taus, 0.025),
                                                np.quantile(taus, 0.975)])
    taus = np.array([stats.kendalltau(bound, measured[i]).statistic for i in range(200)])
    pair = next(g for g in out["agreement"] if (g["first"], g["second"]) == ("bound",
                                                                          "measured"))
    assert pair["kendall_ci"] == pytest.approx([np.quantile(taus, 0.025),
                                                np.quantile(taus, 0.975)])


def test_equal_scores_are_shown_as_ties_in_the_orders():
    result = _result()
    result.models[1].info.family_depth = result.models[0].info.family_depth
    result.analysis = analyse(result)
    assert "- **theory**: m0 = m1 < m2" in markdown_report(result, {})
