"""The computing half of a check: per-model constants and per-sample measurements.

Per model, once (:func:`model_info`): one trace (:func:`numeric.graph.trace_model`) gives
the certified global bound on ``λ_max(F(x))``, the certified Lipschitz bound ``L`` of the
centred logits (the margin between two classes depends only on them) and, from a second
trace without BatchNorm folding, pooling merging or centring, the plain layer-norm product.
Per sample, in chunks (:func:`measure_chunk`), the stages of :data:`STAGES`:

``spectrum``
    exact ``λ_max(F(x))``, ``tr F(x)`` and the top of the spectrum in float64 (exact for
    ``K <= 64``: ``K - 1`` vector–Jacobian products; Lanczos and Hutch++ beyond);
``local_bound``
    the certified bound at the sample, from the same trace;
``blackbox``
    the estimate from probabilities only (``queries`` evaluations);
``attack``
    the smallest L2 perturbation the minimum-norm attack finds (``inf``: none);
``pgd``
    robustness under PGD at the stated radii;
``certified_radius``
    the global certificate ``margin / (sqrt(2) L)`` (Tsuzuku et al. 2018) and the region
    certificate (the margin against the integrated region bound,
    :meth:`numeric.graph.TracedModel.certified_radius`) and, for networks of affine maps,
    ReLU and max pooling, linear bound propagation of the margins over the ball and the
    attack's box (CROWN, :mod:`numeric.graph.crown`), each kept, and the best of them: no
    perturbation below it (inside the box) changes the prediction, so it can never exceed
    the attack radius; with them the region bound on ``λ_max`` over the ball of a quarter of the
    attack radius.

A new per-sample measurement is one stage function and one line in :data:`STAGES` (and its
key in :data:`numeric.check.results.SAMPLE_FIELDS`). Logs, reports and exit status are
:mod:`numeric.check.run`'s business.

References
----------
Tsuzuku, Sato, Sugiyama (2018), "Lipschitz-Margin Training", NeurIPS.
"""

from __future__ import annotations

import hashlib
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from numeric.check.results import CheckSettings, ModelInfo
from numeric.check.theory import describe_family, layer_constant
from numeric.errors import InputError
from numeric.validation import first_line

__all__ = ["ModelToCheck", "Chunk", "STAGES", "EXACT_SPECTRUM_MAX_CLASSES", "validate_model",
           "weights_hash", "model_info", "measure_chunk"]

#: Up to this many classes the whole spectrum is computed exactly (K - 1 VJPs per input);
#: beyond it, the top of the spectrum comes from Lanczos and the trace from Hutch++.
EXACT_SPECTRUM_MAX_CLASSES = 64


@dataclass
class ModelToCheck:
    """A model handed to a check: display name, ``--model`` spec, module (eval mode, on the
    run's device), when known how it was trained (``"pgd"`` or ``"normal"``; default: the
    module's ``fimbound_training`` attribute), and optionally a ``recipe``: a picklable
    function with no arguments that builds the same module again (on the CPU), which lets
    :mod:`numeric.check.workers` compute it in another process."""

    name: str
    spec: str
    module: nn.Module
    training: str | None = None
    recipe: Callable[[], nn.Module] | None = None


@dataclass
class Chunk:
    """What every stage of one chunk sees. ``x`` Tensor of shape (B, ...); ``labels``,
    ``pred`` LongTensor (B,); ``margin`` float64 Tensor (B,); ``columns`` the fields the
    stages before have produced."""

    model: nn.Module
    traced: object
    info: ModelInfo
    settings: CheckSettings
    x: torch.Tensor
    labels: torch.Tensor
    pred: torch.Tensor
    margin: torch.Tensor
    generator: torch.Generator
    columns: dict = field(default_factory=dict)   # the earlier stages' outputs


def validate_model(name: str, model: nn.Module, x: torch.Tensor, num_classes: int) -> None:
    """Fail early, in one line, if ``model`` cannot be checked on inputs like ``x``.

    Raises
    ------
    InputError
        The model rejects the inputs (the message suggests ``--channels`` / ``--size``
        when the channel count or image size is the likely cause), returns something other
        than logits of shape (B, K) with K the number of classes, returns probabilities,
        or returns non-finite logits.
    """
    try:
        with torch.no_grad():
            out = model(x[:2])
    except Exception as err:  # the model's own error: shape, dtype, device
        raise InputError(f"check: model {name!r} rejects inputs of shape "
                         f"{tuple(x.shape[1:])}: {first_line(err)}"
                         f"{_shape_hint(str(err), x)}") from err
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(f"check: expected model {name!r} to return logits of shape (B, K), "
                         f"got {shape}.")
    if out.shape[1] != num_classes:
        raise InputError(f"check: model {name!r} has {out.shape[1]} outputs but the data "
                         f"has {num_classes} classes.")
    if not torch.isfinite(out).all():
        raise InputError(f"check: expected finite logits from model {name!r}, got "
                         f"{out[~torch.isfinite(out)].flatten()[0].item()} on the first "
                         f"samples.")
    row_sums = out.sum(dim=1)
    if ((out >= 0) & (out <= 1)).all() and torch.allclose(row_sums, torch.ones_like(row_sums),
                                                          atol=1e-4):
        raise InputError(f"check: model {name!r} seems to return probabilities (rows in "
                         f"[0, 1] summing to 1); fimbound needs logits — remove the final "
                         f"softmax.")


