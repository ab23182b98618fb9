"""Write a check's ``report.md``, ``results.json`` and figures, atomically.

Everything is written into a fresh temporary folder next to the destination first; only
when every file exists are they moved into place (``os.replace``, atomic per file), so an
error never leaves a half-written report behind. The report says in words how loose each
bound is, what could not be computed or drawn and why, and records the command line, the
versions and the time of every stage.

Tables are lists of columns (:data:`TIGHTNESS_COLUMNS`, :data:`VULNERABILITY_COLUMNS`): a
new column is one ``(header, function of (model, statistics))`` entry.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from numeric.check.results import CheckResult, ModelResult, write_json_atomic

__all__ = ["write_report", "markdown_report", "summary_table", "describe_gap",
           "describe_ratio",
           "TIGHTNESS_COLUMNS", "VULNERABILITY_COLUMNS"]


def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return "–"
    try:
        value = float(value)
    except (TypeError, ValueError):
        return str(value)
    if math.isnan(value):
        return "–"
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    if value == 0 or 1e-3 <= abs(value) < 1e4:
        return f"{value:.{digits}g}"
    return f"{value:.{digits - 1}e}"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _order_text(order: list[str], scores: dict[str, float]) -> str:
    """``a < b = c``: most robust first, equal scores (ties) joined by ``=``.

    >>> _order_text(["a", "b", "c"], {"a": 1.0, "b": 2.0, "c": 2.0})
    'a < b = c'
    """
    text = order[0]
    for before, name in zip(order, order[1:]):
        tie = scores.get(before) == scores.get(name)
        text += f" {'=' if tie else '<'} {name}"
    return text


def _ci(values) -> str:
    if not values:
        return ""
    return f"[{_fmt(values[0], 2)}, {_fmt(values[1], 2)}]"


def describe_gap(bound: float, measured: float, what: str = "bound") -> str:
    """How loose ``bound`` is over the largest ``measured`` value, in words.

    >>> describe_gap(300.0, 3.0)
    'the bound is loose by 2.0 orders of magnitude (factor 100)'
    >>> describe_gap(3.3, 3.0)
    'the bound is tight (within 10%)'
    """
    bound, measured = float(bound), float(measured)
    if math.isnan(bound):
        return f"the {what} is undefined (NaN): it certifies nothing"
    if math.isinf(bound):
        return (f"the {what} is infinite: no finite certificate exists for this "
                f"architecture without a bounded input domain")
    if math.isnan(measured):
        return f"the {what} cannot be compared: nothing was measured"
    if measured <= 0:
        return (f"every measured λ_max is 0 (the model is locally constant there), so no "
                f"ratio is defined; the {what} is {_fmt(bound)}")
    return describe_ratio(bound / measured, what)


def describe_ratio(ratio: float, what: str = "bound") -> str:
    """How loose a bound is, in words, from its ratio to the measured value.

    >>> describe_ratio(1.0, "median local bound")
    'the median local bound is tight (within 10%)'
    """
    if math.isnan(ratio):
        return f"the {what} cannot be compared with the measurement"
    if ratio < 1:
        return f"the {what} is BELOW the measurement (factor {_fmt(ratio)}): a violation"
    if ratio <= 1.1:
        return f"the {what} is tight (within 10%)"
    if ratio < 10:
        return f"the {what} is loose by a factor of {ratio:.2g}"
    if math.isinf(ratio):
        return f"the {what} is infinitely loose (the measurement is 0)"
    return (f"the {what} is loose by {math.log10(ratio):.1f} orders of magnitude "
            f"(factor {_fmt(ratio)})")


Column = tuple[str, Callable[[ModelResult, dict], str]]

#: The tightness table: (header, cell of (model, its statistics)).
TIGHTNESS_COLUMNS: tuple[Column, ...] = (
    ("model", lambda m, a: m.info.name + (" (PGD)" if m.info.adversarial else "")),
    ("family", lambda m, a: m.info.family or "–"),
    ("params", lambda m, a: f"{m.info.parameters:,}"),
    ("clean acc", lambda m, a: _fmt(a["accuracy"])),
    ("global bound", lambda m, a: _fmt(m.info.global_bound)),
    ("max λ", lambda m, a: _fmt(a["lambda_max_max"])),
    ("global / max λ", lambda m, a: _fmt(a["global_over_max"])),
    ("plain product / max λ", lambda m, a: _fmt(a["plain_over_max"])),
    ("median local / λ", lambda m, a: _fmt(a["local_over_measured_median"])),
    ("median region / λ", lambda m, a: _fmt(a.get("region_over_measured_median"))),
    ("median black-box rel. error", lambda m, a: _fmt(a["blackbox_relative_error_median"])),
)

#: The sensitivity-vs-vulnerability table.
VULNERABILITY_COLUMNS: tuple[Column, ...] = (
    ("model", lambda m, a: m.info.name + (" (PGD)" if m.info.adversarial else "")),
    ("adversarial found", lambda m, a: f"{a['attack_found']}/{a['samples']}"),
    ("median attack radius", lambda m, a: _fmt(a["attack_radius_median"])),
    ("median certified radius", lambda m, a: _fmt(a["certified_radius_median"])),
    ("median global certified radius",
     lambda m, a: _fmt(a.get("certified_radius_global_median"))),
    ("median certified / attack", lambda m, a: _fmt(a.get("certified_over_attack_median"))),
    ("Spearman ρ [95% CI]", lambda m, a: _correlation_cell(a, "spearman")),
    ("Kendall τ [95% CI]", lambda m, a: _correlation_cell(a, "kendall")),
)


def _correlation_cell(stats: dict, name: str) -> str:
    c = stats["correlation_lambda_vs_radius"]
    if math.isnan(float(c.get(name, math.nan))):
        return f"– ({c.get('reason') or 'undefined'})"
    return f"{_fmt(c[name], 2)} {_ci(c.get(f'{name}_ci'))}"


def _table(result: CheckResult, columns: tuple[Column, ...]) -> list[str]:
    lines = ["| " + " | ".join(h for h, _ in columns) + " |",
             "|" + "---|" * len(columns)]
    for m in result.models:
        a = result.analysis["models"][m.info.name]
        lines.append("| " + " | ".join(cell(m, a) for _, cell in columns) + " |")
    return lines


def summary_table(result: CheckResult) -> str:
    """The terminal summary: one row per model."""
    header = ("model", "acc", "global bound", "max λ", "bound/max", "local/λ",
              "attack r", "cert r", "ρ(λ,r)", "sound")
    rows = [header]
    violations = result.analysis["soundness"]["violations"]
    for m in result.models:
        a = result.analysis["models"][m.info.name]
        bad = sum(v["model"] == m.info.name for v in violations)
        rows.append((m.info.name + (" (PGD)" if m.info.adversarial else ""),
                     _fmt(a["accuracy"], 2), _fmt(m.info.global_bound),
                     _fmt(a["lambda_max_max"]), _fmt(a["global_over_max"]),
                     _fmt(a["local_over_measured_median"]),
                     _fmt(a["attack_radius_median"]), _fmt(a["certified_radius_median"]),
                     _fmt(a["correlation_lambda_vs_radius"].get("spearman", math.nan), 2),
                     "yes" if bad == 0 else f"NO ({bad})"))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _intro(result: CheckResult) -> list[str]:
    s, run = result.settings, result.run
    counts = sorted({len(m.records) for m in result.models})
    samples = "/".join(map(str, counts)) if counts else "0"
    lines = ["# fimbound check report", "",
             f"Data: **{result.data_name}**, {samples} samples per model, seed {s.seed}."]
    if run.chunks_total and not run.complete:
        lines += ["", f"**Partial results**: {run.chunks_done} of {run.chunks_total} chunks "
                      f"were computed before the run stopped; rerun the same command to "
                      f"finish (it resumes), then the report is rebuilt."]
    if run.resumed:
        lines += ["", f"{run.resumed} of {run.chunks_total} chunks were read back from the "
                      f"results log of an earlier run with the same models and settings."]
    lines += ["",
              "All λ are the largest eigenvalue of the input Fisher information "
              "F(x) = Jᵀ(diag p − ppᵀ)J; bounds are certified upper bounds; the attack "
              "radius is the smallest L2 perturbation found by the minimum-norm attack "
              f"ensemble ({', '.join(s.attacks) if s.attacks else 'its default members'}; "
              f"{s.attack_steps} steps, {_count(s.attack_restarts, 'restart')}; ∞ when "
              "none was found); the certified radius is the best of three certificates: "
              "margin/(√2·L) with L the certified Lipschitz constant of the centred logits "
              "(the global radius), the margin against the integrated bound on the "
              "margin gradients over growing balls around the sample (the region radius, "
              f"{s.region_steps} grid points per factor 256"
              + ("" if s.region_steps else ": switched off") + "), and linear bound "
              "propagation of the margins over the ball and the attack's box (CROWN; "
              "networks of affine maps, ReLU and max pooling only; "
              + (f"{s.linear_steps} bisection passes" if s.linear_steps else "switched off")
              + "). The region bound is "
              "the certified bound on λ_max over the ball of a quarter of the attack "
              "radius.", ""]
    return lines


def _in_words(result: CheckResult) -> list[str]:
    lines = ["## What the numbers say", ""]
    for m in result.models:
        a = result.analysis["models"][m.info.name]
        if not m.records:
            lines.append(f"- **{m.info.name}**: no sample was measured.")
            continue
        parts = [describe_gap(m.info.global_bound, a["lambda_max_max"], "global bound"),
                 describe_ratio(a["local_over_measured_median"], "median local bound")]
        ratio = a.get("certified_over_attack_median", math.nan)
        if ratio is not None and math.isfinite(ratio):
            parts.append(f"the median certified radius is {_fmt(ratio, 2)} of the attack "
                         f"radius")
        if a["lambda_max_zero"]:
            parts.append(f"{a['lambda_max_zero']} sample(s) have λ_max = 0")
        found = a["attack_found"]
        parts.append(f"the attack found an adversarial for {found} of {a['samples']} samples"
                     + (" (no finite attack radius: the model looks flat around them)"
                        if found == 0 else ""))
        if a["accuracy"] == 0:
            parts.append("every sample is misclassified, so the attack radius is the "
                         "distance to the next change of a wrong prediction")
        training = " (PGD-trained)" if m.info.adversarial else ""
        certified = "" if m.info.certified else " — some constants are ESTIMATES, so " \
                                                "these bounds are not certificates"
        lines.append(f"- **{m.info.name}**{training}: " + "; ".join(parts) + "." + certified)
    return lines + [""]


def _soundness(result: CheckResult) -> list[str]:
    sound = result.analysis["soundness"]
    lines = ["## Soundness", ""]
    if sound["sound"]:
        lines.append(f"**No violations** in {sound['checked']} comparisons (global bound ≥ "
                     "every λ_max, local and region bounds ≥ λ_max at their sample, both "
                     "certified radii ≤ attack radius).")
    else:
        lines += [f"**{len(sound['violations'])} VIOLATIONS** — a bound below a measured "
                  "value is a bug:", "", "| model | sample | kind | measured | bound |",
                  "|---|---|---|---|---|"]
        lines += [f"| {v['model']} | {v['index']} | {v['kind']} | {_fmt(v['measured'], 6)} "
                  f"| {_fmt(v['bound'], 6)} |" for v in sound["violations"][:50]]
    if sound.get("unmeasured"):
        lines += ["", f"{sound['unmeasured']} comparisons were skipped because the "
                      f"measurement is undefined (NaN)."]
    return lines + [""]


def _found_by(result: CheckResult) -> list[str]:
    """Which attack of the ensemble found each smallest perturbation, per model."""
    parts = []
    for m in result.models:
        counts = result.analysis["models"][m.info.name].get("attack_found_by") or {}
        if counts:
            ordered = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
            parts.append(f"{m.info.name}: " + ", ".join(f"{k} {v}" for k, v in ordered))
    if not parts:
        return []
    return ["", "Attack that found the smallest perturbation (samples): " + "; ".join(parts)
            + "."]


def _robustness(result: CheckResult) -> list[str]:
    s = result.settings
    an = result.analysis
    keys = sorted({k for m in result.models for k in an["models"][m.info.name]
                   ["robust_accuracy"]})
    if not keys:
        return []
    lines = ["## Robust accuracy under PGD", "",
             f"{s.pgd_steps} steps, {_count(s.pgd_restarts, 'restart')}; a sample counts "
             "as robust when no restart changes its label.", "",
             "| model | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for m in result.models:
        ra = an["models"][m.info.name]["robust_accuracy"]
        lines.append(f"| {m.info.name} | " + " | ".join(_fmt(ra.get(k), 3) for k in keys)
                     + " |")
    return lines + [""]


def _rankings(result: CheckResult) -> list[str]:
    rk = result.analysis["rankings"]
    lines = ["## Rankings (most robust first)", ""]
    if not rk.get("orders"):
        return lines + [f"No rankings: {rk.get('reason') or 'not computed'}.", ""]
    names = [m.info.name for m in result.models]
    lines += [f"- **{kind}**: {_order_text(order, dict(zip(names, rk['scores'][kind])))}"
              for kind, order in rk["orders"].items()]
    if rk.get("theory_note"):
        lines += ["", rk["theory_note"]]
    lines += ["", "Kendall τ between rankings. Rankings from bounds do not depend on the "
                  "samples, so τ between two of them is exact; an interval is given only "
                  "where a measured ranking takes part (bootstrap over samples, 95%).", "",
              "| ranking A | ranking B | Kendall τ | 95% interval |", "|---|---|---|---|"]
    for g in rk["agreement"]:
        interval = "exact (no sampling)" if g.get("exact") else _ci(g.get("kendall_ci"))
        lines.append(f"| {g['first']} | {g['second']} | {_fmt(g['kendall'], 2)} | "
                     f"{interval} |")
    return lines + [""]


def _timings(result: CheckResult) -> list[str]:
    stages = []
    for m in result.models:
        for key in list(m.info.seconds) + list(result.analysis["models"][m.info.name]
                                               ["seconds"]):
            if key not in stages:
                stages.append(key)
    lines = ["## Time per stage (seconds)", ""]
    if result.run.seconds:
        lines += ["Run: " + ", ".join(f"{k} {v:.1f}" for k, v in result.run.seconds.items())
                  + ".", ""]
    if not stages:
        return lines
    lines += ["| model | " + " | ".join(stages) + " | per sample |",
              "|---|" + "---|" * (len(stages) + 1)]
    for m in result.models:
        per_sample = result.analysis["models"][m.info.name]["seconds"]
        row = [m.info.seconds.get(k, per_sample.get(k)) for k in stages]
        total = sum(per_sample.values())
        each = total / len(m.records) if m.records else math.nan
        lines.append(f"| {m.info.name} | " + " | ".join(
            "–" if v is None else f"{v:.2f}" for v in row) + f" | {_fmt(each)} |")
    return lines + [""]


def _provenance(result: CheckResult) -> list[str]:
    run = result.run
    lines = ["## Provenance", ""]
    if run.command:
        lines += [f"Command: `{run.command}`", ""]
    if run.device:
        lines.append(f"- device: {run.device}")
    lines += [f"- {name} {version}" for name, version in run.versions.items()]
    if run.run_key:
        lines.append(f"- results log key: {run.run_key}")
    lines.append("- settings: " + ", ".join(f"{k}={v}" for k, v in
                                               vars(result.settings).items()))
    return lines + [""]


def markdown_report(result: CheckResult, figures: dict[str, str | None]) -> str:
    """The Markdown report of an analysed check; ``figures`` maps each figure's file name
    to ``None`` (drawn) or the reason it was not (see :func:`~numeric.check.figures.
    write_figures`)."""
    from numeric.check.figures import FIGURES
    s = result.settings
    lines = _intro(result) + _in_words(result) + _soundness(result)
    lines += ["## Tightness and accuracy of the estimates", ""]
    lines += _table(result, TIGHTNESS_COLUMNS)
    lines += ["", f"Black-box estimates use {s.queries} queries per input.", "",
              "## Sensitivity vs vulnerability", "",
              "Rank correlation between λ_max(F(x)) and the attack radius across samples "
              "(bootstrap 95% intervals). A useful metric gives a negative correlation.", ""]
    lines += _table(result, VULNERABILITY_COLUMNS)
    lines += _found_by(result)
    across = result.analysis.get("across_models")
    if across:
        if math.isnan(float(across["spearman"])):
            lines += ["", f"Across models: undefined ({across.get('reason')})."]
        else:
            lines += ["", f"Across models (mean λ_max vs median attack radius, n = "
                          f"{across['n']}): Spearman ρ = {_fmt(across['spearman'], 2)} "
                          f"{_ci(across['spearman_ci'])}, Kendall τ = "
                          f"{_fmt(across['kendall'], 2)} {_ci(across['kendall_ci'])}."]
    lines += [""] + _robustness(result) + _rankings(result)
    lines += ["## Figures", ""]
    for name, reason in figures.items():
        caption = FIGURES[name][1] if name in FIGURES else ""
        if reason is None:
            lines += [f"![{name}]({name})", "", f"*{caption}*", ""]
        else:
            lines += [f"- `{name}` is not drawn: {reason}.", ""]
    lines += _timings(result) + _provenance(result)
    return "\n".join(lines).rstrip() + "\n"


def write_report(result: CheckResult, out_dir: str | Path) -> Path:
    """Write ``report.md``, ``results.json`` and the figures of an analysed ``result``
    into ``out_dir`` (created if needed), atomically; return the path of ``report.md``."""
    from numeric.check.figures import FIGURES, write_figures
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out, prefix=".staging-"))
    try:
        figures = write_figures(result, staging)
        write_json_atomic(result.to_dict() | {"figures": figures}, staging / "results.json")
        (staging / "report.md").write_text(markdown_report(result, figures))
        for item in staging.iterdir():
            os.replace(item, out / item.name)
        for name, reason in figures.items():  # a figure of an earlier run must not linger
            if reason is not None and name in FIGURES:
                (out / name).unlink(missing_ok=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out / "report.md"
