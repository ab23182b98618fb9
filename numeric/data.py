"""Offline image data: embedded sets and local files in common formats.

:func:`load_data` reads one of

``digits``
    scikit-learn's handwritten digits: 1797 grey 8×8 images, 10 classes, pixel / 16.
``lfw``
    scikit-image's ``lfw_subset``: 200 grey 25×25 crops, the first 100 faces and the
    last 100 non-faces (background patches of the same photographs); 2 classes
    ``("face", "non-face")``.
``folder:PATH``
    an ImageFolder-style directory: one subfolder per class (sorted names are the
    classes), holding PNG / JPEG / BMP / GIF / TIFF / WebP / PNM files, read with Pillow.
    ``PATH/train``, ``PATH/val``, ``PATH/test`` are used as the splits when present;
    a folder without them is evaluation data and serves ``split="test"`` only.
    Images are grey (1 channel) when every file in the folder is grey, else RGB.
``cifar10:PATH``
    the standard CIFAR-10 python batches (``data_batch_1`` … ``data_batch_5``,
    ``test_batch``, ``batches.meta``) in ``PATH`` or ``PATH/cifar-10-batches-py``.
``npz:PATH``
    a MedMNIST ``.npz`` file: ``train_images``, ``train_labels``, ``val_*``, ``test_*``;
    images (N, H, W) or (N, H, W, C) uint8, labels (N, 1) (single-label tasks only).

Nothing is downloaded. Every loader returns pixels in [0, 1] as a float32 Tensor of shape
(N, C, H, W). The train / test split of ``digits`` and ``lfw`` is stratified 75 / 25 with
a fixed seed (:data:`SPLIT_SEED`), so ``split="train"`` and ``split="test"`` never overlap
whatever ``seed`` a caller passes; ``seed`` only chooses the ``samples`` subset.

Examples
--------
>>> data = load_data("digits", samples=20)
>>> data.x.shape, data.num_classes, data.y.bincount().tolist()
(torch.Size([20, 1, 8, 8]), 10, [2, 2, 2, 2, 2, 2, 2, 2, 2, 2])
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from numeric.errors import InputError

__all__ = ["Dataset", "load_data", "DATA_SPECS", "SPLIT_SEED", "IMAGE_SUFFIXES"]

#: The specifications :func:`load_data` accepts.
DATA_SPECS: tuple[str, ...] = ("digits", "lfw", "folder:PATH", "cifar10:PATH", "npz:PATH")

#: Seed of the fixed stratified 75 / 25 train / test split of ``digits`` and ``lfw``.
SPLIT_SEED = 0

#: File name endings :func:`load_data` reads in ``folder:`` data (lower case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp",
                  ".ppm", ".pgm", ".pbm")

_SPLITS = ("train", "val", "test")
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
_CIFAR_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                "ship", "truck")


@dataclass(frozen=True, eq=False)
class Dataset:
    """Images and labels of one split.

    Attributes
    ----------
    x : Tensor of shape (N, C, H, W)
        float32 pixels in [0, 1].
    y : Tensor of shape (N,)
        int64 labels in ``range(num_classes)``.
    num_classes : int
        Number of classes of the whole data set (not only those present in ``y``).
    name : str
        Short name, e.g. ``"digits"``, ``"cifar10"``, ``"npz:pneumoniamnist"``.
    class_names : tuple of str
        ``num_classes`` names, index = label.
    """

    x: torch.Tensor
    y: torch.Tensor
    num_classes: int
    name: str
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.x.shape[0])


def _fail(what: str, got: object) -> InputError:
    return InputError(f"load_data: expected {what}, got {got}.")


def _missing(what: str, path: Path) -> FileNotFoundError:
    return FileNotFoundError(f"load_data: expected {what}, got {str(path)!r}, which does "
                             f"not exist.")


def _stratified_split(labels: np.ndarray, test_fraction: float,
                      seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and test indices with ``round(test_fraction · n_c)`` of each class c."""
    rng = np.random.default_rng(seed)
    test = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        test.append(rng.permutation(members)[:round(test_fraction * len(members))])
    test_index = np.sort(np.concatenate(test))
    return np.setdiff1d(np.arange(len(labels)), test_index), test_index


