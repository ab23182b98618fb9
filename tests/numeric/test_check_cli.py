"""End-to-end `fimbound check` on tiny settings, and its one-line errors (exit 2, nothing
written)."""

import json

import numpy as np
import pytest
import torch

from numeric.cli import main

MODELS = '''
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10))

def probabilities():
    return nn.Sequential(build(), nn.Softmax(dim=1))

def wrong_input():
    return nn.Sequential(nn.Flatten(), nn.Linear(100, 10))
'''

TINY = ["--samples", "6", "--chunk-size", "3", "--queries", "20", "--attack-steps", "10",
        "--attack-restarts", "1", "--pgd-steps", "3", "--pgd-restarts", "1", "--pgd-l2", "0.5",
        "--pgd-linf", "0.05", "--bootstrap", "50", "--quiet", "--no-resume"]


@pytest.fixture
def models(tmp_path):
    path = tmp_path / "nets.py"
    path.write_text(MODELS)
    return path


def test_check_writes_a_sound_report_for_two_models(tmp_path, models, capsys):
    out = tmp_path / "out"
    status = main(["check", "--model", f"{models}:build", "--model", "fimbound:vgg",
                   "--data", "digits", *TINY, "--out", str(out), "--json"])
    assert status == 0
    document = json.loads(capsys.readouterr().out)
    assert document["analysis"]["soundness"]["sound"] is True
    assert [m["info"]["name"] for m in document["models"]] == ["nets", "vgg"]
    for model in document["models"]:
        assert len(model["samples"]) == 6
        for r in model["samples"]:
            assert r["lambda_max"] <= r["local_bound"] <= model["info"]["global_bound"] * 1.01
            assert r["certified_radius"] <= r["attack_radius"]
    assert {"report.md", "results.json", "rankings.png", "spectra.png"} <= {
        p.name for p in out.iterdir()}


def _fails_cleanly(tmp_path, capsys, argv, message):
    out = tmp_path / "out"
    status = main(["check", *argv, *TINY, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1 and message in err[0], err
    assert not out.exists() or not any(out.iterdir())


def test_missing_weights_file(tmp_path, models, capsys):
    _fails_cleanly(tmp_path, capsys, ["--model", f"{models}:build", "--weights",
                                      str(tmp_path / "none.pt")], "does not exist")


def test_mismatched_weights(tmp_path, models, capsys):
    weights = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(3, 3).state_dict(), weights)
    _fails_cleanly(tmp_path, capsys, ["--model", f"{models}:build", "--weights",
                                      str(weights)], "do not match the model")


def test_model_returning_probabilities(tmp_path, models, capsys):
    _fails_cleanly(tmp_path, capsys, ["--model", f"{models}:probabilities"],
                   "return probabilities")


def test_input_shape_the_model_rejects(tmp_path, models, capsys):
    _fails_cleanly(tmp_path, capsys, ["--model", f"{models}:wrong_input"],
                   "rejects inputs of shape (1, 8, 8)")


def test_missing_data_path(tmp_path, models, capsys):
    _fails_cleanly(tmp_path, capsys, ["--model", f"{models}:build", "--data",
                                      f"npz:{tmp_path / 'absent.npz'}"], "absent.npz")


def test_data_in_the_wrong_format(tmp_path, models, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, something=np.zeros(3))
    _fails_cleanly(tmp_path, capsys, ["--model", f"{models}:build", "--data", f"npz:{bad}"],
                   "load_data")


def test_unknown_model_spec(tmp_path, capsys):
    _fails_cleanly(tmp_path, capsys, ["--model", "nonsense"], "expected 'torchvision:NAME'")