def _shape_hint(message: str, x: torch.Tensor) -> str:
    channels = x.shape[1] if x.ndim == 4 else None
    if channels is not None and "channels" in message:
        other = 3 if channels == 1 else 1
        return f" (the data has {channels} channel(s); try --channels {other})"
    if x.ndim == 4 and ("size" in message or "shape" in message):
        return " (try --size to resize the images to what the model expects)"
    return ""


def weights_hash(model: nn.Module) -> str:
    """SHA-256 (first 16 hex digits) of the names, dtypes, shapes and bytes of every entry
    of ``model.state_dict()``: two models with the same hash compute the same numbers.

    Cost: one pass over the weights (about 0.1 s per 100 MB).
    """
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        if isinstance(value, torch.Tensor):
            tensor = value.detach().to("cpu").contiguous()
            digest.update(f"{tensor.dtype}{tuple(tensor.shape)}".encode())
            digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes()
                          if tensor.numel() else b"")
        else:
            digest.update(repr(value).encode())
    return digest.hexdigest()[:16]


def model_info(model: ModelToCheck, example: torch.Tensor, num_classes: int
               ) -> tuple[ModelInfo, object]:
    """Per-model constants and the trace every chunk reuses.

    The global bound ``sup_x λ_max(F(x))`` and the Lipschitz bound ``L`` of the centred
    logits are certified upper bounds (:func:`numeric.graph.trace_model`); so is the plain
    product ``½ (∏ ‖layer‖)²`` of a second trace without BatchNorm folding, pooling merging
    or centring, which is only there to show what those tightenings buy.

    Parameters
    ----------
    model : ModelToCheck
    example : Tensor of shape (1, C, H, W)
        Fixes the input shape the bounds hold for.
    num_classes : int

    Returns
    -------
    (ModelInfo, TracedModel)
        The constants (see :class:`ModelInfo`; ``seconds`` times both traces) and the trace
        for local bounds.

    Notes
    -----
    Cost: one ``torch.export`` of the model and two graphs of certified constants from it
    (seconds for a small CNN, minutes for an ImageNet model) and one pass over the weights
    for their hash.
    """
    from numeric.graph import trace_model

    seconds = {}
    start = time.perf_counter()
    traced = trace_model(model.module, example)
    global_bound = float(traced.fisher_bound())
    lipschitz = float(traced.lipschitz_bound("centred_output"))
    seconds["trace"] = time.perf_counter() - start
    start = time.perf_counter()
    plain = traced.retraced(fold_batchnorm=False, centre_logits=False, merge_pooling=False)
    plain_bound = float(plain.fisher_bound())
    seconds["plain_bound"] = time.perf_counter() - start
    family, depth, preset = describe_family(model.spec, model.module)
    training = model.training or getattr(model.module, "fimbound_training", None)
    info = ModelInfo(
        name=model.name, spec=model.spec, num_classes=num_classes,
        global_bound=global_bound, lipschitz=lipschitz, plain_bound=plain_bound,
        certified=bool(traced.certified), family=family, family_depth=depth, preset=preset,
        layer_constant=layer_constant(traced.graph),
        parameters=sum(p.numel() for p in model.module.parameters()),
        weights_hash=weights_hash(model.module), training=training, seconds=seconds)
    return info, traced


# --------------------------------------------------------------------------- stages

