"""Load a torch model from a command-line specification.

A specification is one of

``torchvision:NAME``
    ``torchvision.models.NAME`` built with random weights (nothing is downloaded);
    pass ``weights=PATH`` to load a local state dict.
``PATH.py:FACTORY``
    the callable ``FACTORY`` in the Python file ``PATH.py``, called with no arguments.
``fimbound:NAME``
    one of the toolkit's own small models (:mod:`numeric.models`).

Construction is seeded (``seed``, default 0) with the global torch RNG forked, so a
random-init model is the same on every run and the caller's RNG is untouched. The model is
returned in eval mode: every quantity fimbound measures is that of the deployed
(inference-mode) network, and BatchNorm in train mode breaks ``vmap``.
"""

from __future__ import annotations

import importlib.util
import re
import warnings
from pathlib import Path

import torch
from torch import nn

from numeric.errors import InputError
from numeric.validation import first_line

__all__ = ["load_model", "parse_model_spec", "display_names"]


def parse_model_spec(spec: str) -> tuple[str, str]:
    """Split ``spec`` into ``(kind, target)`` with kind in torchvision/file/fimbound.

    >>> parse_model_spec("torchvision:resnet18")
    ('torchvision', 'resnet18')
    >>> parse_model_spec("models/net.py:build")
    ('file', 'models/net.py:build')
    """
    if spec.startswith("torchvision:"):
        return "torchvision", spec.split(":", 1)[1]
    if spec.startswith("fimbound:"):
        return "fimbound", spec.split(":", 1)[1]
    path, sep, factory = spec.rpartition(":")
    if sep and path.endswith(".py") and factory.isidentifier():
        return "file", spec
    raise InputError(
        f"load_model: expected 'torchvision:NAME', 'fimbound:NAME' or 'FILE.py:FACTORY', "
        f"got {spec!r}.")


def _from_torchvision(name: str, num_classes: int | None) -> nn.Module:
    try:
        import torchvision.models as tvm
    except ImportError as err:
        raise InputError(f"load_model: expected torchvision for 'torchvision:{name}', got "
                         f"none installed (pip install torchvision).") from err
    builders = {n for n in tvm.list_models(module=tvm)}
    if name not in builders:
        close = sorted(b for b in builders if name.lower()[:3] in b)[:6]
        raise InputError(f"load_model: torchvision has no model {name!r}"
                         + (f"; similar: {', '.join(close)}." if close else "."))
    kwargs = {"weights": None}
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    return tvm.get_model(name, **kwargs)


def _from_file(target: str) -> nn.Module:
    path_text, _, factory_name = target.rpartition(":")
    path = Path(path_text)
    if not path.is_file():
        raise FileNotFoundError(f"load_model: model file {str(path)!r} does not exist.")
    spec = importlib.util.spec_from_file_location(f"fimbound_user_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as err:
        raise InputError(f"load_model: importing {str(path)!r} failed: "
                         f"{type(err).__name__}: {first_line(err)}") from err
    factory = getattr(module, factory_name, None)
    if not callable(factory):
        raise InputError(f"load_model: {str(path)!r} defines no callable {factory_name!r}.")
    try:
        model = factory()
    except Exception as err:  # the user's code: say where, in one line
        raise InputError(f"load_model: {factory_name}() in {str(path)!r} raised "
                         f"{type(err).__name__}: {first_line(err)}") from err
    if not isinstance(model, nn.Module):
        raise InputError(f"load_model: {target!r} returned {type(model).__name__}, "
                         f"expected a torch.nn.Module.")
    return model


def _from_fimbound(name: str, num_classes: int | None) -> nn.Module:
    from numeric import models
    kwargs = {} if num_classes is None else {"num_classes": num_classes}
    return models.build(name, **kwargs)


def load_model(spec: str, weights: str | Path | None = None, *,
               num_classes: int | None = None, device: str | torch.device = "cpu",
               seed: int = 0) -> nn.Module:
    """Build the model named by ``spec``, load ``weights`` if given, return it in eval mode.

    Parameters
    ----------
    spec : str
        ``torchvision:NAME``, ``fimbound:NAME`` or ``FILE.py:FACTORY``.
    weights : path, optional
        A file saved with ``torch.save(model.state_dict(), path)`` (or a dict holding a
        ``"state_dict"`` entry). Keys and shapes must match the model exactly.
    num_classes : int, optional
        Passed to torchvision and fimbound builders (ignored for ``FILE.py:FACTORY``).
    device : str or torch.device
        Where the model is placed.
    seed : int
        Seeds the global torch RNG while the model is built (restored afterwards), so
        random-init weights are the same on every run with the same seed.

    Raises
    ------
    InputError
        The specification is malformed, names no model, the factory raises, torchvision
        is missing for ``torchvision:``, or the weights are unreadable or do not match.
    FileNotFoundError
        The model file or the weights file does not exist.
    """
    kind, target = parse_model_spec(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        if kind == "torchvision":
            model = _from_torchvision(target, num_classes)
        elif kind == "fimbound":
            model = _from_fimbound(target, num_classes)
        else:
            model = _from_file(target)
    if weights is not None:
        _load_weights(model, Path(weights))
    return model.to(device).eval()


def _load_weights(model: nn.Module, path: Path) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"load_model: weights file {str(path)!r} does not exist.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch's note on pickle protocols
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:
        raise InputError(f"load_model: expected a state dict saved with torch.save in "
                         f"{str(path)!r}, got a file torch cannot read safely "
                         f"({_torch_load_reason(err)}).") from err
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise InputError(f"load_model: {str(path)!r} holds {type(state).__name__}, "
                         f"expected a state dict.")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        raise InputError(f"load_model: weights in {str(path)!r} do not match the model: "
                         f"{detail}") from err



def _torch_load_reason(err: BaseException) -> str:
    """The cause of a failed ``torch.load`` without torch's advice about ``weights_only``."""
    text = str(err)
    match = re.search(r"WeightsUnpickler error:\s*(.+)", text)
    if match:
        return match.group(1).strip().splitlines()[0]
    if "Weights only load failed" in text:
        return type(err).__name__
    return f"{type(err).__name__}: {first_line(err)}"


def display_names(specs: list[str]) -> list[str]:
    """Readable, distinct names for ``--model`` specifications, in order.

    ``torchvision:resnet18`` -> ``resnet18``, ``fimbound:vgg`` -> ``vgg``,
    ``path/nets.py:build_small`` -> ``build_small`` (the factory); a name shared by
    several specifications gets its file (``nets.build``), then a position suffix.

    >>> display_names(["a.py:build", "b.py:build", "torchvision:vgg11", "c.py:small"])
    ['a.build', 'b.build', 'vgg11', 'small']
    >>> display_names(["fimbound:vgg", "fimbound:vgg"])
    ['vgg-1', 'vgg-2']
    """
    def short(spec: str) -> str:
        return spec.rsplit(":", 1)[-1]

    def qualified(spec: str) -> str:
        kind, _, rest = spec.rpartition(":")
        return f"{Path(kind).stem}.{rest}" if kind.endswith(".py") else rest

    names = [short(s) for s in specs]
    names = [qualified(s) if names.count(n) > 1 else n for s, n in zip(specs, names)]
    return [f"{n}-{i + 1}" if names.count(n) > 1 else n for i, n in enumerate(names)]
