"""Deterministic training and the weight cache (tiny configurations; the full recipe is slow)."""

import os

import pytest
import torch

import numeric.training as training
from numeric.data import load_data
from numeric.errors import InputError
from numeric.models import MODEL_NAMES, build
from numeric.training import (TrainingConfig, accuracy, cache_directory, train,
                              trained_model, trained_models, training_config)


@pytest.fixture(scope="module")
def tiny():
    return load_data("digits", split="train", samples=96)


def _fresh(name: str, seed: int = 0):
    torch.manual_seed(seed)
    return build(name)


@pytest.mark.parametrize("name", ["vgg", "vit"])
def test_same_seed_same_weights(tiny, name):
    first = train(_fresh(name), tiny, epochs=2, adversarial=True, seed=4)
    second = train(_fresh(name), tiny, epochs=2, adversarial=True, seed=4)
    other = train(_fresh(name), tiny, epochs=2, adversarial=True, seed=5)
    state, again, different = first.state_dict(), second.state_dict(), other.state_dict()
    assert all(torch.equal(state[k], again[k]) for k in state)
    assert not all(torch.equal(state[k], different[k]) for k in state)


def test_train_leaves_global_state_alone(tiny):
    model = _fresh("resnet")
    threads = torch.get_num_threads()
    rng = torch.get_rng_state()
    model = train(model, tiny, epochs=1, seed=0)
    assert not model.training
    assert torch.get_num_threads() == threads
    assert not torch.are_deterministic_algorithms_enabled()
    assert torch.equal(torch.get_rng_state(), rng)


def test_training_learns(tiny):
    model = train(_fresh("vgg"), tiny, epochs=30, seed=0)
    assert accuracy(model, tiny.x, tiny.y) > 0.8


def test_trained_model_is_cached(tmp_path, monkeypatch):
    rng = torch.get_rng_state()
    model = trained_model("vgg", adversarial=False, epochs=1, cache_dir=tmp_path,
                          progress=False)
    assert torch.equal(torch.get_rng_state(), rng)
    files = os.listdir(tmp_path)
    assert len(files) == 1 and files[0].startswith("vgg-normal-") and files[0].endswith(".pt")
    assert not model.training

    def refuse(*args, **kwargs):
        raise AssertionError("a cached model was retrained")

    monkeypatch.setattr(training, "train", refuse)
    cached = trained_model("vgg", adversarial=False, epochs=1, cache_dir=tmp_path,
                           progress=False)
    assert not cached.training
    state, loaded = model.state_dict(), cached.state_dict()
    assert all(torch.equal(state[k], loaded[k]) for k in state)


def test_unreadable_cache_file_is_retrained(tmp_path):
    config = training_config("vgg", adversarial=False, epochs=1)
    path = tmp_path / f"vgg-normal-{config.key()}.pt"
    path.write_bytes(b"truncated")
    model = trained_model("vgg", adversarial=False, epochs=1, cache_dir=tmp_path,
                          progress=False)
    stored = torch.load(path, weights_only=True)
    assert stored["config"]["name"] == "vgg"
    assert all(torch.equal(v, stored["state_dict"][k]) for k, v in model.state_dict().items())
    assert sorted(os.listdir(tmp_path)) == [path.name]  # no temporary file left behind


def test_cache_key_covers_the_configuration():
    base = TrainingConfig(name="vgg", adversarial=True, epochs=15)
    assert base.key() == TrainingConfig(name="vgg", adversarial=True, epochs=15).key()
    variants = [TrainingConfig(name="vit", adversarial=True, epochs=15),
                TrainingConfig(name="vgg", adversarial=False, epochs=15),
                TrainingConfig(name="vgg", adversarial=True, epochs=14),
                TrainingConfig(name="vgg", adversarial=True, epochs=15, seed=1),
                TrainingConfig(name="vgg", adversarial=True, epochs=15, eps=0.25)]
    keys = {v.key() for v in variants} | {base.key()}
    assert len(keys) == len(variants) + 1


