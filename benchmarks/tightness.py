"""How tight are the certified bounds and radii? Measured next to the largest values found.

For each of the demo's models (VGG, ResNet, DenseNet, ViT, trained normally and with PGD
on the digits; :func:`numeric.training.trained_model`, cached), on test samples:

- *global*: ``TracedModel.fisher_bound()`` against the largest exact lambda_max(F) on the
  samples and against the largest lambda_max(F) that gradient ascent over inputs in
  [0, 1] finds (what is worst case, and what is looseness);
- *local*: ``local_fisher_bound(x)`` / exact lambda_max(F(x)) per sample (median), and
  the same for the propagation-only local bound (no exact Jacobian at the centre);
- *region*: ``region_bound(x, eps)`` at eps = 1/4 and 1/64 of the sample's attack
  radius, against the largest lambda_max(F) that a 50-step projected gradient ascent finds
  in the ball (for ReLU networks the bound includes the switching-set Jacobian of
  :mod:`numeric.graph.switching`, which is what moves the small ball);
- *radii*: ``certified_radius(x)`` over the ball and the attack's box [0, 1]^d (the best of
  the region, linear-bound (CROWN, ReLU networks) and global certificates), the region
  certificate alone, and ``margin / (sqrt 2 L)`` (global)
  over the attack radius of ``numeric.attacks.minimum_norm_attack`` (an ensemble,
  float64-verified). A certified radius above an attack radius stops the benchmark.

Ratios come from one run; the issue's targets are printed next to them.
"""

from __future__ import annotations

import math
import time

import torch

__all__ = ["run", "model_row"]

FAMILIES = ("vgg", "resnet", "densenet", "vit")

#: Published tightness of the methods the toolkit is measured against (as characterised in
#: the issue that asked for this table; no number is re-measured here except LipSDP's,
#: which benchmarks/lipsdp.py runs).
ANCHORS = [
    ("LipSDP (Fazlyab et al. 2019)", "global Lipschitz of small MLPs within a few % of the "
     "best lower bound; benchmarks/lipsdp.py measures it on the toolkit's MLPs"),
    ("SeqLip / AutoLip (Scaman & Virmaux 2018)", "AutoLip is the product of layer norms "
     "(the toolkit's plain product); SeqLip tightens it on chains by factors of a few"),
    ("Local Lipschitz by bound propagation (Shi et al. 2022), RecurJac, Fast-Lip",
     "close to exact local Lipschitz constants on small networks, scaling to CNNs"),
]