def _stratified_subset(labels: np.ndarray, samples: int | None, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subset whose class counts are proportional to the data.

    Counts are ``floor(samples · n_c / N)`` plus one for the classes with the largest
    remainders (ties to the smaller label); all indices when ``samples >= N``.
    """
    total = len(labels)
    if samples is None or samples >= total:
        return np.arange(total)
    classes, counts = np.unique(labels, return_counts=True)
    quota = samples * counts / total
    take = np.floor(quota).astype(int)
    order = np.argsort(-(quota - take), kind="stable")
    take[order[:samples - take.sum()]] += 1
    rng = np.random.default_rng(seed)
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(chosen))


def _resize(x: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    if size is None or tuple(x.shape[-2:]) == size:
        return x
    resized = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return resized.clamp(0.0, 1.0)


# ------------------------------------------------------------------ embedded data sets

def _split_embedded(images: np.ndarray, labels: np.ndarray, split: str,
                    spec: str) -> tuple[np.ndarray, np.ndarray]:
    if split == "val":
        raise _fail(f"split 'train' or 'test' for {spec!r} (it has no validation split)",
                    repr(split))
    train, test = _stratified_split(labels, 0.25, SPLIT_SEED)
    index = train if split == "train" else test
    return images[index], labels[index]


def _digits(split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as err:
        raise _fail("scikit-learn installed for 'digits' (pip install scikit-learn)",
                    "an ImportError") from err
    bunch = load_digits()
    images = (bunch.images / 16.0)[:, None].astype(np.float32)
    labels = bunch.target.astype(np.int64)
    images, labels = _split_embedded(images, labels, split, "digits")
    return images, labels, tuple(str(d) for d in range(10))


def _lfw(split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    try:
        from skimage.data import lfw_subset
    except ImportError as err:
        raise _fail("scikit-image installed for 'lfw' (pip install scikit-image)",
                    "an ImportError") from err
    raw = np.asarray(lfw_subset())
    if raw.shape != (200, 25, 25):
        raise _fail("skimage.data.lfw_subset() of shape (200, 25, 25)", raw.shape)
    scale = 255.0 if raw.dtype == np.uint8 else 1.0
    images = (raw / scale)[:, None].astype(np.float32)
    labels = np.repeat(np.array([0, 1], dtype=np.int64), 100)  # 100 faces, then 100 not
    images, labels = _split_embedded(images, labels, split, "lfw")
    return images, labels, ("face", "non-face")


# ----------------------------------------------------------------------- image folder

def _folder_split(root: Path, split: str) -> Path:
    present = [name for name in _SPLITS if (root / name).is_dir()]
    if split in present:
        return root / split
    if present:
        raise _fail(f"a subfolder {split!r} in {str(root)!r}", f"only {', '.join(present)}")
    if split != "test":
        raise _fail(f"a {split!r} subfolder in {str(root)!r} for split={split!r}",
                    "a folder without split subfolders, which serves split='test' only")
    return root


def _folder(path: Path, split: str, samples: int | None, seed: int,
            size: tuple[int, int] | None) -> tuple[torch.Tensor, np.ndarray, tuple[str, ...]]:
    from PIL import Image

    if not path.exists():
        raise _missing("an image folder", path)
    if not path.is_dir():
        raise _fail("a directory after 'folder:'", repr(str(path)))
    base = _folder_split(path, split)
    files, labels, classes = [], [], []
    for child in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
        images = sorted(f for f in child.iterdir()
                        if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
        if images:
            labels += [len(classes)] * len(images)
            files += images
            classes.append(child.name)
    if not files:
        raise _fail(f"class subfolders holding images ({', '.join(IMAGE_SUFFIXES)}) in "
                    f"{str(base)!r}", "none")
    grey = True
    for file in files:  # Image.open reads the header only
        with Image.open(file) as image:
            grey = grey and image.mode in _GREY_MODES
    labels_array = np.asarray(labels, dtype=np.int64)
    index = _stratified_subset(labels_array, samples, seed)
    arrays, first_size = [], None
    for i in index:
        with Image.open(files[i]) as image:
            image = image.convert("L" if grey else "RGB")
            if size is not None:
                image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
            elif first_size is None:
                first_size = (image.size, files[i])
            elif image.size != first_size[0]:
                raise _fail(f"images of one size, or size= to resize them ({first_size[1]} "
                            f"is {first_size[0][0]}×{first_size[0][1]})",
                            f"{files[i]} of {image.size[0]}×{image.size[1]}")
            arrays.append(np.asarray(image, dtype=np.float32) / 255.0)
    stacked = np.stack(arrays)
    stacked = stacked[:, None] if grey else stacked.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(stacked)), labels_array[index], tuple(classes)


# -------------------------------------------------------------------------- CIFAR-10

class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, strings and numpy arrays only (no arbitrary code)."""

    _ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray",
                                                             "_reconstruct"),
                ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
                ("numpy", "ndarray"), ("numpy", "dtype"),
                ("_codecs", "encode")}  # how protocol-2 pickles store bytes

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _unpickle(file: Path) -> dict:
    if not file.is_file():
        raise _missing("a CIFAR-10 batch file", file)
    try:
        with file.open("rb") as handle:
            entry = _ArrayUnpickler(handle, encoding="bytes").load()
    except Exception as err:
        raise _fail(f"a CIFAR-10 python pickle in {str(file)!r}",
                    f"{type(err).__name__}: {err}") from err
    if not isinstance(entry, dict):
        raise _fail(f"a dict in the CIFAR-10 file {str(file)!r}", type(entry).__name__)
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}


