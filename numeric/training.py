"""Deterministic CPU training of the toolkit's small models, with a weight cache.

:func:`train` fits a model to a :class:`numeric.data.Dataset` by AdamW with a
one-cycle learning-rate schedule, either normally or adversarially (Madry et al. 2018:
each mini-batch is replaced by PGD-L2 adversarial examples of radius ``eps``, generated in
eval mode, final iterate). :func:`trained_model` trains one of :data:`numeric.models.
MODEL_NAMES` on the ``digits`` training split, or loads it from the cache, keyed by a hash
of everything that determines the weights.

Determinism: every random draw (initial weights, shuffling, PGD starts) comes from
generators seeded by ``seed``, and training runs with deterministic algorithms on one
intra-op thread: CPU kernels sum in an order that depends on the thread count (weights
trained with one and with two threads differ by up to 1e-3 after two epochs), so one
thread makes a configuration give bit-identical weights on every run and machine with the
same torch build and CPU type. To use two cores, train two models in two processes. The
global torch RNG and thread setting are left as they were.

References
----------
Madry, Makelov, Schmidt, Tsipras, Vladu (2018), "Towards Deep Learning Models Resistant to
Adversarial Attacks", ICLR.
Smith & Topin (2019), "Super-convergence: very fast training of neural networks using
large learning rates" (the one-cycle schedule).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from numeric._atomic import write_atomically
from numeric.errors import InputError

__all__ = ["TrainingConfig", "train", "trained_model", "trained_models", "training_config",
           "available_cores",
           "accuracy", "cache_directory", "TRAINING_VERSION", "ADVERSARIAL_EPS",
           "ADVERSARIAL_NORM", "DEFAULT_EPOCHS"]

#: Bump when the training code or a model's architecture changes: it is part of the cache key.
TRAINING_VERSION = "1"

#: Threat model of adversarial training: PGD in the L2 ball of this radius (pixels in [0, 1];
#: a digit image has L2 norm about 4). At 1.0 the ViT's adversarial training collapses.
ADVERSARIAL_NORM = "l2"
ADVERSARIAL_EPS = 0.5

#: Epochs over the 1347 digits training images, for normal and for adversarial training.
DEFAULT_EPOCHS = {"normal": 20, "adversarial": 15}

#: Gradient-norm clipping; without it adversarial training of the ViT diverges.
_CLIP_NORM = 1.0


@dataclass(frozen=True)
class TrainingConfig:
    """Everything that determines a trained model's weights (hashed into the cache key).

    ``eps``, ``norm`` and ``attack_steps`` matter only when ``adversarial``.
    """

    name: str
    adversarial: bool
    epochs: int
    seed: int = 0
    eps: float = ADVERSARIAL_EPS
    norm: str = ADVERSARIAL_NORM
    attack_steps: int = 4
    batch_size: int = 64
    learning_rate: float = 5e-3
    weight_decay: float = 5e-4
    data: str = "digits"

    def key(self) -> str:
        """SHA-256 (first 16 hex digits) of the configuration, the torch major.minor version,
        :data:`TRAINING_VERSION` and the model's architecture (its ``repr``)."""
        from numeric.models import build
        major_minor = ".".join(torch.__version__.split("+")[0].split(".")[:2])
        with torch.random.fork_rng(devices=[]):  # building draws weights; keep the caller's RNG
            architecture = repr(build(self.name))
        payload = {**asdict(self), "torch": major_minor, "version": TRAINING_VERSION,
                   "architecture": architecture}
        text = json.dumps(payload, sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


@contextmanager
def _deterministic() -> Iterator[None]:
    """Deterministic algorithms on one intra-op thread; the previous settings restored."""
    previous = torch.are_deterministic_algorithms_enabled()
    threads = torch.get_num_threads()
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(previous)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
             batch_size: int = 1024) -> float:
    """Fraction of rows of ``x`` (Tensor of shape (N, ...)) whose argmax logit equals ``y``
    (Tensor of shape (N,)), with the model in eval mode (its mode is restored)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            correct = sum(int((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size])
                              .sum()) for i in range(0, x.shape[0], batch_size))
    finally:
        model.train(was_training)
    return correct / max(x.shape[0], 1)


def train(model: nn.Module, data, *, epochs: int, adversarial: bool = False,
          eps: float = ADVERSARIAL_EPS, norm: str = ADVERSARIAL_NORM, seed: int = 0,
          attack_steps: int = 4, batch_size: int = 64, learning_rate: float = 5e-3,
          weight_decay: float = 5e-4, progress: bool = False) -> nn.Module:
    """Train ``model`` in place on ``data`` and return it in eval mode.

    AdamW with a one-cycle schedule (warm-up over the first 20 % of the steps to
    ``learning_rate``, cosine decay after), cross-entropy loss, gradient norm clipped at
    1, mini-batches reshuffled each epoch. With ``adversarial=True`` each mini-batch is
    replaced by its PGD examples (Madry et al. 2018): the final iterate of
    ``attack_steps`` steps of size ``2.5 · eps / attack_steps`` from a random start in the
    ``norm`` ball of radius ``eps`` (box [0, 1]), generated with the model in eval mode;
    the radius ramps up linearly over the first third of the epochs. Runs on one thread
    with deterministic algorithms (see the module notes); cost about
    ``epochs · N · (1 + attack_steps)`` forward and backward passes of one sample.

    Parameters
    ----------
    model : nn.Module
        Maps Tensor of shape (B, C, H, W) to logits (B, K).
    data : numeric.data.Dataset
        Training images ``data.x`` (N, C, H, W) in [0, 1] and labels ``data.y`` (N,).
    epochs : int
        Passes over the data.
    adversarial : bool
        Adversarial (PGD) training instead of normal training.
    eps, norm, attack_steps
        The PGD threat model and its steps (used only when ``adversarial``).
    seed : int
        Seeds the shuffling and the PGD starting points.
    batch_size, learning_rate, weight_decay
        Optimiser settings.
    progress : bool
        Show a tqdm bar on stderr.

    Returns
    -------
    nn.Module
        ``model`` itself, trained, in eval mode.

    Raises
    ------
    InputError
        A count or radius out of range, or ``data`` without ``x`` and ``y``.
    """
    from numeric.attacks import pgd_attack

    counts = [("epochs", epochs), ("batch_size", batch_size)]
    for label, value in counts + ([("attack_steps", attack_steps)] if adversarial else []):
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise InputError(f"train: expected an integer {label} >= 1, got {value!r}.")
    if adversarial and not eps > 0:
        raise InputError(f"train: expected eps > 0 for adversarial training, got {eps!r}.")
    if not hasattr(data, "x") or not hasattr(data, "y"):
        raise InputError(f"train: expected a Dataset with x and y, got {type(data).__name__}.")
    x, y = data.x, data.y
    generator = torch.Generator().manual_seed(seed)
    batches = -(-x.shape[0] // batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate,
                                  weight_decay=weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=learning_rate, total_steps=epochs * batches, pct_start=0.2)
    bar = _progress(epochs, progress,
                    f"{type(model).__name__} ({'adversarial' if adversarial else 'normal'})")
    with _deterministic():
        for epoch in range(epochs):
            model.train()
            order = torch.randperm(x.shape[0], generator=generator)
            radius = eps * min(1.0, (epoch + 1) / max(1, epochs // 3))
            total = 0.0
            for start in range(0, x.shape[0], batch_size):
                index = order[start:start + batch_size]
                inputs, labels = x[index], y[index]
                if adversarial:
                    inputs = pgd_attack(model, inputs, labels, eps=radius, norm=norm,
                                        steps=attack_steps, restarts=1, loss="ce",
                                        generator=generator, keep="last")
                loss = F.cross_entropy(model(inputs), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(model.parameters(), _CLIP_NORM)
                optimizer.step()
                schedule.step()
                total += float(loss.detach()) * len(index)
            if bar is not None:
                bar.set_postfix(loss=f"{total / x.shape[0]:.3f}")
                bar.update()
    if bar is not None:
        bar.close()
    return model.eval()


def _progress(total: int, enabled: bool, label: str, unit: str = "epoch"):
    if not enabled:
        return None
    from tqdm import tqdm
    return tqdm(total=total, desc=f"training {label}", unit=unit, file=sys.stderr,
                leave=False)


def cache_directory(cache_dir: str | os.PathLike | None = None) -> Path:
    """The weight cache: ``cache_dir``, else ``$FIMBOUND_CACHE``, else
    ``$XDG_CACHE_HOME/fimbound``, else ``~/.cache/fimbound``."""
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    if os.environ.get("FIMBOUND_CACHE"):
        return Path(os.environ["FIMBOUND_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "fimbound"


def _save_atomically(state: dict, path: Path) -> None:
    write_atomically(path, lambda file: torch.save(state, file), binary=True, suffix=".tmp")


def _load_cached(path: Path, config: TrainingConfig, model: nn.Module) -> bool:
    """Load ``path`` into ``model`` if it holds this configuration's weights."""
    if not path.is_file():
        return False
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if state.get("config") != asdict(config):
            return False
        model.load_state_dict(state["state_dict"], strict=True)
    except Exception:  # a truncated or foreign file: retrain and overwrite it
        return False
    return True


