"""``fimbound estimate`` end to end on the embedded digits with a tiny model file."""

import json

import pytest
import torch

from numeric.cli import main
from numeric.fisher import fisher_top_eigenvalue

MODEL_FILE = """
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Flatten(),
                         nn.Linear(256, 10))

def wrong():
    return nn.Sequential(nn.Flatten(), nn.Linear(7, 10))
"""


@pytest.fixture()
def model_spec(tmp_path):
    path = tmp_path / "net.py"
    path.write_text(MODEL_FILE)
    return str(path)


def _run(capsys, *argv):
    status = main(["estimate", *argv])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_estimate_json_and_results_file(tmp_path, capsys, model_spec):
    out = tmp_path / "run"
    status, stdout, _ = _run(capsys, "--model", f"{model_spec}:build", "--data", "digits",
                             "--samples", "10", "--chunk-size", "4", "--out", str(out),
                             "--trace", "exact", "--json")
    assert status == 0
    document = json.loads(stdout)
    assert document == json.loads((out / "results.json").read_text())
    assert document["resolved_method"] == "exact" and document["num_classes"] == 10
    records = document["records"]
    assert [r["index"] for r in records] == list(range(10))
    assert all(r["converged"] and r["lambda_max"] > 0 and r["trace"] >= r["lambda_max"]
               for r in records)
    # the numbers are those of the library call on the same samples
    from numeric.data import load_data
    from numeric.loading import load_model
    data = load_data("digits", samples=10, seed=0)
    model = load_model(f"{model_spec}:build")
    expected = fisher_top_eigenvalue(model, data.x)
    torch.testing.assert_close(torch.tensor([r["lambda_max"] for r in records]), expected,
                               rtol=1e-5, atol=0)
    assert document["summary"]["samples"] == 10 and not document["summary"]["not_converged"]


@pytest.mark.parametrize("method", ["lanczos", "blackbox", "max_rayleigh"])
def test_estimate_other_methods(tmp_path, capsys, model_spec, method):
    status, stdout, _ = _run(capsys, "--model", f"{model_spec}:build", "--samples", "4",
                             "--method", method, "--queries", "41", "--out",
                             str(tmp_path / method), "--no-resume")
    assert status == 0
    assert f"method {method} -> {method}" in stdout and "lambda_max: median" in stdout
    document = json.loads((tmp_path / method / "results.json").read_text())
    if method != "lanczos":
        assert all(r["queries"] <= 41 for r in document["records"])


def test_estimate_reports_non_convergence(tmp_path, capsys, model_spec):
    status, stdout, stderr = _run(capsys, "--model", f"{model_spec}:build", "--samples", "3",
                                  "--method", "power", "--tol", "1e-12", "--max-iter", "2",
                                  "--out", str(tmp_path), "--json")
    assert status == 0
    document = json.loads(stdout)
    assert document["summary"]["not_converged"] == [r["index"] for r in document["records"]]
    assert all(not r["converged"] for r in document["records"])
    assert "did not converge" in stderr


def test_estimate_bad_input(tmp_path, capsys, model_spec):
    status, _, stderr = _run(capsys, "--model", f"{model_spec}:wrong", "--samples", "3",
                             "--out", str(tmp_path))
    assert status == 2 and "the model failed on data of shape (3, 1, 8, 8)" in stderr
    status, _, stderr = _run(capsys, "--model", f"{model_spec}:build", "--method", "power",
                             "--k", "2", "--out", str(tmp_path))
    assert status == 2 and "--k 2 needs --method auto, exact or lanczos" in stderr


def test_estimate_blackbox_reports_its_standard_error_and_correction(tmp_path, capsys,
                                                                     model_spec):
    for flags, corrected in (([], True), (["--no-debias"], False)):
        out = tmp_path / str(corrected)
        status, stdout, _ = _run(capsys, "--model", f"{model_spec}:build", "--samples", "4",
                                 "--method", "blackbox", "--queries", "41", "--out",
                                 str(out), "--json", *flags)
        assert status == 0
        records = json.loads(stdout)["records"]
        assert all(r["standard_error"] > 0 for r in records)
        assert all(("bias_correction" in r) == corrected for r in records)


def test_estimate_on_an_explicit_device(tmp_path, capsys, model_spec):
    status, stdout, _ = _run(capsys, "--model", f"{model_spec}:build", "--samples", "3",
                             "--device", "CPU", "--out", str(tmp_path), "--json")
    assert status == 0 and json.loads(stdout)["device"] == "cpu"


@pytest.mark.parametrize("device,message", [
    ("tpu", "fimbound estimate: error: estimate: expected a device 'cpu', 'cuda', 'cuda:N', 'mps' "
            "or 'auto', got 'tpu'."),
    ("cuda", "fimbound estimate: error: estimate: expected an available device, got 'cuda' "
             "but torch sees no CUDA device (torch.cuda.is_available() is False); use 'cpu' or "
             "'auto'."),
])
def test_estimate_refuses_a_device_in_one_line(tmp_path, capsys, model_spec, monkeypatch,
                                               device, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    status, stdout, stderr = _run(capsys, "--model", f"{model_spec}:build", "--samples", "3",
                                  "--device", device, "--out", str(tmp_path))
    assert status == 2 and stdout == ""
    assert stderr.strip().splitlines() == [message]