def _cifar10(path: Path, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    if not path.exists():
        raise _missing("a CIFAR-10 directory", path)
    if (path / "cifar-10-batches-py").is_dir():
        path = path / "cifar-10-batches-py"
    if split == "val":
        raise _fail("split 'train' or 'test' for CIFAR-10 (it has no validation split)",
                    repr(split))
    names = ([f"data_batch_{i}" for i in range(1, 6)] if split == "train"
             else ["test_batch"])
    images, labels = [], []
    for name in names:
        entry = _unpickle(path / name)
        data, target = entry.get("data"), entry.get("labels")
        if (not isinstance(data, np.ndarray) or data.ndim != 2 or data.shape[1] != 3072
                or target is None or len(target) != data.shape[0]):
            raise _fail(f"a CIFAR-10 batch ('data' of shape (N, 3072), 'labels' of length "
                        f"N) in {str(path / name)!r}", f"keys {sorted(map(str, entry))}")
        images.append(data.reshape(-1, 3, 32, 32))
        labels.append(np.asarray(target, dtype=np.int64))
    classes = _CIFAR_NAMES
    if (path / "batches.meta").is_file():
        meta = _unpickle(path / "batches.meta")
        names_raw = meta.get("label_names")
        if not names_raw or len(names_raw) != 10:
            raise _fail(f"10 'label_names' in {str(path / 'batches.meta')!r}",
                        repr(names_raw))
        classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in names_raw)
    label_array = np.concatenate(labels)
    if label_array.min() < 0 or label_array.max() > 9:
        raise _fail("CIFAR-10 labels in 0..9", f"{label_array.min()}..{label_array.max()}")
    return np.concatenate(images).astype(np.float32) / 255.0, label_array, classes


# ----------------------------------------------------------------------- MedMNIST npz

def _npz(path: Path, split: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    if not path.exists():
        raise _missing("a MedMNIST .npz file", path)
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as err:
        raise _fail(f"a MedMNIST .npz file at {str(path)!r}",
                    f"{type(err).__name__}: {err}") from err
    with archive:
        keys = set(archive.files)
        wanted = (f"{split}_images", f"{split}_labels")
        if not set(wanted) <= keys:
            raise _fail(f"arrays {wanted[0]!r} and {wanted[1]!r} in {str(path)!r}",
                        f"keys {sorted(keys)}")
        images, labels = archive[wanted[0]], archive[wanted[1]]
        all_labels = [archive[k] for k in sorted(keys) if k.endswith("_labels")]
    if images.ndim == 4 and images.shape[-1] in (1, 3):
        images = images.transpose(0, 3, 1, 2)
    elif images.ndim == 3:
        images = images[:, None]
    else:
        raise _fail(f"{split}_images of shape (N, H, W) or (N, H, W, C) with C in 1, 3",
                    images.shape)
    if np.issubdtype(images.dtype, np.floating) and not np.isfinite(images).all():
        bad = int(np.argwhere(~np.isfinite(images))[0][0])
        kind = "NaN" if np.isnan(images).any() else "an infinite value"
        raise _fail(f"finite pixel values in {split}_images of {str(path)!r}",
                    f"{kind} (first in sample {bad})")
    if images.dtype == np.uint8:
        images = images.astype(np.float32) / 255.0
    elif not (np.issubdtype(images.dtype, np.floating) and images.size
              and 0.0 <= images.min() and images.max() <= 1.0):
        raise _fail(f"{split}_images of dtype uint8 (or floats in [0, 1])", images.dtype)
    for array in all_labels:
        if not (np.issubdtype(array.dtype, np.integer)
                and (array.ndim == 1 or (array.ndim == 2 and array.shape[1] == 1))):
            raise _fail("single-label integer labels of shape (N,) or (N, 1) (multi-label "
                        "MedMNIST tasks are not supported)", f"{array.dtype} {array.shape}")
    labels = labels.reshape(-1).astype(np.int64)
    if labels.shape[0] != images.shape[0]:
        raise _fail(f"as many {split}_labels as {split}_images ({images.shape[0]})",
                    labels.shape[0])
    num_classes = int(max(int(a.max()) for a in all_labels if a.size)) + 1
    return (images.astype(np.float32), labels,
            tuple(str(c) for c in range(num_classes)))


# ------------------------------------------------------------------------- entry point

def _convert_channels(x: torch.Tensor, channels: int | None) -> torch.Tensor:
    """Grey -> RGB by repeating the channel; RGB -> grey by ITU-R 601 luma (as Pillow)."""
    if channels is None or x.shape[1] == channels:
        return x
    if x.shape[1] == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    if x.shape[1] == 3 and channels == 1:
        weights = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype).view(1, 3, 1, 1)
        return (x * weights).sum(dim=1, keepdim=True).clamp(0.0, 1.0)
    raise _fail(f"images with 1 or 3 channels to convert to {channels}",
                f"{x.shape[1]} channels")


