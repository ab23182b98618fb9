"""The theoretical ranking of a check: family closed forms at one shared layer constant.

Everything ``check`` does with architecture families is here (and none of it needs
torch): which family a model belongs to (:func:`describe_family`), its closed form
(:func:`closed_form_for`) and the scores of the ranking (:func:`theory_scores`). The
families themselves are :mod:`bounds.families` (one module each, registered in one
place); a family registered there is ranked here with no change.

The ranking evaluates each model's family closed form — a certified Lipschitz bound with
symbolic per-layer constants (``Family.closed_form``, at a preset's options or at the
depth a model declares) — with every symbol set to the same value ``h``: the geometric
mean of the certified conv/linear norms of all the models checked together. It ranks
architectures, not weights; it is defined only when every model has a closed form.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from numeric.check.results import ModelInfo

__all__ = ["describe_family", "closed_form_for", "theory_scores", "layer_constant"]


def describe_family(spec: str, module=None) -> tuple[str | None, object, str | None]:
    """``(family, depth, preset)`` of a model, each ``None`` when unknown.

    A module may declare ``fimbound_family`` (a family name or alias of
    :func:`bounds.families.get_family`) and ``fimbound_depth`` (the ``depth`` of its
    closed form). Otherwise the family comes from the model's name
    (:func:`bounds.families.family_of`); a name that is one of the family's presets
    (``torchvision:resnet18``, or a factory called ``resnet18``) gets that preset's closed
    form; any other name has a family but no closed form.

    >>> describe_family("torchvision:resnet18")
    ('resnet', None, 'resnet18')
    >>> describe_family("torchvision:wide_resnet50_2")
    ('resnet', None, None)
    >>> describe_family("net.py:build")
    (None, None, None)
    """
    from bounds.families import family_of, get_family

    declared = getattr(module, "fimbound_family", None)
    if declared:
        depth = getattr(module, "fimbound_depth", None)
        return (get_family(str(declared)).name,
                list(depth) if isinstance(depth, tuple) else depth, None)
    family = family_of(spec)
    if family is None:
        return None, None, None
    name = spec.rsplit(":", 1)[-1]
    preset = name if name in family.presets and not spec.startswith("fimbound:") else None
    return family.name, None, preset


def closed_form_for(info: ModelInfo):
    """The family closed form (SymPy, every per-layer constant one shared symbol) of a
    checked model, or ``None`` without one."""
    from bounds.families import get_family

    if info.family is None:
        return None
    family = get_family(info.family)
    if info.preset is not None:
        return family.closed_form(**{**family.presets[info.preset], "shared": True})
    if info.family_depth is None:
        return None
    depth = info.family_depth
    return family.closed_form(tuple(depth) if isinstance(depth, list) else depth,
                              shared=True)


def layer_constant(G) -> float | None:
    """Geometric mean of the positive constants of the conv and linear nodes of a traced
    graph (``None`` when it has none)."""
    values = []
    for _, data in G.nodes(data=True):
        if data.get("op") in ("conv", "linear") and data.get("lipschitz") is not None:
            try:
                value = float(data["lipschitz"])
            except (TypeError, ValueError):
                continue
            if 0 < value < math.inf:
                values.append(value)
    return math.exp(sum(map(math.log, values)) / len(values)) if values else None


def theory_scores(infos: Sequence[ModelInfo]) -> tuple[dict[str, float], str]:
    """Closed-form family bounds on ``λ_max`` (``½ L²``) at one shared layer constant.

    Returns
    -------
    (scores, note)
        ``{model name: score}`` (smaller = more robust) and a sentence for the report;
        ``({}, reason)`` when the ranking is undefined (a model without a closed form, or
        no certified conv/linear constant).
    """
    forms = {info.name: closed_form_for(info) for info in infos}
    missing = [name for name, form in forms.items() if form is None]
    if missing:
        return {}, (f"No theory ranking: no family closed form for "
                    f"{', '.join(missing)} (a model can declare fimbound_family and "
                    f"fimbound_depth).")
    constants = [i.layer_constant for i in infos if i.layer_constant]
    if not constants:
        return {}, "No theory ranking: no certified conv/linear constant to share."
    h = math.exp(sum(map(math.log, constants)) / len(constants))
    scores = {}
    for name, form in forms.items():
        value = float(form.subs({symbol: h for symbol in form.free_symbols}))
        scores[name] = 0.5 * value ** 2 if math.isfinite(value) else math.inf
    note = (f"The **theory** ranking evaluates each model's family closed form "
            f"(Lipschitz bound with symbolic per-layer constants) with every per-layer "
            f"constant set to the same value h = {h:.4g}, the geometric mean of the "
            f"certified conv/linear norms of all checked models; it ranks architectures, "
            f"not weights.")
    return scores, note