def _fisher_top(model, x):
    """Differentiable lambda_max(F): the Jacobian from K backward passes kept in the graph
    (the digits models are small)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from numeric.graph.softmax import probabilities, weighted_rows
    with sdpa_kernel(SDPBackend.MATH):    # the fused kernels have no double backward
        out = model(x)
        rows = [torch.autograd.grad(out[:, k].sum(), x, create_graph=True)[0].reshape(
            x.shape[0], -1) for k in range(out.shape[1])]
    jacobian = torch.stack(rows, dim=1)
    p, _ = probabilities(out)
    return torch.linalg.matrix_norm(weighted_rows(jacobian, p), ord=2) ** 2


def _ascent(model, start, steps: int, radius=None, centre=None):
    """Projected gradient ascent on lambda_max(F) (in the ball, or in [0, 1]^d)."""
    points = start.clone()
    size = (radius / 4).reshape(-1, *([1] * (start.dim() - 1))) if radius is not None \
        else torch.full((start.shape[0],) + (1,) * (start.dim() - 1), 0.05,
                        dtype=start.dtype)
    best = torch.zeros(start.shape[0], dtype=torch.float64)
    for _ in range(steps):
        points = points.detach().requires_grad_(True)
        value = _fisher_top(model, points)
        best = torch.maximum(best, value.detach())
        (grad,) = torch.autograd.grad(value.sum(), points)
        norms = grad.reshape(grad.shape[0], -1).norm(dim=1).clamp_min(1e-300)
        points = points + size * grad / norms.reshape(size.shape)
        if radius is not None:
            step = points - centre
            lengths = step.reshape(step.shape[0], -1).norm(dim=1).clamp_min(1e-300)
            scale = torch.clamp(radius / lengths, max=1.0).reshape(size.shape)
            points = centre + step * scale
        else:
            points = points.clamp(0, 1)
    final = _fisher_top(model, points.detach().requires_grad_(True)).detach()
    return torch.maximum(best, final)


def _median(values: torch.Tensor) -> float:
    values = values[torch.isfinite(values)]
    return float(values.median()) if values.numel() else math.nan


def model_row(name: str, adversarial: bool, samples: int, ascent_steps: int) -> dict:
    """Bound, measure and attack one trained model; the numbers of one table row."""
    from numeric.attacks import minimum_norm_attack
    from numeric.data import load_data
    from numeric.graph import trace_model
    from numeric.graph.local import local_fisher
    from numeric.graph.selfcheck import exact_fisher_top
    from numeric.training import trained_model

    model = trained_model(name, adversarial=adversarial, progress=False).double().eval()
    data = load_data("digits", samples=samples, split="test", seed=0)
    x, y = data.x.to(torch.float64), data.y
    traced = trace_model(model, x, self_check=False)
    exact = exact_fisher_top(model, x)
    start = time.perf_counter()
    global_bound = traced.fisher_bound()
    local = traced.local_fisher_bound(x)
    seconds_local = time.perf_counter() - start
    propagation = local_fisher(traced._traced, traced._fisher_overrides(), x)
    worst = float(_ascent(model, x, ascent_steps).max())
    with torch.no_grad():
        logits = model(x)
    correct = logits.argmax(1) == y
    attack = minimum_norm_attack(model.float(), x.float(), y).norms.double()
    model.double()
    region_radius = traced.certified_radius(x, y, linear_steps=0)
    start = time.perf_counter()
    radius = traced.certified_radius(x, y, box=(0.0, 1.0), upper=attack)
    seconds_radius = time.perf_counter() - start
    lipschitz = traced.lipschitz_bound("centred_output")
    top = logits.topk(2).values
    global_radius = ((top[:, 0] - top[:, 1]) / (math.sqrt(2) * lipschitz)).clamp_min(0)
    usable = correct & torch.isfinite(attack) & (attack > 0)
    if bool((radius[usable] > attack[usable]).any()):
        raise AssertionError(f"tightness: a certified radius of {name} exceeds its attack "
                             f"radius")
    region_ratio = {}
    for share in (4, 64):
        eps = (attack / share).where(usable, torch.zeros_like(attack))
        region = traced.region_bound(x, eps)
        in_ball = _ascent(model, x, ascent_steps, radius=eps, centre=x)
        if bool((region.fisher < in_ball * (1 - 1e-9)).any()):
            raise AssertionError(f"tightness: a region bound of {name} is below a point of "
                                 f"its ball")
        region_ratio[share] = _median((region.fisher / in_ball)[usable])
    return {
        "model": f"{name} ({'PGD' if adversarial else 'normal'})", "samples": len(x),
        "max_lambda": float(exact.max()), "ascent_lambda": max(worst, float(exact.max())),
        "global_over_max": global_bound / float(exact.max()),
        "global_over_ascent": global_bound / max(worst, float(exact.max())),
        "local": _median(local / exact), "propagation": _median(propagation / exact),
        "region": region_ratio[4], "region_small": region_ratio[64],
        "radius": _median((radius / attack)[usable]),
        "region_radius": _median((region_radius / attack)[usable]),
        "global_radius": _median((global_radius / attack)[usable]),
        "seconds_local": seconds_local / len(x), "seconds_radius": seconds_radius / len(x),
    }


def run(quick: bool = False) -> str:
    """The Markdown section (benchmarks protocol)."""
    samples = 12 if quick else 48
    steps = 10 if quick else 50
    rows = [model_row(name, adversarial, samples, steps)
            for name in FAMILIES for adversarial in (False, True)]
    lines = [
        "## Tightness of the certified bounds and radii",
        "",
        f"The demo's models on {samples} digits test samples each; ratios of medians over "
        f"samples unless said; gradient ascents of {steps} steps. Every bound was checked "
        "to be at least every value found (the run stops otherwise).",
        "",
        "| model | global / max λ | global / ascent λ | local / λ | propagation local / λ "
        "| region(ε=r/4) / ascent in ball | region(ε=r/64) / ascent in ball "
        "| certified / attack radius | region radius / "
        "attack | global radius / attack | s per sample (local, radius) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['global_over_max']:.3g} | {r['global_over_ascent']:.3g} | "
            f"{r['local']:.3g} | {r['propagation']:.3g} | {r['region']:.3g} | "
            f"{r['region_small']:.3g} | "
            f"{r['radius']:.3g} | {r['region_radius']:.3g} | {r['global_radius']:.3g} | "
            f"{r['seconds_local']:.2f}, {r['seconds_radius']:.2f} |")
    lines += [
        "",
        "Targets (issue 11): median certified / attack radius >= 0.3 (PGD-trained VGG, "
        "ResNet) and >= 0.1 (normal); region bound within 10x of the ascent in the ball; "
        "median local / λ <= 10^3 for DenseNet and ViT. The local bound uses the exact "
        "Jacobian at each sample (forward mode, inputs of at most 1,024 entries) widened by "
        "the Clarke spread; the propagation-only column is what the bound calculus alone "
        "gives (and what larger inputs get). The certified radius holds on the ball and the "
        "box [0, 1]^d the attack searches; for VGG, ResNet and DenseNet (affine maps, ReLU, "
        "max pooling) it is linear bound propagation of the margins (CROWN), for ViT the "
        "region and global certificates.",
        "",
        "| anchor | published tightness |",
        "|---|---|",
    ]
    lines += [f"| {name} | {claim} |" for name, claim in ANCHORS]
    return "\n".join(lines)


if __name__ == "__main__":  # pragma: no cover
    import sys
    print(run(quick="--quick" in sys.argv))