def _check_arguments(spec: object, samples: object, split: object, seed: object,
                     size: object) -> tuple[int, int] | None:
    if not isinstance(spec, str):
        raise _fail(f"a specification string ({', '.join(DATA_SPECS)})",
                    type(spec).__name__)
    if split not in _SPLITS:
        raise _fail(f"split in {', '.join(_SPLITS)}", repr(split))
    if samples is not None and (not isinstance(samples, int) or isinstance(samples, bool)
                                or samples < 1):
        raise _fail("samples as a positive integer or None", repr(samples))
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise _fail("seed as a non-negative integer", repr(seed))
    if size is None:
        return None
    pair = (size, size) if isinstance(size, int) else tuple(size)
    if (len(pair) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                  for v in pair)):
        raise _fail("size as a positive integer or an (H, W) pair", repr(size))
    return pair


def load_data(spec: str, *, samples: int | None = None, split: str = "test", seed: int = 0,
              size: int | tuple[int, int] | None = None,
              channels: int | None = None) -> Dataset:
    """Load a split of an offline image data set as tensors in [0, 1].

    Parameters
    ----------
    spec : str
        ``"digits"``, ``"lfw"``, ``"folder:PATH"``, ``"cifar10:PATH"`` or ``"npz:PATH"``
        (see the module documentation for each format).
    samples : int, optional
        Return at most this many samples: a seeded subset whose class proportions match
        the split's (largest-remainder rounding), in the data's order. All when ``None``
        or larger than the split.
    split : {"test", "train", "val"}
        ``"val"`` exists for ``npz:`` and for folders with a ``val`` subfolder.
    seed : int
        Chooses the ``samples`` subset (not the train / test split).
    size : int or (int, int), optional
        Resize every image to ``size × size`` (or ``H × W``) with bilinear
        interpolation. Without it, a folder's images must all have one size.
    channels : {1, 3}, optional
        Convert the images to this many channels: grey to RGB by repeating the channel
        (what ImageNet-style models such as torchvision's expect), RGB to grey by the
        ITU-R 601 luma. Default: as stored.

    Returns
    -------
    Dataset
        ``x`` float32 Tensor of shape (N, C, H, W) in [0, 1], ``y`` int64 Tensor of shape
        (N,), ``num_classes``, ``name`` and ``class_names``.

    Raises
    ------
    FileNotFoundError
        A path in the specification, or a CIFAR-10 batch file it needs, does not exist.
    InputError
        An unknown specification, an invalid argument, or a file or folder that is not in
        the expected format (the message says what is wrong).

    Examples
    --------
    >>> train = load_data("lfw", split="train")
    >>> test = load_data("lfw")
    >>> len(train), len(test), test.class_names
    (150, 50, ('face', 'non-face'))
    """
    pair = _check_arguments(spec, samples, split, seed, size)
    if channels not in (None, 1, 3):
        raise _fail("channels 1 or 3", repr(channels))
    kind, _, target = spec.partition(":")
    if kind in ("folder", "cifar10", "npz") and not target:
        raise _fail(f"a path after '{kind}:'", repr(spec))
    if kind == "folder" and target:
        path = Path(target).expanduser()
        x, labels, classes = _folder(path, split, samples, seed, pair)
        return Dataset(x=_convert_channels(x, channels), y=torch.from_numpy(labels),
                       num_classes=len(classes), name=f"folder:{path.name}",
                       class_names=classes)
    if spec == "digits":
        images, labels, classes = _digits(split)
        name = "digits"
    elif spec == "lfw":
        images, labels, classes = _lfw(split)
        name = "lfw"
    elif kind == "cifar10" and target:
        images, labels, classes = _cifar10(Path(target).expanduser(), split)
        name = "cifar10"
    elif kind == "npz" and target:
        path = Path(target).expanduser()
        images, labels, classes = _npz(path, split)
        name = f"npz:{path.stem}"
    else:
        raise _fail(f"a data specification {', '.join(DATA_SPECS)}", repr(spec))
    index = _stratified_subset(labels, samples, seed)
    x = _resize(torch.from_numpy(np.ascontiguousarray(images[index])), pair)
    x = _convert_channels(x, channels)
    return Dataset(x=x, y=torch.from_numpy(labels[index]), num_classes=len(classes),
                   name=name, class_names=classes)