def training_config(name: str, *, adversarial: bool, seed: int = 0, epochs: int | None = None,
                    eps: float | None = None) -> TrainingConfig:
    """The :class:`TrainingConfig` :func:`trained_model` uses (defaults filled in).

    A normal model's configuration has ``eps = 0`` and ``attack_steps = 0``, so changing the
    adversarial recipe never invalidates cached normal models.

    >>> training_config("vit", adversarial=True).epochs == DEFAULT_EPOCHS["adversarial"]
    True
    """
    mode = "adversarial" if adversarial else "normal"
    config = TrainingConfig(name=name, adversarial=bool(adversarial), seed=seed,
                            epochs=DEFAULT_EPOCHS[mode] if epochs is None else epochs,
                            eps=ADVERSARIAL_EPS if eps is None else float(eps))
    if not adversarial:
        config = replace(config, eps=0.0, attack_steps=0)
    return config


def trained_model(name: str, *, adversarial: bool, seed: int = 0,
                  cache_dir: str | os.PathLike | None = None, epochs: int | None = None,
                  eps: float | None = None, progress: bool = True) -> nn.Module:
    """One of the toolkit's models trained on ``digits``, from the cache or trained now.

    Parameters
    ----------
    name : {"vgg", "resnet", "densenet", "vit"}
        The family (:func:`numeric.models.build` with 10 classes, 1 channel, 8×8).
    adversarial : bool
        PGD-L2 adversarial training at radius ``eps`` instead of normal training.
    seed : int
        Seeds the initial weights, the shuffling and the attack starts.
    cache_dir : path, optional
        Where weights are cached (default :func:`cache_directory`).
    epochs : int, optional
        Default :data:`DEFAULT_EPOCHS`.
    eps : float, optional
        Adversarial-training radius, default :data:`ADVERSARIAL_EPS`.
    progress : bool
        tqdm progress on stderr while training.

    Returns
    -------
    nn.Module
        On the CPU, in eval mode; maps Tensor of shape (B, 1, 8, 8) to logits (B, 10).
        Its attribute ``fimbound_training`` is ``"pgd"`` or ``"normal"`` (reports mark
        adversarially trained models apart).

    Notes
    -----
    The file ``{name}-{normal|adversarial}-{key}.pt`` holds ``{"config", "state_dict"}``;
    the key hashes the full :class:`TrainingConfig`, the torch major.minor version,
    :data:`TRAINING_VERSION` and the architecture. It is written to a temporary file and
    renamed (``os.replace``), so concurrent runs and interrupted writes never leave a
    partial file under the final name; an unreadable file is retrained and replaced.
    """
    from numeric.data import load_data
    from numeric.models import MODEL_NAMES, build

    if name not in MODEL_NAMES:
        raise InputError(f"trained_model: expected a model name in {', '.join(MODEL_NAMES)}, "
                         f"got {name!r}.")
    config = training_config(name, adversarial=adversarial, seed=seed, epochs=epochs, eps=eps)
    mode = "adversarial" if adversarial else "normal"
    path = cache_directory(cache_dir) / f"{name}-{mode}-{config.key()}.pt"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build(name)
    model.fimbound_training = "pgd" if adversarial else "normal"
    if _load_cached(path, config, model):
        return model.eval()
    data = load_data(config.data, split="train")
    train(model, data, epochs=config.epochs, adversarial=config.adversarial, eps=config.eps,
          norm=config.norm, seed=seed, attack_steps=config.attack_steps,
          batch_size=config.batch_size, learning_rate=config.learning_rate,
          weight_decay=config.weight_decay, progress=progress)
    _save_atomically({"config": asdict(config), "state_dict": model.state_dict()}, path)
    return model.eval()


