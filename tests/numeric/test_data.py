"""load_data: the embedded sets and the file formats, on files the tests write."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from numeric.data import DATA_SPECS, Dataset, load_data
from numeric.errors import InputError


def _check(data: Dataset, n: int, shape: tuple, classes: int) -> None:
    assert data.x.dtype == torch.float32 and data.y.dtype == torch.int64
    assert data.x.shape == (n, *shape)
    assert data.y.shape == (n,)
    assert 0.0 <= data.x.min() and data.x.max() <= 1.0
    assert data.num_classes == classes == len(data.class_names)
    assert 0 <= data.y.min() and data.y.max() < classes


# --------------------------------------------------------------------- embedded sets

def test_digits_split_is_stratified_and_disjoint():
    train, test = load_data("digits", split="train"), load_data("digits")
    _check(train, 1347, (1, 8, 8), 10)
    _check(test, 450, (1, 8, 8), 10)
    assert test.class_names == tuple("0123456789")
    from sklearn.datasets import load_digits
    full = load_digits()
    counts = np.bincount(full.target)
    torch.testing.assert_close(train.y.bincount() + test.y.bincount(),
                               torch.from_numpy(counts))
    assert (test.y.bincount().numpy() == np.round(0.25 * counts)).all()
    # every image of the data set is in exactly one split
    rows = lambda d: {tuple((d.x[i] * 16).round().int().flatten().tolist()) + (int(d.y[i]),)
                      for i in range(len(d))}
    full_rows = {tuple(img.flatten().astype(int).tolist()) + (int(t),)
                 for img, t in zip(full.images, full.target)}
    assert rows(train) | rows(test) == full_rows


def test_digits_pixels_are_sixteenths():
    data = load_data("digits", samples=30)
    assert torch.equal(data.x * 16, (data.x * 16).round())


def test_split_does_not_depend_on_seed():
    assert torch.equal(load_data("digits", seed=0).x, load_data("digits", seed=5).x)


def test_samples_is_a_seeded_stratified_subset():
    first = load_data("digits", samples=45, seed=1)
    again = load_data("digits", samples=45, seed=1)
    other = load_data("digits", samples=45, seed=2)
    assert torch.equal(first.x, again.x) and torch.equal(first.y, again.y)
    assert not torch.equal(first.x, other.x)
    counts = first.y.bincount(minlength=10)
    assert counts.sum() == 45 and set(counts.tolist()) <= {4, 5}
    assert len(load_data("digits", samples=10_000)) == 450


def test_lfw_faces_and_non_faces():
    train, test = load_data("lfw", split="train"), load_data("lfw")
    _check(train, 150, (1, 25, 25), 2)
    _check(test, 50, (1, 25, 25), 2)
    assert test.class_names == ("face", "non-face")
    assert test.y.bincount().tolist() == [25, 25]
    # faces have more contrast than the background patches
    stds = test.x.flatten(1).std(dim=1)
    assert stds[test.y == 0].mean() > stds[test.y == 1].mean()


def test_resize_any_loader():
    data = load_data("digits", samples=5, size=16)
    assert data.x.shape == (5, 1, 16, 16)
    assert 0.0 <= data.x.min() and data.x.max() <= 1.0


# ---------------------------------------------------------------------- image folder

def _write_images(folder, classes: dict, size=(6, 5), mode="L", seed=0):
    rng = np.random.default_rng(seed)
    written = {}
    for name, count in classes.items():
        (folder / name).mkdir(parents=True)
        for i in range(count):
            shape = (size[1], size[0]) if mode == "L" else (size[1], size[0], 3)
            pixels = rng.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(pixels, mode=None).convert(mode).save(folder / name / f"{i}.png")
            written[(name, i)] = pixels
    return written


def test_folder_grey(tmp_path):
    written = _write_images(tmp_path, {"cat": 3, "dog": 2})
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "dog" / "readme.md").write_text("skipped")
    data = load_data(f"folder:{tmp_path}")
    _check(data, 5, (1, 5, 6), 2)
    assert data.class_names == ("cat", "dog")
    assert data.y.tolist() == [0, 0, 0, 1, 1]
    expected = torch.from_numpy(written[("cat", 1)].astype(np.float32) / 255)
    torch.testing.assert_close(data.x[1, 0], expected)
    assert data.name == f"folder:{tmp_path.name}"


def test_folder_rgb_channels_first(tmp_path):
    written = _write_images(tmp_path, {"a": 2, "b": 2}, mode="RGB")
    data = load_data(f"folder:{tmp_path}")
    _check(data, 4, (3, 5, 6), 2)
    expected = torch.from_numpy(written[("b", 0)].astype(np.float32) / 255).permute(2, 0, 1)
    torch.testing.assert_close(data.x[2], expected)


def test_folder_split_subfolders_and_samples(tmp_path):
    _write_images(tmp_path / "train", {"a": 4, "b": 4})
    _write_images(tmp_path / "test", {"a": 3, "b": 3}, seed=1)
    assert len(load_data(f"folder:{tmp_path}", split="train")) == 8
    subset = load_data(f"folder:{tmp_path}", samples=4)
    assert subset.y.tolist() == [0, 0, 1, 1]
    with pytest.raises(InputError, match="expected a subfolder 'val' in .*, got only train, test"):
        load_data(f"folder:{tmp_path}", split="val")


def test_folder_sizes_must_agree_unless_resized(tmp_path):
    _write_images(tmp_path, {"a": 2})
    _write_images(tmp_path, {"b": 1}, size=(7, 7))
    with pytest.raises(InputError, match="images of one size, or size= to resize them"):
        load_data(f"folder:{tmp_path}")
    data = load_data(f"folder:{tmp_path}", size=4)
    assert data.x.shape == (3, 1, 4, 4)


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected an image folder, got .*missing"):
        load_data(f"folder:{tmp_path / 'missing'}")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(InputError, match="expected class subfolders holding images"):
        load_data(f"folder:{tmp_path / 'empty'}")
    _write_images(tmp_path / "flat", {"a": 1})
    with pytest.raises(InputError, match="expected a 'train' subfolder .* got a folder without"):
        load_data(f"folder:{tmp_path / 'flat'}", split="train")
    (tmp_path / "file.png").write_bytes(b"")
    with pytest.raises(InputError, match="expected a directory after 'folder:'"):
        load_data(f"folder:{tmp_path / 'file.png'}")


# -------------------------------------------------------------------------- CIFAR-10

def _cifar_batch(count: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    return {b"batch_label": b"batch", b"labels": rng.integers(0, 10, count).tolist(),
            b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
            b"filenames": [b"img.png"] * count}


def _write_cifar(folder, per_batch=6):
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        batches[name] = _cifar_batch(per_batch, i)
        with open(folder / name, "wb") as handle:
            pickle.dump(batches[name], handle, protocol=2)
    meta = {b"label_names": [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog",
                             b"frog", b"horse", b"ship", b"truck"],
            b"num_cases_per_batch": per_batch, b"num_vis": 3072}
    with open(folder / "batches.meta", "wb") as handle:
        pickle.dump(meta, handle, protocol=2)
    return batches


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "cifar-10-batches-py"])
def test_cifar10(tmp_path, nested):
    batches = _write_cifar(tmp_path / "cifar-10-batches-py" if nested else tmp_path)
    test = load_data(f"cifar10:{tmp_path}")
    _check(test, 6, (3, 32, 32), 10)
    assert test.class_names[1] == "automobile"
    raw = batches["test_batch"]
    assert test.y.tolist() == raw[b"labels"]
    # each row is the red plane, then green, then blue, each 32 rows of 32 pixels
    assert test.x[2, 1, 3, 4] == pytest.approx(raw[b"data"][2, 1024 + 3 * 32 + 4] / 255)
    train = load_data(f"cifar10:{tmp_path}", split="train", samples=12)
    assert len(train) == 12 and len(load_data(f"cifar10:{tmp_path}", split="train")) == 30


def test_cifar10_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected a CIFAR-10 directory"):
        load_data(f"cifar10:{tmp_path / 'nowhere'}")
    with pytest.raises(FileNotFoundError,
                       match="expected a CIFAR-10 batch file, got .*test_batch"):
        load_data(f"cifar10:{tmp_path}")
    with open(tmp_path / "test_batch", "wb") as handle:
        pickle.dump({b"pixels": np.zeros((2, 3072), np.uint8)}, handle)
    with pytest.raises(InputError, match=r"expected a CIFAR-10 batch \('data' of shape"):
        load_data(f"cifar10:{tmp_path}")
    (tmp_path / "test_batch").write_bytes(b"garbage")
    with pytest.raises(InputError, match="expected a CIFAR-10 python pickle"):
        load_data(f"cifar10:{tmp_path}")


class _Exploit:
    def __reduce__(self):
        import os
        return (os.getcwd, ())


def test_cifar10_refuses_code_in_pickles(tmp_path):
    with open(tmp_path / "test_batch", "wb") as handle:
        pickle.dump({b"data": _Exploit()}, handle)
    with pytest.raises(InputError, match="refusing to load posix.getcwd|refusing to load os"):
        load_data(f"cifar10:{tmp_path}")


# ----------------------------------------------------------------------- MedMNIST npz

def _write_npz(path, channels=None, labels_shape=1, classes=3):
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 12), ("val", 4), ("test", 6)):
        shape = (n, 28, 28) if channels is None else (n, 28, 28, channels)
        arrays[f"{split}_images"] = rng.integers(0, 256, shape, dtype=np.uint8)
        arrays[f"{split}_labels"] = rng.integers(0, classes, (n, labels_shape))
    arrays["val_labels"][0, 0] = classes  # the largest label only in val
    np.savez(path, **arrays)
    return arrays


def test_npz_grey(tmp_path):
    arrays = _write_npz(tmp_path / "pneumoniamnist.npz")
    data = load_data(f"npz:{tmp_path / 'pneumoniamnist.npz'}")
    _check(data, 6, (1, 28, 28), 4)
    assert data.name == "npz:pneumoniamnist"
    assert data.y.tolist() == arrays["test_labels"][:, 0].tolist()
    torch.testing.assert_close(data.x[3, 0], torch.from_numpy(
        arrays["test_images"][3].astype(np.float32) / 255))
    assert len(load_data(f"npz:{tmp_path / 'pneumoniamnist.npz'}", split="val")) == 4
    assert len(load_data(f"npz:{tmp_path / 'pneumoniamnist.npz'}", split="train")) == 12


def test_npz_rgb(tmp_path):
    arrays = _write_npz(tmp_path / "bloodmnist.npz", channels=3)
    data = load_data(f"npz:{tmp_path / 'bloodmnist.npz'}", samples=3)
    _check(data, 3, (3, 28, 28), 4)
    full = load_data(f"npz:{tmp_path / 'bloodmnist.npz'}")
    expected = torch.from_numpy(arrays["test_images"][0].astype(np.float32) / 255)
    torch.testing.assert_close(full.x[0], expected.permute(2, 0, 1))


def test_npz_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="expected a MedMNIST .npz file, got .*none"):
        load_data(f"npz:{tmp_path / 'none.npz'}")
    np.savez(tmp_path / "partial.npz", train_images=np.zeros((2, 4, 4), np.uint8))
    with pytest.raises(InputError, match=r"expected arrays 'test_images' and 'test_labels' .*"
                                         r"got keys \['train_images'\]"):
        load_data(f"npz:{tmp_path / 'partial.npz'}")
    _write_npz(tmp_path / "chestmnist.npz", labels_shape=14, classes=2)
    with pytest.raises(InputError, match="multi-label MedMNIST tasks are not supported"):
        load_data(f"npz:{tmp_path / 'chestmnist.npz'}")
    (tmp_path / "broken.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="expected a MedMNIST .npz file at"):
        load_data(f"npz:{tmp_path / 'broken.npz'}")


@pytest.mark.parametrize("bad, word", [(np.nan, "NaN"), (np.inf, "an infinite value")])
def test_npz_with_non_finite_pixels_says_so(tmp_path, bad, word):
    images = np.random.default_rng(0).uniform(size=(5, 4, 4)).astype(np.float32)
    images[2, 1, 1] = bad
    np.savez(tmp_path / "bad.npz", test_images=images, test_labels=np.zeros((5, 1), int))
    with pytest.raises(InputError, match=f"finite pixel values .* got {word} "
                                         r"\(first in sample 2\)"):
        load_data(f"npz:{tmp_path / 'bad.npz'}")


# ------------------------------------------------------------------- channels

def test_grey_to_rgb_repeats_the_channel_and_back_is_the_identity():
    grey = load_data("digits", samples=10)
    rgb = load_data("digits", samples=10, channels=3)
    assert rgb.x.shape == (10, 3, 8, 8)
    for c in range(3):
        assert torch.equal(rgb.x[:, c], grey.x[:, 0])
    back = load_data("digits", samples=10, channels=1)
    assert torch.equal(back.x, grey.x)


def test_rgb_to_grey_is_the_luma_pillow_uses(tmp_path):
    arrays = _write_npz(tmp_path / "bloodmnist.npz", channels=3)
    data = load_data(f"npz:{tmp_path / 'bloodmnist.npz'}", channels=1)
    rgb = torch.from_numpy(arrays["test_images"].astype(np.float32) / 255)
    expected = rgb @ torch.tensor([0.299, 0.587, 0.114])
    assert data.x.shape[1] == 1
    torch.testing.assert_close(data.x[:, 0], expected)


def test_channels_must_be_one_or_three():
    with pytest.raises(InputError, match="expected channels 1 or 3, got 2"):
        load_data("digits", channels=2)


# ------------------------------------------------------------------ argument errors

@pytest.mark.parametrize("kwargs, match", [
    (dict(spec="mnist"), "expected a data specification digits, lfw, folder:PATH, "
                         "cifar10:PATH, npz:PATH, got 'mnist'"),
    (dict(spec="npz:"), "expected a path after 'npz:', got 'npz:'"),
    (dict(spec=3), "expected a specification string .* got int"),
    (dict(spec="digits", split="dev"), "expected split in train, val, test, got 'dev'"),
    (dict(spec="digits", split="val"), "split 'train' or 'test' for 'digits'"),
    (dict(spec="digits", samples=0), "expected samples as a positive integer or None, got 0"),
    (dict(spec="digits", seed=-1), "expected seed as a non-negative integer, got -1"),
    (dict(spec="digits", size=(3, 0)), r"expected size as a positive integer or an \(H, W\)"),
], ids=["unknown", "no-path", "not-a-string", "split", "no-val", "samples", "seed", "size"])
def test_argument_errors(kwargs, match):
    spec = kwargs.pop("spec")
    with pytest.raises(InputError, match=match):
        load_data(spec, **kwargs)


def test_every_spec_is_listed():
    assert DATA_SPECS == ("digits", "lfw", "folder:PATH", "cifar10:PATH", "npz:PATH")
