"""Figures of a check (matplotlib, Agg backend; PNG files).

Each figure is made to be read without the code: titles say what is plotted, axes carry
units, and the caption in ``report.md`` says how to read it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

if TYPE_CHECKING:
    from numeric.check import CheckResult

__all__ = ["write_figures", "FIGURES"]

#: file name -> caption used in the report
FIGURES = {
    "bounds_vs_measured.png":
        "Measured λ_max(F(x)) per sample (dots), its certified local bound (crosses) and the "
        "certified global bound (bar) for each model, on a log scale. Every dot must lie "
        "below its cross and below the bar; the gap is the bound's looseness.",
    "lambda_vs_radius.png":
        "Sensitivity against vulnerability: λ_max(F(x)) against the smallest L2 "
        "perturbation the attack found, one point per sample. A robustness metric should "
        "fall as the radius grows (negative rank correlation, given in the legend).",
    "rankings.png":
        "Models ranked from most robust (top) to least robust (bottom) by each criterion. "
        "Crossing lines are disagreements between criteria.",
    "spectra.png":
        "Nonzero eigenvalues of F(x) (largest first) for the first samples of each model, "
        "log scale: how much of the sensitivity sits in the top direction.",
}


def _colors(n: int):
    cmap = plt.get_cmap("tab10" if n <= 10 else "tab20")
    return [cmap(i % cmap.N) for i in range(n)]


def _bounds_vs_measured(result: "CheckResult", path: Path) -> None:
    fig, ax = plt.subplots(figsize=(3.2 + 1.3 * len(result.models), 4.2))
    rng = np.random.default_rng(0)
    for i, (model, color) in enumerate(zip(result.models, _colors(len(result.models)))):
        lam = np.array([r["lambda_max"] for r in model.records])
        local = np.array([r["local_bound"] for r in model.records])
        jitter = rng.uniform(-0.18, 0.18, len(lam))
        ax.scatter(i + jitter, lam, s=9, color=color, alpha=0.7,
                   label="measured λ_max" if i == 0 else None)
        ax.scatter(i + jitter, local, s=12, marker="x", color="0.35", alpha=0.6,
                   label="local bound" if i == 0 else None)
        ax.hlines(model.info.global_bound, i - 0.35, i + 0.35, color="black", lw=2.5,
                  label="global bound" if i == 0 else None)
    ax.set_yscale("log")
    ax.set_xticks(range(len(result.models)), [m.info.name for m in result.models],
                  rotation=30, ha="right")
    ax.set_ylabel("λ_max of the input Fisher information (log)")
    ax.set_title("Certified bounds vs measured λ_max(F(x))")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.grid(axis="y", which="major", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _lambda_vs_radius(result: "CheckResult", path: Path) -> None:
    fig, ax = plt.subplots(figsize=(8.6, 4.6))
    for model, color in zip(result.models, _colors(len(result.models))):
        lam = np.array([r["lambda_max"] for r in model.records])
        rad = np.array([r["attack_radius"] for r in model.records])
        keep = np.isfinite(rad) & (rad > 0) & (lam > 0)
        stats = result.analysis["models"][model.info.name]["correlation_lambda_vs_radius"]
        rho = stats.get("spearman", float("nan"))
        ax.scatter(rad[keep], lam[keep], s=10, alpha=0.7, color=color,
                   label=f"{model.info.name} (Spearman ρ = {rho:.2f})")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("smallest adversarial L2 perturbation found (log)")
    ax.set_ylabel("λ_max(F(x)) (log)")
    ax.set_title("Fisher sensitivity against attack radius, per sample")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3, which="major")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _rankings(result: "CheckResult", path: Path) -> None:
    orders = result.analysis["rankings"].get("orders", {})
    if not orders:
        fig, ax = plt.subplots(figsize=(5, 2))
        ax.text(0.5, 0.5, "Rankings need at least two models.", ha="center", va="center")
        ax.axis("off")
        fig.savefig(path, dpi=130)
        plt.close(fig)
        return
    kinds = list(orders)
    names = orders[kinds[0]]
    colors = dict(zip(names, _colors(len(names))))
    fig, ax = plt.subplots(figsize=(1.9 * len(kinds) + 2.5, 0.45 * len(names) + 1.8))
    for name in names:
        ranks = [orders[k].index(name) + 1 for k in kinds]
        ax.plot(range(len(kinds)), ranks, "-o", color=colors[name], lw=2)
        ax.annotate(name, (len(kinds) - 1, ranks[-1]), xytext=(8, 0),
                    textcoords="offset points", va="center", fontsize=8)
    ax.set_xticks(range(len(kinds)), kinds)
    ax.set_yticks(range(1, len(names) + 1))
    ax.set_ylim(len(names) + 0.5, 0.5)
    ax.set_ylabel("rank (1 = most robust)")
    ax.set_title("Robustness rankings by criterion")
    ax.set_xlim(-0.3, len(kinds) - 1 + 1.2)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def _spectra(result: "CheckResult", path: Path, per_model: int = 3) -> None:
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for model, color in zip(result.models, _colors(len(result.models))):
        for j, record in enumerate(model.records[:per_model]):
            values = np.array(record["spectrum"], dtype=float)
            values = values[values > values[0] * 1e-12] if values[0] > 0 else values[:1]
            ax.plot(np.arange(1, len(values) + 1), values, "-o", ms=3, color=color,
                    alpha=0.8, label=model.info.name if j == 0 else None)
    ax.set_yscale("log")
    ax.set_xlabel("eigenvalue index (largest first)")
    ax.set_ylabel("eigenvalue of F(x) (log)")
    ax.set_title(f"Fisher spectra of the first {per_model} samples per model")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def write_figures(result: "CheckResult", directory: Path) -> list[str]:
    """Write every figure of :data:`FIGURES` into ``directory``; return the file names."""
    makers = {"bounds_vs_measured.png": _bounds_vs_measured,
              "lambda_vs_radius.png": _lambda_vs_radius,
              "rankings.png": _rankings, "spectra.png": _spectra}
    for name, make in makers.items():
        make(result, directory / name)
    return list(makers)