def test_normal_configuration_ignores_the_adversarial_recipe():
    assert (training_config("vgg", adversarial=False, eps=0.25).key()
            == training_config("vgg", adversarial=False).key())
    assert (training_config("vgg", adversarial=True, eps=0.25).key()
            != training_config("vgg", adversarial=True).key())


def test_cache_directory_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv("FIMBOUND_CACHE", str(tmp_path / "own"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_directory(tmp_path / "given") == tmp_path / "given"
    assert cache_directory() == tmp_path / "own"
    monkeypatch.delenv("FIMBOUND_CACHE")
    assert cache_directory() == tmp_path / "xdg" / "fimbound"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_directory() == tmp_path / "home" / ".cache" / "fimbound"


@pytest.mark.parametrize("kwargs, match", [
    (dict(epochs=0), "expected an integer epochs >= 1, got 0"),
    (dict(epochs=1, adversarial=True, eps=0.0), "expected eps > 0 for adversarial training"),
    (dict(epochs=1, batch_size=0), "expected an integer batch_size >= 1, got 0"),
], ids=["epochs", "eps", "batch"])
def test_train_errors(tiny, kwargs, match):
    with pytest.raises(InputError, match="train: " + match):
        train(_fresh("vgg"), tiny, **kwargs)


def test_train_needs_a_dataset():
    with pytest.raises(InputError, match="expected a Dataset with x and y, got tuple"):
        train(_fresh("vgg"), (torch.zeros(2, 1, 8, 8), torch.zeros(2)), epochs=1)


def test_trained_model_unknown_name(tmp_path):
    with pytest.raises(InputError, match="trained_model: expected a model name in vgg, "
                                         "resnet, densenet, vit, got 'lenet'"):
        trained_model("lenet", adversarial=False, cache_dir=tmp_path)


@pytest.mark.slow
def test_default_recipe_accuracy_and_robustness(tmp_path):
    """The demo's eight models: accurate, and adversarial training measurably helps."""
    from numeric.attacks import robust_accuracy
    test = load_data("digits")
    for name in MODEL_NAMES:
        normal = trained_model(name, adversarial=False, cache_dir=tmp_path, progress=False)
        robust = trained_model(name, adversarial=True, cache_dir=tmp_path, progress=False)
        assert accuracy(normal, test.x, test.y) >= 0.93
        assert accuracy(robust, test.x, test.y) >= 0.93
        at_eps = [robust_accuracy(m, test.x, test.y, 0.5, "l2", steps=50, restarts=2)
                  for m in (normal, robust)]
        assert at_eps[1] >= at_eps[0] + 0.15


@pytest.mark.slow  # two spawned processes each training a model for an epoch
def test_models_trained_in_parallel_processes_are_bit_identical(tmp_path):
    wanted = [("vgg", False), ("densenet", False)]
    parallel = trained_models(wanted, cache_dir=tmp_path / "a", workers=2, epochs=1,
                              progress=False)
    one_by_one = [trained_model(name, adversarial=adv, cache_dir=tmp_path / "b", epochs=1,
                                progress=False) for name, adv in wanted]
    for first, second in zip(parallel, one_by_one):
        state, again = first.state_dict(), second.state_dict()
        assert all(torch.equal(state[k], again[k]) for k in state)
    assert [m.fimbound_training for m in parallel] == ["normal", "normal"]
    assert len(list((tmp_path / "a").glob("*.pt"))) == 2


def test_trained_models_reads_the_cache_and_keeps_the_order(tmp_path, monkeypatch):
    calls = []
    real = training.train

    def counting(model, data, **kwargs):
        calls.append(type(model).__name__)
        return real(model, data, **kwargs)
    monkeypatch.setattr(training, "train", counting)
    wanted = [("resnet", False), ("vgg", False)]
    first = trained_models(wanted, cache_dir=tmp_path, workers=1, epochs=1, progress=False)
    again = trained_models(wanted, cache_dir=tmp_path, workers=2, epochs=1, progress=False)
    assert calls == ["SmallResNet", "SmallVGG"], "the second call trains nothing"
    assert [type(m).__name__ for m in again] == ["SmallResNet", "SmallVGG"]
    for a, b in zip(first, again):
        assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