def _cached(name: str, adversarial: bool, seed: int, cache_dir, epochs: int | None) -> bool:
    from numeric.models import build
    config = training_config(name, adversarial=adversarial, seed=seed, epochs=epochs)
    mode = "adversarial" if adversarial else "normal"
    path = cache_directory(cache_dir) / f"{name}-{mode}-{config.key()}.pt"
    with torch.random.fork_rng(devices=[]):
        return _load_cached(path, config, build(name))


def _train_in_worker(job: tuple[str, bool, int, str | None, int | None]) -> str:
    name, adversarial, seed, cache_dir, epochs = job
    trained_model(name, adversarial=adversarial, seed=seed, cache_dir=cache_dir,
                  epochs=epochs, progress=False)
    return name


def available_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def trained_models(wanted: list[tuple[str, bool]], *, seed: int = 0,
                   cache_dir: str | os.PathLike | None = None, workers: int | None = None,
                   epochs: int | None = None, progress: bool = True) -> list[nn.Module]:
    """Several :func:`trained_model` at once, the uncached ones trained in parallel.

    Training runs on one thread per model (for bit-identical weights, see the module
    notes), so the models missing from the cache are trained in ``workers`` separate
    processes (:func:`numeric.runner.in_processes`), adversarial ones first (they take
    about four times longer);
    every model is then loaded from the cache. The weights are the same as with
    :func:`trained_model` one by one.

    Parameters
    ----------
    wanted : list of (name, adversarial)
    seed, cache_dir, epochs
        As for :func:`trained_model`.
    workers : int, optional
        Training processes; default one per available core, at most one per model to
        train. With 1 the models are trained here, one after the other.
    progress : bool
        A tqdm bar on stderr over the models being trained.

    Returns
    -------
    list of nn.Module
        In the order of ``wanted``.
    """
    from numeric.runner import in_processes

    key_dir = None if cache_dir is None else str(cache_dir)
    missing = [(n, a) for n, a in dict.fromkeys(wanted)
               if not _cached(n, a, seed, cache_dir, epochs)]
    workers = min(workers or available_cores(), len(missing))
    if workers > 1:
        jobs = sorted(missing, key=lambda job: not job[1])  # adversarial first
        bar = _progress(len(jobs), progress, f"{len(jobs)} models in {workers} processes",
                        unit="model")
        try:
            for _ in in_processes(_train_in_worker,
                                  [(n, a, seed, key_dir, epochs) for n, a in jobs], workers):
                if bar is not None:
                    bar.update()
        finally:
            if bar is not None:
                bar.close()
    return [trained_model(n, adversarial=a, seed=seed, cache_dir=cache_dir, epochs=epochs,
                          progress=progress) for n, a in wanted]
