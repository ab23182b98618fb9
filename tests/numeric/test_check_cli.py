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
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.Tanh(), nn.Linear(16, 10))

def probabilities():
    return nn.Sequential(build(), nn.Softmax(dim=1))

def wrong_input():
    return nn.Sequential(nn.Flatten(), nn.Linear(100, 10))

def broken():
    raise RuntimeError("CUDA out of memory in the user's factory")

def not_a_model():
    return 42

def nan_logits():
    model = build()
    with torch.no_grad():
        model[3].bias.fill_(float("nan"))
    return model
'''

TINY = ["--samples", "6", "--chunk-size", "3", "--queries", "20", "--attack-steps", "10",
        "--attack-restarts", "1", "--pgd-steps", "3", "--pgd-restarts", "1", "--pgd-l2", "0.5",
        "--pgd-linf", "0.05", "--bootstrap", "50", "--quiet"]


@pytest.fixture
def models(tmp_path):
    path = tmp_path / "nets.py"
    path.write_text(MODELS)
    return path


def test_check_writes_a_sound_report_for_two_models(tmp_path, models, capsys, monkeypatch):
    out = tmp_path / "out"
    argv = ["check", "--model", f"{models}:build", "--model", "fimbound:vgg", "--data",
            "digits", *TINY, "--out", str(out), "--json"]
    monkeypatch.setattr("sys.argv", ["fimbound", *argv])
    status = main(argv)
    assert status == 0
    document = json.loads(capsys.readouterr().out)
    assert document["analysis"]["soundness"]["sound"] is True
    assert [m["info"]["name"] for m in document["models"]] == ["build", "vgg"]
    for model in document["models"]:
        assert len(model["samples"]) == 6
        for r in model["samples"]:
            assert r["lambda_max"] <= r["local_bound"] <= model["info"]["global_bound"]
            assert r["certified_radius"] <= float(r["attack_radius"])
            assert set(r["seconds"]) >= {"spectrum", "local_bound", "attack", "pgd"}
            # the linear-bound radius: ReLU networks only (vgg), never above the attack's
            linear = r["certified_radius_linear"]
            if model["info"]["name"] == "vgg":
                assert linear is not None and linear <= r["certified_radius"]
                assert linear <= float(r["attack_radius"])
            else:
                assert linear is None
        assert model["info"]["seconds"]["trace"] > 0
    assert {"report.md", "results.json", "rankings.png", "spectra.png"} <= {
        p.name for p in out.iterdir()}
    text = (out / "report.md").read_text()
    assert "## Time per stage" in text
    assert f"Command: `fimbound check --model {models}:build" in text
    assert f"torch {torch.__version__.split('+')[0]}" in text


def _fails_cleanly(tmp_path, capsys, argv, message, out=None):
    out = out or tmp_path / "out"
    status = main(["check", *argv, *TINY, "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2
    assert len(err) == 1 and message in err[0], err
    assert not out.exists() or not any(p for p in out.iterdir() if p.name != ".progress")


def test_missing_weights_file(tmp_path, models, capsys):
    _fails_cleanly(tmp_path, capsys, ["--model", f"{models}:build", "--weights",
                                      str(tmp_path / "none.pt")], "does not exist")


def test_mismatched_weights(tmp_path, models, capsys):
    weights = tmp_path / "other.pt"
    torch.save(torch.nn.Linear(3, 3).state_dict(), weights)
    _fails_cleanly(tmp_path, capsys, ["--model", f"{models}:build", "--weights",
                                      str(weights)], "do not match the model")


def test_garbage_weights_file_says_so_without_torch_advice(tmp_path, models, capsys):
    weights = tmp_path / "garbage.pt"
    weights.write_bytes(b"\x00not a checkpoint" * 50)
    _fails_cleanly(tmp_path, capsys, ["--model", f"{models}:build", "--weights",
                                      str(weights)], "got a file torch cannot read safely")
    capsys.readouterr()
    main(["check", "--model", f"{models}:build", "--weights", str(weights), *TINY,
          "--out", str(tmp_path / "o")])
    assert "weights_only" not in capsys.readouterr().err


def test_model_returning_probabilities(tmp_path, models, capsys):
    _fails_cleanly(tmp_path, capsys, ["--model", f"{models}:probabilities"],
                   "return probabilities")


def test_model_returning_nan(tmp_path, models, capsys):
    _fails_cleanly(tmp_path, capsys, ["--model", f"{models}:nan_logits"],
                   "expected finite logits from model 'nan_logits', got nan")


def test_input_shape_the_model_rejects(tmp_path, models, capsys):
    _fails_cleanly(tmp_path, capsys, ["--model", f"{models}:wrong_input"],
                   "rejects inputs of shape (1, 8, 8)")


@pytest.mark.parametrize("factory, message", [
    ("broken", "broken() in"),
    ("not_a_model", "returned int, expected a torch.nn.Module"),
])
def test_factory_errors_are_one_line(tmp_path, models, capsys, factory, message):
    _fails_cleanly(tmp_path, capsys, ["--model", f"{models}:{factory}"], message)


def test_missing_data_path(tmp_path, models, capsys):
    _fails_cleanly(tmp_path, capsys, ["--model", f"{models}:build", "--data",
                                      f"npz:{tmp_path / 'absent.npz'}"], "absent.npz")


def test_data_in_the_wrong_format(tmp_path, models, capsys):
    bad = tmp_path / "bad.npz"
    np.savez(bad, something=np.zeros(3))
    _fails_cleanly(tmp_path, capsys, ["--model", f"{models}:build", "--data", f"npz:{bad}"],
                   "load_data")


def test_nan_in_the_data_says_nan(tmp_path, models, capsys):
    images = np.random.default_rng(0).uniform(size=(8, 8, 8)).astype(np.float32)
    images[3, 2, 2] = np.nan
    labels = np.arange(8).reshape(-1, 1) % 2
    bad = tmp_path / "nan.npz"
    np.savez(bad, test_images=images, test_labels=labels)
    _fails_cleanly(tmp_path, capsys, ["--model", f"{models}:build", "--data", f"npz:{bad}"],
                   "got NaN (first in sample 3)")


def test_unknown_model_spec(tmp_path, capsys):
    _fails_cleanly(tmp_path, capsys, ["--model", "nonsense"], "expected 'torchvision:NAME'")


@pytest.mark.parametrize("device", ["tpu", "mps", "meta", "cuda:x"])
def test_unusable_device_is_one_line(tmp_path, models, capsys, device):
    _fails_cleanly(tmp_path, capsys, ["--model", f"{models}:build", "--device", device],
                   "--device: expected")


def test_out_that_cannot_be_written_is_refused_before_any_model_loads(tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    # the model spec is bad too: the --out check must come first
    _fails_cleanly(tmp_path, capsys, ["--model", "nonsense"], "--out",
                   out=blocker / "report")


def test_torchvision_missing_names_the_package(tmp_path, capsys, monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    _fails_cleanly(tmp_path, capsys, ["--model", "torchvision:resnet18"],
                   "pip install torchvision")


def test_grey_data_on_an_rgb_model_suggests_channels(tmp_path, capsys):
    path = tmp_path / "rgb.py"
    path.write_text("from torch import nn\n"
                    "def build():\n"
                    "    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), "
                    "nn.Linear(144, 10))\n")
    _fails_cleanly(tmp_path, capsys, ["--model", f"{path}:build"], "try --channels 3")


def test_models_from_files_are_named_after_their_factories(tmp_path, models, capsys):
    other = tmp_path / "more.py"
    other.write_text(MODELS)
    out = tmp_path / "out"
    status = main(["check", "--model", f"{models}:build", "--model", f"{other}:build",
                   *TINY, "--samples", "3", "--out", str(out), "--json"])
    assert status == 0
    document = json.loads(capsys.readouterr().out)
    assert [m["info"]["name"] for m in document["models"]] == ["nets.build", "more.build"]


@pytest.mark.parametrize("name", ["pgd", "deepfool"])
def test_unknown_attack_names_are_refused_before_anything_loads(tmp_path, capsys, name):
    _fails_cleanly(tmp_path, capsys, ["--model", "nonsense", "--attacks", "toolkit", name],
                   "expected --attacks from")
