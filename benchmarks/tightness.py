"""How tight are the certified Fisher bounds? Bound / largest measured lambda_max.

For each family of the toolkit's small models (VGG, ResNet, DenseNet, ViT), trained on
the digits (:func:`numeric.training.trained_model`, cached), on test samples:

- *measured*: the exact lambda_max(F(x)) of every sample
  (:func:`numeric.fisher_top_eigenvalue` with ``method="exact"``, float64);
- *global*: :func:`numeric.fisher_bound`, valid at every input;
- *plain*: the same without BatchNorm folding, logit centring or pooling merges: the plain
  product of the layer norms (each module its own constant);
- *local*: :func:`numeric.fisher_bound` with ``local=True``, one bound per sample.

Reported: global / max lambda, plain / max lambda, max local / max lambda and the median
over samples of local / lambda (each sample against its own bound). The run asserts that
the graph bound is never looser than the plain product and that no bound is below a
measured value (soundness); either failure stops the benchmark.
"""

from __future__ import annotations

import time

import torch

__all__ = ["run", "family_row"]

FAMILIES = ("vgg", "resnet", "densenet", "vit")


def family_row(name: str, samples: int, epochs: int | None) -> dict:
    """Measure and bound one trained family; returns the numbers of one table row."""
    import numeric
    from numeric.data import load_data
    from numeric.graph import fisher_bounds
    from numeric.training import trained_model

    model = trained_model(name, adversarial=False, epochs=epochs, progress=False)
    model = model.double().eval()
    data = load_data("digits", samples=samples, split="test", seed=0)
    x = data.x.to(torch.float64)
    start = time.perf_counter()
    measured = numeric.fisher_top_eigenvalue(model, x, method="exact",
                                             dtype=torch.float64).reshape(-1).double()
    measure_seconds = time.perf_counter() - start
    start = time.perf_counter()
    global_bound, local = fisher_bounds(model, x)
    bound_seconds = time.perf_counter() - start
    plain = numeric.fisher_bound(model, x[:1], fold_batchnorm=False, centre_logits=False,
                                 merge_pooling=False)
    if not global_bound <= plain:
        raise AssertionError(f"tightness: the graph bound of {name} ({global_bound:.6g}) is "
                             f"looser than the plain product ({plain:.6g})")
    if global_bound < float(measured.max()) or bool((local < measured).any()):
        raise AssertionError(f"tightness: a bound of {name} is below a measured value")
    top = float(measured.max())
    ratio = (local / measured.clamp_min(1e-300))
    return {"family": name, "samples": len(x), "max_lambda": top,
            "global": global_bound / top, "plain": plain / top,
            "local_max": float(local.max()) / top, "local_median": float(ratio.median()),
            "graph_vs_plain": plain / global_bound,
            "seconds_bound": bound_seconds, "seconds_measure": measure_seconds}


def run(quick: bool = False) -> str:
    """The Markdown section (benchmarks protocol)."""
    samples = 20 if quick else 200
    epochs = 3 if quick else None
    rows = [family_row(name, samples, epochs) for name in FAMILIES]
    lines = [
        "## Tightness of the certified Fisher bounds",
        "",
        f"Small models trained on the digits ({'3 epochs, ' if quick else ''}"
        f"{samples} test samples). Ratios are bound / measured lambda_max "
        "(exact, float64); every ratio is >= 1 by construction (checked).",
        "",
        "| family | max lambda_max | global / max | plain product / max | "
        "plain / global | max local / max | median local / own | bound time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['family']} | {r['max_lambda']:.3g} | {r['global']:.3g} | {r['plain']:.3g} "
            f"| {r['graph_vs_plain']:.3g} | {r['local_max']:.3g} | {r['local_median']:.3g} "
            f"| {r['seconds_bound']:.2f} |")
    lines += [
        "",
        "global: `fisher_bound(model, x)` (every input); plain: the same with "
        "`fold_batchnorm=centre_logits=merge_pooling=False`; local: "
        "`fisher_bound(model, x, local=True)` at each sample. The graph bound was checked "
        "to be never looser than the plain product.",
    ]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    import sys
    print(run(quick="--quick" in sys.argv))
