"""Write a check's ``report.md``, ``results.json`` and figures, atomically.

Everything is written into a fresh temporary folder next to the destination first; only
when every file exists are they moved into place (``os.replace``, atomic per file), so an
error never leaves a half-written report behind.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from numeric.check import CheckResult

__all__ = ["write_report", "markdown_report", "summary_table", "write_json_atomic"]


def _fmt(value: float, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float) and math.isinf(value):
        return "∞"
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.{digits}g}"
    return f"{value:.{digits - 1}e}"


def _ci(values: list[float]) -> str:
    return f"[{_fmt(values[0], 2)}, {_fmt(values[1], 2)}]"


def _json_default(value):
    """numpy scalars (non-finite ones as strings, like :func:`_clean`), else ``str``."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return number if math.isfinite(number) else str(number)


def _clean(obj):
    """Replace non-finite floats by strings so that the JSON is standard."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else ("inf" if obj > 0 else
                                               "-inf" if obj < 0 else "nan")
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def write_json_atomic(document: dict, path: Path) -> None:
    """Write ``document`` as JSON to ``path`` via a temporary file and ``os.replace``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        json.dump(_clean(document), handle, indent=1, default=_json_default)
    os.replace(tmp, path)


def summary_table(result: "CheckResult") -> str:
    """The terminal summary: one row per model."""
    header = ("model", "acc", "global bound", "max λ", "bound/max", "local/λ",
              "attack r", "cert r", "ρ(λ,r)", "sound")
    rows = [header]
    violations = result.analysis["soundness"]["violations"]
    for m in result.models:
        a = result.analysis["models"][m.info.name]
        bad = sum(v["model"] == m.info.name for v in violations)
        rows.append((m.info.name, f"{a['accuracy']:.2f}", _fmt(m.info.global_bound),
                     _fmt(a["lambda_max_max"]), _fmt(a["global_over_max"]),
                     _fmt(a["local_over_measured_median"]),
                     _fmt(a["attack_radius_median"]), _fmt(a["certified_radius_median"]),
                     _fmt(a["correlation_lambda_vs_radius"].get("spearman", math.nan), 2),
                     "yes" if bad == 0 else f"NO ({bad})"))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_report(result: "CheckResult", figures: list[str]) -> str:
    """The Markdown report of a check."""
    from numeric.figures import FIGURES
    an = result.analysis
    s = result.settings
    sound = an["soundness"]
    lines = [
        "# fimbound check report", "",
        f"Data: **{result.data_name}**, {len(result.models[0].records) if result.models else 0}"
        f" samples per model, seed {s.seed}.", "",
        "All λ are the largest eigenvalue of the input Fisher information "
        "F(x) = Jᵀ(diag p − ppᵀ)J; bounds are certified upper bounds; the attack radius is "
        f"the smallest L2 perturbation found by the minimum-norm attack ({s.attack_steps} "
        f"steps, {s.attack_restarts} restarts); the certified radius is margin/(√2·L) with L "
        "the certified Lipschitz constant of the logits.", "",
        "## Soundness", "",
    ]
    if sound["sound"]:
        lines.append(f"**No violations** in {sound['checked']} comparisons (global bound ≥ "
                     "every λ_max, local bound ≥ λ_max at its sample, certified radius ≤ "
                     "attack radius).")
    else:
        lines += [f"**{len(sound['violations'])} VIOLATIONS** — a bound below a measured "
                  "value is a bug:", "", "| model | sample | kind | measured | bound |",
                  "|---|---|---|---|---|"]
        lines += [f"| {v['model']} | {v['index']} | {v['kind']} | {_fmt(v['measured'], 6)} "
                  f"| {_fmt(v['bound'], 6)} |" for v in sound["violations"][:50]]
    lines += ["", "## Tightness and accuracy of the estimates", "",
              "| model | family | params | clean acc | global bound | max λ | global / max λ "
              "| plain product / max λ | median local / λ | median black-box rel. error |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for m in result.models:
        a = an["models"][m.info.name]
        lines.append(
            f"| {m.info.name} | {m.info.family or '–'} | {m.info.parameters:,} | "
            f"{a['accuracy']:.3f} | {_fmt(m.info.global_bound)} | {_fmt(a['lambda_max_max'])}"
            f" | {_fmt(a['global_over_max'])} | {_fmt(a['plain_over_max'])} | "
            f"{_fmt(a['local_over_measured_median'])} | "
            f"{_fmt(a['blackbox_relative_error_median'])} |")
    lines += ["", f"Black-box estimates use {s.queries} queries per input.", "",
              "## Sensitivity vs vulnerability", "",
              "Rank correlation between λ_max(F(x)) and the attack radius across samples "
              "(bootstrap 95% intervals). A useful metric gives a negative correlation.", "",
              "| model | median attack radius | median certified radius | Spearman ρ [95% CI]"
              " | Kendall τ [95% CI] |", "|---|---|---|---|---|"]
    for m in result.models:
        a = an["models"][m.info.name]
        c = a["correlation_lambda_vs_radius"]
        lines.append(f"| {m.info.name} | {_fmt(a['attack_radius_median'])} | "
                     f"{_fmt(a['certified_radius_median'])} | {_fmt(c['spearman'], 2)} "
                     f"{_ci(c['spearman_ci'])} | {_fmt(c['kendall'], 2)} "
                     f"{_ci(c['kendall_ci'])} |")
    if an.get("across_models"):
        c = an["across_models"]
        lines += ["", f"Across models (mean λ_max vs median attack radius, n = {c['n']}): "
                      f"Spearman ρ = {_fmt(c['spearman'], 2)} {_ci(c['spearman_ci'])}, "
                      f"Kendall τ = {_fmt(c['kendall'], 2)} {_ci(c['kendall_ci'])}."]
    robust_keys = sorted({k for m in result.models
                          for k in an["models"][m.info.name]["robust_accuracy"]})
    if robust_keys:
        lines += ["", "## Robust accuracy under PGD", "",
                  f"{s.pgd_steps} steps, {s.pgd_restarts} restarts; a sample counts as robust "
                  "when no restart changes its label.", "",
                  "| model | " + " | ".join(robust_keys) + " |",
                  "|---|" + "---|" * len(robust_keys)]
        for m in result.models:
            ra = an["models"][m.info.name]["robust_accuracy"]
            lines.append(f"| {m.info.name} | " +
                         " | ".join(f"{ra.get(k, math.nan):.3f}" for k in robust_keys) + " |")
    rk = an["rankings"]
    if rk.get("orders"):
        lines += ["", "## Rankings (most robust first)", ""]
        lines += [f"- **{kind}**: {' < '.join(order)}" for kind, order in rk["orders"].items()]
        if "theory" in rk["orders"]:
            lines.append("")
            lines.append(rk.get("theory_note", ""))
        lines += ["", "| ranking A | ranking B | Kendall τ | bootstrap 95% CI |",
                  "|---|---|---|---|"]
        lines += [f"| {g['first']} | {g['second']} | {_fmt(g['kendall'], 2)} | "
                  f"{_ci(g['kendall_ci'])} |" for g in rk["agreement"]]
    lines += ["", "## Figures", ""]
    for name in figures:
        lines += [f"![{name}]({name})", "", f"*{FIGURES[name]}*", ""]
    return "\n".join(lines).rstrip() + "\n"


def write_report(result: "CheckResult", out_dir: str | Path) -> Path:
    """Write report.md, results.json and the figures into ``out_dir`` atomically."""
    from numeric.figures import write_figures
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".staging-"))
    try:
        figures = write_figures(result, staging)
        write_json_atomic(result.to_dict(), staging / "results.json")
        (staging / "report.md").write_text(markdown_report(result, figures))
        for item in staging.iterdir():
            os.replace(item, out / item.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out / "report.md"
