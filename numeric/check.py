"""The main job: bounds vs measured Fisher spectra vs adversarial vulnerability.

:func:`check_models` evaluates every model on the same samples and returns a
:class:`CheckResult` that :mod:`numeric.report` turns into ``report.md``, ``results.json``
and figures. Per model it computes, once, the certified global bound and the Lipschitz
constant of the logits; per sample (in chunks, see :mod:`numeric.runner`) the local bound,
the exact ``λ_max(F(x))``, ``tr F(x)``, the black-box estimate, the smallest L2 perturbation a
strong minimum-norm attack finds, PGD robustness at stated radii, and the certified radius
``margin / (sqrt(2) L)`` (Tsuzuku et al. 2018).

Soundness is a hard requirement: every measured ``λ_max`` must be at most the global bound
and its own local bound, and every certified radius at most the attack radius. A violation
is reported by sample and makes ``fimbound check`` exit with status 1.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from torch import nn

from numeric.errors import InputError
from numeric.runner import (RunContext, ResultLog, chunk_generator, evaluate_chunks,
                            gather_records)

__all__ = ["CheckSettings", "ModelInfo", "ModelResult", "CheckResult", "check_models",
           "infer_family", "validate_model"]

@dataclass(frozen=True)
class CheckSettings:
    """Everything that determines the numbers of a check (and so its resume key)."""

    samples: int = 100
    chunk_size: int = 16
    seed: int = 0
    queries: int = 200
    attack_steps: int = 200
    attack_restarts: int = 2
    pgd_l2: tuple[float, ...] = (0.5, 1.0)
    pgd_linf: tuple[float, ...] = (0.05, 0.1)
    pgd_steps: int = 50
    pgd_restarts: int = 3
    bootstrap: int = 2000
    spectrum_size: int = 10


@dataclass
class ModelInfo:
    """Per-model constants computed once."""

    name: str
    spec: str
    family: str | None
    parameters: int
    num_classes: int
    global_bound: float
    lipschitz: float
    plain_bound: float
    certified: bool
    depth: int | None = None
    layer_constant: float | None = None


@dataclass
class ModelResult:
    info: ModelInfo
    records: list[dict]


@dataclass
class CheckResult:
    settings: CheckSettings
    data_name: str
    models: list[ModelResult]
    analysis: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"settings": asdict(self.settings), "data": self.data_name,
                "models": [{"info": asdict(m.info), "samples": m.records}
                           for m in self.models],
                "analysis": self.analysis}


#: Up to this many classes the whole spectrum is computed exactly (K - 1 VJPs per input);
#: beyond it, the top of the spectrum comes from Lanczos and the trace from Hutch++.
EXACT_SPECTRUM_MAX_CLASSES = 64

_FAMILY_PATTERNS = (("densenet", "densenet"), ("resnet", "resnet"), ("resnext", "resnet"),
                    ("wide_resnet", "resnet"), ("vgg", "vgg"), ("vit", "transformer"),
                    ("swin", "transformer"), ("transformer", "transformer"))


def infer_family(spec: str, model: nn.Module | None = None) -> str | None:
    """Architecture family of a model (for the theoretical ranking), or ``None``.

    A model may declare it with an attribute ``fimbound_family``.

    >>> infer_family("torchvision:densenet121"), infer_family("fimbound:vit")
    ('densenet', 'transformer')
    """
    declared = getattr(model, "fimbound_family", None)
    if declared:
        return str(declared)
    name = spec.split(":", 1)[-1].lower()
    for pattern, family in _FAMILY_PATTERNS:
        if re.search(pattern, name):
            return family
    return None


def validate_model(name: str, model: nn.Module, x: torch.Tensor, num_classes: int) -> None:
    """Fail early, in one line, if ``model`` cannot be checked on inputs like ``x``."""
    try:
        with torch.no_grad():
            out = model(x[:2])
    except Exception as err:  # the model's own error: shape, dtype, device
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise InputError(f"check: model {name!r} rejects inputs of shape "
                         f"{tuple(x.shape[1:])}: {first}") from err
    if not isinstance(out, torch.Tensor) or out.ndim != 2:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise InputError(f"check: expected model {name!r} to return logits of shape (B, K), "
                         f"got {shape}.")
    if out.shape[1] != num_classes:
        raise InputError(f"check: model {name!r} has {out.shape[1]} outputs but the data "
                         f"has {num_classes} classes.")
    row_sums = out.sum(dim=1)
    if ((out >= 0) & (out <= 1)).all() and torch.allclose(row_sums, torch.ones_like(row_sums),
                                                          atol=1e-4):
        raise InputError(f"check: model {name!r} seems to return probabilities (rows in "
                         f"[0, 1] summing to 1); fimbound needs logits — remove the final "
                         f"softmax.")


def _model_info(name: str, spec: str, model: nn.Module, example: torch.Tensor,
                num_classes: int) -> ModelInfo:
    import bounds
    from numeric.graph import fisher_bound, graph_lipschitz_bound, module_graph
    global_bound = float(fisher_bound(model, example))
    # the certified radius needs the Lipschitz constant of the (uncentred) logits
    graph = module_graph(model, example, centre_logits=False)
    lipschitz = graph_lipschitz_bound(graph)
    plain = module_graph(model, example, fold_batchnorm=False, centre_logits=False,
                         merge_pooling=False)
    plain_bound = 0.5 * float(bounds.propagate(plain, check=False)) ** 2
    certified = all(data.get("certified", True) for _, data in graph.nodes(data=True))
    return ModelInfo(name=name, spec=spec, family=infer_family(spec, model),
                     parameters=sum(p.numel() for p in model.parameters()),
                     num_classes=num_classes, global_bound=global_bound,
                     lipschitz=lipschitz, plain_bound=plain_bound, certified=certified,
                     depth=_depth(graph), layer_constant=_layer_constant(graph))


def _layer_constant(G) -> float | None:
    """Geometric mean of the constants of the conv and linear nodes of a traced graph."""
    values = [float(data["lipschitz"]) for _, data in G.nodes(data=True)
              if data.get("op") in ("conv", "linear") and data.get("lipschitz") is not None]
    values = [v for v in values if v > 0]
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def closed_form_for(spec: str, model: nn.Module):
    """The family closed form (SymPy) of a model, or ``None`` when it has no family.

    torchvision models named like a :data:`bounds.PRESETS` entry use that preset; other
    models may declare ``fimbound_family`` and ``fimbound_depth`` (the ``depth`` argument
    of :func:`bounds.closed_form`).
    """
    import bounds
    name = spec.split(":", 1)[-1]
    if spec.startswith("torchvision:") and name in bounds.PRESETS:
        return bounds.derive(bounds.preset(name)).lipschitz
    family = getattr(model, "fimbound_family", None)
    depth = getattr(model, "fimbound_depth", None)
    if family is None or depth is None:
        return None
    return bounds.closed_form(family, depth=depth, shared=True)


def theory_scores(models: Sequence[tuple[str, str, nn.Module]], infos: Sequence[ModelInfo]
                  ) -> tuple[dict[str, float], str]:
    """Closed-form family bounds with one shared per-layer constant, for the ranking.

    Every symbol of every closed form is set to the same value ``h``: the geometric mean of
    the certified conv/linear constants of all the models checked together. This is the
    "same per-layer constants" comparison of the theoretical ranking; it is only defined
    when every model has a family closed form.
    """
    forms = {name: closed_form_for(spec, model) for name, spec, model in models}
    constants = [i.layer_constant for i in infos if i.layer_constant]
    if any(form is None for form in forms.values()) or not constants:
        return {}, ""
    h = math.exp(sum(map(math.log, constants)) / len(constants))
    scores = {}
    for name, form in forms.items():
        value = form.subs({symbol: h for symbol in form.free_symbols})
        scores[name] = 0.5 * float(value) ** 2
    note = (f"The **theory** ranking evaluates each model's family closed form "
            f"(Lipschitz bound with symbolic per-layer constants) with every per-layer "
            f"constant set to the same value h = {h:.4g}, the geometric mean of the "
            f"certified conv/linear norms of all checked models; it ranks architectures, "
            f"not weights.")
    return scores, note


def _depth(G) -> int:
    """Number of weighted layers on the longest input→output path."""
    import networkx as nx
    weighted = {"linear", "conv", "attention", "embedding"}
    longest: dict = {}
    for node in nx.topological_sort(G):
        own = 1 if G.nodes[node].get("op") in weighted else 0
        preds = [longest[p] for p in G.predecessors(node)]
        longest[node] = own + (max(preds) if preds else 0)
    return max(longest.values())


def _per_sample(model: nn.Module, x: torch.Tensor, indices: Sequence[int], labels,
                info: ModelInfo, settings: CheckSettings, generator: torch.Generator
                ) -> list[dict]:
    from numeric.attacks import minimum_norm_attack, pgd_attack
    from numeric.fisher import (blackbox_fisher_top_eigenvalue, fisher_eigenvalues,
                                fisher_top_eigenvalue, fisher_trace)
    from numeric.graph import fisher_bound

    with torch.no_grad():
        logits = model(x)
    pred = logits.argmax(dim=1)
    top2 = logits.topk(2, dim=1).values
    margin = (top2[:, 0] - top2[:, 1]).double()
    # measured in float64 so that rounding can never pass for a violation (or hide one)
    num_classes = logits.shape[1]
    if num_classes <= EXACT_SPECTRUM_MAX_CLASSES:
        spectrum = fisher_eigenvalues(model, x, dtype=torch.float64)
        lam, method = spectrum[:, 0], "exact"
        converged = torch.ones(len(x), dtype=torch.bool)
        trace = fisher_trace(model, x, method="exact", dtype=torch.float64)
    else:
        # Lanczos Ritz values never exceed the true eigenvalues: a soundness failure
        # found with them is real; non-convergence is recorded per sample
        spectrum, diagnostics = fisher_top_eigenvalue(
            model, x, method="lanczos", k=min(settings.spectrum_size, num_classes - 1),
            dtype=torch.float64, return_diagnostics=True)
        lam, method, converged = spectrum[:, 0], "lanczos", diagnostics.converged
        trace = fisher_trace(model, x, method="hutch++", generator=generator,
                             dtype=torch.float64)
    spectrum = spectrum[:, :settings.spectrum_size].double()
    local = torch.as_tensor(fisher_bound(model, x, local=True), dtype=torch.float64)

    def predict_proba(z: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return torch.softmax(model(z), dim=-1)

    blackbox = blackbox_fisher_top_eigenvalue(predict_proba, x, queries=settings.queries,
                                              generator=generator)
    attack = minimum_norm_attack(model, x, pred, steps=settings.attack_steps,
                                 restarts=settings.attack_restarts, generator=generator)
    robust: dict[str, list[bool]] = {}
    for norm, radii in (("l2", settings.pgd_l2), ("linf", settings.pgd_linf)):
        for eps in radii:
            adv = pgd_attack(model, x, labels, eps=eps, norm=norm, steps=settings.pgd_steps,
                             restarts=settings.pgd_restarts, generator=generator)
            with torch.no_grad():
                robust[f"pgd_{norm}_{eps:g}"] = (model(adv).argmax(1) == labels).tolist()
    certified_radius = margin / (math.sqrt(2.0) * info.lipschitz)
    records = []
    for row, index in enumerate(indices):
        record = {
            "index": int(index), "label": int(labels[row]), "pred": int(pred[row]),
            "correct": bool(pred[row] == labels[row]), "margin": float(margin[row]),
            "lambda_max": float(lam[row]), "lambda_method": method,
            "lambda_converged": bool(converged[row]), "trace": float(trace[row]),
            "local_bound": float(local[row]),
            "blackbox": float(blackbox.values[row]),
            "blackbox_queries": int(blackbox.queries[row]),
            "attack_radius": float(attack.norms[row]),
            "certified_radius": float(certified_radius[row]),
            "spectrum": [float(v) for v in spectrum[row]],
        }
        for key, values in robust.items():
            record[key] = bool(values[row])
        records.append(record)
    return records


def check_models(models: Sequence[tuple[str, str, nn.Module]], x: torch.Tensor,
                 y: torch.Tensor, *, data_name: str, num_classes: int,
                 settings: CheckSettings, ctx: RunContext | None = None,
                 log_for: Callable[[str], ResultLog | None] | None = None,
                 progress: Callable | None = None) -> CheckResult | None:
    """Check every ``(name, spec, model)`` on the samples ``x``, ``y``.

    Parameters
    ----------
    models : sequence of (name, spec, nn.Module)
        Models in eval mode on ``ctx.device``.
    x : Tensor of shape (N, C, H, W)
    y : Tensor of shape (N,)
    settings : CheckSettings
    ctx : RunContext, optional
        Distributed context; records are gathered on rank 0.
    log_for : callable, optional
        ``log_for(model_name)`` gives the resumable log of that model (or ``None``).

    Returns
    -------
    CheckResult on rank 0 (with :attr:`CheckResult.analysis` filled), ``None`` elsewhere.
    """
    from numeric.analysis import analyse

    ctx = ctx or RunContext()
    x, y = x.to(ctx.device), y.to(ctx.device)
    for name, _, model in models:
        validate_model(name, model, x, num_classes)
    results = []
    for name, spec, model in models:
        info = _model_info(name, spec, model, x[:1], num_classes)

        def compute(chunk_id: int, indices: range, model=model, info=info) -> list[dict]:
            gen = chunk_generator(settings.seed, chunk_id, device=ctx.device)
            sel = torch.as_tensor(list(indices), device=ctx.device)
            return _per_sample(model, x[sel], list(indices), y[sel], info, settings, gen)

        wrap = (lambda it, name=name: progress(it, desc=name)) if progress else None
        mine = evaluate_chunks(compute, len(x), chunk_size=settings.chunk_size, ctx=ctx,
                               log=log_for(name) if log_for else None, progress=wrap)
        records = gather_records(mine, ctx)
        if ctx.is_main:
            results.append(ModelResult(info=info, records=records))
    if not ctx.is_main:
        return None
    result = CheckResult(settings=settings, data_name=data_name, models=results)
    scores, note = theory_scores(models, [m.info for m in results])
    result.analysis = analyse(result, scores or None)
    if note:
        result.analysis["rankings"]["theory_note"] = note
        result.analysis["rankings"]["theory_scores"] = scores
    return result