def _spectrum(chunk: Chunk) -> dict:
    from numeric.fisher import fisher_eigenvalues, fisher_top_eigenvalue, fisher_trace

    size = chunk.settings.spectrum_size
    num_classes = chunk.info.num_classes
    if num_classes <= EXACT_SPECTRUM_MAX_CLASSES:
        # float64, so that rounding can never pass for a violation (or hide one); the
        # nonzero eigenvalues are all of them, so their sum is the exact trace
        spectrum = fisher_eigenvalues(chunk.model, chunk.x, dtype=torch.float64)
        trace = spectrum.sum(dim=1)
        method, converged = "exact", torch.ones(len(chunk.x), dtype=torch.bool)
    else:
        # Lanczos Ritz values never exceed the true eigenvalues: a soundness failure found
        # with them is real; non-convergence is recorded per sample
        spectrum, diagnostics = fisher_top_eigenvalue(
            chunk.model, chunk.x, method="lanczos", k=min(size, num_classes - 1),
            dtype=torch.float64, return_diagnostics=True)
        method, converged = "lanczos", diagnostics.converged
        trace = fisher_trace(chunk.model, chunk.x, method="hutch++",
                             generator=chunk.generator, dtype=torch.float64)
    spectrum = spectrum[:, :size].double().cpu()
    return {"lambda_max": spectrum[:, 0].tolist(), "lambda_method": [method] * len(chunk.x),
            "lambda_converged": converged.bool().tolist(), "trace": trace.double().tolist(),
            "spectrum": spectrum.tolist()}


def _local_bound(chunk: Chunk) -> dict:
    values = chunk.traced.local_fisher_bound(chunk.x)
    return {"local_bound": torch.as_tensor(values, dtype=torch.float64).tolist()}


