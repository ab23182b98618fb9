"""The CUDA rows of RESULTS.md: torchvision resnet18 and vit_b_16 at 224x224, K = 1000.

Samples per second, on one GPU, for what ``fimbound check`` computes per sample:

- lambda_max(F(x)) by the exact path (``fisher_top_eigenvalue(..., "exact")``: K - 1 VJPs
  packed into few backward passes, float32 without TF32) and by the default path
  (``method="auto"``: Lanczos), next to the paper's recipe (one backward pass per input
  and class, :mod:`benchmarks.baseline`) on the first two inputs;
- certified bounds: one trace (``numeric.graph.trace_model``) and its global
  ``fisher_bound()`` (seconds, once per model), then ``local_fisher_bound(x)`` per sample;
- the minimum-norm attack (``numeric.attacks.minimum_norm_attack``).

``python -m benchmarks --gpu`` runs only this section and puts it into the existing
RESULTS.md; ``make bench`` includes it. Without a GPU every row says "not run: no GPU"
and nothing else changes. A measurement that fails is reported in its row (one line),
not raised, so that one unsupported model does not hide the others.
"""

from __future__ import annotations

import sys
import time

import torch
from torch import nn

__all__ = ["run", "torchvision_model", "TITLE", "MODELS"]

#: The heading that ``python -m benchmarks --gpu`` replaces in RESULTS.md.
TITLE = "## GPU (CUDA): torchvision at 224x224, K = 1000"

MODELS = ("resnet18", "vit_b_16")

_QUANTITIES = ("lambda_max, exact", "lambda_max, default (auto)", "lambda_max, paper recipe",
               "certified global bound (trace + fisher_bound)", "certified local bound",
               "minimum-norm attack")


def torchvision_model(name: str, size: int, seed: int = 0) -> nn.Module:
    """A seeded random-init torchvision model with 1000 classes, in eval mode.

    torchvision initialises the ViT head to zero (then F = 0); it is redrawn N(0, 0.05^2).
    """
    import torchvision.models as tvm

    torch.manual_seed(seed)
    extra = {"image_size": size} if name.startswith("vit") else {}
    model = tvm.get_model(name, weights=None, **extra)
    if name.startswith("vit"):
        nn.init.normal_(model.heads.head.weight, std=0.05)
    return model.eval()


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _measure(device: torch.device, function):
    """(seconds, result, peak GiB or None) of one call; exceptions are returned."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    _synchronize(device)
    start = time.perf_counter()
    try:
        result = function()
    except Exception as err:  # reported in the table, see the module docstring
        return None, err, None
    _synchronize(device)
    seconds = time.perf_counter() - start
    peak = (torch.cuda.max_memory_allocated(device) / 2 ** 30
            if device.type == "cuda" else None)
    return seconds, result, peak


def _cell(err: BaseException) -> str:
    text = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return f"failed: {type(err).__name__}: {text[:120]}".replace("|", "/")


def _model_rows(name: str, device: torch.device, batch: int, size: int) -> list[str]:
    from benchmarks.baseline import paper_top_eigenvalue
    from numeric.attacks import minimum_norm_attack
    from numeric.fisher import fisher_top_eigenvalue
    from numeric.graph import trace_model

    model = torchvision_model(name, size).to(device)
    x = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    x = x.to(device)
    with torch.no_grad():
        labels = model(x).argmax(dim=-1)
    rows = []

    def row(quantity, seconds, count, peak, note):
        rate = "-" if seconds is None or count is None else f"{count / seconds:.2f}"
        shown = "-" if seconds is None else f"{seconds:.2f}"
        memory = "-" if peak is None else f"{peak:.1f}"
        rows.append(f"| {name} | {quantity} | {rate} | {shown} | {memory} | {note} |")
        print(f"[bench gpu] {rows[-1]}", file=sys.stderr, flush=True)

    generator = torch.Generator().manual_seed(0)
    exact = None
    for quantity, method in (("lambda_max, exact", "exact"),
                             ("lambda_max, default (auto)", "auto")):
        seconds, result, peak = _measure(device, lambda: fisher_top_eigenvalue(
            model, x, method, generator=generator, return_diagnostics=True))
        if seconds is None:
            row(quantity, None, None, None, _cell(result))
            continue
        values, diagnostics = result
        note = f"ran {diagnostics.method}"
        if exact is None:
            exact = values.double()
        else:
            error = float(((values.double() - exact) / exact).abs().max())
            note += (f", {diagnostics.products} products (block "
                     f"{diagnostics.block_size}), max rel. diff vs exact {error:.1e}")
        row(quantity, seconds, batch, peak, note)
    pair = x[:2]
    seconds, result, peak = _measure(device, lambda: paper_top_eigenvalue(model, pair))
    row("lambda_max, paper recipe", seconds, len(pair), peak,
        "first 2 inputs, one backward pass per input and class" if seconds is not None
        else _cell(result))
    seconds, traced, peak = _measure(device, lambda: trace_model(model, x[:1]))
    if seconds is None:
        row("certified global bound (trace + fisher_bound)", None, None, None, _cell(traced))
        row("certified local bound", None, None, None, "needs the trace")
    else:
        more, value, peak2 = _measure(device, traced.fisher_bound)
        note = (f"trace {seconds:.1f} s, bound {value:.3g}" if more is not None
                else _cell(value))
        row("certified global bound (trace + fisher_bound)",
            None if more is None else seconds + more, None, peak2, note)
        seconds, local, peak = _measure(device, lambda: traced.local_fisher_bound(x))
        row("certified local bound", seconds, batch, peak,
            "per sample" if seconds is not None else _cell(local))
    seconds, result, peak = _measure(device, lambda: minimum_norm_attack(
        model, x, labels, generator=torch.Generator().manual_seed(0)))
    row("minimum-norm attack", seconds, batch, peak,
        "default ensemble" if seconds is not None else _cell(result))
    return rows


def run(quick: bool = False, *, device: torch.device | None = None,
        size: int = 224, batch: int | None = None) -> str:
    """Markdown section; ``device``/``size``/``batch`` exist to smoke-test it on a CPU."""
    if device is None and not torch.cuda.is_available():
        rows = [f"| {name} | {quantity} | not run: no GPU | - | - | - |"
                for name in MODELS for quantity in _QUANTITIES]
        where = "No GPU in this run: every row is not run."
    else:
        device = device or torch.device("cuda", torch.cuda.current_device())
        batch = batch or (4 if quick else 16)
        name = (torch.cuda.get_device_name(device) if device.type == "cuda"
                else "CPU (smoke test)")
        where = (f"{name}; batch {batch} per call, float32 without TF32 in the estimators; "
                 f"random-init weights; one timed call each (the first, so it includes any "
                 f"kernel selection).")
        rows = [line for model in MODELS for line in _model_rows(model, device, batch, size)]
    return "\n".join([
        TITLE, "", where, "",
        "| model | quantity | samples/s | seconds | peak GiB | notes |",
        "|---|---|---|---|---|---|", *rows])
