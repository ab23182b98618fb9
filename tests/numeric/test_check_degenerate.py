"""Issue 14.1: nothing after the computing may crash. Random degenerate results (zeros,
infinities, NaNs, one class, one sample, no sample, all misclassified, one model) go
through the analysis, the report, the summary and every figure."""

import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numeric.check.analysis import analyse
from numeric.check.figures import write_figures
from numeric.check.report import markdown_report, summary_table
from numeric.check.results import (CheckResult, CheckSettings, ModelInfo, ModelResult,
                                   json_ready)

AWKWARD = st.sampled_from([0.0, 1.0, 0.5, 1e-300, 1e300, math.inf, -0.0, math.nan, 3.0])
POSITIVE_OR_INF = st.sampled_from([0.0, 1.0, 1e-12, 1e12, math.inf, math.nan])


@st.composite
def records(draw, index: int, label: int):
    pred = draw(st.sampled_from([label, label + 1]))
    record = {"index": index, "label": label, "pred": pred, "correct": pred == label,
              "margin": draw(AWKWARD), "lambda_max": draw(AWKWARD),
              "lambda_method": "exact", "lambda_converged": draw(st.booleans()),
              "trace": draw(AWKWARD), "local_bound": draw(AWKWARD), "blackbox": draw(AWKWARD),
              "blackbox_queries": 10, "attack_radius": draw(POSITIVE_OR_INF),
              "certified_radius": draw(POSITIVE_OR_INF),
              "spectrum": draw(st.lists(AWKWARD, max_size=3)),
              "seconds": {"spectrum": draw(st.sampled_from([0.0, 0.01]))}}
    if draw(st.booleans()):
        record["pgd_l2_0.5"] = draw(st.booleans())
    if draw(st.booleans()):
        record["attack_found_by"] = draw(st.sampled_from(["fmn", "ddn", "none", "clean"]))
    return record


@st.composite
def check_results(draw):
    models = []
    for m in range(draw(st.integers(1, 3))):
        n = draw(st.integers(0, 4))
        single_class = draw(st.booleans())
        samples = [draw(records(i, 0 if single_class else i % 3)) for i in range(n)]
        family = draw(st.sampled_from([None, "vgg", "resnet"]))
        info = ModelInfo(name=f"model{m}", spec=f"fimbound:m{m}", num_classes=3,
                         global_bound=draw(POSITIVE_OR_INF), lipschitz=draw(POSITIVE_OR_INF),
                         plain_bound=draw(POSITIVE_OR_INF), certified=draw(st.booleans()),
                         family=family, family_depth=2 if family else None,
                         layer_constant=draw(st.sampled_from([None, 1.5])),
                         training=draw(st.sampled_from([None, "pgd", "normal"])))
        models.append(ModelResult(info=info, records=samples))
    return CheckResult(settings=CheckSettings(bootstrap=20, samples=4), data_name="synthetic",
                       models=models)


@settings(max_examples=60)
@given(result=check_results())
def test_analysis_report_and_json_never_fail(result):
    result.analysis = analyse(result)
    text = markdown_report(result, {"spectra.png": None, "rankings.png": "nothing to rank"})
    assert text.startswith("# fimbound check report")
    for model in result.models:
        assert f"**{model.info.name}**" in text
    assert len(summary_table(result).splitlines()) == len(result.models) + 2
    document = json.loads(json.dumps(json_ready(result.to_dict()), allow_nan=False))
    again = CheckResult.from_dict(document)
    assert json.dumps(json_ready(again.to_dict())) == json.dumps(json_ready(result.to_dict()))


@pytest.fixture(scope="module")
def small_figures():
    import numeric.check.figures as figures
    dpi, figures.DPI = figures.DPI, 20  # what is drawn matters here, not how finely
    yield
    figures.DPI = dpi


@settings(max_examples=6)
@given(result=check_results())
def test_every_figure_is_drawn_or_explained_never_broken(result, tmp_path_factory,
                                                         small_figures):
    directory = tmp_path_factory.mktemp("figures")
    result.analysis = analyse(result)
    outcome = write_figures(result, directory)
    for name, reason in outcome.items():
        if reason is None:
            assert (directory / name).stat().st_size > 0, name
        else:
            assert "bug" not in reason, (name, reason)
            assert not (directory / name).exists()


def test_one_model_gets_no_placeholder_ranking_figure(tmp_path):
    info = ModelInfo(name="only", spec="fimbound:vgg", num_classes=3, global_bound=5.0)
    result = CheckResult(CheckSettings(bootstrap=20), "synthetic", [ModelResult(info, [])])
    result.analysis = analyse(result)
    outcome = write_figures(result, tmp_path)
    assert outcome["rankings.png"] == "only one model: there is nothing to rank"
    assert not (tmp_path / "rankings.png").exists()
    text = markdown_report(result, outcome)
    assert "`rankings.png` is not drawn: only one model" in text
    assert "No rankings: rankings need at least two models." in text


@pytest.mark.parametrize("radius", [math.inf, 0.0])
def test_attack_radii_that_a_log_axis_cannot_show_are_said_in_words(tmp_path, radius):
    records = [{"index": i, "label": 0, "pred": 0, "correct": True, "margin": 1.0,
                "lambda_max": 1.0 + i, "local_bound": 5.0, "attack_radius": radius,
                "certified_radius": 0.0, "spectrum": [1.0]} for i in range(4)]
    records[0]["attack_radius"] = 0.5
    info = ModelInfo(name="flat", spec="x.py:flat", num_classes=3, global_bound=10.0)
    result = CheckResult(CheckSettings(bootstrap=20), "synthetic", [ModelResult(info, records)])
    result.analysis = analyse(result)
    assert write_figures(result, tmp_path)["lambda_vs_radius.png"] is None
    text = markdown_report(result, {})
    if math.isinf(radius):
        assert "the attack found an adversarial for 1 of 4 samples" in text
