"""Figures of a check (matplotlib, Agg backend; PNG files).

Each figure is made to be read without the code: titles say what is plotted, axes carry
units, and the caption in ``report.md`` says how to read it. Adversarially (PGD) trained
models are drawn hollow and dashed, and named "(PGD)".

Every figure copes with degenerate results: values a log axis cannot show (zeros, NaNs,
infinities) are left out and counted in words on the figure; infinite attack radii (no
adversarial found) are drawn at the right edge as triangles; a figure with nothing to draw
is not written, and :func:`write_figures` says why, for the report. A figure that fails to
draw is reported the same way and never stops the rest of the report.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np

from numeric.check.results import CheckResult, ModelResult

__all__ = ["write_figures", "FIGURES", "DPI"]

#: Resolution of the PNG files.
DPI = 110


def _plt():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _colors(n: int):
    plt = _plt()
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _label(model: ModelResult) -> str:
    return f"{model.info.name} (PGD)" if model.info.adversarial else model.info.name


def _field(model: ModelResult, key: str) -> np.ndarray:
    out = np.full(len(model.records), np.nan)
    for i, record in enumerate(model.records):
        try:
            out[i] = float(record[key])
        except (KeyError, TypeError, ValueError):
            pass
    return out


def _note(ax, lines: list[str]) -> None:
    """Say in words, at the bottom of the plot, what the figure leaves out."""
    if lines:
        ax.text(0.01, 0.01, "\n".join(lines), transform=ax.transAxes, fontsize=7,
                va="bottom", ha="left", color="0.25",
                bbox={"facecolor": "white", "alpha": 0.8, "edgecolor": "0.8"})


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    _plt().close(fig)


def _bounds_vs_measured(result: CheckResult, path: Path) -> str | None:
    models = [m for m in result.models if m.records]
    if not models:
        return "no samples were measured"
    plt = _plt()
    fig, ax = plt.subplots(figsize=(3.2 + 1.1 * len(models), 4.2))
    rng = np.random.default_rng(0)
    hidden, drawn, ceiling = [], 0, []
    for i, (model, color) in enumerate(zip(models, _colors(len(models)))):
        lam, local = _field(model, "lambda_max"), _field(model, "local_bound")
        jitter = rng.uniform(-0.18, 0.18, len(lam))
        hollow = model.info.adversarial
        ok = np.isfinite(lam) & (lam > 0)
        ax.scatter((i + jitter)[ok], lam[ok], s=10, alpha=0.7,
                   facecolors="none" if hollow else color, edgecolors=color,
                   label="measured λ_max" if drawn == 0 else None)
        shown = np.isfinite(local) & (local > 0)
        ax.scatter((i + jitter)[shown], local[shown], s=12, marker="x", color="0.35",
                   alpha=0.6, label="local bound" if drawn == 0 else None)
        if (~ok).any():
            hidden.append(f"{model.info.name}: {int((~ok).sum())} λ_max ≤ 0 or not finite")
        bound = float(model.info.global_bound)
        if math.isfinite(bound) and bound > 0:
            ax.hlines(bound, i - 0.35, i + 0.35, color="black", lw=2.5,
                      linestyles="--" if hollow else "-",
                      label="global bound" if drawn == 0 else None)
        else:
            ceiling.append(i)
            hidden.append(f"{model.info.name}: global bound {bound:g} (drawn as ↑∞)")
        drawn += 1
    if ax.has_data():
        ax.set_yscale("log")
    top = ax.get_ylim()[1]
    for i in ceiling:
        ax.annotate("∞", (i, top), ha="center", va="top", fontsize=12)
    ax.set_xticks(range(len(models)), [_label(m) for m in models], rotation=30, ha="right")
    ax.set_ylabel("λ_max of the input Fisher information (log)")
    ax.set_title("Certified bounds vs measured λ_max(F(x))")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.grid(axis="y", which="major", alpha=0.3)
    _note(ax, hidden)
    _save(fig, path)
    return None


def _finish_against_radius(fig, ax, ylabel: str, title: str, notes: list[str],
                           path: Path) -> None:
    """Log axes with the attack radius on x, the legend outside, notes, saved."""
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("smallest adversarial L2 perturbation found (log)")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3, which="major")
    _note(ax, notes)
    _save(fig, path)


def _lambda_vs_radius(result: CheckResult, path: Path) -> str | None:
    data = []
    for model in result.models:
        lam, rad = _field(model, "lambda_max"), _field(model, "attack_radius")
        data.append((model, lam, rad))
    if not any((np.isfinite(lam) & (lam > 0) & (rad > 0)).any() for _, lam, rad in data):
        return ("no sample has both a positive λ_max and a positive attack radius to draw "
                "on log axes")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.6, 4.6))
    finite_radii = np.concatenate([rad[np.isfinite(rad) & (rad > 0)] for _, _, rad in data])
    edge = finite_radii.max() * 2 if len(finite_radii) else 1.0
    notes = []
    for (model, lam, rad), color in zip(data, _colors(len(data))):
        stats = result.analysis.get("models", {}).get(model.info.name, {})
        rho = stats.get("correlation_lambda_vs_radius", {}).get("spearman", math.nan)
        face = "none" if model.info.adversarial else color
        finite = np.isfinite(rad) & (rad > 0) & np.isfinite(lam) & (lam > 0)
        text = "n/a" if math.isnan(rho) else f"{rho:.2f}"
        ax.scatter(rad[finite], lam[finite], s=12, alpha=0.7, facecolors=face,
                   edgecolors=color, label=f"{_label(model)} (Spearman ρ = {text})")
        none_found = np.isposinf(rad) & np.isfinite(lam) & (lam > 0)
        if none_found.any():
            ax.scatter(np.full(int(none_found.sum()), edge), lam[none_found], marker=">",
                       s=18, facecolors=face, edgecolors=color, alpha=0.7)
            notes.append(f"{model.info.name}: {int(none_found.sum())} with no adversarial "
                         f"found (▶ at the right edge)")
        left_out = len(rad) - int(finite.sum()) - int(none_found.sum())
        if left_out:
            notes.append(f"{model.info.name}: {left_out} not drawable (zero or NaN)")
    _finish_against_radius(fig, ax, "λ_max(F(x)) (log)",
                           "Fisher sensitivity against attack radius, per sample", notes, path)
    return None


def _certified_vs_attack(result: CheckResult, path: Path) -> str | None:
    data = [(model, _field(model, "attack_radius"), _field(model, "certified_radius"),
             _field(model, "certified_radius_global")) for model in result.models]
    drawable = [(m, a, c, g) for m, a, c, g in data
                if (np.isfinite(a) & (a > 0) & np.isfinite(c) & (c > 0)).any()]
    if not drawable:
        return ("no sample has both a finite positive attack radius and a positive "
                "certified radius to draw on log axes")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.2, 4.8))
    notes, low, high = [], math.inf, 0.0
    for (model, attack, best, glob), color in zip(data, _colors(len(data))):
        shown = np.isfinite(attack) & (attack > 0) & np.isfinite(best) & (best > 0)
        face = "none" if model.info.adversarial else color
        if shown.any():
            ratio = np.median(best[shown] / attack[shown])
            ax.scatter(attack[shown], best[shown], s=14, alpha=0.75, facecolors=face,
                       edgecolors=color,
                       label=f"{_label(model)} (median certified/attack {ratio:.2g})")
            low = min(low, float(best[shown].min()))
            high = max(high, float(attack[shown].max()))
            gl = shown & np.isfinite(glob) & (glob > 0)
            ax.scatter(attack[gl], glob[gl], s=8, marker="_", color=color, alpha=0.6)
        hidden = len(attack) - int(shown.sum())
        if hidden:
            notes.append(f"{model.info.name}: {hidden} not drawable (no adversarial found, "
                         f"misclassified or a zero radius)")
    edge = np.array([low, high])
    ax.plot(edge, edge, color="black", lw=1, label="certified = attack radius")
    _finish_against_radius(fig, ax, "certified radius (log)",
                           "Certified radius against attack radius, per sample", notes, path)
    return None


def _rankings(result: CheckResult, path: Path) -> str | None:
    orders = result.analysis.get("rankings", {}).get("orders", {})
    if len(result.models) < 2 or not orders:
        return "only one model: there is nothing to rank"
    plt = _plt()
    kinds = list(orders)
    names = orders[kinds[0]]
    adversarial = {m.info.name for m in result.models if m.info.adversarial}
    colors = dict(zip(names, _colors(len(names))))
    fig, ax = plt.subplots(figsize=(1.9 * len(kinds) + 2.5, 0.45 * len(names) + 1.8))
    for name in names:
        ranks = [orders[k].index(name) + 1 for k in kinds]
        pgd = name in adversarial
        ax.plot(range(len(kinds)), ranks, "--o" if pgd else "-o", color=colors[name], lw=2,
                markerfacecolor="white" if pgd else colors[name])
        ax.annotate(f"{name} (PGD)" if pgd else name, (len(kinds) - 1, ranks[-1]),
                    xytext=(8, 0), textcoords="offset points", va="center", fontsize=8)
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set_yticks(range(1, len(names) + 1))
    ax.set_ylim(len(names) + 0.5, 0.5)
    ax.set_ylabel("rank (1 = most robust)")
    ax.set_title("Robustness rankings by criterion")
    ax.set_xlim(-0.3, len(kinds) - 1 + 1.4)
    ax.grid(alpha=0.3)
    _save(fig, path)
    return None


def _spectra(result: CheckResult, path: Path, per_model: int = 3) -> str | None:
    curves = []
    for model in result.models:
        for j, record in enumerate(model.records[:per_model]):
            values = np.array([v for v in record.get("spectrum") or []], dtype=float)
            values = values[np.isfinite(values) & (values > 0)]
            if len(values):
                curves.append((model, j, values))
    if not curves:
        return "no sample has a positive eigenvalue to draw on a log axis"
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    colors = dict(zip([m.info.name for m in result.models], _colors(len(result.models))))
    labelled = set()
    for model, _, values in curves:
        name = model.info.name
        ax.plot(np.arange(1, len(values) + 1), values,
                "--o" if model.info.adversarial else "-o", ms=3, color=colors[name],
                alpha=0.8, label=None if name in labelled else _label(model))
        labelled.add(name)
    ax.set_yscale("log")
    ax.set_xlabel("eigenvalue index (largest first)")
    ax.set_ylabel("eigenvalue of F(x) (log)")
    ax.set_title(f"Fisher spectra of the first {per_model} samples per model")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    _save(fig, path)
    return None


#: file name -> (function(result, path) -> None when drawn or the reason it is not, caption)
FIGURES: dict[str, tuple[Callable[[CheckResult, Path], str | None], str]] = {
    "bounds_vs_measured.png": (
        _bounds_vs_measured,
        "Measured λ_max(F(x)) per sample (dots; hollow for PGD-trained models), its "
        "certified local bound (crosses) and the certified global bound (bar) for each "
        "model, on a log scale. Every dot must lie below its cross and below the bar; the "
        "gap is the bound's looseness."),
    "lambda_vs_radius.png": (
        _lambda_vs_radius,
        "Sensitivity against vulnerability: λ_max(F(x)) against the smallest L2 "
        "perturbation the attack found, one point per sample (hollow: PGD-trained; ▶ at "
        "the right edge: no adversarial found). A robustness metric should fall as the "
        "radius grows (negative rank correlation, given in the legend)."),
    "certified_vs_attack.png": (
        _certified_vs_attack,
        "Certified radius (dots: the better of the region and global certificates; dashes: "
        "the global one alone) against the smallest adversarial perturbation found, per "
        "sample, log scales (hollow: PGD-trained). No dot may lie above the diagonal; the "
        "closer to it, the tighter the certificate."),
    "rankings.png": (
        _rankings,
        "Models ranked from most robust (top) to least robust (bottom) by each criterion "
        "(dashed: PGD-trained). Crossing lines are disagreements between criteria."),
    "spectra.png": (
        _spectra,
        "Nonzero eigenvalues of F(x) (largest first) for the first samples of each model, "
        "log scale (dashed: PGD-trained): how much of the sensitivity sits in the top "
        "direction."),
}


def write_figures(result: CheckResult, directory: str | Path) -> dict[str, str | None]:
    """Draw every figure of :data:`FIGURES` into ``directory``.

    Returns
    -------
    dict
        File name -> ``None`` when written, else the reason it was not (nothing to draw,
        or the error that stopped it, which is a bug).
    """
    directory = Path(directory)
    outcome: dict[str, str | None] = {}
    for name, (make, _) in FIGURES.items():
        try:
            with np.errstate(all="ignore"):  # log axes over 1e-300..1e300 overflow harmlessly
                outcome[name] = make(result, directory / name)
        except Exception as err:  # a report without one figure beats no report
            from numeric.validation import first_line
            _plt().close("all")
            outcome[name] = (f"drawing it failed ({type(err).__name__}: {first_line(err)}); "
                             f"this is a bug, please report it")
    return outcome