def _blackbox(chunk: Chunk) -> dict:
    from numeric.fisher import blackbox_fisher_top_eigenvalue

    def predict_proba(z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.softmax(chunk.model(z), dim=-1)

    estimate = blackbox_fisher_top_eigenvalue(predict_proba, chunk.x,
                                              queries=chunk.settings.queries,
                                              generator=chunk.generator)
    out = {"blackbox": estimate.values.double().tolist(),
           "blackbox_queries": estimate.queries.long().tolist()}
    error = getattr(estimate, "standard_error", None)
    if error is not None:
        out["blackbox_standard_error"] = error.double().tolist()
    return out


def _attack(chunk: Chunk) -> dict:
    from numeric.attacks import minimum_norm_attack
    s = chunk.settings
    members = {"attacks": list(s.attacks)} if s.attacks else {}
    result = minimum_norm_attack(chunk.model, chunk.x, chunk.pred, steps=s.attack_steps,
                                 restarts=s.attack_restarts, generator=chunk.generator,
                                 **members)
    out = {"attack_radius": torch.as_tensor(result.norms, dtype=torch.float64).tolist()}
    found_by = getattr(result, "found_by", None)  # which ensemble member found the minimum
    if found_by is not None:
        out["attack_found_by"] = [str(member) for member in found_by]
    return out


def _pgd(chunk: Chunk) -> dict:
    from numeric.attacks import pgd_attack
    s = chunk.settings
    out = {}
    for norm, radii in (("l2", s.pgd_l2), ("linf", s.pgd_linf)):
        for eps in radii:
            adv = pgd_attack(chunk.model, chunk.x, chunk.labels, eps=eps, norm=norm,
                             steps=s.pgd_steps, restarts=s.pgd_restarts,
                             generator=chunk.generator)
            with torch.no_grad():
                out[f"pgd_{norm}_{eps:g}"] = (chunk.model(adv).argmax(1)
                                              == chunk.labels).tolist()
    return out


def _global_radii(chunk: Chunk) -> list[float]:
    lipschitz = chunk.info.lipschitz
    # the float64 copy's margins of the predictions, less a rounding allowance: the
    # function the bounds are about (a float32 model's logits round differently)
    margins, _ = chunk.traced.certified_margins(chunk.x, chunk.pred)
    others = torch.arange(margins.shape[1]) != chunk.pred.cpu().unsqueeze(1)
    radii = []
    for margin in margins.masked_fill(~others, math.inf).amin(dim=1).tolist():
        if margin <= 0:  # a tie: the prediction is already ambiguous
            radii.append(0.0)
        elif lipschitz == 0:  # constant logits: nothing changes the prediction
            radii.append(math.inf)
        else:
            radii.append(margin / (math.sqrt(2.0) * lipschitz))
    return radii


def _attack_box():
    """The box the attack stage searches (``minimum_norm_attack``'s default bounds)."""
    import inspect
    from numeric.attacks import minimum_norm_attack
    return inspect.signature(minimum_norm_attack).parameters["bounds"].default


def _certified_radius(chunk: Chunk) -> dict:
    from numeric.errors import UnsupportedModuleError

    # a jump (softplus's switch): no radius follows from derivatives, every one is 0
    jumps = chunk.traced.radius_reason() is not None
    radii = [0.0] * len(chunk.pred) if jumps else _global_radii(chunk)
    rows = len(radii)
    region = region_bound = [None] * rows          # not computed (no comparison)
    attack = chunk.columns.get("attack_radius", [math.inf] * rows)
    eps = [r / 4 if math.isfinite(r) else 0.0 for r in attack]
    steps = chunk.settings.region_steps
    linear = [None] * rows
    if steps > 0:
        x = chunk.x.detach()
        try:
            if not jumps:
                region = chunk.traced.certified_radius(x, chunk.pred, steps=steps,
                                                       linear_steps=0).tolist()
            region_bound = chunk.traced.region_bound(
                x, torch.tensor(eps, dtype=torch.float64),
                linear=None if chunk.settings.linear_steps > 0 else False).fisher.tolist()
        except UnsupportedModuleError:
            # a construct with a global rule but no region form: the global radius stands
            # (a failed self-check, UnsoundBoundError, is never swallowed)
            pass
    best = [g if r is None else max(g, r) for g, r in zip(radii, region)]
    if chunk.settings.linear_steps > 0 and not jumps and \
            chunk.traced.linear_reason(chunk.x) is None:
        # over the ball and the attack's box, bisected below the attack radius
        linear = chunk.traced.linear_radius(
            chunk.x.detach(), chunk.pred, torch.tensor(best, dtype=torch.float64),
            torch.tensor(attack, dtype=torch.float64), box=_attack_box(),
            steps=chunk.settings.linear_steps).tolist()
        best = [b if r is None else max(b, r) for b, r in zip(best, linear)]
    return {"certified_radius": best, "certified_radius_global": radii,
            "certified_radius_region": region, "certified_radius_linear": linear,
            "region_eps": eps, "region_bound": region_bound}


#: The per-sample stages, in order: ``(name, function(chunk) -> {field: per-row list})``.
STAGES: tuple[tuple[str, Callable[[Chunk], dict]], ...] = (
    ("spectrum", _spectrum),
    ("local_bound", _local_bound),
    ("blackbox", _blackbox),
    ("attack", _attack),
    ("pgd", _pgd),
    ("certified_radius", _certified_radius),
)


def measure_chunk(model: nn.Module, traced, info: ModelInfo, settings: CheckSettings,
                  x: torch.Tensor, labels: torch.Tensor, indices: Sequence[int],
                  generator: torch.Generator,
                  on_stage: Callable[[str], None] | None = None) -> list[dict]:
    """Run every stage of :data:`STAGES` on one chunk; one record per sample.

    Parameters
    ----------
    model : nn.Module
        In eval mode, on the device of ``x``.
    traced : TracedModel
        The model's trace (:func:`model_info`), shared by every chunk.
    x : Tensor of shape (B, C, H, W)
    labels : LongTensor of shape (B,)
    indices : sequence of int
        The samples' positions in the data (``record["index"]``).
    generator : torch.Generator
        The chunk's generator (:func:`numeric.runner.chunk_generator`).
    on_stage : callable, optional
        Called with each stage's name before it runs (for a progress display).

    Returns
    -------
    list of dict
        The keys of :data:`numeric.check.results.SAMPLE_FIELDS`; ``"seconds"`` holds each
        stage's time divided by the chunk size.

    Notes
    -----
    Cost per chunk of B samples with K classes: ``K - 1`` backward passes (spectrum), the
    local bound's passes, ``queries`` forward passes per sample (black-box), the attack
    ensemble's ``O(steps · restarts)`` forward and backward passes, and ``steps · restarts``
    per PGD radius; the attack dominates on small models.
    """
    with torch.no_grad():
        logits = model(x)
    pred = logits.argmax(dim=1)
    top2 = logits.double().topk(2, dim=1).values
    chunk = Chunk(model=model, traced=traced, info=info, settings=settings, x=x,
                  labels=labels, pred=pred, margin=(top2[:, 0] - top2[:, 1]).cpu(),
                  generator=generator)
    columns: dict[str, list] = chunk.columns
    seconds: dict[str, float] = {}
    for name, stage in STAGES:
        if on_stage is not None:
            on_stage(name)
        start = time.perf_counter()
        with warnings.catch_warnings():
            # torch imports its forward-mode decompositions lazily, written with the
            # deprecated torch.jit.script: a warning about torch, not about the user's run
            warnings.filterwarnings("ignore", category=FutureWarning,
                                    module="torch.jit._script")
            columns.update(stage(chunk))
        seconds[name] = (time.perf_counter() - start) / len(x)
    records = []
    for row, index in enumerate(indices):
        record = {"index": int(index), "label": int(labels[row]), "pred": int(pred[row]),
                  "correct": bool(pred[row] == labels[row]),
                  "margin": float(chunk.margin[row])}
        record.update({key: values[row] for key, values in columns.items()})
        record["seconds"] = seconds
        records.append(record)
    return records
